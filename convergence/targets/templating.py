"""Jinja rendering of prompts, messages and request bodies.

Two stages so a parameter can *be* a prompt template: string parameters are
rendered first against the test case, then the target's own template is
rendered against the test case plus the rendered parameters. Test-case text is
never re-rendered, so a ``{{`` inside an input stays literal.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

from convergence.core.types import Config, TestCase
from convergence.errors import ConvergenceError

MAX_RANGE = 10_000
"""Longest ``range()`` or repeated list a template may build (a prompt needs a few; ``range(10**9)`` hangs)."""
MAX_OUTPUT_CHARS = 1_000_000
"""Longest rendered text or built string: past it a template is an error, not a hang or a memory blow-up."""
MAX_STEPS = 1_000_000
"""Loop iterations, attribute lookups and operator calls one render may take (nested loops stop here)."""

_steps: contextvars.ContextVar[list[int]] = contextvars.ContextVar("template_steps")
_BIG_WIDTH = re.compile(r"%[-+ #0]*(\d{7,}|\*)")


class TemplateError(ConvergenceError, ValueError):
    """A template that cannot render: an undefined variable, a syntax error, or past a limit."""


def _step(n: int = 1) -> None:
    box = _steps.get(None)
    if box is not None:
        box[0] += n
        if box[0] > MAX_STEPS:
            raise TemplateError(f"takes more than {MAX_STEPS:,} steps (loops, lookups); templates must stay small")


def _safe_range(*args: int) -> Iterator[int]:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise TemplateError(f"range() of {len(r):,} items: templates may build at most {MAX_RANGE:,}")
    for i in r:
        _step()
        yield i


def _width_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> Any:
        if isinstance(width, int) and width > MAX_OUTPUT_CHARS:
            raise TemplateError(f"{name}({width:,}) is wider than {MAX_OUTPUT_CHARS:,} characters")
        return fn(value, width, *args, **kwargs)

    return bounded


class _Namespace(Namespace):
    """``namespace()`` whose values stay small: ``{% set ns.a = ns.a ~ ns.a %}`` in a loop cannot double a
    string until memory runs out."""

    def __setitem__(self, name: str, value: Any) -> None:
        _step()
        if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_OUTPUT_CHARS:
            raise TemplateError(f"namespace value {name!r} grew past {MAX_OUTPUT_CHARS:,} items")
        super().__setitem__(name, value)


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox (no attribute tricks into Python internals) with bounded work: ``range`` is capped,
    ``*``/``**``/``%`` may not build huge values, and every loop step, lookup and call counts toward
    :data:`MAX_STEPS`, so ``validate`` and a run never hang on a template."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and not isinstance(n, bool):
                    limit = MAX_OUTPUT_CHARS if isinstance(seq, str) else MAX_RANGE
                    if len(seq) * n > limit:
                        raise TemplateError(f"'*' would build {len(seq) * n:,} items (at most {limit:,})")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise TemplateError(f"'**' with exponent {right} is too large for a template (at most 64)")
        if operator == "%" and isinstance(left, str) and _BIG_WIDTH.search(left):
            raise TemplateError("'%' formatting with a huge or '*' width is not allowed in a template")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _step()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        return super().call(__context, __obj, *args, **kwargs)


def make_environment() -> jinja2.Environment:
    """The one Jinja environment factory: every prompt, message, header and body template renders here."""
    env = _Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.globals["range"] = _safe_range
    env.globals["namespace"] = _Namespace
    for name in ("center", "indent", "wordwrap", "truncate"):
        env.filters[name] = _width_filter(name, env.filters[name])
    return env


_ENV = make_environment()


@lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def render(source: str, variables: dict[str, Any]) -> str:
    if "{{" not in source and "{%" not in source:
        return source
    token = _steps.set([0])
    try:
        template = _compile(source)
        out: list[str] = []
        size = 0
        for chunk in template.generate(**variables):  # streamed, so a runaway loop stops at the limit
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateError(f"template {source[:60]!r} renders more than {MAX_OUTPUT_CHARS:,} characters")
            out.append(chunk)
        return "".join(out)
    except TemplateError as exc:
        if str(exc).startswith("template "):
            raise
        raise TemplateError(f"template {source[:60]!r}: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {source[:60]!r}: {exc.message}; available: {sorted(variables)}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {source[:60]!r} has a syntax error: {exc.message}") from exc
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template {source[:60]!r} is not allowed: {exc}") from exc
    except (OverflowError, MemoryError, RecursionError) as exc:
        raise TemplateError(f"template {source[:60]!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        _steps.reset(token)


def variables_for(params: Config, case: TestCase) -> dict[str, Any]:
    """Case variables plus parameters, string parameters rendered against the case."""
    case_vars = case.variables()
    out = dict(case_vars)
    for name, value in params.items():
        out[name] = render(value, {**case_vars, **params}) if isinstance(value, str) else value
    out["params"] = {k: out[k] for k in params}
    return out


def render_tree(node: Any, variables: dict[str, Any]) -> Any:
    """Render every string inside a JSON-like structure. A string that is
    exactly ``{{ name }}`` keeps the variable's type (numbers stay numbers)."""
    if isinstance(node, str):
        stripped = node.strip()
        if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
            key = stripped[2:-2].strip()
            if key in variables:
                return variables[key]
        return render(node, variables)
    if isinstance(node, dict):
        return {k: render_tree(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [render_tree(v, variables) for v in node]
    return node
