"""Zero-shot tagging with a trained VideoBERT: fill a template's [MASK] slots, each restricted to a label
set, given a clip's visual word (and, with `context` > 0, its neighbours'; off by default: a neighbour from
another segment misleads more than one from the same segment helps, README, Measured); score how well the
overlapping subtitle matches the picture; return a fused embedding. `vbs tag` and `vbs eval zero-shot` use
this."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from videobert import world
from videobert.model import VideoBertForPreTraining
from schemas.world import GroundTruth, Segment
from videobert.reader import read_video
from videobert.sequences import Example, SequenceBuilder, collate
from videobert.text import load_tokenizer
from videobert.visual_words import VisualTokenizer

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "now let me show you how to [MASK] the [MASK]"


@dataclass
class LabelSlots:
    """A template with one [MASK] per slot, and the words each slot may take (single WordPiece tokens)."""

    template: str = DEFAULT_TEMPLATE
    slots: dict[str, list[str]] = field(default_factory=lambda: {"verb": list(world.VERBS), "noun": list(world.NOUNS)})


@dataclass
class ModelPaths:
    encoder: Path
    vocab: Path
    videobert: Path

    @classmethod
    def of(cls, model_dir: str | Path) -> "ModelPaths":
        d = Path(model_dir)
        paths = cls(d / "encoder", d / "vocab", d / "videobert")
        missing = [p.name for p in (paths.encoder, paths.vocab, paths.videobert) if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"{d} is not a model directory: missing {', '.join(missing)} "
                                    f"(build one with `vbs train demo --out {d}`)")
        return paths


def with_context(words: list, context: int) -> list[list]:
    """Each clip's visual word with `context` neighbours on each side (fewer at the ends): what is tagged per clip."""
    return [words[max(0, i - context): i + context + 1] for i in range(len(words))]


class Tagger:
    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", labels: LabelSlots | None = None,
                 context: int = 0):
        if context < 0:
            raise ValueError(f"context is a number of neighbouring clips on each side, >= 0, not {context}")
        paths = ModelPaths.of(model_dir)
        self.device = torch.device(device)
        self.visual = VisualTokenizer.load(paths.encoder, paths.vocab, self.device)
        self.model = VideoBertForPreTraining.load(paths.videobert, self.device)
        if self.model.config.visual_vocab_size != self.visual.vocab_size:
            raise ValueError(f"VideoBERT knows {self.model.config.visual_vocab_size} visual words but the vocabulary "
                             f"in {paths.vocab} has {self.visual.vocab_size}")
        self.builder = SequenceBuilder(load_tokenizer(), self.model.config)
        self.context = context
        self.set_labels(labels or LabelSlots())

    def set_labels(self, labels: LabelSlots) -> None:
        """The default template and label sets (checked now: a bad one is an error at once)."""
        self.candidates = self.label_ids(labels)
        self.labels = labels

    def label_ids(self, labels: LabelSlots) -> dict[str, torch.Tensor]:
        """Token ids of each slot's words; ValueError when the template and the slots disagree or a word is
        not a single WordPiece token. Cached per label set."""
        key = (labels.template, tuple((k, tuple(v)) for k, v in labels.slots.items()))
        cache = self.__dict__.setdefault("_label_cache", {})
        if key in cache:
            return cache[key]
        n_masks = labels.template.count("[MASK]")
        if n_masks != len(labels.slots):
            raise ValueError(f"template has {n_masks} [MASK] slot(s) but {len(labels.slots)} label set(s) were given")
        candidates: dict[str, torch.Tensor] = {}
        for slot, words in labels.slots.items():
            ids = []
            for w in words:
                t = self.builder.text_ids(w)
                if len(t) != 1:
                    raise ValueError(f"label {w!r} of slot {slot!r} is not a single WordPiece token ({len(t)} pieces)")
                ids.append(t[0])
            candidates[slot] = torch.tensor(ids, device=self.device)
        if len(cache) > 256:
            cache.clear()
        cache[key] = candidates
        return candidates

    @torch.no_grad()
    def score(self, words: list[list[int]], subtitles: list[str] | None = None, *,
              text_ids: list[list[int] | None] | None = None, labels: LabelSlots | None = None) -> list[dict]:
        """For each item's visual words: ranked labels per slot, the alignment of its subtitle (or None) and a
        fused embedding (mean of the final hidden states over the visual words, unit length). Subtitles come as
        strings or already as WordPiece ids (`text_ids`, what the language stage gives); `labels` overrides
        the default template and label sets for this call."""
        slots_ = labels or self.labels
        candidates = self.label_ids(slots_)
        if text_ids is None and subtitles:
            text_ids = [self.builder.text_ids(s) if s else None for s in subtitles]
        seqs = [self.builder.template(slots_.template, w) for w in words]
        batch = collate([Example(ids, types, [-100] * len(ids), -1) for ids, types, _ in seqs], self.device)
        hidden = self.model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).hidden
        results = []
        for r, (ids, _, slots) in enumerate(seqs):
            labels = {}
            for (slot, words_), pos in zip(slots_.slots.items(), slots):
                lp = self.model.slot_log_probs(hidden[r, pos][None], candidates[slot])[0].exp()
                order = torch.argsort(lp, descending=True).tolist()
                labels[slot] = [{"label": words_[i], "score": round(float(lp[i]), 4)} for i in order]
            vis = torch.tensor([i >= self.model.config.visual_offset for i in ids], device=self.device)
            emb = torch.nn.functional.normalize(hidden[r, : len(ids)][vis].mean(0), dim=0)
            results.append({"labels": labels, "alignment": None, "embedding": emb.cpu()})
        if text_ids:
            texts = [(i, t) for i, t in enumerate(text_ids) if t]
            if texts:
                pairs = [self.builder.build(t, words[i]) for i, t in texts]
                b = collate([Example(ids, types, [-100] * len(ids), -1) for ids, types in pairs], self.device)
                align = torch.sigmoid(self.model(b["input_ids"], b["token_type_ids"], b["attention_mask"]).align_logits)
                for (i, _), a in zip(texts, align.tolist()):
                    results[i]["alignment"] = round(a, 4)
        return results

    def tag_video(self, path: str | Path, with_embedding: bool = False, batch_size: int = 64) -> list[dict]:
        """One result per 1.5 s clip of a video: t0, t1, labels, alignment, subtitle (and embedding)."""
        v = read_video(path, self.visual.spec)
        if not v.clips:
            return []
        words = self.visual.tokens(np.stack([c.frames for c in v.clips])).tolist()
        ctx = with_context(words, self.context)
        out = []
        for s in range(0, len(ctx), batch_size):
            clips = v.clips[s:s + batch_size]
            scored = self.score(ctx[s:s + batch_size], [c.text for c in clips])
            for c, r in zip(clips, scored):
                row = {"t0": c.t0, "t1": c.t1, "labels": r["labels"], "alignment": r["alignment"], "subtitle": c.text}
                if with_embedding:
                    row["embedding"] = [round(x, 5) for x in r["embedding"].tolist()]
                out.append(row)
        return out


