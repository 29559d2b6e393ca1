"""Semantic deduplication: kept images whose embeddings are within a cosine threshold, the smallest key kept.

Perceptual hashes find re-encodes and resizes; a crop, a mirror, a re-colour or the same painting photographed
twice changes the hash but hardly the embedding the classifier computes. The pass works on the embeddings the
score stage writes beside the metadata (``embeddings/part-P.parquet``: ``key`` and a float16 ``embedding``,
L2-normalised), in the steps a cluster runs as parallel tasks:

1. :func:`train_centroids`: k-means (Lloyd, seeded, fixed iterations) over a key-ordered sample of the
   embeddings (at most 256 per cluster, like faiss); the centroids are saved, so a rerun uses the same ones.
   It is numpy (and a scipy sparse product for the cluster sums) rather than faiss: on the same sample faiss
   trains 1.3-2x faster, but one code path keeps the decisions independent of what is installed.
2. :func:`scatter_embeddings`: each embedding goes to the buckets of its ``probes`` nearest centroids (a pair
   that straddles a cluster boundary is still found in one of them).
3. :func:`cluster_pairs`: within every cluster of a bucket, the pairs whose cosine similarity is at least
   ``threshold`` (blocked matrix products), written per bucket.
4. :func:`resolve_pairs`: rows visited in key order; one is a ``semantic_duplicate`` of the smallest kept key
   it is similar to (the rule of the near-duplicate step, :func:`curate.dedup.resolve_near`).

Each similarity is computed from the stored float16 values of its pair alone (:func:`pair_similarity`), so the
decisions can be checked from the published embeddings and a pair's verdict does not depend on the cluster or
block it was found in. Clustering only bounds the search: with ``probes`` equal to ``clusters`` every pair is
compared, and the decisions then do not depend on the centroids at all.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from core.schema import STAGING, partition_range
from curate.dedup import SemanticConfig

EMBEDDINGS_DIR = "embeddings"  # DIR/embeddings/part-PPPPPP.parquet: key, embedding (float16, L2-normalised)
SEMANTIC_DIR = f"{STAGING}/semantic"  # centroids, pairs per bucket, decisions, done marker
BLOCK_ROWS = 2048  # most rows of one similarity block (block rows x cluster size float32 at a time)
BLOCK_VALUES = 1 << 25  # most similarities in one block (128 MiB): a large cluster is compared in fewer rows
# A matrix product's rounding depends on its shape (BLAS blocking), so candidates from it within this margin of
# the threshold are decided by the pair's own dot product: the same value whatever the cluster or block.
MARGIN = 1e-3
SAMPLE_PER_CLUSTER = 256  # k-means trains on at most this many embeddings per centroid (faiss's default too)


# --------------------------------------------------------------------------------------------------- embeddings
def embeddings_rel(p: int) -> str:
    from core import schema

    return f"{EMBEDDINGS_DIR}/{schema.meta_name(p)}"


def embeddings_table(keys: list[str], embeddings: np.ndarray) -> pa.Table:
    """``key`` and ``embedding`` (fixed-size list of float16) of one partition's scored rows."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float16)
    dim = emb.shape[1] if emb.ndim == 2 else 0
    values = pa.array(emb.reshape(-1), pa.float16())
    return pa.table({"key": pa.array(keys, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(values, dim)})


def read_embeddings(store, p: int) -> tuple[np.ndarray, np.ndarray]:
    """``(int keys, float16 embeddings)`` of partition ``p`` (empty when it has none)."""
    from curate.dedup import keys_to_int

    rel = embeddings_rel(p)
    if not store.exists(rel):
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float16)
    t = store.read_parquet(rel)
    col = t["embedding"].combine_chunks()
    dim = col.type.list_size
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float16)
    return keys_to_int(t["key"].to_pylist()), values.reshape(-1, dim)


# --------------------------------------------------------------------------------------------------- k-means
def default_clusters(n: int) -> int:
    return max(1, min(10_000, round(n / 1000)))


