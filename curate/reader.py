"""Stream URL lists (Parquet, CSV/TSV, JSONL, plain text; optionally gzipped; local or fsspec) into keyed partitions."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Literal

import pyarrow as pa

from core import schema
from core.errors import BbstError
from core.images import IMAGE_EXTENSIONS
from curate.inputs import DEFAULT_SOURCE_FOLDERS, GLOB_CHARS, image_root, source_for

FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt")

# Columns the pipeline writes itself; an input column with one of these names is kept as ``input_<name>``.
RESERVED_COLUMNS = frozenset(schema.META_COLUMNS) | {"image", "ext", "http_status"}


class ReaderError(BbstError, ValueError):
    """A URL list that cannot be read: the message names the file and, where known, the line or row group."""


class ListNotFoundError(BbstError, FileNotFoundError):
    """The URL list (file, folder or glob) does not exist."""


@dataclasses.dataclass
class ReaderConfig:
    url_column: str = "url"  # input column holding the image URL (renamed to ``url``)
    source_column: str = "source"  # input column naming the origin (e.g. behance/flickr); null when absent
    rows_per_partition: int = 10_000  # rows per partition: one meta Parquet file and one unit of resume each
    format: Literal["auto", "parquet", "csv", "tsv", "jsonl", "txt", "images"] = "auto"
    # auto: by file extension; images: the path is a folder tree or glob of image files (what --images sets)
    compression: Literal["infer", "none", "gzip"] = "infer"  # infer: gzip when the name ends in .gz
    read_block_bytes: int = 1 << 20  # CSV/TSV reader block size; bounds memory while streaming
    image_extensions: list[str] = dataclasses.field(
        default_factory=lambda: list(IMAGE_EXTENSIONS))  # format images: file name endings listed as images
    source_folders: dict[str, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SOURCE_FOLDERS))  # format images: folder name -> source of its images

    def __post_init__(self) -> None:
        if self.rows_per_partition < 1 or self.rows_per_partition > 10**schema.KEY_ROW_DIGITS:
            raise ValueError(f"rows_per_partition must be in 1..{10**schema.KEY_ROW_DIGITS}, "
                             f"got {self.rows_per_partition}")


def detect_format(path: str, cfg: ReaderConfig) -> str:
    """File format from ``cfg.format`` or the file extension (``.gz`` stripped)."""
    if cfg.format != "auto":
        return cfg.format
    name = path.lower()
    name = name.removesuffix(".gz")
    ext = name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
    aliases = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "tsv": "tsv", "jsonl": "jsonl",
               "ndjson": "jsonl", "json": "jsonl", "txt": "txt"}
    if ext not in aliases:
        raise ReaderError(f"{path}: cannot tell the URL list format from the extension {ext!r}; "
                         f"use one of {sorted(aliases)} or set reader.format to one of {list(FORMATS)}")
    return aliases[ext]


def _compression(path: str, cfg: ReaderConfig) -> str | None:
    if cfg.compression == "none":
        return None
    if cfg.compression == "gzip" or path.lower().endswith(".gz"):
        return "gzip"
    return None


def list_files(path: str, storage_options: dict | None = None, url_lists: bool = True) -> tuple[object, list[str]]:
    """Expand a file, a folder (its files, sorted) or a glob into ``(fs, paths)``; protocol kept for fsspec URLs.

    With ``url_lists`` (the files are to be read as URL lists) a path holding only image files is an error whose
    hint names ``--images``.
    """
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(path, storage_options=storage_options or None)
    if not paths:
        raise ReaderError(f"{path}: no URL list found (no file matches)")
    files: list[str] = []
    for p in paths:
        if fs.isdir(p):
            files.extend(sorted(f for f in fs.find(p) if not f.rsplit("/", 1)[-1].startswith((".", "_"))))
        elif fs.exists(p):
            files.append(p)
        else:
            raise ListNotFoundError(f"{path}: URL list not found")
    if not files:
        raise ReaderError(f"{path}: folder holds no URL list files")
    if url_lists and all(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
        what = "an image file" if len(files) == 1 and files[0].rstrip("/") == paths[0].rstrip("/") else \
            f"{len(files)} image files"
        raise ReaderError(f"{path}: {what}, not a URL list",
                          hint=f"to build from image files on disk, pass --images {path} instead of --urls")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        files = [f if "://" in f else fs.unstrip_protocol(f) for f in files]
    return fs, sorted(files)


def _open(fs, path: str, cfg: ReaderConfig, mode: str = "rb"):
    return fs.open(fs._strip_protocol(path), mode, compression=_compression(path, cfg))


def _iter_parquet(fs, path: str, cfg: ReaderConfig) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    with _open(fs, path, cfg) as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ReaderError(f"{path}: not a readable Parquet file: {exc}") from None
        first = 0
        for group in range(pf.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            try:
                yield from pf.iter_batches(batch_size=min(cfg.rows_per_partition, 65_536), row_groups=[group])
            except (pa.ArrowException, OSError, EOFError) as exc:
                raise ReaderError(f"{path}: row group {group} (rows {first}-{first + rows - 1}): corrupt Parquet "
                                  f"data: {exc}") from None
            first += rows


def _iter_csv(fs, path: str, cfg: ReaderConfig, delimiter: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv

    # Read the header ourselves so that every column is typed as string: type inference on the first block
    # breaks on a later block with a different-looking value, and URLs/sources are text anyway.
    with _open(fs, path, cfg, "rt") as f:
        header_line = f.readline()
    if not header_line.strip():
        raise ReaderError(f"{path}: line 1: empty file or missing header row")
    names = next(csv.reader([header_line], delimiter=delimiter))
    with _open(fs, path, cfg) as f:
        try:
            reader = pcsv.open_csv(
                f,
                read_options=pcsv.ReadOptions(block_size=cfg.read_block_bytes),
                parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
                convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                    strings_can_be_null=True),
            )
            yield from reader
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc):
                raise _stream_error(fs, path, cfg, exc) from None
            raise ReaderError(f"{path}: malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}") from None


def _iter_jsonl(fs, path: str, cfg: ReaderConfig) -> Iterator[pa.RecordBatch]:
    rows: list[dict] = []
    first_line = 1
    with _open(fs, path, cfg, "rt") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReaderError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ReaderError(
                    f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
            if len(rows) >= cfg.rows_per_partition:
                yield _jsonl_batch(rows, path, first_line, lineno)
                rows, first_line = [], lineno + 1
    if rows:
        yield _jsonl_batch(rows, path, first_line, lineno)


def _jsonl_batch(rows: list[dict], path: str, first: int, last: int) -> pa.RecordBatch:
    names: dict[str, None] = {}
    for row in rows:  # union of keys in first-seen order (from_pylist would use the first row's keys only)
        names.update(dict.fromkeys(row))
    try:
        return pa.RecordBatch.from_pydict({n: [row.get(n) for row in rows] for n in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ReaderError(f"{path}: lines {first}-{last}: inconsistent column types ({exc})") from None


def _iter_txt(fs, path: str, cfg: ReaderConfig) -> Iterator[pa.RecordBatch]:
    urls: list[str | None] = []
    with _open(fs, path, cfg, "rt") as f:
        for line in f:
            urls.append(line.strip() or None)
            if len(urls) >= cfg.rows_per_partition:
                yield pa.RecordBatch.from_arrays([pa.array(urls, pa.string())], names=[cfg.url_column])
                urls = []
    if urls:
        yield pa.RecordBatch.from_arrays([pa.array(urls, pa.string())], names=[cfg.url_column])


def _iter_batches(fs, path: str, cfg: ReaderConfig) -> Iterator[pa.RecordBatch]:
    fmt = detect_format(path, cfg)
    if fmt == "parquet":
        return _iter_parquet(fs, path, cfg)
    if fmt in ("csv", "tsv"):
        return _iter_csv(fs, path, cfg, "," if fmt == "csv" else "\t")
    if fmt == "jsonl":
        return _iter_jsonl(fs, path, cfg)
    return _iter_txt(fs, path, cfg)


def _guess_url_column(table: pa.Table) -> str:
    """The column that most likely holds the URLs: by name, else the first string column whose values look like URLs."""
    for name in table.column_names:
        if any(word in name.lower() for word in ("url", "link", "href", "uri", "src")):
            return name
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            first = next((v for v in col.to_pylist()[:20] if v), "")
            if "://" in str(first):
                return name
    return "COLUMN"


def _normalise(table: pa.Table, path: str, partition: int, first_row_in_file: int, cfg: ReaderConfig) -> pa.Table:
    """Rename the URL/source columns, add ``key``, keep every other column (renamed if it clashes with ours)."""
    names = table.column_names
    if cfg.url_column not in names:
        raise ReaderError(f"{path}: no URL column {cfg.url_column!r} (columns: {names})",
                          hint=f"name the URL column: --set reader.url_column={_guess_url_column(table)}")
    n = table.num_rows
    url = table.column(cfg.url_column)
    if not pa.types.is_string(url.type):
        if pa.types.is_large_string(url.type) or pa.types.is_null(url.type):
            url = url.cast(pa.string())
        else:
            raise ReaderError(f"{path}: rows {first_row_in_file}-{first_row_in_file + n - 1}: URL column "
                             f"{cfg.url_column!r} has type {url.type}, expected strings")
    if cfg.source_column in names:
        source = table.column(cfg.source_column)
        if not pa.types.is_string(source.type):
            source = source.cast(pa.string())
    else:
        source = pa.nulls(n, pa.string())
    keys = pa.array([schema.make_key(partition, r) for r in range(n)], pa.string())
    arrays, out_names = [keys, url, source], ["key", "url", "source"]
    for name in names:
        if name in (cfg.url_column, cfg.source_column):
            continue
        out = f"input_{name}" if name in RESERVED_COLUMNS else name
        if out in out_names:
            raise ReaderError(f"{path}: column {name!r} clashes with {out!r}; rename it in the URL list")
        arrays.append(table.column(name))
        out_names.append(out)
    return pa.Table.from_arrays(arrays, names=out_names)


# What reading a damaged text list or its compression raises, wherever in the stream the damage is.
_STREAM_ERRORS = (UnicodeDecodeError, EOFError, zlib.error, gzip.BadGzipFile)


def _stream_error(fs, path: str, cfg: ReaderConfig, exc: BaseException) -> ReaderError:
    """A ReaderError for an encoding or compression failure, located by a second, byte-level pass over the file."""
    line, found = _locate_damage(fs, path, cfg)
    exc = found or exc
    if isinstance(exc, UnicodeDecodeError):
        where = f"{path}: line {line}" if line else path
        return ReaderError(f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1})",
                           hint="save the URL list as UTF-8")
    if isinstance(exc, gzip.BadGzipFile):
        return ReaderError(f"{path}: not a gzip file although its name ends in .gz ({exc})",
                           hint="--set reader.compression=none reads it as it is")
    # decompression reads ahead in blocks, so the damage lies somewhere after the last line that came out whole
    after = f" after line {line}" if line else " in its first block"
    what = "gzip data end early (truncated file)" if isinstance(exc, EOFError) else f"damaged gzip data ({exc})"
    return ReaderError(f"{path}: {what}{after}")


def _locate_damage(fs, path: str, cfg: ReaderConfig) -> tuple[int | None, BaseException | None]:
    """Where a byte-level pass fails: ``(line, error)``; the line that is not UTF-8, or for damaged compressed
    data the last line that decompressed whole. ``(None, None)`` when the pass finds nothing."""
    lineno = 0
    try:
        with _open(fs, path, cfg) as f:
            for raw in f:
                raw.decode("utf-8")
                lineno += 1
    except UnicodeDecodeError as exc:
        return lineno + 1, exc
    except _STREAM_ERRORS as exc:
        return lineno, exc
    return None, None


def iter_file_tables(fs, path: str, cfg: ReaderConfig) -> Iterator[pa.Table]:
    """Raw tables of ``rows_per_partition`` rows from one file (the last one shorter), streaming."""
    try:
        yield from _iter_file_tables(fs, path, cfg)
    except _STREAM_ERRORS as exc:
        raise _stream_error(fs, path, cfg, exc) from None


def _iter_file_tables(fs, path: str, cfg: ReaderConfig) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in _iter_batches(fs, path, cfg):
        while batch.num_rows:
            take = min(batch.num_rows, cfg.rows_per_partition - pending_rows)
            pending.append(batch.slice(0, take))
            pending_rows += take
            batch = batch.slice(take)
            if pending_rows == cfg.rows_per_partition:
                yield _concat(pending, path)
                pending, pending_rows = [], 0
    if pending_rows:
        yield _concat(pending, path)


def _concat(batches: list[pa.RecordBatch], path: str) -> pa.Table:
    try:
        return pa.Table.from_batches(batches).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ReaderError(f"{path}: inconsistent columns across rows: {exc}") from None


def iter_partitions(path: str, cfg: ReaderConfig | None = None,
                    storage_options: dict | None = None) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(partition, table)`` with columns ``key``, ``url``, ``source`` and every pass-through column.

    ``path`` is a file, a folder or a glob, local or any fsspec URL (with ``format: images``, a folder tree or glob
    of image files, see :func:`iter_image_partitions`). Files are read in sorted order and
    partitions are numbered consecutively across them (a partition never spans two files), so keys are a pure
    function of the list. Only one partition (plus one read block) is held in memory at a time.
    ``storage_options`` go to fsspec (e.g. ``{"client_kwargs": {"endpoint_url": ...}}`` for an S3 endpoint).
    """
    cfg = cfg or ReaderConfig()
    if cfg.format == "images":
        yield from iter_image_partitions(path, cfg, storage_options)
        return
    fs, files = list_files(path, storage_options)
    partition = 0
    for file in files:
        first_row = 0
        for table in iter_file_tables(fs, file, cfg):
            yield partition, _normalise(table, file, partition, first_row, cfg)
            first_row += table.num_rows
            partition += 1


