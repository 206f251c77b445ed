"""Loading the embedded model prints nothing: llama.cpp's warnings (its ``llama_kv_cache_iswa``
line on every load of Gemma 3) go to the ``convergence.llm.local`` logger at debug level."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging
records = []
log = logging.getLogger("convergence.llm.local")
log.addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r)})())
log.setLevel(logging.DEBUG)
from convergence.llm.local_provider import get_llama
get_llama().create_completion("Hello", max_tokens=2)
print("iswa logged at", sorted({r.levelname for r in records if "llama_kv_cache_iswa" in r.getMessage()}))
"""


@pytest.mark.slow
def test_loading_the_embedded_model_leaks_no_llama_cpp_line_to_the_console() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "llama_kv_cache_iswa" not in done.stderr
    assert "iswa logged at ['DEBUG']" in done.stdout, done.stdout  # not lost: in the log, at debug level
    assert done.stderr.strip() == ""
