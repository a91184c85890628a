"""Text-to-clip retrieval in the encoder's joint space (the space `vbs eval encoder` measures): the compact code a
clip's embedding is kept in, and the query side, text -> a joint-space vector.

A clip's joint embedding is a unit vector, so every component lies in [-1, 1]: its code is round(127 * x) as int8
(384 bytes for MiniLM's 384 dimensions, a quarter of float32), with one fixed scale for every clip so that codes
compare directly. The rounding moves a cosine by about 0.002, far below the gaps between clips that rank apart."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import torch

SCALE = 127  # int8 code = round(SCALE * component)


def quantise(vectors) -> np.ndarray:
    """Unit vectors (N, D) or (D,) -> int8 codes of the same shape."""
    x = np.asarray(vectors, dtype=np.float32)
    return np.clip(np.rint(x * SCALE), -SCALE, SCALE).astype(np.int8)


def to_text(code: np.ndarray) -> str:
    """One int8 code (D,) as Redis carries it (base64: the clients read replies as text)."""
    return base64.b64encode(np.ascontiguousarray(code, dtype=np.int8).tobytes()).decode("ascii")


def from_text(text: str, dim: int | None = None) -> np.ndarray:
    """The int8 code (D,) of `to_text`. Raises ValueError for text that is not one (or not `dim` long)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a clip vector: {e}") from None
    if not raw or (dim is not None and len(raw) != dim):
        raise ValueError(f"a clip vector of {len(raw)} bytes, expected {dim}")
    return np.frombuffer(raw, dtype=np.int8)


class QueryEncoder:
    """Text -> unit vectors in a model's joint space: MiniLM's sentence embedding through the encoder's text head,
    exactly as `vbs eval encoder` embeds its queries."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from videobert.checkpoint import ModelPaths
        from videobert.encoders import load_embedder
        from videobert.text import SentenceEncoder

        self.device = torch.device(device)
        self.embedder, _, _ = load_embedder(ModelPaths.of(model_dir).encoder, self.device)
        self.sentences = SentenceEncoder(self.device, max_cache=1024)

    @property
    def dim(self) -> int:
        return self.embedder.head.out_features

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N,) strings -> (N, D) float32 unit vectors."""
        emb = self.sentences.encode(list(texts)).to(self.device)
        return self.embedder.embed_text(emb).cpu().numpy().astype(np.float32)
