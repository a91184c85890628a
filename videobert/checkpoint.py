"""The layout of a model directory and strict loading of the weights in it.

A model directory (what `vbs train demo` builds and every stage loads) holds three checkpoints:

    encoder/    encoder.json + encoder.safetensors        the video encoder (videobert.encoders)
    vocab/      kmeans.json + kmeans.safetensors          the visual words (videobert.kmeans)
    videobert/  config.json + model.safetensors           the fusion model (videobert.model)

Weights load strictly: a checkpoint whose tensors do not match the network it describes is an error that
names the keys, never a model that runs with some weights left at random."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass(frozen=True)
class ModelPaths:
    encoder: Path
    vocab: Path
    videobert: Path

    @classmethod
    def of(cls, model_dir: str | Path) -> "ModelPaths":
        """The three checkpoints of a model directory; FileNotFoundError naming what is missing."""
        d = Path(model_dir)
        paths = cls(d / "encoder", d / "vocab", d / "videobert")
        missing = [p.name for p in (paths.encoder, paths.vocab, paths.videobert) if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"{d} is not a model directory: missing {', '.join(missing)} "
                                    f"(build one with `vbs train demo --out {d}`)")
        return paths

    def max_text_tokens(self) -> int:
        """How many WordPiece tokens of a subtitle line VideoBERT was pretrained to read (longer lines are cut
        there, in the graph's language stage and in `vbs tag` alike)."""
        from videobert.text import MAX_TEXT_TOKENS

        meta = json.loads((self.videobert / "config.json").read_text())
        return int(meta.get("pretrain", {}).get("max_text_tokens", MAX_TEXT_TOKENS))


def load_strict(module: nn.Module, state: dict, source: str | Path) -> None:
    """`module.load_state_dict(state)`, with a ValueError that names the missing and unexpected keys (and
    the tensors whose shapes differ) when the checkpoint at `source` does not fit the module."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {what}: {shown}")
        raise ValueError(f"{source} does not fit the network its config describes ({'; '.join(parts)})")
    module.load_state_dict(state)
