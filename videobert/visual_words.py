"""Visual words: the clip embeddings of a trained encoder, quantised by hierarchical k-means.

`fit_vocab` is `vbs train vocab`; `VisualTokenizer` turns clips into word ids at inference."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from videobert.clipset import ClipSet, load_clipset
from videobert.encoders import ClipEmbedder, load_embedder
from videobert.kmeans import HierarchicalKMeans, KMeansConfig
from videobert.reader import ClipSpec

log = logging.getLogger(__name__)

class VisualTokenizer:
    """Encoder + k-means tree: uint8 clips (N, T, H, W, 3) -> visual word ids (N,)."""

    def __init__(self, embedder: ClipEmbedder, kmeans: HierarchicalKMeans, spec: ClipSpec,
                 device: str | torch.device = "cpu"):
        self.embedder, self.kmeans, self.spec, self.device = embedder, kmeans, spec, torch.device(device)

    @classmethod
    def load(cls, encoder_dir: str | Path, vocab_dir: str | Path, device: str | torch.device = "cpu") -> "VisualTokenizer":
        embedder, spec, _ = load_embedder(encoder_dir, device)
        return cls(embedder, HierarchicalKMeans.load(vocab_dir, device=device), spec, device)

    @property
    def vocab_size(self) -> int:
        return self.kmeans.vocab_size

    def embed(self, clips, progress: bool = False) -> torch.Tensor:
        """What the k-means tree quantises (the encoder's word space, see ClipEmbedder.word_space)."""
        return self.embedder.embed_words(clips, device=self.device, progress=progress)  # (N, D)

    def tokens(self, clips, progress: bool = False) -> torch.Tensor:
        return self.kmeans.encode(self.embed(clips, progress).to(self.device)).cpu()  # (N,)

    @torch.no_grad()
    def tokens_and_joint(self, clips) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder pass: the visual word ids (N,) and the joint text/clip embeddings (N, text_dim), unit
        vectors (what text search compares a query with)."""
        feats = self.embedder.features(clips, device=self.device).to(self.device)
        words = self.kmeans.encode(self.embedder.quantised_space(feats)).cpu()
        return words, self.embedder.embed_features(feats).cpu()


def fit_vocab(data: str | Path, encoder_dir: str | Path, out: str | Path, config: KMeansConfig = KMeansConfig(),
              device: str | torch.device = "cpu", workers: int = 1, progress: bool = True,
              clipset: ClipSet | None = None) -> dict:
    """Embed every clip under `data` with the encoder and fit the k-means tree; writes it to `out`."""
    start = time.perf_counter()
    embedder, spec, _ = load_embedder(encoder_dir, device)
    cs = clipset if clipset is not None else load_clipset(data, spec, workers=workers, progress=progress)
    if len(cs) < config.branching:
        raise ValueError(f"{data}: {len(cs)} clips are too few to fit {config.branching} clusters")
    feats = embedder.embed_words(cs.frames, device=device, progress=progress)
    km = HierarchicalKMeans.fit(feats, config, device=device, progress=progress)
    out = Path(out)
    km.save(out)
    words = km.encode(feats.to(device)).cpu().numpy()
    used = Counter(words.tolist())
    summary = {"clips": len(cs), "vocab_size": km.vocab_size, "words_used": len(used),
               "depth": config.depth, "branching": config.branching, "encoder": str(Path(encoder_dir).resolve()),
               "data": str(Path(data).resolve()),
               "seconds": round(time.perf_counter() - start, 1)}
    labelled = cs.labelled()
    if len(labelled):
        summary["purity_verb"] = purity(words[labelled], [cs.verb[i] for i in labelled])
        summary["purity_noun"] = purity(words[labelled], [cs.noun[i] for i in labelled])
    (out / "vocab.json").write_text(json.dumps(summary, indent=1))
    return summary


def purity(words: np.ndarray, labels: list) -> float:
    """Fraction of clips whose label is the majority label of their visual word."""
    if len(words) == 0:
        return float("nan")
    by_word: dict[int, Counter] = {}
    for w, lab in zip(words.tolist(), labels):
        by_word.setdefault(w, Counter())[lab] += 1
    return sum(c.most_common(1)[0][1] for c in by_word.values()) / len(words)
