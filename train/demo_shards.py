"""Write small content/style shard sets in the curation output layout, for tests, benchmarks and demos.

Layout as ``core.schema``: ``DIR/shards/{subset}-NNNNNN.tar`` with ``{key}.jpg`` (or ``.png``) and
``{key}.json`` members, plus the wids shard index ``DIR/manifest.json``. Images come from
``core.synthetic`` (photo-like for content, artwork-like for style).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.schema import MANIFEST_FILE, SHARDS_DIR, make_key, shard_name
from core.synthetic import ARTWORK, PHOTO, encode, make_image
from core.tarwrite import write_manifest, write_shard


def write_demo_shards(root: str | Path, shards: dict[str, list[int]], size: tuple[int, int] = (160, 128),
                      fmt: str = "JPEG", seed: int = 0, manifest: bool = True, vary_size: bool = True) -> Path:
    """Write ``shards[subset] = [samples in shard 0, samples in shard 1, ...]`` under ``root``; returns ``root``.

    ``size`` is the (width, height) of the largest image; with ``vary_size`` images shrink by up to 25 % so
    crops are taken from images of different shapes. ``fmt`` is ``JPEG`` or ``PNG``. Shards and the manifest
    go through the same writer as a build's (core.tarwrite).
    """
    root = Path(root)
    (root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    entries = []
    for subset_index, (subset, counts) in enumerate(sorted(shards.items())):
        kind = PHOTO if subset == "content" else ARTWORK
        for shard_index, count in enumerate(counts):
            name = shard_name(subset, shard_index)
            samples = []
            for row in range(count):
                w, h = size
                if vary_size:
                    # multiples of 4: core.synthetic upsamples its noise/texture 2x/4x and needs them
                    w, h = int(w * rng.uniform(0.75, 1.0)) // 4 * 4, int(h * rng.uniform(0.75, 1.0)) // 4 * 4
                img = make_image(kind, w, h, seed=int(rng.integers(2**31)))
                key = make_key(subset_index * 1000 + shard_index, row)
                samples.append({"key": key, "ext": ext, "image": encode(img, fmt), "subset": subset, "width": w,
                                "height": h, "status": "ok", "shard": name})
            entry = write_shard(str(root / SHARDS_DIR / name), samples)
            entries.append({**entry, "url": f"{SHARDS_DIR}/{name}", "subset": subset})
    if manifest:
        write_manifest(str(root / MANIFEST_FILE), entries, name=root.name)
    return root
