"""Tracing: the real Weave client against an in-process recording trace server.

``RecordingServer`` implements the part of Weave's trace-server interface
(``weave.trace_server_bindings.client_interface.TraceServerClientInterface``)
that tracing uses - ``call_start``, ``call_end``, ``obj_create``,
``file_create``, ``table_create`` - in memory, keeping every request exactly
as the client sent it. The real ``WeaveClient`` is built on it and set as
Weave's global client, the way an embedding program that already called
``weave.init`` would have it; then a small real optimization runs with
``tracing.weave.enabled``. No network, no W&B account.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import load_config
from convergence.engine.loop import Optimizer
from convergence.storage.store import Store
from convergence.tracing import has_credentials
from convergence.tracing.redact import REDACTED, Redactor, is_secret_key, secret_env_values

SECRET = "sk-convergence-test-" + uuid.uuid4().hex
"""An API key in an env var; the target echoes it and a parameter carries it."""

TARGET_MODULE = '''
import os

def answer(params, input):
    # A careless target: it echoes its credentials. The trace must not.
    key = os.environ["CONV_TRACE_TEST_API_KEY"]
    if input == "boom":
        raise RuntimeError(f"upstream rejected Authorization: Bearer {key}")
    return {"output": f"{params['style']}:{input} (auth {key})", "cost_usd": 0.001,
            "prompt_tokens": 3, "completion_tokens": 2}
'''

CONFIG = '''
study: traced-study
target:
  type: python
  function: {module}:answer
  retry: {{max_retries: 0}}
search_space:
  parameters:
    style: {{type: categorical, values: [a, b, c]}}
    api_key: {{type: categorical, values: ["{secret}"]}}
evaluation:
  test_cases:
    inline:
      - {{id: q1, input: "hello", expected: "hello"}}
      - {{id: q2, input: "world", expected: "world"}}
      - {{id: q3, input: "boom", expected: "boom"}}
  metrics:
    hit: {{function: contains, weight: 1.0}}
optimization:
  algorithm: genetic
  seed: 11
  evolution: {{population_size: 2, generations: 2, elite_size: 1}}
  execution: {{concurrency: 2}}
  selection: {{stochastic: false}}  # the trace's calls are counted: no probe calls
storage: {{path: conv.db}}
tracing:
  weave: {{enabled: {enabled}, project: conv-tests}}
'''


class RecordingServer:
    """In-memory trace server: records requests, answers like the real one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def _record(self, kind: str, req: Any) -> None:
        with self.lock:
            self.requests.append((kind, req))

    def call_start(self, req: dict[str, Any]) -> Any:
        from weave.vendor.weave_server_sdk.types import CallStartResponse

        self._record("call_start", req)
        return CallStartResponse(id=req["start"]["id"], trace_id=req["start"]["trace_id"])

    def call_end(self, req: dict[str, Any]) -> None:
        self._record("call_end", req)

    def obj_create(self, req: dict[str, Any]) -> Any:
        from weave.vendor.weave_server_sdk.types import ObjectCreateResponse

        self._record("obj_create", req)
        digest = hashlib.sha256(json.dumps(req, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return ObjectCreateResponse(digest=req["obj"].get("expected_digest") or digest)

    def file_create(self, req: dict[str, Any]) -> Any:
        from weave.vendor.weave_server_sdk.types import FileCreateResponse

        self._record("file_create", req)
        return FileCreateResponse(digest=req.get("expected_digest") or hashlib.sha256(repr(req).encode()).hexdigest())

    def table_create(self, req: dict[str, Any]) -> Any:
        from weave.vendor.weave_server_sdk.types import TableCreateResponse

        self._record("table_create", req)
        return TableCreateResponse(digest=hashlib.sha256(repr(req).encode()).hexdigest(), row_digests=[])

    # --------------------------------------------------------------- reading what arrived

    def calls(self) -> dict[str, dict[str, Any]]:
        """call id -> merged start + end, as the server would store it."""
        out: dict[str, dict[str, Any]] = {}
        for kind, req in self.requests:
            if kind == "call_start":
                s = req["start"]
                out.setdefault(s["id"], {}).update(s)
            elif kind == "call_end":
                e = req["end"]
                out.setdefault(e["id"], {}).update({"output": e["output"], "exception": e["exception"],
                                                    "ended_at": e["ended_at"], "summary": e["summary"]})
        return out

    def everything(self) -> str:
        return json.dumps(self.requests, default=repr)


def op_name(call: dict[str, Any]) -> str:
    """``weave:///ent/proj/op/convergence.trial:digest`` -> ``convergence.trial``."""
    return call["op_name"].rsplit("/", 1)[-1].split(":", 1)[0]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    name = f"traced_target_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TARGET_MODULE))
    monkeypatch.setenv("CONV_TRACE_TEST_API_KEY", SECRET)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no W&B credentials
    monkeypatch.delenv("NETRC", raising=False)
    yield tmp_path, name
    sys.modules.pop(name, None)
    if str(tmp_path.resolve()) in sys.path:
        sys.path.remove(str(tmp_path.resolve()))


def write_config(root: Path, module: str, *, enabled: bool) -> Path:
    path = root / "optimization.yaml"
    path.write_text(CONFIG.format(module=module, secret=SECRET, enabled=str(enabled).lower()))
    return path


@pytest.fixture
def weave_server() -> Iterator[RecordingServer]:
    """A real WeaveClient on the recording server, installed as weave's global client."""
    from weave.trace.context import weave_client_context
    from weave.trace.weave_client import WeaveClient

    server = RecordingServer()
    client = WeaveClient("test-entity", "conv-tests", server, ensure_project_exists=False)
    weave_client_context.set_weave_client_global(client)
    try:
        yield server
    finally:
        client.flush()
        weave_client_context.set_weave_client_global(None)


async def run_optimization(config: Path) -> tuple[Any, Path]:
    loaded = load_config(config)
    db = config.parent / "conv.db"
    async with await Store.open(db) as store:
        outcome = await Optimizer(loaded, store).run()
    return outcome, db


@pytest.mark.anyio
async def test_traced_run_arrives_as_one_call_tree(project: tuple[Path, str], weave_server: RecordingServer) -> None:
    root, module = project
    outcome, db = await run_optimization(write_config(root, module, enabled=True))
    calls = weave_server.calls()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for c in calls.values():
        by_name.setdefault(op_name(c), []).append(c)

    # One run at the root, carrying the attributes a user filters by.
    (run,) = by_name["convergence.run"]
    assert run["parent_id"] is None
    assert run["attributes"]["convergence"] == {"study": "traced-study", "run_id": outcome.run_id, "seed": 11}
    assert run["output"]["run_id"] == outcome.run_id and run["output"]["status"] == outcome.status
    assert len({c["trace_id"] for c in calls.values()}) == 1, "every call belongs to the run's trace"

    # run -> propose + generation (one each per generation run).
    gens = sorted(by_name["convergence.generation"], key=lambda c: c["inputs"]["generation"])
    assert [g["inputs"]["generation"] for g in gens] == list(range(outcome.generations_run))
    assert all(g["parent_id"] == run["id"] for g in gens)
    assert all(p["parent_id"] == run["id"] for p in by_name["convergence.propose"])
    assert gens[0]["output"]["trials"], "a generation's output lists its scored trials"

    # generation -> trial -> target_call, with the configuration and the score.
    trials = by_name["convergence.trial"]
    assert len(trials) == len(outcome.trials)
    gen_ids = {g["id"] for g in gens}
    assert all(t["parent_id"] in gen_ids for t in trials)
    stored = {t.config_hash: t for t in outcome.trials}
    for t in trials:
        rec = stored[t["inputs"]["config_hash"]]
        assert t["inputs"]["configuration"]["style"] == rec.config["style"]
        assert t["output"]["score"] == pytest.approx(rec.score)
        assert t["output"]["n_errors"] == 1  # the "boom" case

    target_calls = by_name["convergence.target_call"]
    assert len(target_calls) == 3 * len(trials)
    trial_ids = {t["id"] for t in trials}
    assert all(c["parent_id"] in trial_ids for c in target_calls)
    for t in trials:
        kids = [c for c in target_calls if c["parent_id"] == t["id"]]
        assert sorted(c["inputs"]["case_id"] for c in kids) == ["q1", "q2", "q3"]
    ok = next(c for c in target_calls if c["inputs"]["case_id"] == "q1")
    assert ok["output"]["error"] is None
    assert ok["output"]["prompt_tokens"] == 3 and ok["output"]["cost_usd"] == pytest.approx(0.001)
    assert ok["output"]["latency_ms"] >= 0 and ok["output"]["attempts"] == 1
    assert ok["output"]["output"].startswith(ok["inputs"]["configuration"]["style"] + ":hello")
    boom = next(c for c in target_calls if c["inputs"]["case_id"] == "q3")
    assert boom["output"]["error"] == f"target_error: RuntimeError: upstream rejected Authorization: Bearer {REDACTED}"

    # The secret never reached the server, in any request, in any form.
    everything = weave_server.everything()
    assert SECRET not in everything
    assert REDACTED in json.dumps(ok["output"]) and REDACTED in json.dumps(ok["inputs"]["configuration"])

    # The store remembers where the trace is, for `convergence traces`.
    async with await Store.open(db) as store:
        (rec,) = await store.run_traces(outcome.run_id)
    assert rec.call_id == run["id"] and rec.call_id in rec.url and rec.project == "test-entity/conv-tests"


@pytest.mark.anyio
async def test_disabled_tracing_sends_nothing_even_with_a_client(
    project: tuple[Path, str], weave_server: RecordingServer
) -> None:
    root, module = project
    outcome, db = await run_optimization(write_config(root, module, enabled=False))
    assert outcome.trials
    assert weave_server.requests == []
    async with await Store.open(db) as store:
        assert await store.run_traces(outcome.run_id) == []


@pytest.mark.anyio
async def test_enabled_without_credentials_starts_no_client(project: tuple[Path, str]) -> None:
    """No key, no netrc, no client set up: one message, no weave client, nothing sent."""
    root, module = project
    loaded = load_config(write_config(root, module, enabled=True))
    messages: list[str] = []

    class Events:
        def generation_started(self, *a: Any) -> None: ...
        def case_finished(self, *a: Any) -> None: ...
        def trial_finished(self, *a: Any) -> None: ...
        def generation_finished(self, *a: Any) -> None: ...

        def message(self, text: str) -> None:
            messages.append(text)

    async with await Store.open(root / "conv.db") as store:
        outcome = await Optimizer(loaded, store, events=Events()).run()
    assert outcome.status == "finished"
    assert [m for m in messages if "tracing" in m] == [
        "tracing: Weave is enabled but no W&B credentials were found (set WANDB_API_KEY or run "
        "`wandb login`); this run is not traced"
    ]
    if "weave" in sys.modules:
        from weave.trace.context import weave_client_context

        assert weave_client_context.get_weave_client() is None


def test_credentials_are_detected_from_env_or_netrc(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert not has_credentials({"HOME": str(home)})
    assert has_credentials({"HOME": str(home), "WANDB_API_KEY": "x" * 40})
    netrc_file = home / ".netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    assert has_credentials({"HOME": str(home)})
    # A netrc for another host is not a W&B login.
    netrc_file.write_text("machine example.com\n  login user\n  password secret123\n")
    assert not has_credentials({"HOME": str(home)})


def test_cli_with_tracing_on_and_no_credentials_never_prompts(project: tuple[Path, str]) -> None:
    """stdin closed, no key: the CLI finishes, says once that tracing is off, never imports weave."""
    root, module = project
    config = write_config(root, module, enabled=True)
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['convergence', 'optimize', sys.argv[1], '--no-outputs']\n"
        "try:\n"
        "    from convergence.cli.app import main; main()\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "else:\n"
        "    code = 0\n"
        "print('WEAVE_IMPORTED=%s' % ('weave' in sys.modules))\n"
        "sys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(root), CONV_TRACE_TEST_API_KEY=SECRET, PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", probe, str(config)], cwd=root, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WEAVE_IMPORTED=False" in proc.stdout
    combined = proc.stdout + proc.stderr
    assert combined.count("no W&B credentials") == 1
    assert "login" not in proc.stderr.lower() or "wandb login" in proc.stderr
    assert SECRET not in combined


def test_redactor_removes_secrets_by_key_value_and_shape() -> None:
    r = Redactor(secret_env_values({"MY_SERVICE_TOKEN": "tok-123456789", "DEBUG": "1"}))
    cleaned = r.clean({
        "headers": {"Authorization": "Bearer abcdefghijkl", "Accept": "json"},
        "params": {"max_tokens": 16, "openai_api_key": "whatever", "temperature": 0.3},
        "text": "called with tok-123456789 and sk-abcdefghijklmnopqrstu",
    })
    assert cleaned["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert cleaned["params"] == {"max_tokens": 16, "openai_api_key": REDACTED, "temperature": 0.3}
    assert cleaned["text"] == f"called with {REDACTED} and {REDACTED}"
    assert r.text("header was Bearer abcdefghijkl") == f"header was Bearer {REDACTED}"
    assert is_secret_key("X-API-Key") and is_secret_key("github_token") and not is_secret_key("prompt_tokens")


@pytest.mark.anyio
async def test_each_rlp_step_is_a_traced_op_with_thoughts_outcomes_and_rewards(
    project: tuple[Path, str], weave_server: RecordingServer
) -> None:
    from convergence.llm.testing import FakeLLM, mention_logprobs

    llm = FakeLLM("tracing-rlp", logprobs=mention_logprobs(["best", "high", "low", "failed"]),
                  default="The best will stay high.")
    root, module = project
    path = write_config(root, module, enabled=True)
    path.write_text(path.read_text() + textwrap.dedent(f"""
        society:
          enabled: true                  # genetic's evolution (70 %) and RLP (30 %)
          rlp: {{G: 1, thought_length: 12}}
          llm: {{model: {llm.model}}}    # the fake LLM: the RLP agent's logic, traced
        """))
    outcome, db = await run_optimization(path)
    steps = [c for c in weave_server.calls().values() if op_name(c) == "convergence.rlp.step"]
    async with await Store.open(db) as store:
        log = [(r.generation, r.agent, r.status, r.detail) for r in await store.society_log(outcome.run_id)]
    assert steps, f"every generation RLP proposed in has a traced learning step; society log: {log}"
    step = steps[0]
    [thought] = step["inputs"]["thoughts"]
    assert thought["strategy"] and "thought" in thought and thought["proposals"]
    assert step["output"]["outcomes"] and step["output"]["rewards"]
    assert step["output"]["method"] == "top_logprobs"
    proposes = [c for c in weave_server.calls().values() if op_name(c) == "convergence.propose.rlp"]
    assert proposes and proposes[0]["inputs"]["agent"] == "rlp"
    assert SECRET not in weave_server.everything()
    assert outcome.status == "finished"


@pytest.mark.anyio
async def test_each_learner_step_is_a_traced_op_with_its_decision_and_learning_metrics(
    project: tuple[Path, str], weave_server: RecordingServer
) -> None:
    root, module = project
    path = write_config(root, module, enabled=True)
    text = (path.read_text().replace("  algorithm: genetic\n", "")
            .replace("generations: 2,", "generations: 4,")
            .replace("concurrency: 2}", "concurrency: 2, mode: generational}")
            .replace("    style:", "    n: {type: discrete, min: 0, max: 50, step: 1}\n    style:"))
    path.write_text(text + textwrap.dedent("""
        society:
          enabled: true
          agents: {evolution: 0.5, random: 0.5}
          learner: {plugin: ppo, rollout: 2}
        """))
    outcome, _ = await run_optimization(path)
    steps = sorted((c for c in weave_server.calls().values() if op_name(c) == "convergence.learner"),
                   key=lambda c: c["inputs"]["generation"])
    assert [s["inputs"]["generation"] for s in steps] == list(range(outcome.generations_run))
    assert all(s["inputs"]["learner"] == "ppo" for s in steps)
    assert set(steps[-1]["output"]["summary"]["action"]) == {"boost", "evolution.operator", "evolution.strength"}
    updates = [s["output"]["summary"]["metrics"] for s in steps if "metrics" in s["output"]["summary"]]
    assert updates and {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"} <= set(updates[0])
