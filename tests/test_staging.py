"""Staging without Ray: the URL list in partitions, a unit downloaded, checked and staged, partitions committed."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from core import schema
from core.store import Store
from curate import staging
from curate.downloader import DownloadConfig
from curate.imagecheck import ImageCheckConfig
from curate.reader import ReaderConfig


def test_units_cover_a_partition_in_order():
    units = staging.units_of(3, 10, 4)
    assert [(u.start, u.stop) for u in units] == [(0, 4), (4, 8), (8, 10)]
    assert {u.partition for u in units} == {3} and [u.index for u in units] == [0, 1, 2]
    assert len(staging.units_of(0, 0, 4)) == 1


def test_plan_units_leaves_out_what_is_staged(tmp_path):
    store = Store(str(tmp_path / "out"))
    parts = {0: 10, 1: 10, 2: 3}
    store.write_parquet(staging.rows_rel(0), pa.table({"key": ["a"]}))  # partition 0 committed
    store.write_parquet(staging.unit_rows_rel(1, 1), pa.table({"key": ["b"]}))  # unit 1 of partition 1 staged
    pending, units_per, todo = staging.plan_units(store, parts, 4)
    assert pending == [1, 2] and units_per == {1: 3, 2: 1}
    assert [(u.partition, u.index) for u in todo] == [(1, 0), (1, 2), (2, 0)]


def test_stage_list_once_then_from_its_record(tmp_path):
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"http://h/{i}.jpg" for i in range(5)]}), urls)
    store = Store(str(tmp_path / "out"))
    parts = staging.stage_list(store, str(urls), ReaderConfig(rows_per_partition=2))
    assert parts == {0: 2, 1: 2, 2: 1}
    urls.unlink()  # a resume reads the staged partitions, not the list
    assert staging.stage_list(store, str(urls), ReaderConfig(rows_per_partition=2)) == parts


def test_unit_stages_bytes_and_rows_on_the_store(tmp_path, fault_server):
    urls = tmp_path / "urls.parquet"
    routes = ["ok.jpg", "404", "tiny.jpg", "ok.png", "html"]
    pq.write_table(pa.table({"url": [fault_server.url(r) for r in routes], "license": ["x"] * 5}), urls)
    store = Store(str(tmp_path / "out"))
    parts = staging.stage_list(store, str(urls), ReaderConfig())
    proc = staging.UnitProcessor(store, DownloadConfig(allow_private_network=True, retries=0, timeout=3),
                                 ImageCheckConfig(min_side=64))
    result = proc(staging.units_of(0, parts[0], 3)[1])  # rows 3..4
    assert result["rows"] == 2 and result["statuses"] == {"ok": 1, "not_image": 1}
    assert "not_image" in result["examples"]
    first = proc(staging.units_of(0, parts[0], 3)[0])
    assert first["statuses"] == {"ok": 1, "download_error": 1, "too_small": 1}
    assert staging.done_units(store, 0) == {0, 1}
    assert staging.compact_partition(store, 0, 2) == 5
    assert staging.committed_partitions(store) == {0}
    rows = store.read_parquet(staging.rows_rel(0))
    assert rows["key"].to_pylist() == [schema.make_key(0, i) for i in range(5)]
    assert set(staging.STAGED_COLUMNS) <= set(rows.column_names) and "license" in rows.column_names
    ok = [r for r in rows.to_pylist() if r["status"] == "ok"]
    datas = staging.read_refs(store, [r["_ref_path"] for r in ok], [r["_ref_offset"] for r in ok],
                              [r["_ref_length"] for r in ok])
    import hashlib

    assert [hashlib.sha256(d).hexdigest() for d in datas] == [r["sha256"] for r in ok]
    assert all(r["_ref_path"] is None for r in rows.to_pylist() if r["status"] != "ok")


def test_to_table_types_missing_columns():
    import numpy as np

    t = staging.to_table({"width": np.array([None, None], dtype=object), "phash": np.array([None, "ab"], dtype=object),
                          "score": np.array([float("nan"), 0.5])})
    assert t.schema.field("width").type == pa.int64() and t["score"].to_pylist() == [None, 0.5]


def test_a_unit_keeps_a_bounded_number_of_downloads_waiting_for_the_check(tmp_path, fault_server):
    """However large the unit, at most twice the pool's threads are downloaded (or downloading) and not checked."""
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [fault_server.url("ok.jpg")] * 40}), urls)
    store = Store(str(tmp_path / "out"))
    parts = staging.stage_list(store, str(urls), ReaderConfig())
    proc = staging.UnitProcessor(store, DownloadConfig(allow_private_network=True, retries=0, timeout=3, threads=2,
                                                       per_host_concurrency=2), ImageCheckConfig(min_side=64))
    check, ahead = proc.checker.check, []

    def slow_check(data, source=None):
        ahead.append(fault_server.hits("ok.jpg") - len(ahead))  # requests made beyond the images checked
        import time

        time.sleep(0.05)
        return check(data, source)

    proc.checker.check = slow_check
    fault_server.reset_counts()
    result = proc(staging.units_of(0, parts[0], 40)[0])
    assert result["statuses"] == {"ok": 40}
    assert max(ahead) <= 2 * 2, ahead
