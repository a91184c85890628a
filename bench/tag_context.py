"""Does the visual context of earlier clips help per-clip tags? Tags every held-out video of a model clip by
clip (`Tagger.tag_video`, as `vbs tag` and the live graph) with 0, 1, 2 ... earlier clips as context, and scores
top-1 verb and noun of the clips that lie inside one ground-truth segment (the graph's quality check scores
the same way), averaged over videos. Writes JSON.

    python -m bench.tag_context --model models/demo --out bench/results/tag_context.json

Needs sidecar .json ground truth beside the videos (MODEL/data/heldout by default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import write_result
from schemas.state import TagResult
from videobert.tagging import Tagger


def clip_accuracy(rows: list[TagResult], segments: list[dict]) -> tuple[float, float, int]:
    """Top-1 verb and noun accuracy over the rows (clips) that lie inside one segment, and how many did."""
    hv = hn = n = 0
    for r in rows:
        seg = [s for s in segments if s["t0"] <= r.t0 and r.t1 <= s["t1"]]
        if seg:
            n += 1
            hv += r.top("verb") == seg[0]["verb"]
            hn += r.top("noun") == seg[0]["noun"]
    return hv / max(n, 1), hn / max(n, 1), n


def tag_context(model: str | Path, data: str | Path | None = None, contexts: tuple[int, ...] = (0, 1, 2),
                device: str = "cpu") -> dict:
    model = Path(model)
    data = Path(data) if data else model / "data" / "heldout"
    videos = [v for v in sorted(data.glob("*.mp4")) + sorted(data.glob("*.mkv")) if v.with_suffix(".json").is_file()]
    if not videos:
        raise ValueError(f"{data}: no videos with a sidecar .json")
    out = {"model": str(model), "data": str(data), "videos": len(videos), "by_context": {}}
    tagger = Tagger(model, device=device)
    for k in contexts:
        tagger.context = k
        scores = [clip_accuracy(tagger.tag_video(v), json.loads(v.with_suffix(".json").read_text())["segments"])
                  for v in videos]
        out["by_context"][str(k)] = {"verb_top1": round(sum(s[0] for s in scores) / len(scores), 4),
                                     "noun_top1": round(sum(s[1] for s in scores) / len(scores), 4),
                                     "clips": sum(s[2] for s in scores)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--data", default=None, help="labelled videos (default MODEL/data/heldout)")
    ap.add_argument("--contexts", default="0,1,2", help="earlier clips to try, comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench/results/tag_context.json")
    a = ap.parse_args(argv)
    r = tag_context(a.model, a.data, tuple(int(k) for k in a.contexts.split(",")), a.device)
    write_result(a.out, r)
    for k, row in r["by_context"].items():
        print(f"context {k}: verb {row['verb_top1']:.3f}  noun {row['noun_top1']:.3f}  ({row['clips']} clips)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
