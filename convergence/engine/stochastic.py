"""Is the target stochastic? What ``selection.stochastic`` decides, and how it was decided.

A stochastic target (the same configuration on the same case can score differently) gets fresh
draws of every case at confirmation, and keeps ``confirm_share`` of ``max_calls`` for them; a
deterministic one only gets the cases a top configuration skipped. ``true`` / ``false`` in the
config are taken as given. ``auto`` (the default) decides

1. from the config when it can: a LiteLLM target whose temperature can be > 0 (a search-space
   parameter that reaches above 0, a fixed ``params.temperature`` > 0, or none set: the provider's
   default, 1 for OpenAI-compatible APIs and 0.8 for the embedded model) samples, unless a fixed
   ``seed`` is sent (then it is probed); an ``llm_judge`` metric with temperature > 0 scores by
   sampling;
2. else by probing, early and cheaply: as configurations finish, :data:`PER_CONFIG` of each one's
   cases are asked again as draw 1 (stored with ``repeat = 1`` like confirmation's draws: paid
   once, counted in the budget, reused by confirmation, found again by a resumed run). One probe
   whose per-case quality metrics or output differ from the first draw -> stochastic;
   :data:`PROBES` identical ones -> deterministic. A call that failed (either draw) is no evidence.

How many probes: a case whose outcome is a Bernoulli draw with success probability p gives two
different draws with probability ``2 p (1 - p)``, at least 0.32 for p in [0.2, 0.8]. ``k``
independent probes all agree with probability at most ``(1 - 0.32)^k = 0.68^k``; k = 10 gives
0.021, so such a target is found stochastic with probability >= 0.979 (>= 0.999 at p = 0.5:
``0.5^10``), usually after one or two probes, while a deterministic target pays 10 calls (a probe
call that fails is paid but is no evidence).
The probes are spread over configurations (at most 2 each, so at least 5 configurations) because p
depends on the configuration: one whose p is near 0 or 1 (a bad or a great configuration) looks
deterministic on every case. With p uniform over configurations a pair of draws agrees with
probability ``q = p^2 + (1 - p)^2``, ``E[q] = 2/3``: 10 probes on 5 configurations miss with
probability ``E[q^2]^5 = (7/15)^5 = 0.022``, all 10 on one configuration with ``E[q^10] = 0.10``.

On a small budget the probes would be a large share of it (10 of 60 calls is 17 %, which a whole-evaluation
problem with one test case feels as 10 fewer configurations): with ``max_calls`` set, at most
:data:`BUDGET_SHARE` of it is spent on probes, never fewer than :data:`MIN_PROBES` (``0.68^3 = 0.31``: a
small budget buys a weaker answer, said in the decision's text).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from convergence.config.models import (
    CategoricalParam,
    ContinuousParam,
    ConvergenceConfig,
    DiscreteParam,
    LiteLLMTargetConfig,
)
from convergence.core.types import CaseResult
from convergence.storage.rows import output_text

if TYPE_CHECKING:
    from convergence.evaluation.scorer import Evaluator

PROBES = 10
"""Identical repeat draws that make a target deterministic (``0.68^10 = 0.021``: see the module docstring)."""
BUDGET_SHARE = 0.02
"""The share of ``max_calls`` probes may take (10 probes from 500 calls on)."""
MIN_PROBES = 3
"""Probes on any budget (3 identical draws: a Bernoulli target with p in [0.2, 0.8] is missed with
probability at most 0.31)."""
PER_CONFIG = 2
"""Probes per configuration at most: the probes see at least ``PROBES / PER_CONFIG`` configurations."""


@dataclass(slots=True)
class Decision:
    """Whether the run treats the target as stochastic, and how that was decided."""

    stochastic: bool | None
    """None while ``auto`` is still probing."""
    how: str
    probes: int = 0
    """Repeat draws compared with the first draw (stored pairs included)."""
    limit: int = PROBES
    """Identical probes that make the target deterministic (:func:`probe_limit`)."""

    @property
    def pending(self) -> bool:
        return self.stochastic is None

    def summary(self) -> dict[str, Any]:
        return {"stochastic": bool(self.stochastic), "stochastic_how": self.how, "stochastic_probes": self.probes}

    def line(self) -> str:
        """The console's line."""
        return f"target {'stochastic' if self.stochastic else 'deterministic'}: {self.how}"


def from_config(cfg: ConvergenceConfig) -> Decision:
    """The decision the config makes on its own (``pending`` when ``auto`` has to probe)."""
    sel = cfg.optimization.selection
    if isinstance(sel.stochastic, bool):
        return Decision(sel.stochastic, f"selection.stochastic: {str(sel.stochastic).lower()} in the config")
    if not sel.confirm_top:
        return Decision(False, "not probed: nothing is confirmed (selection.confirm_top: 0)")
    why = sampling(cfg)
    if why is not None:
        return Decision(True, why)
    limit = probe_limit(cfg.optimization.budget.max_calls)
    return Decision(None, f"probing: {limit} finished case(s) asked again", limit=limit)


def probe_limit(max_calls: int | None) -> int:
    """:data:`PROBES`, or fewer on a small budget: ``BUDGET_SHARE`` of ``max_calls``, at least ``MIN_PROBES``."""
    if max_calls is None:
        return PROBES
    return max(MIN_PROBES, min(PROBES, math.floor(BUDGET_SHARE * max_calls)))