def kmeans(x: np.ndarray, k: int, iterations: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means (cosine) by Lloyd's steps: ``k`` unit centroids, float32; deterministic for ``x``."""
    from scipy.sparse import csr_matrix

    x = np.asarray(x, dtype=np.float32)
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(len(x), size=k, replace=False))].copy()
    rows = np.arange(len(x))
    for _ in range(iterations):
        assign = nearest_centroids(x, centroids, 1)[:, 0]
        # each cluster's sum as a sparse (k x n) membership product: one pass over x, rows summed in order
        sums = csr_matrix((np.ones(len(x), np.float32), (assign, rows)), shape=(k, len(x))) @ x
        sums = np.asarray(sums, dtype=np.float32)
        norm = np.linalg.norm(sums, axis=1, keepdims=True)
        filled = norm[:, 0] > 0  # an empty cluster keeps its centroid
        centroids[filled] = sums[filled] / norm[filled]
    return centroids


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """Indices of the ``probes`` most similar centroids of every row, most similar first (ties: lower index)."""
    probes = min(probes, len(centroids))
    out = np.zeros((len(x), probes), dtype=np.int64)
    c = np.asarray(centroids, dtype=np.float32)
    for start in range(0, len(x), BLOCK_ROWS):
        sims = np.asarray(x[start:start + BLOCK_ROWS], dtype=np.float32) @ c.T
        if probes == 1:
            out[start:start + BLOCK_ROWS, 0] = np.argmax(sims, axis=1)  # the first of equal maxima
            continue
        top = np.argpartition(-sims, probes - 1, axis=1)[:, :probes] if probes < len(c) else \
            np.broadcast_to(np.arange(len(c)), sims.shape)
        # most similar first, ties by index
        rank = np.lexsort((top, -np.take_along_axis(sims, top, axis=1)), axis=1)
        out[start:start + BLOCK_ROWS] = np.take_along_axis(top, rank, axis=1)
    return out


def sample_embeddings(store, partitions: list[int], sample: int) -> np.ndarray:
    """A key-ordered stride of at most ``sample`` embeddings over every partition (one partition in memory)."""
    import pyarrow.parquet as pq

    counts = {}
    for p in sorted(partitions):
        rel = embeddings_rel(p)
        if store.exists(rel):
            with store.open(rel) as f:
                counts[p] = pq.ParquetFile(f).metadata.num_rows
    total = sum(counts.values())
    stride = max(1, math.ceil(total / sample))
    picked, offset = [], 0
    for p in sorted(counts):
        _, emb = read_embeddings(store, p)
        first = (-offset) % stride  # global positions that are multiples of the stride
        picked.append(emb[first::stride])
        offset += len(emb)
    return np.concatenate(picked) if picked else np.zeros((0, 0), np.float16)


def centroids_rel() -> str:
    return f"{SEMANTIC_DIR}/centroids.npy"


def train_centroids(store, partitions: list[int], cfg: SemanticConfig, total: int) -> int:
    """k-means over a sample of the run's embeddings, saved to the staging area (reused when already there);
    returns the number of clusters."""
    if store.exists(centroids_rel()):
        return len(load_centroids(store))
    k = cfg.clusters or default_clusters(total)
    x = sample_embeddings(store, partitions, min(cfg.sample, SAMPLE_PER_CLUSTER * k))
    centroids = kmeans(x, k, cfg.iterations, cfg.seed) if len(x) else np.zeros((1, 1), np.float32)
    import io

    buf = io.BytesIO()
    np.save(buf, centroids, allow_pickle=False)
    store.write_bytes(centroids_rel(), buf.getvalue())
    return len(centroids)


def load_centroids(store) -> np.ndarray:
    import io

    with store.open(centroids_rel()) as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


