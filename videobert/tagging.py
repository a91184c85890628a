"""Zero-shot tagging with a trained VideoBERT: fill a template's [MASK] slots, each restricted to a label set,
given a clip's visual word (and, with `context` > 0, the words of the clips before it: one definition for the
graph, `vbs tag` and uploads, see `with_context`); score how well the overlapping subtitle matches the picture;
return a fused embedding. `vbs tag` uses this; the graph's fusion stage calls `Tagger.score`; the evaluations
are in videobert/evaluate.py."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas.state import TagResult
from schemas.streams import LabelSet
from videobert import labels as label_sets
from videobert.checkpoint import ModelPaths, model_id
from videobert.model import VideoBertForPreTraining
from videobert.reader import read_video
from videobert.sequences import Example, SequenceBuilder, collate
from videobert.text import load_tokenizer
from videobert.visual_words import VisualTokenizer

log = logging.getLogger(__name__)


def with_context(words: list, context: int) -> list[list]:
    """What is tagged for each clip: its visual word with the words of up to `context` clips before it, oldest
    first. The live graph can only know the past, so this is the one meaning of context everywhere."""
    return [words[max(0, i - context): i + 1] for i in range(len(words))]


@dataclass(frozen=True)
class ClipScore:
    """What the fusion model says of one clip."""

    labels: dict[str, list[dict]]  # slot -> [{"label", "score"}] over the slot's whole set, best first
    alignment: float | None  # of its subtitle with the picture (0-1); None without a subtitle
    embedding: tuple[float, ...] | None = None  # the fused embedding (unit length, rounded), when asked for
    model: str | None = None  # which model said it: "name@hash" (videobert.checkpoint.model_id)
    vector: bytes | None = None  # the clip's joint text/clip embedding as int8 (videobert.retrieval), for search


def tag_result(t0: float, t1: float, subtitle: str, score: ClipScore, latency_s: float | None = None,
               text_source: str | None = None) -> TagResult:
    """The tag row of one clip: the one place a row is built (`vbs tag`, the graph, uploads). `text_source`: where
    its subtitle came from ("subtitles" or "speech"; None: neither)."""
    return TagResult(t0=t0, t1=t1, labels=score.labels, alignment=score.alignment, subtitle=subtitle,
                     embedding=list(score.embedding) if score.embedding is not None else None, latency_s=latency_s,
                     model=score.model, text_source=text_source if text_source in ("subtitles", "speech") else None)


class Tagger:
    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", labels: LabelSet | None = None,
                 context: int = 0):
        if context < 0:
            raise ValueError(f"context is a number of earlier clips, >= 0, not {context}")
        paths = ModelPaths.of(model_dir)
        self.device = torch.device(device)
        self.visual = VisualTokenizer.load(paths.encoder, paths.vocab, self.device)
        self.model = VideoBertForPreTraining.load(paths.videobert, self.device)
        if self.model.config.visual_vocab_size != self.visual.vocab_size:
            raise ValueError(f"VideoBERT knows {self.model.config.visual_vocab_size} visual words but the vocabulary "
                             f"in {paths.vocab} has {self.visual.vocab_size}")
        self.builder = SequenceBuilder(load_tokenizer(), self.model.config, paths.max_text_tokens())
        self.context = context
        self.model_dir = Path(model_dir)
        self.identity = model_id(model_dir)  # its id is carried by every row it tags
        self._ids: dict[LabelSet, dict[str, torch.Tensor]] = {}
        self.labels = label_sets.check(labels)  # the default template and label sets: a bad one fails now

    def candidates(self, labels: LabelSet) -> dict[str, torch.Tensor]:
        """Token ids of each slot's words of a complete label set (checked the first time it is seen)."""
        ids = self._ids.get(labels)
        if ids is None:
            if len(self._ids) > 256:
                self._ids.clear()
            ids = self._ids[labels] = {slot: torch.tensor(v, device=self.device)
                                       for slot, v in label_sets.label_ids(labels).items()}
        return ids

    @torch.no_grad()
    def score(self, words: list[list[int]], subtitles: list[str] | None = None, *,
              text_ids: list[list[int] | None] | None = None, labels: LabelSet | None = None,
              embeddings: bool = False) -> list[ClipScore]:
        """For each item's visual words: ranked labels per slot, the alignment of its subtitle (or None) and,
        with `embeddings`, a fused embedding (mean of the final hidden states over the visual words, unit
        length). Subtitles come as strings or already as WordPiece ids (`text_ids`, what the language stage
        gives); `labels` (complete) overrides the default template and label sets for this call."""
        slots_ = labels or self.labels
        candidates = self.candidates(slots_)
        if text_ids is None and subtitles:
            text_ids = [self.builder.text_ids(s) if s else None for s in subtitles]
        seqs = [self.builder.template(slots_.template, w) for w in words]
        batch = collate([Example(ids, types, [-100] * len(ids), -1) for ids, types, _ in seqs], self.device)
        hidden = self.model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).hidden
        ranked, fused = [], []
        for r, (ids, _, positions) in enumerate(seqs):
            row = {}
            for (slot, words_), pos in zip(slots_.slots, positions):
                lp = self.model.slot_log_probs(hidden[r, pos][None], candidates[slot])[0].exp()
                order = torch.argsort(lp, descending=True).tolist()
                row[slot] = [{"label": words_[i], "score": round(float(lp[i]), 4)} for i in order]
            ranked.append(row)
            if embeddings:
                vis = torch.tensor([i >= self.model.config.visual_offset for i in ids], device=self.device)
                emb = torch.nn.functional.normalize(hidden[r, : len(ids)][vis].mean(0), dim=0)
                fused.append(tuple(round(x, 5) for x in emb.tolist()))
        alignment: list[float | None] = [None] * len(words)
        texts = [(i, t) for i, t in enumerate(text_ids or []) if t]
        if texts:
            pairs = [self.builder.build(t, words[i]) for i, t in texts]
            b = collate([Example(ids, types, [-100] * len(ids), -1) for ids, types in pairs], self.device)
            align = torch.sigmoid(self.model(b["input_ids"], b["token_type_ids"], b["attention_mask"]).align_logits)
            for (i, _), a in zip(texts, align.tolist()):
                alignment[i] = round(a, 4)
        return [ClipScore(ranked[i], alignment[i], fused[i] if embeddings else None, self.identity.id)
                for i in range(len(words))]

    def tag_video(self, path: str | Path, with_embedding: bool = False, batch_size: int = 64,
                  text_source: str = "auto") -> list[TagResult]:
        """One result per 1.5 s clip of a video. `text_source`: "auto" (its subtitles, else its speech), "subtitles"
        or "speech" (its audio recognised, with the model's speech language model when it has one)."""
        from videobert.speech import TextSource

        v = read_video(path, self.visual.spec, text=TextSource(text_source, model_dir=str(self.model_dir), cache=False))
        source = source_of(v.subtitle_source)
        if not v.clips:
            return []
        words = self.visual.tokens(np.stack([c.frames for c in v.clips])).tolist()
        ctx = with_context(words, self.context)
        out = []
        for s in range(0, len(ctx), batch_size):
            clips = v.clips[s:s + batch_size]
            scored = self.score(ctx[s:s + batch_size], [c.text for c in clips], embeddings=with_embedding)
            out += [tag_result(c.t0, c.t1, c.text, r, text_source=source) for c, r in zip(clips, scored)]
        return out


def source_of(subtitle_source: str) -> str | None:
    """A reader's subtitle source ("embedded", "sidecar", "speech", "none") as a tag's text_source."""
    return "speech" if subtitle_source == "speech" else "subtitles" if subtitle_source in ("embedded", "sidecar") \
        else None


def write_jsonl(rows: list[TagResult], fh) -> None:
    for row in rows:
        fh.write(json.dumps(row.to_dict()) + "\n")
