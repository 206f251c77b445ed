"""RLP: an agent that reasons before it proposes, rewarded by the thought's information gain.

``mixin.py`` is the Python API (:class:`RLPMixin`, :class:`RLPConfig`; also importable as
``convergence.plugins.learning.rlp``), ``agent.py`` the society agent built on it, ``gae.py``
its advantage estimates.
"""

from convergence.society.rlp.mixin import RLPConfig, RLPMixin

__all__ = ["RLPConfig", "RLPMixin"]
