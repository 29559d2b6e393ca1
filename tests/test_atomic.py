"""The one atomic write (core/atomic.py): a file appears complete or not at all, and a failed write keeps the old."""

from __future__ import annotations

import os

import pytest

from core.atomic import atomic_write, atomic_write_bytes


def test_path_target_replaced_whole_and_no_temp_left(tmp_path):
    target = tmp_path / "sub" / "config.json"
    atomic_write_bytes(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    atomic_write_bytes(target, b'{"a": 2}')
    assert target.read_bytes() == b'{"a": 2}'
    assert os.listdir(target.parent) == ["config.json"]


def test_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"old weights")

    def half_then_crash(f):
        f.write(b"new wei")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old weights"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_classifier_resave_killed_while_writing_config_keeps_the_old_config(tmp_path, monkeypatch):
    """A live labeling session re-saves its checkpoint: a crash while config.json is written leaves the old one."""
    import json

    from classifier.checkpoint import CONFIG_FILE, save_classifier
    from classifier.factory import create_classifier
    from classifier.head import HeadResult
    from core import atomic

    model = create_classifier("test_vit_shared")
    save_classifier(tmp_path, model, HeadResult(head=model.head), training_data_hash="first")
    before = (tmp_path / CONFIG_FILE).read_text()

    def crash_on_config(f):  # runs after the bytes are written, before the rename
        if f".{CONFIG_FILE}.tmp-" in f.name:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(atomic, "_fsync", crash_on_config)
    with pytest.raises(KeyboardInterrupt):
        save_classifier(tmp_path, model, HeadResult(head=model.head, temperature=2.0), training_data_hash="second")
    assert (tmp_path / CONFIG_FILE).read_text() == before
    assert json.loads(before)["training_data_hash"] == "first"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
