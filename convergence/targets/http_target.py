"""A plain HTTP endpoint as a target.

One pooled ``httpx.AsyncClient`` per target so thousands of calls reuse
connections. The response is mapped to a :class:`CallResult` by dotted paths
from the config; every failure becomes a :class:`TargetError` whose
``retryable`` flag tells the runner whether backing off can help.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import httpx

from convergence.config.models import HTTPTargetConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.targets.base import TargetError, call_number, retry_after_from_headers
from convergence.targets.templating import TemplateError, render, render_tree, variables_for

_SNIPPET = 200
_RETRYABLE_4XX = frozenset({408, 425, 429})
"""Request timeout, too early, too many requests: waiting helps. Other 4xx do not."""
_SUCCESS_WORDS = frozenset({"completed", "complete", "success", "succeeded", "ok", "done", "true"})


def missing_env(cfg: HTTPTargetConfig) -> list[str]:
    """Names of the auth env vars this target needs that are unset or empty,
    so the CLI can refuse to start a run that would fail on every call."""
    return [name for name in _auth_env_names(cfg) if not os.environ.get(name)]


def _auth_env_names(cfg: HTTPTargetConfig) -> list[str]:
    auth = cfg.auth
    if auth.type in ("bearer", "api_key"):
        return [auth.token_env] if auth.token_env else []
    if auth.type == "basic":
        names = [auth.username_env] if auth.username_env else []
        return names + ([auth.password_env] if auth.password_env else [])
    return []


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise TargetError(f"environment variable {name} is not set (needed for HTTP auth)", retryable=False)
    return value


def auth_headers(cfg: HTTPTargetConfig) -> dict[str, str]:
    """Auth headers read from the environment (never from the YAML)."""
    auth = cfg.auth
    if auth.type == "bearer":
        assert auth.token_env is not None
        return {"Authorization": f"Bearer {_env(auth.token_env)}"}
    if auth.type == "api_key":
        assert auth.token_env is not None
        return {auth.header_name: _env(auth.token_env)}
    if auth.type == "basic":
        assert auth.password_env is not None
        if auth.username_env:
            user = _env(auth.username_env)
        elif auth.username is not None:
            user = auth.username
        else:
            raise TargetError("auth type 'basic' needs username or username_env", retryable=False)
        token = base64.b64encode(f"{user}:{_env(auth.password_env)}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    return {}


class PathError(LookupError):
    """A dotted path does not exist in a JSON document."""


def extract(data: Any, path: str | None) -> Any:
    """Value at a dotted path such as ``choices.0.message.content``; ``None``
    means the whole document. Raises :class:`PathError` naming the missing step."""
    if path is None:
        return data
    node = data
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                raise PathError(f"no key {part!r} at {'.'.join(walked) or '<root>'} (keys: {sorted(node)[:10]})")
            node = node[part]
        elif isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise PathError(
                    f"{part!r} is not a valid index at {'.'.join(walked) or '<root>'} (list of {len(node)})"
                ) from None
        else:
            raise PathError(f"{'.'.join(walked) or '<root>'} is a {type(node).__name__}, cannot take {part!r}")
        walked.append(part)
    return node


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _is_success(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _SUCCESS_WORDS
    return bool(value)


def _query_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _has_template(node: Any) -> bool:
    if isinstance(node, str):
        return "{{" in node or "{%" in node
    if isinstance(node, dict):
        return any(_has_template(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_template(v) for v in node)
    return False


def _required(data: Any, path: str | None, what: str, body: str) -> Any:
    """The value at ``path``, or a non-retryable error quoting what came back."""
    try:
        return extract(data, path)
    except PathError as exc:
        raise TargetError(f"{what} {path!r} not in response: {exc}; got {_snippet(body)!r}", retryable=False) from None


class HTTPTarget:
    """Calls ``cfg.endpoint`` once per (configuration, test case)."""

    def __init__(self, cfg: HTTPTargetConfig, *, max_connections: int = 100) -> None:
        self.cfg = cfg
        self.name = cfg.endpoint
        self._method = cfg.request.method
        self._body_template = cfg.request.body
        self._headers_templated = _has_template(cfg.request.headers)
        self._auth: dict[str, str] | None = None
        timeout = min(cfg.request.timeout_seconds, cfg.timeout_seconds)
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers=cfg.request.headers if not self._headers_templated else None,
        )

    def _auth_headers(self) -> dict[str, str]:
        # Cached once resolved; a missing variable raises every time (the run
        # may have been started before the user exported it: no stale cache).
        if self._auth is None:
            self._auth = auth_headers(self.cfg)
        return self._auth

    def _build(self, params: Config, case: TestCase) -> tuple[Any, dict[str, str]]:
        headers = dict(self._auth_headers())
        needs_vars = self._body_template is not None or self._headers_templated
        variables = variables_for(params, case) if needs_vars else None
        try:
            if self._headers_templated:
                assert variables is not None
                headers.update({k: render(v, variables) for k, v in self.cfg.request.headers.items()})
            if self._body_template is not None:
                assert variables is not None
                body = render_tree(self._body_template, variables)
            elif isinstance(case.input, dict):
                body = {**case.input, **params}
            else:
                body = {"input": case.input, **params}
        except TemplateError as exc:
            raise TargetError(f"request template: {exc}", retryable=False) from exc
        return body, headers

    async def call(self, params: Config, case: TestCase) -> CallResult:
        body, headers = self._build(params, case)
        try:
            if self._method == "GET":
                query = body if isinstance(body, dict) else {"input": body}
                response = await self._client.get(
                    self.cfg.endpoint,
                    params={k: _query_value(v) for k, v in query.items() if v is not None},
                    headers=headers,
                )
            else:
                response = await self._client.request(self._method, self.cfg.endpoint, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"no response from {self.cfg.endpoint} within {self._timeout}s") from exc
        except httpx.TransportError as exc:
            raise TargetError(
                f"{type(exc).__name__} calling {self.cfg.endpoint}: {exc or 'connection failed'}", retryable=True
            ) from exc
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> CallResult:
        status = response.status_code
        if status >= 400:
            detail = self._error_detail(response)
            retryable = status >= 500 or status in _RETRYABLE_4XX
            # Retry-After (429, 503, or any other retryable status that sends
            # one) is the least the runner waits before the next attempt.
            retry_after = retry_after_from_headers(response.headers) if retryable else None
            raise TargetError(
                f"HTTP {status} from {self.cfg.endpoint}: {detail}",
                retryable=retryable,
                status_code=status,
                retry_after=retry_after,
            )
        try:
            data = response.json()
        except ValueError:
            ctype = response.headers.get("content-type", "no content-type")
            raise TargetError(
                f"{self.cfg.endpoint} returned non-JSON ({ctype}, HTTP {status}): {_snippet(response.text)!r}",
                retryable=False,
                status_code=status,
            ) from None
        rc = self.cfg.response
        if rc.error_field and isinstance(data, dict):
            try:
                err = extract(data, rc.error_field)
            except PathError:
                err = None
            if err:
                message = err if isinstance(err, str) else json.dumps(err)[:_SNIPPET]
                raise TargetError(f"{self.cfg.endpoint} reported an error: {message}", retryable=False)
        if rc.success_field:
            flag = _required(data, rc.success_field, "success field", response.text)
            if not _is_success(flag):
                raise TargetError(f"{self.cfg.endpoint} reported {rc.success_field}={flag!r}", retryable=False)
        output = _required(data, rc.result_field, "result field", response.text)
        result = CallResult(output=output, raw=data)
        if rc.cost_field:
            result.cost_usd = self._cost(data, rc.cost_field)
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            for name in ("prompt_tokens", "completion_tokens"):
                count = call_number(usage.get(name), name, integer=True, source=f"response field 'usage.{name}'")
                setattr(result, name, int(count))
        return result

    def _cost(self, data: Any, path: str) -> float:
        try:
            value = extract(data, path)
        except PathError:
            return 0.0
        return call_number(value, "cost_usd", source=f"response field {path!r}")

    def _error_detail(self, response: httpx.Response) -> str:
        field = self.cfg.response.error_field
        if field:
            try:
                data = response.json()
                err = extract(data, field)
                if err:
                    return err if isinstance(err, str) else json.dumps(err)[:_SNIPPET]
            except (ValueError, PathError):
                pass
        return repr(_snippet(response.text)) if response.text else "(empty body)"

    async def aclose(self) -> None:
        await self._client.aclose()
