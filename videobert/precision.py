"""Training precision: bfloat16 autocast where the hardware runs it fast, float32 elsewhere.

"auto" picks bf16 on a CUDA device that supports it and on a CPU with bf16 instructions (AMX or AVX512-BF16,
read from /proc/cpuinfo), where oneDNN runs convolutions and matrix products in bf16 much faster than in
float32 (`python -m bench.train_precision` measures it); float32 everywhere else (an older CPU, or oneDNN capped
below bf16 with ONEDNN_MAX_CPU_ISA, emulates bf16, which is slower).
The flag does not always tell: on an Intel Xeon with AVX512-BF16 but no AMX, VideoBERT's training step took
1.48x as long in bf16 as in float32 (docs/MEASURED.md). So a trainer asked for "auto" on such a CPU measures:
its first steps alternate bf16 and float32 (`PrecisionTrial`) and the rest run in the faster one.
Weights, optimiser state and losses stay float32; only the forward pass's matrix work runs in bf16."""

from __future__ import annotations

import contextlib
import logging
import statistics
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")


# oneDNN's instruction sets with native bf16 (its ONEDNN_MAX_CPU_ISA names); a cap below them emulates bf16
BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
             "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL"}


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 instructions (Linux: the amx_bf16 or avx512_bf16 flag) and oneDNN may use
    them (an ONEDNN_MAX_CPU_ISA cap below them, say AVX2, makes bf16 emulated and slow)."""
    from schemas.config import onednn_isa_cap

    cap = onednn_isa_cap()
    if cap is not None and cap.upper() not in BF16_ISAS:
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve(precision: str, device: torch.device | str) -> str:
    """"auto", "bf16" or "fp32" -> "bf16" or "fp32" for this device. A clear ValueError for anything else,
    or for bf16 asked of a CUDA device without it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    device = torch.device(device)
    if device.type == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_fast_bf16() if precision == "auto" else True
    else:
        supported = False
    if precision == "auto":
        return "bf16" if supported else "fp32"
    if precision == "bf16" and not supported:
        raise ValueError(f"precision 'bf16' is not supported on {device}")
    return precision


def autocast(device: torch.device | str, precision: str):
    """A context for the forward pass: bf16 autocast when `precision` resolves to bf16, else nothing."""
    device = torch.device(device)
    if resolve(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PrecisionTrial:
    """The precision of each step of one training run. "auto" on a CPU whose flags promise fast bf16 is decided
    by measurement on the run's own first steps (real steps that train: nothing is thrown away): `warmup` untimed
    steps (one bf16, one float32: first calls pick kernels and allocate), then `timed` steps alternating the two,
    then the rest in bf16 unless its median step took `margin` times float32's or longer. The margin keeps the
    choice from flipping with a busy machine's noise where the two are close (bf16 1.11x faster for the encoder
    on a Xeon without AMX), which would make two builds of one seed differ; where bf16 pays (1.7-2x on an AMD
    EPYC with AVX512-BF16) or costs (VideoBERT, 0.67x, on that Xeon) the choice is clear. Anything else (a fixed
    precision, CUDA, a CPU without bf16) is fixed from the start.

    Use: `with autocast(device, trial.current()): ...` for a step's forward pass, then `trial.record(seconds)`
    with the step's time, forward, backward and optimiser together."""

    def __init__(self, precision: str, device: torch.device | str, name: str = "training",
                 warmup: int = 2, timed: int = 6, margin: float = 1.2):
        device = torch.device(device)
        resolved = resolve(precision, device)  # a bad setting fails here
        trying = precision == "auto" and resolved == "bf16" and device.type == "cpu"
        self.name, self.warmup, self.timed, self.margin = name, warmup, timed, margin
        self.chosen: str | None = None if trying else resolved
        self.times: dict[str, list[float]] = {"bf16": [], "fp32": []}
        self._steps = 0

    def current(self) -> str:
        """The precision of the next step: "bf16" or "fp32"."""
        return self.chosen or ("bf16", "fp32")[self._steps % 2]

    def record(self, seconds: float) -> None:
        """The step just run took `seconds`."""
        if self.chosen is not None:
            return
        if self._steps >= self.warmup:
            self.times[self.current()].append(seconds)
        self._steps += 1
        if self._steps >= self.warmup + self.timed:
            bf16, fp32 = (statistics.median(self.times[p]) for p in ("bf16", "fp32"))
            self.chosen = "fp32" if bf16 >= self.margin * fp32 else "bf16"
            log.info("%s: a step took %.3f s in bf16 and %.3f s in float32 (medians of %d): the rest in %s",
                     self.name, bf16, fp32, len(self.times["bf16"]), self.chosen)

    def summary(self) -> dict:
        """What a training summary records: the precision the run's steps ran in ("mixed" for a run too short to
        finish its trial: its steps alternated) and, when it measured, the medians."""
        if self.chosen is not None:
            ran = self.chosen
        elif self._steps <= 1:  # none, or only the trial's first, which runs in bf16
            ran = "bf16"
        else:
            ran = "mixed"
        out: dict = {"precision": ran}
        if any(self.times.values()):
            out["precision_trial"] = {p: round(statistics.median(v), 4) for p, v in self.times.items() if v}
        return out
