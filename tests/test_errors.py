"""One root for our exceptions: an application embedding Convergence catches
``ConvergenceError`` and gets every failure we raise on purpose, whatever
step it came from."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

import convergence
from convergence import ConvergenceError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "convergence"
pytestmark = pytest.mark.anyio

INTERNAL = {"At", "LearnerTimeout", "PathError", "SpecError", "TraceFailure", "_Bad"}
"""Exception classes that never reach the caller (see convergence/errors.py)."""

STILL_VALUE_ERRORS = {"TestCaseError", "MetricConfigError", "MetricError", "JudgeParseError", "TemplateError"}
"""Ours and ValueErrors too, so code that caught ValueError keeps working."""


def _exported_exceptions() -> dict[str, type[BaseException]]:
    out = {}
    for name in convergence.__all__:
        value = getattr(convergence, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            out[name] = value
    return out


def _declared_exception_classes() -> set[str]:
    """Names of classes in the package whose base looks like an exception."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                if any(re.search(r"(Error|Exception|Failure)$", b) for b in bases):
                    names.add(node.name)
    return names


def test_every_public_exception_derives_from_convergence_error() -> None:
    exported = _exported_exceptions()
    assert "ConvergenceError" in exported and len(exported) >= 13
    for name, cls in exported.items():
        assert issubclass(cls, ConvergenceError), name
    for name in STILL_VALUE_ERRORS:
        assert issubclass(exported[name], ValueError), name


def test_every_exception_class_in_the_package_is_exported_or_internal() -> None:
    declared = _declared_exception_classes()
    assert INTERNAL.issubset(declared)  # the allow-list names real classes
    assert declared - INTERNAL <= set(_exported_exceptions()), "export it from convergence/__init__.py"


def test_an_embedding_app_catches_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "optimization.yaml"
    bad.write_text("study: x\ntarget: {type: python, function: 'nope'}\n")
    with pytest.raises(ConvergenceError, match=r"optimization\.yaml"):
        convergence.load_config(bad)
    with pytest.raises(ConvergenceError):
        convergence.load_config(tmp_path / "missing.yaml")


async def test_an_embedding_app_catches_a_bad_resume_and_a_failing_preflight(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "examples" / "python_function", proj)
    yaml = proj / "optimization.yaml"
    yaml.write_text(yaml.read_text().replace("generations: 8", "generations: 1"))
    config = str(yaml)
    assert (await convergence.optimize(config, write_outputs=False)).status == "finished"
    with pytest.raises(ConvergenceError, match="nothing to resume"):
        await convergence.optimize(config, resume=True, write_outputs=False)
    (proj / "reviews.json").unlink()  # the config is valid; its test cases are gone
    with pytest.raises(ConvergenceError, match=r"reviews\.json"):
        await convergence.optimize(config, write_outputs=False)


def test_a_judge_without_its_api_key_is_a_metric_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.config.models import JudgeConfig, MetricConfig
    from convergence.evaluation.metrics import resolve_metric

    monkeypatch.delenv("CONVERGENCE_TEST_JUDGE_KEY", raising=False)
    cfg = MetricConfig(function="llm_judge", judge=JudgeConfig(api_key_env="CONVERGENCE_TEST_JUDGE_KEY"))
    with pytest.raises(convergence.MetricConfigError, match=r"metric 'quality'.*CONVERGENCE_TEST_JUDGE_KEY"):
        resolve_metric("quality", cfg, None, Path("."))


async def test_an_unknown_run_is_one_of_our_errors_and_still_a_key_error(tmp_path: Path) -> None:
    from convergence import ConvergenceError, RunNotFoundError, Store
    from convergence.reporting.outputs import build_report

    async with await Store.open(tmp_path / "c.db") as store:
        with pytest.raises(ConvergenceError) as info:
            await build_report(store, 42)
    assert isinstance(info.value, (RunNotFoundError, KeyError)) and str(info.value).startswith("no run 42")


def test_one_error_hit_by_several_calls_at_once_ends_the_run_as_that_error() -> None:
    """Several calls that hit the same fatal error in one step (a Ray backend no call can get past) reach
    the run's handler as a task group's nested ExceptionGroup; the user sees that one error, not a traceback.
    Two different errors stay a group (neither hides the other)."""
    from convergence.engine.session import _leaf

    fatal = ConvergenceError("Ray cannot run the python target: RuntimeEnvSetupError: pip failed")
    group = BaseExceptionGroup("tg", [ExceptionGroup("inner", [fatal, fatal]), KeyError("cancelled peer")])
    assert _leaf(group) is fatal
    copies = ExceptionGroup("tg", [ConvergenceError(str(fatal)), ConvergenceError(str(fatal))])
    assert str(_leaf(copies)) == str(fatal) and isinstance(_leaf(copies), ConvergenceError)
    two = ExceptionGroup("tg", [fatal, ConvergenceError("something else")])
    assert _leaf(two) is two
    assert _leaf(ValueError("x")).args == ("x",)
