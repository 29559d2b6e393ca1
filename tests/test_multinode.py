"""The build on a multi-node Ray cluster, submitted with `ray job submit`, writing to S3 (moto on loopback).

The head raylet has no CPUs, so every task runs on one of two worker raylets; the URL list, the staging files
and the outputs live only in the object store, so nothing can depend on a file on the driver's node.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_cluster import private_cluster
from ray_local import job_working_dir, submit_job
from test_s3 import BUCKET

from core import schema
from curate import outputs
from curate.demo import demo_corpus


@pytest.mark.ray
@pytest.mark.slow
def test_multinode_job_writes_a_complete_output_to_s3(s3_endpoint, tmp_path):
    pytest.importorskip("aiohttp_cors")  # ray[default]: the dashboard and its job API
    import fsspec

    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    if not fs.exists(BUCKET):  # the moto server is shared by the session's S3 tests
        fs.mkdir(BUCKET)
    ray_cli = Path(sys.executable).parent / "ray"
    ray_cli = str(ray_cli) if ray_cli.exists() else shutil.which("ray")
    root = f"{BUCKET}/multinode/out"
    with demo_corpus(tmp_path, n_images=12, min_side=64, seed=9) as urls, private_cluster(workers=2) as cluster:
        n_rows = pq.read_table(urls).num_rows
        fs.put(str(urls), f"{BUCKET}/multinode/urls.parquet")
        cmd = [ray_cli, "job", "submit", "--address", cluster["dashboard"], "--working-dir", job_working_dir(tmp_path), "--",
               sys.executable, "pipelines/build_bbst.py", "--urls", f"s3://{BUCKET}/multinode/urls.parquet",
               "--out", f"s3://{root}", "--min-side", "64", "--allow-private-network",
               "--set", f"storage_options={json.dumps(opts)}", "--set", "reader.rows_per_partition=8",
               "--set", "ray.unit_rows=3", "--set", "shards.target_samples=3", "--set", "progress_interval_s=0",
               "--set", "ray.dedup_buckets=2"]
        proc = submit_job(cmd, cwd=tmp_path, timeout=300)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "succeeded" in log and "bbst build:" in proc.stdout
    fs.invalidate_cache()
    summary = json.loads(fs.cat(f"{root}/{schema.SUMMARY_FILE}"))
    record = json.loads(fs.cat(f"{root}/{outputs.RUN_FILE}"))
    assert record["state"] == "complete" and not fs.exists(f"{root}/_staging")
    assert summary["rows_in"] == n_rows == sum(summary["counts_by_status"].values())
    metas = sorted(fs.ls(f"{root}/{schema.META_DIR}", detail=False))
    rows = [r for m in metas for r in pq.read_table(io.BytesIO(fs.cat(m))).to_pylist()]
    assert len(rows) == n_rows and len({r["key"] for r in rows}) == n_rows
    # every expected outcome of the demo corpus, with a duplicate and a near duplicate across partitions
    mismatched = [(r["url"], r["expect"], r["status"]) for r in rows if r["expect"] != r["status"]]
    assert not mismatched
    ok = {r["key"]: r for r in rows if r["status"] == "ok"}
    manifest = json.loads(fs.cat(f"{root}/{schema.MANIFEST_FILE}"))
    seen = {}
    for entry in manifest["shardlist"]:
        data = fs.cat(f"{root}/{entry['url']}")
        assert len(data) == entry["filesize"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                if ext != "json":
                    assert key not in seen
                    seen[key] = entry["url"].rsplit("/", 1)[-1]
    assert set(seen) == set(ok) and all(ok[k]["shard"] == s for k, s in seen.items())
    assert f"{schema.SHARDS_DIR}/{next(iter(seen.values()))}" in record["files"]
