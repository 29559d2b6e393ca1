"""The driver coordinates: its own read/write bytes stay a small fraction of the image bytes the build keeps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from ray_local import ray_local  # noqa: F401 - session fixture
from test_build_bbst import check_invariants

from pipelines import build_bbst


def io_bytes() -> int:
    """This process's read + write syscall bytes so far (files, sockets and pipes alike)."""
    counters = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(counters["rchar"]) + int(counters["wchar"])


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_driver_bytes_are_under_5_percent_of_kept_bytes(tmp_path, fault_server, ray_local):  # noqa: F811
    rng = np.random.default_rng(0)
    urls = []
    for i in range(12):
        noise = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)  # noise: big files, few decode shortcuts
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "JPEG", quality=90)
        urls.append(fault_server.add_bytes(f"big{i}.jpg", buf.getvalue()))
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    out = tmp_path / "out"
    args = ["--urls", str(tmp_path / "urls.parquet"), "--out", str(out), "--min-side", "64",
            "--allow-private-network", "--set", "reader.rows_per_partition=6", "--set", "ray.unit_rows=3",
            "--set", "progress_interval_s=-1", "--set", "report=false", "--set", "shards.target_samples=4"]
    # a first small build pays the driver's one-time imports (Python files read once per process), so the
    # measured build counts what the driver moves per run: the URL list, metadata and task traffic
    pq.write_table(pa.table({"url": urls[:2]}), tmp_path / "warm.parquet")
    build_bbst.main([*args, "--urls", str(tmp_path / "warm.parquet"), "--out", str(tmp_path / "warm")])
    before = io_bytes()
    summary = build_bbst.main(args)
    driver = io_bytes() - before
    check_invariants(out)
    kept = summary["shard_bytes"]
    assert summary["counts_by_status"]["ok"] == 12 and kept > 8_000_000
    print(f"driver bytes {driver} = {driver / kept:.2%} of {kept} shard bytes")
    assert driver < 0.05 * kept, f"driver moved {driver} bytes for {kept} kept bytes"
