"""The model stages of the streaming graph as plain classes (no Ray): the video encoder + visual words, the
language encoder and the VideoBERT fusion. Each takes a whole batch, from any mix of streams, and returns
one result per item. Tests and benchmarks call them directly; actors/models.py wraps each in an actor."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto': the first CUDA device this process can see (Ray sets CUDA_VISIBLE_DEVICES for an actor
    given GPUs), else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class VideoEncoderStage:
    """uint8 clips (T, H, W, 3) -> visual word ids: the trained video encoder, then a walk down the k-means tree."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from videobert.tagging import ModelPaths
        from videobert.visual_words import VisualTokenizer

        paths = ModelPaths.of(model_dir)
        self.device = torch.device(device)
        self.visual = VisualTokenizer.load(paths.encoder, paths.vocab, self.device)

    @property
    def spec(self):
        return self.visual.spec

    @torch.no_grad()
    def __call__(self, clips: list[np.ndarray]) -> list[int]:
        if not clips:
            return []
        expected = (self.spec.frames, self.spec.size, self.spec.size, 3)
        for c in clips:
            if c.shape != expected:
                raise ValueError(f"clip of shape {c.shape}, the encoder takes {expected}")
        return self.visual.tokens(np.stack(clips)).tolist()


class LanguageStage:
    """Subtitle lines -> MiniLM WordPiece ids (what the fusion model reads), cached per distinct line:
    a subtitle cue spans several clips, and live captions repeat."""

    def __init__(self, max_text_tokens: int = 24, cache_size: int = 4096):
        from videobert.text import load_tokenizer

        self.tok = load_tokenizer()
        self.max_text_tokens = max_text_tokens
        self.cache: OrderedDict[str, list[int]] = OrderedDict()
        self.cache_size = cache_size

    def __call__(self, texts: list[str]) -> list[list[int]]:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            enc = self.tok(missing, add_special_tokens=False, truncation=True, max_length=self.max_text_tokens)
            for t, ids in zip(missing, enc["input_ids"]):
                self.cache[t] = ids
        out = []
        for t in texts:
            self.cache.move_to_end(t)
            out.append(self.cache[t])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out


@dataclass(frozen=True)
class FusionItem:
    """One clip for the fusion model: its visual word with the words of earlier clips of the same stream
    (oldest first), the WordPiece ids of its subtitle (None without one), and the stream's label sets."""

    words: tuple[int, ...]
    text_ids: tuple[int, ...] | None = None
    template: str | None = None
    labels: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    embedding: bool = False


class FusionStage:
    """VideoBERT over `[CLS] template [>] visual words [SEP]`: ranked labels per slot, the alignment of the
    subtitle with the picture, a fused embedding. Items with different label sets share a batch call each."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from videobert.tagging import LabelSlots, Tagger

        self.tagger = Tagger(model_dir, device=device)
        self._default = self.tagger.labels
        self._LabelSlots = LabelSlots

    def label_slots(self, template: str | None, labels: dict[str, list[str]] | None):
        """The label sets of a stream (its options over the defaults); ValueError if they cannot be used."""
        slots = self._LabelSlots(template or self._default.template,
                                 {k: list(v) for k, v in labels.items()} if labels else dict(self._default.slots))
        self.tagger.label_ids(slots)
        return slots

    @torch.no_grad()
    def __call__(self, items: list[FusionItem]) -> list[dict]:
        out: list[dict | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it.template, it.labels), []).append(i)
        for (template, labels), idx in groups.items():
            slots = self.label_slots(template, {k: list(v) for k, v in labels} if labels else None)
            scored = self.tagger.score([list(items[i].words) for i in idx],
                                       text_ids=[list(items[i].text_ids) if items[i].text_ids else None for i in idx],
                                       labels=slots)
            for i, r in zip(idx, scored):
                row = {"labels": r["labels"], "alignment": r["alignment"]}
                if items[i].embedding:
                    row["embedding"] = [round(x, 5) for x in r["embedding"].tolist()]
                out[i] = row
        return out  # type: ignore[return-value]
