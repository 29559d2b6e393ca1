"""Download stage: polite, bounded, concurrent fetching of a batch of URLs; every failure becomes a row status.

http(s) URLs go through a pooled HTTP client behind the address policy; local paths, ``file://`` and other
fsspec URLs are read through fsspec when they lie under ``input_roots`` (see :mod:`curate.inputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import ipaddress
import logging
import random
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from core.paths import resolve_within
from core.schema import Status

READ_CHUNK = 1 << 20  # most bytes one read of a response body returns


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bbst")
    except Exception:  # noqa: BLE001 - running from a source tree that was never installed
        return "0.1.0"


log = logging.getLogger(__name__)

USER_AGENT_TOKEN = "bbst"  # the token X-Robots-Tag ``ua: directive`` scoping is matched against
DEFAULT_USER_AGENT = f"bbst/{_version()} (+https://github.com/bbst-project/bbst; image dataset builder)"
REDIRECT_CODES = (301, 302, 303, 307, 308)
# X-Robots-Tag directives that take a value after a colon; a colon elsewhere introduces a user-agent scope.
_VALUED_DIRECTIVES = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")

# Downloaded image types we recognise by their magic bytes (Content-Type headers are not trusted).
IMAGE_MIMES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/avif",
               "image/heic")


@dataclasses.dataclass
class DownloadConfig:
    threads: int = 64  # concurrent downloads per worker (thread pool size; also the connection pool size)
    per_host_concurrency: int = 16  # at most this many requests in flight to one host per worker
    timeout: float = 10.0  # socket connect/read timeout in seconds for each network operation
    total_timeout: float = 30.0  # deadline for one attempt (all redirects + body); stops slow-trickle servers
    retries: int = 2  # extra attempts after a timeout, connection error, 429 or 5xx (never after other 4xx)
    backoff_base: float = 0.5  # first retry waits about this long (seconds), doubling each retry, with jitter
    backoff_max: float = 8.0  # cap on one backoff wait (seconds)
    retry_after_max: float = 30.0  # cap on a server's Retry-After wait (seconds)
    max_bytes: int = 50 * 1024 * 1024  # larger bodies are refused (Content-Length) or cut off -> too_large
    max_redirects: int = 5  # more redirect hops than this -> download_error
    user_agent: str = DEFAULT_USER_AGENT  # honest User-Agent naming the tool and where to learn about it
    disallowed_robots_directives: list[str] = dataclasses.field(
        default_factory=lambda: ["noai", "noimageai"])  # X-Robots-Tag values that opt an image out
    respect_noindex: bool = False  # also treat X-Robots-Tag noindex/noimageindex as an opt-out
    allow_private_network: bool = False  # allow loopback/private/link-local/reserved targets (demo, tests)
    allowed_networks: list[str] = dataclasses.field(
        default_factory=list)  # CIDRs allowed even when private networks are not (e.g. one internal mirror)
    blocked_networks: list[str] = dataclasses.field(
        default_factory=lambda: ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"]
    )  # CIDRs refused always, even with allow_private_network (cloud metadata endpoints)
    trust_env: bool = False  # honour HTTP(S)_PROXY / .netrc from the environment
    dns_cache_seconds: float = 60.0  # how long a host's resolved addresses are reused for the address check
    input_roots: list[str] = dataclasses.field(
        default_factory=list)  # folders/fsspec URL prefixes that rows may name as paths or non-http URLs; [] = none
    storage_options: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=dict)  # fsspec options per protocol for such rows, e.g. {s3: {client_kwargs: {...}}}

    def __post_init__(self) -> None:
        if self.threads < 1 or self.per_host_concurrency < 1:
            raise ValueError("threads and per_host_concurrency must be >= 1")
        if self.retries < 0 or self.max_redirects < 0 or self.max_bytes < 1:
            raise ValueError("retries and max_redirects must be >= 0 and max_bytes >= 1")
        for cidr in [*self.allowed_networks, *self.blocked_networks]:
            ipaddress.ip_network(cidr, strict=False)  # a typo is a config error, not a silent no-op
        from curate.inputs import canonical, url_kind

        for root in self.input_roots:
            if url_kind(root) not in ("local", "fsspec"):
                raise ValueError(f"input_roots: {root!r} is not an absolute path or fsspec URL")
            canonical(root)

    @property
    def robots_directives(self) -> frozenset[str]:
        extra = ("noindex", "noimageindex") if self.respect_noindex else ()
        return frozenset(d.lower() for d in [*self.disallowed_robots_directives, *extra])


def sniff_mime(data: bytes | None) -> str | None:
    """Image MIME type from the first bytes, or None when the bytes are not a recognised image format."""
    if not data:
        return None
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM") and len(head) >= 26:
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "image/heic"
    return None


def robots_opt_out(values: list[str], directives: frozenset[str], ua_token: str = USER_AGENT_TOKEN) -> str | None:
    """The X-Robots-Tag directive that opts us out, or None.

    Each header value is a comma list; an item ``bot: directive`` scopes it (and the items after it in the
    same value) to user agent ``bot``. Unscoped items and items scoped to our token (or ``*``) apply.
    """
    ua_token = ua_token.lower()
    for value in values:
        scope: str | None = None
        for item in value.split(","):
            item = item.strip().lower()
            if not item:
                continue
            if ":" in item:
                head, rest = (p.strip() for p in item.split(":", 1))
                if head not in _VALUED_DIRECTIVES:
                    scope, item = head, rest
            if scope not in (None, ua_token, "*"):
                continue
            if item in directives:
                return item
    return None


class _Fail(Exception):
    """Internal: a per-URL outcome that ends the attempt (status, message, retryable, http status, retry wait)."""

    def __init__(self, status: Status, error: str, retryable: bool = False, http_status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(error)
        self.status, self.error, self.retryable = status, error, retryable
        self.http_status, self.retry_after = http_status, retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class AddressPolicy:
    """Decides whether a host may be contacted: resolves it and checks every address against the policy.

    The check runs before each request and each redirect hop, so a public URL that redirects to 10.0.0.1 or
    169.254.169.254 is refused without any packet being sent there.
    """

    def __init__(self, cfg: DownloadConfig):
        self.allow_private = cfg.allow_private_network
        self.allowed = [ipaddress.ip_network(c, strict=False) for c in cfg.allowed_networks]
        self.blocked = [ipaddress.ip_network(c, strict=False) for c in cfg.blocked_networks]
        self.cache_seconds = cfg.dns_cache_seconds
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def resolve(self, host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((host, port))
        if hit and hit[0] > now:
            return hit[1]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addrs = list(dict.fromkeys(info[4][0] for info in infos))  # resolver order, deduplicated
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(host, port)] = (now + self.cache_seconds, addrs)
        return addrs

    def refusal(self, host: str, port: int) -> str | None:
        """Why ``host`` may not be contacted (a short message), or None when it may. Raises on DNS failure."""
        return self.check(host, self.resolve(host, port))

    def check(self, host: str, addrs: list[str]) -> str | None:
        """Why ``host`` at ``addrs`` may not be contacted, or None when every address is acceptable.

        An IPv6 address that carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is judged by both:
        ``[::127.0.0.1]`` or ``[64:ff9b::a00:1]`` reach the IPv4 host through a translator or tunnel.
        """
        for addr in addrs:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            embedded = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
            forms = [ip, *embedded]
            for form in forms:
                if any(form in net for net in self.blocked):
                    return f"{host} resolves to blocked address {_describe(ip, form)}"
            if any(ip in net for net in self.allowed) or (embedded and all(
                    any(e in net for net in self.allowed) for e in embedded)):
                continue
            if self.allow_private:
                continue
            if ip in NON_GLOBAL_V6:
                return f"{host} resolves to non-public address {ip}"
            for form in forms:
                if not form.is_global:
                    return f"{host} resolves to non-public address {_describe(ip, form)}"
        return None


# IPv6 ranges that carry an IPv4 address, and where (RFC 4291 compatible/mapped, RFC 6052/8215 NAT64, RFC 6145
# translated, RFC 3056 6to4, RFC 4380 Teredo).
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
# Local-use NAT64 prefixes are site-specific by definition: refused whatever they embed.
NON_GLOBAL_V6 = (ipaddress.ip_network("64:ff9b:1::/48"),)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address that ``ip`` carries and that a translator or tunnel would deliver to (may be empty)."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped:
        out.append(ip.ipv4_mapped)
    if ip in _V4_COMPATIBLE or ip in _V4_TRANSLATED or ip in _NAT64_WELL_KNOWN:
        out.append(low32)
    if ip in NON_GLOBAL_V6[0]:
        # RFC 6052 /48 layout: IPv4 bits 0-15 in bits 48-63, bits 16-31 in bits 72-87 (bits 64-71 are "u")
        v = int(ip)
        out.append(ipaddress.IPv4Address((((v >> 64) & 0xFFFF) << 16) | ((v >> 40) & 0xFFFF)))
    if ip.sixtofour:
        out.append(ip.sixtofour)
    if ip.teredo:
        out.extend(ip.teredo)  # (server, client); the client address is de-obfuscated by ipaddress
    return out


def _describe(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, form) -> str:
    return str(ip) if form == ip else f"{ip} (embeds IPv4 {form})"


class BlockedAddressError(OSError):
    """Raised at connect time when the address policy refuses a host (the pinned connection below)."""


def _pinned_adapter(policy: AddressPolicy, pool_maxsize: int):
    """A requests adapter whose connections go only to addresses the policy approved.

    The policy check before each request gives a clear status; this closes the gap behind it: the socket is
    opened to the very addresses that were checked (from the policy's resolver cache), not to whatever a second
    DNS lookup returns, so a name that re-resolves to a private address in between (DNS rebinding) is refused.
    TLS still verifies and sends SNI for the host name.
    """
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    def pinned_new_conn(conn, parent_new_conn):
        host = conn._dns_host
        try:
            addrs = policy.resolve(host, conn.port)
        except socket.gaierror as exc:
            raise NewConnectionError(conn, f"DNS lookup failed for {host}: {exc}") from exc
        refusal = policy.check(host, addrs)
        if refusal:
            raise BlockedAddressError(refusal)
        last: Exception | None = None
        try:
            for addr in addrs:
                conn._dns_host = addr
                try:
                    return parent_new_conn()
                except (NewConnectionError, ConnectTimeoutError) as exc:
                    last = exc
        finally:
            conn._dns_host = host  # a later reconnect resolves and checks again
        raise last if last else NewConnectionError(conn, f"no address for {host}")

    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self):
            return pinned_new_conn(self, super()._new_conn)

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self):
            return pinned_new_conn(self, super()._new_conn)

    class PinnedHTTPPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    adapter = HTTPAdapter(pool_connections=256, pool_maxsize=pool_maxsize, max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}
    return adapter


def _blocked_cause(exc: BaseException) -> BlockedAddressError | None:
    """The BlockedAddressError somewhere inside urllib3/requests' exception wrapping, if any."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BlockedAddressError):
            return e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])
    return None


