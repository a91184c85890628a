"""Training the video encoder contrastively against MiniLM sentence embeddings of the narration,
MIL-NCE style (Miech et al. 2020): each clip's candidate positives are the subtitle lines near it (speech
is offset in time and sometimes wrong); every other line in the batch is a negative.

A second objective asks the joint embedding to predict which words are spoken near the clip (a linear
head, multi-label, over every word said in at least `word_min_lines` lines). A sentence embedding blurs
single words: "grow the red circle" and "grow the red star" are near neighbours to MiniLM, so the
contrast alone teaches the picture little about the noun. Predicting the words themselves puts each
word the picture can show into the embedding directly, which is what the visual words then cluster.
It needs nothing but the narration, so it works on any corpus.

A third objective gives each tag slot (by default `verb` and `noun`, the shapes-world words the tags will
choose between) a softmax head on the encoder's features: its target is which of the slot's words are said
in the clip's candidate lines. These heads read the features directly, not the joint embedding that the
sentence contrast pulls toward MiniLM's sentence space (where "circle" and "star" are near neighbours), and
the visual words are fit on their predictions. Narration names a segment's noun right only about 70% of the
time (DEMO_WORLD.md), offset by up to a second, which slows the learning of forms most: nouns are learned late,
so they gain the most from more training. A clip's lines often include a neighbouring
segment's, which names another shape: the slot heads learn multiple-instance style (one of the candidate words
is right, and the picture decides which), not toward the average of the candidates, which taught every such
clip half of the wrong noun (`slot_loss`).

The head learns at `word_lr_mult` times the encoder's rate: it reads unit vectors, so its logits start near
zero and need large weights to become sharp. A clip's candidate lines are those within `bag_context`
seconds of it: wider bags catch more of the speech that runs ahead of or behind the picture, and more lines
of the neighbouring segments. What each setting does to the figures is in docs/MEASURED.md."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from videobert.clipset import BAG_CONTEXT_S, ClipSet, load_clipset
from videobert.device import pick_device
from videobert.encoders import ClipEmbedder, build_encoder, check_arch, save_embedder
from videobert.precision import PrecisionTrial, autocast
from videobert.reader import ClipSpec
from videobert.text import SentenceEncoder
from videobert.world import NOUNS, VERBS

log = logging.getLogger(__name__)

SLOT_LOSSES = ("mil", "soft")


@dataclass
class EncoderTrainConfig:
    arch: str = "conv3d-small"
    arch_config: dict = field(default_factory=dict)  # keyword arguments of the arch (empty: its defaults)
    clip_seconds: float = 1.5
    clip_frames: int = 8
    clip_size: int = 64
    clip_fit: str = "stretch"  # how a non-square frame becomes square: "stretch" each axis, or "pad" with black
    epochs: int = 12
    batch_size: int = 96
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    window_stride: float = 0.75  # training windows start every this many seconds (overlapping clips)
    nce_weight: float = 1.0  # weight of the MIL-NCE sentence contrast (0 switches it off)
    word_weight: float = 1.0  # weight of the spoken-word prediction loss (0 switches it off)
    word_lr_mult: float = 10.0  # the word head's learning rate, as a multiple of lr (it starts far from sharp)
    word_min_lines: int = 5  # words said in fewer narration lines are not predicted
    bag_context: float = 0.5  # a clip's candidate lines: those within this many seconds of it
    # named word sets the picture should tell apart (the tag slots): one softmax each, on the encoder's features
    slots: dict = field(default_factory=lambda: {"verb": list(VERBS), "noun": list(NOUNS)})
    slot_weight: float = 1.0  # weight of the slot losses (0, or no slots, switches them off)
    # how a slot head learns from a clip's candidate words: "mil", one of them is right (-log of their summed
    # probability, the model picks which); "soft", all of them equally (cross-entropy to their average)
    slot_loss: str = "mil"
    slot_q: float = 0.5  # "mil" only: 0 is -log P of the candidates; > 0 down-weights clips the picture contradicts
    precision: str = "auto"  # the encoder's forward pass: "bf16" autocast, "fp32", or "auto" (videobert.precision)
    seed: int = 0

    @property
    def spec(self) -> ClipSpec:
        return ClipSpec(self.clip_seconds, self.clip_frames, self.clip_size, self.clip_fit)


def mil_nce_loss(clip_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """clip_emb (B, D), text_emb (M, D) unit vectors; positives (B, M) bool, at least one per row.

    loss_i = -log( sum_{j in P(i)} exp(s_ij / t) / sum_j exp(s_ij / t) )"""
    scores = clip_emb @ text_emb.T / temperature  # (B, M)
    pos = scores.masked_fill(~positives, float("-inf")).logsumexp(dim=1)
    return (scores.logsumexp(dim=1) - pos).mean()


def _words_of(line: str) -> set[str]:
    """The distinct words of a narration line (lowercase, split on whitespace)."""
    return set(line.lower().split())


def narration_words(lines: list[str], min_lines: int) -> list[str]:
    """The words to predict: every whitespace-separated word said in at least `min_lines` lines, sorted."""
    counts: dict[str, int] = {}
    for line in lines:
        for w in _words_of(line):
            counts[w] = counts.get(w, 0) + 1
    return sorted(w for w, c in counts.items() if c >= min_lines)


def word_targets(lines: list[str], vocab: list[str]) -> torch.Tensor:
    """(L, V) float: 1 where a word of the vocabulary is said in the line."""
    index = {w: k for k, w in enumerate(vocab)}
    out = torch.zeros(len(lines), len(vocab))
    for r, line in enumerate(lines):
        for w in _words_of(line):
            if w in index:
                out[r, index[w]] = 1.0
    return out


def word_loss(logits: torch.Tensor, targets: torch.Tensor, idf: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of (B, V) logits against the spoken words, each weighted by its inverse document
    frequency and normalised per clip (multi-hot targets as a distribution, as in Mahajan et al. 2018):
    rare, telling words ("star") count far more than words said in every line ("the"). Without `idf`, every
    word counts the same (a slot's words, which are all telling)."""
    t = targets * idf if idf is not None else targets
    keep = t.sum(1) > 0
    if not keep.any():
        return logits.sum() * 0.0
    t = t[keep] / t[keep].sum(1, keepdim=True)
    return -(t * logits[keep].log_softmax(dim=1)).sum(1).mean()


