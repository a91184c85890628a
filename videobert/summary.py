"""A stream's summary, the paper's video summarisation read off the tags: consecutive clips with the same top labels
merge into segments, each told as the filled template ("now let me show you how to shrink the star").

Plain functions over TagResults (no Redis, no Ray): GET /v1/streams/{id}/summary, `vbs summary` and bench.summary
all call `summarise`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from schemas.state import TagResult
from videobert.labels import DEFAULT_TEMPLATE

MASK = "[MASK]"


@dataclass(frozen=True)
class Segment:
    t0: float  # stream seconds
    t1: float
    labels: dict[str, str]  # slot -> its label over the segment
    score: float  # the mean, over its clips and slots, of each clip's score for the segment's label (0-1)
    clips: int
    subtitles: list[str]  # the distinct subtitle lines of its clips, in order
    sentence: str  # the template filled with its labels

    def to_dict(self) -> dict:
        return asdict(self)


def fill(template: str, labels: dict[str, str]) -> str:
    """The template with its [MASK]s replaced by the labels, in slot order (one [MASK] per slot)."""
    words = iter(labels.values())
    return re.sub(re.escape(MASK), lambda _: next(words, MASK), template)


def _score(tag: TagResult, labels: dict[str, str]) -> float:
    """A clip's mean score, over slots, for the given labels."""
    got = [next((r.score for r in tag.labels.get(slot, ()) if r.label == label), 0.0) for slot, label in labels.items()]
    return sum(got) / len(got) if got else 0.0


def summarise(tags: Iterable[TagResult], template: str | None = None, min_clips: int = 1,
              max_gap_s: float = 1.5) -> list[Segment]:
    """Segments of consecutive clips (in stream order) with the same top label in every slot. A run of fewer than
    `min_clips` clips is a flicker: it joins the segment before it (the one after, at the start). A gap of more
    than `max_gap_s` between clips (a live stream away) always ends a segment."""
    if min_clips < 1:
        raise ValueError(f"min_clips is a number of clips, >= 1, not {min_clips}")
    runs: list[list[TagResult]] = []
    for t in sorted(tags, key=lambda t: t.t0):
        top = {slot: ranked[0].label for slot, ranked in t.labels.items() if ranked}
        last = runs[-1] if runs else None
        if last and t.t0 - last[-1].t1 <= max_gap_s and _top(last[0]) == top:
            last.append(t)
        else:
            runs.append([t])
    # (labels, clips) per segment; flickers join a neighbour across no gap
    merged: list[tuple[dict[str, str], list[TagResult]]] = []
    for run in runs:
        labels = _top(run[0])
        prev = merged[-1] if merged else None
        touching = prev is not None and run[0].t0 - prev[1][-1].t1 <= max_gap_s
        if touching and (len(run) < min_clips or prev[0] == labels):
            prev[1].extend(run)
        else:
            merged.append((labels, list(run)))
    if len(merged) > 1 and len(merged[0][1]) < min_clips and merged[1][1][0].t0 - merged[0][1][-1].t1 <= max_gap_s:
        first = merged.pop(0)
        merged[0] = (merged[0][0], first[1] + merged[0][1])
    template = template or DEFAULT_TEMPLATE
    out = []
    for labels, clips in merged:
        subtitles = list(dict.fromkeys(" ".join(c.subtitle.split()) for c in clips if c.subtitle.strip()))
        out.append(Segment(t0=clips[0].t0, t1=clips[-1].t1, labels=labels,
                           score=round(sum(_score(c, labels) for c in clips) / len(clips), 4), clips=len(clips),
                           subtitles=subtitles, sentence=fill(template, labels)))
    return out


def _top(t: TagResult) -> dict[str, str]:
    return {slot: ranked[0].label for slot, ranked in t.labels.items() if ranked}


def boundary_f1(predicted: list[float], truth: list[float], tolerance_s: float = 0.75) -> dict:
    """Precision, recall and F1 of predicted segment boundaries (times between segments) against the true ones: a
    prediction within `tolerance_s` of a true boundary not matched yet is a hit (greedy, nearest first)."""
    pairs = sorted((abs(p - t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)
                   if abs(p - t) <= tolerance_s)
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    hits = len(used_p)
    precision = hits / len(predicted) if predicted else (1.0 if not truth else 0.0)
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "hits": hits, "predicted": len(predicted),
            "true": len(truth)}
