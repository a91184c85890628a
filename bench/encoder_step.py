"""The video encoder's training step, timed side by side in one run: the default memory layout against
channels-last-3d, in float32 (run it with ONEDNN_MAX_CPU_ISA=AVX2 to see a CPU without bf16), with the top ops
of a torch.profiler trace; with `--variants`, also the step of cheaper networks in channels-last-3d, in
alternating rounds: each clip size of `--sizes` with the default network and with `early_time` off (the second
and third blocks spatial-only). Writes JSON.

    ONEDNN_MAX_CPU_ISA=AVX2 python -m bench.encoder_step --out bench/results/encoder_step.json
    python -m bench.encoder_step --variants --sizes 64,48"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from videobert.encoders import Conv3DEncoder


def _step_seconds(channels_last: bool, batch: int, steps: int, size: int = 64, early_time: bool = True) -> float:
    torch.manual_seed(0)
    model = Conv3DEncoder(early_time=early_time)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    clips = torch.randint(0, 255, (batch, 8, size, size, 3), dtype=torch.uint8)

    def step():
        model(clips).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):  # warm-up: oneDNN picks its kernels
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def _profile(batch: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    model = Conv3DEncoder()
    clips = torch.randint(0, 255, (batch, 8, 64, 64, 3), dtype=torch.uint8)
    model(clips).float().pow(2).mean().backward()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        model(clips).float().pow(2).mean().backward()
    rows = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:8]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", action="store_true", help="also time the clip sizes of --sizes, early_time on and off")
    ap.add_argument("--sizes", default="64,48", help="clip sizes for --variants (default 64,48)")
    ap.add_argument("--out", default="bench/results/encoder_step.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rounds = [{"default_s": round(_step_seconds(False, a.batch, a.steps), 3),
               "channels_last_s": round(_step_seconds(True, a.batch, a.steps), 3)} for _ in range(a.rounds)]
    result = {"batch": a.batch, "threads": a.threads, "rounds": rounds,
              "ratio": round(sum(r["channels_last_s"] for r in rounds) / sum(r["default_s"] for r in rounds), 3),
              "profile": _profile(a.batch)}
    if a.variants:
        sizes = [int(v) for v in a.sizes.split(",")]
        names = [(f"{size}px_{'3x3x3' if et else 'early_spatial'}", size, et) for size in sizes for et in (True, False)]
        variant_rounds = [{name: round(_step_seconds(True, a.batch, a.steps, size, et), 3) for name, size, et in names}
                          for _ in range(a.rounds)]
        base = sum(r[names[0][0]] for r in variant_rounds)
        result["variants"] = {"rounds": variant_rounds,
                              "ratio_to_" + names[0][0]: {n: round(sum(r[n] for r in variant_rounds) / base, 3)
                                                           for n, _, _ in names}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
