"""Secret scrubbing for everything that leaves the process in a trace.

Two nets, because either alone leaks: by key (``api_key``, ``Authorization``,
``password`` ... anywhere in a nested structure) and by value (the literal
values of secret-looking environment variables and of the env vars a config
names for auth, wherever they show up: a header, an error message echoing a
request, a target's output). Bearer/Basic credentials are masked by pattern.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "REDACTED"

SECRET_KEY_NAMES: frozenset[str] = frozenset(
    {
        "api_key", "apikey", "api-key", "x-api-key", "authorization", "proxy-authorization", "auth_headers",
        "password", "passwd", "secret", "client_secret", "token", "access_token", "refresh_token",
        "id_token", "bearer", "cookie", "set-cookie", "x-auth-token", "private_key",
    }
)
"""Keys whose value is always replaced (matched case-insensitively)."""

_SECRET_KEY_RE = re.compile(
    r"(?:^|[_\-.])(?:api[_\-]?key|secret|password|passwd|token|credentials?|private[_\-]?key)$", re.IGNORECASE
)
"""Suffix rule for keys like ``openai_api_key`` or ``github-token``. Counters such
as ``max_tokens`` or ``prompt_tokens`` end in ``tokens`` and are kept."""

_SECRET_ENV_RE = re.compile(r"(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)", re.IGNORECASE)
"""Env var names whose values are treated as secrets (``*_KEY``, ``*_TOKEN``, ``*SECRET*`` ...)."""

_MIN_SECRET_LEN = 6
"""Shorter env values (``1``, ``true``) would redact ordinary text and are ignored."""

_AUTH_VALUE_RE = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{8,}")
_KEY_SHAPES_RE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}")

MAX_TEXT_CHARS = 20_000
"""Longer strings are cut so one huge output does not dominate a trace upload."""


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in SECRET_KEY_NAMES or _SECRET_KEY_RE.search(k) is not None


def secret_env_values(environ: Mapping[str, str] | None = None, extra_names: Iterable[str] = ()) -> set[str]:
    """Values of secret-looking env vars plus of ``extra_names`` (auth env vars a config names)."""
    env = os.environ if environ is None else environ
    names = {n for n in env if _SECRET_ENV_RE.search(n)} | {n for n in extra_names if n}
    return {env[n] for n in names if n in env and len(env[n]) >= _MIN_SECRET_LEN}


_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def config_secret_names(config: Any) -> set[str]:
    """Env var names whose values are secrets for a config as written: every
    ``*_env`` key's value (``token_env``, ``api_key_env`` ...) and every
    ``${VAR}`` referenced in the target (headers, endpoint query strings,
    bodies), wherever it was interpolated."""
    out: set[str] = set()

    def walk(node: Any, in_target: bool) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if isinstance(k, str) and k.endswith("_env") and isinstance(v, str):
                    out.add(v)
                else:
                    walk(v, in_target or k in ("target", "api", "judge", "llm"))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, in_target)
        elif in_target and isinstance(node, str) and "${" in node:
            out.update(_ENV_REF_RE.findall(node))

    walk(config, False)
    return out


class Redactor:
    """Turns arbitrary inputs/outputs into JSON-friendly data with secrets removed.

    ``clean`` converts (dataclasses become dicts, unknown objects their ``str``);
    ``scrub`` only rewrites the containers and strings it understands and leaves
    other objects as they are, for hooks on ops we do not own (LiteLLM patches)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first so a secret containing another is replaced whole.
        self.secrets: tuple[str, ...] = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def text(self, s: str) -> str:
        s = self.exact(s)
        if "earer" in s or "asic" in s or "oken" in s or "BEARER" in s or "BASIC" in s or "TOKEN" in s:
            s = _AUTH_VALUE_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", s)
        if "-" in s or "_" in s:
            s = _KEY_SHAPES_RE.sub(REDACTED, s)
        if len(s) > MAX_TEXT_CHARS:
            s = s[:MAX_TEXT_CHARS] + f" ... [{len(s) - MAX_TEXT_CHARS} more chars]"
        return s

    def exact(self, s: str) -> str:
        """Only the known secret values, nothing cut: cheap enough for every output."""
        for secret in self.secrets:
            if secret in s:
                s = s.replace(secret, REDACTED)
        return s

    def exact_deep(self, value: Any, _depth: int = 0) -> Any:
        """``exact`` on every string inside dicts, lists and tuples (keys
        kept, nothing cut): for a target's structured output."""
        if isinstance(value, str):
            return self.exact(value)
        if _depth > 50:
            return value
        if isinstance(value, dict):
            return {k: self.exact_deep(v, _depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.exact_deep(v, _depth + 1) for v in value)
        return value

    def clean(self, value: Any, _depth: int = 0) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self.text(value)
        if _depth > 20:
            return "..."
        if isinstance(value, Mapping):
            return {
                str(k): (REDACTED if isinstance(k, str) and is_secret_key(k) else self.clean(v, _depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.clean(v, _depth + 1) for v in value]
        if isinstance(value, bytes):
            return self.text(value[:MAX_TEXT_CHARS].decode("utf-8", "replace"))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.clean({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, _depth)
        return self.text(str(value))

    def scrub(self, value: Any, _depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if _depth > 20:
            return value
        if isinstance(value, dict):
            return {
                k: (REDACTED if isinstance(k, str) and is_secret_key(k) else self.scrub(v, _depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.scrub(v, _depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(self.scrub(v, _depth + 1) for v in value)
        return value
