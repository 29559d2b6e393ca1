"""SQLite label store for labeling sessions: items, every decision with provenance, retrain rounds, assignments.

The store is append-only for decisions: an undo or an edit never deletes a row, it marks the old row ``undone``
and (for an edit) appends the new decision, so the full history of who decided what, when, under which model
version and with which score on screen is kept. Every write commits before the method returns, in WAL mode with
``synchronous=FULL``, so a decision the caller has been told about survives the process being killed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import sqlite3
import threading
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.errors import BbstError

STYLISTIC = "stylistic"
NOT_STYLISTIC = "not_stylistic"
SKIP = "skip"
DECISIONS: tuple[str, ...] = (STYLISTIC, NOT_STYLISTIC, SKIP)
# Binary target used for training and export; a skip is "unsure", never a negative.
LABEL_VALUE = {STYLISTIC: 1, NOT_STYLISTIC: 0}

EDITABLE_RECENT = 10  # the last ten decisions of an annotator stay editable (Prodigy convention)
ANNOTATOR_PATTERN = r"^[\w][\w .@+-]*$"  # after normalisation: a word character first, then words, space, . @ + -
ANNOTATOR_MAX = 64
ASSIGN_BATCH = 5000  # assignment rows per transaction: other writers get the lock between batches

EXPORT_COLUMNS: tuple[str, ...] = (
    "id", "key", "label", "y", "annotator", "created_at", "round", "model_version", "score_shown", "reason",
    "source",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    sha256 TEXT,
    ref TEXT,
    score REAL,
    score_version TEXT,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('stylistic', 'not_stylistic', 'skip')),
    annotator TEXT NOT NULL,
    created_at REAL NOT NULL,
    round INTEGER NOT NULL DEFAULT 0,
    model_version TEXT,
    score_shown REAL,
    reason TEXT,
    source TEXT NOT NULL DEFAULT 'ui',
    undone INTEGER NOT NULL DEFAULT 0,
    undone_at REAL
);
CREATE INDEX IF NOT EXISTS labels_key ON labels(key);
CREATE INDEX IF NOT EXISTS labels_annotator ON labels(annotator, id);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    metrics TEXT NOT NULL,
    created_at REAL NOT NULL,
    model_version TEXT NOT NULL,
    n_labels INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS assignments (
    key TEXT NOT NULL,
    annotator TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (key, annotator)
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT
);
"""


class LabelStoreError(BbstError, ValueError):
    """Invalid decision, unknown label id, or a malformed import file."""


def _now() -> float:
    return time.time()


def normalize_annotator(name: str) -> str:
    """The one spelling of an annotator name: Unicode NFKC, whitespace runs collapsed to one space and trimmed,
    then case-folded. ``"bob"``, ``"BOB"``, ``" bob "`` and full-width ``"ｂob"`` are all ``"bob"``."""
    return " ".join(unicodedata.normalize("NFKC", str(name)).split()).casefold()


def check_annotator(name) -> str:
    """:func:`normalize_annotator`, then the allowed form (1-64 characters of ``ANNOTATOR_PATTERN``)."""
    if not isinstance(name, str):
        raise LabelStoreError(f"annotator must be text, got {name!r}")
    norm = normalize_annotator(name)
    if not 1 <= len(norm) <= ANNOTATOR_MAX or not re.match(ANNOTATOR_PATTERN, norm):
        raise LabelStoreError(f"annotator {name!r}: 1-{ANNOTATOR_MAX} characters, a letter or digit first, then "
                              "letters, digits, space, . @ + -")
    return norm


def iso_time(t: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds (``2025-01-31T12:00:00.000Z``)."""
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(float(t), _dt.timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time(v) -> float | None:
    """An import's time value: seconds since the epoch, an ISO 8601 string or a timestamp; None when empty."""
    if v is None or v == "":
        return None
    if isinstance(v, _dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)).timestamp()
    if isinstance(v, bool):
        raise TypeError("a time, not a boolean")
    if isinstance(v, (int, float)):
        f = float(v)
    else:
        s = str(v).strip()
        try:
            f = float(s)
        except ValueError:
            d = _dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
            return (d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)).timestamp()
    if not math.isfinite(f) or f < 0:
        raise ValueError("not a time")
    return f


