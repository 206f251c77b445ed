"""The documented home of the SAO Python API (``SAOMixin``, ``SAOConfig``):
:mod:`convergence.society.sao.mixin` under this name."""

import sys

from convergence.society.sao import mixin as _mixin

sys.modules[__name__] = _mixin
