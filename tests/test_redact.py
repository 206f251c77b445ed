"""What the redactor removes (every encoding of a credential) and what it keeps
(a variable that is not used as a credential), and the console/log chokepoint."""

from __future__ import annotations

import base64
import json
import logging
import re
import textwrap
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from typer.testing import CliRunner

from convergence.tracing.output_guard import guard_logs
from convergence.tracing.redact import (
    REDACTED,
    Redactor,
    config_secret_names,
    is_secret_env_name,
    redactor_for,
    secret_forms,
)

SECRET = 'sk-planted-0123456789abcdef"\\é-fedcba9876543210'
PIECES = ("0123456789abcdef", "fedcba9876543210")
"""Runs of the secret that survive every escaping: a leak shows one of them."""

_WHATWG_QUERY_SAFE = "".join(chr(i) for i in range(0x21, 0x7F) if chr(i) not in '"#<>')


def _leaks(text: str) -> list[str]:
    return [p for p in PIECES if p in text]


def encodings(secret: str) -> dict[str, str]:
    return {
        "raw": secret,
        "json": json.dumps(secret),
        "json utf-8": json.dumps(secret, ensure_ascii=False),
        "json in json": json.dumps(json.dumps(secret)),
        "json utf-8 in json": json.dumps(json.dumps(secret, ensure_ascii=False)),
        "repr": repr(secret),
        "ascii": ascii(secret),
        "repr of json": repr(json.dumps(secret)),
        "url": quote(secret, safe=""),
        "url (keeps /)": quote(secret),
        "url plus": quote_plus(secret),
        "url lower-case escapes": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret, safe="")),
        "query as httpx writes it, inside JSON": json.dumps("?key=" + quote(secret, safe=_WHATWG_QUERY_SAFE)),
        "html": "<p>" + __import__("html").escape(secret) + "</p>",
        "utf-8 read as latin-1 (an echoed header)": secret.encode().decode("latin-1"),
    }


@pytest.mark.parametrize("name", list(encodings(SECRET)))
def test_a_secret_with_quotes_backslashes_and_accents_is_removed_in_every_encoding(name: str) -> None:
    text = f"server said: {encodings(SECRET)[name]} (end)"
    cleaned = Redactor([SECRET]).text(text)
    assert not _leaks(cleaned), cleaned
    assert REDACTED in cleaned and cleaned.startswith("server said: ") and cleaned.endswith(" (end)")


@pytest.mark.parametrize("user", ["u", "us", "bot", "alice", "harden-user"])
def test_the_base64_of_a_basic_auth_user_and_password_is_removed_whatever_the_user(user: str) -> None:
    token = base64.b64encode(f"{user}:{SECRET}".encode()).decode()
    for text in (f"echo {token}", json.dumps({"authorization": token}),
                 base64.urlsafe_b64encode(f"{user}:{SECRET}".encode()).decode()):
        cleaned = Redactor([SECRET]).exact(text)
        assert REDACTED in cleaned
        # what is left of the token is the user name's part and a character or two at the edges
        kept = re.findall(r"[A-Za-z0-9+/_\-]{3,}", cleaned.replace(REDACTED, " "))
        user_part = len(base64.b64encode(f"{user}:".encode()).decode().rstrip("="))
        assert all(len(k) <= user_part + 1 or k == "authorization" for k in kept), kept


@pytest.mark.parametrize("secret", [SECRET, "tok-\U0001F600-0123456789abcdef\n\t'x-fedcba9876543210"])
def test_the_base64_of_the_secret_itself_and_every_listed_form_is_removed(secret: str) -> None:
    r = Redactor([secret])
    assert r.exact(base64.b64encode(secret.encode()).decode()).strip("=") == REDACTED
    for form in secret_forms(secret):
        cleaned = r.exact(f"<{form}>")
        # a base64 form may keep a padding character or one mixing the secret's last bits
        assert REDACTED in cleaned and len(cleaned) <= len(REDACTED) + 5 and not _leaks(cleaned), (form, cleaned)
    for nested in (json.dumps(json.dumps(secret)), repr(json.dumps(secret)), json.dumps(repr(secret))):
        cleaned = r.exact(nested)
        assert REDACTED in cleaned and not _leaks(cleaned), (nested, cleaned)


def test_ordinary_text_and_a_large_output_are_kept_as_they_are() -> None:
    r = Redactor([SECRET, "another-secret-value"])
    text = "lorem ipsum 0123 dolor " * 2000 + ' a "quoted" \\path\\ é %22 '
    assert r.exact(text) == text
    assert Redactor([]).exact(text) == text


