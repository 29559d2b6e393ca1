"""A local Ray shared by every test that needs one (Ray start-up costs seconds, so it is started once)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """``ray.init(num_cpus=2)`` once per test session; yields the GCS address so subprocesses can attach."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    # no shutdown here: another module may hold the same session-scoped Ray; Ray shuts down at exit
