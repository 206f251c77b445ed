"""Score one test case (``Evaluator.evaluate``) and a whole trial (``aggregate``).

Both run for every case of every trial, thousands of times per second in the
throughput benchmark, so everything that can be decided once (metric
functions, prepared args, weights, normalisation references, failure values)
is decided in ``__init__`` and the hot path is plain loops over tuples.

Conventions (documented for users in the metric reference):

* Raw values are kept as measured (accuracy 1.0, latency 830 ms, cost $0.0004).
* Normalisation to [0, 1] for the score: ``higher_is_better`` values are
  clamped to [0, 1] (quality metrics are expected to produce values in that
  range); ``lower_is_better`` values map to ``clamp(1 - value / ref, 0, 1)``
  where ``ref`` is the metric's ``threshold``, else its ``budget_per_call``,
  else a default: 10,000 ms for latency, $0.01 per call for cost, 1.0 otherwise.
* A failed call (``call.error`` set) scores 0.0 on every higher_is_better
  metric and ``ref`` (normalises to 0) on lower_is_better metrics other than
  latency and cost, which keep what was measured: latency is the time spent
  (or ``ref`` when nothing was measured), cost is what was charged.
* A metric function that raises scores like a failure for that metric and
  case only; the error text is returned by ``evaluate_detailed`` and counted
  in ``Evaluator.errors`` (metric name -> (count, last message)) so reports
  can show why a metric was 0 without re-running anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from convergence.config.models import EvaluationConfig
from convergence.core.types import CallResult, CaseResult, TestCase
from convergence.evaluation.metrics import OPERATIONAL, TRIAL_LEVEL, AsyncMetricFn, Metric, SyncMetricFn, resolve_metric

log = logging.getLogger(__name__)

DEFAULT_REF: dict[str, float] = {"latency": 10_000.0, "cost": 0.01}
"""Values that normalise to 0 for lower_is_better metrics without threshold or budget."""
FALLBACK_REF = 1.0


@dataclass(slots=True)
class Aggregate:
    """A trial's result over its test cases."""

    score: float
    means: dict[str, float]
    """Per-metric mean of raw values."""
    normalized: dict[str, float]
    """Per-metric means mapped to [0, 1], higher is better."""
    thresholds_passed: bool


@dataclass(slots=True)
class _Spec:
    """Everything about one metric that the hot path needs, precomputed."""

    name: str
    metric: Metric
    higher: bool
    weight: float
    ref: float
    threshold: float | None
    operational: str | None
    """"latency" / "cost" when the metric measures the call itself, else None."""
    failure: float


