from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from convergence.cli.plugin_testing import checkout_entry_points

sys.path.insert(0, str(Path(__file__).parent))  # rigged.py
# as the core suite's tests/conftest.py (which does not reach this folder): no download of litellm's
# cost map, and tracing stays off
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("WANDB_API_KEY", None)
torch.set_num_threads(1)  # tiny networks; the machine is shared


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio only (anyio's own fixture adds trio)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_synergy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's CONVERGENCE_SYNERGY_* variables must not change what the tests see."""
    for key in list(os.environ):
        if key.startswith("CONVERGENCE_SYNERGY_"):
            monkeypatch.delenv(key)


@pytest.fixture
def this_checkouts_entry_points(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The entry points this plugin's pyproject.toml declares, discovered as installed ones are (new
    entry points need a reinstall; the tests see this checkout's)."""
    with checkout_entry_points(Path(__file__).parents[1] / "pyproject.toml", tmp_path_factory.mktemp("site")) as points:
        yield points
