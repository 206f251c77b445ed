"""The dry-run forecast (``convergence optimize FILE --dry-run``): calls, tokens,
cost and time of a run, and which budget stops it first, before paying for any
of it.

Nothing here calls the target or an LLM, and nothing is written. The plan is
counted the way the loop runs it (elites are not re-evaluated, a configuration
is evaluated once per run, SAO's duels call the target twice per pair). Token
counts come from rendering the target's prompt for a seeded sample of
configurations and test cases; prices from LiteLLM's local cost map; latency
from the study's earlier calls in the project database when there are any.
Every number carries its source, because a forecast is only as good as what
it rests on.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convergence.config.budget_plan import BudgetPlan, apply_plan, budget_plan
from convergence.config.loader import LoadedConfig, resolve_path
from convergence.config.models import ConvergenceConfig, LiteLLMTargetConfig
from convergence.core.space import SearchSpace
from convergence.core.types import TestCase

SAMPLES = 64
"""(configuration, test case) pairs rendered to estimate prompt tokens."""
DEFAULT_COMPLETION_TOKENS = 256
"""Completion tokens assumed per call when neither the configuration nor the target sets max_tokens."""
DEFAULT_LATENCY_S = 1.0
"""Seconds per call assumed when the study has no earlier calls (a guess, and said to be one)."""
LOCAL_PREFIX = "local/"
"""In-process models (the embedded one): no price, no network."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One estimated number and where it comes from (``value`` None: unknown)."""

    value: float | None
    source: str


@dataclass(frozen=True, slots=True)
class History:
    """What the study's earlier finished calls measured (from the project database)."""

    study: str
    calls: int
    mean_latency_ms: float
    """Wall time per call (retries and backoff included) when stored, else the last attempt's latency."""
    mean_prompt_tokens: float | None
    mean_completion_tokens: float | None
    mean_cost_usd: float | None


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """One configured budget against what the plan needs."""

    name: str
    limit: float
    needed: float | None
    """None: unknown (e.g. the cost of a model LiteLLM has no price for)."""

    @property
    def reached_at(self) -> float | None:
        """Share of the plan done when this budget runs out (None: not reached, or unknown)."""
        if self.needed is None or self.needed <= self.limit:
            return None
        return self.limit / self.needed


