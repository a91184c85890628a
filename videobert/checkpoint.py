"""The layout of a model directory and strict loading of the weights in it.

A model directory (what `vbs train demo` builds and every stage loads) holds three checkpoints:

    encoder/    encoder.json + encoder.safetensors        the video encoder (videobert.encoders)
    vocab/      kmeans.json + kmeans.safetensors          the visual words (videobert.kmeans)
    videobert/  config.json + model.safetensors           the fusion model (videobert.model)

Weights load strictly: a checkpoint whose tensors do not match the network it describes is an error that
names the keys, never a model that runs with some weights left at random.

A model's identity (`model_id`) is its directory's name and a hash of the files that decide what it
computes (the three checkpoints' configs and weights): every tag carries it, so a tag says which build
of a model wrote it, whatever the directory is called on the machine that served it."""

from __future__ import annotations

import functools
import hashlib
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


# the files of a model directory that decide what it computes (summaries, corpora and timings do not)
IDENTITY_FILES = ("encoder/encoder.json", "encoder/encoder.safetensors", "vocab/kmeans.json",
                  "vocab/kmeans.safetensors", "videobert/config.json", "videobert/model.safetensors")
HASH_CHARS = 12


@dataclass(frozen=True)
class ModelId:
    """Which model: `name` (its directory's name) and `hash` (the first 12 hex digits of a SHA-256 over
    IDENTITY_FILES, names and bytes). `id` ("demo@3fa2c1d9e0b4") is what tags and metrics carry."""

    name: str
    hash: str

    @property
    def id(self) -> str:
        return f"{self.name}@{self.hash}"

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "hash": self.hash}


def model_id(model_dir: str | Path) -> ModelId:
    """The identity of the model in `model_dir` (FileNotFoundError naming a missing file). Hashed once per
    process for each directory and set of file versions (about 0.2 s for 100 MB of weights)."""
    d = Path(model_dir).resolve()
    ModelPaths.of(d)
    versions = []
    for rel in IDENTITY_FILES:
        f = d / rel
        if not f.is_file():
            raise FileNotFoundError(f"{d} lacks {rel}: not a complete model directory")
        st = f.stat()
        versions.append((rel, st.st_size, st.st_mtime_ns))
    return _hashed(d, tuple(versions))


@functools.lru_cache(maxsize=16)
def _hashed(d: Path, versions: tuple) -> ModelId:
    h = hashlib.sha256()
    for rel, _, _ in versions:
        h.update(rel.encode() + b"\0")
        with open(d / rel, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return ModelId(d.name, h.hexdigest()[:HASH_CHARS])


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
