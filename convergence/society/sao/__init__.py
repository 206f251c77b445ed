"""SAO: self-synthetic preference data, and duels of configurations judged by the society's LLM.

``mixin.py`` is the Python API (:class:`SAOMixin`, :class:`SAOConfig`; also importable as
``convergence.plugins.learning.sao``), ``agent.py`` the society agent built on it; ``personas``,
``similarity`` (quality filters and diversity), ``verdict`` (the judge's parsed ranking),
``ratings`` (configurations rated from duels) and ``dataset`` (TRL DPO export / import) are its parts.
The pair type itself is :class:`convergence.core.sao_pair.SAOPair` (the store keeps pairs).
"""

from convergence.society.sao.mixin import SAOConfig, SAOMixin

__all__ = ["SAOConfig", "SAOMixin"]
