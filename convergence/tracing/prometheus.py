"""Prometheus exposition: live run metrics (``optimize --metrics-port``) and
:class:`MetricsServer`, which a plugin's command may use to serve its own
collector (``convergence synergy serve`` of the synergy plugin does).

Each server has its own registry and serves ``/metrics`` (any other path but
``/health``) and ``/health`` (``ok``) from a daemon thread, on 127.0.0.1 by
default. The loop only sets gauge values (no I/O on the event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from convergence.core.types import CaseResult, TrialRecord
    from convergence.society.base import Proposal
    from convergence.society.society import AgentReport


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the terminal."""


class MetricsServer:
    """``registry``'s metrics on http://host:port/metrics, and /health, until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import make_wsgi_app

        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/health":
                start("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"ok\n"]
            return metrics(environ, start)

        self.server: WSGIServer = make_server(host, port, app, handler_class=_Quiet)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="convergence-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class RunMetrics:
    """Live metrics of one optimization run, fed by the loop's events (a :class:`LoopEvents` that forwards
    every event to ``inner``, the CLI's progress display)."""

    def __init__(self, inner: Any, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.inner = inner
        self.registry = CollectorRegistry()
        r = self.registry
        self.evaluations = Counter("convergence_evaluations", "Test-case calls finished", registry=r)
        self.errors = Counter("convergence_errors", "Test-case calls that failed after retries", registry=r)
        self.cost = Counter("convergence_cost_usd", "What the finished calls cost (USD)", registry=r)
        self.trials = Counter("convergence_trials", "Configurations scored", registry=r)
        self.best = Gauge("convergence_best_score", "Best score so far", registry=r)
        self.generation = Gauge("convergence_generation", "The latest generation finished (1-based)", registry=r)
        self.share = Gauge("convergence_agent_share", "Each society agent's share of the slots", ["agent"],
                           registry=r)
        self.server = MetricsServer(r, port, host)

    def close(self) -> None:
        self.server.close()

    # LoopEvents -----------------------------------------------------------------------------
    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None:
        self.inner.generation_started(generation, total, n_trials, n_cases)

    def case_finished(self, trial: Proposal, result: CaseResult, cached: bool) -> None:
        if not cached:
            self.evaluations.inc()
            self.cost.inc(result.call.cost_usd)
            if result.call.error is not None:
                self.errors.inc()
        self.inner.case_finished(trial, result, cached)

    def trial_finished(self, trial: TrialRecord, best: TrialRecord | None) -> None:
        self.trials.inc()
        if best is not None:
            self.best.set(best.score)
        self.inner.trial_finished(trial, best)

    def generation_finished(self, generation: int, best: TrialRecord | None, new: list[TrialRecord]) -> None:
        self.generation.set(generation + 1)
        if best is not None:
            self.best.set(best.score)
        self.inner.generation_finished(generation, best, new)

    def society_step(self, generation: int, reports: dict[str, AgentReport], new: list[TrialRecord]) -> None:
        for name, rep in reports.items():
            self.share.labels(agent=name).set(rep.share)
        step = getattr(self.inner, "society_step", None)
        if step is not None:
            step(generation, reports, new)

    def shares(self, shares: Mapping[str, float]) -> None:
        """A learner's new shares (next generation)."""
        for name, value in shares.items():
            self.share.labels(agent=name).set(value)

    def message(self, text: str) -> None:
        self.inner.message(text)
