"""URL list reader: formats, compression, folders/globs, fsspec, keys, pass-through columns, clear errors."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import schema
from core.errors import BbstError
from curate.reader import ListNotFoundError, ReaderConfig, ReaderError, detect_format, iter_partitions

ROWS = [{"url": f"http://img.example/{i}.jpg", "source": "flickr" if i % 2 else "behance", "caption": f"c{i}"}
        for i in range(7)]


def write_all_formats(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "list.parquet", row_group_size=3)
    csv = "url,source,caption\n" + "".join(f"{r['url']},{r['source']},\"{r['caption']}\"\n" for r in ROWS)
    (tmp_path / "list.csv").write_text(csv)
    (tmp_path / "list.tsv").write_text(csv.replace(",", "\t").replace('"', ""))
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with gzip.open(tmp_path / "list.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "list.txt").write_text("".join(r["url"] + "\n" for r in ROWS))
    return tmp_path


@pytest.mark.parametrize("name", ["list.parquet", "list.csv", "list.tsv", "list.jsonl", "list.jsonl.gz", "list.txt"])
def test_formats_partition_and_key(tmp_path, name):
    write_all_formats(tmp_path)
    parts = list(iter_partitions(str(tmp_path / name), ReaderConfig(rows_per_partition=3)))
    assert [p for p, _ in parts] == [0, 1, 2]
    assert [t.num_rows for _, t in parts] == [3, 3, 1]
    table = pa.concat_tables([t for _, t in parts])
    assert table.column_names[:3] == ["key", "url", "source"]
    assert table.column("url").to_pylist() == [r["url"] for r in ROWS]
    assert table.column("key").to_pylist()[3] == schema.make_key(1, 0)
    if name == "list.txt":
        assert table.column("source").null_count == 7
    else:
        assert table.column("source").to_pylist() == [r["source"] for r in ROWS]
        assert table.column("caption").to_pylist() == [r["caption"] for r in ROWS]


def test_folder_and_glob_number_partitions_across_files(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text("".join(f"http://h/{i}-{j}.jpg\n" for j in range(4)))
    (tmp_path / "_SUCCESS").write_text("")  # marker files are skipped in folders
    folder = list(iter_partitions(str(tmp_path), ReaderConfig(rows_per_partition=3)))
    assert [(p, t.num_rows) for p, t in folder] == [(0, 3), (1, 1), (2, 3), (3, 1), (4, 3), (5, 1)]
    glob = list(iter_partitions(str(tmp_path / "part*.txt"), ReaderConfig(rows_per_partition=3)))
    assert [t.to_pylist() for _, t in glob] == [t.to_pylist() for _, t in folder]


def test_fsspec_url(tmp_path):
    write_all_formats(tmp_path)
    parts = list(iter_partitions(f"file://{tmp_path}/list.csv", ReaderConfig(rows_per_partition=10)))
    assert parts[0][1].num_rows == 7


def test_empty_and_missing_urls_are_rows(tmp_path):
    (tmp_path / "l.csv").write_text("url,source\nhttp://a/1.jpg,flickr\n,behance\n   ,x\n")
    (_, table), = iter_partitions(str(tmp_path / "l.csv"))
    assert table.num_rows == 3
    assert table.column("url").to_pylist()[1] is None


def test_reserved_columns_are_renamed(tmp_path):
    (tmp_path / "l.jsonl").write_text('{"url": "u", "status": "x", "width": 5}\n{"url": "v", "extra": 1}\n')
    (_, table), = iter_partitions(str(tmp_path / "l.jsonl"))
    assert set(table.column_names) == {"key", "url", "source", "input_status", "input_width", "extra"}
    assert table.column("extra").to_pylist() == [None, 1]


def test_custom_url_column(tmp_path):
    pq.write_table(pa.table({"URL": ["a", "b"], "TEXT": ["x", "y"]}), tmp_path / "laion.parquet")
    (_, table), = iter_partitions(str(tmp_path / "laion.parquet"), ReaderConfig(url_column="URL"))
    assert table.column("url").to_pylist() == ["a", "b"] and "TEXT" in table.column_names


def test_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"url": "a"}\n{"url": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        list(iter_partitions(str(tmp_path / "bad.jsonl")))
    (tmp_path / "arr.jsonl").write_text('["a"]\n')
    with pytest.raises(ValueError, match=r"arr.jsonl: line 1: expected a JSON object"):
        list(iter_partitions(str(tmp_path / "arr.jsonl")))
    (tmp_path / "nourl.csv").write_text("link,source\nhttp://a,b\n")
    with pytest.raises(ValueError, match=r"nourl.csv: no URL column 'url'"):
        list(iter_partitions(str(tmp_path / "nourl.csv")))
    (tmp_path / "ragged.csv").write_text("url,source\nhttp://a,b\nhttp://c,d,e,f\n")
    with pytest.raises(ValueError, match=r"ragged.csv: malformed CSV"):
        list(iter_partitions(str(tmp_path / "ragged.csv")))
    pq.write_table(pa.table({"url": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match=r"ints.parquet: rows 0-1: URL column 'url' has type int64"):
        list(iter_partitions(str(tmp_path / "ints.parquet")))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        list(iter_partitions(str(tmp_path / "nope.csv")))
    with pytest.raises(ValueError, match="extension"):
        detect_format("list.xlsx", ReaderConfig())


def test_streaming_memory_is_bounded(tmp_path):
    """A big list is read one partition at a time: Arrow's pool never holds more than a few partitions."""
    n = 200_000
    with open(tmp_path / "big.csv", "w") as f:
        f.write("url,source\n")
        f.writelines(f"http://img.example/some/long/path/{i:08d}.jpg,flickr\n" for i in range(n))
    cfg = ReaderConfig(rows_per_partition=5_000, read_block_bytes=1 << 18)
    pool = pa.default_memory_pool()
    peak, total, file_bytes = 0, 0, (tmp_path / "big.csv").stat().st_size
    for _, table in iter_partitions(str(tmp_path / "big.csv"), cfg):
        total += table.num_rows
        peak = max(peak, pool.bytes_allocated())
        del table
    assert total == n
    assert peak < file_bytes / 4, (peak, file_bytes)


