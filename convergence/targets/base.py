"""The target interface: one async call per (configuration, test case)."""

from __future__ import annotations

import math
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Protocol, runtime_checkable

from convergence.core.types import CallResult, Config, TestCase
from convergence.errors import ConvergenceError


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


class TargetError(ConvergenceError):
    """A failed call. ``retryable`` tells the runner whether to back off and
    retry; ``retry_after`` (seconds, from the server's ``Retry-After``) is the
    least it should wait before the next attempt (the runner caps it by
    ``retry.backoff_max_seconds``)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        status_code: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (RFC 9110 10.2.3):
    delta-seconds (``"3"``; a fraction such as ``"1.5"`` is accepted too) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, measured against ``now``,
    default the wall clock). A date in the past gives 0.0; a missing or
    unparseable value gives None (fall back to the usual backoff)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
            if when.tzinfo is None:  # "-0000" and asctime forms: HTTP dates are always GMT
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return max(0.0, min(seconds, 1e9))  # inf or absurd values are capped later anyway


def retry_after_from_headers(headers: object) -> float | None:
    """Seconds to wait from response headers (an ``httpx.Headers`` or any
    mapping, names matched case-insensitively): ``retry-after-ms`` (sent by
    OpenAI and compatible servers) when present, else ``Retry-After``."""
    if not headers:
        return None
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0 if isinstance(ms, (str, bytes, int, float)) else math.nan
        except ValueError:
            value = math.nan
        if not math.isnan(value):
            return max(0.0, min(value, 1e9))
    raw = _header(headers, "retry-after")
    return parse_retry_after(raw if isinstance(raw, str) else None)


def _header(headers: object, name: str) -> object:
    get = getattr(headers, "get", None)
    if get is None:
        return None
    try:
        value = get(name)  # httpx.Headers: case-insensitive
    except Exception:  # noqa: BLE001 - an odd mapping must not turn an error into a crash
        return None
    if value is None and isinstance(headers, dict):
        for key, item in headers.items():
            if isinstance(key, str) and key.lower() == name:
                return item
    return value


def call_number(value: object, field: str, *, integer: bool = False, source: str = "") -> float:
    """``value`` as a finite number >= 0 (a whole one when ``integer``) for a :class:`CallResult`
    field; ``None`` is 0 (not reported). Anything else (NaN, infinity, a negative or fractional count,
    text that is not a number) is the call's failure, naming the field and the value: a NaN summed into
    the run's cost would poison every total and budget check after it. ``source`` says where the value
    came from (e.g. "response field 'cost'")."""
    if value is None:
        return 0.0
    number: float | None = None
    if not isinstance(value, bool):  # True is not a cost
        try:
            number = float(value)  # type: ignore[arg-type]  # int, float, numpy, Decimal, "0.25"
        except (TypeError, ValueError, OverflowError):
            number = None
    if number is not None and 0.0 <= number < math.inf and (not integer or number.is_integer()):
        return number
    where = f" ({source})" if source else ""
    expected = "a whole number >= 0" if integer else "a finite number >= 0"
    shown = value if isinstance(value, float) else repr(value)
    raise TargetError(f"target returned {field}={shown}{where}: expected {expected}", retryable=False)


def checked_call(result: CallResult) -> CallResult:
    """``result`` with its cost, latency and token counts checked by :func:`call_number` (tokens made
    ``int``); raises a non-retryable :class:`TargetError` for the first bad one. Every target's result
    passes here (the runner calls it), built-in or plugin."""
    cost, latency = result.cost_usd, result.latency_ms
    prompt, completion = result.prompt_tokens, result.completion_tokens
    # the common case (floats and ints in range) costs four comparisons
    if not (type(cost) is float and 0.0 <= cost < math.inf):
        result.cost_usd = call_number(cost, "cost_usd")
    if not (type(latency) is float and 0.0 <= latency < math.inf):
        result.latency_ms = call_number(latency, "latency_ms")
    if not (type(prompt) is int and prompt >= 0):
        result.prompt_tokens = int(call_number(prompt, "prompt_tokens", integer=True))
    if not (type(completion) is int and completion >= 0):
        result.completion_tokens = int(call_number(completion, "completion_tokens", integer=True))
    return result