def mil_word_loss(logits: torch.Tensor, targets: torch.Tensor, q: float = 0.0) -> torch.Tensor:
    """Multiple-instance softmax loss of (B, V) logits against multi-hot (B, V) candidate words: at least one
    candidate is right, so with P_i = sum_{w in C(i)} p_iw the loss is -log P_i. A clip's bag often holds the
    line of a neighbouring segment (speech runs up to a second ahead of or behind the picture) whose noun is
    another shape's; the soft target would teach half of each such clip's mass to the wrong word, where this
    lets the picture decide between the candidates.

    `q` > 0 makes it the generalised cross-entropy (1 - P_i^q) / q (Zhang and Sabuncu 2018; -log P_i as q -> 0,
    1 - P_i at q = 1): each clip's gradient is that of -log P_i scaled by P_i^q, so clips whose candidates the
    picture keeps contradicting (every line near them names other shapes: `python -m bench.bag_noise` counts
    them) weigh less than those it agrees with, and are not memorised. Clips with no candidate are left out."""
    keep = targets.sum(1) > 0
    if not keep.any():
        return logits.sum() * 0.0
    log_p = logits[keep].log_softmax(dim=1).masked_fill(targets[keep] <= 0, float("-inf")).logsumexp(dim=1)
    if q == 0:
        return -log_p.mean()
    return ((1 - (q * log_p).exp()) / q).mean()