@dataclass(slots=True)
class Forecast:
    """What a run of the config would take. ``calls`` are target calls (what
    ``max_calls`` counts); society and judge LLM calls are counted apart."""

    study: str
    cases: int
    space_size: float
    per_generation: list[int]
    """New configurations each generation evaluates (elites are not re-evaluated)."""
    generations: int
    """Generations the config asks for (the space may run out sooner)."""
    evaluation_calls: int
    sao_calls: int
    """Target calls of SAO's duels: 2 per pair (at most: later rounds run only when pairs were filtered)."""
    sao_generations: list[int]
    max_calls: int | None
    max_retries: int
    concurrency: int
    prompt_tokens: Figure
    completion_tokens: Figure
    cost_per_call: Figure
    latency_s: Figure
    rate_limit: float | None = None
    society_llm_calls: dict[str, int] = field(default_factory=dict)
    society_llm: str = ""
    judge_calls: int = 0
    judge_model: str = ""
    budgets: list[BudgetCheck] = field(default_factory=list)
    stops_first: str = ""
    notes: list[str] = field(default_factory=list)
    until_budget: bool = False
    """Generations go on until ``max_calls`` is spent (``config/budget_plan.py``)."""

    @property
    def needed_calls(self) -> int:
        """Target calls the whole plan needs (before max_calls)."""
        return self.evaluation_calls + self.sao_calls

    @property
    def calls(self) -> int:
        """Target calls expected: the plan's, capped by max_calls."""
        return self.needed_calls if self.max_calls is None else min(self.needed_calls, self.max_calls)

    @property
    def cost_usd(self) -> float | None:
        per = self.cost_per_call.value
        return None if per is None else per * self.calls

    def seconds_for(self, calls: int) -> float | None:
        """Wall time of ``calls`` at the configured concurrency (and rate limit)."""
        if self.latency_s.value is None:
            return None
        seconds = calls * self.latency_s.value / self.concurrency
        if self.rate_limit:
            seconds = max(seconds, calls / self.rate_limit)
        return seconds

    @property
    def seconds(self) -> float | None:
        return self.seconds_for(self.calls)

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, estimate, source) lines for the CLI's table."""
        out: list[tuple[str, str, str]] = []
        size = "continuous (unbounded)" if math.isinf(self.space_size) else f"{self.space_size:.0f}"
        out.append(("test cases", str(self.cases), "the preflight's test cases"))
        out.append(("search space", f"{size} configurations", "search_space (SearchSpace.size)"))
        plan = " + ".join(map(str, self.per_generation)) or "0"
        short = f"; the space runs out after {len(self.per_generation)}" if len(
            self.per_generation) < self.generations else ""
        until = " until the budget is spent" if self.until_budget else ""
        out.append(("configurations", f"{sum(self.per_generation)} ({plan})",
                    f"{self.generations} generation(s){until}: population_size, then population_size - elite_size "
                    f"(elites are not re-evaluated){short}"))
        out.append(("evaluation calls", str(self.evaluation_calls),
                    f"configurations x {self.cases} test case(s)"))
        if self.sao_calls or self.sao_generations:
            gens = ", ".join(str(g + 1) for g in self.sao_generations) or "none"
            out.append(("SAO target calls", str(self.sao_calls),
                        f"2 per pair, at most; duels after generation(s) {gens}"))
        capped = ""
        if self.max_calls is not None and self.needed_calls > self.max_calls:
            capped = f"; the plan needs {self.needed_calls}, max_calls {self.max_calls} cuts it"
        which = "evaluation + SAO" if self.sao_calls else "evaluation"
        out.append(("target calls", str(self.calls),
                    f"{which} calls{capped}; retries can add up to {self.max_retries} x {self.calls} = "
                    f"{self.max_retries * self.calls} more"))
        out.append(("prompt tokens / call", _num(self.prompt_tokens.value, "~"), self.prompt_tokens.source))
        out.append(("completion tokens / call", _num(self.completion_tokens.value, "<= "),
                    self.completion_tokens.source))
        tokens = "unknown"
        if self.prompt_tokens.value is not None and self.completion_tokens.value is not None:
            tokens = f"~{(self.prompt_tokens.value + self.completion_tokens.value) * self.calls:,.0f}"
        out.append(("tokens in all", tokens, "tokens / call x target calls"))
        out.append(("cost / call", _usd(self.cost_per_call.value), self.cost_per_call.source))
        out.append(("cost in all", _usd(self.cost_usd), "cost / call x target calls (target only)"))
        out.append(("latency / call", _num(self.latency_s.value, "", "s", 2), self.latency_s.source))
        rate = f", at most {self.rate_limit:g} call(s)/s (rate_limit_per_second)" if self.rate_limit else ""
        out.append(("time", _num(self.seconds, "~", "s"),
                    f"target calls x latency / concurrency {self.concurrency}{rate}; "
                    "society and judge LLM calls come on top"))
        for name, n in self.society_llm_calls.items():
            out.append((f"society LLM calls: {name}", f"~{n}", f"estimate; {self.society_llm}"))
        if self.judge_calls:
            out.append(("judge LLM calls", f"~{self.judge_calls}",
                        f"estimate: one per evaluation call (llm_judge, {self.judge_model})"))
        for b in self.budgets:
            unit = {"max_calls": "", "max_cost_usd": "$", "max_seconds": ""}[b.name]
            need = "unknown" if b.needed is None else (
                _usd(b.needed) if unit else f"{b.needed:,.0f}{'s' if b.name == 'max_seconds' else ''}")
            limit = f"${b.limit:g}" if unit else f"{b.limit:g}{'s' if b.name == 'max_seconds' else ''}"
            verdict = ("unknown" if b.needed is None else "not reached" if b.reached_at is None
                       else f"reached at ~{b.reached_at:.0%} of the plan")
            out.append((f"budget {b.name}", limit, f"the plan needs {need}: {verdict}"))
        out.append(("stops first", self.stops_first, "earliest of the budgets above and the generation limit"))
        for note in self.notes:
            out.append(("note", "", note))
        return out


