from __future__ import annotations

import os

import torch

torch.set_num_threads(1)  # tiny networks; the machine is shared
# as the core suite's tests/conftest.py (which does not reach this folder): no download of litellm's
# cost map (the embedded-model run), and tracing stays off
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("WANDB_API_KEY", None)
