"""The video encoder's training step, timed side by side in one run: the default memory layout against
channels-last-3d, in float32 (run it with ONEDNN_MAX_CPU_ISA=AVX2 to see a CPU without bf16), with the top ops
of a torch.profiler trace; with `--variants`, also the step of cheaper networks in channels-last-3d, in
alternating rounds: each clip size of `--sizes` with the default network and with `early_time` off (the second
and third blocks spatial-only); with `--malloc`, also the step in fresh processes under glibc's malloc as it
comes and as `vbs` sets it up (schemas.config.MALLOC_TUNABLES), alternating, with the page faults and system
time of each step. Writes JSON.

    ONEDNN_MAX_CPU_ISA=AVX2 python -m bench.encoder_step --out bench/results/encoder_step.json
    python -m bench.encoder_step --variants --sizes 64,48
    python -m bench.encoder_step --malloc --rounds 3"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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


def _child_step(batch: int, steps: int, early_time: bool) -> dict:
    """One process's step (run by --malloc in a fresh process): seconds, minor page faults and system seconds a step."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    seconds = _step_seconds(True, batch, steps, early_time=early_time)
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = steps + 2  # _step_seconds runs 2 warm-up steps first; faults and system time counted over all of them
    return {"step_s": round(seconds, 3), "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) // n,
            "system_s_per_step": round((after.ru_stime - before.ru_stime) / n, 3),
            "wall_s": round(time.perf_counter() - t, 1)}


def _malloc_rounds(batch: int, steps: int, rounds: int, threads: int, early_time: bool) -> dict:
    """The step under glibc's malloc as it comes against as `vbs` sets it up, each in a fresh process (glibc reads
    its tunables at start), alternating."""
    from schemas.config import MALLOC_ENV, MALLOC_TUNABLES, tuned_malloc_env

    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MALLOC_ENV)}
    setups = {"system": base, "tuned": tuned_malloc_env(base, libc="glibc")}  # the environment `vbs` restarts in
    out: dict[str, list] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, env in setups.items():
            r = subprocess.run([sys.executable, "-m", "bench.encoder_step", "--child-step", "--batch", str(batch),
                                "--steps", str(steps), "--threads", str(threads), "--early-time", str(int(early_time))],
                               env=env, capture_output=True, text=True, check=True)
            out[name].append(json.loads(r.stdout.splitlines()[-1]))
    total = {name: sum(r["step_s"] for r in runs) for name, runs in out.items()}
    return {"tunables": ":".join(MALLOC_TUNABLES), "rounds": out, "ratio_tuned_to_system":
            round(total["tuned"] / total["system"], 3)}


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
    ap.add_argument("--malloc", action="store_true", help="also time the step under glibc's malloc as it comes "
                    "and as vbs sets it up, in fresh processes")
    ap.add_argument("--early-time", type=int, default=1, choices=(0, 1), help="the network --malloc times")
    ap.add_argument("--child-step", action="store_true", help=argparse.SUPPRESS)  # one --malloc process
    ap.add_argument("--out", default="bench/results/encoder_step.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.child_step:
        print(json.dumps(_child_step(a.batch, a.steps, bool(a.early_time))))
        return
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
    if a.malloc:
        result["malloc"] = _malloc_rounds(a.batch, a.steps, a.rounds, a.threads, bool(a.early_time))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
