"""Shared pytest fixtures: the loopback fault-injection HTTP server."""

from __future__ import annotations

import pytest
from http_faults import FaultServer


@pytest.fixture(scope="session")
def fault_server():
    """A started :class:`http_faults.FaultServer` on 127.0.0.1 (random port); ``fault_server.url("ok.jpg")``."""
    with FaultServer() as server:
        yield server
