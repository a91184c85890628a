"""Which torch device a piece of work runs on: the one place that decides it."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """`None` or "auto": the first CUDA device this process can see (Ray sets CUDA_VISIBLE_DEVICES for an
    actor it gave GPUs), else the CPU. Anything else is taken as asked ("cpu", "cuda", "cuda:1"); asking
    for CUDA where there is none is a clear error rather than a crash later."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {requested!r} (use auto, cpu or cuda)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but this process sees no CUDA device")
    return device


def stage_device(requested: str, gpus: float) -> torch.device:
    """A model stage's device: with `gpus` > 0 from Ray, as `requested` ("auto": the CUDA device Ray gave it,
    which CUDA_VISIBLE_DEVICES makes cuda:0; the CPU, with a warning, where Ray has the GPU resource but this
    process sees no CUDA, as on a node whose GPUs are only declared); with none, the CPU unless a device was
    named explicitly (a stage Ray gave no GPU must not take one)."""
    if gpus > 0 and str(requested) == "auto" and not torch.cuda.is_available():
        from schemas.config import visible_gpus

        log.warning("this stage was given %.2f GPU by Ray (CUDA_VISIBLE_DEVICES=%r) but sees no CUDA device: it runs "
                    "on the CPU", gpus, visible_gpus())
        return torch.device("cpu")
    return pick_device(requested if gpus > 0 or requested != "auto" else "cpu")
