"""What a user relies on when processes share a database or die mid-run:
no row is ever dropped, a finished call is on disk at once, one process owns
a run at a time, and a resume neither re-pays nor hides what was paid."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_loop import SPACE, make_config, run

from convergence.core.types import CallResult, CaseResult
from convergence.engine.loop import Optimizer, ResumeError
from convergence.storage.store import LeaseLostError, RunInUseError, Store

pytestmark = pytest.mark.anyio


def _case(i: int) -> CaseResult:
    return CaseResult(f"c{i}", CallResult(output=str(i), latency_ms=1.0, wall_ms=1.0), {"acc": 1.0})


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_rows_survive_when_the_commit_waits_for_another_process_lock_at_shutdown(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = await Store.open(db)
    run_id = await store.start_run("s", {}, seed=1, config_path=None)
    other = sqlite3.connect(db, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

    def release() -> None:
        time.sleep(0.8)
        other.commit()

    releaser = threading.Thread(target=release)
    async with store.writing():
        for i in range(200):
            store.record_case(run_id, "h", _case(i))
        releaser.start()
        await anyio.sleep(0.2)  # the writer is now blocked inside its commit
    # leaving ``writing()`` cancelled the writer mid-commit: nothing may be lost
    releaser.join()
    await store.close()
    other.close()
    assert _count(db, "case_results") == 200


async def test_a_finished_call_is_on_disk_as_soon_as_the_writer_is_free(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        run_id = await store.start_run("s", {}, seed=1, config_path=None)
        async with store.writing():
            store.record_case(run_id, "h", _case(0))
            await store.durable()
            assert _count(db, "case_results") == 1  # visible to another connection right away
            await anyio.sleep(0)


async def test_a_second_process_cannot_take_a_live_run_but_recovers_a_dead_ones(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    first = await Store.open(db)
    second = await Store.open(db)
    try:
        run_id = await first.start_run("s", {}, seed=1, config_path=None)
        with pytest.raises(RunInUseError, match=f"run {run_id} is being run by process {os.getpid()}"):
            await second.acquire_run(run_id)
        # the owner dies: a pid that no longer exists on this host
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        host, _, token = first.owner.split(":")
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE runs SET owner=? WHERE id=?", (f"{host}:{dead.stdout.strip()}:{token}", run_id))
        await second.acquire_run(run_id)
        # and a silent owner on another host is recovered after the stale interval
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE runs SET owner='elsewhere:1:x', heartbeat_at=? WHERE id=?", (time.time() - 60, run_id))
        await first.acquire_run(run_id)
        # the process that lost the lease notices at its next commit and stops
        second.track_run(run_id, lambda: (0, 0.0, 0.0))
        async with second.writing():
            second.touch()
            with pytest.raises(LeaseLostError, match="another process took over"):
                await second.durable()
    finally:
        await first.close()
        await second.close()


BODY = SPACE + """
optimization:
  seed: 4
  evolution: {population_size: 4, generations: 3, elite_size: 1}
  execution: {mode: generational, early_stopping: {enabled: false}}
