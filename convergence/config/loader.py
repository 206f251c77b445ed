"""Load ``optimization.yaml`` into :class:`ConvergenceConfig` with errors a
person can act on: file, line, field path, what was expected, and a
did-you-mean for misspelt keys.

Reading is defensive, because a config file is user input: binary or
non-UTF-8 files, duplicate keys, recursive aliases, alias bombs, absurd
nesting, YAML tags that do not map to JSON (``!!binary``, ``!!set``, dates),
infinite or NaN numbers and malformed ``${...}`` references are all reported
as :class:`ConfigError` problems, never as a traceback, and quickly.

Environment references: ``${NAME}`` and ``${NAME:-default}`` are replaced in
every string value; ``$${`` writes a literal ``${``; any other ``$`` is kept
as is. :attr:`LoadedConfig.raw` is the interpolated config,
:attr:`LoadedConfig.written` the config as written (references, not their
values), which is what may be stored or traced.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from convergence.config.models import MAX_NAME, At, ConvergenceConfig, short
from convergence.errors import ConvergenceError

MAX_FILE_BYTES = 1_000_000
"""Larger configs are refused (put big test sets in a JSON/JSONL file): pure-Python YAML parses ~0.4 MB/s."""
MAX_NODES = 100_000
"""Values in the document once every alias is expanded (a 'billion laughs' file has 10**9)."""
MAX_DEPTH = 100
"""Nesting depth of the document."""
MAX_REPORTED = 50
"""Problems listed in one report; the rest are counted."""

_YAML_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(_YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))
_MERGE_TAG = _YAML_TAG + "merge"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ConfigError(ConvergenceError):
    """One or more problems in a config file; ``str()`` is the full report."""

    def __init__(self, path: Path, problems: list[Problem]):
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s)"]
        for p in self.problems[:MAX_REPORTED]:
            where = f"{self.path}:{p.line}" if p.line else str(self.path)
            field = f" {p.field}:" if p.field else ""
            lines.append(f"  {where}:{field} {p.message}")
        if len(self.problems) > MAX_REPORTED:
            lines.append(f"  ... and {len(self.problems) - MAX_REPORTED} more")
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
    """The config after ``${VAR}`` interpolation (may hold secrets: never store or trace it)."""
    written: dict[str, Any] = field(default_factory=dict)
    """The config as written: ``${VAR}`` references kept, not their values (with the
    same defaults as ``raw``, e.g. the injected ``study`` name). Safe to store and trace."""
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)
    """Line of every field path, for problems found after loading (see preflight)."""

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        return _line_for(self.lines, loc)

    @property
    def db_path(self) -> Path:
        """The project database: ``storage.path`` relative to the YAML's folder."""
        return resolve_path(self.base_dir, self.config.storage.path)


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps: ``2024-01-01`` stays the text it
    looks like (a date object would not survive JSON storage)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _YAML_TAG + "timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _key_value(loader: _Loader, key: yaml.Node) -> Any:
    """The Python value of a scalar mapping key (``1`` and ``1.0`` are one key, as in
    a dict). Other keys (lists, mappings) stand for themselves: they are refused
    when the document is built."""
    if isinstance(key, yaml.ScalarNode) and key.tag in _ALLOWED_TAGS:
        try:
            return loader.construct_object(key)
        except yaml.YAMLError:
            return key.value
    return f"<{key.tag.replace(_YAML_TAG, '!!')} key at line {_line(key)}>"


