"""Small tabular files a user names (pairs, labels, artists): read as rows, with the file named in every error."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from core.errors import BadInputError, MissingInputError


def read_csv_rows(path: str | os.PathLike, columns: tuple[str, ...] | list[str], what: str = "CSV",
                  flag: str | None = None) -> list[dict]:
    """The rows of a CSV file with a header holding at least ``columns``, as dicts (every value a string).

    Errors start with the file (after ``flag``, the option that named it, when given): a missing file raises
    :class:`MissingInputError` (``--pairs p.csv: pairs CSV not found``, ``what`` saying what the file is); a
    missing column, an undecodable byte or a malformed line raises :class:`BadInputError`.
    """
    p = Path(path)
    where = f"{flag} {p}" if flag else str(p)
    if not p.is_file():
        raise MissingInputError(f"{where}: {what} not found")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise BadInputError(f"{where}: missing column(s) {', '.join(missing)}; needs {', '.join(columns)}"
                                    f", has {', '.join(reader.fieldnames or []) or 'no header'}")
            return list(reader)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise BadInputError(f"{where}: line {reader.line_num}: {exc}") from None
