"""Optional capabilities with a public Python API (``convergence.plugins.learning``)."""