def _num(value: float | None, prefix: str = "", unit: str = "", digits: int = 0) -> str:
    return "unknown" if value is None else f"{prefix}{value:,.{digits}f}{unit}"


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return "$0" if value == 0 else f"${value:.6f}" if value < 0.01 else f"${value:,.4f}"


# --------------------------------------------------------------------------- the plan


def plan(cfg: ConvergenceConfig, space: SearchSpace, until: int | None = None) -> list[int]:
    """New configurations per generation: population_size, then population_size
    - elite_size, while the space lasts (a configuration is evaluated once per run);
    ``until``: a run that goes on until its budget is spent plans generations up to this
    many configurations (``max_calls`` / test cases), the budget's end."""
    evo = cfg.optimization.evolution
    left = space.size()
    out: list[int] = []
    for gen in range(evo.generations):
        if until is not None and sum(out) >= until:
            break
        n = evo.population_size if gen == 0 else evo.population_size - min(evo.elite_size, evo.population_size)
        n = int(min(n, left))
        if n <= 0:
            break
        out.append(n)
        left -= n
    return out


def _allot(n: int, shares: list[float]) -> list[int]:
    from convergence.society.society import allot

    return allot(n, shares)


def society_calls(cfg: ConvergenceConfig, per_generation: list[int]) -> tuple[dict[str, int], int, list[int]]:
    """(society LLM calls by agent, SAO target calls, generations SAO duels after), from the
    agents' starting shares. RLP: a thought and an answer per thought, plus two log-prob calls
    per proposal (information gain). SAO: per pair a written prompt and a judgment in both
    orders (two log-prob calls each with the likelihood judge)."""
    soc = cfg.society
    if not soc.enabled:
        return {}, 0, []
    roster = soc.roster(cfg.optimization.algorithm)
    names, shares = list(roster), list(roster.values())
    calls: dict[str, int] = {}
    if "rlp" in roster:
        rlp = soc.rlp
        n = 0
        for gen, slots in enumerate(per_generation):
            k = _allot(slots, shares)[names.index("rlp")]
            if k and gen % rlp.think_every == 0:
                g = min(rlp.G, k)
                n += 2 * g + (2 * k if rlp.use_logprobs else 0)
        calls["rlp"] = n
    sao_target, sao_gens = 0, []
    if "sao" in roster:
        sao = soc.sao
        model = sao.model_name or soc.llm.model
        judge = sao.judge if sao.judge != "auto" else ("likelihood" if model.startswith(LOCAL_PREFIX) else "text")
        pairs = sao.batch_size * sao.iterative_rounds
        done = 0
        for gen, slots in enumerate(per_generation):
            done += slots
            if gen % sao.every == 0 and done >= 2:
                sao_gens.append(gen)
        sao_target = 2 * pairs * len(sao_gens)
        calls["sao"] = pairs * len(sao_gens) * (1 + (4 if judge == "likelihood" else 2))
    return calls, sao_target, sao_gens


# --------------------------------------------------------------------------- tokens and prices


def _litellm() -> Any:
    from convergence.llm.client import litellm_module

    return litellm_module()


def _known(model: str) -> bool:
    """LiteLLM's local map has this model (so its tokenizer and price apply)."""
    if model.startswith(LOCAL_PREFIX):
        return False
    try:
        _litellm().get_model_info(model)
    except Exception:  # noqa: BLE001 - unknown models raise various errors
        return False
    return True


def count_tokens(model: str, text: str, known: bool) -> int:
    """LiteLLM's token count for a model it knows; characters / 4 otherwise."""
    if known:
        try:
            return int(_litellm().token_counter(model=model, text=text))
        except Exception:  # noqa: BLE001 - a tokenizer that cannot load: the rough count below
            pass
    return math.ceil(len(text) / 4)


