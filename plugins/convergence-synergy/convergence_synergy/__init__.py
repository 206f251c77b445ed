"""Synergy learners for Convergence: each society agent's share of a generation's proposals,
learned from the improvement its proposals bring per unit of cost.

Entry point ``learner.synergy`` (group ``convergence.plugins``) -> :func:`make_learner`;
choose it with ``society.learner: {plugin: synergy, algorithm: actor_critic | double_dqn | sac | td3}``.

Functions for the CLI (``state_dir`` is the learner's per-study folder):
:func:`show`, :func:`export`, :func:`import_`, :func:`reset`, :func:`history`, :func:`plot_history`,
and :func:`train` (learn offline from recorded generations).
"""

from __future__ import annotations

from convergence_synergy.learner import SynergyLearner, make_learner, train
from convergence_synergy.store import SynergyFileError, export, history, import_, plot_history, reset, show

__all__ = ["SynergyFileError", "SynergyLearner", "export", "history", "import_", "make_learner", "plot_history",
           "reset", "show", "train"]
__version__ = "0.1.0"