def _check_url(url: Any) -> urllib.parse.SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise _Fail(Status.INVALID_URL, "empty URL")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _Fail(Status.INVALID_URL, f"malformed URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _Fail(Status.INVALID_URL, f"unsupported scheme {parts.scheme!r}" if parts.scheme else "no scheme")
    if not parts.hostname:
        raise _Fail(Status.INVALID_URL, "no host in URL")
    return parts


class Downloader:
    """Callable batch stage: adds ``image``, ``status``, ``error``, ``num_bytes``, ``http_status``, ``mime``.

    One instance per worker (Ray actor). It owns a thread pool of ``threads`` and one pooled
    ``requests.Session`` so connections to a host are reused across rows and batches.
    """

    OUTPUT_COLUMNS = ("image", "status", "error", "num_bytes", "http_status", "mime")

    def __init__(self, cfg: DownloadConfig | None = None):
        import requests

        self.cfg = cfg or DownloadConfig()
        self.session = requests.Session()
        self.session.trust_env = self.cfg.trust_env
        self.session.headers.update({"User-Agent": self.cfg.user_agent, "Accept": "image/*,*/*;q=0.5",
                                     "Accept-Encoding": "identity"})
        self.policy = AddressPolicy(self.cfg)
        from curate.inputs import InputPolicy

        self.inputs = InputPolicy(self.cfg.input_roots)
        self._filesystems: dict[str, Any] = {}
        # Retries are ours (with backoff and Retry-After), so the adapter never retries by itself.
        adapter = _pinned_adapter(self.policy, self.cfg.threads)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="bbst-download")
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._host_lock = threading.Lock()
        self._directives = self.cfg.robots_directives

    # -- batch interface -------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["url"])
        status_in = batch.get("status")
        todo = [i for i in range(n) if status_in is None or status_in[i] in (None, Status.OK.value)]
        results = dict(zip(todo, self.pool.map(self.fetch, [batch["url"][i] for i in todo]), strict=True))
        out = dict(batch)
        for col in self.OUTPUT_COLUMNS:
            prev = batch.get(col)
            values = np.empty(n, dtype=object)
            for i in range(n):
                values[i] = results[i][col] if i in results else (prev[i] if prev is not None else None)
            out[col] = values
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.session.close()

    # -- one URL -----------------------------------------------------------------------------------------
    def fetch(self, url: Any) -> dict[str, Any]:
        """Fetch one URL with retries; returns the row's output columns. Never raises for per-URL problems."""
        row: dict[str, Any] = {"image": None, "status": Status.OK.value, "error": None, "num_bytes": None,
                               "http_status": None, "mime": None}
        attempts = self.cfg.retries + 1
        for attempt in range(attempts):
            try:
                data, http_status, mime = self._guarded_attempt(url)
                row.update(image=data, status=Status.OK.value, error=None, num_bytes=len(data),
                           http_status=http_status, mime=mime)
                return row
            except _Fail as fail:
                row.update(status=fail.status.value, error=fail.error, http_status=fail.http_status)
                if not fail.retryable or attempt == attempts - 1:
                    if fail.retryable and attempts > 1:
                        row["error"] = f"{fail.error} (after {attempts} attempts)"
                    return row
                time.sleep(self._backoff(attempt, fail.retry_after))
        return row  # pragma: no cover - the loop always returns

    def _guarded_attempt(self, url: Any) -> tuple[bytes, int | None, str]:
        """One attempt; an exception nobody anticipated for this URL is logged with its traceback and becomes
        a ``download_error`` row, so one odd URL cannot take down a batch of thousands."""
        try:
            return self._attempt(url)
        except _Fail:
            raise
        except Exception as exc:
            log.exception("unexpected error downloading %r", url)
            raise _Fail(Status.DOWNLOAD_ERROR, f"unexpected {type(exc).__name__}: {exc}"[:200]) from None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.retry_after_max)
        wait = min(self.cfg.backoff_max, self.cfg.backoff_base * (2**attempt))
        return wait * random.uniform(0.5, 1.0)  # jitter spreads retries from many workers

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._host_lock:
            slot = self._host_slots.get(host)
            if slot is None:
                slot = self._host_slots[host] = threading.BoundedSemaphore(self.cfg.per_host_concurrency)
            return slot

    def _attempt(self, url: Any) -> tuple[bytes, int | None, str]:
        """One attempt: follow redirects by hand (checking each hop's address), then read the body under caps."""
        import requests

        from curate.inputs import url_kind

        kind = url_kind(url) if isinstance(url, str) else "other"
        if kind in ("local", "fsspec"):
            return self._read_input(url.strip())
        if kind == "relative":
            raise _Fail(Status.INVALID_URL, "relative path: rows name files by absolute path or file:// URL")
        deadline = time.monotonic() + self.cfg.total_timeout
        current = url
        for hop in range(self.cfg.max_redirects + 1):
            parts = _check_url(current)
            host = parts.hostname.lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                refusal = self.policy.refusal(host, port)
            except UnicodeError as exc:  # IDNA: empty or over-long labels ("a..b", 64+ characters)
                raise _Fail(Status.INVALID_URL, f"invalid host name {host[:80]!r}: {exc}") from None
            except OSError as exc:
                raise _Fail(Status.DOWNLOAD_ERROR, f"DNS lookup failed for {host}: {exc}") from None
            if refusal:
                raise _Fail(Status.BLOCKED_ADDRESS, refusal + (f" (redirect hop {hop})" if hop else ""))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Fail(Status.DOWNLOAD_ERROR, f"timed out after {self.cfg.total_timeout:g}s", retryable=True)
            with self._slot(f"{host}:{port}"):
                try:
                    wait = min(self.cfg.timeout, remaining)  # no single socket wait may overrun the deadline
                    resp = self.session.get(current, stream=True, allow_redirects=False, timeout=(wait, wait))
                except requests.exceptions.Timeout:
                    raise _Fail(Status.DOWNLOAD_ERROR, "timeout", retryable=True) from None
                except requests.exceptions.InvalidURL as exc:
                    raise _Fail(Status.INVALID_URL, f"invalid URL: {exc}") from None
                except requests.exceptions.RequestException as exc:
                    blocked = _blocked_cause(exc)
                    if blocked is not None:
                        raise _Fail(Status.BLOCKED_ADDRESS, f"{blocked} (at connect)") from None
                    raise _Fail(Status.DOWNLOAD_ERROR, f"connection error: {_short(exc)}", retryable=True) from None
                try:
                    if resp.status_code in REDIRECT_CODES:
                        location = resp.headers.get("Location")
                        if not location:
                            raise _Fail(Status.DOWNLOAD_ERROR, f"HTTP {resp.status_code} without Location",
                                        http_status=resp.status_code)
                        self._drain(resp)
                        current = urllib.parse.urljoin(current, location)
                        continue
                    return self._read(resp, deadline)
                finally:
                    resp.close()
        raise _Fail(Status.DOWNLOAD_ERROR, f"too many redirects (more than {self.cfg.max_redirects})")

    def _filesystem(self, url: str):
        """The fsspec filesystem for ``url``'s protocol (one per protocol and worker) and the path in it."""
        import fsspec

        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        fs = self._filesystems.get(protocol)
        if fs is None:
            fs = self._filesystems[protocol] = fsspec.filesystem(protocol, **self.cfg.storage_options.get(protocol, {}))
        return fs, fs._strip_protocol(url), protocol

    def _read_input(self, url: str) -> tuple[bytes, None, str]:
        """Read a local path or fsspec URL: the same statuses as http where they apply (missing -> download_error
        without retry, transient errors retried, over max_bytes -> too_large, not an image -> not_image)."""
        refusal = self.inputs.refusal(url)
        if refusal:
            raise _Fail(Status.BLOCKED_ADDRESS, refusal)
        try:
            fs, path, protocol = self._filesystem(url)
        except (ImportError, ValueError) as exc:
            raise _Fail(Status.INVALID_URL, f"cannot read {url[:80]}: {_short(exc)}") from None
        if protocol in ("file", "local"):
            path, outside = resolve_within(path, self.inputs.local_roots())  # read the real path, checked once
            if outside:
                raise _Fail(Status.OUTSIDE_ROOT, outside)
        # per_host_concurrency counts per bucket (or host) of a remote filesystem, and once for local files
        bucket = "" if protocol in ("file", "local") else path.split("/", 1)[0]
        with self._slot(f"{protocol}://{bucket}"):
            try:
                size = fs.size(path)
                if size is not None and size > self.cfg.max_bytes:
                    raise _Fail(Status.TOO_LARGE, f"file size {size} > max_bytes {self.cfg.max_bytes}")
                with fs.open(path, "rb") as f:
                    data = f.read(self.cfg.max_bytes + 1)
            except _Fail:
                raise
            except FileNotFoundError:
                raise _Fail(Status.DOWNLOAD_ERROR, "file not found") from None
            except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
                raise _Fail(Status.DOWNLOAD_ERROR, f"cannot read: {_short(exc)}") from None
            except Exception as exc:  # noqa: BLE001 - network filesystems raise their own kinds for transient faults
                raise _Fail(Status.DOWNLOAD_ERROR, f"read failed: {_short(exc)}", retryable=True) from None
        if len(data) > self.cfg.max_bytes:
            raise _Fail(Status.TOO_LARGE, f"body over max_bytes {self.cfg.max_bytes}")
        mime = sniff_mime(data)
        if mime is None:
            what = "empty file" if not data else ("HTML page" if _looks_html(data) else "not an image")
            raise _Fail(Status.NOT_IMAGE, what)
        return data, None, mime

    def _drain(self, resp) -> None:
        """Read a small redirect body so the connection can go back to the pool; large ones just close."""
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= 65536:
            with contextlib.suppress(Exception):  # a broken redirect body only costs the connection
                resp.raw.read(int(length) + 1)
                resp.raw.release_conn()

    def _read(self, resp, deadline: float) -> tuple[bytes, int, str]:
        status = resp.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
            raise _Fail(Status.DOWNLOAD_ERROR, f"HTTP {status}", retryable=True, http_status=status,
                        retry_after=retry_after)
        if status >= 400 or status < 200:
            raise _Fail(Status.DOWNLOAD_ERROR, f"HTTP {status}", http_status=status)
        directive = robots_opt_out(resp.raw.headers.getlist("X-Robots-Tag"), self._directives)
        if directive:
            raise _Fail(Status.OPTED_OUT, f"X-Robots-Tag: {directive}", http_status=status)
        length = resp.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > self.cfg.max_bytes:
            raise _Fail(Status.TOO_LARGE, f"Content-Length {int(length)} > max_bytes {self.cfg.max_bytes}",
                        http_status=status)
        chunks: list[bytes] = []
        total = 0
        raw = resp.raw
        try:
            while True:
                if time.monotonic() > deadline:
                    raise _Fail(Status.DOWNLOAD_ERROR, f"timed out after {self.cfg.total_timeout:g}s "
                                f"(body too slow, {total} bytes read)", retryable=True, http_status=status)
                # read1 returns what has arrived (up to the size) instead of waiting to fill it, so the
                # deadline above is checked while a slow server trickles bytes.
                # Up to 1 MiB per call: on a fast link one call takes what the socket holds (64 KiB reads
                # cost ~25 % more CPU per image, mostly thread switches between the download threads).
                chunk = raw.read1(READ_CHUNK, decode_content=True)
                if not chunk:
                    break
                total += len(chunk)
                if total > self.cfg.max_bytes:
                    raise _Fail(Status.TOO_LARGE, f"body over max_bytes {self.cfg.max_bytes}", http_status=status)
                chunks.append(chunk)
        except _Fail:
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3/socket errors while streaming (reset, incomplete read)
            name = type(exc).__name__
            retryable = "Timeout" in name or isinstance(exc, (OSError, ConnectionError)) or "Protocol" in name \
                or "IncompleteRead" in name
            raise _Fail(Status.DOWNLOAD_ERROR, f"body read failed: {_short(exc)}", retryable=retryable,
                        http_status=status) from None
        raw.release_conn()
        data = b"".join(chunks)
        mime = sniff_mime(data)
        if mime is None:
            declared = (resp.headers.get("Content-Type") or "none").split(";")[0].strip()
            what = "empty body" if not data else ("HTML page" if _looks_html(data) else "not an image")
            raise _Fail(Status.NOT_IMAGE, f"{what} (Content-Type {declared})", http_status=status)
        return data, status, mime


def _looks_html(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def _short(exc: BaseException, limit: int = 160) -> str:
    """One-line exception text: the innermost cause, trimmed (urllib3 nests the real reason deep)."""
    inner = exc
    while True:
        nxt = inner.__cause__ or inner.__context__
        if nxt is None or nxt is inner:
            break
        inner = nxt
    text = f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
    return text.replace("\n", " ")[:limit]
