"""Load ``optimization.yaml`` into :class:`ConvergenceConfig` with errors a
person can act on: file, line, field path, what was expected, and a
did-you-mean for misspelt keys."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from convergence.config.models import ConvergenceConfig

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """One or more problems in a config file; ``str()`` is the full report."""

    def __init__(self, path: Path, problems: list["Problem"]):
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s)"]
        for p in self.problems:
            where = f"{self.path}:{p.line}" if p.line else str(self.path)
            field = f" {p.field}:" if p.field else ""
            lines.append(f"  {where}:{field} {p.message}")
        return "\n".join(lines)


@dataclass(slots=True)
class Problem:
    field: str
    message: str
    line: int | None = None


@dataclass(slots=True)
class LoadedConfig:
    config: ConvergenceConfig
    path: Path
    base_dir: Path
    raw: dict[str, Any]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and value."""


def _compose_lines(text: str) -> dict[tuple[Any, ...], int]:
    lines: dict[tuple[Any, ...], int] = {}
    node = yaml.compose(text, Loader=_LineLoader)

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, path + (i,))

    if node is not None:
        walk(node, ())
    return lines


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def _interpolate(node: Any, path: tuple[Any, ...], problems: list[Problem], lines: dict) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string."""
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(
                Problem(_dotted(path), f"environment variable {name} is not set (referenced as ${{{name}}})",
                        _line_for(lines, path))
            )
            return m.group(0)

        return _ENV_RE.sub(sub, node)
    if isinstance(node, dict):
        return {k: _interpolate(v, path + (k,), problems, lines) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, path + (i,), problems, lines) for i, v in enumerate(node)]
    return node


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple[Any, ...], data: Any) -> type[BaseModel] | None:
    """The pydantic model class whose fields live at ``loc`` (for did-you-mean).
    Walks dicts of models and picks a union member by its ``type`` tag in ``data``."""
    import typing

    ann: Any = ConvergenceConfig
    node = data
    parts = list(loc)
    while True:
        ann = _pick(ann, node)
        if ann is None:
            return None
        if not parts:
            break
        part = parts.pop(0)
        node = node.get(part) if isinstance(node, dict) else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part)
            if field is None:
                return None
            ann = field.annotation
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
        else:
            return None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _pick(ann: Any, node: Any) -> Any:
    """Strip Optional/Annotated; choose a union member by the node's ``type``."""
    import types as _types
    import typing

    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
            continue
        if origin in (typing.Union, _types.UnionType):
            members = [a for a in typing.get_args(ann) if a is not type(None)]
            models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(members) == 1:
                ann = members[0]
                continue
            tag = node.get("type") if isinstance(node, dict) else None
            for m in models:
                f = m.model_fields.get("type")
                if f is not None and tag in (typing.get_args(f.annotation) or ()):
                    return m
            return models[0] if len(models) == 1 else None
        return ann


def _friendly(err: dict[str, Any], data: Any) -> tuple[tuple[Any, ...], str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    # drop pydantic's union tags ("litellm", "categorical", ...) and validator names from the path
    clean = tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p in _UNION_TAGS)))
    if kind == "extra_forbidden":
        key = clean[-1]
        parent = _model_at(clean[:-1], data)
        known = list(parent.model_fields) if parent else []
        if parent:
            for f in parent.model_fields.values():
                if f.validation_alias is not None and hasattr(f.validation_alias, "choices"):
                    known += [c for c in f.validation_alias.choices if isinstance(c, str)]
        guess = sorted(
            difflib.get_close_matches(str(key), known, n=3),
            key=lambda k: (sorted(k) != sorted(str(key)), -difflib.SequenceMatcher(None, k, str(key)).ratio()),
        )
        hint = f"; did you mean '{guess[0]}'?" if guess else (f"; expected one of: {', '.join(known)}" if known else "")
        return clean, f"unknown key '{key}'{hint}"
    if kind == "missing":
        return clean, "required field is missing"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return clean, f"got {err.get('input')!r}, expected {expected}"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return clean, f"unknown {ctx.get('discriminator', 'type')} {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return clean, f"needs a '{err.get('ctx', {}).get('discriminator', 'type').strip(chr(39))}' field"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return clean, msg


_UNION_TAGS = {"litellm", "http", "python", "categorical", "continuous", "float", "discrete", "int", "integer"}


def parse_config(text: str, path: Path) -> LoadedConfig:
    """Parse YAML text; raise :class:`ConfigError` with every problem found."""
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
        lines = _compose_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [Problem("", f"invalid YAML: {problem}", line)]) from None
    if raw is None:
        raise ConfigError(path, [Problem("", "the file is empty; run `convergence init` for a starting point")])
    if not isinstance(raw, dict):
        raise ConfigError(path, [Problem("", f"expected a mapping at the top level, got {type(raw).__name__}", 1)])
    problems: list[Problem] = []
    data = _interpolate(raw, (), problems, lines)
    if problems:
        raise ConfigError(path, problems)
    if data.get("study") is None and data.get("api") is None:
        data = {"study": path.stem, **data}
    try:
        cfg = ConvergenceConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc, message = _friendly(err, data)
            problems.append(Problem(_dotted(loc), message, _line_for(lines, loc)))
        raise ConfigError(path, problems) from None
    return LoadedConfig(cfg, path, path.parent.resolve(), data)


def load_config(path: str | Path) -> LoadedConfig:
    p = Path(path)
    if not p.exists():
        raise ConfigError(p, [Problem("", "file not found")])
    if p.is_dir():
        candidate = p / "optimization.yaml"
        if not candidate.exists():
            raise ConfigError(p, [Problem("", "is a directory without optimization.yaml")])
        p = candidate
    return parse_config(p.read_text(encoding="utf-8"), p)


def resolve_path(base_dir: Path, value: str) -> Path:
    q = Path(os.path.expanduser(value))
    return q if q.is_absolute() else (base_dir / q)
