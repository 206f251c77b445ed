"""Convergence: find the best configuration for an LLM call or an API.

The public Python API, imported lazily so ``import convergence`` (and the
CLI) stays fast::

    import anyio
    from convergence import optimize

    outcome = anyio.run(optimize, "optimization.yaml")

For finer control: ``load_config`` -> ``Store.open`` -> ``Optimizer(loaded,
store, target=..., events=...)`` -> ``await optimizer.run(resume=False)``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "optimize": "convergence.core.loop",
    "Optimizer": "convergence.core.loop",
    "RunOutcome": "convergence.core.loop",
    "ResumeError": "convergence.core.loop",
    "load_config": "convergence.config.loader",
    "parse_config": "convergence.config.loader",
    "ConfigError": "convergence.config.loader",
    "ConvergenceConfig": "convergence.config.models",
    "Store": "convergence.storage.store",
    "SearchSpace": "convergence.core.space",
    "TestCase": "convergence.core.types",
    "CallResult": "convergence.core.types",
    "TrialRecord": "convergence.core.types",
    "Proposer": "convergence.society.base",
    "ProposalContext": "convergence.society.base",
    "build_report": "convergence.outputs",
    "write_outputs": "convergence.outputs",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from convergence.config.loader import ConfigError, load_config, parse_config
    from convergence.config.models import ConvergenceConfig
    from convergence.core.loop import Optimizer, ResumeError, RunOutcome, optimize
    from convergence.core.space import SearchSpace
    from convergence.core.types import CallResult, TestCase, TrialRecord
    from convergence.outputs import build_report, write_outputs
    from convergence.society.base import ProposalContext, Proposer
    from convergence.storage.store import Store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'convergence' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
