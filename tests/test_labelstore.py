"""Label store: WAL durability, undo/edit window, consensus, import/export round trip, concurrent annotators."""

import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from classifier.labeling.store import EDITABLE_RECENT, LabelStore, LabelStoreError

REPO = Path(__file__).resolve().parents[1]


def test_wal_mode_and_commit_visible_to_other_connection(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    assert store.journal_mode() == "wal"
    store.add_items([("0000000000001", None, "a.jpg")])
    lid = store.add_label("0000000000001", "stylistic", "ann", round=3, model_version="v1", score_shown=0.42,
                          reason="uncertain")
    # a separate connection (another process would see the same) reads the committed row at once
    other = sqlite3.connect(tmp_path / "l.sqlite")
    row = other.execute("SELECT key, label, annotator, round, model_version, score_shown, reason, created_at "
                        "FROM labels WHERE id = ?", (lid,)).fetchone()
    assert row[:7] == ("0000000000001", "stylistic", "ann", 3, "v1", 0.42, "uncertain")
    assert row[7] > 0


def test_bad_decision_rejected(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    with pytest.raises(LabelStoreError, match="label must be one of"):
        store.add_label("k", "maybe", "ann")
    with pytest.raises(LabelStoreError, match="annotator"):
        store.add_label("k", "skip", "")
    assert store.labels() == []


def test_undo_reaches_back_exactly_ten(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    ids = [store.add_label(f"k{i:02d}", "stylistic" if i % 2 else "not_stylistic", "ann") for i in range(12)]
    store.add_label("other", "stylistic", "bob")  # another annotator's decisions are not in ann's window
    undone = [store.undo("ann")["id"] for _ in range(EDITABLE_RECENT)]
    assert undone == ids[::-1][:EDITABLE_RECENT]
    assert store.undo("ann") is None  # the 11th and 12th newest stay as they are
    live = {r["key"] for r in store.labels()}
    assert live == {"k00", "k01", "other"}
    all_rows = store.labels(include_undone=True)
    assert len(all_rows) == 13 and sum(r["undone"] for r in all_rows) == 10  # history kept, nothing deleted


def test_edit_within_last_ten(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    ids = [store.add_label(f"k{i:02d}", "stylistic", "ann", model_version="v1") for i in range(11)]
    with pytest.raises(LabelStoreError, match="not among the last"):
        store.edit("ann", ids[0], "not_stylistic")  # the 11th newest is no longer editable
    with pytest.raises(LabelStoreError, match="not among the last"):
        store.edit("bob", ids[5], "not_stylistic")  # nor is someone else's decision
    new = store.edit("ann", ids[5], "not_stylistic")
    live = {r["key"]: r for r in store.labels()}
    assert live["k05"]["label"] == "not_stylistic" and live["k05"]["id"] == new and live["k05"]["source"] == "edit"
    assert store.consensus()["k05"] == 0


def test_consensus_counts_and_skips(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    store.add_label("a", "stylistic", "ann")
    store.add_label("a", "stylistic", "bob")
    store.add_label("b", "stylistic", "ann")
    store.add_label("b", "not_stylistic", "bob")  # tie: left out of training
    store.add_label("c", "skip", "ann")  # a skip is never a negative
    store.add_label("d", "not_stylistic", "ann")
    store.add_label("d", "stylistic", "ann")  # the annotator's latest decision counts
    assert store.consensus() == {"a": 1, "d": 1}
    c = store.counts()
    assert c["by_label"] == {"stylistic": 4, "not_stylistic": 2, "skip": 1}
    assert c["by_annotator"]["bob"] == {"stylistic": 1, "not_stylistic": 1, "skip": 0}
    assert store.label_count() == 6 and store.label_count(include_skips=True) == 7


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_import_round_trip(tmp_path, suffix):
    store = LabelStore(tmp_path / "a.sqlite")
    store.add_label("0000010000002", "stylistic", "ann", round=1, model_version="bbst-clf-1", score_shown=0.61)
    store.add_label("0000010000003", "not_stylistic", "bob", round=2, model_version=None, score_shown=None)
    store.add_label("0000010000004", "skip", "ann", reason="random")
    store.add_label("0000010000005", "stylistic", "ann")
    store.undo("ann")
    out = tmp_path / f"labels{suffix}"
    assert store.export_labels(out) == 3
    if suffix == ".parquet":
        assert pq.read_table(out).column("y").to_pylist() == [1, 0, None]
    other = LabelStore(tmp_path / "b.sqlite")
    assert other.import_labels(out) == 3
    cols = ("key", "label", "annotator", "round", "model_version", "score_shown", "reason")
    a = [tuple(r[c] for c in cols) for r in store.labels()]
    b = [tuple(r[c] for c in cols) for r in other.labels()]
    assert a == b  # leading zeros of keys survive CSV too
    # times are exported as ISO 8601 UTC (milliseconds in CSV) and read back as the same instant
    for ra, rb in zip(store.labels(), other.labels()):
        assert rb["created_at"] == pytest.approx(ra["created_at"], abs=1e-3)
    if suffix == ".csv":
        first = out.read_text().splitlines()[1]
        assert re.search(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"', first), first
    else:
        assert str(pq.read_table(out).schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert {r["source"] for r in other.labels()} == {"import"}


def test_import_errors_name_file_and_row(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite")
    bad = tmp_path / "bad.csv"
    bad.write_text("key,label\n0001,stylistic\n0002,perhaps\n")
    with pytest.raises(LabelStoreError, match=r"bad\.csv: row 2"):
        store.import_labels(bad)
    assert store.labels() == []  # nothing half-imported
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("name,value\nx,1\n")
    with pytest.raises(LabelStoreError, match="needs a 'key' column"):
        store.import_labels(nocol)
    ok = tmp_path / "ok.csv"
    ok.write_text("key,y\n0001,1\n0002,0\n")
    assert store.import_labels(ok, default_annotator="legacy") == 2
    assert store.consensus() == {"0001": 1, "0002": 0}


class _WritesMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_import_of_a_parquet_with_pickled_extension_metadata_runs_nothing(tmp_path):
    """A Parquet column may claim a Python extension type whose metadata is a pickle; the import reads plain values."""
    import pyarrow as pa

    marker = tmp_path / "ran"
    meta = {b"ARROW:extension:name": b"arrow.py_extension_type",
            b"ARROW:extension:metadata": pickle.dumps(_WritesMarker(marker))}
    schema = pa.schema([pa.field("key", pa.string(), metadata=meta), pa.field("label", pa.string())])
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"key": ["0001", "0002"], "label": ["stylistic", "skip"]}, schema=schema), path)
    assert pq.read_schema(path).field("key").metadata[b"ARROW:extension:name"] == b"arrow.py_extension_type"
    store = LabelStore(tmp_path / "l.sqlite")
    assert store.import_labels(path) == 2
    assert [r["key"] for r in store.labels()] == ["0001", "0002"] and not marker.exists()


def test_concurrent_annotators_two_connections(tmp_path):
    path = tmp_path / "l.sqlite"
    stores = [LabelStore(path), LabelStore(path)]  # two connections, as two server processes would hold
    errors = []

    def annotate(name, store):
        try:
            for i in range(40):
                store.add_label(f"{name}-{i}", "stylistic" if i % 2 else "not_stylistic", name)
                if i % 7 == 0:
                    store.undo(name)
        except (sqlite3.Error, LabelStoreError) as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(f"ann{j}", stores[j % 2])) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = LabelStore(path).labels(include_undone=True)
    assert len(rows) == 160 and len({r["id"] for r in rows}) == 160
    for j in range(4):
        mine = [r for r in rows if r["annotator"] == f"ann{j}"]
        assert len(mine) == 40 and sum(r["undone"] for r in mine) == 6


def test_killed_writer_loses_no_confirmed_label(tmp_path):
    """A process SIGKILLed mid-stream keeps every decision it reported as committed."""
    path = tmp_path / "l.sqlite"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from classifier.labeling.store import LabelStore
        s = LabelStore({str(path)!r})
        i = 0
        while True:
            lid = s.add_label(f"k{{i}}", "stylistic", "ann")
            print(lid, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    confirmed = []
    for line in proc.stdout:
        confirmed.append(int(line))
        if len(confirmed) >= 30:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ids = {r["id"] for r in LabelStore(path).labels()}
    assert set(confirmed) <= ids


def test_annotator_names_are_normalised_to_one_spelling(tmp_path):
    from classifier.labeling.store import normalize_annotator

    assert {normalize_annotator(n) for n in ("bob", "BOB", "bob ", " Bob", "ｂob", "ＢＯＢ", "bob\t")} == {"bob"}
    assert normalize_annotator("Ann  Lee") == "ann lee" and normalize_annotator("Straße") == "strasse"
    store = LabelStore(tmp_path / "n.sqlite")
    for i, name in enumerate(("bob", "BOB", "bob ", "ｂob")):
        store.add_label(f"k{i}", "stylistic", name)
    store.add_label("k0", "not_stylistic", "Ann")
    assert set(store.counts()["by_annotator"]) == {"bob", "ann"}
    assert store.counts()["by_annotator"]["bob"]["stylistic"] == 4
    assert len(store.recent("BOB ")) == 4 and store.undo("ＢＯＢ")["key"] == "k3"
    # one person cannot outvote another by changing case: k0 is a 1-1 tie, left out of the consensus
    assert "k0" not in store.consensus()
    with pytest.raises(LabelStoreError, match="annotator"):
        store.add_label("k9", "skip", "<script>")
    # a database written before names were normalised is rewritten once when opened
    store.close()
    raw = sqlite3.connect(tmp_path / "n.sqlite")
    raw.execute("INSERT INTO labels(key, label, annotator, created_at) VALUES ('k5', 'stylistic', 'ＡＮＮ ', 0)")
    raw.execute("INSERT INTO assignments(key, annotator, created_at) VALUES ('k6', 'Ann', 0)")
    raw.execute("DELETE FROM meta WHERE name = 'annotators_normalised'")
    raw.commit()
    raw.close()
    again = LabelStore(tmp_path / "n.sqlite")
    assert set(again.counts()["by_annotator"]) == {"bob", "ann"} and again.assignments("ann")[0]["key"] == "k6"


def test_import_values_are_checked_with_row_and_column(tmp_path):
    store = LabelStore(tmp_path / "i.sqlite")
    bad = {
        "round": ("key,label,round\nk1,stylistic,1\nk2,stylistic,abc\n", "row 2: round 'abc'"),
        "negative round": ("key,label,round\nk1,stylistic,-1\n", "row 1: round"),
        "score": ("key,label,score_shown\nk1,skip,7\n", "row 1: score_shown"),
        "score text": ("key,label,score_shown\nk1,skip,high\n", "row 1: score_shown 'high'"),
        "time": ("key,label,created_at\nk1,skip,yesterday\n", "row 1: created_at 'yesterday'"),
        "annotator": ("key,label,annotator\nk1,skip,<b>\n", "row 1: annotator '<b>'"),
        "label": ("key,label\nk1,maybe\n", "row 1: bad key/label"),
    }
    for name, (text, message) in bad.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
        with pytest.raises(LabelStoreError, match=re.escape(message)):
            store.import_labels(path)
    assert store.labels() == []  # nothing half-imported
    good = tmp_path / "good.csv"
    good.write_text("key,label,round,score_shown,created_at,annotator\n"
                    "k1,1,2,0.5,2025-01-31T12:00:00.000Z,ＢＯＢ\nk2,0,,,1700000000,\n")
    assert store.import_labels(good, default_annotator="Import") == 2
    rows = store.labels()
    assert [(r["annotator"], r["round"], r["score_shown"]) for r in rows] == [("bob", 2, 0.5), ("import", 0, None)]
    assert rows[0]["created_at"] == 1738324800.0 and rows[1]["created_at"] == 1700000000.0


def test_assignments_commit_in_batches(tmp_path):
    store = LabelStore(tmp_path / "a.sqlite")
    commits = []
    store._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    pairs = [(f"k{i}", f"ann{j}") for i in range(1100) for j in range(5)]
    assert store.assign_many(pairs, "agreement", batch=1000) == 5500
    assert len(commits) == 6  # 5500 rows, 1000 per transaction: other writers get the lock in between
    assert len(store.assignments()) == 5500 and len(store.assignments("ANN3")) == 1100
