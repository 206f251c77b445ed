"""SAO: self-alignment from fully self-synthetic preference data (arXiv 2510.06652).

One pair, step by step (each a traced op inside a traced run):

1. **persona**: drawn from >= 1,000 personas composed from shipped attribute
   lists (:mod:`convergence.society.sao.personas`); ``diversity_factor`` of the
   draws take the persona most unlike those used so far.
2. **prompt**: the LLM, role-playing the persona, writes a new task input in
   the shape of the study's test cases (a JSON object with the same keys,
   schema-constrained), imitating a few examples.
3. **responses**: A and B. Standalone, one configuration (the LLM) at two
   temperatures; in the optimization loop, two competing configurations of
   the user's target (:mod:`convergence.society.sao.agent`).
4. **judgments**: the LLM judges the pair twice, A shown first and then B
   shown first; only a verdict that holds in both orders counts
   (:func:`convergence.society.sao.verdict.combine`). Near-duplicate responses are
   not judged: they are a tie by construction; a response shorter than
   ``min_response_length`` loses to one that is not, without a judge call
   (a base model finds an empty answer very likely).
5. **filters**: unparseable, inconsistent or tied judgments, response length
   bounds, near-duplicate prompts (against every earlier prompt) and responses.

``generate_synthetic_dataset(n)`` runs up to ``iterative_rounds`` rounds of
``batch_size`` concurrent pairs until ``n`` pairs are kept; later rounds show
earlier kept prompts as examples. Export writes TRL's preference format.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio

from convergence.config.society import SAOConfig
from convergence.core.sao_pair import SAOPair, Verdict
from convergence.llm.agent_client import LLMClient, as_client
from convergence.llm.logprob import LogProb
from convergence.society.sao.personas import Persona, build_personas
from convergence.society.sao.similarity import is_near_duplicate, similarity
from convergence.society.sao.verdict import combine, judge_prompt, parse_continuation, swap
from convergence.tracing import traced

__all__ = ["Responder", "SAOConfig", "SAOMixin", "SAOPair", "input_keys", "input_text"]

Responder = Callable[[Any, int], Awaitable[str]]
"""``await responder(task_input, i)`` -> response ``i`` (0 = A, 1 = B) to a written task input; raises on failure."""

GENERIC_EXAMPLES: tuple[dict[str, str], ...] = (
    {"input": "What is the boiling point of water at sea level?"},
    {"input": "Give me one tip for remembering new vocabulary."},
)
"""Used when no examples of the task are given (standalone, no test cases)."""


def input_keys(examples: Sequence[Any]) -> list[str]:
    """The string fields of the task's inputs (``["input"]`` for plain-string inputs)."""
    for ex in examples:
        if isinstance(ex, dict):
            keys = [k for k, v in ex.items() if isinstance(v, str)]
            if keys:
                return keys
    return ["input"]


def input_text(task_input: Any) -> str:
    """A task input as the text a judge (and an exported dataset) shows."""
    if isinstance(task_input, dict):
        strings = {k: v for k, v in task_input.items() if isinstance(v, str)}
        if len(strings) == 1:
            return next(iter(strings.values()))
        return "\n".join(f"{k}: {v}" for k, v in strings.items())
    return str(task_input)


def _prompt_schema(keys: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": keys,
            "properties": {k: {"type": "string", "minLength": 8, "maxLength": 300} for k in keys}}


