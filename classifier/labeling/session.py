"""One labeling session: configuration, the pool/store/learner it holds, and every decision the HTTP layer forwards.

:class:`LabelSession` is the session logic without HTTP: which items an annotator is handed (one atomic handout,
so two annotators asking at the same moment never get the same fresh item), committing decisions, undo and
edit, explicit assignments, progress toward the next retrain, example images, import and checkpoint export.
:mod:`classifier.labeling.app` maps routes onto it. :class:`DatabaseLock` makes a database belong to one
server at a time.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from classifier.labeling.active import ActiveConfig, ActiveLearner
from classifier.labeling.pool import Pool, open_pool
from classifier.labeling.sampling import (
    AGREEMENT,
    DISAGREEMENT,
    REVIEW,
    Candidates,
    SamplingConfig,
    kcenter_order,
    select,
)
from classifier.labeling.store import (
    LABEL_VALUE,
    NOT_STYLISTIC,
    SKIP,
    STYLISTIC,
    LabelStore,
    normalize_annotator,
)
from core.config import ConfigError
from core.errors import BbstError
from core.paths import OUTSIDE_ROOT

log = logging.getLogger(__name__)

DEFAULT_GUIDELINE = (
    "Stylistic (a): the image would make sense as a target style for style transfer: paintings, drawings, "
    "illustrations, digital art, graphic design with a distinct visual style. "
    "Not stylistic (x): ordinary photographs, screenshots, scans of text, plain product shots. "
    "Unsure or broken image: skip (space); a skip is never counted as a negative."
)
EXAMPLES_PER_CLASS = 4
# What the page's `?` overlay lists: key, focus-view action, grid-view action.
KEYMAP: tuple[tuple[str, str, str], ...] = (
    ("a", "stylistic, next image", "mark the outlined image stylistic"),
    ("x", "not stylistic, next image", "mark the outlined image not stylistic"),
    ("space", "skip (unsure; never a negative)", "mark the outlined image skipped"),
    ("Backspace", "undo the last decision", "clear the outlined image's mark"),
    ("A / X", "-", "mark every unmarked image stylistic / not stylistic"),
    ("arrows", "-", "move the outline"),
    ("Enter", "-", "save the page's marks, load the next page"),
    ("z", "zoom to the original (Esc closes)", "zoom the outlined image"),
    ("g", "switch to the grid", "switch to the focus view"),
    ("h", "hide / show the guideline", "hide / show the guideline"),
    ("?", "show / hide this list", "show / hide this list"),
)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # bind address; anything but loopback requires the access token
    port: int = 8000  # TCP port
    token: str | None = None  # access token for non-loopback binds; generated (and printed) when empty


@dataclass
class LabelConfig:
    pool: str = ""  # curation run dir / shards dir / image folder / Parquet list of paths
    pool_roots: list[str] = field(default_factory=list)  # other folders an image folder pool's links may lead into
    db: str = "labels.sqlite"  # SQLite label database (created if missing; a restart resumes it)
    classifier: str | None = None  # starting classifier checkpoint (backbone + head); None = start from scratch
    model: str = "bbst_vitb16_2trunk"  # backbone to build when no --classifier is given (see classifier.factory)
    weights: str | None = None  # content/shared trunk weights for --model: a local file, or "cache" (local caches)
    style_weights: str | None = None  # style trunk weights of a two-trunk --model (file or "cache")
    feature_cache: str | None = None  # feature cache dir; default: <db>.features next to the database
    guideline: str = DEFAULT_GUIDELINE  # labeling guideline shown on the page
    examples_stylistic: list[str] = field(default_factory=list)  # pool keys shown as stylistic examples
    examples_not_stylistic: list[str] = field(default_factory=list)  # pool keys shown as not-stylistic examples
    batch_size: int = 8  # items handed to the page per request (it prefetches them)
    view_size: int = 1024  # longest side of the focus-view rendition; zoom loads the original
    thumb_size: int = 256  # longest side of grid thumbnails
    lease_seconds: float = 600.0  # an item shown to one annotator is not shown to another for this long
    torch_threads: int = 1  # CPU threads for the backbone (the server and the browser need the rest)
    max_upload_mb: float = 200.0  # largest import file accepted (refused from Content-Length, before reading)
    max_json_kb: int = 4096  # largest JSON request body accepted (refused from Content-Length, before reading)
    server: ServerConfig = field(default_factory=ServerConfig)  # network settings
    active: ActiveConfig = field(default_factory=ActiveConfig)  # retraining
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # which items to ask for


class UnknownKey(BbstError, KeyError):
    """A key that names no image of the pool."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown key"