class Evaluator:
    """Runs the configured metrics on test-case results."""

    def __init__(self, cfg: EvaluationConfig, base_dir: Path) -> None:
        self.cfg = cfg
        total = sum(m.weight for m in cfg.metrics.values())
        specs: list[_Spec] = []
        for name, mc in cfg.metrics.items():
            metric = resolve_metric(name, mc, cfg.custom_evaluator, base_dir)
            higher = mc.direction == "higher_is_better"
            op = metric.function if metric.function in OPERATIONAL else None
            ref = mc.threshold if mc.threshold is not None else mc.budget_per_call
            if ref is None or ref <= 0:
                ref = DEFAULT_REF.get(op or "", FALLBACK_REF)
            specs.append(
                _Spec(
                    name=name,
                    metric=metric,
                    higher=higher,
                    weight=mc.weight / total,
                    ref=float(ref),
                    threshold=mc.threshold,
                    operational=op,
                    failure=0.0 if higher else float(ref),
                )
            )
        self._specs = tuple(specs)
        self.trial_level: dict[str, str] = {s.name: s.metric.function for s in specs
                                            if s.metric.function in TRIAL_LEVEL}
        """Metric name -> function, for metrics of the configuration (values given to ``aggregate``)."""
        per_case = [s for s in specs if s.name not in self.trial_level]
        # is_async tells the two kinds of metric function apart (the casts say so to the type checker)
        self._sync: tuple[tuple[str, SyncMetricFn, dict[str, Any], float], ...] = tuple(
            (s.name, cast("SyncMetricFn", s.metric.fn), s.metric.args, s.failure)
            for s in per_case if not s.metric.is_async
        )
        self._async: tuple[tuple[str, AsyncMetricFn, dict[str, Any], float], ...] = tuple(
            (s.name, cast("AsyncMetricFn", s.metric.fn), s.metric.args, s.failure)
            for s in per_case if s.metric.is_async
        )
        self._failed_template = {s.name: s.failure for s in per_case if s.operational is None}
        self._latency_names = tuple((s.name, s.ref) for s in specs if s.operational == "latency")
        self._cost_names = tuple(s.name for s in specs if s.operational == "cost")
        self.operational: frozenset[str] = frozenset(s.name for s in specs if s.operational is not None)
        """Metrics of the call itself (latency, cost): they differ between draws of any target."""
        self._norm = tuple((s.name, s.higher, s.ref, s.weight) for s in specs)
        self._thresholds = tuple((s.name, s.higher, s.threshold) for s in specs if s.threshold is not None)
        self.errors: dict[str, tuple[int, str]] = {}
        """Metric name -> (number of cases where its function raised, last error text)."""

    # ------------------------------------------------------------------ introspection

    def metric_directions(self) -> dict[str, str]:
        """Metric name -> "higher_is_better" | "lower_is_better"."""
        return {s.name: "higher_is_better" if s.higher else "lower_is_better" for s in self._specs}

    def metric_weights(self) -> dict[str, float]:
        """Metric name -> weight, normalised to sum to 1."""
        return {s.name: s.weight for s in self._specs}

    # ------------------------------------------------------------------ per case

    async def evaluate(self, case: TestCase, call: CallResult) -> dict[str, float]:
        """Raw value of every metric for one case (errors: see ``evaluate_detailed``)."""
        values, errors = await self.evaluate_detailed(case, call)
        if errors:
            for name, msg in errors.items():
                log.warning("metric %s failed on case %s: %s", name, case.id, msg)
        return values

    async def evaluate_detailed(self, case: TestCase, call: CallResult) -> tuple[dict[str, float], dict[str, str]]:
        """Raw metric values and, per metric whose function raised, the error text."""
        if call.error is not None:
            values = dict(self._failed_template)
            for name, ref in self._latency_names:
                values[name] = call.latency_ms if call.latency_ms > 0 else ref
            for name in self._cost_names:
                values[name] = call.cost_usd
            return values, {}
        values = {}
        errors: dict[str, str] | None = None
        output = call.output
        for name, fn, args, failure in self._sync:
            try:
                values[name] = fn(output, case, call, args)
            except Exception as e:  # noqa: BLE001 - one bad metric must not sink the trial
                values[name] = failure
                errors = self._record(errors, name, e)
        for name, afn, args, failure in self._async:
            try:
                values[name] = await afn(output, case, call, args)
            except Exception as e:  # noqa: BLE001
                values[name] = failure
                errors = self._record(errors, name, e)
        return values, errors or {}

    def _record(self, errors: dict[str, str] | None, name: str, e: BaseException) -> dict[str, str]:
        msg = f"{type(e).__name__}: {e}"
        count = self.errors.get(name, (0, ""))[0]
        self.errors[name] = (count + 1, msg)
        if errors is None:
            errors = {}
        errors[name] = msg
        return errors

    # ------------------------------------------------------------------ per trial

    def aggregate(self, results: list[CaseResult], trial_values: dict[str, float] | None = None) -> Aggregate:
        """Means, normalised values, weighted score and threshold verdict of a trial;
        ``trial_values``: the values of trial-level metrics (by metric name)."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for r in results:
            for k, v in r.metrics.items():
                if k in sums:
                    sums[k] += v
                    counts[k] += 1
                else:
                    sums[k] = v
                    counts[k] = 1
        means = {k: sums[k] / counts[k] for k in sums}
        if trial_values:
            means.update((k, v) for k, v in trial_values.items() if k in self.trial_level)
        return self.score_means(means)

    def score_means(self, means: dict[str, float]) -> Aggregate:
        """Score a trial from its metric means (also used to re-score when a trial-level value changes)."""
        normalized: dict[str, float] = {}
        score = 0.0
        for name, higher, ref, weight in self._norm:
            m = means.get(name)
            if m is None:
                n = 0.0  # never measured: contributes nothing
            elif higher:
                n = 0.0 if m < 0.0 else (1.0 if m > 1.0 else m)
            else:
                n = 1.0 - m / ref
                n = 0.0 if n < 0.0 else (1.0 if n > 1.0 else n)
            normalized[name] = n
            score += weight * n
        passed = True
        for name, higher, threshold in self._thresholds:
            m = means.get(name)
            if m is None or (m < threshold if higher else m > threshold):
                passed = False
                break
        return Aggregate(score=score, means=means, normalized=normalized, thresholds_passed=passed)