class SAOMixin:
    """Persona-driven synthetic preference pairs, self-judged under a swap.

    ``llm_provider``: a LiteLLM model string or an :class:`LLMClient` (default
    the embedded model). ``examples``: task inputs the written prompts imitate
    (their keys give the prompts' shape). ``responder``: who answers a prompt
    (default: the LLM itself at ``response_temperatures``)."""

    def __init__(self, config: SAOConfig | None = None, llm_provider: str | LLMClient | None = None, *,
                 examples: Sequence[Any] = (), seed: int = 0, responder: Responder | None = None) -> None:
        self.sao_config = config or SAOConfig()
        self.sao_llm = as_client(llm_provider)
        self.examples: list[Any] = list(examples)
        self.sao_seed = seed
        self._personas: list[Persona] | None = None
        self._rng = random.Random(seed)
        self._used: list[Persona] = []
        self.responder = responder or self._llm_response
        self.sao_dataset: list[SAOPair] = []
        """Every pair made or imported in this object, kept or not (``kept`` says)."""
        self.sao_rounds = 0
        self.known_prompts: list[str] = []
        """Earlier prompts (of this study): a new prompt too similar to one of them is filtered."""
        self.failures: list[str] = []
        """Pairs lost before they existed (the prompt could not be written), with the reason."""

    # ------------------------------------------------------------------ personas

    @property
    def personas(self) -> list[Persona]:
        if self._personas is None:
            self._personas = build_personas(self.sao_config.n_personas, self.sao_seed)
        return self._personas

    def next_persona(self) -> Persona:
        """With probability ``diversity_factor`` the unused persona least like those used
        (fewest shared attributes with the closest used one, ties by draw order), else a random one."""
        pool = [p for p in self.personas if p not in self._used] or self.personas
        if self._used and self._rng.random() < self.sao_config.diversity_factor:
            candidates = self._rng.sample(pool, min(len(pool), 64))  # bounded work per draw
            persona = min(candidates, key=lambda p: max(_shared(p, u) for u in self._used[-64:]))
        else:
            persona = self._rng.choice(pool)
        self._used.append(persona)
        return persona

    # ------------------------------------------------------------------ one pair

    @traced("convergence.sao.prompt", inputs=lambda self, persona, examples: {"persona": persona.text},
            output=lambda r: {"prompt": r})
    async def write_prompt(self, persona: Persona, examples: Sequence[Any]) -> Any:
        """A new task input, in the examples' shape, as the persona would write it."""
        keys = input_keys(examples)
        shown = list(examples)[:3] or list(GENERIC_EXAMPLES)
        lines = [json.dumps(_as_fields(ex, keys), ensure_ascii=False) for ex in shown]
        text = ("Each line is a task input written by a different person.\n"
                + "\n".join(lines)
                + f"\nThe next line was written by {persona.text[0].lower() + persona.text[1:]}\n")
        done = await self.sao_llm.complete(text, max_tokens=self.sao_config.prompt_tokens,
                                           temperature=self.sao_config.temperature,
                                           seed=self._rng.randrange(2**31), schema=_prompt_schema(keys))
        fields = _parse_fields(done.text, keys)
        if fields is None:
            raise ValueError(f"the written prompt is not a JSON object with {', '.join(keys)}: {done.text[:120]!r}")
        if keys == ["input"] and not any(isinstance(ex, dict) for ex in examples):
            return fields["input"]
        return fields

    async def _llm_response(self, task_input: Any, i: int) -> str:
        temperature = self.sao_config.response_temperatures[i]
        done = await self.sao_llm.complete(f"{input_text(task_input)}\n", max_tokens=self.sao_config.response_tokens,
                                           temperature=temperature, seed=self._rng.randrange(2**31))
        return done.text.strip()

    @traced("convergence.sao.responses", inputs=lambda self, task_input, responder=None: {"prompt": task_input},
            output=lambda r: {"a": str(r[0]), "b": str(r[1])})
    async def respond(self, task_input: Any, responder: Responder | None = None) -> tuple[str | Exception,
                                                                                           str | Exception]:
        """Both responses, concurrently; a failed one is returned as its exception."""
        out: list[str | Exception] = ["", ""]
        answer = responder or self.responder

        async def one(i: int) -> None:
            try:
                out[i] = await answer(task_input, i)
            except Exception as exc:  # noqa: BLE001 - a failed response fails the pair's filter, not the batch
                out[i] = exc

        async with anyio.create_task_group() as tg:
            for i in (0, 1):
                tg.start_soon(one, i)
        return out[0], out[1]

    @property
    def judge_method(self) -> str:
        """``text`` or ``likelihood`` (``auto`` resolved: likelihood where log-probs are exact)."""
        method = self.sao_config.judge
        if method == "auto":
            return "likelihood" if self.sao_llm.model.startswith("local/") else "text"
        return method

    @traced("convergence.sao.judge", inputs=lambda self, task, first, second: {"first": first, "second": second},
            output=lambda r: {"verdict": r[0], "text": r[1]})
    async def judge_once(self, task: str, first: str, second: str) -> tuple[Verdict | None, str]:
        """One judgment with ``first`` shown as Response A: (verdict in shown labels, what the judge said)."""
        if self.judge_method == "likelihood":
            return await self._likelihood_judgment(task, first, second)
        done = await self.sao_llm.complete(judge_prompt(task, first, second), max_tokens=self.sao_config.judge_tokens,
                                           temperature=0.0, seed=0)
        return parse_continuation(done.text), done.text

    async def _likelihood_judgment(self, task: str, first: str, second: str) -> tuple[Verdict | None, str]:
        """The response the LLM would rather continue "The better response is:" with, by total
        log-prob (nats); within ``tie_margin``: a tie. No log-probs: unparseable. Total, not per
        word: per word (and PMI) favour a rambling continuation, which is fluent text to a base
        model; on 13 obvious pairs total was consistent under swap 9 times and right all 9."""
        prompt = f"Question: {task.strip()}\nResponse A: {first.strip()}\nResponse B: {second.strip()}\n" \
                 "The better response is:"
        measured = []
        for response in (first, second):
            lp = await self.sao_llm.logprob(prompt, " " + response.strip())
            if lp.value is None:
                return None, f"no log-probs from {self.sao_llm.model}: {lp.detail or lp.method}"
            measured.append(lp)
        return likelihood_verdict(measured[0], measured[1], self.sao_config.tie_margin)

    async def judge(self, task: str, a: str, b: str) -> tuple[Any, Any, list[str]]:
        """Both orders: (verdict with A first, verdict with B first mapped back to A/B labels, raw texts)."""
        (v1, t1), (v2, t2) = await _both(self.judge_once(task, a, b), self.judge_once(task, b, a))
        return v1, (swap(v2) if v2 is not None else None), [t1, t2]

    def filters(self, pair: SAOPair, errors: bool) -> list[str]:
        """The quality filters this pair fails, in :data:`FILTERS` order."""
        cfg = self.sao_config
        failed = []
        if errors:
            failed.append("response_error")
        if pair.outcome in ("unparseable", "inconsistent", "tie"):
            failed.append(pair.outcome)
        if cfg.quality_filter and not errors:
            lengths = (len(pair.response_a.strip()), len(pair.response_b.strip()))
            if min(lengths) < cfg.min_response_length:
                failed.append("too_short")
            if max(lengths) > cfg.max_response_length:
                failed.append("too_long")
            if is_near_duplicate(pair.prompt, self.known_prompts, cfg.similarity_threshold):
                failed.append("duplicate_prompt")
            if similarity(pair.response_a, pair.response_b) >= cfg.similarity_threshold:
                failed.append("duplicate_responses")
        return failed

    @traced("convergence.sao.pair", inputs=lambda self, persona, examples, responder=None: {"persona": persona.text},
            output=lambda p: {"outcome": p.outcome, "failed_filters": p.failed_filters})
    async def make_pair(self, persona: Persona, examples: Sequence[Any], responder: Responder | None = None) -> SAOPair:
        """persona -> prompt -> two responses (``responder``, default :attr:`responder`) -> two judgments -> filters."""
        task_input = await self.write_prompt(persona, examples)
        return await self.answer_and_judge(persona.text, task_input, responder)

    async def answer_and_judge(self, persona: str, task_input: Any, responder: Responder | None = None,
                               grade: Callable[[str], Awaitable[float]] | None = None) -> SAOPair:
        """Two responses to ``task_input``, judged in both orders, filtered. ``grade``: the metrics' score
        of a response (a test case with a reference answer); then the pair records which response the
        metrics prefer (``reference``) and is kept only if the judge agrees."""
        task = input_text(task_input)
        ra, rb = await self.respond(task_input, responder)
        errors = isinstance(ra, Exception) or isinstance(rb, Exception)
        a = ra if isinstance(ra, str) else f"(failed: {type(ra).__name__})"
        b = rb if isinstance(rb, str) else f"(failed: {type(rb).__name__})"
        pair = SAOPair(persona=persona, prompt=task, prompt_input=task_input, response_a=a, response_b=b,
                       verdict_1=None, verdict_2=None, outcome="unparseable", model=self.sao_llm.model,
                       created_at=time.time())
        short = [len(r.strip()) < self.sao_config.min_response_length for r in (a, b)]
        if errors:
            pass
        elif similarity(a, b) >= self.sao_config.similarity_threshold or all(short):
            pair.verdict_1 = pair.verdict_2 = "tie"  # nothing to prefer: not worth two judge calls
        elif any(short):  # an empty (too short) response loses without a judge call
            pair.verdict_1 = pair.verdict_2 = "B" if short[0] else "A"
            pair.judgments = [f"rule: response {'A' if short[0] else 'B'} is shorter than "
                              f"{self.sao_config.min_response_length} character(s)"] * 2
        else:
            pair.verdict_1, pair.verdict_2, pair.judgments = await self.judge(task, a, b)
        pair.outcome = combine(pair.verdict_1, pair.verdict_2) if not errors else "unparseable"
        pair.failed_filters = self.filters(pair, errors)
        if grade is not None and not errors:
            score_a, score_b = await grade(a), await grade(b)
            pair.reference = "A" if score_a > score_b else "B" if score_b > score_a else "tie"
            if pair.outcome in ("A", "B") and pair.outcome != pair.reference:
                pair.failed_filters.append("disagrees_with_metric")
        self.known_prompts.append(task)
        return pair

    # ------------------------------------------------------------------ datasets

    async def run_rounds(self, want: int, make: Callable[[Persona, list[Any]], Awaitable[SAOPair]],
                         on_pair: Callable[[SAOPair], None] | None = None) -> list[SAOPair]:
        """Up to ``iterative_rounds`` rounds of at most ``batch_size`` concurrent pairs, until
        ``want`` are kept. A pair whose prompt writing fails is dropped and counted in ``failures``."""
        made: list[SAOPair] = []
        for _ in range(self.sao_config.iterative_rounds):
            need = want - sum(p.kept for p in made)
            if need <= 0:
                break
            recent = [p.prompt_input for p in made if p.kept][-1:]  # iterative: an accepted prompt leads
            batch: list[SAOPair | None] = [None] * min(need, self.sao_config.batch_size)
            jobs = [(self.next_persona(), recent + self._rng.sample(self.examples, min(len(self.examples),
                                                                                     3 - len(recent))))
                    for _ in batch]

            async def one(i: int, persona: Persona, examples: list[Any], batch: list[SAOPair | None] = batch) -> None:
                try:
                    batch[i] = await make(persona, examples)
                except Exception as exc:  # noqa: BLE001 - one bad prompt must not lose the round
                    self.failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")

            async with anyio.create_task_group() as tg:
                for i, (persona, examples) in enumerate(jobs):
                    tg.start_soon(one, i, persona, examples)
            for pair in batch:
                if pair is not None:
                    made.append(pair)
                    if on_pair is not None:
                        on_pair(pair)
            self.sao_rounds += 1
        self.sao_dataset.extend(made)
        return made

    async def generate_synthetic_dataset(self, n_samples: int = 10) -> list[SAOPair]:
        """Make pairs until ``n_samples`` are kept (or the rounds run out); returns the kept ones."""
        made = await self.run_rounds(n_samples, self.make_pair)
        return [p for p in made if p.kept]

    def export_dataset(self, path: str | Path, format: Literal["jsonl", "json"] = "jsonl", *,
                       conversational: bool = False) -> int:
        """Write the kept pairs in TRL's preference format; returns rows written."""
        from convergence.society.sao.dataset import export_pairs

        return export_pairs(self.sao_dataset, Path(path), format=format, conversational=conversational)

    def import_dataset(self, path: str | Path) -> int:
        """Add pairs from a TRL preference file (JSONL or JSON); returns how many."""
        from convergence.society.sao.dataset import import_pairs

        pairs = import_pairs(Path(path))
        self.sao_dataset.extend(pairs)
        self.known_prompts.extend(p.prompt for p in pairs)
        return len(pairs)

    def get_sao_stats(self) -> dict[str, Any]:
        """Counts, the consistency rate under swap, per-filter counts and the diversity of kept prompts."""
        from convergence.society.sao.dataset import dataset_stats

        stats = dataset_stats(self.sao_dataset)
        stats.update(rounds=self.sao_rounds, personas=len(self.personas), llm_calls=self.sao_llm.calls,
                     llm_seconds=round(self.sao_llm.seconds, 3), failures=len(self.failures))
        return stats


