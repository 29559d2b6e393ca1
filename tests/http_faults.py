"""Loopback HTTP server with fault injection (errors, slow/broken bodies, redirects, odd images) for download tests."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from core import synthetic

Route = Callable[["_Handler"], None]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb by declaration)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png16_rgb(width: int, height: int, seed: int = 0) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one, so the chunks are assembled here)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 65536, size=(height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per scanline
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def png16_gray_blank(width: int, height: int) -> bytes:
    """A complete, valid 16-bit grayscale PNG of zeros; deflate packs 13376^2 of them into about 348 KB."""
    deflate = zlib.compressobj(9)
    row = b"\x00" * (1 + 2 * width)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def webp_lossless_blank(width: int, height: int) -> bytes:
    """A valid lossless WebP of one black colour at any size in a few dozen bytes.

    Written bit by bit (VP8L, RFC 9649): no transform, no colour cache, and five prefix codes of one symbol each,
    so every pixel costs zero bits. libwebp would need the whole raster in memory to encode it.
    """
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> k) & 1 for k in range(n))

    put(0x2F, 8)
    put(width - 1, 14)
    put(height - 1, 14)
    put(0, 1)  # alpha not used
    put(0, 3)  # version
    put(0, 3)  # no transform, no colour cache, no meta prefix codes
    for _ in range(5):  # green, red, blue, alpha, distance: simple code, one 1-bit symbol (0)
        put(1, 1), put(0, 1), put(0, 1), put(0, 1)
    bits.extend([0] * (-len(bits) % 8))
    data = bytes(sum(b << k for k, b in enumerate(bits[i:i + 8])) for i in range(0, len(bits), 8))
    data += b"\x00" * (len(data) % 2)
    chunk = b"VP8L" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def jpeg_sof_patched(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header's size field rewritten (the scan data stay those of the real size)."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = jpeg.find(marker)
        if at > 0:
            return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]
    raise ValueError("no SOF0/1/2 marker")


def jpeg_cut(jpeg: bytes, fraction: float) -> bytes:
    """The first ``fraction`` of ``jpeg``, closed with an EOI marker as if it were complete."""
    return jpeg[:int(len(jpeg) * fraction)] + b"\xff\xd9"


def jpeg_middle_zeroed(jpeg: bytes) -> bytes:
    """``jpeg`` with its middle third overwritten by zero bytes (header and EOI intact)."""
    n = len(jpeg)
    return jpeg[:n // 3] + b"\x00" * (2 * n // 3 - n // 3) + jpeg[2 * n // 3:]


def exif_rotated_jpeg(width: int = 800, height: int = 1200, orientation: int = 6) -> bytes:
    """A JPEG stored ``width`` x ``height`` carrying an EXIF Orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return synthetic.encode(synthetic.photo_like(width, height, seed=3), "JPEG", exif=exif.tobytes())


