"""SAO preference pairs as a user handles them: stored per run and study (a
version 4 database upgrades), exported as a TRL preference dataset that
``datasets`` loads as is, imported back, summarised, and driven through
``convergence sao export|import|stats``."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import datasets
import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.core.sao_pair import FILTERS, SAOPair
from convergence.errors import ConvergenceError
from convergence.society.sao.dataset import SAODatasetError, dataset_stats, export_pairs, import_pairs, to_record
from convergence.storage.migrations import LATEST, MIGRATIONS
from convergence.storage.store import Store

COLUMNS = ["prompt", "chosen", "rejected"]


def pair(prompt: str, a: str, b: str, outcome: str, *, v1: str | None = None, v2: str | None = None,
         failed: list[str] | None = None, **kw: Any) -> SAOPair:
    if outcome in ("A", "B", "tie"):
        v1 = v2 = outcome
    return SAOPair(persona=kw.pop("persona", "a busy nurse"), prompt=prompt, response_a=a, response_b=b,
                   verdict_1=v1, verdict_2=v2, outcome=outcome, failed_filters=failed or [], **kw)  # type: ignore[arg-type]


def run_pairs(run_id: int) -> list[SAOPair]:
    """One run's pairs: two kept (A, B), and one of each reason to leave a pair out."""
    loop: dict[str, Any] = {"source": "loop", "model": "gemma", "run_id": run_id, "generation": 0}
    return [
        pair("Explain the water cycle to a child.", "Water goes up as vapour, makes clouds and falls as rain.",
             "Water.", "A", config_a={"temperature": 0.2}, config_b={"temperature": 1.0}, hash_a="h-cool",
             hash_b="h-hot", prompt_input={"question": "water cycle"}, judgments=["A is better", "B is better"],
             **loop),
        pair("How do I reset my router?", "Unplug it.", "Hold the reset button for 10 seconds, then wait.",
             "B", config_a={"temperature": 1.0}, config_b={"temperature": 0.2}, hash_a="h-hot", hash_b="h-cool",
             **loop),
        pair("Name a prime number.", "7", "9", "inconsistent", v1="A", v2="B", failed=["inconsistent"], **loop),
        pair("Say hello.", "Hello!", "Hi!", "tie", failed=["tie"], **loop),
        pair("What is 2+2?", "4", "five", "A", failed=["too_short"], **loop),
        pair("Translate 'cat' to French.", "chat", "chien", "unparseable", failed=["unparseable"], **loop),
    ]


@dataclass
class Rating:
    """What society.ratings.Rating looks like to the store (duck-typed)."""

    config_hash: str
    strength: float
    preference: float
    duels: int
    wins: int
    losses: int
    ties: int


def load(path: Path, tmp_path: Path) -> datasets.Dataset:
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


# --------------------------------------------------------------------------- storage


@pytest.mark.anyio
async def test_a_version_4_database_upgrades_to_5_keeping_its_data(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    with sqlite3.connect(db) as conn:  # as the release with schema version 4 left it
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, sql in MIGRATIONS[:4]:
            conn.executescript(sql)
            conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        conn.execute("INSERT INTO studies(name, created_at) VALUES ('s', 0)")
        conn.execute("INSERT INTO runs(study_id, status, config_json, started_at) VALUES (1, 'finished', '{}', 0)")
        conn.execute("INSERT INTO agent_experience(study_id, agent, run_id, generation, reward, data_json, "
                     "created_at) VALUES (1, 'bandit', 1, 0, 0.5, '{\"arm\": \"a\"}', 0)")
    assert LATEST >= 5
    async with await Store.open(db) as store:
        assert await store.schema_version() == LATEST
        [run] = await store.list_runs()
        assert (run.id, run.study, run.status) == (1, "s", "finished")
        sid = await store.study_id("s")
        assert [e.data for e in await store.experiences(sid, "bandit")] == [{"arm": "a"}]
        assert await store.add_sao_pairs(sid, run_pairs(run.id)[:1]) == 1
        assert [p.prompt for p in await store.sao_pairs(study="s")] == ["Explain the water cycle to a child."]
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")] == list(
            range(1, LATEST + 1))


