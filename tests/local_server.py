"""A threaded HTTP server on 127.0.0.1 for tests, stopped when the block ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler], **attrs: Any) -> Iterator[str]:
    """Serve ``handler`` (a subclass bound with ``attrs`` as class attributes) and yield its base URL."""
    bound = type(f"Bound{handler.__name__}", (handler,), attrs)
    server_cls = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 256})  # no SYN drops
    httpd = server_cls(("127.0.0.1", 0), bound)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
