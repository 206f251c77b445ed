"""Optuna's samplers as society agents: ``tpe``, ``gp`` and ``cmaes``.

Why: they are model-based. A Parzen estimator (TPE), a Gaussian process (GP)
or an adapted search distribution (CMA-ES) puts the next configurations
where the results so far point, which pays off when every evaluation costs
LLM calls. Each agent keeps its own in-memory Optuna study and drives it
through ``study.ask(fixed_distributions)`` / ``study.tell``; the study is fed
with every configuration the society evaluated (its own through ``tell``,
everyone else's through ``add_trial``), so an agent models the whole run,
not only its share of it.

The search space maps once onto fixed Optuna distributions:

* categorical: ``CategoricalDistribution`` over the labels;
* continuous with ``step``: ``FloatDistribution(step=...)`` (a range not divisible
  by the step ends at the last step below ``max``, as Optuna would cut it);
  with ``log`` too: a log ``FloatDistribution`` (Optuna has no stepped log
  scale), the proposal is snapped onto the step grid;
* continuous without ``step``: ``FloatDistribution`` (``log`` if the parameter is);
* integer range: ``IntDistribution(step=...)``;
* explicit numeric ``values``: evenly spaced values (``1, 2, 3``) or evenly
  spaced on a log scale (``64, 128, 256``) become an ``IntDistribution`` over
  their position in sorted order, which keeps their order and spacing (so the
  samplers can tell near from far); other values a ``CategoricalDistribution``.

Configurations go back canonical (snapped onto the space's grid), and a
configuration already seen is never proposed: the agent asks again.

What a study is told (society/observed.py): a trial's ``adjusted`` value (the
case model's estimate of its true score, case difficulty removed), else its
``score``; an abandoned or partial trial too, COMPLETE with that value, since
it estimates the same true score as a complete trial's, only with less
precision. Told FAIL (as before), TPE would drop it, and a configuration
racing saw on 6 cases would teach it nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from convergence.core.space import Dimension, SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.society.base import ProposalContext
from convergence.society.observed import learned_value

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

OPTUNA_AGENTS = ("tpe", "gp", "cmaes")
_NEEDS = {"gp": ("torch", "torch==2.13.0"), "cmaes": ("cmaes", "cmaes")}
"""Packages the sampler imports lazily: checked when the agent is built, not mid-run."""
_GREENLET_NOTICE = "'greenlet' package is unavailable"
"""GPSampler logs this once on import; its batched L-BFGS-B saves little on our small studies (measured)."""
_CMA_GENERATION = "cma:generation"
"""The trial system attribute with which Optuna's CmaEsSampler files a trial under a CMA-ES generation."""
_NO_FIT: Any = object()
"""What :meth:`_Param.encode` returns for a value outside the distribution (None is a valid choice)."""


def _not_greenlet_notice(record: logging.LogRecord) -> bool:
    return _GREENLET_NOTICE not in record.getMessage()


