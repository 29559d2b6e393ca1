"""S3 round trip: URL list read from s3://, output written to s3://, against moto's S3 server on loopback."""

from __future__ import annotations

import io
import json
import tarfile

import fsspec
import pyarrow.parquet as pq
import pytest
from ray_local import ray_local  # noqa: F401 - session fixture

from core import schema
from curate.demo import demo_corpus
from pipelines import build_bbst

BUCKET = "bbst-test"


@pytest.mark.ray
@pytest.mark.slow
def test_s3_round_trip(s3_endpoint, tmp_path, ray_local):  # noqa: F811
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    if not fs.exists(BUCKET):  # the moto server is shared by the session's S3 tests
        fs.mkdir(BUCKET)
    with demo_corpus(tmp_path, n_images=8, min_side=64, seed=5) as urls:
        fs.put(str(urls), f"{BUCKET}/lists/urls.parquet")
        # storage options travel to the Ray workers inside the pickled filesystem (workers don't share our env)
        summary = build_bbst.main([
            "--urls", f"s3://{BUCKET}/lists/urls.parquet", "--out", f"s3://{BUCKET}/runs/demo", "--min-side", "64",
            "--allow-private-network", "--set", f"storage_options={json.dumps(opts)}",
            "--set", "reader.rows_per_partition=6", "--set", "shards.target_samples=3", "--set", "progress_interval_s=0",
        ])
    root = f"{BUCKET}/runs/demo"
    fs.invalidate_cache()
    assert fs.exists(f"{root}/{schema.SUMMARY_FILE}") and fs.exists(f"{root}/{schema.REPORT_FILE}")
    assert not fs.exists(f"{root}/{schema.STAGING}")
    on_s3 = json.loads(fs.cat(f"{root}/{schema.SUMMARY_FILE}"))
    assert on_s3["rows_in"] == summary["rows_in"] == sum(summary["counts_by_status"].values())
    metas = fs.ls(f"{root}/{schema.META_DIR}", detail=False)
    assert len(metas) == -(-summary["rows_in"] // 6)
    rows = sum(pq.read_table(io.BytesIO(fs.cat(m))).num_rows for m in metas)
    assert rows == summary["rows_in"]
    manifest = json.loads(fs.cat(f"{root}/{schema.MANIFEST_FILE}"))
    samples = 0
    for entry in manifest["shardlist"]:
        data = fs.cat(f"{root}/{schema.SHARDS_DIR}/{entry['url'].rsplit('/', 1)[-1]}")
        assert len(data) == entry["filesize"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            samples += sum(1 for m in tf.getmembers() if not m.name.endswith(".json"))
    assert samples == summary["counts_by_status"]["ok"] > 0


def test_failed_write_leaves_no_object(s3_endpoint):
    """A shard whose writing fails part-way leaves no object, small (one PUT) or large (multipart upload)."""
    from core import synthetic
    from core.tarwrite import write_shard

    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    image = synthetic.encode(synthetic.photo_like(64, 64, seed=0), "JPEG")
    for name, blob in (("small", image), ("large", image + b"\0" * (6 << 20))):  # > s3fs's 5 MiB block: parts
        good = [{"key": f"{i:04d}", "ext": "jpg", "image": blob} for i in range(2)]
        bad = good + [{"key": "9999", "ext": "gif", "image": image}]  # refused after the others are written
        with pytest.raises(ValueError, match="ext must be"):
            write_shard(f"s3://{BUCKET}/failed/{name}.tar", iter(bad), fs=fs, ordered=True)
        fs.invalidate_cache()
        assert not fs.exists(f"{BUCKET}/failed/{name}.tar")
        entry = write_shard(f"s3://{BUCKET}/failed/{name}.tar", iter(good), fs=fs, ordered=True)
        fs.invalidate_cache()
        assert fs.size(f"{BUCKET}/failed/{name}.tar") == entry["filesize"]
