"""The target interface: one async call per (configuration, test case)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from convergence.core.types import CallResult, Config, TestCase


@runtime_checkable
class Target(Protocol):
    """Something to optimize. Implementations raise on failure; retries,
    timeouts, rate limits and error capture live in :mod:`.runner` so every
    target gets them the same way."""

    name: str

    async def call(self, params: Config, case: TestCase) -> CallResult:
        """Run ``case`` under configuration ``params`` (values already
        resolved from labels) and return output, tokens and cost."""
        ...

    async def aclose(self) -> None:
        ...


class TargetError(Exception):
    """A failed call. ``retryable`` tells the runner whether to back off and retry."""

    def __init__(self, message: str, *, retryable: bool = True, status_code: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code
