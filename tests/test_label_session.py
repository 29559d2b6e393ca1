"""Labeling session logic: atomic lease handout under concurrent requests, one server per database, progress and
example panels from confirmed labels."""

import os
import threading

import httpx
import pytest
from label_pool import make_folder_pool, truth_of_key
from label_server import serve

from classifier.labeling.app import create_app
from classifier.labeling.sampling import SamplingConfig
from classifier.labeling.session import DatabaseInUse, LabelConfig, build_session
from pipelines import label as label_script


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
