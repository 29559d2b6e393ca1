"""Run a labeling app on a loopback port inside the test process (uvicorn in a thread), for real HTTP and browsers."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from loopback import free_port


@contextmanager
def serve(app):
    """Yield ``http://127.0.0.1:PORT`` while ``app`` is served there; stops the server afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise AssertionError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
