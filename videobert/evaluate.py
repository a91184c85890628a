"""Evaluations on held-out videos with ground-truth sidecars.

- the encoder: text-to-clip retrieval (R@1, R@5 among n clips) and the purity of the visual words with respect
  to verb and noun, side by side with the same architecture untrained (`vbs eval encoder`);
- the visual words: a supervised linear probe on bags of words (`vbs eval words`);
- VideoBERT: zero-shot tagging of each ground-truth segment, and the alignment of narration with the
  picture (`vbs eval zero-shot`). The slots scored are those of the tagger's label set that the ground truth
  labels (a segment field of the slot's name), and chance follows from the label sets' sizes: any renderer
  of the spec, and any corpus whose sidecars label what its label sets ask, is measured the same way."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from schemas.world import GroundTruth, Segment
from videobert.clipset import ClipSet, load_clipset
from videobert.encoders import ClipEmbedder, build_encoder, load_embedder
from videobert.kmeans import HierarchicalKMeans, KMeansConfig
from videobert.text import SentenceEncoder
from videobert.visual_words import VisualTokenizer, purity

if TYPE_CHECKING:
    from videobert.tagging import Tagger

log = logging.getLogger(__name__)


def retrieval_pairs(cs: ClipSet) -> list[tuple[str, int]]:
    """(query text, clip index) pairs: each correct narration line with the clip at the centre of the
    segment it describes. Corpora without narration in their ground truth fall back to each clip's own
    overlapping subtitle text (noisier: speech is offset and sometimes wrong)."""
    pairs: list[tuple[str, int]] = []
    for vi, truth in enumerate(cs.truths):
        clips = np.flatnonzero(cs.video == vi)
        if truth is None or not truth.narration or len(clips) == 0:
            continue
        mids = (cs.t0[clips] + cs.t1[clips]) / 2
        for line in truth.narration:
            if line.kind != "instruction" or line.segment is None:
                continue
            seg = truth.segments[line.segment]
            best = clips[np.argmin(np.abs(mids - (seg.t0 + seg.t1) / 2))]
            pairs.append((line.text, int(best)))
    if not pairs:
        pairs = [(cs.text[i], i) for i in range(len(cs)) if cs.text[i]]
    return pairs


def retrieval(clip_emb: torch.Tensor, text_emb: torch.Tensor, pairs: list[tuple[str, int]], n: int = 100,
              seed: int = 0, verbs: list | None = None, nouns: list | None = None) -> dict:
    """Rank n sampled clips for each of their n queries. clip_emb (N, D) over the clip set; text_emb (n, D)."""
    rng = np.random.default_rng(seed)
    seen: set[int] = set()
    chosen = []
    for k in rng.permutation(len(pairs)):
        if pairs[k][1] not in seen:
            seen.add(pairs[k][1])
            chosen.append(k)
        if len(chosen) == n:
            break
    if len(chosen) < 2:
        raise ValueError(f"only {len(chosen)} distinct clips to retrieve among; need more held-out videos")
    clips = torch.tensor([pairs[k][1] for k in chosen])
    sims = text_emb[chosen] @ clip_emb[clips].T  # (n, n): query x candidate
    ranks = (sims > sims.diag()[:, None]).sum(dim=1)  # 0 = the right clip ranks first
    out = {"n": len(chosen), "r_at_1": float((ranks < 1).float().mean()), "r_at_5": float((ranks < 5).float().mean()),
           "chance_r_at_1": 1 / len(chosen), "chance_r_at_5": min(5, len(chosen)) / len(chosen)}
    if verbs is not None and nouns is not None:  # top clip shows the same verb and noun as the query's clip
        top = clips[sims.argmax(dim=1)]
        same = [verbs[int(t)] == verbs[int(c)] and nouns[int(t)] == nouns[int(c)] for t, c in zip(top, clips)]
        out["semantic_r_at_1"] = float(np.mean(same))
    return out


def evaluate_encoder(encoder_dir: str | Path, vocab_dir: str | Path | None, data: str | Path, n: int = 100,
                     seed: int = 0, device: str = "cpu", workers: int = 1, progress: bool = True,
                     baseline: bool = True, fit_data: str | Path | None = None) -> dict:
    """Retrieval and purity of a trained encoder on `data`, and (baseline=True) of the same architecture
    with random weights. Words are fit on `fit_data` (default: the data the vocabulary was fit on, else
    `data` itself) with the vocabulary's k-means settings, so both encoders are measured alike."""
    embedder, spec, meta = load_embedder(encoder_dir, device)
    cs = load_clipset(data, spec, workers=workers, progress=progress)
    if fit_data is None and vocab_dir and (Path(vocab_dir) / "vocab.json").is_file():
        fit_data = json.loads((Path(vocab_dir) / "vocab.json").read_text()).get("data")
    fit_cs = load_clipset(fit_data, spec, workers=workers, progress=progress) if fit_data else cs
    pairs = retrieval_pairs(cs)
    texts = SentenceEncoder(device).encode([q for q, _ in pairs])
    labelled = cs.labelled()
    result = {"data": str(data), "clips": len(cs), "labelled_clips": int(len(labelled)), "retrieval_pairs": len(pairs),
              "words_fit_on": str(fit_data or data)}

    def measure(model: ClipEmbedder, km: HierarchicalKMeans | None) -> dict:
        feats = model.features(cs.frames, device=device, progress=progress).to(device)  # one encoder pass for all that follows
        with torch.no_grad():
            emb = model.embed_features(feats).cpu()
            space = model.quantised_space(feats).cpu()
            queries = model.embed_text(texts.to(device)).cpu()
        r = retrieval(emb, queries, pairs, n=n, seed=seed, verbs=cs.verb, nouns=cs.noun)
        if km is None:
            fit_space = space if fit_cs is cs else model.embed_words(fit_cs.frames, device=device, progress=progress,
                                                                     desc="encoding training clips")
            km = HierarchicalKMeans.fit(fit_space, kmeans_cfg, device=device, progress=progress)
        words = km.encode(space).cpu().numpy()[labelled]
        r.update(purity_verb=purity(words, [cs.verb[i] for i in labelled]),
                 purity_noun=purity(words, [cs.noun[i] for i in labelled]), vocab_size=km.vocab_size,
                 words_used=int(len(set(words.tolist()))))
        r.update(word_head_accuracy(model, emb[labelled], cs, labelled, device))
        r.update(slot_accuracy(model, space[labelled], cs, labelled))
        return r

    km = HierarchicalKMeans.load(vocab_dir, device=device) if vocab_dir else None
    kmeans_cfg = km.config if km else KMeansConfig(depth=2, branching=12, seed=seed)
    result["trained"] = measure(embedder, km)
    if baseline:
        torch.manual_seed(seed)
        untrained = ClipEmbedder(build_encoder(meta["arch"], **meta["config"]), meta["text_dim"]).to(device)
        result["untrained"] = measure(untrained, None)
    if len(labelled):
        for key, labels in (("verb", cs.verb), ("noun", cs.noun)):
            vals = [labels[i] for i in labelled]
            result[f"majority_{key}"] = max(vals.count(v) for v in set(vals)) / len(vals)
    return result


