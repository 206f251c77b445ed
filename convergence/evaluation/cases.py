"""Load test cases from ``optimization.yaml`` (inline) or a JSON/JSONL file.

Errors name the file, the line (JSONL) or item index (JSON) and what was
expected, because a bad test-case file is the most common setup mistake and
the user must be able to fix it without reading our code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from convergence.config.models import TestCasesConfig
from convergence.core.types import TestCase
from convergence.errors import ConvergenceError

_KNOWN = frozenset({"id", "input", "expected", "metadata"})


class TestCaseError(ConvergenceError, ValueError):
    """A test case (or its file) is malformed; the message says where and why."""

    __test__ = False  # not a pytest test class despite the name


def load_test_cases(cfg: TestCasesConfig, base_dir: Path) -> list[TestCase]:
    """Return the configured test cases, in file order, cut to ``cfg.limit``."""
    if cfg.inline is not None:
        items: list[tuple[str, Any]] = [(f"item {i}", item) for i, item in enumerate(cfg.inline)]
        source = "evaluation.test_cases.inline"
    else:
        assert cfg.path is not None
        path = (base_dir / cfg.path).resolve()
        source = str(path)
        items = _read_file(path)
    cases = [_to_case(item, n, source, where) for n, (where, item) in enumerate(items, start=1)]
    seen: dict[str, str] = {}
    for (where, _), case in zip(items, cases, strict=True):
        if case.id in seen:
            raise TestCaseError(
                f"{source}, {where}: duplicate test case id {case.id!r} (first used at {seen[case.id]}); "
                "ids must be unique"
            )
        seen[case.id] = where
    if not cases:
        raise TestCaseError(f"{source}: no test cases found; expected at least one item with an 'input'")
    return cases[: cfg.limit] if cfg.limit else cases


def _read_file(path: Path) -> list[tuple[str, Any]]:
    """Parse JSON or JSONL into (location label, raw item) pairs."""
    if not path.is_file():
        raise TestCaseError(f"test case file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TestCaseError(f"{path}: cannot read test case file: {e}") from e
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _parse_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TestCaseError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from e
    if isinstance(data, dict):
        if "test_cases" not in data:
            raise TestCaseError(
                f"{path}: expected a JSON list of test cases or an object with a 'test_cases' list; "
                f"found an object with keys {sorted(data)[:10]}"
            )
        data = data["test_cases"]
    if not isinstance(data, list):
        raise TestCaseError(f"{path}: expected a list of test cases, found {type(data).__name__}")
    return [(f"item {i}", item) for i, item in enumerate(data)]


def _parse_jsonl(path: Path, text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise TestCaseError(f"{path}, line {lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
    return out


def _to_case(item: Any, n: int, source: str, where: str) -> TestCase:
    if not isinstance(item, dict):
        raise TestCaseError(
            f"{source}, {where}: expected an object with an 'input' key, found {type(item).__name__}"
        )
    if "input" not in item:
        raise TestCaseError(
            f"{source}, {where}: missing required key 'input' (found keys: {sorted(item) or 'none'})"
        )
    raw_id = item.get("id")
    if raw_id is None:
        case_id = f"case-{n}"
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        case_id = str(raw_id)
    else:
        raise TestCaseError(f"{source}, {where}: 'id' must be a non-empty string or integer, got {raw_id!r}")
    metadata = item.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TestCaseError(
            f"{source}, {where}: 'metadata' must be an object, got {type(metadata).__name__}"
        )
    extra = {k: v for k, v in item.items() if k not in _KNOWN}
    if extra:
        metadata = {**metadata, **extra}
    return TestCase(id=case_id, input=item["input"], expected=item.get("expected"), metadata=metadata)