"""
EXACT = BODY + "  selection: {stochastic: false}  # deterministic: no probe calls (calls are counted exactly)\n"


_TEST_TARGET = 'target: {type: python, function: "tgt:peak", retry: {max_retries: 0}}'


def with_target(tmp_path: Path, source: str, body: str = BODY, target: str = "", extra: str = "",
                retry: str = "max_retries: 0") -> Any:
    """The test study with its target replaced by ``source``, a module defining
    ``call(params, input)``; ``target`` adds settings to the target, ``extra`` top-level YAML."""
    from convergence.config.loader import load_config

    module = "target_" + re.sub(r"\W", "_", tmp_path.name)  # one module per test: imports are cached
    (tmp_path / f"{module}.py").write_text(source)
    loaded = make_config(tmp_path, body)
    settings = f", {target}" if target else ""
    line = f'target: {{type: python, function: "{module}:call", retry: {{{retry}}}{settings}}}'
    loaded.path.write_text(loaded.path.read_text().replace(_TEST_TARGET, line) + extra)
    return load_config(loaded.path)


async def test_resume_after_editing_the_search_space_is_refused_with_what_changed(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, BODY)
    store = await Store.open(tmp_path / "db.sqlite")
    run_id = await store.start_run("loop-test", loaded.raw, seed=4, config_path=None,
                                   fingerprint='{"search_space": "old", "target": "old-too"}')
    await store.finish_run(run_id, "interrupted", "killed", total_calls=0, total_cost_usd=0, elapsed_seconds=0)
    await store.close()
    with pytest.raises(ResumeError, match="changed since run 1 started: the target, the search space"):
        await run(loaded, resume=True)


async def test_resume_keeps_counting_calls_and_seconds_from_before_the_kill(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, EXACT)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        opt = Optimizer(loaded, store)
        from convergence.core.fingerprint import dumps, run_fingerprint

        fp = dumps(run_fingerprint(loaded.config, loaded.raw, opt.cases))
        run_id = await store.start_run("loop-test", loaded.raw, seed=4, config_path=None, fingerprint=fp)
        # a killed run: it had paid 7 calls (some never stored) over 12.5 s
        await store.finish_run(run_id, "interrupted", "killed", total_calls=7, total_cost_usd=0.5,
                               elapsed_seconds=12.5)
    finally:
        await store.close()
    out = await run(loaded, resume=True)
    n_evals = sum(t.n_cases for t in out.trials)
    assert out.run_id == run_id and out.total_calls == 7 + n_evals
    assert out.elapsed_seconds >= 12.5 and out.total_cost_usd >= 0.5


async def test_resume_with_nothing_to_resume_says_why(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, BODY)
    first = await run(loaded)
    assert first.status == "finished"
    with pytest.raises(ResumeError, match=r"is finished .* nothing to resume"):
        await run(loaded, resume=True)


async def test_a_run_where_every_call_fails_alike_stops_early_and_says_why(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, BODY.replace("input: \"one\"", "input: \"explode\"")
                         .replace("input: \"two\"", "input: \"explode\"")
                         .replace("population_size: 4", "population_size: 8")
                         .replace("execution: {", "execution: {concurrency: 1, "))
    out = await run(loaded)
    assert out.status == "failed"
    assert out.all_failed_error is not None and "target blew up" in out.all_failed_error
    assert "every call failed with the same error" in out.stop_reason
    # two configurations failed alike (2 + 1 calls): it did not pay for the other 13
    assert out.generations_run == 1 and out.total_calls == 3
    assert out.trials  # what ran is stored


def test_cli_exits_3_and_shows_the_error_when_every_call_fails(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, BODY.replace("input: \"one\"", "input: \"explode\"")
                         .replace("input: \"two\"", "input: \"explode\""))
    proc = subprocess.run([sys.executable, "-m", "convergence", "optimize", str(loaded.path), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "target blew up" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_processes_on_one_fresh_database_lose_nothing(tmp_path: Path) -> None:
    """Two studies started together on a file that does not exist yet."""
    procs: list[tuple[Any, Path]] = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        loaded = make_config(d, EXACT.replace("generations: 3", "generations: 4"))
        text = loaded.path.read_text().replace("study: loop-test", f"study: s-{name}").replace(
            "storage: {path: db.sqlite}", f"storage: {{path: {tmp_path / 'shared.db'}}}")
        loaded.path.write_text(text)
        env = {**os.environ, "CALL_SLEEP": "0.002"}
        cmd = [sys.executable, "-m", "convergence", "optimize", str(loaded.path), "--quiet", "--no-outputs"]
        procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), d))
    for p, _ in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "Traceback" not in err, err
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        for run_id, n_trials, n_cases in conn.execute(
            "SELECT r.id, (SELECT COUNT(*) FROM trials t WHERE t.run_id=r.id), "
            "(SELECT COUNT(*) FROM case_results c WHERE c.run_id=r.id) FROM runs r"
        ).fetchall():
            assert n_trials == 4 + 3 * 3 and n_cases == n_trials * 2, run_id


@pytest.mark.slow
def test_ctrl_c_says_the_run_was_interrupted_and_how_to_resume(tmp_path: Path) -> None:
    import signal

    loaded = make_config(tmp_path, BODY.replace("generations: 3", "generations: 50"))
    log = tmp_path / "calls.jsonl"
    # 0.3 s a call: the 126 calls of the 63 configurations take 9 s at least, so the run is still going when
    # the signal comes even on a busy machine
    env = {**os.environ, "CALL_LOG": str(log), "CALL_SLEEP": "0.3"}
    proc = subprocess.Popen([sys.executable, "-m", "convergence", "optimize", str(loaded.path), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 10):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted: run 1 stopped" in err
    assert f"convergence optimize {loaded.path} --resume" in err
    assert "Traceback" not in err
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        status, reason, owner = conn.execute("SELECT status, stop_reason, owner FROM runs").fetchone()
    assert status == "interrupted" and reason.startswith("interrupted (Ctrl-C") and owner is None


async def test_secrets_in_errors_and_outputs_are_never_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdefXYZ"
    monkeypatch.setenv("PLANTED_TOKEN", secret)
    loaded = with_target(
        tmp_path,
        "import os\n"
        "def call(params, input):\n"
        "    if input == 'one':\n"
        "        raise RuntimeError('server said: bad header Authorization: ' + os.environ['PLANTED_TOKEN'])\n"
        "    return 'echo ' + os.environ['PLANTED_TOKEN']\n",
        target="timeout_seconds: 5",
        extra='tracing: {weave: {enabled: false, project: "${PLANTED_TOKEN}"}}\n',
    )
    out = await run(loaded)
    assert out.trials
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))
    assert secret.encode() not in raw
    assert b"REDACTED" in raw


async def test_a_secret_with_quotes_backslashes_and_accents_is_stored_in_no_encoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target echoing its token JSON-escaped, URL-encoded, in base64 and as a Basic-auth
    header, in errors and in its output: no encoding of it reaches the database (or its -wal)."""
    secret = 'sk-planted-0123456789abcdef"\\é-fedcba9876543210'
    monkeypatch.setenv("PLANTED_TOKEN", secret)
    loaded = with_target(
        tmp_path,
        "import base64, json, os\n"
        "from urllib.parse import quote\n"
        "def call(params, input):\n"
        "    t = os.environ['PLANTED_TOKEN']\n"
        "    forms = {'json': json.dumps(t), 'url': quote(t), 'b64': base64.b64encode(t.encode()).decode(),\n"
        "             'basic': 'Basic ' + base64.b64encode(('svc:' + t).encode()).decode()}\n"
        "    if input == 'one':\n"
        "        raise RuntimeError('server said: ' + json.dumps({'error': forms}))\n"
        "    return {'answer': 'yes', 'echo': forms, 'text': repr(forms)}\n",
        target="timeout_seconds: 5",
    )
    out = await run(loaded)
    assert out.trials
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))
    for piece in ("0123456789abcdef", "fedcba9876543210", base64.b64encode(secret.encode()).decode()[:24],
                  base64.b64encode(f"svc:{secret}".encode()).decode()[8:32]):
        assert piece.encode() not in raw, piece
    assert b"REDACTED" in raw