def sampling(cfg: ConvergenceConfig) -> str | None:
    """Why the config alone makes the target stochastic (None: it does not say)."""
    t = cfg.resolved_target
    if isinstance(t, LiteLLMTargetConfig):
        from convergence.targets.litellm_target import COMPLETION_KWARGS

        sent = set(t.call_params) if t.call_params is not None else COMPLETION_KWARGS
        space = cfg.search_space.parameters
        seeded = "seed" in t.params or ("seed" in space and "seed" in sent)
        if not seeded:
            if "temperature" in space and "temperature" in sent:
                top = max(_values(space["temperature"]), default=0.0)
                if top > 0:
                    return f"LiteLLM temperature is searched up to {top:g} (> 0: sampled answers)"
            elif "temperature" in t.params:
                temp = t.params["temperature"]
                if isinstance(temp, (int, float)) and temp > 0:
                    return f"LiteLLM temperature {temp:g} (> 0: sampled answers)"
            else:
                return "LiteLLM temperature not set: the provider's default (> 0) samples answers"
    for name, m in cfg.evaluation.metrics.items():
        if m.function == "llm_judge" and m.judge is not None and m.judge.temperature > 0:
            return f"metric {name}: llm_judge at temperature {m.judge.temperature:g} (sampled scores)"
    return None


def _values(p: CategoricalParam | ContinuousParam | DiscreteParam) -> list[float]:
    """The numbers a parameter can take (its bounds for a range)."""
    if isinstance(p, ContinuousParam):
        return [p.min, p.max]
    if isinstance(p, DiscreteParam) and p.values is None:
        return [float(p.min or 0), float(p.max or 0)]
    values: Iterable[Any] = p.values.values() if isinstance(p.values, dict) else (p.values or [])
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


class Probe:
    """Compares repeat draws with first draws and turns them into a :class:`Decision`."""

    def __init__(self, decision: Decision, evaluator: Evaluator) -> None:
        self.decision = decision
        self.evaluator = evaluator
        self.asked: set[tuple[str, str]] = set()
        """(configuration hash, case id) already asked again."""
        self.in_flight = 0
        """Probe calls sent and not compared yet (no more than the decision's ``limit`` are ever asked for)."""

    def quality(self, r: CaseResult) -> dict[str, float]:
        """What must repeat for the target to be deterministic: every metric but latency and cost."""
        return {k: v for k, v in r.metrics.items() if k not in self.evaluator.operational}

    def compare(self, config_hash: str, first: CaseResult, again: CaseResult) -> None:
        """One repeat draw of a case: evidence unless either call failed; decides once it can."""
        self.asked.add((config_hash, first.case_id))
        d = self.decision
        if not d.pending or first.call.error or again.call.error:
            return
        d.probes += 1
        # outputs as stored (a resumed run compares a stored first draw with a new one)
        if output_text(first.call.output) != output_text(again.call.output) or self.quality(first) != self.quality(
                again):
            d.stochastic = True
            d.how = f"probed: a finished case asked again answered differently (probe {d.probes} of at most {d.limit})"
        elif d.probes >= d.limit:
            d.stochastic = False
            d.how = f"probed: {d.probes} finished case(s) asked again, every answer identical"

    def absorb(self, first: Mapping[str, Mapping[str, CaseResult]], repeats: Mapping[str, Iterable[CaseResult]]
               ) -> None:
        """Stored draws (a resumed run, or confirmation's draws): every stored repeat 1 is a probe already paid."""
        for h, extra in repeats.items():
            for r in sorted(extra, key=lambda r: r.case_id):
                base = first.get(h, {}).get(r.case_id)
                if r.repeat == 1 and base is not None:
                    self.compare(h, base, r)

    def take(self, config_hash: str, results: Iterable[CaseResult]) -> list[CaseResult]:
        """The first draws of a finished configuration to ask again now (successful, not asked yet; at most
        ``PER_CONFIG`` per configuration and the decision's ``limit`` in all, those in flight counted); they
        are in flight until :meth:`landed`."""
        if not self.decision.pending:
            return []
        mine = sum(1 for h, _ in self.asked if h == config_hash)
        left = min(PER_CONFIG - mine, self.decision.limit - self.decision.probes - self.in_flight)
        ok = [r for r in results if not r.call.error and (config_hash, r.case_id) not in self.asked]
        # each configuration probes the next cases in the run's order, so the probes spread over cases too:
        # a case every configuration gets right (or wrong) would make a stochastic target look deterministic
        k = (len({h for h, _ in self.asked}) * PER_CONFIG) % max(1, len(ok))
        todo = (ok[k:] + ok[:k])[:max(left, 0)]
        self.asked.update((config_hash, r.case_id) for r in todo)
        self.in_flight += len(todo)
        return todo

    def landed(self, config_hash: str, sent: int, pairs: Iterable[tuple[CaseResult, CaseResult]]) -> None:
        """``sent`` probe calls are back (or were never made: the budget); ``pairs`` (first, again) landed."""
        self.in_flight -= sent
        for first, again in pairs:
            self.compare(config_hash, first, again)

    def settle(self) -> None:
        """The run ends still probing: what it has decides (identical draws, however few: deterministic)."""
        d = self.decision
        if d.pending:
            d.stochastic = False
            d.how = (f"probed: only {d.probes} finished case(s) could be asked again (of {d.limit}), every answer "
                     f"identical" if d.probes else "not probed: no finished case could be asked again")
