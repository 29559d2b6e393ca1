"""Small generated pools for the labeling tests: a folder of images and curation-style WebDataset shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from core.schema import SHARDS_DIR, make_key, shard_name
from core.synthetic import ARTWORK, encode, make_image


def kind_of(i: int) -> int:
    """Ground truth of generated image ``i``: alternating artwork / photo."""
    return ARTWORK if i % 2 == 0 else ARTWORK - 1


def make_folder_pool(root: Path, n: int, size: int = 64) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img{i:05d}.jpg").write_bytes(encode(make_image(kind_of(i), size, size, seed=i)))
    return root


def truth_of_key(key: str) -> int:
    """Ground truth from a folder-pool key (``img00007.jpg``) or a shard key."""
    digits = "".join(c for c in key.split(".")[0] if c.isdigit())
    return kind_of(int(digits) % 10**7)


def make_shard_pool(run_dir: Path, n: int, size: int = 64, per_shard: int = 50) -> Path:
    """``run_dir/shards/style-000000.tar``... with ``{key}.jpg`` + ``{key}.json`` members like the curation output."""
    import hashlib

    shards = run_dir / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with tarfile.open(shards / shard_name("style", s // per_shard), "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                key = make_key(0, i)
                data = encode(make_image(kind_of(i), size, size, seed=i))
                meta = json.dumps({"key": key, "sha256": hashlib.sha256(data).hexdigest()}).encode()
                for name, payload in ((f"{key}.jpg", data), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return run_dir
