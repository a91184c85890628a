"""How many replicas each pool of the graph wants, from its load: plain arithmetic, no Ray (actors/graph.py
drives the actors). Decoders follow the streams held; a model stage follows its queue (the items waiting in
its replicas or in their running batches), averaged over a look-back window so one burst does not add a
replica. Up at once, down only after the pool has wanted fewer for a whole delay, to the most it wanted in
that time (a dip does not shrink it, a lull does). The delay does not begin while a replica the pool asked for
is still starting: the load is judged with the capacity it was added for, so that a dip while a node boots
does not cancel the node's launch only to ask for it again (flapping)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

POOLS = ("decoder", "video_encoder", "language", "fusion", "speech")  # speech: when [speech] enabled


def decoders_wanted(streams: int, streams_per_replica: int) -> int:
    """Decoders for `streams` running or waiting for a decoder."""
    return math.ceil(streams / streams_per_replica)


def stage_wanted(queue: float, target_queue: float) -> int:
    """Replicas of a model stage whose replicas hold `queue` items in all (mean over the look-back)."""
    return math.ceil(queue / target_queue - 1e-9) if queue > 0 else 0


class QueueWindow:
    """A model pool's total queue, sampled every interval, averaged over the last `look_back_s`."""

    def __init__(self, look_back_s: float):
        self.look_back_s = look_back_s
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, queue: float) -> float:
        self.samples.append((now, queue))
        while self.samples and self.samples[0][0] < now - self.look_back_s:
            self.samples.popleft()
        return sum(q for _, q in self.samples) / len(self.samples)


@dataclass
class PoolPolicy:
    """A pool's target between `lo` and `hi`, starting at `start`."""

    name: str
    lo: int
    hi: int
    target: int
    downscale_delay_s: float
    _low_since: float | None = None
    _low_peak: int = 0  # the most the pool wanted since it began wanting fewer

    def decide(self, wanted: int, now: float, starting: bool = False) -> int:
        """The new target for a pool that wants `wanted` replicas now (`starting`: one of its replicas is
        still starting, which holds the target where it is)."""
        wanted = max(self.lo, min(self.hi, wanted))
        if starting:
            wanted = max(wanted, self.target)
        if wanted >= self.target:
            self._low_since = None
            self.target = wanted
            return self.target
        if self._low_since is None:
            self._low_since, self._low_peak = now, wanted
        self._low_peak = max(self._low_peak, wanted)
        if now - self._low_since >= self.downscale_delay_s:
            self.target, self._low_since = self._low_peak, None
        return self.target

    def gave_up(self, size: int) -> int:
        """A replica failed to start or never found a node: the target falls to the `size` the pool has (the
        next decision asks again if the load still wants more), so that a replica no node can hold is not
        asked for again and again once the load is gone."""
        self.target, self._low_since = max(self.lo, min(self.target, size)), None
        return self.target
