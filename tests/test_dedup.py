"""Run-wide deduplication: exact and near duplicates, smallest key kept, independent of arrival order."""

from __future__ import annotations

import random

import pytest

from curate.dedup import DedupConfig, DedupIndex, choose_chunks, dedup_rows


def key(i: int) -> str:
    return f"{i:013d}"


def hexh(h: int) -> str:
    return f"{h:016x}"


def brute_force(keys, shas, phashes, cfg):
    """Reference: the same rule written the obvious, quadratic way."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    kept, first_sha, status = [], {}, {}
    for i in order:
        if cfg.exact and shas[i] in first_sha:
            status[i] = "duplicate"
            continue
        first_sha[shas[i]] = i
        h = int(phashes[i], 16)
        if cfg.near and any((h ^ int(phashes[k], 16)).bit_count() <= cfg.phash_distance for k in kept):
            status[i] = "near_duplicate"
            continue
        kept.append(i)
        status[i] = "ok"
    return [status[i] for i in range(len(keys))]


def corpus(n=800, seed=0):
    rng = random.Random(seed)
    base = [rng.getrandbits(64) for _ in range(n)]
    keys, shas, phashes = [], [], []
    for i in range(n):
        keys.append(key(i))
        r = rng.random()
        if r < 0.1 and i:  # exact copy of an earlier row
            j = rng.randrange(i)
            shas.append(shas[j])
            phashes.append(phashes[j])
            continue
        h = base[i]
        if r < 0.3 and i:  # near copy: flip up to 6 bits of an earlier hash
            h = int(phashes[rng.randrange(i)], 16)
            for b in rng.sample(range(64), rng.randint(1, 6)):
                h ^= 1 << b
        shas.append(f"sha{i}")
        phashes.append(hexh(h))
    return keys, shas, phashes


@pytest.mark.parametrize("distance", [0, 3, 4, 6, 9])
def test_matches_brute_force(distance):
    keys, shas, phashes = corpus()
    cfg = DedupConfig(phash_distance=distance)
    status, dup_of = dedup_rows(keys, shas, phashes, cfg)
    assert status == brute_force(keys, shas, phashes, cfg)
    kept = {keys[i] for i, s in enumerate(status) if s == "ok"}
    for i, s in enumerate(status):
        if s == "ok":
            assert dup_of[i] is None
        else:
            assert dup_of[i] in kept and dup_of[i] < keys[i]


@pytest.mark.parametrize(("chunks", "distance"), [(2, 3), (3, 6), (4, 6), (5, 6), (7, 6), (16, 6)])
def test_every_chunk_layout_finds_the_same_neighbours(chunks, distance):
    keys, shas, phashes = corpus(n=400, seed=3)
    cfg = DedupConfig(phash_distance=distance)
    status, _ = dedup_rows(keys, shas, phashes, cfg, index=DedupIndex(cfg, chunks=chunks))
    assert status == brute_force(keys, shas, phashes, cfg)
    # streaming use keeps the same rows (it labels a copy of a dropped row near_duplicate rather than duplicate)
    idx = DedupIndex(cfg, chunks=chunks)
    streamed = [idx.check_and_add(k, s, p)[0] for k, s, p in zip(keys, shas, phashes, strict=True)]
    assert [s == "ok" for s in streamed] == [s == "ok" for s in status]


def test_exploding_layout_is_refused():
    with pytest.raises(ValueError, match="chunks"):
        DedupIndex(DedupConfig(phash_distance=6), chunks=1)  # would enumerate ~75 million neighbours
    assert choose_chunks(10, 12) > 1


def test_chunk_choice_follows_size():
    assert choose_chunks(1000, 4) == 5  # small runs: exact lookups on 13-bit chunks
    assert choose_chunks(4_000_000, 4) == 3  # large runs: ~21-bit chunks keep buckets nearly empty
    assert choose_chunks(10**6, 0) == 1  # exact phash match: one 64-bit table


def test_independent_of_arrival_order():
    keys, shas, phashes = corpus(seed=1)
    status, dup_of = dedup_rows(keys, shas, phashes)
    perm = list(range(len(keys)))
    random.Random(5).shuffle(perm)
    s2, d2 = dedup_rows([keys[i] for i in perm], [shas[i] for i in perm], [phashes[i] for i in perm])
    assert [s2[perm.index(i)] for i in range(len(keys))] == status
    assert [d2[perm.index(i)] for i in range(len(keys))] == dup_of


def test_smallest_key_of_a_group_is_kept():
    h = 0x0123456789ABCDEF
    keys = [key(9), key(3), key(5), key(7)]
    shas = ["a", "a", "b", "c"]
    phashes = [hexh(h), hexh(h), hexh(h ^ 0b111), hexh(h ^ (1 | 1 << 16 | 1 << 32 | 1 << 48))]  # 3 and 4 bits off
    status, dup_of = dedup_rows(keys, shas, phashes, DedupConfig(phash_distance=4))
    assert status == ["duplicate", "ok", "near_duplicate", "near_duplicate"]
    assert dup_of == [key(3), None, key(3), key(3)]
    # one bit per 16-bit chunk is the pigeonhole worst case for distance 4: still found
    assert dedup_rows(keys, shas, phashes, DedupConfig(phash_distance=3))[0][3] == "ok"


def test_exact_duplicate_of_a_near_duplicate_points_at_the_kept_row():
    h = 0xFFFF0000FFFF0000
    keys = [key(1), key(2), key(3)]
    status, dup_of = dedup_rows(keys, ["x", "y", "y"], [hexh(h), hexh(h ^ 1), hexh(h ^ 1)])
    assert status == ["ok", "near_duplicate", "duplicate"]
    assert dup_of == [None, key(1), key(1)]


def test_switches_and_missing_hashes():
    keys, shas, phashes = [key(1), key(2), key(3)], ["a", "a", None], ["00" * 8, "00" * 8, None]
    assert dedup_rows(keys, shas, phashes, DedupConfig(exact=False, near=False))[0] == ["ok"] * 3
    assert dedup_rows(keys, shas, phashes, DedupConfig(exact=False))[0] == ["ok", "near_duplicate", "ok"]
    assert dedup_rows(keys, shas, phashes, DedupConfig(near=False))[0] == ["ok", "duplicate", "ok"]
    with pytest.raises(ValueError):
        dedup_rows(keys, shas, phashes[:2])
    with pytest.raises(ValueError):
        dedup_rows([key(1), key(1)], ["a", "b"], [None, None])


def test_incremental_index_and_prior_state():
    idx = DedupIndex(DedupConfig(phash_distance=2))
    assert idx.check_and_add(key(1), "a", hexh(0)) == ("ok", None)
    assert idx.check_and_add(key(2), "a", hexh(123)) == ("duplicate", key(1))
    assert idx.check_and_add(key(3), "b", hexh(0b11)) == ("near_duplicate", key(1))
    assert idx.check_and_add(key(4), "c", hexh(0b111)) == ("ok", None)
    assert idx.near(hexh(0b1), distance=1) == [(1, key(1))]
    # a later batch is judged against rows kept earlier (resume: rebuild the index from kept metadata)
    status, dup_of = dedup_rows([key(9)], ["a"], [hexh(999)], DedupConfig(), index=idx)
    assert (status, dup_of) == (["duplicate"], [key(1)])


def test_config_validation():
    with pytest.raises(ValueError):
        DedupConfig(phash_distance=64)


def test_distributed_steps_decide_exactly_like_dedup_rows():
    """scatter -> exact reduce -> bands -> verified pairs -> key-order resolve == the one-process reference."""
    import random

    from core.schema import make_key
    from curate.dedup import apply_decisions, dedup_in_process

    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 50)
        centres = [rng.getrandbits(64) for _ in range(3)]
        keys = sorted({make_key(rng.randint(0, 3), rng.randint(0, 99)) for _ in range(n)})
        rng.shuffle(keys)
        shas, phs = [], []
        for i in range(len(keys)):
            shas.append(rng.choice(["a", "b", None, f"u{i}", f"v{i}", f"w{i}"]))
            h = rng.choice(centres)
            for _ in range(rng.randint(0, 6)):
                h ^= 1 << rng.randint(0, 63)
            phs.append(None if rng.random() < 0.1 else f"{h:016x}")
        cfg = DedupConfig(exact=rng.random() < 0.8, near=rng.random() < 0.8, phash_distance=rng.randint(0, 8))
        want = dedup_rows(keys, shas, phs, cfg)
        dups, near = dedup_in_process(keys, shas, phs, cfg, buckets=rng.randint(1, 4))
        status, dup_of, _ = apply_decisions(keys, ["ok"] * len(keys), [None] * len(keys), dups, near)
        assert (status, dup_of) == want


def test_bands_guarantee_a_shared_band_within_the_distance():
    import numpy as np

    from curate.dedup import band_layout, near_edges, scatter_bands

    for distance in (0, 1, 4, 10):
        assert len(band_layout(distance)) == distance + 1
        a = np.uint64(0x0123456789ABCDEF)
        b = a ^ np.uint64(sum(1 << (6 * i) for i in range(distance)))  # spread flips over every band
        cand = {"key": np.array([1, 2]), "phash": np.array([a, b], dtype=np.uint64), "has_phash": np.array([True] * 2)}
        edges = [near_edges([part], distance) for part in scatter_bands(cand, distance, 2)]
        pairs = {(int(x), int(y)) for e in edges for x, y in zip(e["a"], e["b"])}
        assert pairs == {(1, 2)}
