"""Built-in metrics and the resolution of a metric's ``function``.

Every metric has one signature, ``fn(output, case, call, args) -> float``, so
the evaluator can run them in a tight loop without special cases. They are
called for every test case of every trial (thousands per second in the
throughput benchmark), so per-call work stays small: regexes, JSON-schema
validators and custom-evaluator lookups are prepared once and cached.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from convergence.config.models import CustomEvaluatorConfig, JudgeConfig, MetricConfig
from convergence.core.types import CallResult, TestCase
from convergence.errors import ConvergenceError
from convergence.evaluation.text import to_text

SyncMetricFn = Callable[[Any, TestCase, CallResult, dict[str, Any]], float]
AsyncMetricFn = Callable[[Any, TestCase, CallResult, dict[str, Any]], Awaitable[float]]
MetricFn = SyncMetricFn | AsyncMetricFn


class MetricError(ConvergenceError, ValueError):
    """A metric could not score one test case (e.g. the case has no ``expected``)."""


class MetricConfigError(ConvergenceError, ValueError):
    """A metric's configuration cannot be turned into a function."""


# --------------------------------------------------------------------------- text helpers

_PUNCT = re.compile(r"[^\w\s]|_")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.S)


def normalize(value: Any) -> str:
    """Casefold, turn punctuation into spaces, collapse whitespace.

    Punctuation becomes a space (not nothing) so "New-York" equals "new york"
    and "3.14" never equals "314".
    """
    return " ".join(_PUNCT.sub(" ", to_text(value).casefold()).split())


def _answers(case: TestCase, metric: str) -> list[Any]:
    """The acceptable answers of a case: ``expected`` or each item of a list."""
    exp = case.expected
    if exp is None:
        raise MetricError(f"{metric}: test case {case.id!r} has no 'expected' value to compare with")
    return exp if isinstance(exp, list) else [exp]


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


# --------------------------------------------------------------------------- built-ins