def sample_images(side: int = 96) -> dict[str, tuple[bytes, str]]:
    """Named test images ``{name: (bytes, content_type)}``; ``side`` is the short side of the ordinary ones."""
    w, h = side + side // 3, side
    photo = synthetic.photo_like(w, h, seed=1)
    art = synthetic.artwork_like(w, h, seed=2)
    gray16 = Image.fromarray((np.linspace(0, 65535, w * h).reshape(h, w)).astype(np.uint16))
    rgba = art.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((w, h)))
    frames = [synthetic.artwork_like(w, h, seed=s).convert("P") for s in (4, 5)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    awebp = io.BytesIO()
    frames[0].convert("RGB").save(awebp, "WEBP", save_all=True, append_images=[frames[1].convert("RGB")],
                                  duration=100)
    apng = io.BytesIO()
    frames[0].convert("RGB").save(apng, "PNG", save_all=True, append_images=[frames[1].convert("RGB")],
                                  duration=100)
    jpeg = synthetic.encode(photo, "JPEG")
    return {
        "ok.jpg": (jpeg, "image/jpeg"),
        "ok.png": (synthetic.encode(art, "PNG"), "image/png"),
        "gray.jpg": (synthetic.encode(photo.convert("L"), "JPEG"), "image/jpeg"),
        "cmyk.jpg": (synthetic.encode(photo.convert("CMYK"), "JPEG"), "image/jpeg"),
        "png16.png": (synthetic.encode(gray16, "PNG"), "image/png"),
        "png16-rgb.png": (png16_rgb(w, h), "image/png"),
        "palette.png": (synthetic.encode(art.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "image/png"),
        "alpha.png": (synthetic.encode(rgba, "PNG"), "image/png"),
        "exif-rotated.jpg": (exif_rotated_jpeg(), "image/jpeg"),
        "animated.gif": (gif.getvalue(), "image/gif"),
        "animated.webp": (awebp.getvalue(), "image/webp"),
        "animated.png": (apng.getvalue(), "image/png"),
        "static.gif": (synthetic.encode(art.convert("P"), "GIF"), "image/gif"),
        "image.webp": (synthetic.encode(photo, "WEBP", quality=90), "image/webp"),
        "alpha.webp": (synthetic.encode(rgba, "WEBP", lossless=True), "image/webp"),
        "image.tiff": (synthetic.encode(photo, "TIFF"), "image/tiff"),
        "image.bmp": (synthetic.encode(photo, "BMP"), "image/bmp"),
        "tiny.jpg": (synthetic.encode(synthetic.photo_like(16, 16, seed=6), "JPEG"), "image/jpeg"),
        "wide.jpg": (synthetic.encode(synthetic.photo_like(side * 6, side, seed=7), "JPEG"), "image/jpeg"),
        "bomb.png": (bomb_png(), "image/png"),
        "corrupt.jpg": (jpeg[: len(jpeg) // 2], "image/jpeg"),  # complete HTTP body, truncated JPEG stream
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

    server: FaultServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = self.path.split("?", 1)[0]
        with srv.lock:
            srv.requests.append(path)
            srv.user_agents.append(self.headers.get("User-Agent", ""))
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            route = srv.routes.get(path)
            if route is None:
                prefix = path.rsplit("/", 1)[0] + "/*"
                route = srv.routes.get(prefix)
            if route is None:
                self.send_bytes(b"not found", "text/plain", status=404)
            else:
                route(self)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def send_bytes(self, body: bytes, content_type: str = "image/jpeg", status: int = 200,
                   headers: dict[str, str] | None = None, content_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class FaultServer(ThreadingHTTPServer):
    """A loopback HTTP/1.1 server; ``url(route)`` gives the URL of a route, ``routes`` maps path -> handler.

    It counts TCP connections (``connections``), records request paths and User-Agents, and tracks the most
    requests in flight at once (``max_in_flight``) so tests can observe connection reuse and concurrency caps.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog of 5 drops SYNs under a 64-thread client (1 s stalls)

    def __init__(self, image_side: int = 96, slow_seconds: float = 0.2):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[str] = []
        self.user_agents: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.counters: dict[str, int] = {}
        self.slow_seconds = slow_seconds
        self.images = sample_images(image_side)
        self.routes: dict[str, Route] = {}
        self._install_default_routes()
        self._thread = threading.Thread(target=self.serve_forever, name="fault-server", daemon=True)

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # clients hanging up are expected
            super().handle_error(request, client_address)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, route: str) -> str:
        return f"{self.base}/{route.lstrip('/')}"

    def reset_counts(self) -> None:
        with self.lock:
            self.connections = 0
            self.requests.clear()
            self.user_agents.clear()
            self.max_in_flight = 0
            self.counters.clear()

    def hits(self, route: str) -> int:
        return sum(1 for p in self.requests if p == "/" + route.lstrip("/"))

    # -- routes ------------------------------------------------------------------------------------------
    def add_bytes(self, route: str, body: bytes, content_type: str = "image/jpeg", status: int = 200,
                  headers: dict[str, str] | None = None) -> str:
        """Serve fixed bytes at ``route``; returns its URL."""
        self.routes["/" + route.lstrip("/")] = lambda h: h.send_bytes(body, content_type, status, headers)
        return self.url(route)

    def _count(self, key: str) -> int:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]

    def _install_default_routes(self) -> None:
        for name, (body, ctype) in self.images.items():
            self.add_bytes(name, body, ctype)
        jpeg = self.images["ok.jpg"][0]
        r = self.routes
        self.add_bytes("404", b"missing", "text/plain", status=404)
        self.add_bytes("403", b"forbidden", "text/plain", status=403)
        self.add_bytes("always-500", b"oops", "text/plain", status=500)
        self.add_bytes("empty", b"", "image/jpeg")
        self.add_bytes("html", b"<!DOCTYPE html><html><body>not an image</body></html>", "text/html")
        self.add_bytes("wrong-type", b"this is plain text pretending to be a JPEG", "image/jpeg")
        self.add_bytes("octet.jpg", jpeg, "application/octet-stream")  # right bytes, unhelpful header
        self.add_bytes("noai.jpg", jpeg, "image/jpeg", headers={"X-Robots-Tag": "noai"})
        self.add_bytes("noimageai.jpg", jpeg, "image/jpeg", headers={"X-Robots-Tag": "noindex, noimageai"})
        self.add_bytes("noai-bbst.jpg", jpeg, "image/jpeg", headers={"X-Robots-Tag": "bbst: noai"})
        self.add_bytes("noai-otherbot.jpg", jpeg, "image/jpeg", headers={"X-Robots-Tag": "otherbot: noai, noimageai"})
        self.add_bytes("noindex.jpg", jpeg, "image/jpeg", headers={"X-Robots-Tag": "noindex"})
        self.add_bytes("redirect-loop", b"", "text/plain", status=302, headers={"Location": "/redirect-loop"})
        self.add_bytes("redirect-ok", b"", "text/plain", status=301, headers={"Location": "/redirect-ok-2"})
        self.add_bytes("redirect-ok-2", b"", "text/plain", status=307, headers={"Location": "ok.jpg"})
        self.add_bytes("redirect-private", b"", "text/plain", status=302,
                       headers={"Location": "http://10.0.0.1/secret.jpg"})
        self.add_bytes("redirect-metadata", b"", "text/plain", status=302,
                       headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        self.add_bytes("redirect-localhost", b"", "text/plain", status=302,
                       headers={"Location": "http://localhost:1/x.jpg"})

        def fail_then_ok(code: int, fails: int, headers: dict[str, str] | None = None) -> Route:
            def route(h: _Handler) -> None:
                # the counter is per path, so every test can use its own fresh path under the prefix
                if self._count(h.path) <= fails:
                    h.send_bytes(b"try again", "text/plain", status=code, headers=headers)
                else:
                    h.send_bytes(jpeg, "image/jpeg")
            return route

        r["/500-then-ok/*"] = fail_then_ok(500, 1)
        r["/503-then-ok/*"] = fail_then_ok(503, 2)
        r["/429-then-ok/*"] = fail_then_ok(429, 1, {"Retry-After": "1"})
        r["/429-date-then-ok/*"] = fail_then_ok(429, 1, {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"})
        r["/404-counted/*"] = fail_then_ok(404, 10**9)

        def slow(h: _Handler) -> None:
            """Trickles the body one small piece at a time: each read is fast, the whole is slower than any deadline."""
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(jpeg)))
            h.end_headers()
            try:
                for i in range(0, len(jpeg), 16):
                    h.wfile.write(jpeg[i:i + 16])
                    h.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass  # the client gave up, as it should

        def noai_slow(h: _Handler) -> None:
            """Opt-out header, then a body that would take ~10 s: a client that reads it first is too slow."""
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(jpeg)))
            h.send_header("X-Robots-Tag", "noimageai")
            h.end_headers()
            try:
                for i in range(0, len(jpeg), max(1, len(jpeg) // 100)):
                    h.wfile.write(jpeg[i:i + max(1, len(jpeg) // 100)])
                    h.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

        def reset(h: _Handler) -> None:
            # SO_LINGER 0 makes close() send a TCP RST instead of a response
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True

        def truncated(h: _Handler) -> None:
            h.send_bytes(jpeg[: len(jpeg) // 2], "image/jpeg", content_length=len(jpeg))
            h.close_connection = True

        def big(h: _Handler) -> None:
            h.send_bytes(jpeg + b"\x00" * (200_000 - len(jpeg)), "image/jpeg")

        def big_no_length(h: _Handler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(jpeg + b"\x00" * (200_000 - len(jpeg)))
            h.close_connection = True

        def sleepy(h: _Handler) -> None:
            time.sleep(self.slow_seconds)
            h.send_bytes(jpeg, "image/jpeg")

        r["/slow"] = slow
        r["/noai-slow"] = noai_slow
        r["/reset"] = reset
        r["/truncated"] = truncated
        r["/big"] = big
        r["/big-no-length"] = big_no_length
        r["/sleepy/*"] = sleepy