# --------------------------------------------------------------------------------------------------- search
def scatter_embeddings(store, partitions: list[int], probes: int, buckets: int) -> list[dict[str, np.ndarray]]:
    """The embeddings of ``partitions`` cut into ``buckets`` by cluster: each row once per probed cluster."""
    centroids = load_centroids(store)
    keys, embs = [], []
    for p in partitions:
        k, e = read_embeddings(store, p)
        if len(k):
            keys.append(k)
            embs.append(e)
    if not keys:
        empty = {"key": np.zeros(0, np.int64), "cluster": np.zeros(0, np.int64), "embedding": np.zeros((0, 0),
                                                                                                       np.float16)}
        return [empty] * buckets
    key, emb = np.concatenate(keys), np.concatenate(embs)
    near = nearest_centroids(emb, centroids, probes)
    rows = np.repeat(np.arange(len(key)), near.shape[1])
    cluster = near.reshape(-1)
    which = cluster % buckets
    return [{"key": key[rows[which == b]], "cluster": cluster[which == b], "embedding": emb[rows[which == b]]}
            for b in range(buckets)]


def pair_similarity(x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows ``i`` and ``j`` of float16 unit vectors ``x``: products exact in float64, summed
    in a fixed order, so a pair's value does not depend on what else is compared with it."""
    return (x[i].astype(np.float64) * x[j].astype(np.float64)).sum(axis=1).astype(np.float32)


def similar_pairs(keys: np.ndarray, embeddings: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Pairs ``a < b`` of ``keys`` whose embeddings' cosine similarity (:func:`pair_similarity`) is at least
    ``threshold``; blocked matrix products find the candidates."""
    x16 = np.asarray(embeddings, dtype=np.float16)
    x = x16.astype(np.float32)
    a_out, b_out, s_out = [], [], []
    rows = max(1, min(BLOCK_ROWS, BLOCK_VALUES // max(1, len(x))))
    for start in range(0, len(x), rows):
        sims = x[start:start + rows] @ x.T
        i, j = np.nonzero(sims >= threshold - MARGIN)
        i_abs = i + start
        upper = j > i_abs  # each pair once, no self pairs
        i_abs, j = i_abs[upper], j[upper]
        s = pair_similarity(x16, i_abs, j)
        close = s >= threshold
        i_abs, j, s = i_abs[close], j[close], s[close]
        ki, kj = keys[i_abs], keys[j]
        a_out.append(np.minimum(ki, kj))
        b_out.append(np.maximum(ki, kj))
        s_out.append(s)
    if not a_out:
        return {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64), "similarity": np.zeros(0, np.float32)}
    return {"a": np.concatenate(a_out), "b": np.concatenate(b_out), "similarity": np.concatenate(s_out)}


def pairs_rel(j: int) -> str:
    return f"{SEMANTIC_DIR}/pairs-{j:04d}.parquet"


def cluster_pairs(parts: list[dict[str, np.ndarray]], threshold: float) -> dict[str, np.ndarray]:
    """Similar pairs within every cluster of one bucket (a pair found in two clusters is reported once)."""
    parts = [p for p in parts if p is not None and len(p["key"])]
    if not parts:
        return similar_pairs(np.zeros(0, np.int64), np.zeros((0, 1), np.float16), threshold)
    key = np.concatenate([p["key"] for p in parts])
    cluster = np.concatenate([p["cluster"] for p in parts])
    emb = np.concatenate([p["embedding"] for p in parts])
    order = np.lexsort((key, cluster))
    key, cluster, emb = key[order], cluster[order], emb[order]
    bounds = np.flatnonzero(np.diff(cluster)) + 1
    found = [similar_pairs(key[lo:hi], emb[lo:hi], threshold)
             for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(key)]) if hi - lo > 1]
    return unique_pairs(found)


def unique_pairs(found: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    found = [f for f in found if len(f["a"])]
    if not found:
        return {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64), "similarity": np.zeros(0, np.float32)}
    a = np.concatenate([f["a"] for f in found])
    b = np.concatenate([f["b"] for f in found])
    s = np.concatenate([f["similarity"] for f in found])
    _, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return {"a": a[first], "b": b[first], "similarity": s[first]}


def bucket_to_store(store, j: int, threshold: float, *parts: dict[str, np.ndarray]) -> int:
    """:func:`cluster_pairs` of bucket ``j`` written to the staging area; returns the number of pairs."""
    pairs = cluster_pairs(list(parts), threshold)
    store.write_parquet(pairs_rel(j), pa.table(pairs))
    return len(pairs["a"])


def resolve_pairs(pairs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{key, dup_of, similarity}``: rows in key order, each a duplicate of the smallest kept key it is similar
    to (the near-duplicate rule)."""
    from curate.dedup import resolve_near

    res = resolve_near([{"a": pairs["a"], "b": pairs["b"], "same": np.zeros(len(pairs["a"]), bool)}])
    sim = {(int(a), int(b)): float(s) for a, b, s in zip(pairs["a"], pairs["b"], pairs["similarity"])}
    return {"key": res["key"], "dup_of": res["dup_of"],
            "similarity": np.array([sim[(int(d), int(k))] for k, d in zip(res["key"], res["dup_of"])], np.float32)}


def decisions_rel() -> str:
    return f"{SEMANTIC_DIR}/decisions.parquet"


def done_rel() -> str:
    return f"{SEMANTIC_DIR}/done.json"


def semantic_done(store) -> bool:
    return store.exists(done_rel())


def resolve_to_store(store, buckets: int, cfg: SemanticConfig, clusters: int) -> dict[str, Any]:
    """Resolve every bucket's pairs; writes the decisions and the done marker; returns the account."""
    parts = [store.read_parquet(pairs_rel(j)) for j in range(buckets)]
    pairs = unique_pairs([{c: t[c].to_numpy() for c in ("a", "b", "similarity")} for t in parts])
    res = resolve_pairs(pairs)
    store.write_parquet(decisions_rel(), pa.table(res))
    order = np.argsort(res["similarity"], kind="stable")
    # examples spread over the similarity range: the least similar pairs show what the threshold lets through
    picks = sorted(set(np.linspace(0, len(order) - 1, min(cfg.examples, len(order))).round().astype(int).tolist()))
    from curate.dedup import int_to_key

    examples = [{"key": int_to_key(res["key"][order[i]]), "duplicate_of": int_to_key(res["dup_of"][order[i]]),
                 "similarity": round(float(res["similarity"][order[i]]), 4)} for i in picks]
    account = {"threshold": cfg.threshold, "embedding": cfg.embedding, "clusters": clusters, "probes": cfg.probes,
               "similar_pairs": len(pairs["a"]), "semantic_duplicates": len(res["key"]),
               "examples": examples}
    store.write_json(done_rel(), account)
    return account


def load_decisions(store, p: int) -> dict[int, tuple[int, float]]:
    """``{key: (kept key, similarity)}`` of partition ``p``'s semantic duplicates (empty without the pass)."""
    if not store.exists(decisions_rel()):
        return {}

    lo, hi = partition_range(p)
    t = store.read_parquet(decisions_rel(), filters=[("key", ">=", lo), ("key", "<", hi)])
    return {int(k): (int(d), float(s)) for k, d, s in zip(t["key"].to_pylist(), t["dup_of"].to_pylist(),
                                                          t["similarity"].to_pylist())}


def apply_decisions(keys, statuses, dup_of, errors, decisions: dict[int, tuple[int, float]],
                    ) -> tuple[list[str], list[str | None], list[str | None]]:
    """``(status, duplicate_of, error)`` of one partition's rows with the semantic duplicates marked."""
    from core.schema import Status
    from curate.dedup import int_to_key

    status, dup, err = list(statuses), list(dup_of), list(errors)
    for i, k in enumerate(keys):
        hit = decisions.get(int(k))
        if hit is None or status[i] != Status.OK.value:
            continue
        status[i], dup[i] = Status.SEMANTIC_DUPLICATE.value, int_to_key(hit[0])
        err[i] = f"semantic duplicate of {dup[i]} (cosine {hit[1]:.3f})"
    return status, dup, err
