"""Labeling session web app: keyboard-first stylistic / not-stylistic decisions with background active learning.

Run ``python pipelines/label.py --pool POOL --db labels.sqlite [--classifier CKPT]`` and open the printed address.
Every decision is committed to SQLite (WAL) before the response returns; the page waits for that response before
it shows the next image, so a confirmed label survives the server being killed. Bound to 127.0.0.1 by default;
any other address needs the access token printed at start.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import math
import secrets
import shutil
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # `python pipelines/label.py` puts pipelines/ on sys.path, not the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request  # module level: route annotations are resolved in this module's globals

from classifier.active import ActiveConfig, ActiveLearner
from classifier.agreement import agreement_summary
from classifier.labelstore import LABEL_VALUE, NOT_STYLISTIC, SKIP, STYLISTIC, LabelStore, LabelStoreError
from classifier.pool import Pool, open_pool
from classifier.sampling import AGREEMENT, DISAGREEMENT, REVIEW, Candidates, SamplingConfig, kcenter_order, select
from curate.cli import error_boundary, format_error
from curate.config import ConfigError
from curate.errors import BbstError

log = logging.getLogger("bbst.label")

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_HEADER = "x-access-token"
TOKEN_COOKIE = "bbst_token"
DEFAULT_GUIDELINE = (
    "Stylistic (a): the image would make sense as a target style for style transfer: paintings, drawings, "
    "illustrations, digital art, graphic design with a distinct visual style. "
    "Not stylistic (x): ordinary photographs, screenshots, scans of text, plain product shots. "
    "Unsure or broken image: skip (space); a skip is never counted as a negative."
)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # bind address; anything but loopback requires the access token
    port: int = 8000  # TCP port
    token: str | None = None  # access token for non-loopback binds; generated (and printed) when empty


@dataclass
class LabelConfig:
    pool: str = ""  # curation run dir / shards dir / image folder / Parquet list of paths
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
    max_upload_mb: float = 200.0  # largest import file accepted
    server: ServerConfig = field(default_factory=ServerConfig)  # network settings
    active: ActiveConfig = field(default_factory=ActiveConfig)  # retraining
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # which items to ask for


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_token(host: str) -> bool:
    return not is_loopback(host)


# --------------------------------------------------------------------------------------------- request bodies
ANNOTATOR = {"min_length": 1, "max_length": 64, "pattern": r"^[\w][\w .@+-]*$"}
KEY = {"min_length": 1, "max_length": 512}


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: str = Field(**ANNOTATOR)
    key: str = Field(**KEY)
    label: Literal["stylistic", "not_stylistic", "skip"]
    score_shown: float | None = Field(default=None, ge=0.0, le=1.0)
    model_version: str | None = Field(default=None, max_length=200)
    reason: Literal["uncertain", "random", "agreement", "disagreement", "diverse", "review"] | None = None


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: str = Field(**ANNOTATOR)
    items: list[LabelIn] = Field(min_length=1, max_length=500)


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: str = Field(**ANNOTATOR)


class EditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: str = Field(**ANNOTATOR)
    id: int = Field(ge=1)
    label: Literal["stylistic", "not_stylistic", "skip"]


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[str] = Field(min_length=1, max_length=10000)
    annotators: list[str] = Field(min_length=1, max_length=50)


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: str = Field(**ANNOTATOR)
    keys: list[str] = Field(max_length=1000)


# --------------------------------------------------------------------------------------------- session state
class LabelSession:
    """Everything one labeling server holds: pool, store, learner, sampler state and leases."""

    def __init__(self, cfg: LabelConfig, pool: Pool, store: LabelStore, learner: ActiveLearner):
        self.cfg, self.pool, self.store, self.learner = cfg, pool, store, learner
        self._leases: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._batches = 0
        self._diverse: tuple[float, int, list[str]] = (0.0, -1, [])

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
        if len(out) < n:
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
            for key, reason in picked:
                if reason in (AGREEMENT, DISAGREEMENT, REVIEW):
                    self.store.assign(key, annotator, reason)
            out.extend(picked)
        with self._lock:
            for key, _ in out:
                self._leases[key] = (annotator, now + self.cfg.lease_seconds)
        self.learner.prioritise([k for k, _ in out])
        return [self.describe(k, reason) for k, reason in out]

    def describe(self, key: str, reason: str | None = None) -> dict:
        score = self.learner.scores.get(key)
        return {"key": key, "score": score, "reason": reason,
                "model_version": self.learner.model_version if score is not None else None}

    def lease(self, key: str, annotator: str) -> None:
        with self._lock:
            self._leases[key] = (annotator, time.time() + self.cfg.lease_seconds)

    def release(self, keys) -> None:
        with self._lock:
            for k in keys:
                self._leases.pop(k, None)

    def examples(self) -> dict[str, list[str]]:
        """Configured example keys per class, else the earliest consensus-labelled items of each class."""
        ex = {STYLISTIC: [k for k in self.cfg.examples_stylistic if k in self.pool],
              NOT_STYLISTIC: [k for k in self.cfg.examples_not_stylistic if k in self.pool]}
        if len(ex[STYLISTIC]) < 4 or len(ex[NOT_STYLISTIC]) < 4:
            cons = self.store.consensus()
            for k in sorted(cons):
                bucket = ex[STYLISTIC if cons[k] else NOT_STYLISTIC]
                if len(bucket) < 4 and k not in bucket and k in self.pool:
                    bucket.append(k)
        return ex

    def histogram(self, bins: int = 20) -> dict:
        # list() copies in one step: the feature worker may be adding scores meanwhile
        vals = np.asarray(list(self.learner.scores.values()), dtype=np.float64)
        counts, edges = np.histogram(vals, bins=bins, range=(0.0, 1.0))
        return {"counts": counts.tolist(), "edges": edges.round(4).tolist(), "n_scored": len(vals),
                "threshold": self.learner.threshold, "model_version": self.learner.model_version}


# --------------------------------------------------------------------------------------------- the web app
def create_app(cfg: LabelConfig, *, require_token: bool = False, token: str | None = None, session=None,
               start_background: bool = True):
    """FastAPI app for one labeling session. ``require_token`` checks ``token`` on every request."""
    try:
        from fastapi import FastAPI, HTTPException, Query
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
        from fastapi.staticfiles import StaticFiles
    except ImportError as exc:  # pragma: no cover - install hint
        raise ImportError("the labeling app needs fastapi and uvicorn: pip install fastapi uvicorn") from exc
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if require_token and not token:
        raise ValueError("require_token needs a token")
    session = session or build_session(cfg)

    @asynccontextmanager
    async def lifespan(app):
        if start_background:
            session.learner.start()
        yield
        session.learner.stop()

    app = FastAPI(title="bbst labeling", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(LabelStoreError)
    async def _store_error(request: Request, exc: LabelStoreError):
        return error(400, str(exc))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    loopback_hosts = {"127.0.0.1", "localhost", "[::1]", "::1"}

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if require_token:
            supplied = (request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
                        or _bearer(request.headers.get("authorization")))
            query_token = request.query_params.get("token")
            if query_token is not None and hmac.compare_digest(query_token.encode(), token.encode()):
                # the printed link carries ?token=: trade it for an HttpOnly cookie and drop it from the URL
                params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                url = request.url.path + ("?" + "&".join(f"{k}={v}" for k, v in params) if params else "")
                resp = RedirectResponse(url, status_code=303)
                resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return resp
            if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
                return error(401, "access token required: open the link printed at start, or send the "
                                  f"{TOKEN_HEADER} header")
        else:
            # loopback only: refuse other Host names so a web page cannot reach us by DNS rebinding
            host = (request.headers.get("host") or "").rsplit(":", 1)[0] if request.headers.get("host") else ""
            if host and host not in loopback_hosts:
                return error(403, f"host {host!r} not allowed: this server only answers on loopback")
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.get("/")
    def index():
        return FileResponse(STATIC_DIR / "label.html")

    @app.get("/dashboard")
    def dashboard():
        return FileResponse(STATIC_DIR / "dashboard.html")

    def check_key(key: str) -> None:
        if key not in session.pool:
            raise HTTPException(404, f"no image with key {key!r} in the pool")

    @app.get("/api/session")
    def api_session():
        lr = session.learner
        return {"guideline": cfg.guideline, "examples": session.examples(), "pool_size": len(session.pool),
                "pool": session.pool.source, "round": session.store.current_round(),
                "model_version": lr.model_version, "threshold": lr.threshold, "batch_size": cfg.batch_size,
                "retrain_every": cfg.active.retrain_every,
                "keymap": {"a": STYLISTIC, "x": NOT_STYLISTIC, " ": SKIP, "Backspace": "undo", "z": "zoom",
                           "g": "toggle grid"}}

    @app.get("/api/next")
    def api_next(annotator: str = Query(min_length=1, max_length=64, pattern=r"^[\w][\w .@+-]*$"),
                 n: int = Query(default=0, ge=0, le=200), exclude: str = Query(default="", max_length=100000)):
        excl = {k for k in exclude.split("\n") if k} if exclude else set()
        items = session.next_items(annotator, n or cfg.batch_size, excl)
        return {"items": items, "round": session.store.current_round(), "model_version": session.learner.model_version}

    @app.post("/api/release")
    def api_release(body: ReleaseIn):
        session.release(body.keys)
        return {"released": len(body.keys)}

    def _commit(annotator: str, items: list) -> list[int]:
        for it in items:
            check_key(it.key)
        rnd = session.store.current_round()
        ids = session.store.add_labels([{"key": it.key, "label": it.label, "annotator": annotator, "round": rnd,
                                             "model_version": it.model_version, "score_shown": it.score_shown,
                                             "reason": it.reason} for it in items])
        session.release([it.key for it in items])
        session.learner.prioritise([it.key for it in items if it.label != SKIP])
        session.learner.notify_labels()
        return ids

    @app.post("/api/label")
    def api_label(body: LabelIn):
        ids = _commit(body.annotator, [body])
        return {"id": ids[0], "key": body.key, "label": body.label, "round": session.store.current_round()}

    @app.post("/api/labels")
    def api_labels(body: BulkIn):
        if any(it.annotator != body.annotator for it in body.items):
            raise HTTPException(422, "every item of a bulk decision must carry the same annotator")
        ids = _commit(body.annotator, body.items)
        return {"ids": ids, "round": session.store.current_round()}

    @app.post("/api/undo")
    def api_undo(body: UndoIn):
        row = session.store.undo(body.annotator)
        if row is None:
            raise HTTPException(409, "nothing left to undo (only the last ten decisions are editable)")
        session.lease(row["key"], body.annotator)  # it is back on this annotator's screen, not anyone else's
        session.learner.notify_labels()
        return {"undone": row, "item": session.describe(row["key"], row["reason"])}

    @app.post("/api/edit")
    def api_edit(body: EditIn):
        new_id = session.store.edit(body.annotator, body.id, body.label, round=session.store.current_round())
        session.learner.notify_labels()
        return {"id": new_id}

    @app.get("/api/recent")
    def api_recent(annotator: str = Query(min_length=1, max_length=64, pattern=r"^[\w][\w .@+-]*$")):
        return {"recent": session.store.recent(annotator)}

    @app.post("/api/assign")
    def api_assign(body: AssignIn):
        for k in body.keys:
            check_key(k)
        for k in body.keys:
            for a in body.annotators:
                session.store.assign(k, a, AGREEMENT)
        return {"assigned": len(body.keys) * len(body.annotators)}

    @app.get("/api/image")
    def api_image(key: str = Query(min_length=1, max_length=512), size: Literal["thumb", "view", "full"] = "view"):
        check_key(key)
        headers = {"Cache-Control": "private, max-age=86400"}
        if size == "full":
            data = session.pool.read_bytes(key)
            return Response(data, media_type=_sniff_mime(data), headers=headers)
        side = cfg.thumb_size if size == "thumb" else cfg.view_size
        return Response(session.pool.rendition(key, side), media_type="image/jpeg", headers=headers)

    @app.get("/api/stats")
    def api_stats():
        lr = session.learner
        store = session.store
        return {"counts": store.counts(), "labels_total": store.label_count(include_skips=True),
                "rounds": store.rounds(), "round": store.current_round(), "model_version": lr.model_version,
                "agreement": agreement_summary(store.decisions_by_key()), "histogram": session.histogram(),
                "pool_size": len(session.pool), "features_cached": sum(1 for k in session.pool.keys
                                                                       if lr.has_features(k)),
                "feature_errors": len(lr.feature_errors), "retraining": lr.retraining, "last_error": lr.last_error,
                "retrain_every": cfg.active.retrain_every, "min_per_class": cfg.active.min_per_class}

    @app.post("/api/retrain")
    def api_retrain():
        if session.learner.retraining:
            raise HTTPException(409, "a retrain is already running")
        threading.Thread(target=_retrain_now, args=(session.learner,), daemon=True).start()
        return JSONResponse({"started": True}, status_code=202)

    @app.get("/api/export")
    def api_export(format: Literal["parquet", "csv"] = "parquet", include_undone: bool = False):
        tmp = Path(tempfile.mkdtemp(prefix="bbst-export-")) / f"labels.{format}"
        session.store.export_labels(tmp, include_undone=include_undone)
        return FileResponse(tmp, filename=f"{Path(cfg.db).stem}-labels.{format}",
                            media_type="application/vnd.apache.parquet" if format == "parquet" else "text/csv",
                            background=BackgroundTask(shutil.rmtree, tmp.parent, ignore_errors=True))

    @app.post("/api/import")
    async def api_import(request: Request, format: Literal["parquet", "csv"] = Query(...),
                         annotator: str = Query(default="import", min_length=1, max_length=64)):
        limit = int(cfg.max_upload_mb * (1 << 20))
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPException(413, f"import file larger than {cfg.max_upload_mb} MB")
        if not body:
            raise HTTPException(422, "empty import body: send the CSV or Parquet file as the request body")
        tmp = Path(tempfile.mkdtemp(prefix="bbst-import-")) / f"upload.{format}"
        tmp.write_bytes(bytes(body))
        try:
            n = session.store.import_labels(tmp, default_annotator=annotator)
        except LabelStoreError as exc:
            raise HTTPException(400, str(exc).replace(str(tmp), f"uploaded {format} file")) from None
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        unknown = sum(1 for k in session.store.decisions_by_key() if k not in session.pool)
        session.learner.notify_labels()
        return {"imported": n, "keys_not_in_pool": unknown}

    @app.post("/api/export/checkpoint")
    def api_export_checkpoint():
        out = export_dir(cfg) / f"classifier-round-{session.store.current_round():04d}.ckpt"
        try:
            version = session.learner.export_checkpoint(out)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"path": str(out), "model_version": version,
                "use": f"python pipelines/build_bbst.py --classifier {out}"}

    return app


def _bearer(value: str | None) -> str | None:
    if value and value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


def _sniff_mime(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


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
    """Open the pool and the store, build (or load) the backbone and head, and register the pool's items."""
    import torch

    from classifier.features import FeatureCache, feature_fingerprint

    if not cfg.pool:
        raise ConfigError("--pool is required (a curation run dir, shards, an image folder or a Parquet list)")
    torch.set_num_threads(max(1, cfg.torch_threads))
    db = Path(cfg.db)
    pool = open_pool(cfg.pool, cache_dir=db.parent / f"{db.stem}.thumbs")
    store = LabelStore(db)
    store.add_items((it.key, it.sha256, it.ref) for it in (pool.item(k) for k in pool.keys))
    head_result, version, demo = None, None, False
    if cfg.classifier:
        from classifier.checkpoint import load_classifier

        model, head_result, meta = load_classifier(cfg.classifier)
        version = str(meta.get("version") or Path(cfg.classifier).stem)
        demo = bool(meta.get("demo"))
    else:
        from classifier.factory import create_model

        # seeded so a backbone without weight files (tiny test variants) is the same network after a restart,
        # which keeps its feature-cache fingerprint valid
        torch.manual_seed(0)
        if cfg.weights is None and not cfg.model.startswith("test_"):
            log.warning("model %s has random-init trunks (no --weights): its features and scores are near useless; "
                        "see docs/classifier.md for where backbone weights go", cfg.model)
        model = create_model(cfg.model, weights=cfg.weights, style_weights=cfg.style_weights)
    model.eval()
    cache = FeatureCache(cfg.feature_cache or db.parent / f"{db.stem}.features", fingerprint=feature_fingerprint(model))
    learner = ActiveLearner(store, pool, model, cache, cfg.active, rounds_dir=db.parent / f"{db.stem}.rounds",
                            head_result=head_result, model_version=version, demo=demo)
    if head_result is not None and not store.rounds():
        learner.checkpoint_path = Path(cfg.classifier)
    return LabelSession(cfg, pool, store, learner)


