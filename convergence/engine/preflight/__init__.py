"""Deep checks of a loaded config, run by ``validate`` and by ``optimize``
before its first call, so ``validate`` passes exactly when ``optimize`` can start.

Beyond the schema (loader.py) this imports what the config names (the target
function, metric functions, the custom evaluator), loads the test cases,
compiles regexes, JSON schemas and every Jinja template, and renders each
template once per test case (and per categorical template value) so a
``{{ typo }}`` is found now rather than as a failed call per case. It checks
the URLs the target calls, that the storage and output paths are usable, that
the environment variables the target and judge need are set, and that a
``society.learner`` plugin loads and accepts its options.

Nothing here builds a LiteLLM target or imports LiteLLM, Weave or llama.cpp;
nothing is called and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from convergence.config.loader import ConfigError, LoadedConfig, Problem
from convergence.config.models import short
from convergence.core.types import TestCase
from convergence.engine.preflight.checks import _env_vars, _learner, _metrics, _target, _test_cases
from convergence.engine.preflight.context import Ctx
from convergence.engine.preflight.paths import _storage_and_output
from convergence.engine.preflight.templates import _templates


@dataclass(slots=True)
class Preflight:
    problems: list[Problem] = field(default_factory=list)
    cases: list[TestCase] = field(default_factory=list)


def check(loaded: LoadedConfig) -> Preflight:
    """Run every check; raise :class:`ConfigError` listing all problems found."""
    result = preflight(loaded)
    if result.problems:
        raise ConfigError(loaded.path, result.problems)
    return result


def preflight(loaded: LoadedConfig) -> Preflight:
    """Every problem ``optimize`` would hit before (or on every) call, without calling anything."""
    ctx = Ctx(loaded)
    for step in (_env_vars, _test_cases, _target, _metrics, _templates, _storage_and_output, _learner):
        try:
            step(ctx)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a check must never turn into a traceback
            ctx.add((), f"internal check {step.__name__.strip('_')} failed: "
                        f"{type(exc).__name__}: {short(str(exc), 200)}")
    return Preflight(ctx.problems, ctx.cases)
