"""The built-in demo: a generated corpus of photo-like and artwork-like images served over loopback HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import io
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import synthetic

log = logging.getLogger(__name__)

DEFAULT_OUT = "./bbst-demo"  # the demo's output folder unless --out (or the config) names one
CLASSIFIER_DIR = "demo-classifier"  # the bootstrapped DEMO classifier, beside a local demo output


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, so downloaders can show their connection reuse
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass


class CorpusServer:
    """A threaded loopback HTTP server for one directory; use as a context manager."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="corpus-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def start(self) -> CorpusServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> CorpusServer:  # noqa: PYI034 - returns the started server
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_demo_corpus(root: str | Path, n_images: int = 40, min_side: int = 1024, seed: int = 0) -> list[dict]:
    """Write the demo corpus into ``root`` and return its rows (``name``, ``source``, ``expect``).

    ``n_images`` generated images alternate photo-like (source ``flickr``) and artwork-like (``behance``);
    about one in five has a short side below ``min_side``. Added on top: two exact duplicates, one near
    duplicate (same picture re-encoded), a truncated JPEG, an HTML page, an empty body, a PNG and a missing
    file. ``expect`` is the status a correct pipeline gives each row (near duplicate expected by pHash).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    kept_jpegs: list[tuple[str, bytes, str]] = []
    for i in range(n_images):
        kind = synthetic.ARTWORK if i % 2 else synthetic.PHOTO
        source = "behance" if kind == synthetic.ARTWORK else "flickr"
        small = i % 5 == 4
        short = int(min_side * (rng.uniform(0.4, 0.8) if small else rng.uniform(1.0, 1.3)))
        long = int(short * rng.uniform(1.0, 1.5))
        w, h = (long, short) if rng.random() < 0.6 else (short, long)
        img = synthetic.make_image(kind, w, h, seed=int(rng.integers(1 << 31)))
        data = synthetic.encode(img, "JPEG", quality=int(rng.integers(85, 95)))
        name = f"img{i:05d}.jpg"
        (root / name).write_bytes(data)
        rows.append({"name": name, "source": source, "expect": "too_small" if small else "ok"})
        if not small:
            kept_jpegs.append((name, data, source))
    if kept_jpegs:
        name, data, source = kept_jpegs[0]
        for j in range(2):
            (root / f"dup{j}.jpg").write_bytes(data)
            rows.append({"name": f"dup{j}.jpg", "source": source, "expect": "duplicate"})
        name, data, source = kept_jpegs[-1]
        from PIL import Image

        near = synthetic.encode(Image.open(io.BytesIO(data)), "JPEG", quality=70)
        (root / "near0.jpg").write_bytes(near)
        rows.append({"name": "near0.jpg", "source": source, "expect": "near_duplicate"})
        (root / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])
        rows.append({"name": "truncated.jpg", "source": source, "expect": "corrupt"})
    (root / "page.html").write_text("<!doctype html><html><body>not an image</body></html>")
    rows.append({"name": "page.html", "source": "flickr", "expect": "not_image"})
    (root / "empty.jpg").write_bytes(b"")
    rows.append({"name": "empty.jpg", "source": "flickr", "expect": "not_image"})
    side = int(min_side * 1.1)
    png = synthetic.encode(synthetic.make_image(synthetic.ARTWORK, side, side, seed=seed + 7), "PNG")
    (root / "art.png").write_bytes(png)
    rows.append({"name": "art.png", "source": "behance", "expect": "ok"})
    rows.append({"name": "missing.jpg", "source": "behance", "expect": "download_error"})
    return rows


def write_url_list(path: str | Path, base_url: str, rows: list[dict]) -> Path:
    """Write a Parquet URL list (``url``, ``source``, ``expect``) for corpus ``rows`` served at ``base_url``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "url": [f"{base_url}/{r['name']}" for r in rows],
        "source": [r["source"] for r in rows],
        "expect": [r["expect"] for r in rows],
    })
    pq.write_table(table, path)
    return path


