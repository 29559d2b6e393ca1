"""HTTP routes of the labeling app: request validation, access rules, and a mapping onto :class:`LabelSession`.

Access rules, in the order a request meets them:

* a request body larger than its limit is refused from its ``Content-Length`` before a byte of it is read
  (and a body without one is cut off at the limit);
* off loopback, every request needs the access token; on loopback, a ``Host`` that is not a loopback name is
  refused (DNS rebinding);
* every state-changing request (any method but GET/HEAD/OPTIONS; ``/api/next`` leases items, so it is a POST)
  is refused unless its ``Origin`` is this server's own or, without an ``Origin``, its ``Sec-Fetch-Site`` is
  ``same-origin`` or ``none``. Browsers set both headers and a page cannot forge them, so another site (another
  port on localhost included) cannot drive the session with simple requests. Scripts send either header;
* ``/api/import`` takes only ``text/csv``, ``application/vnd.apache.parquet`` or ``application/octet-stream``,
  never a type a cross-site form or a no-preflight ``fetch`` can send.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlencode, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request  # module level: route annotations are resolved in this module's globals

from classifier.labeling.agreement import agreement_summary
from classifier.labeling.pool import UnsafePathError
from classifier.labeling.session import LabelConfig, LabelSession, UnknownKey, build_session
from classifier.labeling.store import ANNOTATOR_MAX, ANNOTATOR_PATTERN, LabelStoreError, normalize_annotator
from classifier.training import MIN_HELD_OUT

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_HEADER = "x-access-token"
TOKEN_COOKIE = "bbst_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IMPORT_TYPES = {"csv": ("text/csv", "application/octet-stream"),
                "parquet": ("application/vnd.apache.parquet", "application/octet-stream")}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


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
def _norm(v):
    return normalize_annotator(v) if isinstance(v, str) else v


# annotator names are normalised (NFKC, whitespace trimmed and collapsed, case-folded) before they are checked
Annotator = Annotated[str, BeforeValidator(_norm),
                      StringConstraints(min_length=1, max_length=ANNOTATOR_MAX, pattern=ANNOTATOR_PATTERN)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Decision = Literal["stylistic", "not_stylistic", "skip"]


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: Annotator
    key: Key
    label: Decision
    score_shown: float | None = Field(default=None, ge=0.0, le=1.0)
    model_version: str | None = Field(default=None, max_length=200)
    reason: Literal["uncertain", "random", "agreement", "disagreement", "diverse", "review"] | None = None


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: Annotator
    items: list[LabelIn] = Field(min_length=1, max_length=500)


class NextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: Annotator
    n: int = Field(default=0, ge=0, le=200)  # 0: the session's batch_size
    exclude: list[Key] = Field(default_factory=list, max_length=1000)  # keys already on the page


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: Annotator


class EditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: Annotator
    id: int = Field(ge=1)
    label: Decision


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[Key] = Field(min_length=1, max_length=10000)
    annotators: list[Annotator] = Field(min_length=1, max_length=50)


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator: Annotator
    keys: list[Key] = Field(max_length=1000)


# --------------------------------------------------------------------------------------------- body size
def _too_large_message(limit: int, path: str) -> str:
    what = "import file" if path == "/api/import" else "request body"
    return f"{what} larger than {limit / (1 << 20):.2f} MB: refused"


class BodyTooLarge(StarletteHTTPException):
    """Raised while a body without ``Content-Length`` is read past its limit (answered as 413)."""

    def __init__(self, limit: int, path: str):
        super().__init__(413, _too_large_message(limit, path))


class BodyLimit:
    """ASGI middleware: refuse a body over its limit from ``Content-Length`` before reading it; count the bytes of
    a body without one and stop at the limit."""

    def __init__(self, app, json_limit: int, upload_limit: int):
        self.app, self.json_limit, self.upload_limit = app, json_limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"] == "/api/import" else self.json_limit
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send_json(send, 400, {"error": "malformed Content-Length"})
            if declared > limit:
                return await _send_json(send, 413, {"error": _too_large_message(limit, scope["path"])},
                                        close=True)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, scope["path"])
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, {"error": _too_large_message(limit, scope["path"])}, close=True)


async def _send_json(send, status: int, body: dict, close: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:  # the unread body must not be taken for the next request on this connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# --------------------------------------------------------------------------------------------- access rules
def same_origin(request: Request) -> bool:
    """True when a browser says the request comes from this server's own pages (or from no page at all)."""
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == (request.headers.get("host") or "").lower()
    return request.headers.get("sec-fetch-site", "").lower() in ("same-origin", "none")


def local_redirect(path: str, params: list[tuple[str, str]]) -> str:
    """A Location on this server: one leading slash (never ``//host``), the path and query percent-encoded."""
    location = "/" + quote(path.lstrip("/\\"), safe="/-._~!$&'()*+,;=:@%")
    return location + ("?" + urlencode(params) if params else "")


