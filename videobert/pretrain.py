"""Pretraining VideoBERT (`vbs train videobert`): text MLM, masked visual words and linguistic-visual
alignment over the narration and visual words of a corpus, plus text-only and video-only sequences as in
the paper. Checkpoints every few hundred steps and resumes from the last one after an interruption."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from videobert.clipset import ClipSet, load_clipset
from videobert.model import IGNORE, VideoBertConfig, VideoBertForPreTraining
from videobert.precision import PrecisionTrial, autocast
from videobert.sequences import Example, SequenceBuilder, collate
from videobert.device import pick_device
from videobert.text import MAX_TEXT_TOKENS, load_tokenizer
from videobert.visual_words import VisualTokenizer

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    mix: dict = field(default_factory=lambda: {"cross": 0.7, "text": 0.1, "video": 0.2})  # sequence kinds
    objectives: tuple = ("text", "video", "align")  # which losses; ablations switch some off
    negative_prob: float = 0.5  # cross-modal sequences whose video is swapped for an alignment negative
    text_mask_prob: float = 0.15
    video_mask_prob: float = 0.15
    max_text_tokens: int = MAX_TEXT_TOKENS
    max_video_tokens: int = 6
    video_run: tuple = (3, 8)  # lengths of video-only sequences (consecutive clips)
    pair_context_s: float = 0.5  # a line is paired with the clips overlapping it, widened by this much
    checkpoint_every: int = 250
    grounding_floor: float = 0.05  # masking weight of a text token the picture does not explain (see sequences)
    init_visual_from_text: bool = True  # start visual words near the grounded words spoken over them
    num_layers: int = 6
    precision: str = "auto"  # the forward pass: "bf16" autocast, "fp32", or "auto" (videobert.precision)
    seed: int = 0


@dataclass
class Corpus:
    """What pretraining draws from: visual words per clip, per video, and (line, clips) pairs."""

    words: list[np.ndarray]  # per video: visual word of each back-to-back clip, in order
    pairs: list[tuple[list[int], int, list[int]]]  # (text ids, video index, clip indices)
    lines: list[str]


def build_corpus(cs: ClipSet, tokenizer: VisualTokenizer, builder: SequenceBuilder, cfg: PretrainConfig,
                 progress: bool = False) -> Corpus:
    words_all = tokenizer.tokens(cs.frames, progress).numpy()
    words, pairs, lines = [], [], []
    for vi in range(len(cs.videos)):
        idx = np.flatnonzero(cs.video == vi)
        idx = idx[np.argsort(cs.t0[idx])]
        words.append(words_all[idx])
        t0, t1 = cs.t0[idx], cs.t1[idx]
        for cue in cs.cues[vi]:
            near = np.flatnonzero((t0 < cue.end + cfg.pair_context_s) & (t1 > cue.start - cfg.pair_context_s))
            if len(near) == 0:
                continue
            if len(near) > cfg.max_video_tokens:
                mid = len(near) // 2
                near = near[mid - cfg.max_video_tokens // 2: mid - cfg.max_video_tokens // 2 + cfg.max_video_tokens]
            pairs.append((builder.text_ids(cue.text), vi, near.tolist()))
            lines.append(cue.text)
    return Corpus(words, pairs, lines)


def sample_example(corpus: Corpus, builder: SequenceBuilder, cfg: PretrainConfig, rng: np.random.Generator) -> Example:
    kinds = list(cfg.mix)
    kind = kinds[rng.choice(len(kinds), p=np.array([cfg.mix[k] for k in kinds]) / sum(cfg.mix.values()))]
    text_p = cfg.text_mask_prob if "text" in cfg.objectives else 0.0
    video_p = cfg.video_mask_prob if "video" in cfg.objectives else 0.0
    if kind == "video" or not corpus.pairs:
        vi = int(rng.integers(len(corpus.words)))
        w = corpus.words[vi]
        n = int(min(len(w), rng.integers(cfg.video_run[0], cfg.video_run[1] + 1)))
        s = int(rng.integers(0, len(w) - n + 1))
        ids, types = builder.build(None, w[s:s + n].tolist())
        return builder.mask_example(ids, types, rng, 0.0, max(video_p, 0.15))
    text_ids, vi, clips = corpus.pairs[int(rng.integers(len(corpus.pairs)))]
    if kind == "text":
        ids, types = builder.build(text_ids, None)
        return builder.mask_example(ids, types, rng, max(text_p, 0.15), 0.0)
    video = corpus.words[vi][clips].tolist()
    if "align" in cfg.objectives and rng.random() < cfg.negative_prob:
        other = int(rng.integers(len(corpus.words)))  # a random window, usually of another video
        w = corpus.words[other]
        s = int(rng.integers(0, max(1, len(w) - len(video) + 1)))
        ids, types = builder.build(text_ids, w[s:s + len(video)].tolist())
        # masked exactly like a positive, so [MASK] tokens cannot give the answer away; nothing to predict
        ex = builder.mask_example(ids, types, rng, text_p, video_p, align=0)
        return Example(ex.ids, ex.types, [IGNORE] * len(ex.ids), 0)
    ids, types = builder.build(text_ids, video)
    return builder.mask_example(ids, types, rng, text_p, video_p, align=1 if "align" in cfg.objectives else -1)


def train_step(model: VideoBertForPreTraining, opt: torch.optim.Optimizer, batch: dict, device: torch.device,
               precision: str):
    """One VideoBERT training step on a collated batch (the scheduler is the caller's): the forward pass in
    `precision` (the model casts its logits to float32 before the losses), gradients clipped to norm 1. Returns
    the model's output, or None when the batch had nothing to learn from (no loss) and nothing changed."""
    with autocast(device, precision):
        o = model(**batch)
    if o.loss is None:
        return None
    opt.zero_grad(set_to_none=True)
    o.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return o


def pretrain(data: str | Path, encoder_dir: str | Path, vocab_dir: str | Path, out: str | Path,
             cfg: PretrainConfig = PretrainConfig(), device: str | torch.device | None = None, workers: int = 1,
             progress: bool = True, restart: bool = False, init: str = "minilm", text=None) -> dict:
    """Pretrain on every video under `data`. Resumes from `out` when it holds an unfinished run. `text`: where the
    narration comes from (videobert.speech.TextSource; default: subtitles)."""
    device = pick_device(device)
    trial = PrecisionTrial(cfg.precision, device, "pretrain videobert")  # a bad setting fails here, before reading videos
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vt = VisualTokenizer.load(encoder_dir, vocab_dir, device)
    cs = load_clipset(data, vt.spec, workers=workers, progress=progress, text=text)
    mcfg = VideoBertConfig(visual_vocab_size=vt.vocab_size, num_layers=cfg.num_layers)
    builder = SequenceBuilder(load_tokenizer(), mcfg, cfg.max_text_tokens)
    corpus = build_corpus(cs, vt, builder, cfg, progress)
    step_pairs = [(t, corpus.words[vi][clips].tolist()) for t, vi, clips in corpus.pairs]
    builder.fit_grounding(step_pairs, floor=cfg.grounding_floor)
    log.info("pretraining on %d videos, %d clips, %d narration lines, %s", len(corpus.words), len(cs), len(corpus.pairs),
             trial.chosen or "bf16 or float32, whichever this CPU runs faster")

    model = (VideoBertForPreTraining.from_minilm(mcfg, seed=cfg.seed) if init == "minilm"
             else VideoBertForPreTraining(mcfg)).to(device)
    if cfg.init_visual_from_text and step_pairs:
        n = model.init_visual_words(step_pairs, builder.weight)
        log.info("initialised %d of %d visual words from the narration spoken over them", n, mcfg.visual_vocab_size)
    no_decay = ("bias", "LayerNorm.weight", "norm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps)
                                              * max(0.0, 1 - s / cfg.steps))
    rng = np.random.default_rng(cfg.seed)
    state_path = out / "trainer_state.pt"
    step, history = 0, []
    if state_path.is_file() and not restart:
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{out} holds a run with another configuration; pass restart=True (--restart) to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        step, history = state["step"], state["history"]
        log.info("resuming %s at step %d of %d", out, step, cfg.steps)

    meta = {"pretrain": asdict(cfg), "encoder": str(Path(encoder_dir).resolve()), "vocab": str(Path(vocab_dir).resolve()),
            "masking_weights": {str(k): round(v, 4) for k, v in builder.weight.items()}, "init": init}

    def checkpoint() -> None:
        model.save(out, meta)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": rng.bit_generator.state, "step": step, "history": history, "config": asdict(cfg)},
                   out / "trainer_state.pt.partial")
        (out / "trainer_state.pt.partial").replace(state_path)

    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain videobert", unit="step", disable=not progress)
    model.train()
    window: dict[str, list[float]] = {}
    while step < cfg.steps:
        batch = collate([sample_example(corpus, builder, cfg, rng) for _ in range(cfg.batch_size)], device)
        t = time.perf_counter()
        o = train_step(model, opt, batch, device, trial.current())
        if o is None:
            continue
        sched.step()
        trial.record(time.perf_counter() - t)
        step += 1
        for name in ("text_mlm_loss", "video_mlm_loss", "align_loss"):
            v = getattr(o, name)
            if v is not None:
                window.setdefault(name, []).append(v.item())
        bar.update()
        bar.set_postfix({k.split("_")[0]: f"{np.mean(v[-50:]):.2f}" for k, v in window.items()})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            history.append({"step": step, **{k: float(np.mean(v[-cfg.checkpoint_every:])) for k, v in window.items()}})
            checkpoint()
    bar.close()
    summary = {"text_source": text.route if text is not None else "subtitles",
               "steps": step, "seconds_this_run": round(time.perf_counter() - start, 1), "history": history,
               "videos": len(corpus.words), "pairs": len(corpus.pairs), "device": str(device),
               **trial.summary()}
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
