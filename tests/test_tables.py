"""core/tables.py: a user's CSV read as rows, every error naming the file (and the flag that named it)."""

from __future__ import annotations

import pytest

from core.errors import BadInputError, MissingInputError
from core.tables import read_csv_rows


def test_rows_of_a_csv_with_the_needed_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("\ufeffcontent,style,extra\na.jpg,s.jpg,1\nb.jpg,s.jpg,2\n".encode())  # a BOM, as Excel writes
    assert read_csv_rows(path, ("content", "style")) == [{"content": "a.jpg", "style": "s.jpg", "extra": "1"},
                                                          {"content": "b.jpg", "style": "s.jpg", "extra": "2"}]


def test_each_failure_names_the_file(tmp_path):
    with pytest.raises(MissingInputError, match=r"^--pairs .*nope\.csv: pairs CSV not found$"):
        read_csv_rows(tmp_path / "nope.csv", ("content",), "pairs CSV", flag="--pairs")
    bad = tmp_path / "bad.csv"
    bad.write_text("content,artist\na,b\n")
    with pytest.raises(BadInputError, match=r"bad\.csv: missing column\(s\) style; needs content, style, has "
                                            r"content, artist"):
        read_csv_rows(bad, ("content", "style"))
    bad.write_bytes(b"content,style\n\xff\xfe,x\n")
    with pytest.raises(BadInputError, match=r"bad\.csv: not UTF-8 text"):
        read_csv_rows(bad, ("content", "style"))
