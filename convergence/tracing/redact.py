"""Secret scrubbing for everything that leaves the process or is stored.

Two nets, because either alone leaks: by key (``api_key``, ``Authorization``,
``password`` ... anywhere in a nested structure) and by value (the values of
the environment variables used as credentials, wherever they show up: a
header, an error message echoing a request, a target's output). A value is
searched for in every form it takes on its way out (:func:`secret_forms`):
raw, JSON- and Python-escaped, URL-encoded, HTML-escaped, UTF-8 read as
Latin-1 (an HTTP header echoed back), and base64 at any alignment, which
covers a ``Basic base64(user:pass)`` header whatever the user name.
Bearer/Basic credentials are masked by pattern too.

Which environment variables hold credentials (:func:`config_secret_names`,
:func:`secret_env_values`): one named like a credential (``OPENAI_API_KEY``,
``HF_TOKEN``, ``DB_PASSWORD``), one a config names in a credential field
(``api_key_env``, ``token_env``, ``password_env``, ``ray.env_vars``), and one
referenced as ``${VAR}`` in a credential position: the value of a header,
parameter or field named like a credential (``Authorization``, ``X-API-Key``,
``api_key``, ``token`` ...), or the query string or user-info of a URL. A
variable used only in a URL's host or path (``endpoint: ${TARGET_URL}``) is
not a secret: it is shown as it is.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

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

_CREDENTIAL_NAME_RE = re.compile(
    r"(?:^|[_\-.])(?:[a-z]*key|[a-z]*token|[a-z]*secret|password|passwd|pwd|pass|signature|sig|auth|"
    r"authorization|credentials?|cookie|session)$",
    re.IGNORECASE,
)
"""A header, query parameter or field whose ``${VAR}`` value is a credential
(``X-Subscription-Key``, ``?key=``, ``?sig=``, ``auth_token``)."""

_SECRET_ENV_SEGMENT_RE = re.compile(r"^(?:[A-Z0-9]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD)|SECRETS|PWD|PASS|AUTH|"
                                    r"CREDENTIALS?)$")
_STRONG_ENV_SEGMENT_RE = re.compile(r"^[A-Z0-9]*(?:SECRETS?|PASSWORD|PASSWD)$")
"""Parts that make a name a secret whatever it ends with (``SECRET_KEY_BASE``, ``DB_PASSWORD_FILE``)."""
_PUBLIC_ENV_SUFFIXES = frozenset({"URL", "URI", "ENDPOINT", "HOST", "HOSTNAME", "PORT", "BASE", "PATH", "DIR",
                                  "FILE", "ADDR", "ADDRESS", "ID", "NAME", "REGION"})

_SHELL_NAMES = frozenset({"PWD", "OLDPWD"})
"""The shell's working directories, not passwords."""


def is_secret_env_name(name: str) -> bool:
    """``OPENAI_API_KEY``, ``HF_TOKEN``, ``DB_PASSWORD``, ``BASIC_AUTH``, ``SECRET_KEY_BASE``: yes;
    ``TARGET_URL``, ``AUTH_SERVICE_URL``, ``AWS_ACCESS_KEY_ID``, ``KEYCLOAK_HOST``, ``PWD``: no."""
    if name in _SHELL_NAMES:
        return False
    parts = [p for p in name.upper().split("_") if p]
    if any(_STRONG_ENV_SEGMENT_RE.match(p) for p in parts):
        return True
    if not parts or parts[-1] in _PUBLIC_ENV_SUFFIXES:
        return False
    return any(_SECRET_ENV_SEGMENT_RE.match(p) for p in parts)


_MIN_SECRET_LEN = 6
"""Shorter env values (``1``, ``true``) would redact ordinary text and are ignored."""

_AUTH_VALUE_RE = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{8,}")
_KEY_SHAPES_RE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}")

MAX_TEXT_CHARS = 20_000
"""Longer strings are cut so one huge output does not dominate a trace upload."""


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in SECRET_KEY_NAMES or _SECRET_KEY_RE.search(k) is not None


def is_credential_name(name: str) -> bool:
    """A header, query parameter or field name whose value is a credential."""
    return is_secret_key(name) or _CREDENTIAL_NAME_RE.search(name) is not None


