"""Encoder quality on held-out videos: text-to-clip retrieval (R@1, R@5 among n clips) and the purity of
the visual words with respect to verb and noun, side by side with the same architecture untrained."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from videobert.clipset import ClipSet, load_clipset
from videobert.encoders import ClipEmbedder, build_encoder, load_embedder
from videobert.kmeans import HierarchicalKMeans, KMeansConfig
from videobert.text import SentenceEncoder
from videobert.visual_words import purity

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
        feats = model.features(cs.frames, device=device).to(device)  # one encoder pass for all that follows
        with torch.no_grad():
            emb = model.embed_features(feats).cpu()
            space = model.quantised_space(feats).cpu()
            queries = model.embed_text(texts.to(device)).cpu()
        r = retrieval(emb, queries, pairs, n=n, seed=seed, verbs=cs.verb, nouns=cs.noun)
        if km is None:
            fit_space = space if fit_cs is cs else model.embed_words(fit_cs.frames, device=device)
            km = HierarchicalKMeans.fit(fit_space, kmeans_cfg, device=device)
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
    from videobert.tagging import ModelPaths, segment_words
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
