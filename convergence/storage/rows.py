"""The rows the store reads and writes, and how values are encoded into them.

Row types (runs, generations, experiences, the society log), the SQL of the buffered writes,
and the encoders of SAO pairs, ratings and case results: what both the writing and the
reading side of :class:`~convergence.storage.store.Store` share.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from convergence.core.sao_pair import SAOPair


@dataclass(slots=True)
class RunRow:
    id: int
    study: str
    status: str
    stop_reason: str | None
    seed: int | None
    config: dict[str, Any]
    config_path: str | None
    started_at: float
    finished_at: float | None
    total_calls: int
    total_cost_usd: float
    elapsed_seconds: float
    owner: str | None = None
    heartbeat_at: float | None = None
    fingerprint: str | None = None


@dataclass(slots=True, frozen=True)
class RunTraceRecord:
    """Where a traced run lives in Weave (``run_traces``, schema version 2)."""

    run_id: int
    project: str
    url: str
    call_id: str
    created_at: float


@dataclass(slots=True)
class GenerationRow:
    number: int
    proposals: list[dict[str, Any]]
    best_score: float | None
    mean_score: float | None
    n_new: int | None
    started_at: float
    finished_at: float | None
    context: dict[str, Any] | None = None
    """The learner's decision it was proposed under: ``{decided_at, controls}`` (schema 7; None before)."""


@dataclass(slots=True, frozen=True)
class ExperienceRow:
    """One entry of an agent's replay buffer (``agent_experience``, schema version 4)."""

    id: int
    run_id: int
    generation: int
    reward: float | None
    data: dict[str, Any]
    created_at: float


@dataclass(slots=True, frozen=True)
class SocietyRow:
    """What one agent did in one generation (``society_log``, schema version 4)."""

    generation: int
    agent: str
    share: float
    asked: int
    proposed: int
    status: str
    seconds: float
    detail: dict[str, Any] | None


ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
"""Built once: ``json.dumps`` with arguments builds a new encoder per call,
and ``dump`` runs for every case result."""


def dump(v: Any) -> str:
    return ENCODER.encode(v)


def output_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return dump(v)