def secret_env_values(environ: Mapping[str, str] | None = None, extra_names: Iterable[str] = ()) -> set[str]:
    """Values of the env vars named like credentials plus of ``extra_names`` (those a config uses as credentials)."""
    env = os.environ if environ is None else environ
    names = {n for n in env if is_secret_env_name(n)} | {n for n in extra_names if n}
    return {env[n] for n in names if n in env and len(env[n]) >= _MIN_SECRET_LEN}


def _anchors(value: str) -> set[str] | None:
    """Short pieces of which every encoding of ``value`` holds at least one (a cheap
    test before the regex): the start of its longest run of letters and digits,
    which no escaping changes, and the start of each base64 core; ``None`` (always
    run the regex) for a value without such a run."""
    runs = re.findall(r"[A-Za-z0-9]{4,}", value)
    if not runs:
        return None
    out = {max(runs, key=len)[:8]}
    out |= {core[:8] for core in _base64_cores(value.encode("utf-8")) if len(core) >= 4}
    return out


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend on ``data`` alone, at each of the three
    alignments it can have inside a longer encoded text (standard and URL-safe
    alphabets): what is left of the secret in ``base64(user + ":" + secret)``."""
    out: set[str] = set()
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data + b"\0\0").decode("ascii")
        start, end = -(-8 * k // 6), 8 * (k + len(data)) // 6
        core = enc[start:end]
        out.update((core, core.replace("+", "-").replace("/", "_")))
    full = base64.b64encode(data).decode("ascii")
    out.update((full, full.rstrip("="), base64.urlsafe_b64encode(data).decode("ascii")))
    return out


def secret_forms(value: str) -> set[str]:
    """Some of the forms ``value`` takes in text that leaves the process (for tests
    and docs; :func:`secret_pattern` matches these and their mixtures): raw, JSON
    string (``ensure_ascii`` on and off, and JSON inside JSON), Python ``repr`` and
    ``ascii``, URL-encoded, HTML-escaped, UTF-8 read as Latin-1 and base64."""
    forms = {value, html.escape(value), repr(value)[1:-1], ascii(value)[1:-1], quote(value, safe=""),
             quote_plus(value), quote(value, safe=_QUERY_SAFE), value.encode("utf-8").decode("latin-1")}
    for ensure_ascii in (True, False):
        once = json.dumps(value, ensure_ascii=ensure_ascii)[1:-1]
        forms.update((once, json.dumps(once, ensure_ascii=ensure_ascii)[1:-1]))
    return forms | _base64_cores(value.encode("utf-8"))


_QUERY_SAFE = "".join(chr(i) for i in range(0x21, 0x7F) if chr(i) not in '"#<>')
"""What a WHATWG URL (and httpx) leaves unescaped in a query string: ``\\`` and ``'`` among others."""


def _char_alternatives(c: str) -> set[str]:
    """Regexes for one character of a secret in any of its encodings: itself, after
    any number of backslashes (JSON or repr, once or nested), as a ``\\uXXXX`` or
    ``\\xXX`` escape, percent-encoded (either case), HTML-escaped, or its UTF-8 bytes
    read as Latin-1."""
    data = c.encode("utf-8")
    pct = "".join(f"%{b:02X}" for b in data)
    literals = {c, html.escape(c), pct, pct.lower(), data.decode("latin-1")}
    if c == " ":
        literals.add("+")
    if c == "&":
        literals.update(("&#38;", "&#x26;"))
    if c in "\"'<>":
        literals.update((f"&#{ord(c)};", f"&#x{ord(c):x};"))
    out = {r"\\*" + re.escape(lit) for lit in literals}
    for esc in {json.dumps(c)[1:-1], ascii(c)[1:-1]}:
        # one or more escapes (a surrogate pair is two): each after any number of backslashes
        seqs = _ESCAPE_RE.findall(esc)
        if seqs and "".join("\\" + q for q in seqs) == esc and esc != "\\\\":
            out.add("".join(r"\\+" + re.escape(q[0]) + "".join(
                f"[{h.lower()}{h.upper()}]" if h.isalpha() else re.escape(h) for h in q[1:]) for q in seqs))
    return out


_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|.)")


def secret_pattern(value: str) -> str:
    """A regex matching ``value`` in every form :func:`secret_forms` lists and their
    mixtures (a URL-encoded query inside a JSON error body inside a Python repr),
    character by character; and its base64 at any alignment."""
    chars = "".join("(?:" + "|".join(sorted(_char_alternatives(c), key=len, reverse=True)) + ")" for c in value)
    b64 = sorted(_base64_cores(value.encode("utf-8")), key=len, reverse=True)
    return "|".join([chars, *map(re.escape, b64)])