def word_head_accuracy(model: ClipEmbedder, emb: torch.Tensor, cs: ClipSet, labelled: np.ndarray,
                       device: str = "cpu") -> dict:
    """The encoder's spoken-word head read as a classifier, before any visual words or fusion: for each
    labelled clip (`emb`, its joint embeddings, in the order of `labelled`), the likeliest of the ground
    truth's verbs (nouns) among the words the head predicts. Top-1 over every labelled clip (straddling ones
    scored by the label at their midpoint); a label the head was never trained to predict counts as a miss.
    Empty for an encoder without a head."""
    if model.word_head is None or not len(labelled):
        return {}
    with torch.no_grad():
        logits = model.word_head(emb.to(device)).cpu()
    out = {}
    for key in ("verb", "noun"):
        truth = [getattr(cs, key)[i] for i in labelled]
        classes = sorted(c for c in set(truth) if c in model.spoken_words)
        if len(classes) < 2:
            continue
        cols = [model.spoken_words.index(c) for c in classes]
        pred = [classes[k] for k in logits[:, cols].argmax(dim=1).tolist()]
        out[f"word_head_{key}"] = round(float(np.mean([p == t for p, t in zip(pred, truth)])), 4)
    return out


def slot_accuracy(model: ClipEmbedder, space: torch.Tensor, cs: ClipSet, labelled: np.ndarray) -> dict:
    """The encoder's slot heads read as classifiers, before any visual words or fusion: for each labelled
    clip (`space`, its `embed_words` rows in the order of `labelled`), the likeliest word of the `verb` (`noun`)
    slot, scored against the ground truth at the clip's midpoint (`slot_verb`, `slot_noun`). Empty for an
    encoder without those slots."""
    out = {}
    if not model.slots or not len(labelled):
        return out
    for name, cols in model.by_slot(space).items():
        if name not in ("verb", "noun"):
            continue
        truth = [getattr(cs, name)[i] for i in labelled]
        pred = [model.slots[name][j] for j in cols.argmax(dim=1).tolist()]
        out[f"slot_{name}"] = round(float(np.mean([p == t for p, t in zip(pred, truth)])), 4)
    return out


