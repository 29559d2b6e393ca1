"""The one sample schema shared by every stage: keys, statuses, metadata columns and output layout.

Every stage of the curation pipeline, the classifier's feature cache, the labeling database and the
trainer's logs refer to a sample by the same ``key``. The key is born when the URL list is read and is
a pure function of the input: ``{partition:06d}{row:07d}`` (partition index of the URL list, row index
inside that partition). Keys contain only digits, so they never contain a dot (WebDataset splits the
tar member name at the first dot).
"""

from __future__ import annotations

import enum

KEY_PARTITION_DIGITS = 6
KEY_ROW_DIGITS = 7


def make_key(partition: int, row: int) -> str:
    """Deterministic sample key from the URL list position."""
    if not 0 <= row < 10**KEY_ROW_DIGITS:
        raise ValueError(f"row index {row} out of range for a {KEY_ROW_DIGITS}-digit key")
    if not 0 <= partition < 10**KEY_PARTITION_DIGITS:
        raise ValueError(f"partition index {partition} out of range for a {KEY_PARTITION_DIGITS}-digit key")
    return f"{partition:0{KEY_PARTITION_DIGITS}d}{row:0{KEY_ROW_DIGITS}d}"


def partition_range(p: int) -> tuple[int, int]:
    """``[lo, hi)`` of the keys of partition ``p`` read as integers."""
    span = 10**KEY_ROW_DIGITS
    return p * span, (p + 1) * span


def split_key(key: str) -> tuple[int, int]:
    """Inverse of :func:`make_key`."""
    return int(key[:KEY_PARTITION_DIGITS]), int(key[KEY_PARTITION_DIGITS:])


class Status(str, enum.Enum):
    """Fixed vocabulary of per-row outcomes. ``ok`` is a kept sample; everything else says why not.

    The README's "Statuses" table documents each value; keep the two in sync.
    """

    OK = "ok"  # kept: in exactly one tar shard
    INVALID_URL = "invalid_url"  # malformed URL, relative path or unsupported scheme
    BLOCKED_ADDRESS = "blocked_address"  # resolves to loopback/private/link-local; a path outside input_roots
    OUTSIDE_ROOT = "outside_root"  # a file under input_roots whose symlinks lead out of every root
    DOWNLOAD_ERROR = "download_error"  # HTTP error status, timeout, reset, too many redirects (after retries)
    OPTED_OUT = "opted_out"  # X-Robots-Tag directive forbids use (body never read)
    NOT_IMAGE = "not_image"  # body is not a decodable image (HTML, empty, wrong type)
    TOO_LARGE = "too_large"  # body over max_bytes, pixels over the bomb ceiling, decode over max_decode_mb
    TOO_SMALL = "too_small"  # short side below min_side (decided from the header)
    BAD_ASPECT = "bad_aspect"  # aspect ratio above max_aspect_ratio
    CORRUPT = "corrupt"  # header readable but the decode fails or libjpeg warns (truncated, damaged)
    UNSUPPORTED = "unsupported"  # a mode/format the policy rejects (e.g. animated images)
    DUPLICATE = "duplicate"  # same sha256 as a kept sample with a smaller key
    NEAR_DUPLICATE = "near_duplicate"  # perceptual hash within the configured distance of a kept sample
    SEMANTIC_DUPLICATE = "semantic_duplicate"  # classifier embedding within the cosine threshold of a kept sample
    SCORE_ERROR = "score_error"  # the classifier could not score the image
    SCORE_FILTERED = "score_filtered"  # score/source put the sample in neither subset

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

SUBSETS: tuple[str, ...] = ("style", "content")

# Columns every metadata row carries (pass-through input columns are added beside them).
META_COLUMNS: tuple[str, ...] = (
    "key",  # str, see make_key
    "url",  # str, as given
    "source",  # str | None, input column, mapped to a side in config
    "status",  # str, one of STATUSES
    "error",  # str | None, human-readable reason when status != ok
    "mime",  # str | None, real type sniffed from the bytes ("image/jpeg", "image/png", ...)
    "width",  # int | None, stored width after EXIF orientation (original bytes are kept, so equals original)
    "height",  # int | None
    "original_width",  # int | None, as read from the header, EXIF orientation applied
    "original_height",  # int | None
    "num_bytes",  # int | None, size of the downloaded body
    "sha256",  # str | None, hex digest of the downloaded bytes
    "phash",  # str | None, 64-bit perceptual hash as 16 hex digits
    "duplicate_of",  # str | None, key of the kept sample this row duplicates
    "score",  # float | None, calibrated P(stylistic)
    "classifier_version",  # str | None
    "subset",  # str | None, "style" or "content" for ok rows
    "shard",  # str | None, tar file name (relative to DIR/shards) for ok rows
)

# Output layout inside the run directory ``DIR``.
SHARDS_DIR = "shards"  # DIR/shards/{subset}-{NNNNNN}.tar
META_DIR = "meta"  # DIR/meta/part-{PPPPPP}.parquet, one per input partition, every input row
MANIFEST_FILE = "manifest.json"  # DIR/manifest.json, wids-compatible shard index of every shard
SUMMARY_FILE = "summary.json"  # DIR/summary.json
REPORT_FILE = "report.html"  # DIR/report.html
# Which part of the classifier's [content, style] features a build keeps as each image's embedding.
EMBEDDING_PARTS = ("content", "style", "features")
# Working files of an unfinished run, all under DIR/_staging (removed when the run completes).
STAGING = "_staging"
DEDUP_DIR = f"{STAGING}/dedup"  # exact/near-duplicate decisions, one Parquet per bucket, and done.json
RESCORE_DIR = f"{STAGING}/rescore"  # the old shards and their indexes while a finished output is re-scored


def shard_name(subset: str, index: int) -> str:
    return f"{subset}-{index:06d}.tar"


def meta_name(partition: int) -> str:
    return f"part-{partition:0{KEY_PARTITION_DIGITS}d}.parquet"