async def test_an_endpoint_url_from_an_env_var_is_shown_in_errors_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint is not a credential: a failed call names it (only the query-string key is hidden)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on: every call is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PLANTED_SERVICE_URL", f"http://127.0.0.1:{port}/score")
    monkeypatch.setenv("PLANTED_QUERY_VALUE", "qv-0123456789abcdef")
    loaded = make_config(tmp_path, BODY)
    line = ('target: {type: http, endpoint: "${PLANTED_SERVICE_URL}?key=${PLANTED_QUERY_VALUE}", '
            "retry: {max_retries: 0}, timeout_seconds: 5}")
    loaded.path.write_text(loaded.path.read_text().replace(_TEST_TARGET, line))
    from convergence.config.loader import load_config

    out = await run(load_config(loaded.path))
    assert out.all_failed_error is not None
    assert f"http://127.0.0.1:{port}/score?key=REDACTED" in out.all_failed_error
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        errors = [e for (e,) in conn.execute("SELECT error FROM case_results WHERE error IS NOT NULL")]
    assert errors and all(f"http://127.0.0.1:{port}/score?key=REDACTED" in e for e in errors), errors[:1]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))
    assert b"0123456789abcdef" not in raw


async def test_retries_count_as_paid_calls_in_the_run_totals(tmp_path: Path) -> None:
    loaded = with_target(
        tmp_path,
        "seen = set()\n"
        "def call(params, input):\n"
        "    key = (repr(sorted(params.items())), input)\n"
        "    if key not in seen:\n"
        "        seen.add(key)\n"
        "        raise ConnectionError('connection reset')\n"
        "    return 'yes'\n",
        retry="max_retries: 2, backoff_initial_seconds: 0.001", body=EXACT,
    )
    out = await run(loaded)
    n_cases = sum(t.n_cases for t in out.trials)
    assert all(t.n_errors == 0 for t in out.trials)
    assert out.total_calls == 2 * n_cases  # every case: one failed attempt, one retry
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        assert conn.execute("SELECT total_calls FROM runs").fetchone()[0] == out.total_calls