def exact_match(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """1.0 when the normalised output equals a normalised acceptable answer."""
    answers = _answers(case, "exact_match")
    if not isinstance(output, str) and output in answers:
        return 1.0
    out = normalize(_first_line(to_text(output)) if args.get("first_line_only") else output)
    for a in answers:
        if normalize(a) == out:
            return 1.0
    return 0.0


def contains(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """1.0 when a normalised acceptable answer appears in the output as whole words
    ("4" is not found in "14")."""
    text = to_text(output)
    if args.get("first_line_only"):
        text = _first_line(text)
    padded = f" {normalize(text)} "
    for a in _answers(case, "contains"):
        needle = normalize(a)
        if needle:
            if f" {needle} " in padded:
                return 1.0
        elif to_text(a).casefold() in text.casefold():  # answer made only of punctuation
            return 1.0
    return 0.0


_REGEX_CACHE: dict[tuple[str, int], re.Pattern[str]] = {}


def _compiled(pattern: str, flags: int) -> re.Pattern[str]:
    key = (pattern, flags)
    rx = _REGEX_CACHE.get(key)
    if rx is None:
        try:
            rx = re.compile(pattern, flags)
        except re.error as e:
            raise MetricError(f"regex: invalid pattern {pattern!r}: {e}") from e
        if len(_REGEX_CACHE) > 4096:
            _REGEX_CACHE.clear()
        _REGEX_CACHE[key] = rx
    return rx


def regex(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """1.0 when ``args.pattern`` (or the case's expected value used as a pattern)
    matches the output. ``args.ignore_case`` and ``args.fullmatch`` are optional."""
    flags = re.IGNORECASE if args.get("ignore_case") else 0
    pattern = args.get("pattern")
    patterns = [pattern] if pattern is not None else _answers(case, "regex")
    text = to_text(output)
    full = bool(args.get("fullmatch"))
    for p in patterns:
        rx = _compiled(str(p), flags)
        if (rx.fullmatch(text.strip()) if full else rx.search(text)) is not None:
            return 1.0
    return 0.0


def first_number(value: Any) -> float | None:
    """The first number in ``value`` (thousands separators allowed), or None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    m = _NUMBER.search(to_text(value))
    if m is None:
        return None
    return float(m.group().replace(",", ""))


def numeric(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """Closeness of the first number in the output to the expected number:
    1.0 within ``tolerance`` (absolute, default 1e-6) or ``rel_tolerance``,
    otherwise ``exp(-|diff| / scale)`` with ``scale`` default ``max(|expected|, 1)``."""
    got = first_number(output)
    if got is None:
        return 0.0
    tol = float(args.get("tolerance", 1e-6))
    rel = args.get("rel_tolerance")
    best = 0.0
    for a in _answers(case, "numeric"):
        want = first_number(a)
        if want is None:
            raise MetricError(f"numeric: expected value {a!r} of test case {case.id!r} is not a number")
        diff = abs(got - want)
        if diff <= tol or (rel is not None and diff <= float(rel) * abs(want)):
            return 1.0
        scale = float(args.get("scale") or max(abs(want), 1.0))
        best = max(best, math.exp(-diff / scale))
    return best


def _parse_json(output: Any, args: dict[str, Any]) -> tuple[bool, Any]:
    if isinstance(output, (dict, list)):
        return True, output
    text = to_text(output).strip()
    if args.get("allow_code_fence", True):
        m = _FENCE.match(text)
        if m is not None:
            text = m.group(1).strip()
    try:
        return True, json.loads(text)
    except (ValueError, TypeError):
        return False, None


def json_valid(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """1.0 when the output is valid JSON (a ```json fence around it is allowed
    unless ``args.allow_code_fence`` is false)."""
    return 1.0 if _parse_json(output, args)[0] else 0.0


_VALIDATORS: dict[int, tuple[Any, Any]] = {}


def _validator(schema: Any) -> Any:
    """A compiled jsonschema validator, built once per schema object."""
    hit = _VALIDATORS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, dict):
        raise MetricError(f"json_schema: args.schema must be a JSON object (or a path to one), got {schema!r}")
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        raise MetricError(f"json_schema: invalid schema: {e.message}") from e
    v = cls(schema)
    _VALIDATORS[id(schema)] = (schema, v)  # keeps schema alive, so its id is never reused
    return v


def json_schema(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """1.0 when the output is JSON valid against ``args.schema``."""
    schema = args.get("schema")
    if schema is None:
        raise MetricError("json_schema: args.schema is required (a JSON Schema object or a path to a .json file)")
    ok, data = _parse_json(output, args)
    if not ok:
        return 0.0
    return 1.0 if _validator(schema).is_valid(data) else 0.0


def similarity(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """difflib ratio of the normalised output to the closest acceptable answer."""
    out = normalize(output)
    return max(SequenceMatcher(None, out, normalize(a), autojunk=False).ratio() for a in _answers(case, "similarity"))


LATENCY_MEASURES = ("wall", "attempt")


def latency(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """The call's latency in milliseconds.

    By default (``args.measure: wall``) this is the time a user waits:
    ``CallResult.wall_ms``, from the start of the first attempt to the end of
    the last, failed attempts and backoff sleeps (``Retry-After`` included).
    ``args.measure: attempt`` scores ``latency_ms``, the successful attempt
    alone, which ignores how often the endpoint had to be retried. A result
    without a wall time (``wall_ms`` 0, e.g. stored before it was recorded)
    falls back to ``latency_ms``."""
    if args.get("measure") == "attempt":
        return call.latency_ms
    return call.wall_ms or call.latency_ms


def cost(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """The call's cost in USD, from real token usage."""
    return call.cost_usd


def success(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    """1.0 when the call succeeded (after retries); the-convergence's ``success_rate``."""
    return 1.0 if call.error is None else 0.0


BUILTINS: dict[str, SyncMetricFn] = {
    "exact_match": exact_match,
    "contains": contains,
    "regex": regex,
    "numeric": numeric,
    "json_valid": json_valid,
    "json_schema": json_schema,
    "similarity": similarity,
    "latency": latency,
    "cost": cost,
    "success": success,
}
"""Sync built-ins. ``llm_judge`` and ``custom`` are resolved by :func:`resolve_metric`."""

SPECIAL = ("llm_judge", "custom", "sao_preference")
TRIAL_LEVEL = frozenset({"sao_preference"})
"""Metrics of a configuration, not of a test case: the loop supplies their value when it scores a trial
(``sao_preference``: the SAO agent's preference rating of the configuration, 0.5 until it is compared)."""
OPERATIONAL = frozenset({"latency", "cost"})
"""Metrics measured on the call itself: still meaningful when the call failed."""


# --------------------------------------------------------------------------- resolution


class Metric:
    """A resolved metric: a callable with the common signature plus what the
    evaluator needs to know about it (its function name, prepared args, async)."""

    __slots__ = ("args", "fn", "function", "is_async", "name")

    def __init__(self, name: str, function: str, fn: MetricFn, args: dict[str, Any], is_async: bool) -> None:
        self.name = name
        self.function = function
        self.fn = fn
        self.args = args
        self.is_async = is_async

    def __call__(self, output: Any, case: TestCase, call: CallResult, args: dict[str, Any] | None = None) -> Any:
        return self.fn(output, case, call, self.args if args is None else args)

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, function={self.function!r})"


def _trial_level(output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
    raise MetricError("a trial-level metric has no per-case value (the evaluator never calls this)")


def infer_function(name: str, has_custom: bool) -> str:
    """The function a metric without ``function:`` uses, from its name."""
    low = name.lower()
    if "latency" in low:
        return "latency"
    if "cost" in low:
        return "cost"
    if "accuracy" in low or "exact" in low:
        return "exact_match"
    if "success" in low:
        return "success"
    if has_custom:
        return "custom"
    raise MetricConfigError(
        f"metric '{name}': cannot tell which function computes it; set 'function:' to one of "
        f"{', '.join(sorted([*BUILTINS, *SPECIAL]))} or 'module:function' "
        "(or configure evaluation.custom_evaluator)"
    )


def resolve_metric(
    name: str, cfg: MetricConfig, custom: CustomEvaluatorConfig | None, base_dir: Path
) -> Metric:
    """Turn a metric's configuration into a :class:`Metric` (raises MetricConfigError)."""
    active_custom = custom if custom is not None and custom.enabled else None
    function = cfg.function or infer_function(name, active_custom is not None)
    args = _prepare_args(name, function, cfg.args, base_dir)
    from convergence.registry import PluginError, registry

    entry = registry().find("metric", function)
    if entry is not None:  # built-in (sync, our signature) or a plugin (adapted like 'module:function')
        try:
            fn = registry().load("metric", function)
        except PluginError as exc:
            raise MetricConfigError(f"metric '{name}': {exc}") from None
        return Metric(name, function, fn, args, False) if entry.builtin else _adapt(name, function, fn, args)
    if function in TRIAL_LEVEL:
        return Metric(name, function, _trial_level, args, False)
    if function == "llm_judge":
        from convergence.evaluation.judge import LLMJudge

        try:
            judge = LLMJudge(cfg.judge or JudgeConfig())
        except ValueError as e:  # the judge's api_key_env is not set
            raise MetricConfigError(f"metric '{name}': {e}") from None
        return Metric(name, function, judge.metric, args, True)
    if function == "custom":
        if active_custom is None:
            raise MetricConfigError(
                f"metric '{name}': function 'custom' needs evaluation.custom_evaluator "
                "(module and function) to be configured and enabled"
            )
        target = _import(f"{active_custom.module}:{active_custom.function}", name, base_dir)
        return _adapt(name, f"custom:{active_custom.module}:{active_custom.function}", target, args)
    if ":" in function:
        return _adapt(name, function, _import(function, name, base_dir), args)
    raise MetricConfigError(
        f"metric '{name}': unknown function {function!r}; expected one of "
        f"{', '.join([*registry().names('metric'), *SPECIAL])} or 'module:function'"
    )


def _prepare_args(name: str, function: str, args: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Check and pre-load arguments once, so per-case calls stay cheap and a typo
    fails at startup rather than on every case."""
    out = dict(args)
    if function == "json_schema":
        schema = out.get("schema")
        if isinstance(schema, str):
            path = (base_dir / schema).resolve()
            try:
                out["schema"] = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError as e:
                raise MetricConfigError(f"metric '{name}': schema file not found: {path}") from e
            except (OSError, ValueError) as e:
                raise MetricConfigError(f"metric '{name}': cannot read JSON schema {path}: {e}") from e
        if out.get("schema") is None:
            raise MetricConfigError(f"metric '{name}': json_schema needs args.schema (an object or a file path)")
        try:
            _validator(out["schema"])
        except MetricError as e:
            raise MetricConfigError(f"metric '{name}': {e}") from e
    elif function == "regex" and out.get("pattern") is not None:
        try:
            _compiled(str(out["pattern"]), re.IGNORECASE if out.get("ignore_case") else 0)
        except MetricError as e:
            raise MetricConfigError(f"metric '{name}': {e}") from e
    elif function == "latency":
        measure = out.get("measure", "wall")
        if measure not in LATENCY_MEASURES:
            raise MetricConfigError(
                f"metric '{name}': args.measure must be one of {', '.join(LATENCY_MEASURES)}, got {measure!r}"
            )
    elif function == "numeric":
        for key in ("tolerance", "rel_tolerance", "scale"):
            if out.get(key) is not None:
                try:
                    v = float(out[key])
                except (TypeError, ValueError) as e:
                    raise MetricConfigError(f"metric '{name}': args.{key} must be a number, got {out[key]!r}") from e
                if v < 0 or (key == "scale" and v == 0):
                    raise MetricConfigError(f"metric '{name}': args.{key} must be positive, got {v}")
    return out


def _import(spec: str, name: str, base_dir: Path) -> Callable[..., Any]:
    """Import ``module:function`` (dotted attributes allowed) through the registry's loader, with
    base_dir importable, so an evaluator file next to optimization.yaml just works."""
    from convergence.registry import SpecError, load_spec

    try:
        obj = load_spec(spec, base_dir)
    except SpecError as exc:
        raise MetricConfigError(f"metric '{name}': {spec!r}: {exc}") from None
    if not callable(obj):
        raise MetricConfigError(f"metric '{name}': {spec!r} is not callable")
    return obj


def _positional(fn: Callable[..., Any]) -> tuple[list[str], bool, bool]:
    """(positional parameter names, accepts *args, accepts a ``metric`` argument)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], True, False
    names: list[str] = []
    var = False
    metric = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            var = True
        if p.name == "metric" or p.kind == p.VAR_KEYWORD:
            metric = True
    return names, var, metric


def _adapt(name: str, function: str, target: Callable[..., Any], args: dict[str, Any]) -> Metric:
    """Wrap a user function in the common signature.

    Two user signatures are accepted:

    * native: ``fn(output, case, call, args) -> float`` (recognised by a
      parameter named ``case`` or ``call``);
    * the-convergence: ``fn(response, expected, metadata[, metric]) -> float | dict``.
      Without a ``metric`` parameter it is called once per test case and a
      returned dict feeds every metric by name; with one it is called per
      metric with ``metric=<name>``. The third argument is the case's metadata.
    """
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__)
    names, _, takes_metric = _positional(target)
    if "case" in names or "call" in names:
        if is_async:
            async def native_async(output: Any, case: TestCase, call: CallResult, a: dict[str, Any]) -> float:
                return _as_score(await target(output, case, call, a), name, function)

            return Metric(name, function, native_async, args, True)

        def native(output: Any, case: TestCase, call: CallResult, a: dict[str, Any]) -> float:
            return _as_score(target(output, case, call, a), name, function)

        return Metric(name, function, native, args, False)

    cache = _shared_cache(target)
    per_metric = takes_metric

    def key_of(call: CallResult) -> tuple[int, str]:
        return (id(call), name if per_metric else "")

    def lookup(case: TestCase, call: CallResult) -> Any:
        hit = cache.get(key_of(call))
        if hit is not None and hit[0] is call and hit[1] is case:
            return hit[2]
        return _MISS

    def store(case: TestCase, call: CallResult, value: Any) -> None:
        if len(cache) >= 1024:
            del cache[next(iter(cache))]
        cache[key_of(call)] = (call, case, value)  # strong refs: ids stay unique while cached

    if is_async:
        async def legacy_async(output: Any, case: TestCase, call: CallResult, a: dict[str, Any]) -> float:
            value = lookup(case, call)
            if value is _MISS:
                if per_metric:
                    value = await target(output, case.expected, case.metadata, metric=name)
                else:
                    value = await target(output, case.expected, case.metadata)
                store(case, call, value)
            return _pick(value, name, function)

        return Metric(name, function, legacy_async, args, True)

    def legacy(output: Any, case: TestCase, call: CallResult, a: dict[str, Any]) -> float:
        value = lookup(case, call)
        if value is _MISS:
            if per_metric:
                value = target(output, case.expected, case.metadata, metric=name)
            else:
                value = target(output, case.expected, case.metadata)
            store(case, call, value)
        return _pick(value, name, function)

    return Metric(name, function, legacy, args, False)


_MISS = object()
_CACHES: dict[int, tuple[Any, dict[tuple[int, str], tuple[CallResult, TestCase, Any]]]] = {}


def _shared_cache(target: Callable[..., Any]) -> dict[tuple[int, str], tuple[CallResult, TestCase, Any]]:
    """One result cache per user function, shared by every metric it feeds, so a
    the-convergence evaluator returning a dict runs once per case, not once per metric."""
    hit = _CACHES.get(id(target))
    if hit is not None and hit[0] is target:
        return hit[1]
    cache: dict[tuple[int, str], tuple[CallResult, TestCase, Any]] = {}
    _CACHES[id(target)] = (target, cache)
    return cache


def _pick(value: Any, name: str, function: str) -> float:
    if isinstance(value, dict):
        if name not in value:
            raise MetricError(
                f"{function} returned keys {sorted(value)[:20]} but none named '{name}' "
                "(a dict result must have one key per custom metric)"
            )
        value = value[name]
    return _as_score(value, name, function)


def _as_score(value: Any, name: str, function: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{function} returned {value!r} for metric '{name}'; expected a number") from e
    if math.isnan(x) or math.isinf(x):
        raise MetricError(f"{function} returned {x} for metric '{name}'; expected a finite number")
    return x
