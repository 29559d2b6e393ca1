"""Which images a labeling session asks for next: uncertainty + random + agreement, diverse cold start.

The strategy, per batch of ``n`` items for one annotator:

* **uncertain** (``uncertainty_share``): unlabeled items whose current score is nearest the decision threshold.
  These move the decision boundary most per label (classic uncertainty sampling, as Prodigy's binary
  recipes and Label Studio's "sort by prediction score" do).
* **random** (``random_share``): unlabeled items drawn uniformly. Uncertainty sampling alone gives a labelled
  set concentrated at the boundary, which makes held-out accuracy look worse (or better) than it is on the pool;
  the uniformly drawn labels are tagged ``random`` and form the held-out set, so accuracy and ROC-AUC per round
  estimate the pool distribution without bias.
* **agreement** (``agreement_share``): items another annotator has already decided, asked again so that
  inter-annotator agreement (Cohen's kappa) can be measured. Items on which annotators *disagree* come first
  (they need a tie-breaker), then **review** items, whose out-of-sample prediction in the last round
  contradicts their label by a wide margin (likely label errors, the cleanlab idea), then items decided by
  fewer than ``annotators_per_item`` annotators.

Before any model exists there are no scores: the uncertainty share is replaced by a **diverse** sample, a
greedy k-center order over the cached features of a random candidate subset, so the first labels cover the
pool instead of its densest mode. Shares that cannot be filled (nothing to ask for agreement yet, nothing
scored) are filled from the other sources, so a batch is always as full as the pool allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

UNCERTAIN = "uncertain"
RANDOM = "random"
AGREEMENT = "agreement"
DISAGREEMENT = "disagreement"
DIVERSE = "diverse"
REVIEW = "review"
REASONS: tuple[str, ...] = (UNCERTAIN, RANDOM, AGREEMENT, DISAGREEMENT, DIVERSE, REVIEW)


@dataclass
class SamplingConfig:
    uncertainty_share: float = 0.6  # share of each batch taken nearest the decision threshold
    random_share: float = 0.25  # share drawn uniformly at random (tagged "random": the unbiased held-out set)
    agreement_share: float = 0.15  # share asked again of a second annotator (disagreements first)
    annotators_per_item: int = 2  # an item is asked of at most this many annotators for agreement
    cold_start_candidates: int = 2000  # k-center runs over at most this many random items (with cached features)
    seed: int = 0  # base seed; each batch derives its own stream

    def __post_init__(self):
        shares = (self.uncertainty_share, self.random_share, self.agreement_share)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"sampling shares must be >= 0 and not all zero, got {shares}")
        if self.annotators_per_item < 1:
            raise ValueError("annotators_per_item must be >= 1")


@dataclass
class Candidates:
    """What the sampler may pick from, for one annotator, at one moment."""

    unlabeled: Sequence[str]  # keys nobody has decided and no one is currently being shown
    scores: np.ndarray | None = None  # current P(stylistic) aligned with ``unlabeled``; NaN = not scored yet
    threshold: float | None = None  # decision threshold of the current head; None = no model yet
    disagreements: Sequence[str] = ()  # keys where annotators disagree, not yet decided by this annotator
    overlap: Sequence[str] = ()  # keys decided by 1..annotators_per_item-1 others, not by this annotator
    review: Sequence[str] = ()  # keys whose held-out prediction contradicts their label, not decided by this one
    diverse_order: Sequence[str] = ()  # cold-start order (k-center); used while there is no model
    exclude: set[str] = field(default_factory=set)  # keys never to return (e.g. already queued client-side)


def allocate(n: int, shares: Sequence[float]) -> list[int]:
    """Split ``n`` slots by ``shares`` with the largest-remainder rule (sums to exactly ``n``)."""
    w = np.asarray(shares, dtype=np.float64)
    w = w / w.sum()
    raw = w * n
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: n - out.sum()]:
        out[i] += 1
    return out.tolist()


def select(n: int, cand: Candidates, cfg: SamplingConfig, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Pick up to ``n`` ``(key, reason)`` pairs following the documented mix, in a shuffled order."""
    if n <= 0:
        return []
    taken: set[str] = set(cand.exclude)
    out: list[tuple[str, str]] = []

    def take(keys, reason: str, k: int) -> int:
        got = 0
        for key in keys:
            if got >= k:
                break
            if key in taken:
                continue
            taken.add(key)
            out.append((key, reason))
            got += 1
        return got

    unlabeled = list(cand.unlabeled)
    has_model = cand.threshold is not None and cand.scores is not None and len(cand.scores) == len(unlabeled)

    def uncertain_stream():
        if has_model:
            scores = np.asarray(cand.scores, dtype=np.float64)
            dist = np.abs(scores - float(cand.threshold))
            dist[np.isnan(dist)] = np.inf  # unscored items are not "uncertain"; random/diverse reach them
            order = np.argsort(dist, kind="stable")
            return ((unlabeled[i], UNCERTAIN) for i in order if np.isfinite(dist[i]))
        unl = set(unlabeled)
        return ((k, DIVERSE) for k in cand.diverse_order if k in unl)

    def random_stream():
        perm = rng.permutation(len(unlabeled))
        return ((unlabeled[i], RANDOM) for i in perm)

    def agreement_stream():
        yield from ((k, DISAGREEMENT) for k in cand.disagreements)
        yield from ((k, REVIEW) for k in cand.review)
        perm = rng.permutation(len(cand.overlap))
        yield from ((cand.overlap[i], AGREEMENT) for i in perm)

    # the random share is drawn first, so within a batch it is uniform over every unlabeled item, not over
    # what the uncertainty share left behind
    streams = [random_stream(), uncertain_stream(), agreement_stream()]
    quotas = allocate(n, [cfg.random_share, cfg.uncertainty_share, cfg.agreement_share])

    def drain(stream, k: int) -> int:
        got = 0
        while got < k:  # check before pulling so no item is consumed and dropped
            nxt = next(stream, None)
            if nxt is None:
                break
            got += take([nxt[0]], nxt[1], 1)
        return got

    short = 0
    for stream, q in zip(streams, quotas):
        short += q - drain(stream, q)
    # a share that cannot be filled is filled from the others (uncertain first), so batches stay full
    for stream in (streams[1], streams[0], streams[2]):
        if short <= 0:
            break
        short -= drain(stream, short)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def kcenter_order(features: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Greedy k-center (farthest-point) order over L2-normalised ``features``: indices of ``k`` diverse rows."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        return []
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(x))
    rng = np.random.default_rng(seed)
    first = int(rng.integers(len(x)))
    order = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:
            break  # the rest are duplicates of chosen points
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return order