def words_probe(model_dir: str | Path, data: str | Path, heldout: str | Path, device: str = "cpu",
                progress: bool = True, steps: int = 300, seed: int = 0) -> dict:
    """How much the visual words know: a linear classifier trained *with labels* on each training segment's
    bag of visual words, scored on held-out segments, for verb and for noun. Zero-shot tagging reads the
    same words, so this is roughly its ceiling."""
    from videobert.checkpoint import ModelPaths
    from videobert.visual_words import VisualTokenizer

    paths = ModelPaths.of(model_dir)
    visual = VisualTokenizer.load(paths.encoder, paths.vocab, device)
    train, test = segment_words(visual, data, progress), segment_words(visual, heldout, progress)
    if not train or not test:
        raise ValueError(f"need labelled segments in both {data} and {heldout}")

    def bags(segs) -> torch.Tensor:
        x = torch.zeros(len(segs), visual.vocab_size)
        for i, (_, words) in enumerate(segs):
            for w in words:
                x[i, w] += 1.0 / len(words)
        return x

    x, xh = bags(train), bags(test)
    result = {"train_segments": len(train), "test_segments": len(test), "vocab_size": visual.vocab_size}
    for key in ("verb", "noun"):
        classes = sorted({getattr(s, key) for s, _ in train + test})
        y = torch.tensor([classes.index(getattr(s, key)) for s, _ in train])
        yh = torch.tensor([classes.index(getattr(s, key)) for s, _ in test])
        torch.manual_seed(seed)
        lin = torch.nn.Linear(visual.vocab_size, len(classes))
        opt = torch.optim.Adam(lin.parameters(), lr=0.05)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(lin(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            result[f"{key}_accuracy"] = round(float((lin(xh).argmax(1) == yh).float().mean()), 4)
    return result


# -- zero-shot tagging and alignment (VideoBERT) ----------------------------------------------------------
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


def _segment_words_of(visual: VisualTokenizer, path: Path, truth: GroundTruth, decode=None) -> dict[int, list[int]]:
    """Visual words of the windows that tile each ground-truth segment of one video: {segment index: words}
    (`decode`: videobert.reader.DecodeOptions, FFmpeg's defaults when None)."""
    from videobert.reader import DecodeOptions, read_video

    windows = sorted((w, si) for si, seg in enumerate(truth.segments)
                     for w in segment_windows(seg.t0, seg.t1, visual.spec.seconds))
    v = read_video(path, visual.spec, windows=[w for w, _ in windows], with_text=False, decode=decode or DecodeOptions())
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


def read_labelled(visual: VisualTokenizer, data: str | Path, progress: bool = True, decode=None) -> LabelledVideos:
    """Every video under `data` with a sidecar .json (decoded with `decode`, videobert.reader.DecodeOptions:
    FFmpeg's defaults when None); unreadable ones are recorded in `failures`."""
    from tqdm import tqdm

    from videobert.reader import VideoReadError, list_videos, load_truth

    out = LabelledVideos([], [])
    for path in tqdm(list_videos(data), desc="segments", unit="video", disable=not progress):
        truth = load_truth(path)
        if truth is None:
            continue
        try:
            out.videos.append((truth, _segment_words_of(visual, path, truth, decode)))
        except VideoReadError as e:
            out.failures.append(str(e))
    return out


def segment_words(visual: VisualTokenizer, data: str | Path, progress: bool = True) -> list[tuple[Segment, list[int]]]:
    """Every ground-truth segment under `data` with the visual words of the windows that tile it."""
    return read_labelled(visual, data, progress).segments()


def truth_of(seg: Segment, slot: str) -> str | None:
    """The ground truth of a slot in a segment: its field of the slot's name (verb, noun, or an extra one)."""
    v = getattr(seg, slot, None) if slot in Segment.model_fields else (seg.model_extra or {}).get(slot)
    return v if isinstance(v, str) else None


def scored_slots(tagger: "Tagger", segments: list[Segment]) -> list[str]:
    """The slots of the tagger's label set that every segment labels."""
    return [s for s in tagger.labels.names if segments and all(truth_of(seg, s) is not None for seg in segments)]


def evaluate_alignment(tagger: "Tagger", labelled: LabelledVideos, seed: int = 0) -> dict:
    """Linguistic-visual alignment on held-out videos: each correct narration line scored with the visual
    words of its own segment (positive) and of a segment of the same video that differs from it in every
    scored slot (negative). Reports the ROC AUC of the alignment score (chance 0.5)."""
    rng = np.random.default_rng(seed)
    slots = scored_slots(tagger, [seg for seg, _ in labelled.segments()])
    texts, words, labels = [], [], []
    for truth, by_seg in labelled.videos:
        for line in truth.narration:
            if line.kind != "instruction" or line.segment not in by_seg:
                continue
            seg = truth.segments[line.segment]
            others = [si for si in by_seg
                      if all(truth_of(truth.segments[si], s) != truth_of(seg, s) for s in slots)]
            if not others or not slots:
                continue
            texts += [line.text, line.text]
            words += [by_seg[line.segment], by_seg[others[rng.integers(len(others))]]]
            labels += [1, 0]
    if not labels:
        raise ValueError("no narration lines with ground truth to align")
    scores = [r.alignment for s in range(0, len(texts), 64)
              for r in tagger.score(words[s:s + 64], texts[s:s + 64])]
    pos = np.array([sc for sc, y in zip(scores, labels) if y == 1])
    neg = np.array([sc for sc, y in zip(scores, labels) if y == 0])
    auc = float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))
    return {"alignment_auc": round(auc, 4), "pairs": len(pos), "alignment_chance": 0.5}


