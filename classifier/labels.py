"""Label files for classifier training: Parquet/CSV decision files and labeling databases, one label per key.

Several decisions on one image are resolved as the labeling app resolves them (``LabelStore.consensus``): each
annotator's latest decision counts, the majority wins, ties and skips are left out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from core.errors import BbstError


class TrainDataError(BbstError, ValueError):
    """Labels or images that cannot be used, with the file and the first offending rows named."""


def read_label_file(path: str | Path) -> tuple[dict[str, int], dict[str, str]]:
    """``({key: 0/1}, {key: path})`` from a Parquet/CSV decision file, resolved to one label per key.

    Columns: ``key`` or ``path``, ``label`` (stylistic/not_stylistic/skip or 1/0), optional ``annotator`` and
    ``time``/``created_at`` (the latest decision is the latest in time, whatever the file order).
    """
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from classifier.labeling.store import parse_label

    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"{path}: label file not found")
    parquet = path.suffix.lower() == ".parquet"
    try:
        table = pq.read_table(path) if parquet else pacsv.read_csv(path)
    except Exception as exc:
        raise TrainDataError(f"{path}: cannot read as {'Parquet' if parquet else 'CSV'}: {exc}") from exc
    cols = table.column_names
    if "label" not in cols or not ({"key", "path"} & set(cols)):
        raise TrainDataError(f"{path}: needs a 'label' column and a 'key' or 'path' column, found {cols}")
    time_col = next((c for c in ("time", "created_at") if c in cols), None)
    if time_col:
        table = table.take(pc.sort_indices(table, sort_keys=[(time_col, "ascending")]))
    rows = []
    paths: dict[str, str] = {}
    for i, r in enumerate(table.to_pylist()):
        key = r.get("key") if r.get("key") not in (None, "") else r.get("path")
        label = parse_label(r.get("label"))
        if key in (None, "") or label is None:
            raise TrainDataError(f"{path}: row {i + 1}: bad key/label ({key!r}, {r.get('label')!r}); label must be "
                                 "stylistic/not_stylistic/skip or 1/0")
        key = str(key)
        if r.get("path"):
            paths[key] = str(r["path"])
        rows.append({"key": key, "label": label, "annotator": str(r.get("annotator") or "file"), "source": "import"})
    return consensus(rows), paths


def consensus(rows: list[dict]) -> dict[str, int]:
    """``{key: 0/1}`` of decision rows (``key``, ``label``, ``annotator``) by the labeling store's rule."""
    from classifier.labeling.store import LabelStore

    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore(Path(tmp) / "labels.sqlite")
        try:
            store.add_labels(rows)
            return store.consensus()
        finally:
            store.close()


def read_label_db(path: str | Path) -> dict[str, int]:
    """Consensus labels of a labeling-session database."""
    from classifier.labeling.store import LabelStore

    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"{path}: labeling database not found")
    store = LabelStore(path)
    try:
        return store.consensus()
    finally:
        store.close()