def _check_nodes(loader: _Loader, root: yaml.Node) -> list[Problem]:
    """Structure checks on the composed document, before anything walks or builds
    it: recursive aliases, expansion size (alias bombs), depth. Iterative and
    memoised per node, so it is linear in the file's size."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        nid = id(node)
        if leaving:
            children = _children(node)
            size[nid] = 1 + sum(size[id(c)] for c in children)
            height[nid] = 1 + max((height[id(c)] for c in children), default=0)
            active.discard(nid)
            if size[nid] > MAX_NODES:
                return [Problem("", f"the document expands to more than {MAX_NODES:,} values through aliases "
                                    "(*name); an alias bomb? Write the values out or use fewer aliases",
                                _line(node))]
            if height[nid] > MAX_DEPTH:
                return [Problem("", f"values are nested more than {MAX_DEPTH} levels deep", _line(node))]
            continue
        if nid in size:
            continue  # an alias to a node already checked
        if nid in active:
            return [Problem("", "recursive alias: this anchored value contains an alias (*name) to itself",
                            _line(node))]
        active.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(_children(node)))
    return []


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _walk(loader: _Loader, root: yaml.Node) -> tuple[dict[tuple[Any, ...], int], list[Problem]]:
    """Line of every field path (keys as built, merged ``<<`` keys included), and
    the problems only a walk with paths can name: duplicate keys, unsupported tags.
    Runs after :func:`_check_nodes`, so the expanded tree is bounded."""
    lines: dict[tuple[Any, ...], int] = {}
    problems: list[Problem] = []

    def tag_ok(n: yaml.Node, path: tuple[Any, ...]) -> None:
        if n.tag not in _ALLOWED_TAGS:
            tag = n.tag.replace(_YAML_TAG, "!!")
            problems.append(Problem(_dotted(path), f"YAML tag {short(tag, 60)} is not supported: use plain strings, "
                                                  "numbers, booleans, lists and mappings", _line(n)))

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        lines.setdefault(path, _line(n))
        tag_ok(n, path)
        if isinstance(n, yaml.MappingNode):
            merges: list[yaml.Node] = []
            seen: dict[Any, int] = {}
            for k, v in n.value:
                if k.tag == _MERGE_TAG:
                    merges += v.value if isinstance(v, yaml.SequenceNode) else [v]
                    continue
                key = _key_value(loader, k)
                tag_ok(k, path + (key,))
                try:
                    first = seen.get(key)
                    if first is None:
                        seen[key] = _line(k)
                except TypeError:  # an unhashable key: refused when the document is built
                    first = None
                if first is not None:
                    problems.append(Problem(_dotted(path + (key,)), f"duplicate key {short(key, 60)} (first at line "
                                            f"{first}); YAML would silently keep only the last one", _line(k)))
                    continue
                lines[path + (key,)] = _line(k)
                walk(v, path + (key,))
            for m in merges:
                if isinstance(m, yaml.MappingNode):
                    for k, v in m.value:
                        key = _key_value(loader, k)
                        try:
                            if path + (key,) in lines:
                                continue
                        except TypeError:
                            continue
                        lines[path + (key,)] = _line(k)
                        walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, path + (i,))

    walk(root, ())
    seen_problems: set[tuple[str, int | None, str]] = set()
    unique = []
    for p in problems:  # an aliased node is walked once per alias
        if (p.field, p.line, p.message) not in seen_problems:
            seen_problems.add((p.field, p.line, p.message))
            unique.append(p)
    return lines, unique


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


# --------------------------------------------------------------------------- values


def _interpolate_text(text: str) -> tuple[str, list[str]]:
    """Replace ``${NAME}`` / ``${NAME:-default}``; ``$${`` is a literal ``${``.
    Returns the new text and what was wrong with any reference."""
    if "${" not in text:
        return text, []
    out: list[str] = []
    errors: list[str] = []
    i = 0
    while True:
        j = text.find("${", i)
        if j < 0:
            out.append(text[i:])
            break
        if j > 0 and text[j - 1] == "$":  # $${ -> literal ${
            out.append(text[i : j - 1] + "${")
            i = j + 2
            continue
        out.append(text[i:j])
        end = text.find("}", j + 2)
        if end < 0:
            errors.append(f"unclosed reference {short(text[j:j + 40], 50)}: expected '}}' "
                          "(write $${ for a literal '${')")
            out.append(text[j:])
            break
        body = text[j + 2 : end]
        name, sep, default = body.partition(":-")
        ref = short("${" + body + "}", 60)
        if "${" in body:
            errors.append(f"{ref}: nested references are not supported")
        elif not name:
            errors.append(f"{ref}: empty reference; expected ${{NAME}} or ${{NAME:-default}}")
        elif re.match(r"[A-Za-z_][A-Za-z0-9_]*[:?=+-]", name):
            errors.append(f"{ref}: unsupported syntax; a default value is written ${{NAME:-default}}")
        elif not _ENV_NAME.match(name):
            errors.append(f"{ref}: {short(name, 40)} is not an environment variable name (letters, digits "
                          "and _, not starting with a digit); a default is written ${NAME:-default}")
        elif name in os.environ:
            out.append(os.environ[name])
        elif sep:
            out.append(default)
        else:
            errors.append(f"environment variable {name} is not set (referenced as ${{{name}}}); "
                          f"export it or give a default: ${{{name}:-value}}")
        i = end + 1
    return "".join(out), errors


def interpolate(data: Any) -> tuple[Any, list[Problem]]:
    """``${...}`` references in a config as written (e.g. one stored with a run)
    replaced from the current environment, and what could not be replaced."""
    problems: list[Problem] = []
    return _rebuild(data, (), problems, {}, True), problems


def _rebuild(node: Any, path: tuple[Any, ...], problems: list[Problem], lines: dict,
             interpolate: bool) -> Any:
    """A fresh tree (aliases become copies). With ``interpolate`` strings get
    their ``${...}`` references replaced; without it, floats are checked finite."""
    if isinstance(node, str):
        if not interpolate:
            _check_encodable(node, path, problems, lines, "this value")
            return node
        text, errors = _interpolate_text(node)
        problems.extend(Problem(_dotted(path), e, _line_for(lines, path)) for e in errors)
        if not errors and text is not node:
            _check_encodable(text, path, problems, lines, "the value from the environment")
        return text
    if isinstance(node, dict):
        if not interpolate:
            for k in node:
                if isinstance(k, str):
                    _check_encodable(k, path + (k,), problems, lines, "this key")
        return {k: _rebuild(v, path + (k,), problems, lines, interpolate) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebuild(v, path + (i,), problems, lines, interpolate) for i, v in enumerate(node)]
    if isinstance(node, float) and not interpolate and not math.isfinite(node):
        problems.append(Problem(_dotted(path), f"{node} is not allowed: numbers must be finite (no .inf or .nan)",
                                _line_for(lines, path)))
    return node


def _check_encodable(text: str, path: tuple[Any, ...], problems: list[Problem], lines: dict, what: str) -> None:
    """A lone surrogate (``"\\udc80"`` in a double-quoted YAML string, or undecodable bytes in an
    environment variable) is not text: it cannot be stored, printed or sent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        problems.append(Problem(_dotted(path), f"{what} contains a lone surrogate U+{ord(bad):04X} at position "
                                               f"{exc.start}, which is not text (it cannot be stored or printed); "
                                               "write the character itself, or a valid \\U escape",
                                _line_for(lines, path)))


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        text = str(part)
        if not text.isprintable():
            text = repr(text)[1:-1]  # a newline in a key must not split the report's line
        if len(text) > 60:
            text = text[:57] + "..."
        out += f"[{text}]" if isinstance(part, int) and not isinstance(part, bool) else (f".{text}" if out else text)
    return out


# --------------------------------------------------------------------------- pydantic errors


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
            open_tag = [m for m in models if (f := m.model_fields.get("type")) is not None
                        and not typing.get_args(f.annotation)]  # a plugin's type: any name
            if tag is not None and len(open_tag) == 1:
                return open_tag[0]
            return models[0] if len(models) == 1 else None
        return ann


def _friendly(err: ErrorDetails, data: Any) -> tuple[tuple[Any, ...], str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    # drop pydantic's union tags ("litellm", "categorical", ...) and validator names from the path
    clean = tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p in _UNION_TAGS)))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, At):
        return clean + cause.path, str(cause)
    if clean and clean[-1] == "[key]":
        clean = clean[:-1]
        msg = err["msg"].removeprefix("Value error, ")
        return clean, f"this name {msg}"
    if kind == "extra_forbidden":
        key = clean[-1]
        parent = _model_at(clean[:-1], data)
        known = list(parent.model_fields) if parent else []
        if parent:
            for f in parent.model_fields.values():
                if f.validation_alias is not None and hasattr(f.validation_alias, "choices"):
                    known += [c for c in f.validation_alias.choices if isinstance(c, str)]
        text = str(key)
        guess = sorted(
            difflib.get_close_matches(text, known, n=3) if len(text) <= 100 else [],
            key=lambda k: (sorted(k) != sorted(text), -difflib.SequenceMatcher(None, k, text).ratio()),
        )
        hint = f"; did you mean '{guess[0]}'?" if guess else (f"; expected one of: {', '.join(known)}" if known else "")
        return clean, f"unknown key {short(text, 60)}{hint}"
    if kind == "missing":
        return clean, "required field is missing"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return clean, f"got {short(err.get('input'), 60)}, expected {expected}"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return clean, (f"unknown {ctx.get('discriminator', 'type')} {short(ctx.get('tag'), 60)}; "
                       f"expected one of {ctx.get('expected_tags')}")
    if kind == "union_tag_not_found":
        return clean, f"needs a '{err.get('ctx', {}).get('discriminator', 'type').strip(chr(39))}' field"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {short(err['input'], 60)})"
    return clean, msg