async def test_a_process_that_lost_its_lease_writes_nothing_more_into_the_run(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        run_id = await store.start_run("s", {}, seed=1, config_path=None)
        store.track_run(run_id, lambda: (0, 0.0, 0.0))
        async with store.writing():
            store.record_case(run_id, "h", _case(0))
            await store.durable()
            with sqlite3.connect(db) as conn:  # another process takes the run over
                conn.execute("UPDATE runs SET owner='elsewhere:1:x', heartbeat_at=? WHERE id=?", (time.time(), run_id))
            store.record_case(run_id, "h", _case(1))
            with pytest.raises(LeaseLostError):
                await store.durable()
            store.record_case(run_id, "h", _case(2))
    assert _count(db, "case_results") == 1


async def test_one_broken_test_case_does_not_stop_the_run(tmp_path: Path) -> None:
    # case one fails fast on every configuration, case two succeeds slowly: a bad case, not a broken target
    loaded = make_config(tmp_path, BODY.replace("input: \"one\"", "input: \"explode\"")
                         .replace("population_size: 4", "population_size: 6")
                         .replace("execution: {", "execution: {concurrency: 8, "))
    os.environ["CALL_SLEEP"] = "0.05"
    try:
        out = await run(loaded)
    finally:
        del os.environ["CALL_SLEEP"]
    assert out.status == "finished" and out.all_failed_error is None


async def test_resume_after_an_outage_calls_the_failed_cases_again(tmp_path: Path) -> None:
    flag = tmp_path / "down"
    flag.write_text("1")
    loaded = with_target(
        tmp_path,
        "import os\n"
        "def call(params, input):\n"
        "    if os.path.exists(os.environ['OUTAGE_FLAG']):\n"
        "        raise RuntimeError('503 upstream down')\n"
        "    return 'yes'\n",
        body=BODY.replace("execution: {", "execution: {concurrency: 1, "),
    )
    os.environ["OUTAGE_FLAG"] = str(flag)
    try:
        first = await run(loaded)
        assert first.status == "failed" and first.all_failed_error
        flag.unlink()  # the user fixes the target
        second = await run(loaded, resume=True)
    finally:
        del os.environ["OUTAGE_FLAG"]
    assert second.run_id == first.run_id and second.status == "finished"
    assert all(t.n_errors == 0 for t in second.trials)


async def test_a_structured_output_is_stored_whole_with_only_the_secret_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-structured-0123456789abcdef"
    monkeypatch.setenv("PLANTED_API_KEY", secret)
    loaded = with_target(
        tmp_path,
        "import os\n"
        "def call(params, input):\n"
        "    return {'output': {'echo': 'Bearer ' + os.environ['PLANTED_API_KEY'], 'tokens': 7,\n"
        "                       'long': 'x' * 30000}}\n",
    )
    out = await run(loaded)
    async with await Store.open(tmp_path / "db.sqlite") as store:
        stored = (await store.case_results(out.run_id))[out.trials[0].config_hash]["case-1"].call.output
    import json

    value = json.loads(stored)
    assert value["echo"] == "Bearer REDACTED" and value["tokens"] == 7 and len(value["long"]) == 30000


async def test_a_report_keeps_metrics_and_space_when_a_stored_reference_is_unset_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATER_UNSET_TOKEN", "sk-later-unset-0123456789")
    loaded = with_target(tmp_path, "def call(params, input):\n    return 'yes'\n",
                         extra='tracing: {weave: {enabled: false, project: "${LATER_UNSET_TOKEN}"}}\n')
    out = await run(loaded)
    monkeypatch.delenv("LATER_UNSET_TOKEN")
    from convergence.reporting.outputs import build_report

    async with await Store.open(tmp_path / "db.sqlite") as store:
        report = await build_report(store, out.run_id)
    assert report.metric_directions == {"acc": "higher_is_better"} and report.parameters == ["x", "mode"]