class LabelStore:
    """One SQLite database per labeling session. Thread-safe: one connection guarded by a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise LabelStoreError(f"{self.path}: could not switch SQLite to WAL mode (got {mode!r})")
        # FULL: the WAL is fsynced at every commit, so a confirmed label also survives a power cut.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)
        self._normalise_stored_annotators()

    def _normalise_stored_annotators(self) -> None:
        """A database written before names were normalised: rewrite its names once, so ``BOB`` and ``bob`` count
        as one annotator there too (the rewrite is recorded in ``meta``)."""
        if self.get_meta("annotators_normalised") == "1":
            return
        with self._lock:
            names = [r[0] for r in self._conn.execute(
                "SELECT annotator FROM labels UNION SELECT annotator FROM assignments").fetchall()]
            renames = [(normalize_annotator(n), n) for n in names if normalize_annotator(n) != n]
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("UPDATE labels SET annotator = ? WHERE annotator = ?", renames)
                self._conn.executemany("UPDATE OR IGNORE assignments SET annotator = ? WHERE annotator = ?", renames)
                self._conn.executemany("DELETE FROM assignments WHERE annotator = ?", [(old,) for _, old in renames])
                self._conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('annotators_normalised', '1')")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def journal_mode(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA journal_mode").fetchone()[0]

    def _write(self, sql: str, params: Sequence | None = None, many: Iterable[Sequence] | None = None) -> sqlite3.Cursor:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.executemany(sql, many) if many is not None else self._conn.execute(sql, params or ())
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return cur

    def _read(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file (what any reader of the file alone then sees)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def get_meta(self, name: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0]["value"] if rows else default

    def set_meta(self, name: str, value: str) -> None:
        self._write("INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (name, value))

    # ------------------------------------------------------------------ items
    def add_items(self, items: Iterable[tuple[str, str | None, str | None]]) -> int:
        """Register pool items ``(key, sha256 or None, ref)``; existing keys keep their scores. Returns new count."""
        now = _now()
        rows = [(k, s, r, now) for k, s, r in items]
        with self._lock:
            before = self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            self._write("INSERT INTO items(key, sha256, ref, added_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET sha256 = COALESCE(items.sha256, excluded.sha256)", many=rows)
            return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] - before

    def set_sha256(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._write("UPDATE items SET sha256 = ? WHERE key = ?", many=[(s, k) for k, s in pairs])

    def set_scores(self, keys: Sequence[str], scores: Sequence[float], version: str) -> None:
        """Store the current model's score for each key (one transaction for the whole pool)."""
        self._write("UPDATE items SET score = ?, score_version = ? WHERE key = ?",
                    many=[(float(s), version, k) for k, s in zip(keys, scores)])

    def item_count(self) -> int:
        return self._read("SELECT COUNT(*) AS n FROM items")[0]["n"]

    def items(self) -> list[sqlite3.Row]:
        """Every item: key, sha256, ref, score, score_version."""
        return self._read("SELECT key, sha256, ref, score, score_version FROM items ORDER BY key")

    def item(self, key: str) -> sqlite3.Row | None:
        rows = self._read("SELECT key, sha256, ref, score, score_version FROM items WHERE key = ?", (key,))
        return rows[0] if rows else None

    def sha256_of(self, keys: Sequence[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i:i + 500])
                q = f"SELECT key, sha256 FROM items WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({r["key"]: r["sha256"] for r in self._conn.execute(q, chunk)})
        return out

    # ------------------------------------------------------------------ decisions
    def add_label(self, key: str, label: str, annotator: str, *, round: int = 0, model_version: str | None = None,
                  score_shown: float | None = None, reason: str | None = None, source: str = "ui",
                  created_at: float | None = None) -> int:
        """Commit one decision and return its id. The row is durable when this returns."""
        return self.add_labels([{"key": key, "label": label, "annotator": annotator, "round": round,
                                     "model_version": model_version, "score_shown": score_shown, "reason": reason,
                                     "source": source, "created_at": created_at}])[0]

    def add_labels(self, rows: Sequence[dict]) -> list[int]:
        """Commit several decisions in one transaction (grid view, import); returns their ids in order."""
        now = _now()
        rows = [dict(r) for r in rows]
        for r in rows:
            if r.get("label") not in DECISIONS:
                raise LabelStoreError(f"label must be one of {list(DECISIONS)}, got {r.get('label')!r}")
            if not r.get("annotator") or not r.get("key"):
                raise LabelStoreError(f"a decision needs a key and an annotator, got {r!r}")
            r["annotator"] = check_annotator(r["annotator"])
        ids = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    cur = self._conn.execute(
                        "INSERT INTO labels(key, label, annotator, created_at, round, model_version, score_shown, "
                        "reason, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (r["key"], r["label"], r["annotator"], r.get("created_at") or now, int(r.get("round") or 0),
                         r.get("model_version"), r.get("score_shown"), r.get("reason"), r.get("source") or "ui"))
                    ids.append(cur.lastrowid)
                    self._conn.execute("DELETE FROM assignments WHERE key = ? AND annotator = ?",
                                       (r["key"], r["annotator"]))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return ids

    def undo(self, annotator: str) -> dict | None:
        """Mark the annotator's latest live decision undone; returns it (or None when nothing is left to undo).

        Only the last :data:`EDITABLE_RECENT` decisions can be undone, one per call.
        """
        annotator = normalize_annotator(annotator)
        with self._lock:
            recent = self.recent(annotator, EDITABLE_RECENT)
            if not recent:
                return None
            row = recent[0]
            self._write("UPDATE labels SET undone = 1, undone_at = ? WHERE id = ?", (_now(), row["id"]))
            return row

    def edit(self, annotator: str, label_id: int, label: str, **provenance) -> int:
        """Change one of the annotator's last ten decisions: the old row is marked undone, a new row appended."""
        if label not in DECISIONS:
            raise LabelStoreError(f"label must be one of {list(DECISIONS)}, got {label!r}")
        annotator = normalize_annotator(annotator)
        with self._lock:
            recent = {r["id"]: r for r in self.recent(annotator, EDITABLE_RECENT)}
            if label_id not in recent:
                raise LabelStoreError(f"decision {label_id} is not among the last {EDITABLE_RECENT} of {annotator!r}")
            old = recent[label_id]
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("UPDATE labels SET undone = 1, undone_at = ? WHERE id = ?", (_now(), label_id))
                cur = self._conn.execute(
                    "INSERT INTO labels(key, label, annotator, created_at, round, model_version, score_shown, reason, "
                    "source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'edit')",
                    (old["key"], label, annotator, _now(), provenance.get("round", old["round"]),
                     provenance.get("model_version", old["model_version"]), old["score_shown"], old["reason"]))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return cur.lastrowid

    def recent(self, annotator: str, n: int = EDITABLE_RECENT) -> list[dict]:
        """The live decisions among the annotator's last ``n`` rows, newest first: what undo and edit may touch.

        The window counts undone rows too, so ten undos in a row reach back exactly ten decisions, no further.
        """
        rows = self._read("SELECT * FROM (SELECT * FROM labels WHERE annotator = ? ORDER BY id DESC LIMIT ?) "
                          "WHERE undone = 0 ORDER BY id DESC", (normalize_annotator(annotator), int(n)))
        return [dict(r) for r in rows]

    def labels(self, include_undone: bool = False) -> list[dict]:
        q = "SELECT * FROM labels" + ("" if include_undone else " WHERE undone = 0") + " ORDER BY id"
        return [dict(r) for r in self._read(q)]

    def label_count(self, include_skips: bool = False) -> int:
        q = "SELECT COUNT(*) AS n FROM labels WHERE undone = 0" + ("" if include_skips else " AND label != 'skip'")
        return self._read(q)[0]["n"]

    def annotator_label_count(self, annotator: str) -> int:
        """Live non-skip decisions of one annotator."""
        return self._read("SELECT COUNT(*) AS n FROM labels WHERE annotator = ? AND undone = 0 AND label != 'skip'",
                          (normalize_annotator(annotator),))[0]["n"]

    def decisions_by_key(self) -> dict[str, dict[str, str]]:
        """``{key: {annotator: latest live decision}}`` (skips included)."""
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for r in self._read("SELECT key, annotator, label FROM labels WHERE undone = 0 ORDER BY id"):
            out[r["key"]][r["annotator"]] = r["label"]
        return dict(out)

    def consensus(self) -> dict[str, int]:
        """Training target per key: majority of the annotators' latest non-skip decisions; ties are left out."""
        out = {}
        for key, by_ann in self.decisions_by_key().items():
            votes = [LABEL_VALUE[v] for v in by_ann.values() if v in LABEL_VALUE]
            if not votes:
                continue
            pos = sum(votes)
            if pos * 2 != len(votes):
                out[key] = int(pos * 2 > len(votes))
        return out

    def counts(self) -> dict:
        """Live decision counts by label and by annotator x label, plus the consensus class balance."""
        by_label = {d: 0 for d in DECISIONS}
        by_annotator: dict[str, dict[str, int]] = defaultdict(lambda: {d: 0 for d in DECISIONS})
        for r in self._read("SELECT annotator, label, COUNT(*) AS n FROM labels WHERE undone = 0 "
                            "GROUP BY annotator, label"):
            by_label[r["label"]] += r["n"]
            by_annotator[r["annotator"]][r["label"]] = r["n"]
        cons = self.consensus()
        return {"by_label": by_label, "by_annotator": dict(by_annotator),
                "consensus": {STYLISTIC: sum(cons.values()), NOT_STYLISTIC: len(cons) - sum(cons.values())}}

    def training_data_hash(self) -> str:
        """Stable digest of the consensus labels a head is trained on (recorded in the exported checkpoint)."""
        h = hashlib.sha256()
        for key, y in sorted(self.consensus().items()):
            h.update(f"{key}\t{y}\n".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ assignments (overlap for agreement)
    def assign(self, key: str, annotator: str, reason: str) -> None:
        self.assign_many([(key, annotator)], reason)

    def assign_many(self, pairs: Iterable[tuple[str, str]], reason: str, batch: int = ASSIGN_BATCH) -> int:
        """Ask ``(key, annotator)`` pairs of their annotators, ``batch`` rows per transaction, so a large request
        never holds the database (a decision commits between two batches). Returns the pairs written."""
        now, n, chunk = _now(), 0, []
        for key, annotator in pairs:
            chunk.append((key, check_annotator(annotator), reason, now))
            if len(chunk) >= batch:
                self._write("INSERT OR IGNORE INTO assignments(key, annotator, reason, created_at) VALUES (?, ?, ?, ?)",
                            many=chunk)
                n, chunk = n + len(chunk), []
        if chunk:
            self._write("INSERT OR IGNORE INTO assignments(key, annotator, reason, created_at) VALUES (?, ?, ?, ?)",
                        many=chunk)
            n += len(chunk)
        return n

    def assignments(self, annotator: str | None = None) -> list[dict]:
        if annotator is None:
            return [dict(r) for r in self._read("SELECT * FROM assignments ORDER BY created_at")]
        return [dict(r) for r in self._read("SELECT * FROM assignments WHERE annotator = ? ORDER BY created_at",
                                            (normalize_annotator(annotator),))]

    # ------------------------------------------------------------------ rounds
    def add_round(self, metrics: dict, model_version: str, n_labels: int) -> int:
        with self._lock:
            n = self._conn.execute("SELECT COALESCE(MAX(round), 0) + 1 FROM rounds").fetchone()[0]
            self._write("INSERT INTO rounds(round, metrics, created_at, model_version, n_labels) VALUES (?, ?, ?, ?, ?)",
                        (n, json.dumps(metrics), _now(), model_version, int(n_labels)))
            return n

    def rounds(self) -> list[dict]:
        return [dict(r, metrics=json.loads(r["metrics"])) for r in self._read("SELECT * FROM rounds ORDER BY round")]

    def last_round_labels(self) -> int:
        """``n_labels`` of the latest round (0 before the first)."""
        return self._read("SELECT COALESCE((SELECT n_labels FROM rounds ORDER BY round DESC LIMIT 1), 0) AS n")[0]["n"]

    def current_round(self) -> int:
        return self._read("SELECT COALESCE(MAX(round), 0) AS n FROM rounds")[0]["n"]

    # ------------------------------------------------------------------ import / export
    def export_labels(self, path: str | Path, include_undone: bool = False) -> int:
        """Write decisions to ``.parquet`` or ``.csv`` (by suffix); ``y`` is 1/0, empty for skips. Returns rows.

        ``created_at`` (and ``undone_at``) are ISO 8601 UTC times: a UTC timestamp column in Parquet, text such as
        ``2025-01-31T12:00:00.000Z`` in CSV.
        """
        import pyarrow as pa

        path = Path(path)
        rows = self.labels(include_undone=include_undone)
        extra = ["undone", "undone_at"] if include_undone else []
        cols = {c: [r.get(c) for r in rows] for c in list(EXPORT_COLUMNS) + extra if c != "y"}
        cols["y"] = [LABEL_VALUE.get(r["label"]) for r in rows]
        if include_undone:
            cols["undone"] = [bool(v) for v in cols["undone"]]
        times = {"created_at", "undone_at"}
        if path.suffix.lower() == ".csv":
            for c in times & set(cols):
                cols[c] = [iso_time(v) for v in cols[c]]
            time_type = pa.string()
        else:
            for c in times & set(cols):
                cols[c] = [None if v is None else round(float(v) * 1e6) for v in cols[c]]
            time_type = pa.timestamp("us", tz="UTC")
        schema_types = {"id": pa.int64(), "round": pa.int64(), "y": pa.int64(), "score_shown": pa.float64(),
                        "created_at": time_type, "undone_at": time_type, "undone": pa.bool_()}
        table = pa.table({c: pa.array(cols[c], type=schema_types.get(c, pa.string()))
                          for c in list(EXPORT_COLUMNS) + extra})
        _write_table(table, path)
        return table.num_rows

    def import_labels(self, path: str | Path, default_annotator: str = "import") -> int:
        """Append decisions from a ``.parquet`` or ``.csv`` export (or any table with ``key`` and ``label``).

        ``label`` may be ``stylistic``/``not_stylistic``/``skip`` or 1/0. Every value is checked first (key,
        label, annotator name, ``created_at`` as seconds or ISO 8601, ``round`` a whole number >= 0,
        ``score_shown`` in [0, 1]) and the whole file is rejected with the file name, row number and column of the
        first bad value; nothing is half-imported.
        """
        path = Path(path)
        table = _read_table(path)
        if "key" not in table.column_names or ("label" not in table.column_names and "y" not in table.column_names):
            raise LabelStoreError(f"{path}: needs a 'key' column and a 'label' (or 'y') column, "
                                  f"found {table.column_names}")
        rows = []
        for i, r in enumerate(table.to_pylist()):
            raw = r.get("label") if r.get("label") not in (None, "") else r.get("y")
            label = parse_label(raw)
            key = r.get("key")
            if label is None or key in (None, "") or len(str(key)) > 512:
                raise LabelStoreError(f"{path}: row {i + 1}: bad key/label ({key!r}, {raw!r}); "
                                      f"label must be one of {list(DECISIONS)} or 1/0")

            def bad(column: str, why: str, value=None, row=i):
                return LabelStoreError(f"{path}: row {row + 1}: {column} {value!r}: {why}")

            try:
                annotator = check_annotator(r.get("annotator") or default_annotator)
            except LabelStoreError as exc:
                raise LabelStoreError(f"{path}: row {i + 1}: {exc}") from None
            try:
                created = parse_time(r.get("created_at"))
            except (TypeError, ValueError, OverflowError):
                raise bad("created_at", "not seconds since 1970 or an ISO 8601 time", r.get("created_at")) from None
            rnd = r.get("round")
            if rnd in (None, ""):
                rnd = 0
            else:
                try:
                    f = float(rnd)
                    if isinstance(rnd, bool) or not f.is_integer() or f < 0 or f > 2**31:
                        raise ValueError
                    rnd = int(f)
                except (TypeError, ValueError, OverflowError):
                    raise bad("round", "must be a whole number >= 0", rnd) from None
            score = r.get("score_shown")
            if score in (None, ""):
                score = None
            else:
                try:
                    score = float(score)
                    if isinstance(r.get("score_shown"), bool) or not 0.0 <= score <= 1.0:
                        raise ValueError
                except (TypeError, ValueError):
                    raise bad("score_shown", "must be a number in [0, 1] or empty", r.get("score_shown")) from None
            version = r.get("model_version") or None
            reason = r.get("reason") or None
            for column, value in (("model_version", version), ("reason", reason)):
                if value is not None and (not isinstance(value, str) or len(value) > 200):
                    raise bad(column, "must be text of at most 200 characters", value)
            rows.append({"key": str(key), "label": label, "annotator": annotator, "created_at": created,
                         "round": rnd, "model_version": version, "score_shown": score, "reason": reason,
                         "source": "import"})
        self.add_labels(rows)
        return len(rows)


def parse_label(raw) -> str | None:
    """A decision (stylistic, not_stylistic, skip) from its name or from 1/0, true/false; None when neither."""
    if isinstance(raw, str):
        s = raw.strip().lower()
        if s in DECISIONS:
            return s
        if s in ("1", "1.0", "true"):
            return STYLISTIC
        if s in ("0", "0.0", "false"):
            return NOT_STYLISTIC
        return None
    if isinstance(raw, bool):
        return STYLISTIC if raw else NOT_STYLISTIC
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return STYLISTIC if raw == 1 else NOT_STYLISTIC
    return None


def _write_table(table, path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pq.write_table(table, path)
    elif suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        raise LabelStoreError(f"{path}: export format must be .parquet or .csv")


def _read_table(path: Path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise LabelStoreError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            # keys are digit strings: read every column as text so leading zeros survive
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={"key": pa.string()},
                                                                               strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelStoreError(f"{path}: not a readable {suffix[1:]} file: {exc}") from None
    raise LabelStoreError(f"{path}: import format must be .parquet or .csv")
