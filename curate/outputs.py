"""Safe outputs: the run record that claims an output folder, the run fingerprint, and the refusals built on them.

``DIR/bbst-run.json`` is written before anything else of a run. It says the folder is a bbst output, holds the
fingerprint of the run (the URL list's identity and every config value that changes the result), and, once the
run is complete, the list of every file the run wrote. bbst deletes or replaces only files it wrote itself.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from core.errors import BbstError, InputError

log = logging.getLogger("bbst.build")

RUN_FILE = "bbst-run.json"
RUN_KIND = "bbst-output-v1"
# download options that change speed, not which rows succeed
_SPEED_ONLY_DOWNLOAD = ("threads", "per_host_concurrency", "dns_cache_seconds", "user_agent")


class OutputError(BbstError):
    """An output folder bbst must not write to as asked (foreign files, another run's list)."""


def list_identity(urls: str, storage_options: dict | None = None, url_lists: bool = True) -> list[dict[str, Any]]:
    """Identity of every file of a URL list: path, size and modification time or ETag (whichever the store has).

    Raises :class:`InputError` naming ``--urls`` when the list is missing, empty or unreadable.
    """
    from curate.reader import list_files

    try:
        fs, files = list_files(urls, storage_options, url_lists=url_lists)
    except FileNotFoundError:
        raise InputError(f"--urls {urls}: no such file or folder") from None
    except PermissionError as exc:
        raise InputError(f"--urls {urls}: not readable ({exc.strerror or exc})") from None
    except ValueError as exc:
        message = str(exc).removeprefix(f"{urls}: ")  # the reader names the path too
        raise InputError(f"--urls {urls}: {message}", hint=getattr(exc, "hint", None)) from None
    out = []
    for f in files:
        try:
            info = fs.info(f)
        except (FileNotFoundError, PermissionError) as exc:
            raise InputError(f"--urls {urls}: cannot read {f}: {exc}") from None
        version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") \
            or info.get("last_modified") or info.get("created")
        out.append({"path": f, "size": int(info.get("size") or 0), "version": str(version)})
    return out


def fingerprint(cfg, identity: list[dict[str, Any]], classifier_digest: str | None = None) -> dict[str, Any]:
    """Every input that changes the result of a build of ``cfg`` (a BuildConfig), as plain data."""
    from core.config import to_dict

    download = {k: v for k, v in to_dict(cfg.download).items() if k not in _SPEED_ONLY_DOWNLOAD}
    return {
        "urls": cfg.urls,
        "list": identity,
        "reader": to_dict(cfg.reader),
        "download": download,
        "check": to_dict(cfg.check),
        # the semantic pass's options matter only when it runs (and outputs built before it existed keep theirs)
        "dedup": {k: v for k, v in to_dict(cfg.dedup).items() if k != "semantic" or cfg.dedup.semantic.enabled},
        "split": to_dict(cfg.split),
        "shards": {"target_bytes": cfg.shards.target_bytes, "target_samples": cfg.shards.target_samples},
        "classifier": {"path": cfg.score.classifier, "digest": classifier_digest, "options": cfg.score.options},
    }


def describe_difference(old: dict, new: dict) -> str:
    """One phrase naming what differs between two fingerprints: the lists first, else the config sections."""
    if old.get("urls") != new.get("urls") or old.get("list") != new.get("list"):
        if old.get("urls") == new.get("urls"):
            return f"the URL list {new.get('urls')} changed since that run (size or modification time differs)"
        return f"that run was of the URL list {old.get('urls')}, this one is of {new.get('urls')}"
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return f"the same URL list {new.get('urls')} with other settings ({', '.join(changed)})"


@dataclasses.dataclass
class RunRecord:
    """The content of ``DIR/bbst-run.json``."""

    fingerprint: dict[str, Any]
    state: str = "running"  # running | complete
    files: list[str] = dataclasses.field(default_factory=list)  # every file a complete run wrote (relative paths)

    def to_json(self) -> dict[str, Any]:
        return {"kind": RUN_KIND, "state": self.state, "fingerprint": self.fingerprint, "files": sorted(self.files)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> RunRecord:
        if not isinstance(data, dict) or data.get("kind") != RUN_KIND:
            raise OutputError(f"{where}: not a bbst run record")
        return cls(fingerprint=data.get("fingerprint") or {}, state=data.get("state", "running"),
                   files=list(data.get("files") or []))


def read_record(store) -> RunRecord | None:
    if not store.exists(RUN_FILE):
        return None
    import json

    try:
        data = store.read_json(RUN_FILE)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OutputError(f"--out {store.url}: {RUN_FILE} is damaged; use another --out") from None
    return RunRecord.from_json(data, f"--out {store.url}/{RUN_FILE}")


def check_out_path(store) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not a bbst output (nothing is written)."""
    if store.exists() and store.isfile():
        raise InputError(f"--out {store.url}: is a file, not a folder")
    names = store.ls()
    if names and RUN_FILE not in names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise OutputError(f"--out {store.url}: folder is not empty and not a bbst output (holds {shown}); "
                          "bbst writes only into a new or empty folder or one of its own outputs")


def claim(store, new_fingerprint: dict[str, Any]) -> tuple[RunRecord, RunRecord | None]:
    """Claim ``store`` for a run with ``new_fingerprint``; returns ``(record now, previous record or None)``.

    A new or empty folder gets a fresh record. A bbst output of the same fingerprint is resumed (unfinished) or
    left as it is (complete). A bbst output of another list or other settings is refused with both named.
    """
    check_out_path(store)
    previous = read_record(store)
    if previous is not None:
        if previous.fingerprint != new_fingerprint:
            what = "finished" if previous.state == "complete" else "unfinished"
            raise OutputError(
                f"--out {store.url}: holds a {what} build that differs from this one: "
                f"{describe_difference(previous.fingerprint, new_fingerprint)}",
                hint="pass a new --out folder, or rerun with the list and settings of that build")
        return previous, previous
    record = RunRecord(fingerprint=new_fingerprint)
    store.write_json(RUN_FILE, record.to_json())
    return record, None


_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{12}$")


def temp_of(name: str) -> str | None:
    """The final name whose atomic write left temporary file ``name`` (None for any other name)."""
    m = _TMP.match(name)
    return m.group("name") if m else None


def removable(name: str, ours: set[str]) -> bool:
    """Whether file ``name`` of a bbst folder was written by bbst: a recorded name, or the temporary of one."""
    if name in ours:
        return True
    final = temp_of(name)
    return final is not None and final in ours


def file_digest(path: str, storage_options: dict | None = None) -> str:
    """Content fingerprint of a file, or of every file of a folder (a classifier checkpoint)."""
    import hashlib

    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    files = sorted(fs.find(root)) if fs.isdir(root) else ([root] if fs.exists(root) else [])
    if not files:
        raise InputError(f"--classifier {path}: no such file or folder")
    h = hashlib.sha256()
    for name in files:
        h.update(name[len(root):].encode())
        with fs.open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def remove_stale_shards(store, planned: set[str], owned: set[str]) -> None:
    """Remove shards an earlier plan of this output wrote and this plan does not keep; nothing else."""
    from core import schema
    from core.schema import STAGING

    ours = owned | planned | {n.removesuffix(".json") for n in store.ls(STAGING, "shards")}
    for name in store.ls(schema.SHARDS_DIR):
        if name not in planned and removable(name, ours):
            store.rm(f"{schema.SHARDS_DIR}/{name}")


def owned_extra(store, record: RunRecord) -> set[str]:
    """Recorded files outside shards/ and meta/ that still exist (the demo classifier, the report)."""
    from core import schema

    return {f for f in record.files if not f.startswith((schema.SHARDS_DIR + "/", schema.META_DIR + "/"))
            and store.exists(f)}


def complete(store, record: RunRecord, files: list[str]) -> None:
    """Mark the run complete, listing every file it wrote (and the extras it owns that still exist)."""
    record.state, record.files = "complete", sorted(set(files) | owned_extra(store, record))
    store.write_json(RUN_FILE, record.to_json())


def clear_previous_demo(store, out: str) -> None:
    """Make ``out`` ready for a new demo build: remove what a previous demo recorded writing, nothing else.

    A folder holding anything but a demo output is refused (:func:`check_out_path`; a real build's output too).
    """
    from core.schema import STAGING

    check_out_path(store)
    previous = read_record(store)
    if previous is None:
        return
    if not previous.fingerprint.get("demo"):
        raise OutputError(f"--out {out}: holds a bbst build that is not the demo; pass another --out")
    log.info("replacing the previous demo output in %s", out)
    for rel in previous.files:  # only what the previous demo wrote
        store.rm(rel, recursive=True)
    store.rm(STAGING, recursive=True)
    store.rm(RUN_FILE)


def build_fingerprint(cfg, demo: bool = False) -> dict[str, Any]:
    """The fingerprint of a build of ``cfg`` (a ``BuildConfig``): its URL list's identity and its settings."""
    fp = fingerprint(cfg, list_identity(cfg.urls, cfg.storage_options, url_lists=cfg.reader.format != "images"))
    return {**fp, "demo": True} if demo else fp


def check_inputs(cfg, rescore: str | None = None) -> None:
    """Every input error a build of ``cfg`` (or a ``rescore`` of that output folder) could hit, found before any
    work starts; each names its flag."""
    from core.store import Store

    if cfg.score.classifier:
        import fsspec

        fs, path = fsspec.core.url_to_fs(cfg.score.classifier, **cfg.storage_options)
        if not fs.exists(path):
            raise InputError(f"--classifier {cfg.score.classifier}: no such file or folder")
    elif cfg.dedup.semantic.enabled and cfg.urls is not None:  # the demo bootstraps its own classifier
        raise InputError("--set dedup.semantic.enabled=true: the semantic pass compares the classifier's "
                         "embeddings; pass --classifier PATH")
    if rescore:
        if not Store(rescore, cfg.storage_options).exists(RUN_FILE):
            raise InputError(f"--rescore {rescore}: not a bbst output (no {RUN_FILE})")
        if not cfg.score.classifier:
            raise InputError("--rescore needs a classifier: pass --classifier PATH")
        return
    if cfg.urls is not None:
        list_identity(cfg.urls, cfg.storage_options, url_lists=cfg.reader.format != "images")
        check_out_path(Store(cfg.out, cfg.storage_options))
