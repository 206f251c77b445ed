"""Import paths kept for users: ``convergence.plugins.learning.rlp`` / ``.sao`` (the RLP and SAO Python
APIs, at home in :mod:`convergence.society.rlp` / :mod:`convergence.society.sao`) and
``convergence.plugins.registry`` (:mod:`convergence.registry`). Installable plugins live in the
top-level ``plugins/`` folder of the repository, as their own distributions."""
