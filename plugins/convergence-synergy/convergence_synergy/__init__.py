"""Synergy learners for Convergence: each society agent's share of a generation's proposals,
learned from the improvement its proposals bring per unit of cost.

Entry point ``learner.synergy`` (group ``convergence.plugins``) -> :func:`make_learner`;
choose it with ``society.learner: {plugin: synergy, algorithm: actor_critic | double_dqn | sac | td3}``.

Functions for the CLI (``state_dir`` is the learner's per-study folder):
:func:`show`, :func:`export`, :func:`import_`, :func:`reset`, :func:`history`, :func:`plot_history`,
and :func:`train` (learn offline from recorded generations). Entry point ``cli.synergy`` ->
:data:`convergence_synergy.cli.app` (``convergence synergy ...``).

The names below are imported on first use (PEP 562), so importing the package, or its small
:mod:`convergence_synergy.cli`, imports no PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convergence_synergy.learner import SynergyLearner, make_learner, train
    from convergence_synergy.store import SynergyFileError, export, history, import_, plot_history, reset, show

_WHERE = {"SynergyLearner": "learner", "make_learner": "learner", "train": "learner",
          **dict.fromkeys(("SynergyFileError", "export", "history", "import_", "plot_history", "reset", "show"),
                          "store")}

__all__ = ["SynergyFileError", "SynergyLearner", "export", "history", "import_", "make_learner", "plot_history",
           "reset", "show", "train"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"convergence_synergy.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convergence_synergy' has no attribute {name!r}")