SQL_GEN_START = (
    "INSERT OR REPLACE INTO generations(run_id, number, proposals_json, started_at, context_json) "
    "VALUES (?,?,?,?,?)"
)
SQL_GEN_END = (
    "UPDATE generations SET best_score=?, mean_score=?, n_new=?, finished_at=? WHERE run_id=? AND number=?"
)
SQL_CASE = (
    "INSERT OR REPLACE INTO case_results(run_id, config_hash, case_id, output, error, latency_ms, "
    "cost_usd, prompt_tokens, completion_tokens, attempts, metrics_json, created_at, wall_ms, repeat) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
SQL_SELECTION = "UPDATE runs SET selection_json = ? WHERE id = ?"
SQL_LEARNER = (
    "INSERT OR REPLACE INTO learner_log(run_id, generation, learner, shares_json, result_json, detail_json, "
    "created_at) VALUES (?,?,?,?,?,?,?)"
)
SQL_TRIAL = (
    "INSERT INTO trials(run_id, config_hash, generation, proposer, config_json, status, score, "
    "metrics_json, normalized_json, cost_usd, latency_ms, n_cases, n_errors, thresholds_passed, "
    "finished_at, repeats, estimate) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(run_id, config_hash) DO UPDATE SET status=excluded.status, score=excluded.score, "
    "metrics_json=excluded.metrics_json, normalized_json=excluded.normalized_json, "
    "cost_usd=excluded.cost_usd, latency_ms=excluded.latency_ms, n_cases=excluded.n_cases, "
    "n_errors=excluded.n_errors, thresholds_passed=excluded.thresholds_passed, "
    "finished_at=excluded.finished_at, repeats=excluded.repeats, estimate=excluded.estimate"
)


SQL_EXPERIENCE = (
    "INSERT INTO agent_experience(study_id, agent, run_id, generation, reward, data_json, created_at) "
    "VALUES (?,?,?,?,?,?,?)"
)
SQL_PRUNE_EXPERIENCE = (
    "DELETE FROM agent_experience WHERE study_id=? AND agent=? AND id <= ("
    "SELECT id FROM agent_experience WHERE study_id=? AND agent=? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
SQL_AGENT_MEMORY = (
    "INSERT INTO agent_memory(study_id, agent, state_json, updated_at) VALUES (?,?,?,?) "
    "ON CONFLICT(study_id, agent) DO UPDATE SET state_json=excluded.state_json, updated_at=excluded.updated_at"
)
SQL_SOCIETY = (
    "INSERT INTO society_log(run_id, generation, agent, share, asked, proposed, status, seconds, detail_json) "
    "VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(run_id, generation, agent) DO UPDATE SET share=excluded.share, asked=excluded.asked, "
    "proposed=excluded.proposed, status=excluded.status, seconds=excluded.seconds, "
    "detail_json=excluded.detail_json"
)
SQL_SAO_PAIR = (
    "INSERT INTO sao_pairs(study_id, run_id, generation, source, model, persona, prompt, prompt_input_json, "
    "response_a, response_b, config_a_json, config_b_json, hash_a, hash_b, verdict_1, verdict_2, outcome, "
    "failed_filters_json, judgments_json, created_at, reference, prompts_json) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
SAO_PAIR_COLS = (
    "sao_pairs.id, run_id, generation, source, model, persona, prompt, prompt_input_json, response_a, "
    "response_b, config_a_json, config_b_json, hash_a, hash_b, verdict_1, verdict_2, outcome, "
    "failed_filters_json, judgments_json, sao_pairs.created_at, reference, prompts_json"
)
SQL_SAO_RATINGS_CLEAR = "DELETE FROM sao_ratings WHERE run_id=?"
SQL_SAO_RATING = (
    "INSERT OR REPLACE INTO sao_ratings(run_id, config_hash, strength, preference, duels, wins, losses, ties) "
    "VALUES (?,?,?,?,?,?,?,?)"
)

RatingRow = tuple[str, float, float, int, int, int, int]
"""(config_hash, strength, preference, duels, wins, losses, ties): one configuration's SAO rating."""


def sao_pair_row(study_id: int, pair: SAOPair) -> tuple[Any, ...]:
    """The ``sao_pairs`` row of ``pair``, JSON encoded now (callers may keep mutating the pair)."""
    return (
        study_id, pair.run_id, pair.generation, pair.source, pair.model, pair.persona, pair.prompt,
        None if pair.prompt_input is None else dump(pair.prompt_input), pair.response_a, pair.response_b,
        None if pair.config_a is None else dump(pair.config_a),
        None if pair.config_b is None else dump(pair.config_b), pair.hash_a, pair.hash_b, pair.verdict_1,
        pair.verdict_2, pair.outcome, dump(list(pair.failed_filters)), dump(list(pair.judgments)),
        pair.created_at if pair.created_at is not None else time.time(), pair.reference,
        None if pair.prompts is None else dump(list(pair.prompts)),
    )


def sao_pair(r: Any) -> SAOPair:
    return SAOPair(
        id=r[0], run_id=r[1], generation=r[2], source=r[3], model=r[4] or "", persona=r[5] or "", prompt=r[6],
        prompt_input=None if r[7] is None else json.loads(r[7]), response_a=r[8], response_b=r[9],
        config_a=None if r[10] is None else json.loads(r[10]), config_b=None if r[11] is None else json.loads(r[11]),
        hash_a=r[12], hash_b=r[13], verdict_1=r[14], verdict_2=r[15], outcome=r[16],
        failed_filters=json.loads(r[17]), judgments=json.loads(r[18] or "[]"), created_at=r[19], reference=r[20],
        prompts=None if r[21] is None else json.loads(r[21]),
    )


def rating_row(r: Any) -> RatingRow:
    """A rating as a tuple, from a tuple or an object with the rating's attributes (``society.ratings.Rating``)."""
    if isinstance(r, tuple):
        h, strength, preference, duels, wins, losses, ties = r
    else:
        h, strength, preference = r.config_hash, r.strength, r.preference
        duels, wins, losses, ties = r.duels, r.wins, r.losses, r.ties
    return (str(h), float(strength), float(preference), int(duels), int(wins), int(losses), int(ties))


def case_rows(rows: list[tuple[Any, ...]]) -> Any:
    """Encode buffered case rows lazily (consumed by sqlite in the writer thread)."""
    for r in rows:
        yield r[:3] + (output_text(r[3]),) + r[4:10] + (dump(r[10]),) + r[11:]


def real(value: float | None) -> float | None:
    """``value`` when it is a finite number, else None (SQL NULL). SQLite turns a NaN into NULL (which
    fails a NOT NULL column and so the whole commit) and keeps an infinity, which then poisons every
    SUM and AVG over the column; neither is a cost or a latency."""
    return value if value is not None and math.isfinite(value) else None