def augment(clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Label-preserving jitter, uint8 (B, T, H, W, 3) in and out: a random crop of 80-100% of the frame
    resized back, horizontal flips (no shapes-world verb depends on left vs right), brightness.

    All in uint8 and int16: resizing uint8 frames is a fast path in PyTorch, far quicker than float32."""
    b, t, h, w, _ = clips.shape
    flip = torch.rand(b, generator=gen) < 0.5
    scale = 0.8 + 0.2 * torch.rand(1, generator=gen).item()
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
    x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
    gain = 0.8 + 0.4 * torch.rand(b, generator=gen)
    crop = clips[:, :, y0:y0 + ch, x0:x0 + cw].reshape(b * t, ch, cw, 3).permute(0, 3, 1, 2)  # (BT, 3, ch, cw) view
    x = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    x = x.reshape(b, t, h, w, 3).to(torch.int16)
    x = torch.where(flip[:, None, None, None, None], x.flip(3), x)
    g = torch.round(gain * 64).to(torch.int16)[:, None, None, None, None]  # gain in 64ths: 255 x 77 fits int16
    return ((x * g + 32) >> 6).clamp_(0, 255).to(torch.uint8)


def check_config(config: EncoderTrainConfig) -> None:
    """A clear ValueError for settings that cannot train: negative weights, no objective at all, a slot with
    fewer than two words or words that are not single lowercase words (narration is matched word by word), a
    negative bag context, a learning-rate multiple or a temperature that is not positive, an unknown slot loss or
    a slot_q outside [0, 1]."""
    if config.nce_weight < 0 or config.word_weight < 0 or config.slot_weight < 0:
        raise ValueError(f"loss weights must be >= 0 (nce_weight={config.nce_weight}, word_weight={config.word_weight}, "
                         f"slot_weight={config.slot_weight})")
    if config.nce_weight == 0 and config.word_weight == 0 and (config.slot_weight == 0 or not config.slots):
        raise ValueError("nce_weight, word_weight and slot_weight are all 0 (or no slots): nothing to train on")
    for name, words in config.slots.items():
        if len(set(words)) < 2 or any(not w or w != w.strip().lower() or " " in w for w in words):
            raise ValueError(f"slot {name!r} needs at least 2 distinct lowercase single words, got {words}")
    if config.bag_context < 0:
        raise ValueError(f"bag_context must be >= 0 seconds, not {config.bag_context}")
    if config.word_lr_mult <= 0:
        raise ValueError(f"word_lr_mult must be > 0, not {config.word_lr_mult}")
    if config.temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {config.temperature}")
    if config.slot_loss not in SLOT_LOSSES:
        raise ValueError(f"slot_loss must be one of {SLOT_LOSSES}, not {config.slot_loss!r}")
    if not 0 <= config.slot_q <= 1:
        raise ValueError(f"slot_q must be between 0 and 1, not {config.slot_q}")


def encoder_step(model: ClipEmbedder, opt: torch.optim.Optimizer, clips: torch.Tensor, text: torch.Tensor,
                 positives: torch.Tensor, words: torch.Tensor, slot_words: dict[str, torch.Tensor],
                 config: EncoderTrainConfig, device: torch.device, precision: str,
                 idf: torch.Tensor | None = None) -> torch.Tensor:
    """One training step of the video encoder and its heads (the scheduler is the caller's): `clips` (B, T, H, W,
    3) uint8, augmented, on `device`; `text` (M, 384) the embeddings of the narration lines of the batch's bags;
    `positives` (B, M) which of them each clip's bag holds; `words` (M, V) the spoken words of each line and
    `slot_words` {slot: (M, W)} its slot words (videobert.train_encoder.word_targets). The forward pass's
    convolutions run in `precision`; the heads and losses in float32. Returns the loss."""
    with autocast(device, precision):
        feats = model.encoder(clips).float()
    emb = model.embed_features(feats)
    loss = config.nce_weight * mil_nce_loss(emb, model.embed_text(text), positives, config.temperature)
    if model.word_head is not None:
        targets = (positives.float() @ words).clamp_(max=1.0)  # (B, V)
        loss = loss + config.word_weight * word_loss(model.word_head(emb), targets, idf)
    for name, logits in model.slot_logits(feats).items():
        targets = (positives.float() @ slot_words[name]).clamp_(max=1.0)  # (B, len(words))
        slot = mil_word_loss(logits, targets, config.slot_q) if config.slot_loss == "mil" else word_loss(logits, targets)
        loss = loss + config.slot_weight * slot
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_encoder(data: str | Path, out: str | Path, config: EncoderTrainConfig = EncoderTrainConfig(),
                  device: str | torch.device | None = None, workers: int = 1, progress: bool = True,
                  clipset: ClipSet | None = None, text=None) -> dict:
    """Train on every video under `data`; writes an encoder checkpoint to `out` after every epoch. `text`: where
    the narration comes from (videobert.speech.TextSource; default: subtitles)."""
    check_arch(config.arch, config.arch_config)  # before minutes of reading videos
    check_config(config)
    device = pick_device(device)
    trial = PrecisionTrial(config.precision, device, "train encoder")  # a bad setting fails here, before reading videos
    out = Path(out)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    cs = clipset if clipset is not None else load_clipset(data, config.spec, workers=workers, progress=progress,
                                                          stride=config.window_stride, text=text)
    clip_bags = cs.bag if config.bag_context == BAG_CONTEXT_S else cs.bags(config.bag_context)
    usable = np.array([i for i in range(len(cs)) if clip_bags[i]], dtype=np.int64)
    if len(usable) < 2:
        raise ValueError(f"{data}: only {len(usable)} clip(s) have narration nearby; need subtitles to train on")
    lines = sorted({t for i in usable for t in clip_bags[i]})
    line_id = {t: k for k, t in enumerate(lines)}
    text_emb = SentenceEncoder(device).encode(lines, progress=progress).to(device)  # (L, 384)
    bags = [[line_id[t] for t in clip_bags[i]] for i in range(len(cs))]
    log.info("training on %d clips with narration nearby (%d distinct lines) of %d clips, %s", len(usable), len(lines),
             len(cs), trial.chosen or "bf16 or float32, whichever this CPU runs faster")

    vocab = narration_words(lines, config.word_min_lines) if config.word_weight > 0 else []
    slots = config.slots if config.slot_weight > 0 else {}
    model = ClipEmbedder(build_encoder(config.arch, **config.arch_config), text_emb.shape[1], vocab, slots).to(device)
    model.encoder.to(memory_format=torch.channels_last_3d)  # oneDNN's preferred layout for 3D convolutions
    line_slots = {name: word_targets(lines, words).to(device) for name, words in slots.items()}  # (L, len(words))
    # a clip's target: the words said in any line near it (the union over its bag)
    line_words = word_targets(lines, vocab).to(device)  # (L, V)
    idf = torch.log(len(lines) / line_words.sum(0).clamp(min=1.0))  # (V,)
    head_params = list(model.word_head.parameters()) if model.word_head is not None else []
    head_ids = {id(p) for p in head_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": config.lr}]
    if head_params:
        groups.append({"params": head_params, "lr": config.lr * config.word_lr_mult})
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    steps_per_epoch = math.ceil(len(usable) / config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total,
                                                pct_start=0.15)
    frames = torch.from_numpy(cs.frames)
    history, start = [], time.perf_counter()
    bar = tqdm(total=total, desc="train encoder", unit="step", disable=not progress)
    for epoch in range(config.epochs):
        model.train()
        order = usable[torch.randperm(len(usable), generator=gen).numpy()]
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size:(s + 1) * config.batch_size]
            if len(idx) < 2:
                continue
            batch_lines = sorted({k for i in idx for k in bags[i]})
            col = {k: c for c, k in enumerate(batch_lines)}
            positives = torch.zeros(len(idx), len(batch_lines), dtype=torch.bool)
            for r, i in enumerate(idx):
                positives[r, [col[k] for k in bags[i]]] = True
            positives = positives.to(device)
            t = time.perf_counter()
            loss = encoder_step(model, opt, augment(frames[idx], gen).to(device), text_emb[batch_lines], positives,
                                line_words[batch_lines], {n: w[batch_lines] for n, w in line_slots.items()}, config,
                                device, trial.current(), idf)
            sched.step()
            losses.append(loss.item())
            trial.record(time.perf_counter() - t)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        save_embedder(model, out, config.spec, {"train": {**asdict(config), "history": history,
                                                         "clips": int(len(usable)), "lines": len(lines),
                                                         "seconds": round(time.perf_counter() - start, 1)}})
    bar.close()
    summary = {"text_source": text.route if text is not None else "subtitles",
               "clips": int(len(usable)), "lines": len(lines), "epochs": config.epochs, "spoken_words": len(vocab),
               "final_loss": history[-1]["loss"], "seconds": round(time.perf_counter() - start, 1),
               "device": str(device), **trial.summary()}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