# ------------------------------------------------------------------------------------------ retraining vs pool size
MIN_PER_CLASS_FLOOR = 2  # fewest consensus labels per class a first head is trained from, however small the pool
MIN_RETRAIN_EVERY = 4  # fewest new decisions between two rounds, however small the pool


def fit_active_to_pool(active: ActiveConfig, pool_size: int) -> tuple[ActiveConfig, str | None]:
    """``active`` with its retrain counts lowered to fit a small pool, and a one-line note saying so (or None).

    A round needs ``2 * min_per_class`` labels and comes every ``retrain_every`` decisions: with the defaults
    (10, 50) a pool of a few dozen images would never see one. Each count is capped so that a round comes once a
    quarter of the pool is labelled (``retrain_every <= pool / 4``) from an eighth per class
    (``min_per_class <= pool / 8``), never below :data:`MIN_RETRAIN_EVERY` and :data:`MIN_PER_CLASS_FLOOR`. A
    pool too small for even those keeps the counts and the note says no round will come.
    """
    if pool_size < 2 * max(MIN_RETRAIN_EVERY, 2 * MIN_PER_CLASS_FLOOR):
        return active, (f"this pool of {pool_size} images is too small for active learning: a retrain round needs "
                        f"{2 * MIN_PER_CLASS_FLOOR} labels ({MIN_PER_CLASS_FLOOR} of each class) and the pool should "
                        f"hold at least {2 * max(MIN_RETRAIN_EVERY, 2 * MIN_PER_CLASS_FLOOR)} images, so no model "
                        "is trained here; add images to the pool")
    every = min(active.retrain_every, max(MIN_RETRAIN_EVERY, pool_size // 4))
    per_class = min(active.min_per_class, max(MIN_PER_CLASS_FLOOR, pool_size // 8))
    if (every, per_class) == (active.retrain_every, active.min_per_class):
        return active, None
    fitted = replace(active, retrain_every=every, min_per_class=per_class)
    return fitted, (f"pool of {pool_size} images: the model is retrained every {every} decisions (not "
                    f"{active.retrain_every}), the first once both classes have {per_class} labels (not "
                    f"{active.min_per_class})")


# --------------------------------------------------------------------------------------------- one server per db
class DatabaseInUse(BbstError, RuntimeError):
    """Another labeling server holds this database."""


SERVER_META = "server"  # meta row of the label database: who serves it now (pid, host, address, start, name)

# identities (st_dev, st_ino) of the databases this process serves: a second lock in the same process is refused
# from here, without opening the file again (closing any descriptor of a file drops every POSIX lock the process
# holds on it, SQLite's included)
_HELD: dict[tuple[int, int], dict] = {}
_HELD_GUARD = threading.Lock()


class DatabaseLock:
    """An exclusive ``flock`` on the database file itself, held for as long as a server uses it.

    The lock belongs to the file, not to a name: a symlink, a hard link or another spelling of the path opens the
    same inode and meets the same lock, so a second server on the same database under any name is refused, naming
    the holder (pid, host, address, start time and the name it opened, from the database's ``meta`` table).

    SQLite keeps its write-ahead log next to the name it was opened by, so one database must always be opened by
    one name: :attr:`path` is the name the last server recorded when that is still this same file (a hard link
    elsewhere opens through it, and sees what a killed server left in the log), else this name resolved.
    ``flock`` locks belong to the open file, so the kernel drops this one when the holder exits, even by SIGKILL:
    nothing stale ever blocks a restart. (``flock`` is advisory and per machine: it does not protect a database on a
    network share; SQLite's own locks are POSIX locks, which ``flock`` does not touch on Linux.)
    """

    def __init__(self, db: str | Path, holder: dict):
        import fcntl

        real = Path(os.path.realpath(db))
        real.parent.mkdir(parents=True, exist_ok=True)
        with _HELD_GUARD:
            try:
                st = real.stat()
                held = _HELD.get((st.st_dev, st.st_ino))
            except FileNotFoundError:
                held = None
            if held is not None:
                raise _in_use(db, held)
            # an empty file is an empty SQLite database: creating it here puts the lock on it before anything else
            fd = os.open(real, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # no SQLite connection of this process is open on it (see _HELD)
                raise _in_use(db, _read_holder(real)) from None
            st = os.fstat(fd)
            self.identity = (st.st_dev, st.st_ino)
            self.path = _home_name(real, _read_holder(real).get("db"))
            self.holder = {**holder, "db": str(self.path)}
            _HELD[self.identity] = self.holder
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock; call it after the database's connections are closed."""
        if self._fd is not None:
            with _HELD_GUARD:
                _HELD.pop(self.identity, None)
                os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _home_name(real: Path, recorded: str | None) -> Path:
    """``recorded`` (the name the database's last server used) when it still names the file ``real``, else ``real``."""
    if recorded and recorded != str(real):
        try:
            if os.path.samefile(recorded, real):
                return Path(recorded)
        except OSError:
            pass  # gone or unreadable: this name becomes the database's name
    return real


def _read_holder(db: Path) -> dict:
    """The last server's record from the database file (read-only; ``immutable`` reads the file alone, creating no
    log or index files next to this name); ``{}`` when it has none yet."""
    import sqlite3
    from urllib.parse import quote

    if not db.is_file() or db.stat().st_size == 0:
        return {}
    try:
        conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro&immutable=1", uri=True, timeout=2)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (SERVER_META,)).fetchone()
        finally:
            conn.close()
        info = json.loads(row[0]) if row and row[0] else {}
    except (sqlite3.Error, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _in_use(db: str | Path, info: dict) -> DatabaseInUse:
    who = ", ".join(f"{k} {info[k]}" for k in ("pid", "host", "url", "started") if info.get(k)) or "unknown"
    other = info.get("db")
    if other and os.path.abspath(str(other)) != os.path.abspath(str(db)):
        who += f", opened as {other}"  # the same file under another name: a symlink or a hard link
    return DatabaseInUse(f"{db}: the label database is in use by another labeling server ({who}); stop that "
                         "server, or open it in the browser, or use another --db")


def holder_info(cfg: LabelConfig) -> dict:
    host = cfg.server.host if ":" not in cfg.server.host else f"[{cfg.server.host}]"
    return {"pid": os.getpid(), "host": socket.gethostname(), "url": f"http://{host}:{cfg.server.port}/",
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------------------------- session state
class LabelSession:
    """Everything one labeling server holds: pool, store, learner, sampler state and leases."""

    def __init__(self, cfg: LabelConfig, pool: Pool, store: LabelStore, learner: ActiveLearner,
                 lock: DatabaseLock | None = None, pool_note: str | None = None, model_note: str | None = None):
        self.cfg, self.pool, self.store, self.learner = cfg, pool, store, learner
        self.pool_note = pool_note  # how the retrain counts were fitted to the pool's size, or why no round comes
        self.model_note = model_note  # where the first suggestions come from when no classifier was given
        self._db_lock = lock
        self._leases: dict[str, tuple[str, float]] = {}
        # one handout at a time: reading what is free, choosing, and leasing it form one critical section, so
        # concurrent requests (the server runs handlers on a thread pool) never hand out the same fresh item
        self._handout = threading.Lock()
        self._lock = threading.Lock()  # guards _leases for the quick release/lease calls
        self._batches = 0
        self._diverse: tuple[float, int, list[str]] = (0.0, -1, [])
        # pool keys with a live non-skip decision, for the progress counter: kept up to date by commit(), rebuilt
        # from the database after anything that can take a decision back (undo, edit, import)
        self._decided: set[str] | None = None
        self._decided_gen = 0  # bumped by every change, so a rebuild that raced with a change is not kept

    def close(self) -> None:
        """Stop the background threads, close the database, give up the database lock."""
        self.learner.stop()
        self.store.close()
        self.pool.close()
        if self._db_lock is not None:
            self._db_lock.release()
            self._db_lock = None

    # -------------------------------------------------------------- what to show next
    def _diverse_order(self) -> list[str]:
        """Cold-start k-center order over cached features of a random candidate subset (refreshed as it grows)."""
        stamp, n_feat, order = self._diverse
        if time.time() - stamp < 20 and order:
            return order
        rng = np.random.default_rng(self.cfg.sampling.seed)
        keys = self.pool.keys
        cand = [keys[i] for i in rng.permutation(len(keys))[: self.cfg.sampling.cold_start_candidates]]
        have = [k for k in cand if self.learner.has_features(k)]
        if len(have) < 2:
            self.learner.prioritise(cand[:256])
            return []
        if len(have) == n_feat:
            return order
        feats, found = self.learner.cache.get([self.learner.sha256(k) for k in have])
        have = [k for k, f in zip(have, found) if f]
        idx = kcenter_order(np.asarray(feats)[np.asarray(found, dtype=bool)], k=min(500, len(have)),
                            seed=self.cfg.sampling.seed)
        order = [have[i] for i in idx]
        self._diverse = (time.time(), len(have), order)
        return order

    def next_items(self, annotator: str, n: int, exclude: set[str]) -> list[dict]:
        """Choose and lease up to ``n`` items for ``annotator``, atomically with respect to other handouts."""
        annotator = normalize_annotator(annotator)
        with self._handout:
            picked = self._choose(annotator, n, exclude)
            now = time.time()
            with self._lock:
                for key, _ in picked:
                    self._leases[key] = (annotator, now + self.cfg.lease_seconds)
        self.learner.prioritise([k for k, _ in picked])
        return [self.describe(k, reason) for k, reason in picked]

    def _choose(self, annotator: str, n: int, exclude: set[str]) -> list[tuple[str, str]]:
        now = time.time()
        per = self.cfg.sampling.annotators_per_item
        dec = self.store.decisions_by_key()
        mine = {k for k, d in dec.items() if annotator in d}
        decided = {k for k, d in dec.items() if any(v != SKIP for v in d.values())}
        with self._lock:
            self._leases = {k: v for k, v in self._leases.items() if v[1] > now}
            leased_other = {k for k, (a, _) in self._leases.items() if a != annotator}
        assigned = self.store.assignments()
        assigned_other = {r["key"] for r in assigned if r["annotator"] != annotator}
        blocked = mine | exclude
        out: list[tuple[str, str]] = []
        # items explicitly asked of this annotator come first (survives restarts: stored in the database)
        for r in assigned:
            if r["annotator"] == annotator and r["key"] not in blocked and r["key"] in self.pool and len(out) < n:
                out.append((r["key"], r["reason"] or AGREEMENT))
                blocked.add(r["key"])
        if len(out) >= n:
            return out
        unlabeled = [k for k in self.pool.keys
                     if k not in decided and k not in blocked and k not in leased_other and k not in assigned_other]
        has_model = self.learner.head_result is not None
        scores = np.array([self.learner.scores.get(k, math.nan) for k in unlabeled]) if has_model else None
        disagreements, overlap = [], []
        for k, d in dec.items():
            if k in blocked or k in leased_other or k not in self.pool:
                continue
            votes = {v for v in d.values() if v in LABEL_VALUE}
            n_dec = sum(v in LABEL_VALUE for v in d.values())
            if len(votes) == 2 and n_dec <= per:
                disagreements.append(k)
            elif votes and n_dec < per:
                overlap.append(k)
        # likely label errors: asked again of someone who has not decided them, up to one extra opinion
        review = [k for k in self.learner.review_keys
                  if k in dec and k not in blocked and k not in leased_other and k in self.pool
                  and sum(v in LABEL_VALUE for v in dec[k].values()) <= per]
        self._batches += 1
        rng = np.random.default_rng([self.cfg.sampling.seed, self._batches, int(now * 1000) % (1 << 31)])
        cand = Candidates(unlabeled=unlabeled, scores=scores, threshold=self.learner.threshold,
                          disagreements=disagreements, overlap=overlap, review=review,
                          diverse_order=[] if has_model else self._diverse_order(), exclude=blocked)
        picked = select(n - len(out), cand, self.cfg.sampling, rng)
        asked = [(key, reason) for key, reason in picked if reason in (AGREEMENT, DISAGREEMENT, REVIEW)]
        for reason in {r for _, r in asked}:
            self.store.assign_many([(k, annotator) for k, r in asked if r == reason], reason)
        return out + picked

    def describe(self, key: str, reason: str | None = None) -> dict:
        score = self.learner.scores.get(key)
        return {"key": key, "score": score, "reason": reason,
                "model_version": self.learner.model_version if score is not None else None}

    def lease(self, key: str, annotator: str) -> None:
        with self._lock:
            self._leases[key] = (normalize_annotator(annotator), time.time() + self.cfg.lease_seconds)

    def release(self, keys) -> None:
        with self._lock:
            for k in keys:
                self._leases.pop(k, None)

    # -------------------------------------------------------------- decisions
    def commit(self, annotator: str, items: Sequence[dict]) -> list[int]:
        """Commit decisions (``key``, ``label`` and provenance) of one annotator in one transaction."""
        missing = [it["key"] for it in items if it["key"] not in self.pool]
        if missing:
            raise UnknownKey(f"no image with key {missing[0]!r} in the pool")
        rnd = self.store.current_round()
        ids = self.store.add_labels([{"key": it["key"], "label": it["label"], "annotator": annotator, "round": rnd,
                                      "model_version": it.get("model_version"), "score_shown": it.get("score_shown"),
                                      "reason": it.get("reason")} for it in items])
        self.release([it["key"] for it in items])
        with self._lock:
            self._decided_gen += 1
            if self._decided is not None:
                self._decided.update(it["key"] for it in items if it["label"] != SKIP)
        self.learner.prioritise([it["key"] for it in items if it["label"] != SKIP])
        self.learner.notify_labels()
        return ids

    def undo(self, annotator: str) -> dict | None:
        row = self.store.undo(annotator)
        if row is None:
            return None
        self._forget_decided()
        self.lease(row["key"], annotator)  # it is back on this annotator's screen, not anyone else's
        self.learner.notify_labels()
        return {"undone": row, "item": self.describe(row["key"], row["reason"])}

    def edit(self, annotator: str, label_id: int, label: str) -> int:
        new_id = self.store.edit(annotator, label_id, label, round=self.store.current_round())
        self._forget_decided()
        self.learner.notify_labels()
        return new_id

    def assign(self, keys: Sequence[str], annotators: Sequence[str]) -> int:
        """Ask every key of every annotator (stored, so it survives restarts); committed in batches."""
        missing = [k for k in keys if k not in self.pool]
        if missing:
            raise UnknownKey(f"no image with key {missing[0]!r} in the pool")
        names = list(dict.fromkeys(normalize_annotator(a) for a in annotators))
        return self.store.assign_many(((k, a) for k in keys for a in names), AGREEMENT)

    # -------------------------------------------------------------- what the page shows
    def progress(self, annotator: str | None = None) -> dict:
        """Labelled so far, items left in the pool, and decisions to go before the next retrain."""
        act = self.learner.cfg
        labelled = self.store.label_count()
        out = {"labelled": labelled, "pool_size": len(self.pool),
               "left_in_pool": max(0, len(self.pool) - self.decided_count()),
               "retrain_every": act.retrain_every, "round": self.store.current_round(),
               "to_next_retrain": max(0, act.retrain_every - (labelled - self.store.last_round_labels())),
               "per_class_needed": 0, "model_version": self.learner.model_version}
        if out["round"] == 0:  # before the first head both classes need min_per_class consensus labels
            cons = self.store.consensus()
            pos = sum(cons.values())
            out["per_class_needed"] = max(0, act.min_per_class - min(pos, len(cons) - pos))
        if annotator:
            out["labelled_by_you"] = self.store.annotator_label_count(annotator)
        return out

    def _forget_decided(self) -> None:
        with self._lock:
            self._decided_gen += 1
            self._decided = None

    def decided_count(self) -> int:
        """Pool items holding at least one live non-skip decision."""
        with self._lock:
            decided, gen = self._decided, self._decided_gen
        if decided is None:
            decided = {k for k, d in self.store.decisions_by_key().items()
                       if k in self.pool and any(v != SKIP for v in d.values())}
            with self._lock:
                if self._decided_gen == gen:
                    self._decided = decided
        return len(decided)

    def examples(self) -> dict:
        """Example keys per class: configured ones first, then confirmed labels.

        Confirmed means the consensus of the live decisions; items on which two or more annotators agree come
        before items decided by one, each in the order they were first labelled.
        """
        ex = {STYLISTIC: [k for k in self.cfg.examples_stylistic if k in self.pool],
              NOT_STYLISTIC: [k for k in self.cfg.examples_not_stylistic if k in self.pool]}
        source = {c: "configured" if ex[c] else "labels" for c in ex}
        if min(len(v) for v in ex.values()) < EXAMPLES_PER_CLASS:
            dec = self.store.decisions_by_key()  # insertion order: first labelled first
            ranked = []
            for k, by_ann in dec.items():
                votes = [LABEL_VALUE[v] for v in by_ann.values() if v in LABEL_VALUE]
                if not votes or sum(votes) * 2 == len(votes) or k not in self.pool:
                    continue
                agreed = len(votes) >= 2 and len(set(votes)) == 1
                ranked.append((not agreed, STYLISTIC if sum(votes) * 2 > len(votes) else NOT_STYLISTIC, k))
            for _, cls, k in sorted(ranked, key=lambda r: r[0]):  # stable: keeps first-labelled order
                if len(ex[cls]) < EXAMPLES_PER_CLASS and k not in ex[cls]:
                    ex[cls].append(k)
        return {**ex, "source": source}

    def histogram(self, bins: int = 20) -> dict:
        # list() copies in one step: the feature worker may be adding scores meanwhile
        vals = np.asarray(list(self.learner.scores.values()), dtype=np.float64)
        counts, edges = np.histogram(vals, bins=bins, range=(0.0, 1.0))
        return {"counts": counts.tolist(), "edges": edges.round(4).tolist(), "n_scored": len(vals),
                "threshold": self.learner.threshold, "model_version": self.learner.model_version}

    def keymap(self) -> list[dict]:
        return [{"key": k, "focus": f, "grid": g} for k, f, g in KEYMAP]

    # -------------------------------------------------------------- retrain, import, export
    def retrain_in_background(self) -> bool:
        """Start a retrain now; False when one is already running."""
        if self.learner.retraining:
            return False
        threading.Thread(target=_retrain_now, args=(self.learner,), name="bbst-retrain-now", daemon=True).start()
        return True

    def import_bytes(self, data: bytes, fmt: str, default_annotator: str) -> dict:
        """Import an uploaded CSV/Parquet export; errors name the uploaded file, not the temporary path."""
        from classifier.labeling.store import LabelStoreError

        tmp = Path(tempfile.mkdtemp(prefix="bbst-import-")) / f"upload.{fmt}"
        try:
            tmp.write_bytes(data)
            n = self.store.import_labels(tmp, default_annotator=default_annotator)
        except LabelStoreError as exc:
            raise LabelStoreError(str(exc).replace(str(tmp), f"uploaded {fmt} file")) from None
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        unknown = sum(1 for k in self.store.decisions_by_key() if k not in self.pool)
        self._forget_decided()
        self.learner.notify_labels()
        return {"imported": n, "keys_not_in_pool": unknown}

    def export_checkpoint(self) -> dict:
        out = export_dir(self.cfg) / f"classifier-round-{self.store.current_round():04d}.ckpt"
        version = self.learner.export_checkpoint(out)
        return {"path": str(out), "model_version": version,
                "use": f"python pipelines/build_bbst.py --classifier {out}"}


def _retrain_now(learner: ActiveLearner) -> None:
    try:
        learner.retrain()
    except Exception as exc:
        learner.last_error = f"retrain failed: {type(exc).__name__}: {exc}"
        log.exception("retrain failed")


def export_dir(cfg: LabelConfig) -> Path:
    db = Path(cfg.db)
    return db.parent / f"{db.stem}.exports"


def build_session(cfg: LabelConfig) -> LabelSession:
    """Lock the database, open the pool and the store, build (or load) the backbone and head."""
    import torch

    from classifier.features import FeatureCache, feature_fingerprint

    if not cfg.pool:
        raise ConfigError("--pool is required (a curation run dir, shards, an image folder or a Parquet list)")
    torch.set_num_threads(max(1, cfg.torch_threads))
    lock = DatabaseLock(cfg.db, holder_info(cfg))
    cfg = replace(cfg, db=str(lock.path))  # the database's one name (see DatabaseLock), for SQLite and its folders
    db = lock.path
    try:
        pool = open_pool(cfg.pool, cache_dir=db.parent / f"{db.stem}.thumbs", roots=cfg.pool_roots)
        if pool.refused:
            log.warning("%d file(s) of the pool refused (%s), e.g. %s", len(pool.refused), OUTSIDE_ROOT,
                        pool.refused[0]["error"])
        store = LabelStore(db)
        # read by a second server to name this one, and by the next one to open the same name: written through to
        # the database file at once, where every name of the file sees it
        store.set_meta(SERVER_META, json.dumps(lock.holder))
        store.checkpoint()
        store.add_items((it.key, it.sha256, it.ref) for it in (pool.item(k) for k in pool.keys))
        active, pool_note = fit_active_to_pool(cfg.active, len(pool))
        if pool_note:
            log.info("%s", pool_note)
        head_result, version, demo, model_note = None, None, False, None
        if cfg.classifier:
            from classifier.checkpoint import load_classifier

            model, head_result, meta = load_classifier(cfg.classifier)
            version = str(meta.get("version") or Path(cfg.classifier).stem)
            demo = bool(meta.get("demo"))
        else:
            from classifier.factory import create_classifier

            # seeded so a backbone without weight files (tiny test variants) is the same network after a restart,
            # which keeps its feature-cache fingerprint valid
            torch.manual_seed(0)
            random_trunks = cfg.weights is None
            model_note = (f"no --classifier: suggestions come from an untrained model (no head until the first "
                          f"retrain round, after {active.retrain_every} decisions with {active.min_per_class} of "
                          f"each class)" + (f"; {cfg.model} has random-init trunks (no --weights), so even later "
                                            "rounds learn little: `bbst weights` lists the backbone files"
                                            if random_trunks else ""))
            model = create_classifier(cfg.model, weights=cfg.weights, style_weights=cfg.style_weights)
        model.eval()
        cache = FeatureCache(cfg.feature_cache or db.parent / f"{db.stem}.features",
                             fingerprint=feature_fingerprint(model))
        learner = ActiveLearner(store, pool, model, cache, active, rounds_dir=db.parent / f"{db.stem}.rounds",
                                head_result=head_result, model_version=version, demo=demo)
        if head_result is not None and not store.rounds():
            learner.checkpoint_path = Path(cfg.classifier)
    except BaseException:
        lock.release()
        raise
    return LabelSession(cfg, pool, store, learner, lock=lock, pool_note=pool_note, model_note=model_note)