@pytest.mark.anyio
async def test_pairs_round_trip_by_run_and_study_and_kept_only(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        sid = await store.study_id("s")
        run_id = await store.start_run("s", {}, seed=1, config_path=None)
        written = run_pairs(run_id)
        for p in written:
            store.record_sao_pair(sid, p)
        written[0].judgments.append("mutated after recording")  # encoded at call time: not stored
        await store.durable()
        imported = [pair("Imported prompt", "good", "bad", "A", source="import")]
        assert await store.add_sao_pairs(sid, imported) == 1
        other = await store.start_run("other", {}, seed=1, config_path=None)
        store.record_sao_pair(await store.study_id("other"), pair("Other study", "x", "y", "B", run_id=other))
        await store.flush()
    async with await Store.open(db) as store:  # committed: a new process reads them back
        got = await store.sao_pairs(run_id=run_id)
        assert [p.prompt for p in got] == [p.prompt for p in written]
        first = got[0]
        assert (first.persona, first.response_a, first.response_b, first.verdict_1, first.verdict_2, first.outcome,
                first.failed_filters, first.prompt_input, first.config_a, first.config_b, first.hash_a,
                first.hash_b, first.source, first.model, first.run_id, first.generation, first.judgments) == (
            "a busy nurse", written[0].response_a, "Water.", "A", "A", "A", [], {"question": "water cycle"},
            {"temperature": 0.2}, {"temperature": 1.0}, "h-cool", "h-hot", "loop", "gemma", run_id, 0,
            ["A is better", "B is better"])
        assert first.id is not None and first.created_at is not None and first.kept
        assert [p.failed_filters for p in got[2:]] == [["inconsistent"], ["tie"], ["too_short"], ["unparseable"]]
        assert got[5].verdict_1 is None and got[5].outcome == "unparseable"

        kept = await store.sao_pairs(run_id=run_id, kept_only=True)
        assert [p.chosen for p in kept] == [written[0].response_a, written[1].response_b]
        study = await store.sao_pairs(study="s")
        assert [p.prompt for p in study] == [p.prompt for p in written] + ["Imported prompt"]
        assert study[-1].run_id is None and study[-1].source == "import"
        assert [p.prompt for p in await store.sao_pairs(study_id=sid, kept_only=True)] == [
            written[0].prompt, written[1].prompt, "Imported prompt"]
        assert [p.prompt for p in await store.sao_pairs(study="s", limit=2)] == ["Translate 'cat' to French.",
                                                                                  "Imported prompt"]
        assert await store.sao_pairs(study="nobody") == []
        assert len(await store.sao_pairs()) == 8
        assert await store.sao_studies() == [("other", 1), ("s", 7)]
        assert await store.latest_sao_run() == other


@pytest.mark.anyio
async def test_ratings_are_replaced_whole_and_read_most_preferred_first(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "c.db") as store:
        assert await store.sao_ratings(1) == {}
        store.save_sao_ratings(1, [("h1", 0.1, 0.4, 3, 1, 2, 0), ("h2", 0.5, 0.6, 3, 2, 1, 0),
                                   ("h3", 0.0, 0.5, 2, 1, 1, 0)])
        store.save_sao_ratings(2, [("h1", 1.0, 0.9, 1, 1, 0, 0)])
        await store.durable()
        assert list(await store.sao_ratings(1)) == ["h2", "h3", "h1"]
        store.save_sao_ratings(1, [Rating("h9", -0.2, 0.45, 4, 1, 2, 1), Rating("h1", 0.3, 0.55, 4, 2, 1, 1)])
        await store.durable()
        assert await store.sao_ratings(1) == {
            "h1": {"strength": 0.3, "preference": 0.55, "duels": 4, "wins": 2, "losses": 1, "ties": 1},
            "h9": {"strength": -0.2, "preference": 0.45, "duels": 4, "wins": 1, "losses": 2, "ties": 1},
        }
        assert list(await store.sao_ratings(2)) == ["h1"]  # another run's ratings are untouched


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@pytest.mark.parametrize("conversational", [False, True])
def test_export_loads_in_datasets_with_exactly_prompt_chosen_rejected(
    tmp_path: Path, fmt: str, conversational: bool
) -> None:
    pairs = run_pairs(1)
    out = tmp_path / f"pairs.{fmt}"
    assert export_pairs(pairs, out, format=fmt, conversational=conversational) == 2  # type: ignore[arg-type]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    text = out.read_text()
    assert text.lstrip().startswith("[") == (fmt == "json")
    ds = load(out, tmp_path)
    assert ds.column_names == COLUMNS and ds.num_rows == 2
    water, router = pairs[0], pairs[1]
    if conversational:
        assert ds[0] == {
            "prompt": [{"role": "user", "content": water.prompt}],
            "chosen": [{"role": "assistant", "content": water.response_a}],
            "rejected": [{"role": "assistant", "content": "Water."}],
        }
        assert ds[1]["chosen"] == [{"role": "assistant", "content": router.response_b}]  # B won
    else:
        assert ds[0] == {"prompt": water.prompt, "chosen": water.response_a, "rejected": "Water."}
        assert ds[1] == {"prompt": router.prompt, "chosen": router.response_b, "rejected": "Unplug it."}
        assert to_record(router) == ds[1]


def test_export_leaves_out_inconsistent_tied_unparseable_and_filtered_pairs(tmp_path: Path) -> None:
    pairs = run_pairs(1)
    out = tmp_path / "p.jsonl"
    export_pairs(pairs, out)
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == [
        "Explain the water cycle to a child.", "How do I reset my router?"]
    # --all adds the filtered pair that still has a preference, never ties or inconsistent ones
    assert export_pairs(pairs, out, include_all=True) == 3
    assert load(out, tmp_path)["prompt"][2] == "What is 2+2?"
    with pytest.raises(SAODatasetError, match="outcome 'tie'"):
        to_record(pairs[3])


def test_export_metadata_columns_are_strings_datasets_reads_stably(tmp_path: Path) -> None:
    pairs = run_pairs(1)[:2] + [pair("No configs", "a", "b", "A", persona="a student")]
    out = tmp_path / "meta.jsonl"
    export_pairs(pairs, out, with_metadata=True, conversational=True)
    ds = load(out, tmp_path)
    assert ds.column_names == [*COLUMNS, "persona", "source", "outcome", "config_chosen", "config_rejected",
                               "prompt_chosen", "prompt_rejected", "reference"]
    assert ds["persona"] == ["a busy nurse", "a busy nurse", "a student"]
    assert ds["outcome"] == ["A", "B", "A"]
    assert [json.loads(c) for c in ds["config_chosen"]] == [{"temperature": 0.2}, {"temperature": 0.2}, None]
    assert json.loads(ds["config_rejected"][1]) == {"temperature": 1.0}


# --------------------------------------------------------------------------- import


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@pytest.mark.parametrize("conversational", [False, True])
@pytest.mark.parametrize("metadata", [False, True])
def test_export_then_import_gives_back_the_same_preferences(
    tmp_path: Path, fmt: str, conversational: bool, metadata: bool
) -> None:
    pairs = [p for p in run_pairs(1) if p.kept]
    out = tmp_path / f"p.{fmt}"
    export_pairs(pairs, out, format=fmt, conversational=conversational, with_metadata=metadata)  # type: ignore[arg-type]
    back = import_pairs(out)
    assert [(p.prompt, p.chosen, p.rejected) for p in back] == [(p.prompt, p.chosen, p.rejected) for p in pairs]
    for p in back:
        assert (p.outcome, p.verdict_1, p.verdict_2, p.source, p.failed_filters, p.kept) == ("A", "A", "A",
                                                                                             "import", [], True)
    if metadata:
        assert [p.persona for p in back] == ["a busy nurse"] * 2
        assert [p.config_a for p in back] == [{"temperature": 0.2}, {"temperature": 0.2}]  # the chosen one's
    else:
        assert [p.persona for p in back] == ["", ""] and back[0].config_a is None


def test_import_reads_trl_implicit_prompt_shapes(tmp_path: Path) -> None:
    f = tmp_path / "implicit.jsonl"
    f.write_text(
        json.dumps({"chosen": [{"role": "user", "content": "What color is the sky?"},
                               {"role": "assistant", "content": "It is blue."}],
                    "rejected": [{"role": "user", "content": "What color is the sky?"},
                                 {"role": "assistant", "content": "It is green."}]}) + "\n\n"
        + json.dumps({"chosen": "The sky is blue.", "rejected": "The sky is green."}) + "\n"
        + json.dumps({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "Hello!"}],
                      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]})
        + "\n"
    )
    got = [(p.prompt, p.chosen, p.rejected) for p in import_pairs(f)]
    assert got == [("What color is the sky?", "It is blue.", "It is green."),
                   ("The sky is", " blue.", " green."),  # split as TRL's extract_prompt does
                   ("Hi", "Hello!", "Go away")]