_UNION_TAGS = {"litellm", "http", "python", "plugin", "categorical", "continuous", "float", "discrete", "int",
               "integer"}


# --------------------------------------------------------------------------- entry points


def _study_from_file(path: Path) -> str:
    name = "".join(c if c.isprintable() else "_" for c in path.stem)[:MAX_NAME]
    return name if name.strip() else "study"


def parse_config(text: str, path: Path) -> LoadedConfig:
    """Parse YAML text; raise :class:`ConfigError` with every problem found."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(path, [Problem("", f"the file is {len(text):,} characters long; at most "
                                             f"{MAX_FILE_BYTES:,} are read (put large test sets in a "
                                             "JSON/JSONL file: evaluation.test_cases.path)")])
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(path, [Problem("", "the file is empty; run `convergence init` for a starting point")])
        problems = _check_nodes(loader, root)
        if problems:
            raise ConfigError(path, problems)
        lines, problems = _walk(loader, root)
        if problems:
            raise ConfigError(path, problems)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):
            line = text.count("\n", 0, exc.position) + 1
            problem = f"character #x{exc.character:04x} is not allowed in YAML (a control character?)" if isinstance(
                exc.character, int) else str(exc.reason)
        problem = " ".join(str(problem).split())
        raise ConfigError(path, [Problem("", f"invalid YAML: {problem[:200]}", line)]) from None
    except RecursionError:
        raise ConfigError(path, [Problem("", f"values are nested too deeply (at most {MAX_DEPTH} levels)")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(path, [Problem("", f"expected a mapping at the top level, got {type(data).__name__}", 1)])
    return _from_data(data, path, lines, path.parent.resolve())


def parse_mapping(data: Any, base_dir: str | Path | None = None, *, name: str = "<dict>") -> LoadedConfig:
    """A config given as a Python mapping (``optimize({...})``), checked exactly like a file's
    contents; relative paths in it are relative to ``base_dir`` (default: the current folder).
    Problems name ``name`` instead of a file, and have no line."""
    path = Path(name)
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(path, [Problem("", "expected a mapping of section names (study, target, search_space, "
                                             f"...) to their settings, got {type(data).__name__}")])
    import json

    try:  # the same value types YAML gives: JSON-like data, fresh (no shared or recursive objects)
        data = json.loads(json.dumps(data, allow_nan=True))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(path, [Problem("", f"the mapping holds a value a config cannot: {short(str(exc), 120)} "
                                             "(use strings, numbers, booleans, lists and mappings)")]) from None
    loaded = _from_data(data, path, {}, Path(base_dir or ".").resolve())
    return loaded


def _from_data(data: dict[str, Any], path: Path, lines: dict[tuple[Any, ...], int], base_dir: Path) -> LoadedConfig:
    problems: list[Problem] = []
    written = _rebuild(data, (), problems, lines, interpolate=False)
    if problems:
        raise ConfigError(path, problems)
    raw = _rebuild(data, (), problems, lines, interpolate=True)
    if problems:
        raise ConfigError(path, problems)
    legacy = raw.get("legacy")
    has_session = isinstance(legacy, dict) and legacy.get("session_id") is not None
    if raw.get("study") is None and raw.get("api") is None and not has_session:
        study = _study_from_file(path)
        raw = {"study": study, **{k: v for k, v in raw.items() if k != "study"}}
        written = {"study": study, **{k: v for k, v in written.items() if k != "study"}}
    try:
        cfg = ConvergenceConfig.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc, message = _friendly(err, raw)
            problems.append(Problem(_dotted(loc), message, _line_for(lines, loc)))
        raise ConfigError(path, _dedupe(problems)) from None
    return LoadedConfig(cfg, path, base_dir, raw, written, lines)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str, int | None]] = set()
    out = []
    for p in problems:
        key = (p.field, p.message, p.line)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def load_config(path: str | Path) -> LoadedConfig:
    p = Path(path)
    try:
        if not p.exists():
            raise ConfigError(p, [Problem("", "file not found")])
        if p.is_dir():
            candidate = p / "optimization.yaml"
            if not candidate.exists():
                raise ConfigError(p, [Problem("", "is a directory without optimization.yaml")])
            p = candidate
        if not p.is_file():
            raise ConfigError(p, [Problem("", "is not a regular file")])
        with p.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(p, [Problem("", f"cannot read the file: {exc.strerror or exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(p, [Problem("", f"the file is larger than {MAX_FILE_BYTES:,} bytes; put large test "
                                          "sets in a JSON/JSONL file (evaluation.test_cases.path)")])
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise ConfigError(p, [Problem("", "this is a binary file (it contains NUL bytes), not a YAML text file", line)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(p, [Problem("", f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                          f"{exc.start}); save it as UTF-8", line)]) from None
    return parse_config(text.removeprefix("\ufeff"), p)


def resolve_path(base_dir: Path, value: str) -> Path:
    q = Path(os.path.expanduser(value))
    return q if q.is_absolute() else (base_dir / q)
