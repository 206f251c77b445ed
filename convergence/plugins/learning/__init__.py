"""The documented import path of the RLP and SAO Python APIs (see :mod:`convergence.plugins`)."""