# --------------------------------------------------------------------------------------------- the web app
def create_app(cfg: LabelConfig, *, require_token: bool = False, token: str | None = None,
               session: LabelSession | None = None, start_background: bool = True):
    """FastAPI app for one labeling session. ``require_token`` checks ``token`` on every request."""
    try:
        from fastapi import FastAPI
        from fastapi.staticfiles import StaticFiles
    except ImportError as exc:  # pragma: no cover - install hint
        raise ImportError("the labeling app needs fastapi and uvicorn: pip install fastapi uvicorn") from exc

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
    app.add_middleware(BodyLimit, json_limit=int(cfg.max_json_kb) << 10,
                       upload_limit=int(cfg.max_upload_mb * (1 << 20)))
    _add_error_handlers(app)
    _add_access_rules(app, token if require_token else None)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(_routes(cfg, session))
    return app



def startup_lines(app, cfg: LabelConfig, token: str | None) -> list[str]:
    """What a starting labeling server prints: the pool, database and progress, the session's notes, the access
    token (when one is required) and the address to open."""
    host = cfg.server.host if ":" not in cfg.server.host else f"[{cfg.server.host}]"
    url = f"http://{host}:{cfg.server.port}/"
    s = app.state.session
    lines = [(f"bbst labeling: {len(s.pool)} images from {s.pool.source}, database {cfg.db}, "
              f"{s.store.label_count()} labels, round {s.store.current_round()}")]
    lines += [f"note: {note}" for note in (s.model_note, s.pool_note) if note]
    return lines + ([f"access token: {token}", f"open {url}?token={token}"] if token else [f"open {url}"])

def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app) -> None:
    """Every error is JSON ``{"error": message}``; an unexpected one names its type, never its traceback."""
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(LabelStoreError)
    async def _store_error(request: Request, exc: LabelStoreError):
        return _error(400, str(exc))

    @app.exception_handler(UnsafePathError)
    async def _unsafe_path(request: Request, exc: UnsafePathError):
        log.warning("refused to read a pool file: %s", exc)
        return _error(403, "this pool file was replaced by a link after the server started; refused")

    @app.exception_handler(UnknownKey)
    async def _unknown_key(request: Request, exc: UnknownKey):
        return _error(404, str(exc.args[0]))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def _add_access_rules(app, token: str | None) -> None:
    """The token (off loopback) or the loopback Host check, the same-origin rule, and the security headers."""
    from starlette.responses import RedirectResponse

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if token is not None:
            supplied = (request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
                        or _bearer(request.headers.get("authorization")))
            query_token = request.query_params.get("token")
            if query_token is not None and hmac.compare_digest(query_token.encode(), token.encode()):
                # the printed link carries ?token=: trade it for an HttpOnly cookie and drop it from the URL
                params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                resp = RedirectResponse(local_redirect(request.url.path, params), status_code=303)
                resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return resp
            if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
                return _error(401, "access token required: open the link printed at start, or send the "
                                   f"{TOKEN_HEADER} header")
        else:
            # loopback only: refuse other Host names so a web page cannot reach us by DNS rebinding
            host = (request.headers.get("host") or "").rsplit(":", 1)[0] if request.headers.get("host") else ""
            if host and host not in LOOPBACK_HOSTS:
                return _error(403, f"host {host!r} not allowed: this server only answers on loopback")
        if request.method not in SAFE_METHODS and not same_origin(request):
            log.warning("refused a cross-site %s %s (Origin %r, Sec-Fetch-Site %r)", request.method,
                        request.url.path, request.headers.get("origin"), request.headers.get("sec-fetch-site"))
            return _error(403, "cross-site request refused: state-changing requests must come from this server's "
                               "own page (scripts: send an Origin header naming this server, or Sec-Fetch-Site: none)")
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response


