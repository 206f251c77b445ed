"""Loading and checking optimization.yaml."""

# models first: compat.py builds on it, and models imports compat at its end
from convergence.config import models as _models  # noqa: F401
