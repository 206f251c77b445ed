"""Field types shared by every config section: bounded integers, finite floats, names,
non-empty text, the strict base model, and ``At`` (a validator's error about one field).

They sit below every section's models so ``models``, ``compat`` and ``society`` can all
build on them without importing one another in a circle.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

MAX_NAME = 200
"""Longest study, parameter or metric name (they are printed, stored and plotted)."""
SQLITE_MIN, SQLITE_MAX = -(2**63), 2**63 - 1
MAX_EXACT_INT = 2**53
"""Integer search ranges are sampled through floats: beyond 2**53 they would lose precision."""


class At(ValueError):
    """A validator's error about one field of the model (or a field further
    down), so the loader can report that field's path and line instead of
    the model's. ``path`` is relative to the model that raises it."""

    def __init__(self, path: str | int | tuple[Any, ...], message: str):
        """``path``: a tuple of keys/indexes, an index, or a dotted string of field names."""
        if isinstance(path, str):
            self.path: tuple[Any, ...] = tuple(path.split("."))
        elif isinstance(path, int):
            self.path = (path,)
        else:
            self.path = tuple(path)
        super().__init__(message)


def short(value: Any, limit: int = 80) -> str:
    """``repr`` of a value cut to ``limit`` characters, for messages that echo input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- field types


def _int_not_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"expected an integer, got {str(v).lower()} (a boolean)")
    return v


def _float_not_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {str(v).lower()} (a boolean)")
    return v


def _sqlite_range(v: int) -> int:
    if not SQLITE_MIN <= v <= SQLITE_MAX:
        raise ValueError(f"{short(v, 30)} is out of range: integers must fit 64 bits (|x| < 2**63)")
    return v


Int = Annotated[int, BeforeValidator(_int_not_bool), AfterValidator(_sqlite_range)]
"""An integer: ``3`` and ``"3"`` (from ``${VAR}``) are fine; ``true`` and ``3.5`` are not."""
Float = Annotated[float, BeforeValidator(_float_not_bool)]
"""A finite number (the model config refuses inf/nan); ``true`` is not 1.0."""


def _name(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    if len(v) > MAX_NAME:
        raise ValueError(f"is {len(v)} characters long; at most {MAX_NAME} are allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("must not contain control characters (newlines, tabs, ...)")
    return v


def _non_empty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _env_name(v: str) -> str:
    if not _ENV_NAME.match(v):
        raise ValueError(f"{short(v, 60)} is not an environment variable name: letters, digits and _, "
                         "not starting with a digit (e.g. OPENAI_API_KEY)")
    return v


def _no_control(v: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"{short(v, 60)} contains control characters (a newline, a tab, NUL ...)")
    return v


def _model_name(v: str) -> str:
    if any(c.isspace() for c in v) or not v.isprintable():
        raise ValueError(f"{short(v, 60)} is not a model name: model strings have no spaces or control "
                         "characters (e.g. openai/gpt-4o-mini, local/gemma-3-270m)")
    return v


def url_problem(url: str) -> str | None:
    """What is wrong with an HTTP(S) URL that gets called, or None."""
    if "{{" in url or "{%" in url:
        return f"{short(url, 80)} is not a template: the URL is called as written"
    if any(c.isspace() for c in url) or not url.isprintable():
        return f"{short(url, 80)} contains whitespace or control characters; expected http(s)://host[:port]/..."
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


def _url(v: str) -> str:
    problem = url_problem(v)
    if problem:
        raise ValueError(problem)
    return v


def _field_path(v: str) -> str:
    if any(not part.strip() for part in v.split(".")):
        raise ValueError(f"{short(v, 60)} is not a dotted field path: a part is empty (expected e.g. "
                         "choices.0.message.content)")
    return v


Name = Annotated[str, AfterValidator(_name)]
"""A study, parameter or metric name: 1-200 printable characters."""
Text = Annotated[str, AfterValidator(_non_empty)]
"""A non-empty string (model, endpoint, function, path ...)."""
EnvName = Annotated[str, AfterValidator(_env_name)]
"""The name of an environment variable (``OPENAI_API_KEY``): what ``*_env`` keys hold."""
PathText = Annotated[str, AfterValidator(_non_empty), AfterValidator(_no_control)]
"""A file or folder path: non-empty, no control characters (a NUL cannot be in a path)."""
ModelName = Annotated[str, AfterValidator(_non_empty), AfterValidator(_model_name)]
"""A LiteLLM model string: non-empty, no spaces."""
Url = Annotated[str, AfterValidator(_non_empty), AfterValidator(_url)]
"""An http(s) URL that gets called (an ``api_base``)."""
FieldPath = Annotated[str, AfterValidator(_non_empty), AfterValidator(_field_path)]
"""A dotted path into a JSON response (``choices.0.text``): no empty parts."""


class Strict(BaseModel):
    """Base: unknown keys are errors (with a did-you-mean from the loader) and
    floats must be finite."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


ReportFormat = Literal["json", "markdown", "csv"]


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
