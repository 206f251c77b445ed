"""Shared pytest fixtures. Async tests use ``@pytest.mark.anyio``."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Tracing must stay off in tests unless a test turns it on against its own server.
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
