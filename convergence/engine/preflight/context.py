"""What every preflight check shares: the config being checked, the problems found, the limits."""

from __future__ import annotations

from typing import Any

from convergence.config.loader import (
    LoadedConfig,
    Problem,
    _dotted,
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


class Ctx:
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