EXAMPLES = (
    ("bbst label --pool bbst-demo --db labels.sqlite --classifier bbst-demo/demo-classifier",
     "label the demo output, starting from its DEMO classifier; open the printed address"),
    ("bbst label --pool RUN/shards --db labels.sqlite --weights cache --port 8001",
     "label a curation run's shards from scratch with backbone weights from the local caches"),
    ("bbst label --pool imgs/ --db labels.sqlite --model test_vit_shared --retrain-every 10",
     "a folder of images with a tiny random-init test model (a smoke run; useless suggestions)"),
)


def build_parser() -> argparse.ArgumentParser:
    from curate.cli import ConfigFlags, add_config_file_flags, make_parser

    p = make_parser("label", __doc__.splitlines()[0], EXAMPLES)
    add_config_file_flags(p, "LabelConfig", "sampling.random_share=0.5")
    flags = ConfigFlags(LabelConfig)
    flags.add(p, "pool", metavar="POOL", required=True)
    flags.add(p, "db", metavar="FILE")
    flags.add(p, "classifier", metavar="CKPT")
    flags.add(p, "model", metavar="NAME")
    flags.add(p, "weights", metavar="FILE|cache")
    flags.add(p, "style_weights", metavar="FILE|cache")
    flags.add(p, "server.host", metavar="ADDR")
    flags.add(p, "server.port")
    flags.add(p, "server.token", metavar="TOKEN")
    flags.add(p, "active.retrain_every")
    flags.add(p, "active.min_per_class")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"), type=str.lower,
                   help="server logging level (default: warning)")
    p.set_defaults(config_flags=flags)
    return p


