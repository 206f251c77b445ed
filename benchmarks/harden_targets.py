"""Python targets for ``benchmarks/hardening.py`` (``function: harden_targets:sleepy``).

Both are deterministic in their *output* (so a seeded run repeats exactly and
scores can be compared across a kill/resume), and random only in how long
they sleep.

* ``sleepy``  - sleeps a few milliseconds, returns "yes"/"no".
* ``counted`` - the same, but first appends one line per call it receives to
  the file named by ``HARDEN_CALL_LOG`` (open with O_APPEND, write, close), so
  the count of calls the target received survives a SIGKILL of the caller.
  A line is ``pid x y mode case_index unix_time``.

Sleep range in milliseconds: ``HARDEN_SLEEP_MS="lo,hi"`` (default ``1,5``).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from typing import Any


def _sleep_range() -> tuple[float, float]:
    raw = os.environ.get("HARDEN_SLEEP_MS", "1,5")
    lo, _, hi = raw.partition(",")
    lo_f = float(lo)
    return lo_f, float(hi or lo_f)


_LO_MS, _HI_MS = _sleep_range()


def _case_index(value: Any) -> int:
    if isinstance(value, dict):
        value = value.get("i", 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def answer(params: dict[str, Any], value: Any) -> str:
    """Deterministic output: a configuration near (x, y) = (0.7, 0.3) with mode
    'c' answers "yes" on more test cases; which cases is fixed by a hash."""
    x = float(params.get("x", 0.0))
    y = float(params.get("y", 0.0))
    mode = str(params.get("mode", "a"))
    quality = 1.0 - min(1.0, abs(x - 0.7) + abs(y - 0.3)) * 0.8 - (0.0 if mode == "c" else 0.15)
    key = f"{x:.4f}|{y:.4f}|{mode}|{_case_index(value)}".encode()
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    return "yes" if u < quality else "no"


def _nap() -> None:
    time.sleep(random.uniform(_LO_MS, _HI_MS) / 1000.0)


def sleepy(params: dict[str, Any], value: Any) -> str:
    _nap()
    return answer(params, value)


def counted(params: dict[str, Any], value: Any) -> str:
    path = os.environ.get("HARDEN_CALL_LOG")
    if path:
        line = (f"{os.getpid()} {params.get('x')} {params.get('y')} {params.get('mode')} {_case_index(value)} "
                f"{time.time():.6f}\n")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    _nap()
    return answer(params, value)


def leaky(params: dict[str, Any], value: Any) -> dict[str, Any]:
    """For the ``secrets`` benchmark: echoes ``HARDEN_PY_TOKEN`` in every encoding, in an
    error for 1 case in 3 and inside the structured output for the others."""
    import base64
    import json
    from urllib.parse import quote, quote_plus

    tok = os.environ.get("HARDEN_PY_TOKEN", "")
    forms = {"raw": tok, "json": json.dumps(tok), "json_utf8": json.dumps(tok, ensure_ascii=False),
             "url": quote(tok, safe=""), "url_plus": quote_plus(tok),
             "b64": base64.b64encode(tok.encode()).decode(),
             "basic": base64.b64encode(f"bot:{tok}".encode()).decode()}
    i = _case_index(value)
    if i % 3 == 0:
        raise RuntimeError(f"backend refused token {tok} forms={forms!r} as json {json.dumps(forms)}")
    return {"result": answer(params, value), "debug": forms, "note": f"used {tok} ({forms['b64']})"}