def likelihood_verdict(a: LogProb, b: LogProb, tie_margin: float) -> tuple[Verdict | None, str]:
    """The verdict two log-probs support. A ``top_logprobs_bound`` is an upper bound, not a
    measurement: it decides only against a measured value above it by more than ``tie_margin`` (the
    bounded side is then surely less likely); two bounds, or a measured value under a bound, decide
    nothing (None). Values of different measuring methods are not compared."""
    said = f"log-prob: A {_shown(a)}, B {_shown(b)}"
    assert a.value is not None and b.value is not None
    bound_a, bound_b = a.method == "top_logprobs_bound", b.method == "top_logprobs_bound"
    if bound_a and bound_b:
        return None, f"{said}: both are upper bounds (neither response in the top log-probs), no verdict"
    if bound_a or bound_b:
        diff = (b.value - a.value) if bound_a else (a.value - b.value)  # measured minus the other's bound
        if diff <= tie_margin:
            return None, f"{said}: an upper bound against a measured value it may exceed, no verdict"
        verdict: Verdict = "B" if bound_a else "A"
        return verdict, f"{said} -> [[{verdict}]]"
    if a.method != b.method:
        return None, f"{said}: measured by different methods ({a.method}, {b.method}), no verdict"
    diff = a.value - b.value
    verdict = "tie" if abs(diff) < tie_margin else ("A" if diff > 0 else "B")
    return verdict, f"{said} -> [[{verdict}]]"