def evaluate_zero_shot(tagger: "Tagger", labelled: LabelledVideos, batch_size: int = 64) -> dict:
    """The DEMO_WORLD protocol: video only, no subtitles; each ground-truth segment's visual words fill the
    template; top-1 / top-3 of each slot the ground truth labels (`verb_top1`, `noun_top3`, ...), and
    `both_top1`, every scored slot right at once. Chance is one over the size of each label set (their
    product for `both_top1`). Works on any directory of videos with sidecar .json files that follow the spec."""
    segs = labelled.segments()
    if not segs:
        raise ValueError("no video with a ground-truth .json and readable segments")
    slots = scored_slots(tagger, [seg for seg, _ in segs])
    if not slots:
        raise ValueError(f"the ground truth labels none of the slots {list(tagger.labels.names)}")
    hits = {f"{s}_top{k}": 0 for s in slots for k in (1, 3)} | {"both_top1": 0}
    confusion: dict[str, dict[str, dict[str, int]]] = {s: {} for s in slots}
    for s in range(0, len(segs), batch_size):
        chunk = segs[s:s + batch_size]
        for (seg, _), r in zip(chunk, tagger.score([w for _, w in chunk])):
            right = True
            for slot in slots:
                ranked = [x["label"] for x in r.labels[slot]]
                want = truth_of(seg, slot)
                hits[f"{slot}_top1"] += ranked[0] == want
                hits[f"{slot}_top3"] += want in ranked[:3]
                right = right and ranked[0] == want
                row = confusion[slot].setdefault(want, {})
                row[ranked[0]] = row.get(ranked[0], 0) + 1
            hits["both_top1"] += right
    n = len(segs)
    sizes = {slot: len(words) for slot, words in tagger.labels.slots}
    result = {k: round(v / n, 4) for k, v in hits.items()}
    result.update(n_segments=n, failures=labelled.failures, slots=slots,
                  **{f"{slot}_confusion": confusion[slot] for slot in slots},
                  chance={**{f"{slot}_top1": 1 / sizes[slot] for slot in slots},
                          "both_top1": float(np.prod([1 / sizes[slot] for slot in slots]))})
    return result


def evaluate_held_out(tagger: "Tagger", data: str | Path, progress: bool = True) -> dict:
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
    """The zero-shot figures as a small table: a column per scored slot (and `both` with two or more)."""
    slots = r.get("slots") or [k.removesuffix("_top1") for k in r if k.endswith("_top1") and k != "both_top1"]
    cols = slots + (["both"] if len(slots) > 1 else [])
    chance = r["chance"] if isinstance(r.get("chance"), dict) else {}  # older records: the alignment's 0.5
    rows = [("", *cols),
            ("top-1", *[f"{r[f'{c}_top1']:.3f}" for c in cols]),
            ("top-3", *[f"{r[f'{c}_top3']:.3f}" for c in slots], *([""] if len(slots) > 1 else [])),
            ("chance top-1", *[f"{chance[f'{c}_top1']:.3f}" if f"{c}_top1" in chance else "" for c in cols])]
    text = "\n".join("  ".join(c.rjust(12) for c in row) for row in rows) + f"\n({r['n_segments']} segments)"
    if "alignment_auc" in r:
        text += f"\nalignment AUC {r['alignment_auc']:.3f} over {r['pairs']} narration lines (chance 0.5)"
    return text