def price(model: str, prompt_tokens: float, completion_tokens: float) -> float | None:
    """USD for one call from LiteLLM's cost map; 0 for in-process models; None when unknown."""
    if model.startswith(LOCAL_PREFIX):
        return 0.0
    try:
        p, c = _litellm().cost_per_token(model=model, prompt_tokens=round(prompt_tokens),
                                         completion_tokens=round(completion_tokens))
        return float(p) + float(c)
    except Exception:  # noqa: BLE001 - no price in the map
        return None


def _litellm_figures(cfg: ConvergenceConfig, t: LiteLLMTargetConfig, space: SearchSpace,
                     cases: list[TestCase]) -> tuple[Figure, Figure, Figure]:
    """Prompt tokens, completion tokens and cost per call over a seeded sample of calls."""
    from convergence.targets.litellm_target import LiteLLMTarget
    from convergence.targets.templating import TemplateError

    target = LiteLLMTarget(t)
    rng = np.random.default_rng(cfg.optimization.seed or 0)
    samples: list[tuple[str, str, float | None]] = []
    for _ in range(SAMPLES if cases else 0):
        params = space.resolve(space.sample(rng))
        case = cases[int(rng.integers(len(cases)))]
        try:
            text = "\n".join(m.get("content", "") for m in target.messages_for(params, case))
        except TemplateError:
            continue
        kwargs = target.call_kwargs(params)
        limit = kwargs.get("max_tokens", kwargs.get("max_completion_tokens"))
        samples.append((str(kwargs.get("model", t.model)), text,
                        float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else None))
    if not samples:
        return (Figure(None, "no call could be rendered"), Figure(None, "no call could be rendered"),
                Figure(None, "no call could be rendered"))
    models = sorted({m for m, _, _ in samples})
    known = {m: _known(m) for m in models}
    prompt = [count_tokens(m, text, known[m]) for m, text, _ in samples]
    how = ", ".join(f"{m}: {'LiteLLM token_counter' if known[m] else 'characters / 4'}" for m in models)
    prompt_fig = Figure(statistics.fmean(prompt), f"rendered prompt, mean of {len(samples)} sampled "
                                                  f"(configuration, test case) pairs ({how})")
    limits = [x for _, _, x in samples if x is not None]
    if len(limits) == len(samples):
        completion = [float(x) for _, _, x in samples if x is not None]
        completion_fig = Figure(statistics.fmean(completion),
                                "max_tokens, mean over the sampled configurations (an upper bound)")
    else:
        completion = [x if x is not None else float(DEFAULT_COMPLETION_TOKENS) for _, _, x in samples]
        completion_fig = Figure(statistics.fmean(completion),
                                f"no max_tokens set{' for some configurations' if limits else ''}: "
                                f"assumed {DEFAULT_COMPLETION_TOKENS} (a guess)")
    costs = [price(m, p, c) for (m, _, _), p, c in zip(samples, prompt, completion, strict=True)]
    unknown = sorted({m for (m, _, _), c in zip(samples, costs, strict=True) if c is None})
    if unknown:
        cost_fig = Figure(None, f"LiteLLM's cost map has no price for {', '.join(unknown)}")
    elif all(m.startswith(LOCAL_PREFIX) for m in models):
        cost_fig = Figure(0.0, f"{', '.join(models)} runs in-process: no price")
    else:
        cost_fig = Figure(statistics.fmean(c for c in costs if c is not None),
                          f"LiteLLM cost map (local copy) for {', '.join(models)} x the tokens above")
    return prompt_fig, completion_fig, cost_fig


# --------------------------------------------------------------------------- the estimate


def resolved_plan(cfg: ConvergenceConfig, n_cases: int) -> tuple[ConvergenceConfig, BudgetPlan, int | None]:
    """``cfg`` with what ``max_calls`` sets (``config/budget_plan.py``), what that is, and the
    configurations a run until the budget is spent plans for (None: the generation limit stands)."""
    bp = budget_plan(cfg, n_cases)
    max_calls = cfg.optimization.budget.max_calls
    until = math.ceil(max_calls / max(n_cases, 1)) if bp.generations is not None and max_calls else None
    return apply_plan(cfg, bp), bp, until


