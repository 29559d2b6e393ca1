"""Semantic deduplication on constructed embeddings: threshold, smallest key kept, clusters, resume, float16.

The tiny random-init classifier of the other tests does not give embeddings that separate a crop, a mirror or a
re-colour of an image from unrelated images (its content embeddings of any two images are nearly parallel), so
the crafted cases here are embedding vectors built to the geometry a trained model gives such variants; the
build test runs the pass end to end with the tiny model.
"""

from __future__ import annotations

import numpy as np
import pytest
from ray_local import ray_local  # noqa: F401 - session fixture

from classifier.scoring import select_embedding
from core import schema
from core.store import Store
from curate import semantic
from curate.dedup import SemanticConfig, int_to_key, keys_to_int

DIM = 64


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def variant_of(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly cosine ``cos`` from unit vector ``base``."""
    noise = rng.normal(size=base.shape)
    noise = unit(noise - (noise @ base) * base)
    return cos * base + np.sqrt(1 - cos**2) * noise


def write_partitions(store: Store, keys: list[str], emb: np.ndarray) -> dict[int, int]:
    """Write embeddings the way the score stage does, one file per partition of the keys."""
    parts: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        parts.setdefault(schema.split_key(k)[0], []).append(i)
    for p, idx in parts.items():
        store.write_parquet(semantic.embeddings_rel(p), semantic.embeddings_table(
            [keys[i] for i in idx], select_embedding(emb[idx], emb.shape[1], "features")))
    return {p: len(idx) for p, idx in parts.items()}


def run_pass(store: Store, partitions: dict[int, int], cfg: SemanticConfig, buckets: int = 3) -> dict:
    """Every step of the pass in one process, in the order the build's tasks run them."""
    parts = sorted(partitions)
    clusters = semantic.train_centroids(store, parts, cfg, sum(partitions.values()))
    scattered = [semantic.scatter_embeddings(store, [p], cfg.probes, buckets) for p in parts]
    for j in range(buckets):
        if not store.exists(semantic.pairs_rel(j)):
            semantic.bucket_to_store(store, j, cfg.threshold, *[s[j] for s in scattered])
    return semantic.resolve_to_store(store, buckets, cfg, clusters)


def statuses(store: Store, keys: list[str]) -> dict[str, tuple[str, str | None]]:
    out = {}
    for p in sorted({schema.split_key(k)[0] for k in keys}):
        ks = [k for k in keys if schema.split_key(k)[0] == p]
        st, dup, _ = semantic.apply_decisions(ks, ["ok"] * len(ks), [None] * len(ks), [None] * len(ks),
                                              semantic.load_decisions(store, p))
        out.update({k: (s, d) for k, s, d in zip(ks, st, dup)})
    return out


def crafted(rng: np.random.Generator) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """One image, its crop, resize, colour shift and mirror (cosine 0.93-0.99 to it), two unrelated images."""
    base = unit(rng.normal(size=DIM))
    rows = {"original": base, "crop": variant_of(base, 0.96, rng), "resize": variant_of(base, 0.99, rng),
            "colour": variant_of(base, 0.93, rng), "mirror": variant_of(base, 0.97, rng),
            "unrelated-1": unit(rng.normal(size=DIM)), "unrelated-2": unit(rng.normal(size=DIM))}
    keys = [schema.make_key(i % 2, i) for i in range(len(rows))]  # two partitions
    return keys, np.stack(list(rows.values())), dict(zip(rows, keys))


def test_variants_of_one_image_are_duplicates_and_unrelated_images_stay(tmp_path):
    keys, emb, named = crafted(np.random.default_rng(0))
    store = Store(str(tmp_path))
    account = run_pass(store, write_partitions(store, keys, emb), SemanticConfig(enabled=True, threshold=0.9))
    got = statuses(store, keys)
    for name in ("crop", "resize", "colour", "mirror"):
        assert got[named[name]] == ("semantic_duplicate", named["original"]), name
    for name in ("original", "unrelated-1", "unrelated-2"):
        assert got[named[name]] == ("ok", None), name
    assert account["semantic_duplicates"] == 4
    assert {(e["key"], e["duplicate_of"]) for e in account["examples"]} == {
        (named[n], named["original"]) for n in ("crop", "resize", "colour", "mirror")}
    sims = [e["similarity"] for e in account["examples"]]
    assert sims == sorted(sims) and 0.92 < sims[0] < 0.94  # least similar first; float16 storage keeps ~3 digits


def test_threshold_decides_which_variants_count(tmp_path):
    keys, emb, named = crafted(np.random.default_rng(1))
    store = Store(str(tmp_path))
    run_pass(store, write_partitions(store, keys, emb), SemanticConfig(enabled=True, threshold=0.965))
    got = statuses(store, keys)
    assert {n for n in named if got[named[n]][0] == "semantic_duplicate"} == {"resize", "mirror"}


def test_smallest_key_is_kept_whatever_the_order(tmp_path):
    """The variant with the smallest key is kept; a row is a duplicate of the smallest *kept* similar key."""
    rng = np.random.default_rng(2)
    base = unit(rng.normal(size=DIM))
    a = variant_of(base, 0.97, rng)  # smallest key: kept, although it is not the "original"
    c = variant_of(a, 0.97, rng)  # similar to a only (if at all to base, less than the threshold)
    emb = np.stack([a, base, c])
    keys = [schema.make_key(0, 5), schema.make_key(0, 9), schema.make_key(1, 0)]
    store = Store(str(tmp_path))
    run_pass(store, write_partitions(store, keys, emb), SemanticConfig(enabled=True, threshold=0.95))
    got = statuses(store, keys)
    assert got[keys[0]] == ("ok", None)
    assert got[keys[1]] == ("semantic_duplicate", keys[0])
    assert got[keys[2]] == ("semantic_duplicate", keys[0])


def test_chain_through_a_rejected_row_keeps_the_far_end(tmp_path):
    """a ~ b ~ c with a !~ c: b is a duplicate of a; c stays, since the only row it resembles was rejected."""
    rng = np.random.default_rng(3)
    a = unit(rng.normal(size=DIM))
    b = variant_of(a, 0.96, rng)
    # c at 0.96 from b but in the plane away from a, so that cos(a, c) < 0.9
    away = unit(b - (b @ a) * a)
    c = unit(0.96 * b + 0.28 * away)
    assert c @ a < 0.9 and c @ b > 0.95
    keys = [schema.make_key(0, i) for i in range(3)]
    store = Store(str(tmp_path))
    run_pass(store, write_partitions(store, keys, np.stack([a, b, c])), SemanticConfig(enabled=True, threshold=0.95))
    got = statuses(store, keys)
    assert [got[k][0] for k in keys] == ["ok", "semantic_duplicate", "ok"]


def brute_force(keys: list[str], emb: np.ndarray, threshold: float) -> dict[int, int]:
    x = select_embedding(emb, emb.shape[1], "features")
    pairs = semantic.similar_pairs(keys_to_int(keys), x, threshold)
    res = semantic.resolve_pairs(pairs)
    return dict(zip(res["key"].tolist(), res["dup_of"].tolist()))


def groups_of_variants(n_groups: int, per_group: int, rng: np.random.Generator) -> np.ndarray:
    bases = unit(rng.normal(size=(n_groups, DIM)))
    rows = [variant_of(b, rng.uniform(0.9, 0.995), rng) for b in bases for _ in range(per_group)]
    return np.stack(rows)[rng.permutation(n_groups * per_group)]


def test_clustered_search_with_every_cluster_probed_equals_brute_force(tmp_path):
    rng = np.random.default_rng(4)
    emb = groups_of_variants(60, 4, rng)
    keys = [schema.make_key(i // 50, i % 50) for i in range(len(emb))]
    store = Store(str(tmp_path))
    cfg = SemanticConfig(enabled=True, threshold=0.92, clusters=6, probes=6)
    run_pass(store, write_partitions(store, keys, emb), cfg)
    t = store.read_parquet(semantic.decisions_rel())
    assert dict(zip(t["key"].to_pylist(), t["dup_of"].to_pylist())) == brute_force(keys, emb, 0.92)
    assert len(t) > 60  # the groups were found


def test_pairs_across_cluster_boundaries_need_a_second_probe_and_runs_are_deterministic(tmp_path):
    rng = np.random.default_rng(5)
    emb = groups_of_variants(200, 3, rng)
    keys = [schema.make_key(i // 100, i % 100) for i in range(len(emb))]
    truth = brute_force(keys, emb, 0.92)
    results = {}
    for run, probes in enumerate((1, 2, 2)):
        store = Store(str(tmp_path / f"run{run}"))
        cfg = SemanticConfig(enabled=True, threshold=0.92, clusters=20, probes=probes)
        run_pass(store, write_partitions(store, keys, emb), cfg)
        t = store.read_parquet(semantic.decisions_rel())
        results[run] = dict(zip(t["key"].to_pylist(), t["dup_of"].to_pylist()))
    assert len(results[0]) < len(truth)  # one probe misses the pairs a k-means boundary cuts
    assert results[1] == results[2] == truth


def test_rerun_reuses_centroids_and_finished_buckets(tmp_path):
    keys, emb, _ = crafted(np.random.default_rng(6))
    store = Store(str(tmp_path))
    partitions = write_partitions(store, keys, emb)
    cfg = SemanticConfig(enabled=True, threshold=0.9, clusters=2)
    first = run_pass(store, partitions, cfg)
    centroids = semantic.load_centroids(store)
    before = {j: store.fs.modified(store.path(semantic.pairs_rel(j))) for j in range(3)}
    # a kill after the buckets: the decisions are missing; another seed must not change the saved centroids
    store.rm(semantic.decisions_rel())
    store.rm(semantic.done_rel())
    again = run_pass(store, partitions, SemanticConfig(enabled=True, threshold=0.9, clusters=2, seed=99))
    np.testing.assert_array_equal(semantic.load_centroids(store), centroids)
    assert {j: store.fs.modified(store.path(semantic.pairs_rel(j))) for j in range(3)} == before
    assert again == first


def test_embeddings_are_float16_unit_vectors_keyed_by_sample(tmp_path):
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(5, 12)).astype(np.float32) * 3
    keys = [int_to_key(i) for i in range(5)]
    store = Store(str(tmp_path))
    for part, dim in (("content", 8), ("style", 4), ("features", 12)):
        e = select_embedding(feats, 8, part)
        assert e.dtype == np.float16 and e.shape == (5, dim)
        np.testing.assert_allclose(np.linalg.norm(e.astype(np.float32), axis=1), 1, atol=2e-3)
    store.write_parquet(semantic.embeddings_rel(0), semantic.embeddings_table(keys, select_embedding(
        feats, 8, "content")))
    t = store.read_parquet(semantic.embeddings_rel(0))
    assert t.schema.field("embedding").type.value_type.bit_width == 16 and t["key"].to_pylist() == keys
    got_keys, got = semantic.read_embeddings(store, 0)
    assert got_keys.tolist() == list(range(5))
    np.testing.assert_array_equal(got, select_embedding(feats, 8, "content"))
    # a partition where nothing was scored still has its file, with the dimension
    store.write_parquet(semantic.embeddings_rel(1), semantic.embeddings_table([], np.zeros((0, 8), np.float16)))
    none_keys, none = semantic.read_embeddings(store, 1)
    assert none_keys.shape == (0,) and none.shape == (0, 8)


def test_kmeans_is_seeded_and_its_centroids_are_unit_vectors():
    x = unit(np.random.default_rng(8).normal(size=(300, DIM))).astype(np.float32)
    a, b = semantic.kmeans(x, 7, 5, seed=1), semantic.kmeans(x, 7, 5, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert semantic.kmeans(x[:3], 10, 2).shape == (3, DIM)  # never more clusters than points


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"embedding": "pixels"}, {"probes": 0}, {"clusters": -1}])
def test_config_refuses_out_of_range_values(bad):
    with pytest.raises(ValueError):
        SemanticConfig(**bad)


def test_blocked_similarities_equal_one_block(monkeypatch):
    rng = np.random.default_rng(9)
    emb = select_embedding(groups_of_variants(30, 3, rng), DIM, "features")
    keys = np.arange(len(emb), dtype=np.int64) * 7
    whole = semantic.similar_pairs(keys, emb, 0.9)
    monkeypatch.setattr(semantic, "BLOCK_VALUES", 5 * len(emb))  # blocks of 5 rows
    blocked = semantic.similar_pairs(keys, emb, 0.9)
    assert len(whole["a"]) >= 30
    for c in ("a", "b", "similarity"):
        np.testing.assert_array_equal(np.sort(blocked[c]), np.sort(whole[c]))


@pytest.mark.ray
@pytest.mark.slow
def test_sigkill_in_the_semantic_pass_then_rerun_equals_uninterrupted_run(tmp_path, ray_local):  # noqa: F811
    """Killed once the similar pairs are written: the rerun reuses the centroids and the pairs, decides, and
    gives the dataset of a run that was never interrupted."""
    import signal

    from test_build_bbst import check_invariants
    from test_resume import _args, _comparable, _run_killed, _shard_contents

    from classifier.demo import build_demo_classifier
    from core import synthetic
    from curate.demo import demo_corpus
    from pipelines import build_bbst

    images, labels = synthetic.labelled_batch(16, size=64, seed=1)
    ckpt = build_demo_classifier([synthetic.encode(im) for im in images], labels.tolist(), str(tmp_path / "clf"))
    with demo_corpus(tmp_path / "corpus", n_images=18, min_side=64, seed=3) as urls:
        def args(out):
            return [*_args(urls, out), "--classifier", ckpt, "--set", "dedup.semantic.enabled=true",
                    "--set", "dedup.semantic.embedding=style", "--set", "dedup.semantic.threshold=0.9",
                    "--set", "split.style_min_score=0.0"]

        clean = build_bbst.main(args(tmp_path / "clean"))
        out = tmp_path / "out"
        proc = _run_killed(args(out), "BBST_KILL_AFTER_SEMANTIC_BUCKETS", 1, ray_local)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        done = Store(str(out))
        assert done.exists(semantic.centroids_rel()) and done.exists(semantic.pairs_rel(0))
        assert not done.exists(semantic.decisions_rel())
        centroids = semantic.load_centroids(done)
        pairs_written = done.fs.modified(done.path(semantic.pairs_rel(0)))
        summary = build_bbst.main([*args(out), "--set", "keep_staging=true"])
    np.testing.assert_array_equal(semantic.load_centroids(done), centroids)
    assert done.fs.modified(done.path(semantic.pairs_rel(0))) == pairs_written  # reused, not recomputed
    check_invariants(tmp_path / "clean")
    assert _comparable(out) == _comparable(tmp_path / "clean")
    assert _shard_contents(out) == _shard_contents(tmp_path / "clean")
    assert summary["semantic_dedup"] == clean["semantic_dedup"]
    assert summary["counts_by_status"] == clean["counts_by_status"]
    assert clean["counts_by_status"]["semantic_duplicate"] > 0
