"""Old path of RLP's advantage estimates: :mod:`convergence.society.rlp.gae` under this name."""

import sys

from convergence.society.rlp import gae as _gae

sys.modules[__name__] = _gae
