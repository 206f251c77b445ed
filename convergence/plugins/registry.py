"""Old home of the plugin registry, kept so existing imports work: :mod:`convergence.registry` under its old name."""

import sys

from convergence import registry as _registry

sys.modules[__name__] = _registry
