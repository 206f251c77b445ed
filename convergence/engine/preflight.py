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

import inspect
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from convergence.config.loader import (
    ConfigError,
    LoadedConfig,
    Problem,
    _dotted,
    resolve_path,
)
from convergence.config.models import (
    CategoricalParam,
    HTTPTargetConfig,
    LiteLLMTargetConfig,
    PythonTargetConfig,
    short,
)
from convergence.core.types import TestCase

MAX_RENDERS = 5_000
"""Template dry runs per check (configurations x test cases), to stay fast on big test sets."""

KNOWN_ARGS: dict[str, frozenset[str]] = {
    "exact_match": frozenset({"first_line_only"}),
    "contains": frozenset({"first_line_only"}),
    "regex": frozenset({"pattern", "ignore_case", "fullmatch"}),
    "numeric": frozenset({"tolerance", "rel_tolerance", "scale"}),
    "json_valid": frozenset({"allow_code_fence"}),
    "json_schema": frozenset({"schema", "allow_code_fence"}),
    "similarity": frozenset(),
    "latency": frozenset({"measure"}),
    "cost": frozenset(),
    "success": frozenset(),
    "llm_judge": frozenset(),
    "sao_preference": frozenset(),
}
"""``args`` each built-in metric reads (see convergence/evaluation/metrics.py);
any other key would be ignored, so it is refused. Functions not listed here
(user functions, built-ins added later) get their args unchecked."""
BOOL_ARGS = frozenset({"first_line_only", "ignore_case", "fullmatch", "allow_code_fence"})
NEEDS_EXPECTED = frozenset({"exact_match", "contains", "numeric", "similarity"})
"""Built-ins that compare with the test case's ``expected`` (regex too, without ``args.pattern``)."""
SQLITE_HEADER = b"SQLite format 3\x00"


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
    ctx = _Ctx(loaded)
    for step in (_env_vars, _test_cases, _target, _metrics, _templates, _storage_and_output, _learner):
        try:
            step(ctx)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a check must never turn into a traceback
            ctx.add((), f"internal check {step.__name__.strip('_')} failed: "
                        f"{type(exc).__name__}: {short(str(exc), 200)}")
    return Preflight(ctx.problems, ctx.cases)


class _Ctx:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.base = loaded.base_dir
        self.target = self.cfg.resolved_target
        self.via_api = self.cfg.api is not None
        self.problems: list[Problem] = []
        self.cases: list[TestCase] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, loc: tuple[Any, ...], message: str) -> None:
        key = (_dotted(loc), message)
        if key not in self._seen:
            self._seen.add(key)
            self.problems.append(Problem(_dotted(loc), message, self.loaded.line_of(loc) if loc else None))

    def tloc(self, *parts: Any) -> tuple[Any, ...]:
        """Where a resolved-target field is written: under ``target:`` or the-convergence's ``api:``."""
        if not self.via_api:
            return ("target", *parts)
        if parts[:1] == ("api_base",) and self.cfg.api is not None and self.cfg.api.api_base is None:
            return ("api", "endpoint")
        return ("api", *parts)


# --------------------------------------------------------------------------- steps


def _env_vars(ctx: _Ctx) -> None:
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


def _test_cases(ctx: _Ctx) -> None:
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


def _target(ctx: _Ctx) -> None:
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


def _local_model(ctx: _Ctx, model: str, loc: tuple[Any, ...]) -> None:
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


def url_problem(url: str) -> str | None:
    """What is wrong with an HTTP(S) URL the target would call, or None."""
    if "{{" in url or "{%" in url:
        return f"{short(url, 80)} is not a template: the URL is called as written"
    if any(c.isspace() for c in url):
        return f"{short(url, 80)} contains whitespace"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{short(url, 80)} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{short(url, 80)} must start with http:// or https:// (got scheme {parts.scheme or 'none'!r})"
    if not parts.hostname:
        return f"{short(url, 80)} has no host name"
    if port == 0:
        return f"{short(url, 80)} has port 0"
    return None


def _metrics(ctx: _Ctx) -> None:
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


def _numeric_args(ctx: _Ctx, loc: tuple[Any, ...], args: dict[str, Any]) -> bool:
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