def known_labels(url_list: str | Path) -> list[tuple[Path, int]]:
    """``(image file, label)`` for every image of a demo corpus that a correct pipeline keeps.

    ``url_list`` is the list :func:`demo_corpus` yields. Label 1 = artwork-like (stylistic, served as source
    ``behance``), 0 = photo-like (``flickr``): the ground truth the demo classifier is bootstrapped from.
    """
    url_list = Path(url_list)
    table = pq.read_table(url_list, columns=["url", "source", "expect"]).to_pylist()
    images = url_list.parent / "images"
    return [(images / r["url"].rsplit("/", 1)[-1], int(r["source"] == "behance"))
            for r in table if r["expect"] == "ok"]


@contextlib.contextmanager
def demo_corpus(root: str | Path, n_images: int = 40, min_side: int = 1024, seed: int = 0) -> Iterator[Path]:
    """Build the corpus in ``root``, serve it on loopback and yield the path of its URL list."""
    root = Path(root)
    rows = build_demo_corpus(root / "images", n_images=n_images, min_side=min_side, seed=seed)
    with CorpusServer(root / "images") as server:
        yield write_url_list(root / "urls.parquet", server.base_url, rows)


def classifier_examples(url_list: str | Path, extra_images: int = 200) -> tuple[list[bytes], list[int]]:
    """Images and labels the DEMO classifier is fitted on: the corpus's known labels, topped up with ``extra_images``
    small images from the same generator so the head sees enough of both kinds."""
    labelled = known_labels(url_list)
    extra, extra_labels = synthetic.labelled_batch(extra_images, size=96, seed=1)
    images = [path.read_bytes() for path, _ in labelled] + [synthetic.encode(im, "JPEG", quality=90) for im in extra]
    return images, [label for _, label in labelled] + extra_labels.tolist()


@contextlib.contextmanager
def demo_build(cfg, explicit_out: bool) -> Iterator[tuple[Any, Any, bool]]:
    """The demo's inputs to a build of ``cfg`` (a ``BuildConfig``): yields ``(config, run record, fit_classifier)``.

    Clears a previous demo output (any other output is refused), generates the corpus and serves it on loopback for
    as long as the block runs, points the config at it and claims the output folder. Unless ``cfg`` names a
    classifier (or ``demo_classifier`` is off), ``fit_classifier`` is true and the config's classifier is
    :data:`CLASSIFIER_DIR`: beside a local output (recorded as the run's file, so ``--rescore`` and the label app
    can reuse it), else in the temporary folder.
    """
    from core.store import Store
    from curate import outputs

    out = cfg.out if explicit_out else DEFAULT_OUT
    store = Store(out, cfg.storage_options)
    outputs.clear_previous_demo(store, out)
    with tempfile.TemporaryDirectory(prefix="bbst-demo-corpus-") as tmp:
        log.info("demo: generating %d images (min side %d) and serving them on loopback",
                 cfg.demo_images, cfg.check.min_side)
        with demo_corpus(tmp, n_images=cfg.demo_images, min_side=cfg.check.min_side) as urls:
            demo_cfg = dataclasses.replace(cfg, urls=str(urls), out=out, allow_private_network=True)
            local = "://" not in out
            fit = bool(cfg.demo_classifier and not cfg.score.classifier)
            if fit:
                where = Path(out if local else tmp) / CLASSIFIER_DIR
                demo_cfg = dataclasses.replace(demo_cfg, score=dataclasses.replace(cfg.score, classifier=str(where)))
            record, _ = outputs.claim(store, outputs.build_fingerprint(demo_cfg, demo=True))
            if fit and local:
                record.files.append(CLASSIFIER_DIR)
                store.write_json(outputs.RUN_FILE, record.to_json())
            yield demo_cfg, record, fit