def test_only_variables_used_as_credentials_are_secrets() -> None:
    written = {
        "target": {
            "endpoint": "https://${API_HOST}/v1/${API_PATH}?key=${QUERY_KEY}&region=${QUERY_REGION}",
            "auth": {"type": "basic", "username_env": "API_USER", "password_env": "API_PASSWORD"},
            "request": {"headers": {"Authorization": "Bearer ${BEARER_VALUE}", "Accept": "${ACCEPT}",
                                    "X-Subscription-Key": "${SUBSCRIPTION}"},
                        "body": {"prompt": "{{ input }} ${PROMPT_SUFFIX}", "api_key": "${BODY_KEY}"}},
        },
        "evaluation": {"metrics": {"j": {"judge": {"api_key_env": "JUDGE_KEY_VAR",
                                                   "api_base": "http://${JUDGE_HOST}:8000/v1"}}}},
        "society": {"llm": {"api_key_env": "SOCIETY_VAR", "api_base": "http://user:${URL_PASSWORD}@h/v1"}},
        "ray": {"env_vars": ["WORKER_SECRET_VAR"]},
    }
    assert config_secret_names(written) == {
        "QUERY_KEY", "QUERY_REGION", "API_PASSWORD", "BEARER_VALUE", "SUBSCRIPTION", "BODY_KEY", "JUDGE_KEY_VAR",
        "SOCIETY_VAR", "URL_PASSWORD", "WORKER_SECRET_VAR",
    }


def test_variables_named_like_credentials_are_secrets_and_urls_hosts_and_the_shell_are_not() -> None:
    for name in ("OPENAI_API_KEY", "HF_TOKEN", "DB_PASSWORD", "BASIC_AUTH", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                 "SECRET_KEY_BASE", "DB_PASSWORD_FILE"):
        assert is_secret_env_name(name), name
    for name in ("TARGET_URL", "AUTH_SERVICE_URL", "API_KEY_HOST", "AWS_ACCESS_KEY_ID", "PWD", "HOME", "PATH"):
        assert not is_secret_env_name(name), name


def test_an_endpoint_from_a_variable_is_kept_and_its_query_credentials_are_not() -> None:
    environ = {"SERVICE_ENDPOINT": "http://127.0.0.1:9/score?plain=1&api_key=qk-0123456789abcdef"}
    r = redactor_for({"target": {"endpoint": "${SERVICE_ENDPOINT}"}}, {"target": {"endpoint": environ[
        "SERVICE_ENDPOINT"]}}, environ=environ)
    assert r.text("ConnectError calling http://127.0.0.1:9/score?plain=1&api_key=qk-0123456789abcdef") == (
        f"ConnectError calling http://127.0.0.1:9/score?plain=1&api_key={REDACTED}")


def test_a_log_line_quoting_a_key_in_any_encoding_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    guard_logs(Redactor([SECRET]))
    log = logging.getLogger("convergence.evaluation.scorer")
    with caplog.at_level(logging.WARNING):
        log.warning("metric judged failed on case %s: %s", "c1", f"Incorrect API key provided: {SECRET}")
        log.warning("body %s", json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}"}}))
        try:
            raise RuntimeError(f"401 {json.dumps(SECRET)}")
        except RuntimeError:
            log.exception("call failed")
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert text.count("Incorrect API key provided: REDACTED") >= 2
    assert not _leaks(text), text


def test_validate_shows_the_endpoint_with_a_query_string_secret_removed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import convergence.cli.app as cli_app

    monkeypatch.setenv("PLANTED_QUERY_VALUE", SECRET)
    monkeypatch.setenv("PLANTED_SERVICE_URL", "http://127.0.0.1:9/score")
    (tmp_path / "optimization.yaml").write_text(textwrap.dedent("""
        study: validate-secret
        target:
          type: http
          endpoint: "${PLANTED_SERVICE_URL}?key=${PLANTED_QUERY_VALUE}"
        search_space:
          parameters:
            x: {type: categorical, values: [a, b]}
        evaluation:
          test_cases:
            inline: [{id: c1, input: "hi", expected: "hi"}]
          metrics:
            accuracy: {function: exact_match, weight: 1.0}
        """))
    result = CliRunner().invoke(cli_app.app, ["validate", str(tmp_path / "optimization.yaml")])
    out = result.output
    assert result.exit_code == 0, out
    assert f"http://127.0.0.1:9/score?key={REDACTED}" in out
    assert not _leaks(out), out
