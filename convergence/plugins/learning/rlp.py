"""The documented home of the RLP Python API (``RLPMixin``, ``RLPConfig``):
:mod:`convergence.society.rlp.mixin` under this name."""

import sys

from convergence.society.rlp import mixin as _mixin

sys.modules[__name__] = _mixin
