from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from convergence.cli.plugin_testing import checkout_entry_points

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("WANDB_API_KEY", None)  # tracing stays off in tests
torch.set_num_threads(1)  # tiny networks; the machine is shared


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, as in the repository's tests/."""
    return "asyncio"


@pytest.fixture
def this_checkouts_entry_points(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The entry points this plugin's pyproject.toml declares, discovered as installed ones are (new
    entry points need a reinstall; the tests see this checkout's)."""
    with checkout_entry_points(Path(__file__).parents[1] / "pyproject.toml", tmp_path_factory.mktemp("site")) as points:
        yield points