# ------------------------------------------------------------------------------------------------ --images
def iter_image_paths(fs, spec: str, extensions: tuple[str, ...]) -> Iterator[str]:
    """Image files of a folder tree (walked in sorted order, streaming), of a glob, or one image file, as paths
    of ``fs``."""
    exts = tuple(e.lower() for e in extensions)
    stripped = fs._strip_protocol(spec)
    if GLOB_CHARS.search(spec):
        paths = sorted(p for p in fs.glob(stripped) if p.lower().endswith(exts))
        yield from (p for p in paths if fs.isfile(p))
        return
    if not fs.isdir(stripped):
        if fs.isfile(stripped) and stripped.lower().endswith(exts):
            yield stripped  # a single image file
        return
    for base, dirs, files in fs.walk(stripped, topdown=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # walk recurses into this list: sorted order
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(exts):
                yield f"{base.rstrip('/')}/{name}"


def iter_image_partitions(spec: str, cfg: ReaderConfig,
                          storage_options: dict | None = None) -> Iterator[tuple[int, pa.Table]]:
    """``(partition, table)`` over the image files of a folder tree or glob, like a URL list of their paths.

    Each row's ``url`` is the file's absolute path (local) or full fsspec URL, and ``source`` comes from
    :func:`source_for`. Keys follow the sorted listing, so the same tree always gets the same keys.
    """
    import fsspec

    fs, _ = fsspec.core.url_to_fs(spec, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")
    if local:
        import os

        spec = os.path.abspath(spec.removeprefix("file://"))
    root = fs._strip_protocol(image_root(spec))
    if not fs.exists(root):
        raise ListNotFoundError(f"{spec}: --images folder not found")
    urls: list[str] = []
    sources: list[str | None] = []
    partition = 0

    def table() -> pa.Table:
        keys = [schema.make_key(partition, r) for r in range(len(urls))]
        return pa.table({"key": pa.array(keys, pa.string()), "url": pa.array(urls, pa.string()),
                         "source": pa.array(sources, pa.string())})

    for path in iter_image_paths(fs, spec, tuple(cfg.image_extensions)):
        urls.append(path if local else fs.unstrip_protocol(path))
        sources.append(source_for(path, root, cfg.source_folders))
        if len(urls) == cfg.rows_per_partition:
            yield partition, table()
            urls, sources, partition = [], [], partition + 1
    if urls:
        yield partition, table()
    elif partition == 0:
        raise ReaderError(f"{spec}: no image files (looked for {', '.join(cfg.image_extensions)})")
