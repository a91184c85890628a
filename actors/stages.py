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

from schemas.streams import LabelSet
from videobert.checkpoint import ModelPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedClip:
    """The video encoder's answer for one clip: its visual word, and the int8 code of its joint text/clip embedding
    (videobert.retrieval.quantise) that the sink keeps for search."""

    word: int
    vector: bytes


class VideoEncoderStage:
    """uint8 clips (T, H, W, 3) -> visual word ids: the trained video encoder, then a walk down the k-means tree."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from videobert.visual_words import VisualTokenizer

        paths = ModelPaths.of(model_dir)
        self.device = torch.device(device)
        self.visual = VisualTokenizer.load(paths.encoder, paths.vocab, self.device)

    @property
    def spec(self):
        return self.visual.spec

    def __call__(self, clips: list[np.ndarray]) -> list[int]:
        """Visual word ids only (on-demand tagging, tests)."""
        return [e.word for e in self.encode(clips)]

    @torch.no_grad()
    def encode(self, clips: list[np.ndarray]) -> list[EncodedClip]:
        """What the graph sends on: each clip's visual word and its joint embedding's int8 code (for search)."""
        from videobert.retrieval import quantise

        if not clips:
            return []
        expected = (self.spec.frames, self.spec.size, self.spec.size, 3)
        for c in clips:
            if c.shape != expected:
                raise ValueError(f"clip of shape {c.shape}, the encoder takes {expected}")
        words, joint = self.visual.tokens_and_joint(np.stack(clips))
        return [EncodedClip(int(w), c.tobytes()) for w, c in zip(words.tolist(), quantise(joint.numpy()))]


class LanguageStage:
    """Subtitle lines -> MiniLM WordPiece ids (what the fusion model reads), cached per distinct line:
    a subtitle cue spans several clips, and live captions repeat. `max_tokens`: the model's own
    (`ModelPaths.max_text_tokens`), so a line is cut where the fusion model was trained to read it."""

    def __init__(self, max_tokens: int | None = None, cache_size: int = 4096):
        from videobert.text import MAX_TEXT_TOKENS

        self.max_tokens = max_tokens or MAX_TEXT_TOKENS
        self.cache: OrderedDict[str, list[int]] = OrderedDict()
        self.cache_size = cache_size

    def __call__(self, texts: list[str]) -> list[list[int]]:
        from videobert.text import text_ids

        missing = sorted({t for t in texts if t not in self.cache})
        for t, ids in zip(missing, text_ids(missing, self.max_tokens)):
            self.cache[t] = ids
        out = []
        for t in texts:
            self.cache.move_to_end(t)
            out.append(self.cache[t])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out


class SpeechStage:
    """Utterances (int16 mono 16 kHz sample arrays) -> their recognised words, one line each ("" when nothing
    was heard): the recogniser of videobert/speech.py (`[speech] recognizer`, with the model's own speech language
    model when it has one). An utterance that fails to decode is "" (logged), never a failed batch."""

    def __init__(self, model_dir: str | Path | None, recognizer: str = "pocketsphinx"):
        from videobert.speech import make_recognizer

        self.recognizer = make_recognizer(recognizer, model_dir)

    def __call__(self, utterances: list[np.ndarray]) -> list[str]:
        out = []
        for u in utterances:
            try:
                out.append(self.recognizer.recognise(np.asarray(u, np.int16)))
            except Exception as e:  # noqa: BLE001 - one odd utterance is silence, not a failed batch
                log.warning("speech: an utterance of %d samples failed to decode: %s", np.size(u), e)
                out.append("")
        return out


@dataclass(frozen=True)
class FusionItem:
    """One clip for the fusion model: its visual word with the words of earlier clips of the same stream
    (oldest first), the WordPiece ids of its subtitle (None without one), and the stream's label set (None: the
    model's default), checked where the stream came in."""

    words: tuple[int, ...]
    text_ids: tuple[int, ...] | None = None
    labels: LabelSet | None = None
    embedding: bool = False
    vector: bytes | None = None  # the clip's joint-embedding code, passed through to its result (search)


class FusionStage:
    """VideoBERT over `[CLS] template [>] visual words [SEP]`: ranked labels per slot, the alignment of the
    subtitle with the picture, a fused embedding. Items with different label sets share a batch call each."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from videobert.tagging import Tagger

        self.tagger = Tagger(model_dir, device=device)

    @torch.no_grad()
    def __call__(self, items: list[FusionItem]) -> list:
        """One videobert.tagging.ClipScore per item."""
        from dataclasses import replace

        from videobert.labels import resolve

        out: list = [None] * len(items)
        groups: dict[LabelSet | None, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.labels, []).append(i)
        for labels, idx in groups.items():
            scored = self.tagger.score([list(items[i].words) for i in idx],
                                       text_ids=[list(items[i].text_ids) if items[i].text_ids else None for i in idx],
                                       labels=resolve(labels, self.tagger.labels),
                                       embeddings=any(items[i].embedding for i in idx))
            for i, r in zip(idx, scored):
                out[i] = replace(r, embedding=r.embedding if items[i].embedding else None, vector=items[i].vector)
        return out
