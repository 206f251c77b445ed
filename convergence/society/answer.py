"""Configurations as an LLM's answer: a JSON schema of the search space (for
grammar-constrained decoding or a provider's ``response_format``) and a
strict parser. An answer that does not parse, or names a value outside the
space, is an :class:`AnswerError`: counted by the agent, never evaluated.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from convergence.core.space import Dimension, SearchSpace
from convergence.core.types import Config
from convergence.errors import ConvergenceError

MAX_ENUM = 64
"""A stepped numeric range with at most this many grid points is offered as an enum."""


class AnswerError(ConvergenceError):
    """The LLM's answer is not a configuration of the search space."""


def grid(d: Dimension) -> list[Any] | None:
    """Every value a dimension can take, when there are few enough to list."""
    if d.kind in ("categorical", "values"):
        return list(d.choices)
    step = d.step or (1 if d.kind == "integer" else None)
    if step is None:
        return None
    n = round((d.high - d.low) / step) + 1
    if n > MAX_ENUM:
        return None
    return sorted({d.snap(d.low + i * step) for i in range(n)})


def value_schema(d: Dimension, allowed: Sequence[Any] | None = None) -> dict[str, Any]:
    values = list(allowed) if allowed else grid(d)
    if values is not None:
        return {"enum": values}
    if d.kind == "integer":
        return {"type": "integer", "minimum": int(d.low), "maximum": int(d.high)}
    return {"type": "number", "minimum": d.low, "maximum": d.high}


def config_schema(space: SearchSpace, allowed: Mapping[str, Sequence[Any] | None] | None = None) -> dict[str, Any]:
    """A JSON object with exactly the space's parameters, each restricted to
    its values (or to ``allowed[name]``, a strategy's narrower choice)."""
    allowed = allowed or {}
    return {
        "type": "object",
        "properties": {name: value_schema(d, allowed.get(name)) for name, d in space.dims.items()},
        "required": list(space.dims),
        "additionalProperties": False,
    }


def answer_schema(space: SearchSpace, k: int, allowed: Mapping[str, Sequence[Any] | None] | None = None
                  ) -> dict[str, Any]:
    """One configuration object, or ``{"configs": [k objects]}``."""
    one = config_schema(space, allowed)
    if k == 1:
        return one
    return {"type": "object", "properties": {"configs": {"type": "array", "items": one, "minItems": k,
                                                          "maxItems": k}},
            "required": ["configs"], "additionalProperties": False}


_JSON_START = re.compile(r"[\[{]")


def _first_json(text: str) -> Any:
    """The first JSON value in ``text`` (models often wrap it in prose or fences)."""
    decoder = json.JSONDecoder()
    for m in _JSON_START.finditer(text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
            return value
        except json.JSONDecodeError:
            continue
    raise AnswerError(f"no JSON in the answer: {text[:80]!r}")


def _coerce(d: Dimension, v: Any) -> Any:
    """The space's own value for ``v``, or AnswerError. Only lossless coercions
    (``"0.3"`` -> 0.3 for numbers, ``4.0`` -> 4); never snapping an off-grid number."""
    if d.kind in ("categorical", "values"):
        for c in d.choices:
            if isinstance(v, bool) != isinstance(c, bool):
                continue  # true is not 1
            if v == c or (isinstance(c, str) and isinstance(v, str) and v.strip() == c):
                return c
        raise AnswerError(f"{d.name}={v!r} is not one of {list(d.choices)[:12]}")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise AnswerError(f"{d.name}={v!r} is not a number") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AnswerError(f"{d.name}={v!r} is not a number")
    if not d.low <= v <= d.high:
        raise AnswerError(f"{d.name}={v!r} is outside {d.low:g}..{d.high:g}")
    snapped = d.snap(float(v))
    if abs(float(snapped) - float(v)) > 1e-9 * max(1.0, abs(float(v))):
        raise AnswerError(f"{d.name}={v!r} is not on the grid (step {d.step:g})")
    return snapped


def parse_answer(text: str, space: SearchSpace, k: int) -> list[Config]:
    """Exactly ``k`` configurations of ``space`` from an answer, or AnswerError."""
    value = _first_json(text)
    if isinstance(value, dict) and "configs" in value and set(value) == {"configs"}:
        value = value["configs"]
    items = value if isinstance(value, list) else [value]
    if len(items) < k:
        raise AnswerError(f"expected {k} configuration(s), got {len(items)}")
    out: list[Config] = []
    for item in items[:k]:
        if not isinstance(item, dict):
            raise AnswerError(f"a configuration must be a JSON object, got {type(item).__name__}")
        missing = [n for n in space.dims if n not in item]
        extra = [n for n in item if n not in space.dims]
        if missing or extra:
            raise AnswerError("; ".join(filter(None, [
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(map(str, extra))}" if extra else ""])))
        out.append({name: _coerce(d, item[name]) for name, d in space.dims.items()})
    return out
