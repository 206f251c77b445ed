"""The Ray execution backend (``optimization.execution.backend: ray``) as a user sees it.

Real Ray on this machine: one separate ``ray start --head`` on 127.0.0.1 (first test: it is stopped
with ``ray stop``, which stops every Ray on the machine, before the in-process cluster exists) and,
for the rest, one in-process ``ray.init(num_cpus=2)`` shared by the module. Nothing but 127.0.0.1
is ever contacted.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import anyio
import pytest
from local_server import serve

from convergence.config.loader import parse_config
from convergence.core.space import config_hash
from convergence.engine.loop import Optimizer
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

BIN = Path(sys.executable).parent

TARGET = '''
import asyncio, hashlib, json, os, time

def score(params, input):
    """Deterministic and sync (runs as Ray tasks): 'yes' at x~0.7 & mode b, 'half' for mode b elsewhere."""
    log = os.environ.get("CALL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"params": params, "input": input}) + "\\n")
    if params["mode"] != "b":
        return "no"
    return "yes" if abs(params["x"] - 0.7) < 0.051 else ("half" if input == "two" else "no")

async def ascore(params, input):
    """The same, async (runs in the actor pool)."""
    await asyncio.sleep(float(os.environ.get("CALL_SLEEP", "0")))
    return score(params, input)

def envhash(params, input):
    """What the worker's env holds, as digests (so no secret value travels back)."""
    return json.dumps({k: hashlib.sha256(os.environ[k].encode()).hexdigest() if k in os.environ else None
                       for k in ("CONV_RAY_QKEY", "CONV_RAY_NAMED", "CONV_RAY_UNNAMED_SECRET")})

def bymode(params, input):
    return "yes" if params["mode"] == "b" else "no"

def _mark(what, input):
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write(json.dumps({"what": what, "input": input}) + "\\n")

def slow(params, input):
    """Sync (tasks): case 'two' sleeps 30 s, noting whether it was cancelled or finished."""
    if input == "two":
        _mark("started", input)
        try:
            for _ in range(600):
                time.sleep(0.05)
        except BaseException:
            _mark("cancelled", input)
            raise
        _mark("finished", input)
    return score(params, input)

async def aslow(params, input):
    """The same, async (actors)."""
    if input == "two":
        _mark("started", input)
        try:
            await asyncio.sleep(30)
        except BaseException:
            _mark("cancelled", input)
            raise
        _mark("finished", input)
    return score(params, input)