def parse_args(argv=None) -> tuple[LabelConfig, argparse.Namespace]:
    from curate.cli import load_args

    args = build_parser().parse_args(argv)
    return load_args(LabelConfig, args, args.config_flags), args


@error_boundary("label")
def main(argv=None) -> int:
    cfg, args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    # hand the GIL over sooner (default 5 ms): a request thread waiting behind the feature worker is latency
    sys.setswitchinterval(0.001)
    require = needs_token(cfg.server.host)
    token = (cfg.server.token or secrets.token_urlsafe(24)) if require else None
    try:
        app = create_app(cfg, require_token=require, token=token)
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, BbstError):
            raise  # the boundary prints it (with its hint)
        # a missing or unreadable file deep in the model code: one clear line naming the file, no traceback
        print(format_error("label", exc), file=sys.stderr)
        return 2
    shown_host = cfg.server.host if ":" not in cfg.server.host else f"[{cfg.server.host}]"
    url = f"http://{shown_host}:{cfg.server.port}/"
    s = app.state.session
    print(f"bbst labeling: {len(s.pool)} images from {s.pool.source}, database {cfg.db}, "
          f"{s.store.label_count()} labels, round {s.store.current_round()}", flush=True)
    if require:
        print(f"access token: {token}", flush=True)
        print(f"open {url}?token={token}", flush=True)
    else:
        print(f"open {url}", flush=True)
    uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level=args.log_level.lower(),
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