GOOD = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
MSG_USER = {"role": "user", "content": "p"}


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("pairs.jsonl", f"{GOOD}\n{GOOD}\n" + json.dumps({"prompt": "p", "rejected": "r"}),
     "pairs.jsonl:3: field 'chosen' is missing; expected prompt/chosen/rejected"),
    ("pairs.jsonl", GOOD + "\n{\"prompt\": \"p\", \"chosen\": \n", "pairs.jsonl:2: invalid JSON"),
    ("pairs.jsonl", "[1, 2]\n", "pairs.jsonl: record 1: expected a JSON object with prompt/chosen/rejected"),
    ("pairs.jsonl", json.dumps({"prompt": "p", "chosen": 3, "rejected": "r"}),
     "pairs.jsonl:1: field 'chosen' must be a string or a list of messages, not a number"),
    ("pairs.jsonl", json.dumps({"prompt": "p", "chosen": "c", "rejected": ["r"]}),
     "pairs.jsonl:1: field 'rejected' must be a string"),
    ("pairs.jsonl", json.dumps({"prompt": [MSG_USER], "chosen": "c", "rejected": "r"}),
     "pairs.jsonl:1: field 'prompt' must be a string"),
    ("pairs.jsonl", json.dumps({"prompt": [MSG_USER], "chosen": [{"role": "assistant"}],
                                "rejected": [{"role": "assistant", "content": "r"}]}),
     "pairs.jsonl:1: field 'chosen[0].content' is missing"),
    ("pairs.jsonl", json.dumps({"prompt": [{"role": "system", "content": "s"}, MSG_USER],
                                "chosen": [{"role": "assistant", "content": "c"}],
                                "rejected": [{"role": "assistant", "content": "r"}]}),
     "pairs.jsonl:1: field 'prompt' must be one user message (a single turn), got roles: system, user"),
    ("pairs.jsonl", json.dumps({"chosen": [{"role": "assistant", "content": "c"}],
                                "rejected": [{"role": "assistant", "content": "r"}]}),
     "pairs.jsonl:1: field 'prompt' is missing and chosen/rejected share no leading user message"),
    ("pairs.jsonl", json.dumps({"prompt": "", "chosen": "c", "rejected": "r"}),
     "pairs.jsonl:1: field 'prompt' is empty"),
    ("pairs.jsonl", json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "config_chosen": "{nope"}),
     "pairs.jsonl:1: field 'config_chosen' is not valid JSON"),
    ("pairs.json", json.dumps([json.loads(GOOD), {"prompt": "p", "chosen": "c"}]),
     "pairs.json: record 2: field 'rejected' is missing"),
    ("pairs.json", "[\n" + GOOD + ",\n", "pairs.json:3: invalid JSON"),
    ("pairs.json", json.dumps({"data": [json.loads(GOOD)]}, indent=1), "holds one JSON object; expected JSON Lines"),
])
def test_bad_input_names_the_file_line_and_field(tmp_path: Path, name: str, text: str, expected: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(SAODatasetError) as info:
        import_pairs(f)
    assert isinstance(info.value, ConvergenceError) and not isinstance(info.value, KeyError | ValueError)
    assert str(info.value).startswith(str(tmp_path))
    assert expected in str(info.value)


def test_unreadable_files_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(SAODatasetError, match=r"cannot read .*missing\.jsonl"):
        import_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(SAODatasetError, match=r"latin1\.jsonl: not UTF-8"):
        import_pairs(tmp_path / "latin1.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    assert import_pairs(tmp_path / "empty.jsonl") == []


# --------------------------------------------------------------------------- statistics


def test_dataset_stats_counts_outcomes_filters_consistency_and_diversity() -> None:
    pairs = run_pairs(1) + [pair("Imported", "a", "b", "A", source="import")]
    stats = dataset_stats(pairs)
    assert stats["total"] == 7 and stats["kept"] == 3
    assert stats["outcomes"] == {"A": 3, "B": 1, "tie": 1, "inconsistent": 1, "unparseable": 1}
    assert list(stats["filters"]) == list(FILTERS)
    assert {k: v for k, v in stats["filters"].items() if v} == {"inconsistent": 1, "tie": 1, "too_short": 1,
                                                                "unparseable": 1}
    # A, B, tie (x4) of the judged parseable pairs (5): the imported pair was never judged
    assert stats["consistency_rate"] == pytest.approx(4 / 5)
    assert 0.0 < stats["diversity"] <= 1.0
    assert stats["sources"] == {"import": 1, "loop": 6} and stats["unique_prompts"] == 7
    same = dataset_stats([pair("Same prompt", "a", "b", "A"), pair("Same prompt", "c", "d", "B")])
    assert same["diversity"] == pytest.approx(0.0) and same["unique_prompts"] == 1
    none = dataset_stats([pair("x", "a", "b", "unparseable")])
    assert (none["kept"], none["consistency_rate"], none["diversity"]) == (0, None, None)
    assert none["filters"]["unparseable"] == 1  # counted from the outcome too


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def project_db(tmp_path: Path) -> Path:
    """Run 1 (study s): six pairs and ratings; imported pairs in s; run 2 (study
    other): one kept pair; run 3 (study s): no pairs; run 4 (s): nothing kept."""
    db = tmp_path / "conv.db"

    async def fill() -> None:
        async with await Store.open(db) as store:
            sid = await store.study_id("s")
            r1 = await store.start_run("s", {}, seed=1, config_path=None)
            for p in run_pairs(r1):
                store.record_sao_pair(sid, p)
            store.save_sao_ratings(r1, [Rating("h-cool", 0.7, 0.8, 2, 2, 0, 0),
                                        Rating("h-hot", -0.7, 0.2, 2, 0, 2, 0)])
            await store.durable()
            await store.add_sao_pairs(sid, [pair("Imported [bold]prompt[/]", "good", "bad", "A", source="import")])
            r2 = await store.start_run("other", {}, seed=1, config_path=None)
            store.record_sao_pair(await store.study_id("other"), pair("Other", "x", "y", "B", run_id=r2, source="loop"))
            await store.start_run("s", {}, seed=1, config_path=None)
            r4 = await store.start_run("s", {}, seed=1, config_path=None)
            store.record_sao_pair(sid, pair("Tied", "x", "y", "tie", failed=["tie"], run_id=r4, source="loop"))
            await store.flush()

    anyio.run(fill)
    return db


def sao(*args: str) -> Any:
    return CliRunner().invoke(app, ["sao", *args], env={"COLUMNS": "200"})


def test_cli_export_writes_a_run_and_says_what_it_left_out(project_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "run1.jsonl"
    res = sao("export", "1", "--db", str(project_db), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert f"wrote 2 pair(s) of run 1 to {out} (jsonl, standard)" in res.stdout
    assert "left out 4 pair(s): unparseable 1, inconsistent 1, tie 1, too_short 1" in res.stdout
    assert load(out, tmp_path).column_names == COLUMNS

    conv = tmp_path / "run1.json"  # the format follows the suffix
    res = sao("export", "1", "--db", str(project_db), "-o", str(conv), "--conversational", "--all", "--metadata")
    assert res.exit_code == 0, res.output
    assert "wrote 3 pair(s) of run 1" in res.stdout and "(json, conversational)" in res.stdout
    records = json.loads(conv.read_text())
    assert len(records) == 3 and records[0]["chosen"][0]["role"] == "assistant" and "persona" in records[0]


def test_cli_export_default_scope_and_study_scope(project_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "latest.jsonl"
    res = sao("export", "--db", str(project_db), "-o", str(out))  # run 4 has pairs but none kept
    assert res.exit_code == 2
    assert "run 4 (the newest run with SAO pairs)" in res.stdout
    assert "nothing to export: none of the 1 pair(s) of run 4 is kept - tie 1" in res.stderr
    assert not out.exists()

    res = sao("export", "--study", "s", "--db", str(project_db), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "wrote 3 pair(s) of study 's'" in res.stdout
    assert load(out, tmp_path)["prompt"][-1] == "Imported [bold]prompt[/]"  # user text is never markup


@pytest.mark.parametrize(("args", "message"), [
    (["3"], "run 3 has no SAO pairs: SAO was off in this run; enable society.learning.sao_enabled"),
    (["99"], "no run 99 in"),
    (["--study", "nope"], "no study 'nope' in"),
    (["1", "--study", "s"], "give a RUN or --study, not both"),
    (["1", "--format", "csv"], "unknown format 'csv'; expected jsonl or json"),
])
def test_cli_export_refuses_with_a_clear_message(project_db: Path, tmp_path: Path, args: list[str],
                                                 message: str) -> None:
    res = sao("export", *args, "--db", str(project_db), "-o", str(tmp_path / "x.jsonl"))
    assert res.exit_code == 2
    assert message in res.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_export_on_a_database_without_pairs(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"

    async def make() -> None:
        async with await Store.open(db) as store:
            await store.start_run("s", {}, seed=1, config_path=None)

    anyio.run(make)
    res = sao("export", "--db", str(db), "-o", str(tmp_path / "x.jsonl"))
    assert res.exit_code == 2
    assert "has SAO pairs: enable society.learning.sao_enabled" in res.stderr


def test_cli_import_stores_pairs_under_the_study(project_db: Path, tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"})
                           for i in range(3)) + "\n")
    res = sao("import", str(f), "--study", "fresh", "--db", str(project_db))
    assert res.exit_code == 0, res.output
    assert f"imported 3 pair(s) from {f} into study 'fresh'" in res.stdout

    async def read() -> list[SAOPair]:
        async with await Store.open(project_db) as store:
            return await store.sao_pairs(study="fresh")

    got = anyio.run(read)
    assert [(p.prompt, p.chosen, p.rejected, p.source, p.run_id) for p in got] == [
        (f"q{i}", f"good {i}", f"bad {i}", "import", None) for i in range(3)]

    out = tmp_path / "again.jsonl"  # and they export like a run's
    assert sao("export", "--study", "fresh", "--db", str(project_db), "-o", str(out)).exit_code == 0
    assert out.read_text() == f.read_text()


def test_cli_import_of_a_bad_file_exits_2_with_the_line(project_db: Path, tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(GOOD + "\n" + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    res = sao("import", str(f), "--study", "s", "--db", str(project_db))
    assert res.exit_code == 2
    assert "bad.jsonl:2: field 'rejected' is missing; expected prompt/chosen/rejected" in res.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = sao("import", str(empty), "--study", "s", "--db", str(project_db))
    assert res.exit_code == 2 and "holds no records" in res.stderr


def test_cli_stats_of_a_run_shows_quality_and_ratings(project_db: Path) -> None:
    res = sao("stats", "1", "--db", str(project_db))
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "SAO pairs of run 1" in out
    for row in ("pairs", "kept", "consistent under swap", "diversity (kept prompts)", "unique prompts"):
        assert row in out
    assert "80.0%" in out  # A, B, tie, A of the five parseable pairs
    assert "Quality filters" in out and "too_short" in out and "duplicate_prompt" in out
    assert "Top 2 of 2 configurations by preference" in out
    lines = out.splitlines()
    cool = next(ln for ln in lines if "h-cool" in ln)
    assert "0.800" in cool and "temperature=0.2" in cool
    assert lines.index(cool) < lines.index(next(ln for ln in lines if "h-hot" in ln))

    data = json.loads(sao("stats", "1", "--db", str(project_db), "--json").stdout)
    assert (data["scope"], data["total"], data["kept"]) == ({"run": 1, "study": None}, 6, 2)
    assert data["consistency_rate"] == pytest.approx(0.8)
    assert [(r["config_hash"], r["wins"], r["config"]) for r in data["ratings"]] == [
        ("h-cool", 2, {"temperature": 0.2}), ("h-hot", 0, {"temperature": 1.0})]


def test_cli_stats_of_a_study_and_of_nothing(project_db: Path) -> None:
    res = sao("stats", "--study", "s", "--db", str(project_db), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["total"] == 8 and data["sources"] == {"import": 1, "loop": 7} and data["ratings"] == []
    res = sao("stats", "3", "--db", str(project_db))
    assert res.exit_code == 2 and "run 3 has no SAO pairs" in res.stderr
    res = sao("stats", "--db", str(project_db))
    assert res.exit_code == 0 and "run 4 (the newest run with SAO pairs)" in res.stdout


def test_imported_pairs_claim_no_consistency_they_were_never_judged(tmp_path: Path) -> None:
    """An imported file states preferences nobody judged here: no "100 % consistent"."""
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"})
                           for i in range(3)) + "\n")
    stats = dataset_stats(import_pairs(f))
    assert stats["consistency_rate"] is None and stats["judged"] == 0 and stats["kept"] == 3
    db = tmp_path / "conv.db"
    assert sao("import", str(f), "--study", "fresh", "--db", str(db)).exit_code == 0
    res = sao("stats", "--study", "fresh", "--db", str(db))
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.stdout.splitlines() if "consistent under swap" in ln)
    assert "%" not in row and "no pair judged here" in row


def test_sao_stats_of_a_run_whose_sao_step_never_ran_says_why_not_to_enable_it(tmp_path: Path) -> None:
    """SAO on, no pair made: the message says what the step said, not "enable SAO"."""
    db = tmp_path / "conv.db"
    on = {"society": {"enabled": True, "agents": {"evolution": 0.5, "sao": 0.5}}}

    async def fill() -> None:
        async with await Store.open(db) as store:
            noted = await store.start_run("s", on, seed=1, config_path=None)
            store.record_society(noted, 0, "sao", share=0.5, asked=1, proposed=0, status="ok", seconds=0.0,
                                 detail={"sao": {"note": "nothing to duel yet (fewer than two usable configurations)"}})
            await store.start_run("s", on, seed=1, config_path=None)
            await store.flush()

    anyio.run(fill)
    res = sao("stats", "1", "--db", str(db))
    assert res.exit_code == 2 and "enable" not in res.stderr
    assert "SAO was on but made no pair (generation 1: nothing to duel yet" in " ".join(res.stderr.split())
    res = sao("stats", "2", "--db", str(db))
    assert res.exit_code == 2 and "enable" not in res.stderr and "SAO was on but its step never ran" in res.stderr


def test_export_writes_the_prompt_the_models_saw_and_leaves_out_pairs_of_two_templates(tmp_path: Path) -> None:
    """A pair whose sides got the same rendered prompt exports that prompt; one whose sides got
    different prompts (two templates) has no one prompt, so it is left out, and ``--metadata``
    rows say what each side saw."""
    same = pair("capital of Peru?", "Lima", "Quito", "A", prompts=["Answer briefly: capital of Peru?"] * 2)
    two = pair("capital of Peru?", "Lima", "Quito", "A",
               prompts=["Answer briefly: capital of Peru?", "You are a poet. capital of Peru?"])
    out = tmp_path / "p.jsonl"
    assert export_pairs([same, two], out) == 1
    assert json.loads(out.read_text())["prompt"] == "Answer briefly: capital of Peru?"
    assert export_pairs([same, two], out, include_all=True, with_metadata=True) == 1
    rec = to_record(two, with_metadata=True)
    assert (rec["prompt_chosen"], rec["prompt_rejected"]) == tuple(two.prompts or [])
