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

from convergence._version import __version__

_EXPORTS = {
    "optimize": "convergence.api",
    "Optimizer": "convergence.engine.loop",
    "RunOutcome": "convergence.engine.loop",
    "ResumeError": "convergence.engine.session",
    "StoreOpenError": "convergence.api",
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
    "build_report": "convergence.reporting.outputs",
    "write_outputs": "convergence.reporting.outputs",
    # exceptions: catch ConvergenceError for all of them (the tree is in convergence/errors.py)
    "ConvergenceError": "convergence.errors",
    "TestCaseError": "convergence.evaluation.cases",
    "MetricConfigError": "convergence.evaluation.metrics",
    "MetricError": "convergence.evaluation.metrics",
    "JudgeParseError": "convergence.evaluation.judge",
    "TemplateError": "convergence.targets.templating",
    "TargetError": "convergence.targets.base",
    "StorageError": "convergence.storage.store",
    "RunInUseError": "convergence.storage.store",
    "RunNotFoundError": "convergence.storage.store",
    "LeaseLostError": "convergence.storage.store",
    "DatabaseFileError": "convergence.storage.faults",
    "OutputsError": "convergence.reporting.outputs",
    "WriterError": "convergence.storage.writer",
    "AgentLLMError": "convergence.llm.agent_client",
    "AnswerError": "convergence.society.answer",
    "TargetCallError": "convergence.society.base",
    "SAODatasetError": "convergence.society.sao.dataset",
    "PluginError": "convergence.registry",
    "RayBackendError": "convergence.engine.ray_executor",  # does not import ray
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    # ``X as X``: re-exported (``__all__`` is built from _EXPORTS, which linters cannot read)
    from convergence.api import StoreOpenError as StoreOpenError, optimize as optimize
    from convergence.config.loader import (
        ConfigError as ConfigError,
        load_config as load_config,
        parse_config as parse_config,
    )
    from convergence.config.models import ConvergenceConfig as ConvergenceConfig
    from convergence.core.space import SearchSpace as SearchSpace
    from convergence.core.types import CallResult as CallResult, TestCase as TestCase, TrialRecord as TrialRecord
    from convergence.engine.loop import Optimizer as Optimizer, RunOutcome as RunOutcome
    from convergence.engine.ray_executor import RayBackendError as RayBackendError
    from convergence.engine.session import ResumeError as ResumeError
    from convergence.errors import ConvergenceError as ConvergenceError
    from convergence.evaluation.cases import TestCaseError as TestCaseError
    from convergence.evaluation.judge import JudgeParseError as JudgeParseError
    from convergence.evaluation.metrics import MetricConfigError as MetricConfigError, MetricError as MetricError
    from convergence.llm.agent_client import AgentLLMError as AgentLLMError
    from convergence.registry import PluginError as PluginError
    from convergence.reporting.outputs import (
        OutputsError as OutputsError,
        build_report as build_report,
        write_outputs as write_outputs,
    )
    from convergence.society.answer import AnswerError as AnswerError
    from convergence.society.base import (
        ProposalContext as ProposalContext,
        Proposer as Proposer,
        TargetCallError as TargetCallError,
    )
    from convergence.society.sao.dataset import SAODatasetError as SAODatasetError
    from convergence.storage.faults import DatabaseFileError as DatabaseFileError
    from convergence.storage.store import (
        LeaseLostError as LeaseLostError,
        RunInUseError as RunInUseError,
        RunNotFoundError as RunNotFoundError,
        StorageError as StorageError,
        Store as Store,
    )
    from convergence.storage.writer import WriterError as WriterError
    from convergence.targets.base import TargetError as TargetError
    from convergence.targets.templating import TemplateError as TemplateError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'convergence' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