def test_non_local_filesystem_folder(tmp_path):
    """A folder on a non-local fsspec filesystem (memory://, same code path as s3://), gzip included."""
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/lists/a.jsonl", "wb") as f:
        f.write(b'{"url": "http://h/1.jpg"}\n{"url": "http://h/2.jpg"}\n')
    with fs.open("/lists/b.csv.gz", "wb") as f:
        f.write(gzip.compress(b"url,source\nhttp://h/3.jpg,flickr\n"))
    parts = list(iter_partitions("memory://lists", ReaderConfig(rows_per_partition=10), storage_options={}))
    assert [t.column("url").to_pylist() for _, t in parts] == [["http://h/1.jpg", "http://h/2.jpg"],
                                                               ["http://h/3.jpg"]]
    with pytest.raises(ValueError, match=r"memory://.*lists/bad.jsonl: line 1"):
        with fs.open("/lists/bad.jsonl", "wb") as f:
            f.write(b"{oops\n")
        list(iter_partitions("memory://lists/bad.jsonl"))
    fs.rm("/lists", recursive=True)


def _read_error(path) -> ReaderError:
    with pytest.raises(BbstError) as info:
        list(iter_partitions(str(path), ReaderConfig(rows_per_partition=100_000)))
    assert isinstance(info.value, ReaderError)
    return info.value


def test_damaged_lists_raise_reader_errors_naming_file_and_place(tmp_path):
    """Encoding, compression and Parquet damage: one BbstError naming the file and the line or row group."""
    latin1 = "url,source\nhttp://a/1.jpg,x\nhttp://a/caf\xe9.jpg,y\n".encode("latin-1")
    (tmp_path / "latin1.csv").write_bytes(latin1)
    err = _read_error(tmp_path / "latin1.csv")
    assert "latin1.csv: line 3: not UTF-8 text (byte 0xe9" in str(err) and "UTF-8" in err.hint
    lines = ["url,source"] + [f"http://a/{i}.jpg,x" for i in range(5000)]
    lines[4000] = "http://a/caf\xe9.jpg,y"  # beyond the first text buffer: found by the CSV parser, not the header
    (tmp_path / "late.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    assert "late.csv: line 4001: not UTF-8 text (byte 0xe9" in str(_read_error(tmp_path / "late.csv"))
    (tmp_path / "latin1.jsonl").write_bytes('{"url": "http://a/1"}\n{"url": "http://a/\xe9"}\n'.encode("latin-1"))
    assert "latin1.jsonl: line 2: not UTF-8" in str(_read_error(tmp_path / "latin1.jsonl"))
    (tmp_path / "latin1.txt").write_bytes("http://a/1\nhttp://a/2\nhttp://a/\xe9\n".encode("latin-1"))
    assert "latin1.txt: line 3: not UTF-8" in str(_read_error(tmp_path / "latin1.txt"))

    text = "url\n" + "".join(f"http://a/{i}.jpg\n" for i in range(20_000))
    packed = gzip.compress(text.encode())
    (tmp_path / "cut.csv.gz").write_bytes(packed[:len(packed) // 2])
    err = str(_read_error(tmp_path / "cut.csv.gz"))
    assert "cut.csv.gz: gzip data end early (truncated file) after line" in err
    (tmp_path / "cut.txt.gz").write_bytes(packed[:len(packed) // 2])
    assert "cut.txt.gz: gzip data end early" in str(_read_error(tmp_path / "cut.txt.gz"))
    flipped = packed[:40] + bytes([packed[40] ^ 0xFF]) + packed[41:]
    (tmp_path / "flipped.txt.gz").write_bytes(flipped)
    assert "flipped.txt.gz: damaged gzip data" in str(_read_error(tmp_path / "flipped.txt.gz"))
    (tmp_path / "plain.csv.gz").write_text(text)
    err = _read_error(tmp_path / "plain.csv.gz")
    assert "plain.csv.gz: not a gzip file" in str(err) and "reader.compression=none" in err.hint

    pq.write_table(pa.table({"url": [f"http://a/{i}.jpg" for i in range(5000)]}), tmp_path / "x.parquet",
                   row_group_size=1000, compression="snappy")
    body = bytearray((tmp_path / "x.parquet").read_bytes())
    middle = len(body) // 2
    body[middle:middle + 400] = b"\x55" * 400
    (tmp_path / "x.parquet").write_bytes(bytes(body))
    err = str(_read_error(tmp_path / "x.parquet"))
    assert "x.parquet: row group " in err and "corrupt Parquet data" in err


def test_missing_list_and_missing_column_are_user_errors(tmp_path):
    with pytest.raises(ListNotFoundError, match="nope.csv"):
        list(iter_partitions(str(tmp_path / "nope.csv")))
    (tmp_path / "nourl.csv").write_text("link,source\nhttp://a,b\n")
    err = _read_error(tmp_path / "nourl.csv")
    assert "reader.url_column=link" in err.hint