def _routes(cfg: LabelConfig, session: LabelSession):
    """The pages and the JSON API: each route validates its input and hands it to ``session``."""
    from fastapi import APIRouter, HTTPException, Query
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.background import BackgroundTask

    router = APIRouter()

    @router.get("/")
    def index():
        return FileResponse(STATIC_DIR / "label.html")

    @router.get("/dashboard")
    def dashboard():
        return FileResponse(STATIC_DIR / "dashboard.html")

    @router.get("/api/session")
    def api_session():
        lr = session.learner
        return {"guideline": cfg.guideline, "examples": session.examples(), "pool_size": len(session.pool),
                "pool": session.pool.source, "round": session.store.current_round(),
                "model_version": lr.model_version, "threshold": lr.threshold, "batch_size": cfg.batch_size,
                "retrain_every": lr.cfg.retrain_every, "keymap": session.keymap(),
                "pool_note": session.pool_note, "model_note": session.model_note, "progress": session.progress()}

    @router.get("/api/examples")
    def api_examples():
        return session.examples()

    @router.get("/api/progress")
    def api_progress(annotator: str | None = Query(default=None, max_length=256)):
        return session.progress(normalize_annotator(annotator) if annotator else None)

    @router.post("/api/next")
    def api_next(body: NextIn):
        items = session.next_items(body.annotator, body.n or cfg.batch_size, set(body.exclude))
        return {"items": items, "round": session.store.current_round(), "model_version": session.learner.model_version,
                "progress": session.progress(body.annotator)}

    @router.post("/api/release")
    def api_release(body: ReleaseIn):
        session.release(body.keys)
        return {"released": len(body.keys)}

    def _decisions(items: list[LabelIn]) -> list[dict]:
        return [it.model_dump(exclude={"annotator"}) for it in items]

    @router.post("/api/label")
    def api_label(body: LabelIn):
        ids = session.commit(body.annotator, _decisions([body]))
        return {"id": ids[0], "key": body.key, "label": body.label, "round": session.store.current_round(),
                "progress": session.progress(body.annotator)}

    @router.post("/api/labels")
    def api_labels(body: BulkIn):
        if any(it.annotator != body.annotator for it in body.items):
            raise HTTPException(422, "every item of a bulk decision must carry the same annotator")
        ids = session.commit(body.annotator, _decisions(body.items))
        return {"ids": ids, "round": session.store.current_round(), "progress": session.progress(body.annotator)}

    @router.post("/api/undo")
    def api_undo(body: UndoIn):
        out = session.undo(body.annotator)
        if out is None:
            raise HTTPException(409, "nothing left to undo (only the last ten decisions are editable)")
        return {**out, "progress": session.progress(body.annotator)}

    @router.post("/api/edit")
    def api_edit(body: EditIn):
        return {"id": session.edit(body.annotator, body.id, body.label)}

    @router.get("/api/recent")
    def api_recent(annotator: str = Query(min_length=1, max_length=256)):
        return {"recent": session.store.recent(annotator)}

    @router.post("/api/assign")
    def api_assign(body: AssignIn):
        return {"assigned": session.assign(body.keys, body.annotators)}

    @router.get("/api/image")
    def api_image(key: str = Query(min_length=1, max_length=512), size: Literal["thumb", "view", "full"] = "view"):
        if key not in session.pool:
            raise HTTPException(404, f"no image with key {key!r} in the pool")
        headers = {"Cache-Control": "private, max-age=86400"}
        if size == "full":
            data = session.pool.read_bytes(key)
            return Response(data, media_type=_sniff_mime(data), headers=headers)
        side = cfg.thumb_size if size == "thumb" else cfg.view_size
        return Response(session.pool.rendition(key, side), media_type="image/jpeg", headers=headers)

    @router.get("/api/stats")
    def api_stats():
        lr = session.learner
        store = session.store
        return {"counts": store.counts(), "labels_total": store.label_count(include_skips=True),
                "rounds": store.rounds(), "round": store.current_round(), "model_version": lr.model_version,
                "agreement": agreement_summary(store.decisions_by_key()), "histogram": session.histogram(),
                "pool_size": len(session.pool), "features_cached": sum(1 for k in session.pool.keys
                                                                       if lr.has_features(k)),
                "feature_errors": len(lr.feature_errors), "retraining": lr.retraining, "last_error": lr.last_error,
                "retrain_every": lr.cfg.retrain_every, "min_per_class": lr.cfg.min_per_class,
                "pool_note": session.pool_note, "min_held_out": MIN_HELD_OUT, "progress": session.progress()}

    @router.post("/api/retrain")
    def api_retrain():
        if not session.retrain_in_background():
            raise HTTPException(409, "a retrain is already running")
        return JSONResponse({"started": True}, status_code=202)

    @router.get("/api/export")
    def api_export(format: Literal["parquet", "csv"] = "parquet", include_undone: bool = False):
        tmp = Path(tempfile.mkdtemp(prefix="bbst-export-")) / f"labels.{format}"
        session.store.export_labels(tmp, include_undone=include_undone)
        return FileResponse(tmp, filename=f"{Path(cfg.db).stem}-labels.{format}",
                            media_type="application/vnd.apache.parquet" if format == "parquet" else "text/csv",
                            background=BackgroundTask(shutil.rmtree, tmp.parent, ignore_errors=True))

    @router.post("/api/import")
    async def api_import(request: Request, format: Literal["parquet", "csv"] = Query(...),
                         annotator: str = Query(default="import", min_length=1, max_length=256)):
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in IMPORT_TYPES[format]:
            raise HTTPException(415, f"import needs Content-Type {' or '.join(IMPORT_TYPES[format])} "
                                     f"(got {ctype or 'none'!r})")
        body = await request.body()  # BodyLimit has bounded it already
        if not body:
            raise HTTPException(422, "empty import body: send the CSV or Parquet file as the request body")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(session.import_bytes, body, format, annotator)

    @router.post("/api/export/checkpoint")
    def api_export_checkpoint():
        try:
            return session.export_checkpoint()
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None

    return router


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
