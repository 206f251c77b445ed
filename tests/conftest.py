"""Shared pytest fixtures. Async tests use ``@pytest.mark.anyio``."""

from __future__ import annotations

import os
import signal

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Tracing must stay off in tests unless a test turns it on against its own server.
os.environ.pop("WANDB_API_KEY", None)
# A suite started in the background of a shell without job control inherits SIGINT ignored, and so would
# every process it starts: the Ctrl-C test's run (it would never be interrupted) and Ray's workers (a task
# is cancelled with SIGINT). Give Ctrl-C its default meaning back; started processes then inherit SIG_DFL.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
