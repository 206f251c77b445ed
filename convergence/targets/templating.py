"""Jinja rendering of prompts, messages and request bodies.

Two stages so a parameter can *be* a prompt template: string parameters are
rendered first against the test case, then the target's own template is
rendered against the test case plus the rendered parameters. Test-case text is
never re-rendered, so a ``{{`` inside an input stays literal.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2

from convergence.core.types import Config, TestCase
from convergence.errors import ConvergenceError

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


class TemplateError(ConvergenceError, ValueError):
    """A template refers to a variable the test case and configuration lack."""


@lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def render(source: str, variables: dict[str, Any]) -> str:
    if "{{" not in source and "{%" not in source:
        return source
    try:
        return _compile(source).render(**variables)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {source[:60]!r}: {exc.message}; available: {sorted(variables)}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {source[:60]!r} has a syntax error: {exc.message}") from exc


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
