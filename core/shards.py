"""The shard format, read side: index a WebDataset tar into key -> member byte ranges and read members by reference.

A bbst shard is a plain ustar/pax tar whose members are ``{key}.{ext}`` (the key ends at the first dot, as in
WebDataset), with the members of one sample adjacent. Indexing reads only the 512-byte headers and seeks over
the data, so it costs a few range reads per sample on an object store; reading a member by reference is one
ranged read. Every reader of shards in the project (the trainer's loader, the labeling pool, classifier
training, rescoring) goes through this module.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.errors import BbstError
from core.images import MEMBER_EXTENSIONS


class ShardFormatError(BbstError, ValueError):
    """A file that is not a readable shard, or a reference that does not point into one."""


@dataclass(frozen=True)
class MemberRef:
    """Where one member's bytes are: ``length`` bytes at ``offset`` (the data, not the header) of ``url``."""

    url: str
    offset: int
    length: int


@dataclass
class SampleIndex:
    """One sample of a shard: its key, the header offset of its first member, and ``ext -> MemberRef``."""

    key: str
    offset: int  # byte offset of the first member's header: a sequential reader can start here
    members: dict[str, MemberRef] = field(default_factory=dict)

    def image(self) -> tuple[str, MemberRef] | None:
        """``(ext, ref)`` of the sample's image member, or None when it has none."""
        for ext in MEMBER_EXTENSIONS:
            if ext in self.members:
                return ext, self.members[ext]
        return None


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/abc.def.jpg"`` -> ``("abc", "def.jpg")``: WebDataset's rule, the key ends at the basename's first dot."""
    base = posixpath.basename(name)
    key, _, ext = base.partition(".")
    return key, ext.lower()


def _open(url: str, fs=None, block_size: int | None = None):
    if fs is None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
    else:
        path = fs._strip_protocol(url)
    kwargs = {"block_size": block_size} if block_size else {}
    try:
        return fs.open(path, "rb", **kwargs)
    except TypeError:  # filesystems without a block_size option
        return fs.open(path, "rb")


def index_shard(url: str, fs=None) -> list[SampleIndex]:
    """Samples of the tar at ``url`` in file order, from its headers alone (member data is seeked over)."""
    samples: list[SampleIndex] = []
    try:
        with _open(url, fs, block_size=1 << 20) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                key, ext = split_member_name(ti.name)
                if not samples or samples[-1].key != key:
                    samples.append(SampleIndex(key, ti.offset))
                samples[-1].members[ext] = MemberRef(url, ti.offset_data, ti.size)
    except FileNotFoundError:
        raise ShardFormatError(f"{url}: shard not found") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ShardFormatError(f"{url}: not a readable tar shard: {exc}") from None
    return samples


def index_shard_by_key(url: str, fs=None) -> dict[str, SampleIndex]:
    """:func:`index_shard` as ``key -> SampleIndex`` (a key that repeats keeps its first sample)."""
    out: dict[str, SampleIndex] = {}
    for s in index_shard(url, fs):
        out.setdefault(s.key, s)
    return out


def read_member(ref: MemberRef, fs=None) -> bytes:
    """The bytes a :class:`MemberRef` points at (one ranged read)."""
    try:
        with _open(ref.url, fs, block_size=max(ref.length, 1)) as f:
            f.seek(ref.offset)
            data = f.read(ref.length)
    except FileNotFoundError:
        raise ShardFormatError(f"{ref.url}: shard not found") from None
    if len(data) != ref.length:
        raise ShardFormatError(f"{ref.url}: {ref.length} bytes expected at offset {ref.offset}, got {len(data)} "
                               "(shard truncated or changed since it was indexed?)")
    return data


def read_sample(sample: SampleIndex, fs=None, exts: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """``ext -> bytes`` of one indexed sample (only ``exts`` when given)."""
    return {ext: read_member(ref, fs) for ext, ref in sample.members.items() if exts is None or ext in exts}


def iter_samples(url: str, offset: int = 0, fs=None) -> Iterator[tuple[int, dict]]:
    """Stream ``(header offset, {"__key__": key, ext: bytes, ...})`` from ``offset`` (a sample's first header).

    One sequential pass: the right reader for a whole shard or a contiguous run of its samples.
    """
    f = _open(url, fs, block_size=4 << 20)
    try:
        f.seek(offset)
        try:
            tf = tarfile.open(fileobj=f, mode="r|")  # noqa: SIM115 - closed with f below
        except tarfile.ReadError as exc:
            if offset and f.tell() >= offset:
                return  # opened at the end of the archive: nothing left
            raise ShardFormatError(f"{url}: not a readable tar shard at offset {offset}: {exc}") from None
        current: dict | None = None
        start = offset
        try:
            for ti in tf:
                if not ti.isfile():
                    continue
                key, ext = split_member_name(ti.name)
                data = tf.extractfile(ti).read()
                if current is not None and current["__key__"] != key:
                    yield start, current
                    current = None
                if current is None:
                    current, start = {"__key__": key}, offset + ti.offset
                current[ext] = data
        except (tarfile.TarError, EOFError) as exc:
            raise ShardFormatError(f"{url}: damaged tar shard after offset {start}: {exc}") from None
        if current is not None:
            yield start, current
    finally:
        f.close()
