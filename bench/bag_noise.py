"""How noisy the narration is as a teacher of a tag slot: for training windows laid as `vbs train encoder` lays
them (1.5 s, one every 0.75 s), the words of the slot said in the lines within `context` seconds of the window
(the window's candidate words, what the slot head learns from), against the ground truth at the window's
midpoint. Reads only the sidecar .json files (their `segments` and `narration`); writes JSON.

    python -m bench.bag_noise --data models/demo/data/train --out bench/results/bag_noise.json

A diagnostic of the corpus, not part of any recipe: the share of windows whose candidates are all wrong is
the label noise no choice among candidates can undo, which is what the slot loss's `q` is for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import write_result
from videobert.subtitles import Cue, overlapping
from videobert.world import NOUNS, VERBS

SLOTS = {"verb": VERBS, "noun": NOUNS}


def bag_noise(data: str | Path, slot: str = "noun", contexts: tuple[float, ...] = (0.0, 0.5, 1.0),
              seconds: float = 1.5, stride: float = 0.75) -> dict:
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {sorted(SLOTS)}, not {slot!r}")
    words = set(SLOTS[slot])
    truths = [json.loads(p.read_text()) for p in sorted(Path(data).glob("*.json")) if p.name != "corpus.json"]
    truths = [t for t in truths if t.get("segments") and "narration" in t]
    if not truths:
        raise ValueError(f"{data}: no sidecar .json with segments and narration")
    out = {"data": str(data), "slot": slot, "videos": len(truths), "window_seconds": seconds, "stride": stride,
           "by_context": {}}
    for ctx in contexts:
        n = none = right = right_alone = only_wrong = candidates = 0
        for t in truths:
            cues = [Cue(line["t0"], line["t1"], line["text"]) for line in t["narration"]]
            start = 0.0
            while start + seconds <= t["duration"] + 1e-6:
                mid = start + seconds / 2
                seg = next((s for s in t["segments"] if s["t0"] <= mid < s["t1"]), t["segments"][-1])
                said = {w for c in overlapping(cues, start - ctx, start + seconds + ctx)  # the trainer's bag rule
                        for w in c.text.lower().split() if w in words}
                n += 1
                if not said:
                    none += 1
                elif seg[slot] in said:
                    right += 1
                    right_alone += len(said) == 1
                else:
                    only_wrong += 1
                candidates += len(said)
                start += stride
        said_any = n - none
        out["by_context"][str(ctx)] = {
            "windows": n, "no_candidate": round(none / n, 3), "right_among_candidates": round(right / n, 3),
            "right_alone": round(right_alone / n, 3), "only_wrong": round(only_wrong / n, 3),
            "only_wrong_of_those_with_candidates": round(only_wrong / max(said_any, 1), 3),
            "mean_candidates": round(candidates / max(said_any, 1), 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a directory of videos with sidecar ground-truth .json")
    ap.add_argument("--slot", choices=sorted(SLOTS), default="noun")
    ap.add_argument("--out", default="bench/results/bag_noise.json")
    a = ap.parse_args(argv)
    r = bag_noise(a.data, a.slot)
    write_result(a.out, r)
    for ctx, row in r["by_context"].items():
        print(f"context {ctx} s: {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