def segment_windows(t0: float, t1: float, seconds: float = 1.5) -> list[tuple[float, float]]:
    """Clip windows that tile a segment: round(duration / seconds) of them (at least one), evenly spread;
    a segment shorter than a clip gets one window centred on it."""
    d = t1 - t0
    n = max(1, int(round(d / seconds)))
    if d <= seconds or n == 1:
        c = (t0 + t1) / 2
        return [(max(0.0, c - seconds / 2), max(0.0, c - seconds / 2) + seconds)]
    step = (d - seconds) / (n - 1)
    return [(t0 + k * step, t0 + k * step + seconds) for k in range(n)]


def _segment_words_of(visual: VisualTokenizer, path: Path, truth) -> dict[int, list[int]]:
    """Visual words of the windows that tile each ground-truth segment of one video: {segment index: words}."""
    windows = sorted((w, si) for si, seg in enumerate(truth.segments)
                     for w in segment_windows(seg.t0, seg.t1, visual.spec.seconds))
    v = read_video(path, visual.spec, windows=[w for w, _ in windows], with_text=False)
    if not v.clips:
        return {}
    words = visual.tokens(np.stack([c.frames for c in v.clips])).tolist()
    by_seg: dict[int, list[int]] = {}
    for c, w in zip(v.clips, words):
        by_seg.setdefault(windows[c.index][1], []).append(w)
    return by_seg


@dataclass
class LabelledVideos:
    """The held-out material of the evaluations, read once: per labelled video, its ground truth and the
    visual words of the windows that tile each segment; plus the videos that could not be read."""

    videos: list[tuple[GroundTruth, dict[int, list[int]]]]
    failures: list[str]

    def segments(self) -> list[tuple[Segment, list[int]]]:
        return [(truth.segments[si], ws) for truth, by_seg in self.videos for si, ws in sorted(by_seg.items())]


def read_labelled(visual: VisualTokenizer, data: str | Path, progress: bool = True) -> LabelledVideos:
    """Every video under `data` with a sidecar .json; unreadable ones are recorded in `failures`."""
    from tqdm import tqdm

    from videobert.reader import VideoReadError, list_videos, load_truth

    out = LabelledVideos([], [])
    for path in tqdm(list_videos(data), desc="segments", unit="video", disable=not progress):
        truth = load_truth(path)
        if truth is None:
            continue
        try:
            out.videos.append((truth, _segment_words_of(visual, path, truth)))
        except VideoReadError as e:
            out.failures.append(str(e))
    return out


