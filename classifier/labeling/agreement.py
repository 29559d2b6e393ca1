"""Inter-annotator agreement on items decided by several annotators: Cohen's kappa, pairwise and overall."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from classifier.labeling.store import LABEL_VALUE


def pairwise_kappa(decisions: dict[str, dict[str, str]], min_items: int = 2) -> list[dict]:
    """Cohen's kappa for every annotator pair over the items both decided (skips left out).

    ``decisions`` is ``{key: {annotator: label}}`` as :meth:`LabelStore.decisions_by_key` returns. Pairs with
    fewer than ``min_items`` shared items are reported with ``kappa=None``.
    """
    by_pair: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for by_ann in decisions.values():
        votes = {a: LABEL_VALUE[v] for a, v in by_ann.items() if v in LABEL_VALUE}
        for a, b in combinations(sorted(votes), 2):
            ya, yb = by_pair.setdefault((a, b), ([], []))
            ya.append(votes[a])
            yb.append(votes[b])
    out = []
    for (a, b), (ya, yb) in sorted(by_pair.items()):
        n = len(ya)
        agree = float(np.mean(np.equal(ya, yb))) if n else None
        kappa = None
        if n >= min_items:
            if len(set(ya) | set(yb)) == 1:
                kappa = 1.0  # both always chose the same single class: perfect agreement, kappa is 0/0
            else:
                # imported here: scikit-learn takes seconds to import, and most sessions start without overlap
                from sklearn.metrics import cohen_kappa_score

                kappa = float(cohen_kappa_score(ya, yb))
        out.append({"annotators": [a, b], "n_items": n, "observed_agreement": agree, "kappa": kappa})
    return out


def agreement_summary(decisions: dict[str, dict[str, str]]) -> dict:
    """Pairwise kappas plus an item-weighted mean kappa and the number of items decided by 2+ annotators."""
    pairs = pairwise_kappa(decisions)
    scored = [p for p in pairs if p["kappa"] is not None]
    weight = sum(p["n_items"] for p in scored)
    mean = sum(p["kappa"] * p["n_items"] for p in scored) / weight if weight else None
    multi = sum(1 for by_ann in decisions.values() if sum(v in LABEL_VALUE for v in by_ann.values()) >= 2)
    disagreements = sum(1 for by_ann in decisions.values()
                        if len({v for v in by_ann.values() if v in LABEL_VALUE}) == 2)
    return {"pairs": pairs, "mean_kappa": mean, "items_multi": multi, "items_disagreed": disagreements}
