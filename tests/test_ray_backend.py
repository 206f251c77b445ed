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
import asyncio, json, os

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

def env(params, input):
    return json.dumps({k: os.environ.get(k) for k in ("CONV_RAY_NAMED", "CONV_RAY_UNNAMED_SECRET")})
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
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "raytgt.py").write_text(TARGET)
    text = f"study: {study}\ntarget: {target}\n" + textwrap.dedent(body)
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
    ray_env = {**base_env, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp],
        env=ray_env, capture_output=True, text=True, timeout=120, check=False)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        # CALL_LOG / CALL_SLEEP reach the workers only because the config names them (ray.env_vars)
        # Ray 2.60's head turns token authentication on (the token in ~/.ray); a driver joining it says so
        env = {**ray_env, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token", "CALL_LOG": str(log),
               "CALL_SLEEP": "0.1", "PYTHONUNBUFFERED": "1"}
        cmd = [str(BIN / "convergence"), "optimize", str(loaded.path), "--ray", "auto", "--quiet", "--no-outputs"]
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
    from convergence.engine.ray_executor import runtime_env, target_spec
    from convergence.tracing.redact import config_secret_names

    monkeypatch.setenv("CONV_RAY_QKEY", "q-secret-4711")
    monkeypatch.setenv("CONV_RAY_TOKEN", "tok-secret-0815")
    monkeypatch.setenv("CONV_RAY_UNNAMED_SECRET", "never-shipped")
    loaded = write_config(
        tmp_path,
        '{type: http, endpoint: "http://127.0.0.1:9/ask?key=${CONV_RAY_QKEY}", '
        'auth: {type: bearer, token_env: CONV_RAY_TOKEN}}', SPACE)
    cfg = loaded.config.resolved_target
    assert "q-secret-4711" in cfg.endpoint  # the driver's config holds the value ...
    names = config_secret_names(loaded.written)
    spec = target_spec(cfg, loaded.base_dir, 4, names)
    assert "q-secret-4711" not in json.dumps(spec.data) and "${CONV_RAY_QKEY}" in json.dumps(spec.data)
    assert spec.config() == cfg  # ... which a worker with the env var rebuilds
    env = runtime_env(loaded.config.optimization.execution.ray, names)
    assert env == {"env_vars": {"CONV_RAY_QKEY": "q-secret-4711", "CONV_RAY_TOKEN": "tok-secret-0815"}}


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
    loaded = write_config(tmp_path, '{type: python, function: "raytgt:env"}', SPACE + """
optimization:
  evolution: {population_size: 2, generations: 1}
  execution: {backend: ray, ray: {env_vars: [CONV_RAY_NAMED], python: actors, num_actors: 1}}
""")
    _, stored = await run(loaded)
    outputs = {json.dumps(r.call.output) for by_case in stored.values() for r in by_case.values()}
    assert outputs == {json.dumps(json.dumps({"CONV_RAY_NAMED": "named-value", "CONV_RAY_UNNAMED_SECRET": None}))}


@pytest.mark.slow
async def test_killing_an_actor_mid_run_loses_nothing_and_pays_nothing_twice(
    tmp_path: Path, secrets_set_after_ray_started: None
) -> None:
    """ray.kill on a busy actor: its in-flight calls are retried on a replacement (counted as attempts,
    even with max_retries 0), every (configuration, case) ends with exactly one stored, successful result,
    and the server received each at most once more than the attempts lost with the actor."""
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
    assert max(r.call.attempts for r in results) >= 2
    assert len(results) <= len(seen.requests) <= len(results) + lost


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