def segment_words(visual: VisualTokenizer, data: str | Path, progress: bool = True) -> list[tuple[Segment, list[int]]]:
    """Every ground-truth segment under `data` with the visual words of the windows that tile it."""
    return read_labelled(visual, data, progress).segments()


def evaluate_alignment(tagger: Tagger, labelled: LabelledVideos, seed: int = 0) -> dict:
    """Linguistic-visual alignment on held-out videos: each correct narration line scored with the visual
    words of its own segment (positive) and of a segment of the same video showing another verb and noun
    (negative). Reports the ROC AUC of the alignment score (chance 0.5)."""
    rng = np.random.default_rng(seed)
    texts, words, labels = [], [], []
    for truth, by_seg in labelled.videos:
        for line in truth.narration:
            if line.kind != "instruction" or line.segment not in by_seg:
                continue
            seg = truth.segments[line.segment]
            others = [si for si in by_seg if truth.segments[si].verb != seg.verb and truth.segments[si].noun != seg.noun]
            if not others:
                continue
            texts += [line.text, line.text]
            words += [by_seg[line.segment], by_seg[others[rng.integers(len(others))]]]
            labels += [1, 0]
    if not labels:
        raise ValueError("no narration lines with ground truth to align")
    scores = [r["alignment"] for s in range(0, len(texts), 64)
              for r in tagger.score(words[s:s + 64], texts[s:s + 64])]
    pos = np.array([sc for sc, y in zip(scores, labels) if y == 1])
    neg = np.array([sc for sc, y in zip(scores, labels) if y == 0])
    auc = float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))
    return {"alignment_auc": round(auc, 4), "pairs": len(pos), "chance": 0.5}


def evaluate_zero_shot(tagger: Tagger, labelled: LabelledVideos, batch_size: int = 64) -> dict:
    """The DEMO_WORLD protocol: video only, no subtitles; each ground-truth segment's visual words fill the
    template; top-1 / top-3 of the verb and noun slots. Works on any directory of videos with sidecar .json
    files that follow the spec (segments with t0, t1, verb, noun)."""
    segs = labelled.segments()
    if not segs:
        raise ValueError("no video with a ground-truth .json and readable segments")
    hits = {"verb_top1": 0, "noun_top1": 0, "both_top1": 0, "verb_top3": 0, "noun_top3": 0}
    confusion: dict[str, dict[str, int]] = {}
    for s in range(0, len(segs), batch_size):
        chunk = segs[s:s + batch_size]
        for (seg, _), r in zip(chunk, tagger.score([w for _, w in chunk])):
            verbs = [x["label"] for x in r["labels"]["verb"]]
            nouns = [x["label"] for x in r["labels"]["noun"]]
            hits["verb_top1"] += verbs[0] == seg.verb
            hits["noun_top1"] += nouns[0] == seg.noun
            hits["both_top1"] += verbs[0] == seg.verb and nouns[0] == seg.noun
            hits["verb_top3"] += seg.verb in verbs[:3]
            hits["noun_top3"] += seg.noun in nouns[:3]
            row = confusion.setdefault(seg.verb, {})
            row[verbs[0]] = row.get(verbs[0], 0) + 1
    n = len(segs)
    result = {k: round(v / n, 4) for k, v in hits.items()}
    result.update(n_segments=n, failures=labelled.failures, verb_confusion=confusion,
                  chance={"verb_top1": 1 / 8, "noun_top1": 1 / 6, "both_top1": 1 / 48})
    return result


def evaluate_held_out(tagger: Tagger, data: str | Path, progress: bool = True) -> dict:
    """`vbs eval zero-shot`: the zero-shot figures and, where the sidecars carry narration, the alignment
    AUC, from one read of the videos."""
    labelled = read_labelled(tagger.visual, data, progress)
    try:
        result = evaluate_zero_shot(tagger, labelled)
    except ValueError as e:
        raise ValueError(f"{data}: {e}") from e
    try:
        result.update(evaluate_alignment(tagger, labelled))
    except ValueError as e:  # sidecars without narration: the zero-shot figures stand on their own
        log.info("%s: no alignment figure: %s", data, e)
    return result


def format_zero_shot(r: dict) -> str:
    rows = [("", "verb", "noun", "both"), ("top-1", f"{r['verb_top1']:.3f}", f"{r['noun_top1']:.3f}", f"{r['both_top1']:.3f}"),
            ("top-3", f"{r['verb_top3']:.3f}", f"{r['noun_top3']:.3f}", ""),
            ("chance top-1", "0.125", "0.167", "0.021")]
    text = "\n".join("  ".join(c.rjust(12) for c in row) for row in rows) + f"\n({r['n_segments']} segments)"
    if "alignment_auc" in r:
        text += f"\nalignment AUC {r['alignment_auc']:.3f} over {r['pairs']} narration lines (chance 0.5)"
    return text


def write_jsonl(rows: list[dict], fh) -> None:
    for row in rows:
        fh.write(json.dumps(row) + "\n")
