"""Run record, fingerprint and refusals of curate/outputs.py (no Ray)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import InputError
from core.store import Store
from curate import outputs
from curate.build_config import BuildConfig


def _list(path, n=2):
    pq.write_table(pa.table({"url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(n)]}), path)
    return str(path)


def _fp(urls, **kw):
    cfg = BuildConfig(urls=urls, **kw)
    return outputs.fingerprint(cfg, outputs.list_identity(urls))


def test_list_identity_names_the_flag(tmp_path):
    with pytest.raises(InputError, match=r"^--urls .*missing.parquet: no such file"):
        outputs.list_identity(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--urls"):
        outputs.list_identity(str(tmp_path / "empty"))
    ident = outputs.list_identity(_list(tmp_path / "a.parquet"))
    assert len(ident) == 1 and ident[0]["size"] > 0 and ident[0]["version"]


def test_fingerprint_changes_with_list_and_result_settings_only(tmp_path):
    urls = _list(tmp_path / "a.parquet")
    base = _fp(urls)
    assert _fp(urls) == base
    assert _fp(urls, min_side=512) != base
    cfg = BuildConfig(urls=urls)
    cfg.download.threads = 3  # speed only
    assert outputs.fingerprint(cfg, outputs.list_identity(urls)) == base
    _list(tmp_path / "a.parquet", n=3)  # same path, new content
    os.utime(tmp_path / "a.parquet", (1, 1))
    changed = _fp(urls)
    assert changed != base
    assert "changed since that run" in outputs.describe_difference(base, changed)
    other = _fp(_list(tmp_path / "b.parquet"))
    text = outputs.describe_difference(base, other)
    assert "a.parquet" in text and "b.parquet" in text


def test_claim_writes_the_record_first_and_refuses_other_runs(tmp_path):
    out = tmp_path / "out"
    store = Store(str(out))
    fp_a = _fp(_list(tmp_path / "a.parquet"))
    record, previous = outputs.claim(store, fp_a)
    assert previous is None and (out / outputs.RUN_FILE).is_file() and record.state == "running"
    _, previous = outputs.claim(store, fp_a)  # resume
    assert previous is not None and previous.fingerprint == fp_a
    fp_b = _fp(_list(tmp_path / "b.parquet"))
    with pytest.raises(outputs.OutputError, match="unfinished build") as err:
        outputs.claim(store, fp_b)
    assert "a.parquet" in str(err.value) and "b.parquet" in str(err.value)
    record.state = "complete"
    store.write_json(outputs.RUN_FILE, record.to_json())
    with pytest.raises(outputs.OutputError, match="finished build"):
        outputs.claim(store, fp_b)


def test_foreign_folders_and_files_are_refused_untouched(tmp_path):
    user = tmp_path / "mine"
    (user / "shards").mkdir(parents=True)
    (user / "shards" / "mine.tar").write_bytes(b"user data")
    with pytest.raises(outputs.OutputError, match="not a bbst output"):
        outputs.claim(Store(str(user)), {"x": 1})
    assert (user / "shards" / "mine.tar").read_bytes() == b"user data"
    assert not (user / outputs.RUN_FILE).exists()
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        outputs.check_out_path(Store(str(afile)))
    outputs.check_out_path(Store(str(tmp_path / "new")))  # a new folder is fine


def test_only_recorded_names_and_their_temporaries_are_removable():
    ours = {"style-000000.tar"}
    assert outputs.removable("style-000000.tar", ours)
    assert outputs.removable(".style-000000.tar.tmp-0123456789ab", ours)
    assert not outputs.removable("mine.tar", ours)
    assert not outputs.removable(".mine.tar.tmp-0123456789ab", ours)
    assert outputs.temp_of(".a.tar.tmp-zzz") is None