def _case_checks(ctx: _Ctx, name: str, loc: tuple[Any, ...], function: str, args: dict[str, Any]) -> None:
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


def _templates(ctx: _Ctx) -> None:
    """Compile and dry-render every template against the test cases."""
    from convergence.core.space import SearchSpace
    from convergence.targets.templating import TemplateError, render, render_tree

    cfg, t = ctx.cfg, ctx.target
    templates: list[tuple[tuple[Any, ...], Callable[[dict[str, Any]], Any]]] = []
    if isinstance(t, LiteLLMTargetConfig):
        if t.messages is not None:
            for i, m in enumerate(t.messages):
                content = m.get("content", "")
                templates.append((ctx.tloc("messages", i, "content"), partial(_render_text, render, content)))
        elif t.prompt is not None:
            templates.append((ctx.tloc("prompt"), partial(_render_text, render, t.prompt)))
    elif isinstance(t, HTTPTargetConfig):
        for k, h in t.request.headers.items():
            templates.append((ctx.tloc("request", "headers", k), partial(_rendered_header, k, render, h)))
        if t.request.body is not None:
            templates.append((ctx.tloc("request", "body"), partial(_render_text, render_tree, t.request.body)))

    space = SearchSpace.from_config(cfg.search_space)
    base = {name: d.choices[0] if d.choices else d.snap(d.low) for name, d in space.dims.items()}
    variants: list[tuple[dict[str, Any], tuple[Any, ...] | None]] = [(base, None)]
    for name, d in space.dims.items():
        if d.kind != "categorical":
            continue
        for label, value in zip(d.choices, d.values, strict=True):
            if isinstance(value, str) and ("{{" in value or "{%" in value) and label != base[name]:
                variants.append(({**base, name: label}, None))
    cases = ctx.cases or []
    budget = max(1, MAX_RENDERS // max(1, len(variants)))
    failed: set[tuple[Any, ...]] = set()
    for config, _ in variants:
        resolved = space.resolve(config)
        for case in cases[:budget]:
            case_vars = case.variables()
            variables = dict(case_vars)
            for pname, value in resolved.items():
                if isinstance(value, str):
                    ploc = _param_value_loc(cfg, pname, config[pname])
                    variables[pname] = value
                    if ploc in failed:
                        continue
                    try:
                        variables[pname] = render(value, {**case_vars, **resolved})
                    except TemplateError as exc:
                        failed.add(ploc)
                        ctx.add(ploc, f"{_template_message(exc)} (test case {short(case.id, 40)})")
                    except Exception as exc:  # noqa: BLE001 - Jinja runtime errors
                        failed.add(ploc)
                        ctx.add(ploc, f"template raised {type(exc).__name__}: {short(str(exc), 200)} "
                                      f"(test case {short(case.id, 40)})")
                else:
                    variables[pname] = value
            variables["params"] = {k: variables[k] for k in resolved}
            for tloc, fn in templates:
                if tloc in failed:
                    continue
                try:
                    fn(variables)
                except TemplateError as exc:
                    failed.add(tloc)
                    ctx.add(tloc, f"{_template_message(exc)} (test case {short(case.id, 40)}, configuration "
                                  f"{short(config, 120)})")
                except Exception as exc:  # noqa: BLE001
                    failed.add(tloc)
                    ctx.add(tloc, f"template raised {type(exc).__name__}: {short(str(exc), 200)} "
                                  f"(test case {short(case.id, 40)})")
    if not cases:  # still catch syntax errors
        for tloc, fn in templates:
            _compile_only(ctx, tloc, fn)


def _render_text(fn: Callable[[Any, dict[str, Any]], Any], source: Any, variables: dict[str, Any]) -> Any:
    return fn(source, variables)


def _rendered_header(name: str, fn: Callable[[str, dict[str, Any]], str], source: str,
                     variables: dict[str, Any]) -> str:
    value = fn(source, variables)
    problem = header_problem(name, value)
    if problem:
        raise ValueError(f"rendered header {problem.removeprefix('the ')}")
    return value


def _compile_only(ctx: _Ctx, loc: tuple[Any, ...], fn: Callable[[dict[str, Any]], Any]) -> None:
    import jinja2

    from convergence.targets.templating import TemplateError

    class _Lenient(dict):  # every variable exists: only syntax is checked
        def __missing__(self, key: str) -> str:
            return ""

    try:
        fn(_Lenient())
    except TemplateError as exc:
        if "syntax error" in str(exc):
            ctx.add(loc, _template_message(exc))
    except (jinja2.TemplateError, Exception):  # noqa: BLE001 - runtime errors need real variables
        pass


def _template_message(exc: Exception) -> str:
    return short(str(exc), 300).strip("'\"")


def _param_value_loc(cfg: Any, name: str, label: Any) -> tuple[Any, ...]:
    p = cfg.search_space.parameters[name]
    loc: tuple[Any, ...] = ("search_space", "parameters", name, "values")
    values = getattr(p, "values", None)
    if isinstance(values, dict):
        return loc + (label,)
    if isinstance(values, list):
        for i, v in enumerate(values):
            if v == label:
                return loc + (i,)
    return loc


def _storage_and_output(ctx: _Ctx) -> None:
    cfg = ctx.cfg
    db = ctx.loaded.db_path
    problem = _file_problem(db, sqlite=True)
    if problem:
        ctx.add(("legacy", "sqlite_path") if _from_legacy(cfg, "sqlite_path") else ("storage", "path"), problem)
    out = resolve_path(ctx.base, cfg.output.save_path)
    problem = _dir_problem(out)
    if problem:
        ctx.add(("legacy", "export_dir") if _from_legacy(cfg, "export_dir") else ("output", "save_path"), problem)
    export = cfg.output.export_best_config
    if export.enabled and export.output_path:
        p = Path(os.path.expanduser(export.output_path))
        target = p if p.is_absolute() else out / "run-1" / p
        problem = _file_problem(target, sqlite=False)
        if problem:
            ctx.add(("output", "export_best_config", "output_path"), problem)


def _show(p: Path) -> str:
    text = str(p)
    return text if len(text) <= 120 else text[:117] + "..."


def _from_legacy(cfg: Any, name: str) -> bool:
    return cfg.legacy is not None and getattr(cfg.legacy, name) is not None


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _dir_problem(p: Path) -> str | None:
    """Why ``p`` cannot be (or become) a writable directory, or None."""
    try:
        if p.exists():
            if not p.is_dir():
                return f"{_show(p)} is an existing file, not a directory"
            if not os.access(p, os.W_OK | os.X_OK):
                return f"the directory {_show(p)} is not writable"
            return None
        return _creatable(p)
    except OSError as exc:
        return f"cannot use {_show(p)}: {exc.strerror or exc}"


def _creatable(p: Path) -> str | None:
    """Why ``p`` (which does not exist) cannot be created, or None."""
    anc = _nearest_existing(p)
    if not anc.is_dir():
        return f"cannot create {_show(p)}: {_show(anc)} is a file"
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"cannot create {_show(p)}: the directory {_show(anc)} is not writable"
    return None


def _file_problem(p: Path, *, sqlite: bool) -> str | None:
    """Why ``p`` cannot be (or become) a writable file (a SQLite database when ``sqlite``), or None."""
    try:
        if p.exists():
            if p.is_dir():
                return f"{_show(p)} is a directory; this must be a file path"
            if not p.is_file():
                return f"{_show(p)} is not a regular file"
            if not os.access(p, os.R_OK | os.W_OK):
                return f"{_show(p)} is not readable and writable"
            if sqlite:
                with p.open("rb") as fh:
                    head = fh.read(len(SQLITE_HEADER))
                if head and head != SQLITE_HEADER:
                    return f"{_show(p)} exists but is not a SQLite database"
                if not os.access(p.parent, os.W_OK | os.X_OK):
                    return f"the directory of {_show(p)} is not writable (SQLite needs its -wal file there)"
            return None
        return _creatable(p)
    except OSError as exc:
        return f"cannot use {_show(p)}: {exc.strerror or exc}"


# --------------------------------------------------------------------------- imports


def _learner(ctx: _Ctx) -> None:
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


def _import(ctx: _Ctx, spec: str, loc: tuple[Any, ...]) -> Callable[..., Any] | None:
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