def target_calls(cfg: ConvergenceConfig, n_cases: int) -> tuple[int, int]:
    """(target calls the plan needs, target calls expected once max_calls caps them): the numbers
    ``validate`` prints and :func:`forecast` reports, from the same plan."""
    cfg, _, until = resolved_plan(cfg, n_cases)
    per_gen = plan(cfg, SearchSpace.from_config(cfg.search_space), until)
    needed = sum(per_gen) * n_cases + society_calls(cfg, per_gen)[1]
    cap = cfg.optimization.budget.max_calls
    return needed, needed if cap is None else min(needed, cap)


def forecast(loaded: LoadedConfig, cases: list[TestCase], *, history: History | None = None) -> Forecast:
    """The estimate of a run of ``loaded`` on ``cases`` (from the preflight), with the
    study's earlier calls (:func:`load_history`) as the measured latency when given."""
    n_cases = len(cases)
    cfg, bp, until = resolved_plan(loaded.config, n_cases)
    t = cfg.resolved_target
    opt = cfg.optimization
    space = SearchSpace.from_config(cfg.search_space)
    per_gen = plan(cfg, space, until)
    llm_calls, sao_calls, sao_gens = society_calls(cfg, per_gen)
    measured = history is not None and history.calls > 0
    earlier = f"{history.calls} earlier call(s) of study {history.study!r}" if history is not None and measured else ""

    if isinstance(t, LiteLLMTargetConfig):
        prompt, completion, cost = _litellm_figures(cfg, t, space, cases)
    else:
        unknown = f"unknown: a {t.type} target reports no tokens before it is called"
        prompt = completion = Figure(None, unknown)
        cost = Figure(None, f"unknown: a {t.type} target's cost is known once it is called")
        if history is not None and measured:
            if history.mean_prompt_tokens is not None:
                prompt = Figure(history.mean_prompt_tokens, f"measured: mean of {earlier}")
            if history.mean_completion_tokens is not None:
                completion = Figure(history.mean_completion_tokens, f"measured: mean of {earlier}")
            if history.mean_cost_usd is not None:
                cost = Figure(history.mean_cost_usd, f"measured: mean of {earlier}")
    if history is not None and measured:
        latency = Figure(history.mean_latency_ms / 1000.0, f"measured: mean wall time of {earlier}")
    else:
        latency = Figure(DEFAULT_LATENCY_S, f"a guess (no earlier calls of study {cfg.study_name!r}); "
                                            f"at most {t.timeout_seconds:g}s per attempt (timeout_seconds)")

    judges = [m for m in cfg.evaluation.metrics.values() if m.function == "llm_judge"]
    est = Forecast(
        study=cfg.study_name, cases=n_cases, space_size=space.size(), per_generation=per_gen,
        generations=len(per_gen) if until is not None else opt.evolution.generations,
        evaluation_calls=sum(per_gen) * n_cases, sao_calls=sao_calls,
        sao_generations=sao_gens, max_calls=opt.budget.max_calls, max_retries=t.retry.max_retries,
        concurrency=opt.execution.concurrency, prompt_tokens=prompt, completion_tokens=completion,
        cost_per_call=cost, latency_s=latency, rate_limit=t.rate_limit_per_second,
        society_llm_calls=llm_calls, judge_calls=sum(per_gen) * n_cases * len(judges),
        judge_model=", ".join(sorted({(m.judge.model if m.judge else "local/gemma-3-270m") for m in judges})),
        until_budget=until is not None,
    )
    if llm_calls:
        soc = cfg.society
        by_agent = {"rlp": soc.rlp.model_name or soc.llm.model, "sao": soc.sao.model_name or soc.llm.model}
        models = sorted({by_agent[a] for a in llm_calls if a in by_agent})
        local = all(m.startswith(LOCAL_PREFIX) for m in models)
        est.society_llm = (f"model {', '.join(models)}, from the agents' starting shares"
                           + ("; in-process: no cost" if local else "; their cost (counted by max_cost_usd) "
                              "is not estimated"))
    _budgets(est, cfg)
    est.notes[:0] = [f"{note}: budget.max_calls is set and the config does not say" for note in bp.notes()]
    return est


