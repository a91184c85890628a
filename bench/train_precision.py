"""Training step time in float32 and in bf16 autocast, side by side: the video encoder (a batch of 96 clips,
8 x 64 x 64, augmented, through its heads and losses, as `vbs train encoder` runs it) and VideoBERT (32 masked
sequences of narration and visual words, as `vbs train videobert` runs it). The two precisions alternate round
by round, so a busy machine slows both alike; the ratio is the figure to read. Writes JSON.

    python -m bench.train_precision --out bench/results/train_precision.json [--rounds 5 --steps 5]"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from bench import write_result
from videobert.device import pick_device
from videobert.eta import CorpusRecipe, encoder_probe, videobert_probe
from videobert.precision import cpu_has_fast_bf16
from videobert.pretrain import PretrainConfig
from videobert.train_encoder import EncoderTrainConfig


def narration(videos: int = 20) -> list[str]:
    """The narration lines of a quick corpus's first videos (planned, not rendered): what the batches pair."""
    return sorted({n.text for p in CorpusRecipe(0, videos, 10, 30).plans() for n in p.narration})


def encoder_step(device: torch.device, precision: str, clips: int = 96):
    """The encoder's training step as `vbs train encoder` runs it (videobert.eta.encoder_probe)."""
    step, _ = encoder_probe(EncoderTrainConfig(batch_size=clips), narration(), device, clips)
    return lambda: step(precision)


def videobert_step(device: torch.device, precision: str, sequences: int = 32):
    """VideoBERT's training step as `vbs train videobert` runs it (videobert.eta.videobert_probe)."""
    step, _ = videobert_probe(PretrainConfig(batch_size=sequences), 144, narration(), device, sequences)
    return lambda: step(precision)


def measure(make, device: torch.device, rounds: int, steps: int, size: int, warmup: int = 2) -> dict:
    runners = {p: make(device, p, size) for p in ("fp32", "bf16")}
    for run in runners.values():  # warm-up: first calls pick kernels and allocate
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {p: [] for p in runners}
    for _ in range(rounds):
        for p, run in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[p].append((time.perf_counter() - t) / steps)
    med = {p: statistics.median(v) for p, v in times.items()}
    return {"seconds_per_step": {p: round(v, 4) for p, v in med.items()},
            "all_rounds": {p: [round(x, 4) for x in v] for p, v in times.items()},
            "bf16_speedup": round(med["fp32"] / med["bf16"], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each precision, alternating (default 5)")
    ap.add_argument("--steps", type=int, default=5, help="training steps per round (default 5)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--clips", type=int, default=96, help="clips in the encoder's batch (default 96, the trainer's)")
    ap.add_argument("--sequences", type=int, default=32,
                    help="sequences in VideoBERT's batch (default 32, the trainer's)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each precision first (default 2)")
    a = ap.parse_args(argv)
    device = pick_device(a.device)
    if device.type == "cpu" and not cpu_has_fast_bf16():
        print("note: this CPU has no bf16 instructions; bf16 is emulated here and `auto` would pick fp32")
    result = {"device": str(device), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "fast_bf16_cpu": cpu_has_fast_bf16(), "rounds": a.rounds, "steps_per_round": a.steps,
              "clips": a.clips, "sequences": a.sequences,
              "encoder": measure(encoder_step, device, a.rounds, a.steps, a.clips, a.warmup),
              "videobert": measure(videobert_step, device, a.rounds, a.steps, a.sequences, a.warmup)}
    write_result(a.out, result)
    for name in ("encoder", "videobert"):
        r = result[name]
        print(f"{name:10s} fp32 {r['seconds_per_step']['fp32']:.3f} s/step  bf16 {r['seconds_per_step']['bf16']:.3f} "
              f"s/step  bf16 speed-up {r['bf16_speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
