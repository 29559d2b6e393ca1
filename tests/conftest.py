"""Shared pytest fixtures: the loopback fault-injection HTTP server, moto's S3 server, one torch thread."""

from __future__ import annotations

import os

import pytest
from http_faults import FaultServer
from loopback import free_port

# Every Ray the tests start (the shared local one, the private multi-node cluster, `ray job submit` clients) is
# on loopback and lives for one session. Ray >= 2.5x turns on token authentication by default for a new local
# cluster and keeps the token in ~/.ray/auth_token, shared by every cluster of the user; clusters started in one
# session then disagree about it. One explicit mode for all of them, inherited by every subprocess, avoids that.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def fault_server():
    """A started :class:`http_faults.FaultServer` on 127.0.0.1 (random port); ``fault_server.url("ok.jpg")``."""
    with FaultServer() as server:
        yield server


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback; yields its endpoint URL (credentials ``testing``/``testing``)."""
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    # no endpoint in the environment: the loopback endpoint reaches the URL-list reader, the output store and
    # the Ray workers only through --set storage_options, as it would for a user's own S3-compatible store
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing"}.items():
        mp.setenv(k, v)
    yield endpoint
    mp.undo()
    server.stop()


@pytest.fixture
def one_torch_thread():
    """Tiny-model tests run on one torch thread: faster on 2 cores than two threads fighting over small ops."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def pytest_collection_modifyitems(session, config, items):
    """The private multi-node cluster runs before the shared test Ray starts.

    Two live Ray clusters on one host can cross wires in runtime-env set-up (a worker of one asks its GCS for the
    other's working-dir package); run first, the private cluster is up and torn down while it is the only one.
    """
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_multinode.py") else 1)
