"""Training precision: bfloat16 autocast where the hardware runs it fast, float32 elsewhere.

"auto" picks bf16 on a CUDA device that supports it and on a CPU with bf16 instructions (AMX or AVX512-BF16,
read from /proc/cpuinfo), where oneDNN runs convolutions and matrix products in bf16 much faster than in
float32 (`python -m bench.train_precision` measures it); float32 everywhere else (an older CPU, or oneDNN capped
below bf16 with ONEDNN_MAX_CPU_ISA, emulates bf16, which is slower).
Weights, optimiser state and losses stay float32; only the forward pass's matrix work runs in bf16."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

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
