"""The order of a pipelined build: which step each partition is at, and what may run next.

A build's partitions go through the same steps in key order: *committed* (every unit staged and merged), *decided*
(dedup decisions final), *scored* (when a classifier is given), *final* (decisions, scores and split applied),
*planned* (its rows packed into shards) and, with the shards that hold them, *written*. The steps overlap: shards
of the first partitions are written while later ones still download.

What makes that safe is that every decision about a row depends only on rows with smaller keys:

- exact duplicates keep the smallest key of their sha256, near duplicates are judged against kept rows with
  smaller keys (``curate/dedup.py``), so the decisions over the first ``n`` partitions of the key order are the
  same whether the rest of the list has been downloaded or not;
- the shard planner packs rows greedily in key order (``curate/assemble.ShardPlanner``), so the shards it closes
  over the first ``n`` partitions are the shards of the whole run.

Dedup therefore runs in *waves*, each over the longest committed prefix of partitions, and the shard plan moves
forward one run of final partitions at a time; the kept set and the shards are those of a build that waits for
every download, and a rerun after a kill (which recomputes the waves from whatever is committed) gives the same.
A wave reads its whole prefix, so waves are spaced geometrically (:data:`WAVE_GROWTH`): all waves together read
at most ``1 + 1 / WAVE_GROWTH`` times the run's metadata.

:class:`BuildFlow` is only the bookkeeping: each event (a commit, a finished wave, score, finalize or plan step)
returns the :class:`Step` values that may start now, and the driver (``pipelines/build_bbst.py``) runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WAVE_GROWTH = 0.25  # a new dedup wave once the committed prefix has grown by this fraction of the decided rows


@dataclass(frozen=True)
class Step:
    """One piece of work the driver may start: ``kind`` is ``wave`` (dedup over the first ``count`` partitions),
    ``score`` or ``finalize`` (``partition``), ``plan`` (``partitions``, ``last`` when they end the run) or
    ``write`` (``spec``, a planned shard)."""

    kind: str
    partition: int | None = None
    count: int = 0
    partitions: tuple[int, ...] = ()
    last: bool = False
    spec: Any = None


class BuildFlow:
    """Bookkeeping of a pipelined build over ``partitions`` (``{partition: rows}``).

    ``committed``: partitions already staged (a rerun); ``decided``: whether the dedup decisions of every
    partition are already made (a rerun after the last wave, or a re-score, which does not deduplicate);
    ``to_score``: partitions the classifier still has to score (None: no classifier); ``hold``: keep scored
    partitions from being finalized until :meth:`release` (the semantic pass compares every embedding first).
    """

    def __init__(self, partitions: dict[int, int], committed: set[int] | None = None, decided: bool = False,
                 to_score: set[int] | None = None, hold: bool = False, growth: float = WAVE_GROWTH) -> None:
        self.parts = sorted(partitions)
        self.rows = [0]
        for p in self.parts:
            self.rows.append(self.rows[-1] + partitions[p])
        self.committed = set(committed or ())
        self.decided = len(self.parts) if decided else 0  # parts[:decided] have final dedup decisions
        self.to_score = set(to_score) if to_score is not None else set()
        self.hold, self.held = hold, []
        self.growth = growth
        self.wave: int | None = None  # prefix length of the wave in flight
        self.final: set[int] = set()
        self.planned = 0  # parts[:planned] are in the plan
        self.planning = False
        self.plan_done = False  # the last plan step has been handed out
        self.finished = False  # ... and has returned
        self.waves = 0

    # ------------------------------------------------------------------------------------------------ events
    def start(self) -> list[Step]:
        """Steps that can start before any event: decided partitions go on, the committed prefix gets a wave."""
        steps = [s for p in self.parts[:self.decided] for s in self._decided(p)]
        return steps + self._maybe_wave() + self._maybe_plan()

    def on_commit(self, p: int) -> list[Step]:
        self.committed.add(p)
        return self._maybe_wave()

    def on_wave(self, count: int) -> list[Step]:
        """The wave over ``parts[:count]`` has written its decisions."""
        if count != self.wave:
            raise RuntimeError(f"wave over {count} partitions finished, {self.wave} was running")
        self.wave, self.waves = None, self.waves + 1
        newly, self.decided = self.parts[self.decided:count], count
        return [s for p in newly for s in self._decided(p)] + self._maybe_wave()

    def on_scored(self, p: int) -> list[Step]:
        self.to_score.discard(p)
        if self.hold:
            self.held.append(p)
            return []
        return [Step("finalize", partition=p)]

    def release(self) -> list[Step]:
        """Finalize what :attr:`hold` kept back (every partition, once all are scored)."""
        self.hold, held, self.held = False, sorted(self.held), []
        return [Step("finalize", partition=p) for p in held]

    def on_final(self, p: int) -> list[Step]:
        self.final.add(p)
        return self._maybe_plan()

    def on_planned(self, specs: list) -> list[Step]:
        """The plan step in flight ended; ``specs`` are the shards it closed."""
        self.planning, self.finished = False, self.plan_done
        return [Step("write", spec=s) for s in specs] + self._maybe_plan()

    # ------------------------------------------------------------------------------------------------ state
    @property
    def all_decided(self) -> bool:
        return self.decided == len(self.parts)

    @property
    def done(self) -> bool:
        """Every partition is planned and the last shards are closed (their writes may still run)."""
        return self.finished

    def prefix(self) -> int:
        """How many partitions, from the first in key order, are committed."""
        n = self.decided
        while n < len(self.parts) and self.parts[n] in self.committed:
            n += 1
        return n

    # ------------------------------------------------------------------------------------------------ rules
    def _decided(self, p: int) -> list[Step]:
        if p in self.to_score:
            return [Step("score", partition=p)]
        return self.on_scored(p)

    def _maybe_wave(self) -> list[Step]:
        if self.wave is not None or self.all_decided:
            return []
        n = self.prefix()
        if n <= self.decided:
            return []
        grown = self.rows[n] - self.rows[self.decided]
        if n < len(self.parts) and grown < self.growth * self.rows[self.decided]:
            return []  # wait for a larger prefix: waves read everything before them
        self.wave = n
        return [Step("wave", count=n)]

    def _maybe_plan(self) -> list[Step]:
        if self.planning or self.plan_done:
            return []
        batch = []
        while self.planned + len(batch) < len(self.parts) and self.parts[self.planned + len(batch)] in self.final:
            batch.append(self.parts[self.planned + len(batch)])
        last = self.planned + len(batch) == len(self.parts)
        if not batch and not last:
            return []
        self.planned += len(batch)
        self.planning, self.plan_done = True, last
        return [Step("plan", partitions=tuple(batch), last=last)]
