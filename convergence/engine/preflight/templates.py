"""Preflight checks of the Jinja templates: compiled, and rendered once per test case (and per categorical
template value) so a ``{{ typo }}`` is found before the first call."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from convergence.config.models import (
    HTTPTargetConfig,
    LiteLLMTargetConfig,
    short,
)
from convergence.engine.preflight.checks import header_problem
from convergence.engine.preflight.context import MAX_RENDERS, Ctx


def _templates(ctx: Ctx) -> None:
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


def _compile_only(ctx: Ctx, loc: tuple[Any, ...], fn: Callable[[dict[str, Any]], Any]) -> None:
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
