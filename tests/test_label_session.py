"""Labeling session logic: atomic lease handout under concurrent requests, one server per database, progress and
example panels from confirmed labels."""

import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from label_pool import make_folder_pool, truth_of_key
from label_server import serve

from classifier.labeling.app import create_app
from classifier.labeling.sampling import SamplingConfig
from classifier.labeling.session import DatabaseInUse, DatabaseLock, LabelConfig, build_session
from classifier.labeling.store import LabelStore
from pipelines import label as label_script

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return make_folder_pool(tmp_path_factory.mktemp("sessionpool") / "pool", 40)


def _cfg(pool_dir, tmp_path, **kw):
    return LabelConfig(pool=str(pool_dir), db=str(tmp_path / "labels.sqlite"), model="test_vit_shared", **kw)


def test_concurrent_handouts_never_give_two_annotators_the_same_item(pool_dir, tmp_path):
    # all-random sampling and no model: every item handed out is a fresh one, so any overlap is a race
    cfg = _cfg(pool_dir, tmp_path, sampling=SamplingConfig(uncertainty_share=0.0, random_share=1.0,
                                                           agreement_share=0.0))
    app = create_app(cfg, start_background=False)
    annotators = ["ann", "bob", "cy", "dee"]
    with serve(app) as base:
        clients = [httpx.Client(base_url=base, headers={"origin": base}, timeout=30) for _ in annotators]
        try:
            for trial in range(20):
                barrier = threading.Barrier(len(annotators))
                got: dict[str, list[str]] = {}

                def ask(name, client, barrier=barrier, got=got):
                    barrier.wait()
                    r = client.post("/api/next", json={"annotator": name, "n": 8})
                    got[name] = [it["key"] for it in r.json()["items"]]

                threads = [threading.Thread(target=ask, args=(a, c)) for a, c in zip(annotators, clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                handed = [k for keys in got.values() for k in keys]
                assert len(got) == 4 and all(len(v) == 8 for v in got.values()), got
                assert len(handed) == len(set(handed)), f"trial {trial}: an item went to two annotators: {got}"
                for name, client in zip(annotators, clients):
                    client.post("/api/release", json={"annotator": name, "keys": got[name]})
        finally:
            for c in clients:
                c.close()
    app.state.session.close()


def test_second_server_on_the_same_database_is_refused_naming_the_holder(pool_dir, tmp_path, capsys):
    cfg = _cfg(pool_dir, tmp_path)
    first = build_session(cfg)
    try:
        with pytest.raises(DatabaseInUse) as exc:
            build_session(cfg)
        message = str(exc.value)
        assert "in use by another labeling server" in message and f"pid {os.getpid()}" in message
        assert "http://127.0.0.1:8000/" in message and str(tmp_path / "labels.sqlite") in message
        # the entry script answers in one line
        assert label_script.main(["--pool", str(pool_dir), "--db", cfg.db, "--model", "test_vit_shared"]) == 2
        err = capsys.readouterr().err
        assert "in use by another labeling server" in err and "Traceback" not in err
    finally:
        first.close()
    again = build_session(cfg)  # released on close (and by the kernel if the holder dies)
    again.close()


def test_a_symlink_or_hard_link_to_a_served_database_is_refused(pool_dir, tmp_path):
    """The lock is on the file: any other name for the same database meets it, and the refusal names the holder."""
    cfg = _cfg(pool_dir, tmp_path)
    first = build_session(cfg)
    db = tmp_path / "labels.sqlite"
    (tmp_path / "elsewhere").mkdir()
    symlink, hardlink = tmp_path / "elsewhere" / "link.sqlite", tmp_path / "elsewhere" / "hard.sqlite"
    symlink.symlink_to(db)
    os.link(db, hardlink)
    try:
        first.store.add_label(first.pool.keys[0], "stylistic", "ann")
        for other in (symlink, hardlink):
            with pytest.raises(DatabaseInUse) as exc:
                build_session(replace(cfg, db=str(other)))
            message = str(exc.value)
            assert message.startswith(f"{other}: the label database is in use by another labeling server")
            assert f"pid {os.getpid()}" in message and f"opened as {db}" in message
    finally:
        first.close()
    again = build_session(replace(cfg, db=str(hardlink)))  # the same database, its labels included
    try:
        assert len(again.store.labels()) == 1
    finally:
        again.close()


def test_a_server_in_another_process_is_named_through_a_hard_link(tmp_path):
    """Across processes the flock on the file decides; the holder is read from the database; SIGKILL frees it."""
    db, hardlink = tmp_path / "labels.sqlite", tmp_path / "hard.sqlite"
    code = ("import json, sys, time\n"
            "from classifier.labeling.session import DatabaseLock, SERVER_META\n"
            "from classifier.labeling.store import LabelStore\n"
            "lock = DatabaseLock(sys.argv[1], {'pid': __import__('os').getpid(), 'url': 'http://127.0.0.1:9/'})\n"
            "store = LabelStore(sys.argv[1])\n"
            "store.set_meta(SERVER_META, json.dumps(lock.holder))\n"
            "store.checkpoint()\n"
            "store.add_label('0001', 'stylistic', 'ann')\n"  # in the write-ahead log of labels.sqlite only
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.link(db, hardlink)
        with pytest.raises(DatabaseInUse) as exc:
            DatabaseLock(hardlink, {"pid": os.getpid()})
        assert f"pid {proc.pid}" in str(exc.value) and f"opened as {db}" in str(exc.value)
        assert "http://127.0.0.1:9/" in str(exc.value)
    finally:
        proc.kill()
        proc.wait(30)
    # the kernel dropped the killed holder's lock; the hard link opens through the name whose log holds the label
    lock = DatabaseLock(hardlink, {"pid": os.getpid()})
    try:
        assert lock.path == db
        store = LabelStore(lock.path)
        assert [r["key"] for r in store.labels()] == ["0001"]
        store.close()
    finally:
        lock.release()


def test_progress_and_examples_follow_confirmed_labels(pool_dir, tmp_path):
    from classifier.labeling.active import ActiveConfig

    s = build_session(_cfg(pool_dir, tmp_path, active=ActiveConfig(retrain_every=10, min_per_class=3)))
    try:
        p = s.progress("ann")
        assert p == {"labelled": 0, "pool_size": 40, "left_in_pool": 40, "retrain_every": 10, "round": 0,
                     "to_next_retrain": 10, "per_class_needed": 3, "model_version": None, "labelled_by_you": 0}
        assert s.examples()["stylistic"] == [] and s.examples()["source"]["stylistic"] == "labels"
        keys = s.pool.keys[:6]
        s.commit("ann", [{"key": k, "label": "stylistic" if truth_of_key(k) else "not_stylistic"} for k in keys])
        s.commit("Bob", [{"key": keys[5], "label": "stylistic" if truth_of_key(keys[5]) else "not_stylistic"},
                         {"key": s.pool.keys[6], "label": "skip"}])
        p = s.progress("BOB")
        assert (p["labelled"], p["left_in_pool"], p["to_next_retrain"], p["labelled_by_you"]) == (7, 34, 3, 1)
        ex = s.examples()
        assert set(ex["stylistic"]) == {k for k in keys if truth_of_key(k)}
        # the item two annotators agree on comes first in its panel
        cls = "stylistic" if truth_of_key(keys[5]) else "not_stylistic"
        assert ex[cls][0] == keys[5]
        # taking decisions back moves the counter back
        s.undo("bob"), s.undo("bob")  # the skip, then bob's vote on an item ann decided too: still decided
        assert (s.progress()["labelled"], s.progress()["left_in_pool"]) == (6, 34)
        s.undo("ann")  # ann's vote on that item: nobody has decided it now
        assert (s.progress()["labelled"], s.progress()["left_in_pool"]) == (5, 35)
    finally:
        s.close()


def test_retrain_counts_fit_the_pool_and_small_pools_say_so():
    from classifier.labeling.active import ActiveConfig
    from classifier.labeling.session import fit_active_to_pool

    default = ActiveConfig()
    assert fit_active_to_pool(default, 1000) == (default, None)  # large pools keep the configured counts
    fitted, note = fit_active_to_pool(default, 24)
    assert (fitted.retrain_every, fitted.min_per_class) == (6, 3)
    assert note == ("pool of 24 images: the model is retrained every 6 decisions (not 50), the first once both "
                    "classes have 3 labels (not 10)")
    small = ActiveConfig(retrain_every=5, min_per_class=2)
    assert fit_active_to_pool(small, 24) == (small, None)  # counts that already fit are kept
    kept, note = fit_active_to_pool(default, 6)
    assert kept is default and note.startswith("this pool of 6 images is too small for active learning")


def test_without_a_classifier_the_session_says_its_suggestions_are_untrained(tmp_path):
    pool = make_folder_pool(tmp_path / "pool", 24)
    s = build_session(_cfg(pool, tmp_path))
    try:
        assert s.model_note.startswith("no --classifier: suggestions come from an untrained model (no head until "
                                       "the first retrain round, after 6 decisions with 3 of each class)")
        assert "random-init trunks" in s.model_note and "bbst weights" in s.model_note
        assert s.learner.cfg.retrain_every == 6 and s.progress()["to_next_retrain"] == 6
    finally:
        s.close()
