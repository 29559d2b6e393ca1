"""Sampling strategy: quotas, uncertainty order, unbiased random share, agreement first, fill-in, k-center."""

from collections import Counter

import numpy as np
import pytest

from classifier.labeling.agreement import agreement_summary, pairwise_kappa
from classifier.labeling.sampling import (
    AGREEMENT,
    DISAGREEMENT,
    DIVERSE,
    RANDOM,
    REVIEW,
    UNCERTAIN,
    Candidates,
    SamplingConfig,
    allocate,
    kcenter_order,
    select,
)


def test_allocate_sums_exactly():
    for n in range(30):
        q = allocate(n, [0.6, 0.25, 0.15])
        assert sum(q) == n and all(x >= 0 for x in q)
    assert allocate(20, [0.6, 0.25, 0.15]) == [12, 5, 3]


def _pool(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    keys = [f"k{i:04d}" for i in range(n)]
    return keys, rng.uniform(0, 1, n)


def test_mix_with_model_follows_quotas_and_uncertainty():
    keys, scores = _pool()
    cfg = SamplingConfig(uncertainty_share=0.6, random_share=0.25, agreement_share=0.15)
    cand = Candidates(unlabeled=keys, scores=scores, threshold=0.5, overlap=["o1", "o2", "o3", "o4"],
                      disagreements=["d1"])
    out = select(20, cand, cfg, np.random.default_rng(1))
    reasons = Counter(r for _, r in out)
    assert reasons == {UNCERTAIN: 12, RANDOM: 5, DISAGREEMENT: 1, AGREEMENT: 2}
    assert len({k for k, _ in out}) == 20
    # the uncertain picks are exactly the 12 scores nearest the threshold that the random share left
    uncertain = {k for k, r in out if r == UNCERTAIN}
    random_taken = {k for k, r in out if r == RANDOM}
    order = [keys[i] for i in np.argsort(np.abs(scores - 0.5), kind="stable")]
    assert uncertain == set([k for k in order if k not in random_taken][:12])
    assert max(abs(scores[keys.index(k)] - 0.5) for k in uncertain) < 0.02


def test_disagreements_before_overlap():
    keys, scores = _pool(100)
    cfg = SamplingConfig(uncertainty_share=0.5, random_share=0.0, agreement_share=0.5)
    cand = Candidates(unlabeled=keys, scores=scores, threshold=0.5, overlap=["o1", "o2", "o3"],
                      disagreements=["d1", "d2"])
    out = select(6, cand, cfg, np.random.default_rng(0))
    agree = [(k, r) for k, r in out if r in (AGREEMENT, DISAGREEMENT)]
    assert {k for k, r in agree if r == DISAGREEMENT} == {"d1", "d2"}
    assert len(agree) == 3


def test_review_items_after_disagreements_before_overlap():
    keys, scores = _pool(100)
    cfg = SamplingConfig(uncertainty_share=0.0, random_share=0.0, agreement_share=1.0)
    cand = Candidates(unlabeled=keys, scores=scores, threshold=0.5, disagreements=["d1"], review=["r1", "r2"],
                      overlap=["o1", "o2"])
    out = select(4, cand, cfg, np.random.default_rng(0))
    assert sorted(out) == [("d1", DISAGREEMENT), ("o1", AGREEMENT), ("r1", REVIEW), ("r2", REVIEW)] or \
        sorted(out) == [("d1", DISAGREEMENT), ("o2", AGREEMENT), ("r1", REVIEW), ("r2", REVIEW)]


def test_random_share_is_unbiased_over_the_pool():
    """Random picks follow the pool's score distribution even though most picks sit at the boundary."""
    keys, scores = _pool(20000, seed=3)
    scores = scores**3  # a skewed pool: most items look "not stylistic"
    index = {k: i for i, k in enumerate(keys)}
    cfg = SamplingConfig()
    taken: set[str] = set()
    rand_scores, unc_scores = [], []
    rng = np.random.default_rng(0)
    for _ in range(50):
        cand = Candidates(unlabeled=keys, scores=scores, threshold=0.5, exclude=set(taken))
        for k, r in select(20, cand, cfg, rng):
            taken.add(k)
            (rand_scores if r == RANDOM else unc_scores).append(scores[index[k]])
    assert len(rand_scores) == 250 and len(taken) == 1000
    # standard error of the mean is ~0.018 here; the uncertain share's mean is ~0.25 away
    assert abs(np.mean(rand_scores) - scores.mean()) < 0.06
    assert abs(np.mean(unc_scores) - 0.5) < 0.05


def test_unfillable_shares_are_filled_from_others_and_exclude_respected():
    keys = [f"k{i}" for i in range(30)]
    cfg = SamplingConfig()
    cand = Candidates(unlabeled=keys, exclude={"k0", "k1"})  # no model, no diversity order, nothing to agree on
    out = select(10, cand, cfg, np.random.default_rng(0))
    assert len(out) == 10 and {r for _, r in out} == {RANDOM}
    assert not {"k0", "k1"} & {k for k, _ in out}
    # a pool smaller than the batch returns what there is
    small = select(10, Candidates(unlabeled=["a", "b"]), cfg, np.random.default_rng(0))
    assert sorted(k for k, _ in small) == ["a", "b"]


def test_cold_start_uses_diverse_order():
    keys = [f"k{i}" for i in range(50)]
    cand = Candidates(unlabeled=keys, diverse_order=["k7", "k3", "k9", "k1"])
    out = select(8, cand, SamplingConfig(), np.random.default_rng(0))
    diverse = [k for k, r in out if r == DIVERSE]
    assert set(diverse) <= {"k7", "k3", "k9", "k1"} and len(diverse) >= 4


def test_unscored_items_are_not_uncertain():
    keys = ["a", "b", "c", "d"]
    cand = Candidates(unlabeled=keys, scores=np.array([np.nan, 0.49, np.nan, 0.9]), threshold=0.5)
    out = select(2, cand, SamplingConfig(uncertainty_share=1, random_share=0, agreement_share=0),
                 np.random.default_rng(0))
    assert out[0] == ("b", UNCERTAIN) or out[1] == ("b", UNCERTAIN)
    assert ("d", UNCERTAIN) in out


def test_kcenter_covers_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4] * 10
    x = np.concatenate([c + rng.normal(0, 0.05, (100, 8)) for c in centres])
    idx = kcenter_order(x, 4, seed=1)
    assert sorted({i // 100 for i in idx}) == [0, 1, 2, 3]
    assert kcenter_order(np.zeros((5, 3)), 3) == [kcenter_order(np.zeros((5, 3)), 3)[0]]  # duplicates stop early


def test_config_validates_shares():
    with pytest.raises(ValueError):
        SamplingConfig(uncertainty_share=-1)
    with pytest.raises(ValueError):
        SamplingConfig(uncertainty_share=0, random_share=0, agreement_share=0)


def test_cohens_kappa():
    from sklearn.metrics import cohen_kappa_score

    a = ["stylistic", "stylistic", "not_stylistic", "not_stylistic", "stylistic", "not_stylistic"]
    b = ["stylistic", "not_stylistic", "not_stylistic", "not_stylistic", "stylistic", "stylistic"]
    dec = {f"k{i}": {"ann": x, "bob": y} for i, (x, y) in enumerate(zip(a, b))}
    dec["solo"] = {"ann": "stylistic"}
    dec["skipped"] = {"ann": "skip", "bob": "stylistic"}
    pairs = pairwise_kappa(dec)
    expect = cohen_kappa_score([x == "stylistic" for x in a], [y == "stylistic" for y in b])
    assert pairs == [{"annotators": ["ann", "bob"], "n_items": 6, "observed_agreement": pytest.approx(4 / 6),
                      "kappa": pytest.approx(expect)}]
    s = agreement_summary(dec)
    assert s["items_multi"] == 6 and s["items_disagreed"] == 2 and s["mean_kappa"] == pytest.approx(expect)
    same = {f"k{i}": {"ann": "stylistic", "bob": "stylistic"} for i in range(3)}
    assert pairwise_kappa(same)[0]["kappa"] == 1.0