'''

SPACE = """
search_space:
  parameters:
    x: {type: continuous, min: 0.0, max: 1.0, step: 0.05}
    mode: {type: categorical, values: [a, b, c]}
evaluation:
  test_cases:
    inline:
      - {id: one, input: "one", expected: "yes"}
      - {id: two, input: "two", expected: "yes"}
      - {id: three, input: "three", expected: "yes"}
  metrics:
    acc: {function: contains}
society: {enabled: false}
storage: {path: db.sqlite}
"""


def write_config(folder: Path, target: str, body: str, study: str = "ray-test") -> Any:
    """The study's file; its targets are deterministic and the tests count calls exactly, so they say so
    (``selection.stochastic: false``: no probe calls)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "raytgt.py").write_text(TARGET)
    body = textwrap.dedent(body)
    if "optimization:\n" in body and "selection:" not in body:
        body = body.replace("optimization:\n", "optimization:\n  selection: {stochastic: false}\n", 1)
    text = f"study: {study}\ntarget: {target}\n" + body
    path = folder / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def run(loaded: Any, executor: Any = None) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The outcome and the stored case results (config hash -> case id -> result)."""
    store = await Store.open(loaded.base_dir / loaded.config.storage.path)
    try:
        outcome = await Optimizer(loaded, store, executor=executor).run()
        return outcome, await store.case_results(outcome.run_id)
    finally:
        await store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- a separate head (runs first)


@pytest.mark.slow
def test_cli_joins_a_separate_head_with_auto_and_resumes_after_a_driver_crash(tmp_path: Path) -> None:
    """A user with a running cluster (`ray start --head`) runs `convergence optimize FILE --ray auto`; the
    driver is killed mid-run; `--resume` on the cluster finishes the same run and pays for nothing twice."""
    loaded = write_config(tmp_path, '{type: python, function: "raytgt:ascore", retry: {max_retries: 0}}', SPACE + """
optimization:
  seed: 3
  evolution: {population_size: 6, generations: 4, elite_size: 1}
  execution:
    mode: generational
    concurrency: 3
    early_stopping: {enabled: false}
    backend: ray
    ray: {num_actors: 2, env_vars: [CALL_LOG, CALL_SLEEP]}
""")
    log = tmp_path / "calls.jsonl"
    port = free_port()
    temp = tempfile.mkdtemp(prefix="cvr", dir="/tmp")  # short: Ray's socket paths have a length limit
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # a cluster with token authentication, its token this test's own (never ~/.ray's): the head and the
    # driver both get it, as a user's shell would
    ray_env = {**base_env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp],
        env=ray_env, capture_output=True, text=True, timeout=120, check=False)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        # CALL_LOG / CALL_SLEEP reach the workers only because the config names them (ray.env_vars)
        env = {**ray_env, "RAY_ADDRESS": f"127.0.0.1:{port}", "CALL_LOG": str(log),
               "CALL_SLEEP": "0.1", "PYTHONUNBUFFERED": "1"}
        cmd = [str(BIN / "convergence"), "optimize", str(loaded.path), "--ray", "auto", "--quiet", "--no-outputs"]
        # without the token: a clear error naming where the token goes, no traceback, no call made
        home = tmp_path / "home"  # no ~/.ray/auth_token there
        home.mkdir()
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"} | {"HOME": str(home)}
        refused = subprocess.run(cmd, env=no_token, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert "cannot reach the Ray cluster" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr
        assert not log.exists()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read() if proc.stderr else ''}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        db = tmp_path / "db.sqlite"
        with sqlite3.connect(db) as conn:
            done_before = {(h, c) for h, c in conn.execute("SELECT config_hash, case_id FROM case_results")}
        assert done_before, "case results computed on the cluster were stored on the driver before the kill"
        calls_before = len(log.read_text().splitlines())

        resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=180)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "calls on Ray at auto" in resumed.stdout
        ids = {"one": "one", "two": "two", "three": "three"}
        after = [json.loads(line) for line in log.read_text().splitlines()[calls_before:]]
        assert after, "the resumed run called the target on the cluster"
        repaid = {(config_hash(c["params"]), ids[c["input"]]) for c in after} & done_before
        assert repaid == set(), f"finished case results were paid for again: {sorted(repaid)[:5]}"
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT id, status FROM runs").fetchall() == [(1, "finished")]
            assert conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 6 + 3 * 5
            errors = conn.execute("SELECT COUNT(*) FROM case_results WHERE error IS NOT NULL").fetchone()[0]
            assert errors == 0
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=ray_env, capture_output=True, timeout=120,
                       check=False)
        shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------- no cluster, no Ray needed


@pytest.mark.slow
def test_unreachable_address_fails_fast_with_a_clear_message_before_any_call(tmp_path: Path) -> None:
    loaded = write_config(tmp_path, '{type: python, function: "raytgt:score"}', SPACE)
    log = tmp_path / "calls.jsonl"
    address = f"ray://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    proc = subprocess.run([str(BIN / "convergence"), "optimize", str(loaded.path), "--ray", address, "--quiet"],
                          env={**os.environ, "CALL_LOG": str(log)}, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1
    assert f"cannot reach the Ray cluster at '{address}'" in proc.stderr
    assert "nothing was called" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 20, f"took {elapsed:.1f} s"
    assert not log.exists()
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:  # no run was started either
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0

    bad = subprocess.run([str(BIN / "convergence"), "optimize", str(loaded.path), "--ray", "http://x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected auto, local, ray://host:port or host:port" in bad.stderr


def test_validate_and_cli_start_never_import_ray(tmp_path: Path) -> None:
    loaded = write_config(tmp_path, '{type: python, function: "raytgt:score"}', SPACE + """
optimization:
  execution: {backend: ray, ray: {address: "ray://127.0.0.1:10001", num_actors: 4, resources: {num_cpus: 1}}}
""")
    probe = textwrap.dedent(f"""
        import sys
        from convergence.cli.app import app
        try:
            app(["validate", {str(loaded.path)!r}])
        except SystemExit as e:
            code = e.code
        print("RESULT", code, "ray" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "RESULT 0 False" in out.stdout, out.stdout + out.stderr


def test_config_errors_are_clear(tmp_path: Path) -> None:
    from convergence.config.loader import ConfigError

    for ray_cfg, expected in [
        ("{num_actors: 0}", "num_actors"),
        ("{address: 'http://head:1'}", "expected auto, local, ray://host:port or host:port"),
        ("{resources: {num_cpus: -1}}", "must be >= 0"),
        ("{num_actor: 2}", "num_actors"),  # did-you-mean
    ]:
        with pytest.raises(ConfigError) as info:
            write_config(tmp_path, '{type: python, function: "raytgt:score"}',
                         SPACE + f"optimization:\n  execution: {{backend: ray, ray: {ray_cfg}}}\n")
        assert expected in str(info.value), str(info.value)


async def test_missing_ray_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.engine.ray_executor import RayBackendError

    loaded = write_config(tmp_path, '{type: python, function: "raytgt:score"}',
                          SPACE + "optimization:\n  execution: {backend: ray, ray: {address: local}}\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayBackendError, match=r'pip install -c constraints.txt -e "\.\[ray\]"'):
        await run(loaded)


def test_switching_backend_keeps_the_run_resumable(tmp_path: Path) -> None:
    from convergence.core.fingerprint import run_fingerprint
    from convergence.evaluation.cases import load_test_cases

    local = write_config(tmp_path, '{type: python, function: "raytgt:score"}', SPACE)
    ray = write_config(tmp_path, '{type: python, function: "raytgt:score"}',
                       SPACE + "optimization:\n  execution: {backend: ray, ray: {num_actors: 3}}\n")
    cases = load_test_cases(local.config.evaluation.test_cases, local.base_dir)
    assert run_fingerprint(local.config, local.written, cases) == run_fingerprint(ray.config, ray.written, cases)


def test_the_target_config_shipped_to_workers_holds_references_not_secret_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convergence.engine.executor import target_secret_names
    from convergence.engine.ray_executor import runtime_env, secret_values, target_spec

    monkeypatch.setenv("CONV_RAY_QKEY", "q-secret-4711")
    monkeypatch.setenv("CONV_RAY_TOKEN", "tok-secret-0815")
    monkeypatch.setenv("CONV_RAY_UNNAMED_SECRET", "never-shipped")
    monkeypatch.setenv("CONV_RAY_SOCIETY_KEY", "society-only")
    loaded = write_config(
        tmp_path,
        '{type: http, endpoint: "http://127.0.0.1:9/ask?key=${CONV_RAY_QKEY}", '
        'auth: {type: bearer, token_env: CONV_RAY_TOKEN}}',
        SPACE.replace("society: {enabled: false}", "society: {enabled: false, llm: {model: gpt-4o-mini, "
                      "api_key_env: CONV_RAY_SOCIETY_KEY}}")
        + "optimization:\n  execution: {backend: ray, ray: {runtime_env: {env_vars: {PLAIN: x}}}}\n")
    cfg = loaded.config.resolved_target
    assert "q-secret-4711" in cfg.endpoint  # the driver's config holds the value ...
    names = target_secret_names(loaded.written)
    assert names == {"CONV_RAY_QKEY", "CONV_RAY_TOKEN"}  # the target's section only: not the society's key
    spec = target_spec(cfg, loaded.base_dir, 4, names)
    assert "q-secret-4711" not in json.dumps(spec.data) and "${CONV_RAY_QKEY}" in json.dumps(spec.data)
    assert spec.config() == cfg  # ... which a worker with the env var rebuilds
    assert secret_values(names) == {"CONV_RAY_QKEY": "q-secret-4711", "CONV_RAY_TOKEN": "tok-secret-0815"}
    # the runtime env Ray gets (and logs) is the user's own, with no secret added
    assert runtime_env(loaded.config.optimization.execution.ray) == {"env_vars": {"PLAIN": "x"}}


def test_a_remote_exception_keeps_the_local_runners_retry_rule() -> None:
    """Retryable on Ray exactly when it is locally: a TimeoutError or ConnectionError subclass of any name
    (aiohttp.ServerTimeoutError) comes back as one; anything else does not retry."""
    from convergence.engine.ray_executor import RemoteError
    from convergence.targets.runner import _retryable

    class ServerTimeoutError(TimeoutError):
        pass

    class ClientConnectorError(ConnectionResetError):
        pass

    class Odd(ValueError):
        pass

    for exc in [ServerTimeoutError("slow"), ClientConnectorError("reset"), ConnectionRefusedError("no"),
                TimeoutError("t"), Odd("bad"), KeyError("k")]:
        back = RemoteError.of(exc).exception()
        assert _retryable(back) == _retryable(exc), exc
        assert type(back).__name__ == type(exc).__name__ and str(back) == str(exc)
    assert type(RemoteError.of(ConnectionRefusedError("no")).exception()) is ConnectionRefusedError


class FakeRay:
    """Ray's real exception classes and a scripted ``remote``: each attempt raises (or returns) the next item."""

    def __init__(self, script: list[Any]) -> None:
        import ray

        self.exceptions = ray.exceptions
        self.script = list(script)
        self.sent = 0
        self.killed: list[Any] = []
        self.started = 0

    def cancel(self, ref: Any) -> None:
        pass

    def kill(self, actor: Any) -> None:
        self.killed.append(actor)

    def remote(self, *args: Any) -> Any:
        self.sent += 1
        item = self.script.pop(0) if self.script else "ok"

        async def attempt() -> Any:
            from convergence.core.types import CallResult
            from convergence.engine.ray_executor import RemoteError

            if isinstance(item, BaseException):
                raise item  # a Ray error
            if isinstance(item, RemoteError):
                return item  # the target raised on the worker (sent back as a value)
            return CallResult(output=item)

        return attempt()


def fake_executor(fake: FakeRay, max_retries: int, *, actors: int = 0) -> Any:
    from types import SimpleNamespace

    from convergence.config.targets import RetryConfig
    from convergence.engine.ray_executor import RayExecutor, RayTarget, _ActorPool, _Background
    from convergence.targets.runner import CallRunner

    background = _Background()
    if actors:
        def new_actor(*args: Any) -> Any:
            fake.started += 1

            async def ready() -> None:
                return None

            return SimpleNamespace(call=SimpleNamespace(remote=fake.remote), ready=SimpleNamespace(remote=ready))

        pool = _ActorPool(fake, SimpleNamespace(remote=new_actor), None, None, actors, background)  # type: ignore[arg-type]
        target = RayTarget(fake, "python", pool=pool, background=background)
    else:
        target = RayTarget(fake, "python", task=SimpleNamespace(remote=fake.remote), background=background)
    runner = CallRunner(target, retry=RetryConfig(max_retries=max_retries, backoff_initial_seconds=0),
                        timeout_seconds=5, rate_limit_per_second=None)
    return RayExecutor(fake, target, runner, owns_ray=False, kind="actors" if actors else "tasks")


async def test_ray_errors_lost_attempts_are_capped_per_call_and_permanent_ones_are_not_retried() -> None:
    """No cluster: Ray's exception classes against a scripted remote side."""
    import ray.exceptions as rx

    from convergence.core.types import TestCase
    from convergence.engine.ray_executor import LOST, LOST_RETRIES, RayBackendError, RemoteError

    case = TestCase("c", "x")
    gates: list[int] = []

    async def gate() -> None:
        gates.append(1)

    # lost every time: the first attempt and LOST_RETRIES re-sends, whatever max_retries (its retries unused)
    fake = FakeRay([rx.WorkerCrashedError() for _ in range(20)])
    result = await fake_executor(fake, max_retries=2).call({}, case, gate)
    assert result.error is not None and LOST in result.error
    assert result.attempts == fake.sent == len(gates) == 1 + LOST_RETRIES

    # a result lost with its node or owner before it was fetched is a lost attempt too: sent again
    fake = FakeRay([rx.OwnerDiedError("ab" * 14, None, ""), rx.ObjectLostError("cd" * 14, None, ""), "yes"])
    result = await fake_executor(fake, max_retries=0).call({}, case)
    assert result.error is None and result.output == "yes" and result.attempts == fake.sent == 3

    # a lost attempt does not use up an ordinary retry, and ordinary retries are not granted twice
    fake = FakeRay([rx.WorkerCrashedError(), RemoteError("ServerTimeoutError", "slow", None, base="TimeoutError"),
                    rx.ActorUnavailableError("gone", None), RemoteError("ConnectionError", "reset", None,
                                                                         base="ConnectionError")])
    result = await fake_executor(fake, max_retries=1).call({}, case)
    assert result.error is not None and result.error.startswith("ConnectionError: reset"), result.error
    assert result.attempts == fake.sent == 4  # lost, timeout, lost, connection (its retry was spent)

    # any other Ray error: the call fails once, no retry, the run goes on
    fake = FakeRay([rx.PendingCallsLimitExceeded(), rx.TaskCancelledError()])
    for _ in range(2):
        result = await fake_executor(fake, max_retries=3).call({}, case)
        assert result.error is not None and "ray: " in result.error and result.attempts == 1, result.error
    assert fake.sent == 2

    # an error every call would hit stops the run
    fake = FakeRay([rx.RuntimeEnvSetupError("pip failed")])
    with pytest.raises(RayBackendError, match="RuntimeEnvSetupError"):
        await fake_executor(fake, max_retries=3).call({}, case)
    assert fake.sent == 1

    # actors that keep dying: each death replaces the actor (the old handle killed), up to 2 * 1 + 3 times
    fake = FakeRay([rx.ActorDiedError() for _ in range(20)])
    executor = fake_executor(fake, max_retries=0, actors=1)
    first = await executor.call({}, case)  # 4 lost attempts, 4 replacements
    assert first.attempts == 4 and executor.target.pool.replaced == 4
    with pytest.raises(RayBackendError, match="Ray actors keep dying"):
        await executor.call({}, case)  # the 5th replacement, then the limit
    assert executor.target.pool.replaced == 5 and fake.started == 1 + 5
    await executor.aclose()
    assert len(fake.killed) == 5 + 1  # the 5 replaced handles (off the loop) and the last one, at the end


# --------------------------------------------------------------------------- one in-process cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("function, kind", [("score", "tasks"), ("ascore", "actors")])
async def test_same_best_configuration_and_scores_as_the_local_backend(
    tmp_path: Path, ray_cluster: Any, function: str, kind: str
) -> None:
    """One setting changed (backend: ray): the same trials, scores and best configuration."""
    body = SPACE + """
optimization:
  seed: 11
  evolution: {population_size: 6, generations: 4, elite_size: 1}
  execution: {mode: generational, concurrency: 4, early_stopping: {enabled: false}, backend: BACKEND}
"""
    target = f'{{type: python, function: "raytgt:{function}"}}'
    local_out, _ = await run(write_config(tmp_path / "local", target, body.replace("BACKEND", "local")))
    loaded = write_config(tmp_path / "ray", target, body.replace("BACKEND", "ray"))
    from convergence.engine.executor import build_executor

    executor = await build_executor(loaded)
    try:
        assert executor.kind == kind  # type: ignore[attr-defined]
        ray_out, stored = await run(loaded, executor)
    finally:
        await executor.aclose()
    assert ray_out.best.config == local_out.best.config and ray_out.best.score == local_out.best.score
    assert [(t.config_hash, t.score) for t in ray_out.trials] == [(t.config_hash, t.score) for t in local_out.trials]
    assert ray_out.total_calls == local_out.total_calls == sum(len(v) for v in stored.values())
    assert all(r.call.error is None for by_case in stored.values() for r in by_case.values())


@dataclass
class Seen:
    """What the HTTP target's server received: requests, concurrency, auth headers, query keys."""

    delay: float = 0.1
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0
    peak: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    seen: Seen

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        s = self.seen
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        with s.lock:
            s.active += 1
            s.peak = max(s.peak, s.active)
            s.requests.append({"body": body, "auth": self.headers.get("authorization"), "path": self.path,
                               "t": time.monotonic()})
        try:
            time.sleep(s.delay)
        finally:
            with s.lock:
                s.active -= 1
        good = body.get("mode") == "b" and abs(float(body.get("x", 0)) - 0.7) < 0.051
        out = json.dumps({"answer": "yes" if good else "no"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def http_target(base: str, extra: str = "") -> str:
    return (f'{{type: http, endpoint: "{base}/ask?key=${{CONV_RAY_QKEY}}", auth: {{type: bearer, token_env: '
            f'CONV_RAY_TOKEN}}, response: {{result_field: answer}}{extra}}}')


@pytest.fixture
def secrets_set_after_ray_started(ray_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set after ray.init: a worker can only have them through the runtime env we give it."""
    monkeypatch.setenv("CONV_RAY_QKEY", "q-secret-4711")
    monkeypatch.setenv("CONV_RAY_TOKEN", "tok-secret-0815")
    monkeypatch.setenv("CONV_RAY_NAMED", "named-value")
    monkeypatch.setenv("CONV_RAY_UNNAMED_SECRET", "unnamed-value")


@pytest.mark.slow
async def test_http_target_through_actors_with_the_concurrency_cap_and_budget_held_across_actors(
    tmp_path: Path, secrets_set_after_ray_started: None
) -> None:
    """3 actors, a global limit of 6, max_calls 40: the server never sees more than 6 calls at once,
    nor more than 40 calls; the token and the ${VAR} in the URL reach it from the workers."""
    seen = Seen(delay=0.15)
    with serve(Handler, seen=seen) as base:
        loaded = write_config(tmp_path, http_target(base), SPACE + """
optimization:
  seed: 5
  evolution: {population_size: 8, generations: 5, elite_size: 1}
  execution: {concurrency: 6, early_stopping: {enabled: false}, backend: ray,
              ray: {num_actors: 3, max_concurrency_per_actor: 16}}
  racing: {enabled: false}
  budget: {max_calls: 40}
""")
        out, stored = await run(loaded)
    n = sum(len(v) for v in stored.values())
    assert out.total_calls == n == len(seen.requests) <= 40
    assert "max_calls" in (out.stop_reason or "")
    assert 4 <= seen.peak <= 6, seen.peak
    assert {r["auth"] for r in seen.requests} == {"Bearer tok-secret-0815"}
    assert {r["path"] for r in seen.requests} == {"/ask?key=q-secret-4711"}
    assert all(r.call.error is None for by_case in stored.values() for r in by_case.values())


@pytest.mark.slow
async def test_rate_limit_holds_across_actors(tmp_path: Path, secrets_set_after_ray_started: None) -> None:
    seen = Seen(delay=0.0)
    with serve(Handler, seen=seen) as base:
        loaded = write_config(tmp_path, http_target(base, ", rate_limit_per_second: 10"), SPACE + """
optimization:
  seed: 5
  evolution: {population_size: 5, generations: 1}
  execution: {concurrency: 8, backend: ray, ray: {num_actors: 2}}
  racing: {enabled: false}
""")
        out, _ = await run(loaded)
    times = sorted(r["t"] for r in seen.requests)
    assert out.total_calls == len(times) == 15
    assert times[-1] - times[0] >= 14 * 0.1 * 0.9  # 10 per second, whichever actor sends them


@pytest.mark.slow
async def test_workers_get_only_the_env_vars_the_config_names(
    tmp_path: Path, secrets_set_after_ray_started: None
) -> None:
    """The worker reports digests of what its env holds: a variable in ``ray.env_vars`` is a credential, so
    its value itself would be redacted from the stored output."""
    import hashlib

    loaded = write_config(tmp_path, '{type: python, function: "raytgt:envhash"}', SPACE + """
optimization:
  evolution: {population_size: 2, generations: 1}
  execution: {backend: ray, ray: {env_vars: [CONV_RAY_NAMED], python: actors, num_actors: 1}}
""")
    _, stored = await run(loaded)
    outputs = {r.call.output for by_case in stored.values() for r in by_case.values()}
    named = hashlib.sha256(b"named-value").hexdigest()
    assert outputs == {json.dumps({"CONV_RAY_QKEY": None, "CONV_RAY_NAMED": named, "CONV_RAY_UNNAMED_SECRET": None})}


SECRETS = ("q-secret-4711", "tok-secret-0815", "named-value")
"""The values secrets_set_after_ray_started gives the named env vars (CONV_RAY_UNNAMED_SECRET's is never sent)."""


@pytest.mark.slow
async def test_secret_values_reach_the_workers_but_never_rays_logs(
    tmp_path: Path, ray_cluster: Any, secrets_set_after_ray_started: None
) -> None:
    """Actors (HTTP: token_env and ${VAR} in the URL) and tasks (ray.env_vars), each with a runtime env of
    its own: the workers get the values, and no file under the Ray session's directory (runtime_env_agent.log,
    the raylet's, the GCS's, the workers' own logs) holds any of them, while the plain runtime env is there."""
    import hashlib

    seen = Seen(delay=0.0)
    plain = {"CONV_RAY_PLAIN": "plain-marker-5150"}
    ray_cfg = f"ray: {{num_actors: 1, env_vars: [CONV_RAY_NAMED], runtime_env: {{env_vars: {json.dumps(plain)}}}"
    with serve(Handler, seen=seen) as base:
        out, _ = await run(write_config(tmp_path / "http", http_target(base), SPACE + f"""
optimization:
  evolution: {{population_size: 2, generations: 1}}
  execution: {{backend: ray, {ray_cfg}}}}}
"""))
    assert out.total_calls == len(seen.requests) == 6
    assert {r["auth"] for r in seen.requests} == {"Bearer tok-secret-0815"}
    assert {r["path"] for r in seen.requests} == {"/ask?key=q-secret-4711"}
    # task workers: ray.env_vars names both (a Python target's section has no field to reference them)
    _, stored = await run(write_config(tmp_path / "task", '{type: python, function: "raytgt:envhash"}', SPACE + f"""
optimization:
  evolution: {{population_size: 2, generations: 1}}
  execution: {{backend: ray, ray: {{python: tasks, env_vars: [CONV_RAY_NAMED, CONV_RAY_QKEY],
              runtime_env: {{env_vars: {json.dumps(plain)}}}}}}}
"""))
    digest = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in
              (("CONV_RAY_QKEY", "q-secret-4711"), ("CONV_RAY_NAMED", "named-value"))}
    outputs = {r.call.output for by_case in stored.values() for r in by_case.values()}
    assert outputs == {json.dumps({**digest, "CONV_RAY_UNNAMED_SECRET": None})}

    session = Path(ray_cluster._private.worker.global_worker.node.get_session_dir_path())
    found: dict[str, list[str]] = {}
    for path in session.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for value in (*SECRETS, plain["CONV_RAY_PLAIN"]):
            if value.encode() in data:
                found.setdefault(value, []).append(str(path.relative_to(session)))
    assert plain["CONV_RAY_PLAIN"] in found, "the check reads the files Ray logs runtime envs to"
    assert any("runtime_env_agent" in f for f in found[plain["CONV_RAY_PLAIN"]]), found
    leaked = {v: files for v, files in found.items() if v in SECRETS}
    assert leaked == {}, f"secret values in Ray's session files: {leaked}"


@pytest.mark.slow
@pytest.mark.parametrize("function, python, concurrency", [("slow", "tasks", 1), ("aslow", "actors", 6)])
async def test_a_per_attempt_timeout_cancels_the_remote_attempt_and_the_run_goes_on(
    tmp_path: Path, ray_cluster: Any, monkeypatch: pytest.MonkeyPatch, function: str, python: str,
    concurrency: int
) -> None:
    """Case 'two' sleeps 30 s, past timeout_seconds 8 (ample for a fresh Ray worker on a busy machine): the
    call fails with a timeout (no retry: a timeout is retryable but max_retries is 0), ray.cancel stops the
    remote attempt, and every other call lands.
    Tasks run one at a time: each takes one of the cluster's 2 CPUs, and a cancelled sleeper may hold its
    CPU a while on a busy machine; a task queued in Ray behind two of them would spend its own timeout
    waiting for a CPU (the per-attempt timeout starts when the attempt is sent)."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALL_LOG", str(log))
    loaded = write_config(tmp_path, f'{{type: python, function: "raytgt:{function}", timeout_seconds: 8, '
                                    'retry: {max_retries: 0}}', SPACE + f"""
optimization:
  evolution: {{population_size: 2, generations: 1}}
  execution: {{concurrency: {concurrency}, backend: ray, ray: {{python: {python}, num_actors: 1,
               env_vars: [CALL_LOG]}}}}
""")
    out, stored = await run(loaded)
    results = {(h, c): r.call for h, by in stored.items() for c, r in by.items()}
    timed_out = {k for k, call in results.items() if call.error is not None}
    assert {c for _, c in timed_out} == {"two"} and len(timed_out) == len(stored) == 2
    assert all(results[k].error.startswith("timeout") and results[k].attempts == 1 for k in timed_out)
    assert all(results[k].wall_ms < 25_000 for k in timed_out)  # nobody waited for the 30 s sleeps
    assert all(call.error is None for k, call in results.items() if k not in timed_out)
    assert out.total_calls == 6
    deadline = time.monotonic() + 20  # the workers note the cancel (quickly, unless the machine is busy)
    marks: list[str] = []
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []  # score() logs its calls there too
        marks = [m for m in (json.loads(line).get("what") for line in lines) if m]
        if marks.count("cancelled") == 2:
            break
        await anyio.sleep(0.05)
    assert marks.count("started") == 2 and marks.count("cancelled") == 2 and "finished" not in marks, marks


@pytest.mark.slow
async def test_racing_abandons_the_same_configurations_on_ray_as_locally(tmp_path: Path, ray_cluster: Any) -> None:
    cases = "\n".join(f'      - {{id: c{i}, input: "c{i}", expected: "yes"}}' for i in range(12))
    space = SPACE.replace("""      - {id: one, input: "one", expected: "yes"}
      - {id: two, input: "two", expected: "yes"}
      - {id: three, input: "three", expected: "yes"}""", cases)
    body = space + """
optimization:
  seed: SEED
  evolution: {population_size: 5, generations: 3, elite_size: 1}
  racing: {enabled: true, min_cases: 5}
  execution: {mode: generational, concurrency: 4, early_stopping: {enabled: false}, backend: BACKEND}
"""
    target = '{type: python, function: "raytgt:bymode"}'
    seed = 2
    local_out, _ = await run(write_config(tmp_path / "local", target,
                                          body.replace("BACKEND", "local").replace("SEED", str(seed))))
    ray_out, _ = await run(write_config(tmp_path / "ray", target,
                                        body.replace("BACKEND", "ray").replace("SEED", str(seed))))

    def trials(out: Any) -> list[tuple[Any, ...]]:
        return [(t.config_hash, t.status, t.n_cases, t.score) for t in out.trials]

    assert any(t.status == "abandoned" for t in local_out.trials), trials(local_out)
    assert trials(ray_out) == trials(local_out)
    assert ray_out.best.config == local_out.best.config


@pytest.mark.slow
async def test_killing_an_actor_mid_run_loses_nothing_and_pays_nothing_twice(
    tmp_path: Path, secrets_set_after_ray_started: None
) -> None:
    """ray.kill on a busy actor: its in-flight calls are sent again to a replacement (counted as attempts,
    even with max_retries 0) and every (configuration, case) ends with exactly one stored, successful result.
    Nothing is paid twice: the server got each call whose result was stored without a lost attempt exactly
    once, and a call with lost attempts at most once per attempt counted (the lost ones may or may not have
    reached the server before the kill); no request is for a call without a stored result."""
    from convergence.engine.executor import build_executor

    seen = Seen(delay=0.3)
    with serve(Handler, seen=seen) as base:
        loaded = write_config(tmp_path, http_target(base, ", retry: {max_retries: 0}"), SPACE + """
optimization:
  seed: 9
  evolution: {population_size: 6, generations: 3, elite_size: 1}
  execution: {concurrency: 8, early_stopping: {enabled: false}, backend: ray, ray: {num_actors: 2}}
  racing: {enabled: false}
""")
        executor: Any = await build_executor(loaded)
        killed: list[Any] = []

        async def kill_when_busy() -> None:
            with anyio.fail_after(60):
                while seen.active < 6:
                    await anyio.sleep(0.01)
            victim = max(range(2), key=lambda i: executor.target.pool.busy[i])
            killed.append(executor.target.pool.busy[victim])
            executor.ray.kill(executor.actors[victim])

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_when_busy)
                out, stored = await run(loaded, executor)
            pool = executor.target.pool
            assert pool.replaced == 1 and len(pool.actors) == 2
            lost = executor.target.lost
        finally:
            await executor.aclose()
    results = [r for by_case in stored.values() for r in by_case.values()]
    assert killed and killed[0] >= 1 and lost >= 1  # calls were in flight on the killed actor
    assert all(r.call.error is None for r in results), [r.call.error for r in results if r.call.error]
    assert len(results) == len(out.trials) * 3 == len({(h, c) for h, by in stored.items() for c in by})
    assert sum(r.call.attempts for r in results) == out.total_calls == len(results) + lost
    attempts = {(h, c): r.call.attempts for h, by in stored.items() for c, r in by.items()}
    assert sum(n - 1 for n in attempts.values()) == lost  # every extra attempt is one lost with the actor
    assert max(attempts.values()) == 2  # a lost attempt was sent once more (one kill: never twice)
    sent: dict[tuple[str, str], int] = {}
    for req in seen.requests:
        body = dict(req["body"])
        key = (config_hash({k: v for k, v in body.items() if k != "input"}), str(body["input"]))
        sent[key] = sent.get(key, 0) + 1
    assert set(sent) == set(attempts), "a request for a call with no stored result, or a stored call never sent"
    for key, n in attempts.items():
        if n == 1:
            assert sent[key] == 1, (key, sent[key])  # stored without a lost attempt: paid exactly once
        else:
            assert 1 <= sent[key] <= n, (key, sent[key], n)  # re-sent only because an attempt was lost


@pytest.mark.slow
@pytest.mark.parametrize("python", ["tasks", "actors"])
async def test_a_target_that_cannot_be_built_on_the_workers_fails_before_any_call(
    tmp_path: Path, ray_cluster: Any, python: str
) -> None:
    from convergence.engine.ray_executor import RayBackendError

    loaded = write_config(tmp_path, '{type: python, function: "raytgt:no_such_function"}', SPACE + f"""
optimization:
  execution: {{backend: ray, ray: {{python: {python}, num_actors: 2}}}}
""")
    with pytest.raises(RayBackendError, match=r"python target cannot be built on a Ray worker: .*no_such_function"):
        await run(loaded)
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:  # no run was started
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