def _budgets(est: Forecast, cfg: ConvergenceConfig) -> None:
    """Which limit ends the run first: the budget reached at the smallest share of the plan,
    else the generation limit (or the search space running out)."""
    b = cfg.optimization.budget
    needed_cost = None if est.cost_per_call.value is None else est.cost_per_call.value * est.needed_calls
    if b.max_calls is not None:
        est.budgets.append(BudgetCheck("max_calls", b.max_calls, est.needed_calls))
    if b.max_cost_usd is not None:
        est.budgets.append(BudgetCheck("max_cost_usd", b.max_cost_usd, needed_cost))
    if b.max_seconds is not None:
        est.budgets.append(BudgetCheck("max_seconds", b.max_seconds, est.seconds_for(est.needed_calls)))
    reached = [x for x in est.budgets if x.reached_at is not None]
    if reached:
        first = min(reached, key=lambda x: x.reached_at or 0.0)
        est.stops_first = f"{first.name} (at ~{first.reached_at:.0%} of the plan)"
    elif est.until_budget and b.max_calls is not None and est.needed_calls >= b.max_calls:
        est.stops_first = f"max_calls ({b.max_calls}): generations go on until the budget is spent"
    elif len(est.per_generation) < est.generations or est.until_budget:
        est.stops_first = f"the search space (exhausted after generation {len(est.per_generation)})"
    else:
        est.stops_first = f"the generation limit ({est.generations} generation(s))"
    if any(x.needed is None for x in est.budgets):
        est.notes.append("a budget's need is unknown (see above): it may stop the run first")
    es = cfg.optimization.execution.early_stopping
    if es.enabled and es.patience < len(est.per_generation):
        est.notes.append(f"early stopping (patience {es.patience}) may end the run sooner")
    if est.society_llm_calls and b.max_seconds is not None:
        est.notes.append("society LLM calls also take time, counted by max_seconds")


# --------------------------------------------------------------------------- history


async def load_history(loaded: LoadedConfig) -> History | None:
    """Per-call means of the study's earlier finished calls, read from the project
    database opened read-only; None without a database (a dry run never creates one)."""
    cfg = loaded.config
    path = resolve_path(loaded.base_dir, cfg.storage.path)
    if not path.is_file():
        return None
    return await read_history(path, cfg.study_name)


async def read_history(path: Path, study: str) -> History | None:
    """The query behind :func:`load_history`, in a worker thread: the study's successful case results."""
    import anyio

    if not path.is_file():
        return None
    return await anyio.to_thread.run_sync(_query_history, path, study)


def _query_history(path: Path, study: str) -> History | None:
    import sqlite3
    from contextlib import closing

    try:  # mode=ro: never creates the file, never writes to it
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(case_results)")}
            if not columns:
                return None
            wall = "COALESCE(NULLIF(c.wall_ms, 0), c.latency_ms)" if "wall_ms" in columns else "c.latency_ms"
            row = db.execute(
                f"SELECT COUNT(*), AVG({wall}), AVG(NULLIF(c.prompt_tokens, 0)), "
                "AVG(NULLIF(c.completion_tokens, 0)), AVG(c.cost_usd) "
                "FROM case_results c JOIN runs r ON r.id = c.run_id JOIN studies s ON s.id = r.study_id "
                "WHERE s.name = ? AND c.error IS NULL", (study,)).fetchone()
    except sqlite3.Error:
        return None
    if row is None or not row[0] or row[1] is None:
        return None
    return History(study=study, calls=int(row[0]), mean_latency_ms=float(row[1]),
                   mean_prompt_tokens=None if row[2] is None else float(row[2]),
                   mean_completion_tokens=None if row[3] is None else float(row[3]),
                   mean_cost_usd=None if row[4] is None else float(row[4]))
