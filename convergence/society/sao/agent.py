"""The SAO agent in the loop: self-judged duels between configurations.

Every ``sao.every``-th generation (after evaluation) it writes ``batch_size``
new task inputs from personas, has the run's incumbent (best so far) and a
challenger answer each through the user's target (real, budgeted calls), and
has the society LLM judge every pair in both orders. Challengers are the
configurations whose measured score is closest to the incumbent's, fewest
duels first: the pairs whose verdict is least predictable from the scores.

Each step also runs ``sao.calibration`` duels on test cases with a reference
answer: the run's metrics score both responses, a pair is kept only if the
judge's verdict is the metrics' preference, and the share that agrees is the
judge's measured agreement (the written prompts have no reference to check).
Every pair records what each side's target received when the target can say
(a LiteLLM target's rendered prompt).

Consistent verdicts (A, B or tie in both orders) are duels; a Bradley-Terry
fit over the run's duels gives each configuration a preference rating
(:mod:`convergence.society.sao.ratings`), stored per run and usable in the
objective as ``function: sao_preference``. Inconsistent verdicts are not
duels (position bias, not preference). Every pair goes to the store with the
filters it failed; ``convergence sao export`` writes the kept ones.

It proposes one-parameter neighbours of the configurations the judge
prefers (most preferred first), through the same share as every agent.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from convergence.config.society import SAOConfig
from convergence.core.sao_pair import SAOPair
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TestCase, TrialRecord
from convergence.llm.agent_client import LLMClient
from convergence.society.base import ProposalContext, TaskAccess
from convergence.society.memory import AgentMemory
from convergence.society.sao.mixin import SAOMixin
from convergence.society.sao.personas import Persona
from convergence.society.sao.ratings import Duel, Rating, ratings
from convergence.society.sao.verdict import consistency_rate, metric_agreement
from convergence.society.strategies import nearest_unseen
from convergence.tracing import traced

PREFERENCE_FUNCTION = "sao_preference"
"""The metric function whose value is a configuration's preference rating."""
NEUTRAL = 0.5
"""The preference of a configuration the judge has not compared yet (an average one)."""


