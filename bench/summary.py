"""Stream summaries, measured (videobert.summary, GET /v1/streams/{id}/summary): each held-out video is tagged as
`vbs tag` tags it (the graph's tags of a file are the same), summarised, and compared with its ground-truth
segments (the sidecar .json):

  boundary F1     predicted segment boundaries against the true ones, a hit within +/- --tolerance seconds
                  (0.75 s: half a clip), each true boundary matched once
  label accuracy  of the predicted segments, the share (by duration) whose verb and noun are those of the true
                  segment at each instant; and of the true segments, the share whose midpoint falls in a predicted
                  segment with their verb and noun
  chance          the same figures for as many boundaries placed at random and labels drawn at random

for each --min-clips (the flicker rule). Writes JSON.

    python -m bench.summary --model models/demo --out bench/results/summary.json"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from pathlib import Path

from bench import cpu_model, write_result
from videobert.reader import list_videos, load_truth
from videobert.summary import boundary_f1, summarise


def _label_at(segments, t: float) -> tuple[str, str] | None:
    for s in segments:
        if s.t0 <= t < s.t1:
            return (s.labels["verb"], s.labels["noun"]) if hasattr(s, "labels") else (s.verb, s.noun)
    return None


def score_video(segments, truth, tolerance: float) -> dict:
    """Boundary F1 and label accuracy of one video's predicted segments against its true ones."""
    end = min(segments[-1].t1, truth[-1].t1) if segments else 0.0
    predicted = [s.t0 for s in segments[1:] if s.t0 < end]
    true = [s.t0 for s in truth[1:] if s.t0 < end]
    f1 = boundary_f1(predicted, true, tolerance)
    step, right, total = 0.05, 0.0, 0.0  # by duration, on a 50 ms grid
    t = 0.0
    while t < end:
        p, g = _label_at(segments, t), _label_at(truth, t)
        if g is not None and p is not None:
            total += step
            right += step * (p == g)
        t += step
    mids = [((s.t0 + s.t1) / 2, (s.verb, s.noun)) for s in truth if (s.t0 + s.t1) / 2 < end]
    found = sum(_label_at(segments, m) == want for m, want in mids)
    return {"f1": f1, "duration_right": right, "duration": total, "true_found": found, "true_segments": len(mids)}


def pooled(rows: list[dict]) -> dict:
    hits = sum(r["f1"]["hits"] for r in rows)
    pred = sum(r["f1"]["predicted"] for r in rows)
    true = sum(r["f1"]["true"] for r in rows)
    p, rc = (hits / pred if pred else 0.0), (hits / true if true else 0.0)
    return {"boundary_precision": round(p, 4), "boundary_recall": round(rc, 4),
            "boundary_f1": round(2 * p * rc / (p + rc), 4) if p + rc else 0.0,
            "label_accuracy_by_duration": round(sum(r["duration_right"] for r in rows)
                                                / max(1e-9, sum(r["duration"] for r in rows)), 4),
            "true_segments_found": round(sum(r["true_found"] for r in rows) / max(1, sum(r["true_segments"]
                                                                                         for r in rows)), 4),
            "predicted_segments": pred + len(rows), "true_segments": true + len(rows)}


class _Seg:
    def __init__(self, t0, t1, labels):
        self.t0, self.t1, self.labels = t0, t1, labels


def chance(segments_per_video: list[list], truths: list, verbs: list[str], nouns: list[str], tolerance: float,
           seed: int = 0) -> dict:
    """As many boundaries as predicted, placed uniformly at random, and labels drawn uniformly."""
    rng = random.Random(seed)
    rows = []
    for segs, truth in zip(segments_per_video, truths):
        if not segs:
            continue
        end = segs[-1].t1
        cuts = sorted(rng.uniform(0, end) for _ in range(len(segs) - 1))
        edges = [0.0, *cuts, end]
        fake = [_Seg(a, b, {"verb": rng.choice(verbs), "noun": rng.choice(nouns)}) for a, b in zip(edges, edges[1:])]
        rows.append(score_video(fake, truth, tolerance))
    return pooled(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/demo", help="a model directory (default models/demo)")
    p.add_argument("--data", default=None, help="held-out videos with sidecar .json (default: MODEL/data/heldout)")
    p.add_argument("--min-clips", default="1,2,3", help="flicker rules to compare (default 1,2,3)")
    p.add_argument("--tolerance", type=float, default=0.75, help="boundary tolerance in seconds (default 0.75)")
    p.add_argument("--videos", type=int, default=None, help="at most this many videos")
    p.add_argument("--out", default="bench/results/summary.json")
    a = p.parse_args(argv)
    from videobert import world
    from videobert.tagging import Tagger

    model = Path(a.model)
    data = Path(a.data) if a.data else model / "data" / "heldout"
    videos = [v for v in list_videos(data) if load_truth(v) is not None][:a.videos]
    if not videos:
        raise SystemExit(f"{data}: no videos with a ground-truth .json")
    tagger = Tagger(model, device="cpu")
    tags = {v: tagger.tag_video(v) for v in videos}
    truths = [load_truth(v).segments for v in videos]
    result: dict = {"cpu": cpu_model(), "cpus": os.cpu_count(), "model": str(model), "data": str(data),
                    "videos": len(videos), "tolerance_s": a.tolerance, "by_min_clips": {}}
    for k in [int(x) for x in a.min_clips.split(",")]:
        segs = [summarise(tags[v], min_clips=k) for v in videos]
        rows = [score_video(s, t, a.tolerance) for s, t in zip(segs, truths)]
        result["by_min_clips"][str(k)] = {"summary": pooled(rows),
                                          "chance": chance(segs, truths, list(world.VERBS), list(world.NOUNS),
                                                           a.tolerance),
                                          "segments_per_video": round(statistics.mean(len(s) for s in segs), 2)}
        print(f"min_clips {k}: {json.dumps(result['by_min_clips'][str(k)])}", flush=True)
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