_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_URL_FIELDS = frozenset({"endpoint", "api_base", "base_url", "url", "address"})


def _url_credential_refs(url: str) -> set[str]:
    """``${VAR}`` names in a URL's user-info, query string or fragment (not its host or path)."""
    refs: set[str] = set()
    scheme_end = url.find("://")
    rest_at = scheme_end + 3 if scheme_end >= 0 else 0
    netloc_end = min((i for i in (url.find(c, rest_at) for c in "/?#") if i >= 0), default=len(url))
    at = url.rfind("@", rest_at, netloc_end)
    if at >= 0:
        refs.update(_ENV_REF_RE.findall(url[rest_at:at]))
    tail = min((i for i in (url.find(c, netloc_end) for c in "?#") if i >= 0), default=len(url))
    refs.update(_ENV_REF_RE.findall(url[tail:]))
    return refs


def config_secret_names(config: Any) -> set[str]:
    """Env var names a config as written uses as credentials: the value of every
    credential ``*_env`` key (``api_key_env``, ``token_env``, ``password_env``;
    not ``username_env``), every name in ``ray.env_vars``, and every ``${VAR}``
    in a credential position (see the module docstring)."""
    out: set[str] = set()

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                k = str(k)
                if k.endswith("_env") and isinstance(v, str):
                    if is_secret_key(k[: -len("_env")]):
                        out.add(v)
                elif k == "env_vars" and isinstance(v, (list, tuple)):
                    out.update(n for n in v if isinstance(n, str))
                else:
                    walk(v, k)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and "${" in node:
            if is_credential_name(key):
                out.update(_ENV_REF_RE.findall(node))
            elif key in _URL_FIELDS or "://" in node:
                out.update(_url_credential_refs(node))

    walk(config, "")
    return out


def url_secret_values(config: Any) -> set[str]:
    """Credentials inside the URLs of a resolved config (an endpoint that came whole
    from one env var): a user-info password and the values of query parameters
    named like credentials (``?key=...``, ``?sig=...``)."""
    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)
        elif isinstance(node, str) and "://" in node and len(node) < 8192:
            try:
                parts = urlsplit(node)
                password = parts.password
            except ValueError:
                return
            if password:
                out.add(password)
            out.update(v for k, v in parse_qsl(parts.query) if is_credential_name(k))

    walk(config)
    return {v for v in out if len(v) >= _MIN_SECRET_LEN}


def redactor_for(written: Any, resolved: Any = None, environ: Mapping[str, str] | None = None) -> Redactor:
    """The redactor of a config: ``written`` with its ``${VAR}`` references (which
    variables are credentials), ``resolved`` the same after interpolation (credentials
    inside URLs that came whole from a variable)."""
    values = secret_env_values(environ, extra_names=config_secret_names(written))
    if resolved is not None:
        values |= url_secret_values(resolved)
    return Redactor(values)


class Redactor:
    """Turns arbitrary inputs/outputs into JSON-friendly data with secrets removed.

    ``clean`` converts (dataclasses become dicts, unknown objects their ``str``);
    ``scrub`` only rewrites the containers and strings it understands and leaves
    other objects as they are, for hooks on ops we do not own (LiteLLM patches)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.values: frozenset[str] = frozenset(s for s in secrets if s)
        """The secret values as given."""
        # Longest first so a secret containing another is replaced whole.
        ordered = sorted(self.values, key=len, reverse=True)
        self.secrets: tuple[str, ...] = tuple(ordered)
        self._pattern: re.Pattern[str] | None = re.compile(
            "|".join(f"(?:{secret_pattern(v)})" if len(v) >= _MIN_SECRET_LEN else re.escape(v) for v in ordered)
        ) if ordered else None
        """Every value in every encoding (see :func:`secret_pattern`)."""
        anchors = [_anchors(v) if len(v) >= _MIN_SECRET_LEN else {v} for v in ordered]
        self._anchors: tuple[str, ...] | None = (
            None if any(a is None for a in anchors) else tuple({x for a in anchors if a is not None for x in a}))
        """Pieces one of which every match holds (``None``: always run the pattern)."""

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
        """Only the known secret values (in every encoding), nothing cut: cheap enough for every output."""
        if self._pattern is None or (self._anchors is not None and not any(a in s for a in self._anchors)):
            return s
        return self._pattern.sub(REDACTED, s)

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