class SAOAgent(SAOMixin):
    name = "sao"
    role = "alignment: self-judged duels between configurations; proposes around the judge's favourites"
    uses_llm = True
    learns_unasked = True
    """It duels after evaluation whether or not it had slots this generation (its report shows each step)."""

    def __init__(self, cfg: SAOConfig, llm: LLMClient, space: SearchSpace, seed: int = 0):
        super().__init__(cfg, llm, seed=seed)
        self.memory_key = f"sao:{llm.model}"
        self.space = space
        self.task: TaskAccess | None = None
        self.memory: AgentMemory | None = None
        self.duels: list[Duel] = []
        self.ratings: dict[str, Rating] = {}
        self.trials: dict[str, TrialRecord] = {}
        self.step: dict[str, Any] = {}
        """What the last step did (console, report, store)."""
        self._generations_done: set[int] = set()
        self._loaded_run: int | None = None
        self._calibrated = 0
        """Duels on test cases so far: the next one takes the next test case."""

    # ------------------------------------------------------------------ wiring

    def bind(self, task: TaskAccess) -> None:
        """The loop hands over the test cases (examples of the task's inputs) and a budgeted target call."""
        self.task = task
        self.examples = [c.input for c in task.cases]

    async def restore(self, memory: AgentMemory) -> None:
        """The study's earlier prompts (a new one too close to any of them is a duplicate)."""
        self.memory = memory
        earlier = await memory.store.sao_pairs(study_id=memory.study_id)
        self.known_prompts.extend(p.prompt for p in earlier)

    @property
    def llm_cost_usd(self) -> float:
        return self.sao_llm.cost_usd

    # ------------------------------------------------------------------ proposing

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        for t in trials:
            if t.usable:
                self.trials[t.config_hash] = t

    def favourites(self) -> list[Config]:
        """Configurations the judge prefers: more wins than losses, most preferred first."""
        rated = sorted((r for r in self.ratings.values() if r.wins > r.losses and r.config_hash in self.trials),
                       key=lambda r: (-r.preference, r.config_hash))
        return [self.trials[r.config_hash].config for r in rated]

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        """Round robin over the top three favourites: each turn, the favourite's nearest unseen neighbour."""
        winners = self.favourites()[:3]
        out: list[Config] = []
        seen = set(ctx.seen)
        turn = 0
        while len(out) < n and winners:
            base = winners[turn % len(winners)]
            candidate = nearest_unseen(self.space, base, {}, seen, ctx.rng)
            if candidate is None:  # every neighbour of this favourite is seen
                winners.remove(base)
                continue
            seen.add(config_hash(self.space.canonical(candidate)))
            out.append(candidate)
            turn += 1
        return out

    # ------------------------------------------------------------------ duelling

    def measures(self) -> frozenset[str]:
        """SAO measures configurations by the judge's verdicts: the ``sao_preference`` metric function."""
        return frozenset({PREFERENCE_FUNCTION})

    def trial_value(self, function: str, config_hash: str) -> float:
        return self.preference(config_hash)

    def preference(self, config_hash: str) -> float:
        """The configuration's preference rating in [0, 1] (win probability against an average one)."""
        r = self.ratings.get(config_hash)
        return r.preference if r is not None else NEUTRAL

    def _pairings(self) -> list[tuple[TrialRecord, TrialRecord]]:
        """(incumbent, challenger) for each pair of the step, most informative challengers first."""
        usable = sorted(self.trials.values(), key=lambda t: (-t.score, t.config_hash))
        if len(usable) < 2:
            return []
        best = usable[0]
        duels = Counter(h for d in self.duels for h in (d.a, d.b))
        challengers = sorted(usable[1:], key=lambda t: (round(best.score - t.score, 3), duels[t.config_hash],
                                                        t.config_hash))[:3]
        return [(best, challengers[i % len(challengers)]) for i in range(self.sao_config.batch_size)]

    async def learn(self, trials: Sequence[TrialRecord], generation: int, run_id: int | None = None) -> None:
        self.step = {}
        if run_id is not None and self._loaded_run != run_id and self.memory is not None:
            await self._resume(run_id)
        if generation in self._generations_done:
            self.step = {"note": "pairs of this generation are stored (resumed run): not made again"}
            return
        if self.task is None or generation % self.sao_config.every:
            return
        pairings = self._pairings()
        if not pairings:
            self.step = {"note": "nothing to duel yet (fewer than two usable configurations)"}
            return
        made = await self.duel_round(pairings, generation, run_id)
        self._generations_done.add(generation)
        self._refit(run_id)
        self.step = self._describe(made)

    @traced("convergence.sao.step", inputs=lambda self, pairings, generation, run_id: {
        "generation": generation, "pairs": [[a.config, b.config] for a, b in pairings]},
        output=lambda made: {"pairs": len(made), "outcomes": dict(Counter(p.outcome for p in made))})
    async def duel_round(self, pairings: list[tuple[TrialRecord, TrialRecord]], generation: int,
                         run_id: int | None) -> list[SAOPair]:
        """Pairs for this generation's duels, each stored as it is made."""
        turns = itertools.cycle(pairings)  # later rounds go on where the last one stopped

        async def make(persona: Persona, examples: list[Any]) -> SAOPair:
            a, b = next(turns)
            task_input = await self.write_prompt(persona, examples)
            return await self._duel(a, b, task_input, generation, run_id, source="loop", persona=persona.text)

        def store(pair: SAOPair) -> None:
            if self.memory is not None:
                self.memory.store.record_sao_pair(self.memory.study_id, pair)

        made = await self.run_rounds(self.sao_config.batch_size, make, on_pair=store)
        return made + await self._calibrate(pairings, generation, run_id, store)

    async def _calibrate(self, pairings: list[tuple[TrialRecord, TrialRecord]], generation: int,
                         run_id: int | None, store: Callable[[SAOPair], None]) -> list[SAOPair]:
        """``calibration`` duels on test cases with a reference answer: the metrics say which response
        is better, so the judge's verdict is checked (a kept pair agrees) and its agreement measured."""
        assert self.task is not None
        task, grade = self.task, self.task.grade
        cases = [c for c in task.cases if c.expected is not None]
        if grade is None or not cases or not self.sao_config.calibration:
            return []
        jobs = []
        for i in range(self.sao_config.calibration):
            jobs.append((pairings[i % len(pairings)], cases[self._calibrated % len(cases)]))
            self._calibrated += 1
        made: list[SAOPair | None] = [None] * len(jobs)

        async def one(i: int, a: TrialRecord, b: TrialRecord, case: TestCase) -> None:
            async def graded(output: str) -> float:
                return await grade(case, output)

            try:
                made[i] = await self._duel(a, b, case.input, generation, run_id, source="test_case", grade=graded)
            except Exception as exc:  # noqa: BLE001 - one failed duel must not lose the step
                self.failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")

        async with anyio.create_task_group() as tg:
            for i, ((a, b), case) in enumerate(jobs):
                tg.start_soon(one, i, a, b, case)
        out = [p for p in made if p is not None]
        for pair in out:
            store(pair)
        self.sao_dataset.extend(out)
        return out

    async def _duel(self, a: TrialRecord, b: TrialRecord, task_input: Any, generation: int, run_id: int | None,
                    *, source: str, persona: str = "",
                    grade: Callable[[str], Awaitable[float]] | None = None) -> SAOPair:
        """Incumbent ``a`` and challenger ``b`` answer ``task_input`` through the target; the judge decides."""
        assert self.task is not None
        task = self.task
        configs = (a.config, b.config)

        async def responder(task_input: Any, i: int) -> str:
            return await task.call(configs[i], task_input)

        pair = await self.answer_and_judge(persona, task_input, responder, grade)
        pair.config_a, pair.config_b, pair.hash_a, pair.hash_b = a.config, b.config, a.config_hash, b.config_hash
        pair.source, pair.run_id, pair.generation = source, run_id, generation
        if task.render is not None:
            seen = [task.render(c, task_input) for c in configs]
            pair.prompts = [seen[0], seen[1]] if seen[0] is not None and seen[1] is not None else None
        if pair.outcome in ("A", "B", "tie"):
            self.duels.append(Duel(a.config_hash, b.config_hash, pair.outcome))
        return pair

    def _refit(self, run_id: int | None) -> None:
        self.ratings = ratings(self.duels, self.sao_config.rating_prior)
        if self.memory is not None and run_id is not None:
            self.memory.store.save_sao_ratings(run_id, list(self.ratings.values()))

    async def _resume(self, run_id: int) -> None:
        """A resumed run: its stored pairs are its duels so far, and their generations are done."""
        self._loaded_run = run_id
        assert self.memory is not None
        for pair in await self.memory.store.sao_pairs(run_id=run_id):
            if pair.generation is not None:
                self._generations_done.add(pair.generation)
            if pair.hash_a and pair.hash_b and pair.outcome in ("A", "B", "tie"):
                self.duels.append(Duel(pair.hash_a, pair.hash_b, pair.outcome))
        if self.duels:
            self.ratings = ratings(self.duels, self.sao_config.rating_prior)

    def _describe(self, made: list[SAOPair]) -> dict[str, Any]:
        outcomes = [p.outcome for p in made]
        filters = Counter(f for p in made for f in p.failed_filters)
        top = sorted(self.ratings.values(), key=lambda r: -r.preference)[:3]
        return {
            "pairs": len(made), "kept": sum(p.kept for p in made), "failures": len(self.failures),
            "consistency": consistency_rate(outcomes), "outcomes": dict(Counter(outcomes)),
            "metric_agreement": _agreement(made),
            "filtered": dict(filters), "duels": len(self.duels),
            "preferred": [{"config": self.trials[r.config_hash].config if r.config_hash in self.trials else None,
                           "hash": r.config_hash, "preference": round(r.preference, 3), "wins": r.wins,
                           "losses": r.losses, "ties": r.ties} for r in top],
        }

    def summary(self) -> dict[str, Any]:
        return {"sao": self.step} if self.step else {}


def _agreement(pairs: Sequence[SAOPair]) -> dict[str, Any] | None:
    """How often the judge agreed with the metrics on this step's test cases; None without such a duel."""
    agreed, measured = metric_agreement([(p.outcome, p.reference) for p in pairs])
    return {"agreed": agreed, "measured": measured, "rate": agreed / measured} if measured else None
