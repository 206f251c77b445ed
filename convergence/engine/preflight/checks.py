"""Preflight checks of the environment, the test cases, the target, the metrics and the society learner."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from convergence.config.fields import url_problem
from convergence.config.models import (
    CategoricalParam,
    HTTPTargetConfig,
    LiteLLMTargetConfig,
    PythonTargetConfig,
    short,
)
from convergence.engine.preflight.context import BOOL_ARGS, KNOWN_ARGS, NEEDS_EXPECTED, Ctx


def _env_vars(ctx: Ctx) -> None:
    from convergence.targets.factory import missing_env_vars

    t = ctx.target
    for name in missing_env_vars(t):
        if isinstance(t, HTTPTargetConfig):
            auth = t.auth
            names = ("token_env", "username_env", "password_env")
            attr = next((a for a in names if getattr(auth, a) == name), "token_env")
            loc = ctx.tloc("auth", attr)
        elif ctx.cfg.api is not None and not ctx.cfg.api.api_key_env:
            loc = ("api", "auth", "token_env")
        else:
            loc = ctx.tloc("api_key_env")
        ctx.add(loc, f"environment variable {name} is not set (the target needs it); export {name}=...")
    for mname, m in ctx.cfg.evaluation.metrics.items():
        judge = m.judge if m.function == "llm_judge" else None
        if judge is not None and judge.api_key_env and not os.environ.get(judge.api_key_env):
            ctx.add(("evaluation", "metrics", mname, "judge", "api_key_env"),
                    f"environment variable {judge.api_key_env} is not set (the judge needs it)")
    soc = ctx.cfg.society
    sao_on = soc.enabled and "sao" in soc.roster(ctx.cfg.optimization.algorithm)
    for mname, m in ctx.cfg.evaluation.metrics.items():
        if m.function == "sao_preference" and not sao_on:
            ctx.add(("evaluation", "metrics", mname, "function"),
                    "sao_preference is the SAO agent's rating of each configuration: enable it with "
                    "society: {enabled: true, learning: {sao_enabled: true}} (or list sao in society.agents)")
    if soc.uses_llm(ctx.cfg.optimization.algorithm):
        env = soc.llm.api_key_env
        if env and not os.environ.get(env):
            ctx.add(("society", "llm", "api_key_env"),
                    f"environment variable {env} is not set (the society's LLM agents need it); export {env}=...")
        from convergence.llm.local_provider import LOCAL_MODEL, PROVIDER

        for loc, model in ((("society", "llm", "model"), soc.llm.model),
                           (("society", "rlp", "model_name"), soc.rlp.model_name),
                           (("society", "sao", "model_name"), soc.sao.model_name)):
            if model and model.startswith(f"{PROVIDER}/") and model != LOCAL_MODEL:
                ctx.add(loc, f"unknown local model {model!r}; the embedded model is {LOCAL_MODEL!r}")


def _test_cases(ctx: Ctx) -> None:
    from convergence.evaluation.cases import TestCaseError, load_test_cases

    tc = ctx.cfg.evaluation.test_cases
    loc = ("evaluation", "test_cases", "path" if tc.path is not None else "inline")
    try:
        ctx.cases = load_test_cases(tc, ctx.base)
    except TestCaseError as exc:
        message = str(exc)
        for prefix in ("evaluation.test_cases.inline: ", "evaluation.test_cases.inline, "):
            message = message.removeprefix(prefix)
        ctx.add(loc, message if len(message) <= 400 else message[:397] + "...")
    except (OSError, ValueError) as exc:
        ctx.add(loc, f"cannot read the test cases: {short(str(exc), 300)}")


def _target(ctx: Ctx) -> None:
    t = ctx.target
    if isinstance(t, PythonTargetConfig):
        fn = _import(ctx, t.function, ctx.tloc("function"))
        if fn is not None and not _accepts(fn, 2):
            ctx.add(ctx.tloc("function"), f"{short(t.function, 80)} must accept two arguments (params, input)")
    elif isinstance(t, HTTPTargetConfig):
        problem = url_problem(t.endpoint)
        if problem:
            ctx.add(ctx.tloc("endpoint"), problem)
        for name, value in t.request.headers.items():
            problem = header_problem(name, None if "{{" in value or "{%" in value else value)
            if problem:
                ctx.add(ctx.tloc("request", "headers", name), problem)
        if t.auth.type == "api_key":
            problem = header_problem(t.auth.header_name, None)
            if problem:
                ctx.add(ctx.tloc("auth", "header_name"), problem)
    elif isinstance(t, LiteLLMTargetConfig):
        if t.api_base is not None:
            problem = url_problem(t.api_base)
            if problem:
                ctx.add(ctx.tloc("api_base"), problem)
        _local_model(ctx, t.model, ctx.tloc("model"))
        model_param = ctx.cfg.search_space.parameters.get("model")
        if isinstance(model_param, CategoricalParam):
            values = model_param.values
            items: Iterable[tuple[Any, Any]] = values.items() if isinstance(values, dict) else enumerate(values)
            for label, value in items:
                if isinstance(value, str):
                    _local_model(ctx, value, ("search_space", "parameters", "model", "values", label))
    for mname, m in ctx.cfg.evaluation.metrics.items():
        if m.function == "llm_judge" and m.judge is not None:
            loc = ("evaluation", "metrics", mname, "judge")
            _local_model(ctx, m.judge.model, loc + ("model",))
            if m.judge.api_base is not None:
                problem = url_problem(m.judge.api_base)
                if problem:
                    ctx.add(loc + ("api_base",), problem)


def _local_model(ctx: Ctx, model: str, loc: tuple[Any, ...]) -> None:
    from convergence.llm.local_provider import LOCAL_MODEL, PROVIDER

    if model.startswith(PROVIDER + "/") and model != LOCAL_MODEL:
        ctx.add(loc, f"unknown local model {short(model, 60)}; the embedded model is {LOCAL_MODEL!r}")


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def header_problem(name: str, value: str | None) -> str | None:
    """What is wrong with an HTTP header (``value`` None: only the name is checked), or None.
    httpx sends header values as ASCII; a newline would split the header."""
    if not _HEADER_NAME.match(name):
        return f"{short(name, 60)} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
    if value is not None:
        if not value.isascii():
            return f"the value {short(value, 60)} is not ASCII (HTTP header values are sent as ASCII)"
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            return f"the value {short(value, 60)} contains control characters (a newline would split the header)"
    return None


def _metrics(ctx: Ctx) -> None:
    from convergence.evaluation.metrics import (
        BUILTINS,
        MetricConfigError,
        infer_function,
        resolve_metric,
    )

    ev = ctx.cfg.evaluation
    custom = ev.custom_evaluator if ev.custom_evaluator is not None and ev.custom_evaluator.enabled else None
    uses_custom = False
    for name, m in ev.metrics.items():
        loc = ("evaluation", "metrics", name)
        try:
            function = m.function or infer_function(name, custom is not None)
        except MetricConfigError as exc:
            ctx.add(loc, _strip_metric(str(exc), name))
            continue
        uses_custom = uses_custom or function == "custom"
        known = KNOWN_ARGS.get(function)
        bad_args = False
        if known is not None:
            for key, value in m.args.items():
                if key not in known:
                    hint = f"; {function} reads {', '.join(sorted(known))}" if known else f"; {function} takes no args"
                    ctx.add(loc + ("args", key), f"unknown argument {short(key, 40)}{hint}")
                    bad_args = True
                elif key in BOOL_ARGS and not isinstance(value, bool):
                    ctx.add(loc + ("args", key), f"must be true or false, got {short(value, 40)}")
                    bad_args = True
        if function == "numeric":
            bad_args = _numeric_args(ctx, loc, m.args) or bad_args
        if bad_args:
            continue
        judge = m.judge if function == "llm_judge" else None
        if judge is not None and judge.api_key_env and not os.environ.get(judge.api_key_env):
            continue  # reported by _env_vars
        try:
            resolve_metric(name, m, ev.custom_evaluator, ctx.base)
        except SystemExit:
            ctx.add(loc + ("function",), "importing the metric function called sys.exit()")
            continue
        except (MetricConfigError, ValueError) as exc:
            field = {"llm_judge": "judge", "regex": "args.pattern", "json_schema": "args.schema"}.get(
                function, "args" if function in BUILTINS else "function")
            if field == "args.schema" and "schema" not in m.args:
                field = "args"
            if function == "custom":
                where: tuple[Any, ...] = ("evaluation", "custom_evaluator")
            elif m.function is None:
                where = loc
            else:
                where = loc + tuple(field.split("."))
            ctx.add(where, _strip_metric(str(exc), name))
            continue
        except Exception as exc:  # noqa: BLE001 - user code ran at import time
            ctx.add((*loc, "function"),
                    f"importing the metric function raised {type(exc).__name__}: {short(str(exc), 200)}")
            continue
        _case_checks(ctx, name, loc, function, m.args)
    if ev.custom_evaluator is not None and custom is not None and not uses_custom:
        ctx.add(("evaluation", "custom_evaluator"),
                "is configured but no metric uses it (every metric names another function); "
                "remove it, or leave 'function' out of the metrics it computes (or write function: custom)")


def _strip_metric(message: str, name: str) -> str:
    return message.removeprefix(f"metric '{name}': ")


def _numeric_args(ctx: Ctx, loc: tuple[Any, ...], args: dict[str, Any]) -> bool:
    import math

    bad = False
    for key in ("tolerance", "rel_tolerance", "scale"):
        v = args.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            ctx.add(loc + ("args", key), f"must be a number, got {short(v, 40)}")
            bad = True
            continue
        try:
            x = float(v)
        except ValueError:
            ctx.add(loc + ("args", key), f"must be a number, got {short(v, 40)}")
            bad = True
            continue
        if not math.isfinite(x):
            ctx.add(loc + ("args", key), f"must be a finite number, got {short(v, 40)}")
            bad = True
    return bad


def _case_checks(ctx: Ctx, name: str, loc: tuple[Any, ...], function: str, args: dict[str, Any]) -> None:
    """Per test case: the expected values a metric needs exist (and compile, for regex)."""
    from convergence.evaluation.metrics import MetricError, _compiled, first_number

    needs = function in NEEDS_EXPECTED or (function == "regex" and args.get("pattern") is None)
    if not needs:
        return
    import re

    flags = re.IGNORECASE if args.get("ignore_case") else 0
    for case in ctx.cases:
        if case.expected is None:
            ctx.add(loc, f"{function} compares with each test case's 'expected', "
                         f"but case {short(case.id, 40)} has none")
            return
        answers = case.expected if isinstance(case.expected, list) else [case.expected]
        for a in answers:
            if function == "regex":
                try:
                    _compiled(str(a), flags)
                except MetricError as exc:
                    ctx.add(loc, f"case {short(case.id, 40)}: its expected value is used as the pattern: "
                                 f"{short(str(exc), 200)}")
                    return
            elif function == "numeric" and first_number(a) is None:
                ctx.add(loc, f"numeric needs numbers, but the expected value of case {short(case.id, 40)} "
                             f"is {short(a, 40)}")
                return


def _learner(ctx: Ctx) -> None:
    """The ``society.learner`` plugin loads, and its options pass its own check (a factory's optional
    ``check_options(options)``, raising ValueError), so a bad option fails ``validate``, not the run."""
    cfg = ctx.cfg.society.learner
    if cfg is None:
        return
    from convergence.registry import PluginError, registry

    loc = ("society", "learner")
    try:
        factory = registry().load("learner", cfg.plugin)
    except PluginError as exc:
        ctx.add((*loc, "plugin"), str(exc)[:400])
        return
    check_options = getattr(factory, "check_options", None)
    if check_options is None:
        return
    try:
        check_options(cfg.options)
    except ValueError as exc:
        ctx.add(loc, f"{cfg.plugin} options: {str(exc)[:600]}")


def _import(ctx: Ctx, spec: str, loc: tuple[Any, ...]) -> Callable[..., Any] | None:
    """Import the target function the way optimize does (PythonTarget's loader)."""
    from convergence.targets.base import TargetError
    from convergence.targets.python_target import load_callable

    try:
        return load_callable(spec, ctx.base)
    except TargetError as exc:
        ctx.add(loc, short(str(exc), 400).strip("'\""))
    except SystemExit:
        ctx.add(loc, f"importing {short(spec, 80)} called sys.exit()")
    except BaseException as exc:  # user code ran at import time
        if isinstance(exc, KeyboardInterrupt):
            raise
        ctx.add(loc, f"importing {short(spec, 80)} raised {type(exc).__name__}: {short(str(exc), 200)}")
    return None


def _accepts(fn: Callable[..., Any], n: int) -> bool:
    """Whether ``fn`` can be called with ``n`` positional arguments (True when unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(*([None] * n))
    except TypeError:
        return False
    return True
