"""Secret scrubbing where text leaves the process for a terminal or a log file.

One chokepoint per channel, so no message needs its own call: every log record
(a logging record factory: a library's warning such as LiteLLM's "Incorrect API
key provided: ..." or the evaluator's "metric llm_judge failed ...") and,
for the CLI, everything written to ``sys.stdout`` and ``sys.stderr`` (rich
consoles, warnings, a third-party ``print``). The known secret values of every
guarded config are removed in every form they can take (see
:func:`convergence.tracing.redact.secret_forms`); nothing else is changed.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

from convergence.tracing.redact import Redactor

_lock = threading.Lock()
_guard = Redactor()
"""Every guarded secret (the union of the redactors given so far: the environment is the process's)."""
_factory_installed = False


def _scrub(text: str) -> str:
    return _guard.exact(text)


def _add(redactor: Redactor) -> None:
    global _guard
    with _lock:
        if not redactor.values <= _guard.values:
            _guard = Redactor(_guard.values | redactor.values)


def guard_logs(redactor: Redactor) -> None:
    """Scrub ``redactor``'s secrets from every log record made from now on in this process
    (its message with the arguments filled in, and its exception text)."""
    global _factory_installed
    _add(redactor)
    with _lock:
        if _factory_installed:
            return
        _factory_installed = True
        previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _guard.values:
            return record
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report, not ours
            return record
        clean = _scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            clean = _scrub(text)
            if clean != text:
                record.exc_text = clean
        return record

    logging.setLogRecordFactory(factory)


class RedactingStream:
    """A text stream that writes through to ``stream`` with the guarded secrets removed."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(_scrub(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding ...
        return getattr(self._stream, name)


def guard_output(redactor: Redactor) -> None:
    """Scrub ``redactor``'s secrets from log records and from everything written to
    ``sys.stdout``/``sys.stderr`` from now on (the CLI calls it once a config is loaded)."""
    guard_logs(redactor)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