def sampler_seed(seed: int, name: str) -> int:
    """A 32-bit sampler seed from the run seed, distinct per agent (tpe and cmaes never share a stream)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


@dataclass(frozen=True, slots=True)
class _Param:
    """One dimension as an Optuna distribution, and the conversions both ways."""

    dim: Dimension
    dist: BaseDistribution
    grid: tuple[Any, ...] = ()
    """Explicit numeric values in sorted order when the distribution is over their position."""

    def decode(self, value: Any) -> Any:
        """Optuna's parameter value -> our configuration value (canonical)."""
        if self.grid:
            return self.grid[int(value)]
        if self.dim.is_numeric_range:
            return self.dim.snap(float(value))
        return value

    def encode(self, value: Any) -> Any:
        """Our configuration value -> the Optuna parameter value; ``_NO_FIT`` if it does not fit."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        d = self.dist
        if self.grid:
            return self.grid.index(value) if value in self.grid else _NO_FIT
        if isinstance(d, CategoricalDistribution):
            return value if value in d.choices else _NO_FIT
        try:
            x = float(value)
        except (TypeError, ValueError):
            return _NO_FIT
        if not math.isfinite(x):
            return _NO_FIT
        if isinstance(d, IntDistribution):
            k = min(max(round((x - d.low) / d.step), 0), (d.high - d.low) // d.step)
            return int(d.low + k * d.step)
        assert isinstance(d, FloatDistribution)
        if d.step is not None:  # on Optuna's grid, which its containment check requires
            k = min(max(round((x - d.low) / d.step), 0), round((d.high - d.low) / d.step))
            return min(self.dim.snap(d.low + k * d.step), d.high)
        return min(max(x, d.low), d.high)


def _stepped_high(low: float, high: float, step: float) -> float:
    """The last grid point at or below ``high``, computed as Optuna does (so it does not warn and cut it again)."""
    d_low, d_step = Decimal(str(low)), Decimal(str(step))
    return float((Decimal(str(high)) - d_low) // d_step * d_step + d_low)


def _spaced(values: Sequence[float]) -> bool:
    """Evenly spaced, linearly or (all positive) on a log scale."""
    if len(values) < 3:
        return len(values) == 2
    x = np.asarray(values, dtype=float)
    if np.allclose(np.diff(x), x[1] - x[0], rtol=1e-9, atol=0.0):
        return True
    return bool(x[0] > 0 and np.allclose(np.diff(np.log(x)), math.log(x[1] / x[0]), rtol=1e-9, atol=0.0))


def distributions(space: SearchSpace) -> dict[str, _Param]:
    """The search space as fixed Optuna distributions (see the module docstring for the mapping)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, _Param] = {}
    for name, d in space.dims.items():
        if d.kind == "categorical":
            out[name] = _Param(d, CategoricalDistribution(list(d.choices)))
        elif d.kind == "values":
            grid = tuple(sorted(d.choices))
            if len(grid) > 1 and _spaced(grid):
                out[name] = _Param(d, IntDistribution(0, len(grid) - 1), grid)
            else:
                out[name] = _Param(d, CategoricalDistribution(list(d.choices)))
        elif d.kind == "integer":
            low, step = int(d.low), int(d.step or 1)
            out[name] = _Param(d, IntDistribution(low, low + (int(d.high) - low) // step * step, step=step))
        elif d.step and not d.log:
            out[name] = _Param(d, FloatDistribution(d.low, _stepped_high(d.low, d.high, d.step), step=d.step))
        else:
            out[name] = _Param(d, FloatDistribution(d.low, d.high, log=d.log))
    return out


class OptunaProposer:
    """One of Optuna's samplers (``name``: tpe | gp | cmaes) as a society agent.

    * tpe: multivariate TPE (models parameter interactions) with the constant
      liar, so the configurations of one batch spread out instead of piling on
      the same optimum: asked-but-unscored trials count as bad results.
    * gp: Gaussian-process Bayesian optimisation (log expected improvement);
      strongest on small budgets of smooth numeric parameters; needs torch.
    * cmaes: CMA-ES on the numeric parameters (categoricals go to a TPE,
      as CMA-ES cannot model them). CMA-ES learns from a generation of
      ``popsize`` results: its own, topped up with the other agents' best
      (see :meth:`_cma_injected`); all results are in its study, for the TPE.

    The sampler's seed derives from the run seed, so a seeded run repeats.
    """

    def __init__(self, name: str, space: SearchSpace, *, seed: int = 0, max_redraws: int | None = None,
                 sampler: Callable[[int], Any] | None = None):
        """``sampler``: a sampler plugin's factory (seed -> an Optuna sampler) for an agent not built in."""
        self._make_sampler = sampler
        if sampler is None and name not in OPTUNA_AGENTS:
            raise ValueError(f"unknown optuna agent {name!r}; expected one of {', '.join(OPTUNA_AGENTS)}")
        if name in _NEEDS and importlib.util.find_spec(_NEEDS[name][0]) is None:
            raise ImportError(f"the {name} agent needs {_NEEDS[name][0]}: pip install {_NEEDS[name][1]}")
        import optuna

        optuna.logging.set_verbosity(logging.WARNING)
        logging.getLogger("optuna._gp.batched_lbfgsb").addFilter(_not_greenlet_notice)
        self.name = name
        self.space = space
        self.seed = sampler_seed(seed, name)
        self.max_redraws = max_redraws
        """Re-asks for configurations already seen, per call (default: 2n + 5)."""
        self.params = distributions(space)
        self._dists: dict[str, BaseDistribution] = {k: p.dist for k, p in self.params.items()}
        numeric = sum(1 for d in self._dists.values()
                      if isinstance(d, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution))
                      and not d.single())
        self.popsize = 4 + math.floor(3 * math.log(numeric)) if numeric else 0
        """CMA-ES population size (its default formula), made explicit to file others' trials by generation."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study = optuna.create_study(direction="maximize", sampler=self._sampler())
        self._pending: dict[str, tuple[int, optuna.trial.Trial]] = {}
        """Asked and returned, not yet told: hash -> (generation, trial)."""
        self._told: set[str] = set()
        """Hashes whose result is in the study."""
        self._cma_gen = 0
        self._cma_counts: Counter[int] = Counter()
        self.counts: Counter[str] = Counter()
        """own (told a score), failed (own, no result), dropped (own, never evaluated), others (added),
        redrawn (asked again: already seen)."""

    def _sampler(self) -> optuna.samplers.BaseSampler:
        import optuna

        if self._make_sampler is not None:
            made = self._make_sampler(self.seed)
            if not isinstance(made, optuna.samplers.BaseSampler):
                raise TypeError(f"sampler plugin {self.name!r} returned a {type(made).__name__}, "
                                "not an optuna.samplers.BaseSampler")
            return made
        if self.name == "tpe":
            return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=self.seed)
        if self.name == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, warn_independent_sampling=False)
        # categoricals: a TPE (it learns from every trial), not CMA-ES's default random sampler
        cats = optuna.samplers.TPESampler(constant_liar=True, seed=self.seed)
        return optuna.samplers.CmaEsSampler(seed=self.seed, popsize=self.popsize or None, independent_sampler=cats,
                                            warn_independent_sampling=False)

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        """``n`` asks of the study (in a worker thread: a GP fit must not stall
        the other agents' I/O); a configuration already seen is told FAIL and
        asked again, a bounded number of times."""
        if n <= 0:
            return []
        return await anyio.to_thread.run_sync(self._propose, frozenset(ctx.seen), n, ctx.generation)

    def _propose(self, seen: frozenset[str], n: int, generation: int) -> list[Config]:
        if self.name != "gp":
            return self._ask(seen, n, generation)
        import torch

        # one thread: on a GP of a few hundred points, more threads only contend (4 asks: 0.6 s vs 11 s
        # on a busy 2-core machine)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._ask(seen, n, generation)
        finally:
            torch.set_num_threads(threads)

    def _ask(self, seen: frozenset[str], n: int, generation: int) -> list[Config]:
        from optuna.trial import TrialState

        out: list[Config] = []
        redraws = 2 * n + 5 if self.max_redraws is None else self.max_redraws
        while len(out) < n:
            anyio.from_thread.check_cancelled()  # the society's timeout: stop between asks
            trial = self.study.ask(self._dists)
            config = {name: p.decode(trial.params[name]) for name, p in self.params.items()}
            h = config_hash(config)
            if h in seen or h in self._pending or h in self._told:
                self._finish(trial, None, TrialState.FAIL)
                self.counts["redrawn"] += 1  # not "failed": no result was lost
                if redraws <= 0:
                    break
                redraws -= 1
                continue
            self._pending[h] = (generation, trial)
            out.append(config)
        return out

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        """Every trial the society evaluated goes into the study once, with its learned value
        (``adjusted`` or ``score``; abandoned and partial trials included): its own with ``tell``
        (FAIL when it has no result), the others' with results with ``add_trial``. Its asked trials of
        these generations that did not come back (dropped as duplicates, or cut by the budget) are told
        FAIL here, so the constant liar only counts what is really pending: the batch being proposed
        and, in async mode, a generation still being evaluated."""
        import optuna
        from optuna.trial import TrialState

        others: list[TrialRecord] = []
        for t in trials:
            own = self._pending.pop(t.config_hash, None)
            if own is None:
                others.append(t)
                continue
            value = learned_value(t)
            ok = value is not None
            self._finish(own[1], value, TrialState.COMPLETE if ok else TrialState.FAIL)
            self._told.add(t.config_hash)
            self.counts["own" if ok else "failed"] += 1
        done = max((t.generation for t in trials), default=None)
        for h, (gen, trial) in list(self._pending.items()):
            if done is not None and gen <= done:
                self._finish(trial, None, TrialState.FAIL)
                del self._pending[h]
                self.counts["dropped"] += 1
        fresh: list[tuple[TrialRecord, float, dict[str, Any]]] = []
        for t in others:
            value = learned_value(t)
            if t.config_hash in self._told or value is None:
                continue
            params = {name: p.encode(t.config.get(name, _NO_FIT)) for name, p in self.params.items()}
            if all(v is not _NO_FIT for v in params.values()):  # else not of this space (warm start from an older one)
                fresh.append((t, value, params))
        inject = self._cma_injected([v for _, v, _ in fresh]) if self.name == "cmaes" else set()
        for i, (t, value, params) in enumerate(fresh):
            attrs = {_CMA_GENERATION: self._cma_gen} if i in inject else None
            self.study.add_trial(optuna.trial.create_trial(params=params, distributions=self._dists,
                                                           value=value, system_attrs=attrs))
            self._told.add(t.config_hash)
            self.counts["others"] += 1

    def _finish(self, trial: optuna.trial.Trial, value: float | None, state: Any) -> None:
        from optuna.trial import TrialState

        frozen = self.study.tell(trial, value, state=state)
        gen = frozen.system_attrs.get(_CMA_GENERATION)
        if isinstance(gen, int):
            self._cma_gen = max(self._cma_gen, gen)
            if state == TrialState.COMPLETE:
                self._cma_counts[gen] += 1

    def _cma_injected(self, scores: list[float]) -> set[int]:
        """Which of the others' new trials join the CMA-ES generation being
        collected: the best ones, up to its population size. CmaEsSampler
        updates its search distribution from the first ``popsize`` completed
        trials filed under a generation (its own asks come first) and ignores
        trials filed under none; so the other agents' best results fill what
        its own share leaves, and CMA-ES moves a generation every society
        generation even with fewer slots than its population."""
        room = self.popsize - self._cma_counts[self._cma_gen]
        if room <= 0 or not self.popsize:
            return set()
        best = sorted(range(len(scores)), key=lambda i: -scores[i])[:room]  # stable: ties in the loop's order
        self._cma_counts[self._cma_gen] += len(best)
        return set(best)

    def summary(self) -> dict[str, Any]:
        """For the society report: what the study holds."""
        return {"sampler": type(self.study.sampler).__name__, **{k: int(v) for k, v in sorted(self.counts.items())}}
