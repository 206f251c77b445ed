"""Prometheus metrics of the synergy learner: its latest weights and learning state, read from
its files at every scrape; ``convergence synergy serve`` serves them with Convergence's
:class:`~convergence.tracing.prometheus.MetricsServer`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class SynergyCollector:
    """The synergy learner's latest state, read from its files at each scrape (``synergy serve``)."""

    def __init__(self, show: Callable[[], Mapping[str, Any]], history: Callable[[], list[dict[str, Any]]]) -> None:
        self.show = show
        self.history = history

    @classmethod
    def registry(cls, show: Callable[[], Mapping[str, Any]],
                 history: Callable[[], list[dict[str, Any]]]) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        r = CollectorRegistry()
        r.register(cls(show, history))
        return r

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        info = self.show()
        changes = self.history()
        weight = GaugeMetricFamily("convergence_synergy_weight", "Learned share of each society agent",
                                   labels=["agent"])
        for agent, share in (info.get("shares") or {}).items():
            weight.add_metric([agent], float(share))
        yield weight
        yield GaugeMetricFamily("convergence_synergy_changes", "Changes in the weights' change log",
                                value=float(len(changes)))
        yield GaugeMetricFamily("convergence_synergy_updates", "Learning updates of the stored weights",
                                value=float(info.get("updates") or 0))
        yield GaugeMetricFamily("convergence_synergy_generation", "Generation of the latest update",
                                value=float(info.get("generation") or 0))
        rewards = [e["reward"] for e in changes if isinstance(e.get("reward"), (int, float))]
        yield GaugeMetricFamily("convergence_synergy_last_reward", "Reward of the latest update",
                                value=float(rewards[-1]) if rewards else 0.0)
        algo = GaugeMetricFamily("convergence_synergy_info", "The learner that wrote the weights",
                                 labels=["algorithm"])
        algo.add_metric([str(info.get("algorithm") or "none")], 1.0)
        yield algo