def _shown(lp: LogProb) -> str:
    return f"{lp.value:.3f}" if lp.method != "top_logprobs_bound" else f"<= {lp.value:.3f} (bound)"


def _shared(a: Persona, b: Persona) -> int:
    return sum(1 for k, v in a.attributes.items() if b.attributes.get(k) == v)


def _as_fields(example: Any, keys: list[str]) -> dict[str, str]:
    if isinstance(example, dict):
        return {k: str(example.get(k, "")) for k in keys}
    return {keys[0]: str(example)}


def _parse_fields(text: str, keys: list[str]) -> dict[str, str] | None:
    """The written input's fields: every key a non-empty string, from the JSON object; or, from a
    provider that ignored the schema, each key's first ``"key": "value"`` (the value running to its
    closing quote or the end of its line: at least 8 characters)."""
    start, end = text.find("{"), text.rfind("}")
    try:
        obj = json.loads(text[start:end + 1], strict=False) if start >= 0 and end > start else None
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        obj = {}
        for k in keys:
            found = re.search(rf'"{re.escape(k)}"\s*:\s*"((?:[^"\\\n]|\\.)*)', text)
            if found:
                try:
                    obj[k] = json.loads(f'"{found.group(1)}"', strict=False)
                except json.JSONDecodeError:
                    obj[k] = found.group(1)
                if len(obj[k].strip()) < 8:
                    obj.pop(k)
    if any(not isinstance(obj.get(k), str) or not obj[k].strip() for k in keys):
        return None
    return {k: " ".join(obj[k].split()) for k in keys}


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    out: list[Any] = [None, None]

    async def run(i: int, aw: Awaitable[Any]) -> None:
        out[i] = await aw

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return out[0], out[1]
