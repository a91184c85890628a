"""How long the rest of a demo build takes on this machine (`vbs train demo` prints it).

Each step's work is counted up front from the recipe, in units whose cost on this machine is measured:

  render          pixel-frames rendered and H.264-encoded (corpus steps)
  read            frames decoded into clips (every step that reads videos)
  encoder_step    training steps of the video encoder, one full batch each
  encoder_clip    clips through the encoder in eval mode (visual words, evaluations)
  videobert_step  VideoBERT training steps
  text_line       sequences through a MiniLM-sized BERT, forward only (narration embeddings, zero-shot scoring)
  listen          seconds of audio recognised (a build that trains from speech transcribes its training videos)

The videos are planned exactly as the corpus step will render them (`plan_video` is cheap and deterministic),
so the seconds of video, frames, clips, narration lines and training steps are known before a frame is drawn.
Work spread over worker processes is counted per process. A step costs `setup` (processes started, models
loaded) plus the sum of its amounts times their rates.

The rates come from a short calibration at the start of the build (`calibrate`: the first seconds of three of
the corpus's videos rendered and read back; a warm-up step, then up to two timed training steps, of a throw-away
encoder and VideoBERT of the recipe's configuration, on part of a batch and scaled to the whole; one batch of
narration through a MiniLM-sized BERT), and then from
the build itself: when a step finishes, its measured time, less the estimated cost of the rest of its work, gives
the measured rate of its main unit (the one it spent most on), which replaces the calibrated one for the steps
that follow (`learn`). The calibration uses generators of its own and restores torch's, so the build's results
do not depend on it."""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from videobert.corpus import VideoPlan, plan_video
from videobert.kmeans import KMeansConfig
from videobert.pretrain import PretrainConfig
from videobert.train_encoder import EncoderTrainConfig

STEPS = ("corpus", "heldout_corpus", "speech_lm", "encoder", "vocab", "eval_encoder", "videobert", "eval_zero_shot")

# seconds each step spends on what does not grow with its work (worker processes started, models and the tokenizer
# loaded, k-means fitted): rough figures from tiny builds on a 2-core EPYC, where they are most of the time; small
# next to the work of a real build
SETUP_SECONDS = {"corpus": 1.0, "heldout_corpus": 1.0, "encoder": 2.5, "vocab": 0.3, "eval_encoder": 2.0,
                 "videobert": 2.5, "eval_zero_shot": 1.5,
                 "speech_lm": 2.0}  # all fixed: the CMU dictionary and PyAV loaded, then ~4 ms a video (subtitles only)


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work on this machine (one process; see the module's docstring for the units)."""

    render: float
    read: float
    encoder_step: float
    encoder_clip: float
    videobert_step: float
    text_line: float
    listen: float = float("nan")  # only a build that trains from speech needs it


@dataclass(frozen=True)
class Work:
    """What one step does: fixed seconds, and amounts of the units of `Rates` (per process where it runs in
    several)."""

    setup: float
    units: dict[str, float]

    def seconds(self, rates: Rates) -> float:
        return self.setup + sum(amount * getattr(rates, unit) for unit, amount in self.units.items())

    def main_unit(self, rates: Rates) -> str | None:
        """The unit this step spends most on (None for a step of setup only)."""
        costs = {u: a * getattr(rates, u) for u, a in self.units.items() if a > 0}
        return max(costs, key=costs.get) if costs else None


@dataclass(frozen=True)
class CorpusRecipe:
    """The videos one corpus step renders: `make_corpus(out, videos, seed, min_seconds=, max_seconds=, vary=,
    speech=)`."""

    seed: int
    videos: int
    min_seconds: float
    max_seconds: float
    vary: bool = False
    speech: bool = False  # with an audio track: the calibration renders with one, so that `render` includes it

    def plans(self) -> tuple[VideoPlan, ...]:
        return _plans(self)


@lru_cache(maxsize=4)
def _plans(recipe: CorpusRecipe) -> tuple[VideoPlan, ...]:  # a second for 1,600 videos: planned once per build
    return tuple(plan_video(recipe.seed, i, recipe.min_seconds, recipe.max_seconds, recipe.vary) for i in range(recipe.videos))


def windows(duration: float, seconds: float, stride: float, frames: int) -> list[tuple[float, float]]:
    """The clip windows the reader cuts from a video of `duration` seconds (videobert.reader.ClipCutter): one every
    `stride` seconds while the window's last frame sample (the centre of its last 1/frames slice) lies inside."""
    last = seconds * (1 - 0.5 / frames)
    n = int(math.floor((duration - last) / stride + 1e-9)) + 1 if duration > last else 0
    return [(k * stride, k * stride + seconds) for k in range(n)]


def frames_of(plan: VideoPlan) -> int:
    return int(round(plan.duration * plan.fps))


def processes(workers: int, videos: int) -> int:
    """How many processes share a step's videos (a pool of `workers`, no more than the CPUs or the videos)."""
    return max(1, min(workers, os.cpu_count() or 1, videos)) if workers > 1 else 1


def step_work(train: CorpusRecipe, heldout: CorpusRecipe, enc: EncoderTrainConfig, km: KMeansConfig,
              pre: PretrainConfig, workers: int, listen: bool = False) -> dict[str, Work]:
    """The work of every step of a demo build, counted from the plans of its videos; `listen`: the encoder's step
    transcribes the training videos' audio (the build trains from speech; VideoBERT reads the cached transcripts)."""
    train_plans, held_plans = train.plans(), heldout.plans()
    spec = enc.spec
    p_train, p_held = processes(workers, train.videos), processes(workers, heldout.videos)

    def pixel_frames(plans: tuple[VideoPlan, ...]) -> float:
        return float(sum(frames_of(p) * p.width * p.height for p in plans))

    def frames(plans: tuple[VideoPlan, ...]) -> float:
        return float(sum(frames_of(p) for p in plans))

    def clips(plans: tuple[VideoPlan, ...]) -> int:  # back-to-back clips (visual words, evaluations)
        return sum(len(windows(p.duration, spec.seconds, spec.seconds, spec.frames)) for p in plans)

    usable = 0  # training windows with narration within bag_context seconds (the encoder trains on those)
    for p in train_plans:
        for t0, t1 in windows(p.duration, spec.seconds, enc.window_stride, spec.frames):
            usable += any(n.t0 < t1 + enc.bag_context and n.t1 > t0 - enc.bag_context for n in p.narration)
    full, rest = divmod(usable, enc.batch_size)
    encoder_steps = (full + (rest >= 2)) * enc.epochs
    lines = len({n.text for p in train_plans for n in p.narration})
    queries = sum(n.kind == "instruction" for p in held_plans for n in p.narration)  # retrieval and alignment
    segment_windows = sum(max(1, int(round((s.t1 - s.t0) / spec.seconds))) for p in held_plans for s in p.segments)
    segments = sum(len(p.segments) for p in held_plans)
    s = SETUP_SECONDS
    return {
        "corpus": Work(s["corpus"], {"render": pixel_frames(train_plans) / p_train}),
        "heldout_corpus": Work(s["heldout_corpus"], {"render": pixel_frames(held_plans) / p_held}),
        "speech_lm": Work(s["speech_lm"], {}),  # the narration's subtitles read, not its frames: a fixed estimate
        "encoder": Work(s["encoder"], {"read": frames(train_plans) / p_train, "text_line": lines,
                                       "encoder_step": encoder_steps,
                                       **({"listen": sum(p.duration for p in train_plans) / p_train} if listen else {})}),
        "vocab": Work(s["vocab"], {"encoder_clip": clips(train_plans)}),
        # held-out clips through the trained and the untrained encoder, the training clips through the untrained one
        "eval_encoder": Work(s["eval_encoder"], {"read": frames(held_plans) / p_held, "text_line": queries,
                                                 "encoder_clip": 2 * clips(held_plans) + clips(train_plans)}),
        "videobert": Work(s["videobert"], {"encoder_clip": clips(train_plans), "videobert_step": pre.steps}),
        # read one video at a time; each segment tagged, each narration line scored with two segments
        "eval_zero_shot": Work(s["eval_zero_shot"], {"read": frames(held_plans), "encoder_clip": segment_windows,
                                                     "text_line": segments + 2 * queries}),
    }


def learn(rates: Rates, work: Work, seconds: float) -> Rates:
    """The rates after a step of `work` took `seconds`: its main unit's rate is what the step measured, once the
    estimated cost of its setup and its other units is taken off (at least a tenth of the estimate, so a step
    quicker than its setup does not make the unit free)."""
    unit = work.main_unit(rates)
    if unit is None:
        return rates
    amount = work.units[unit]
    others = work.seconds(rates) - amount * getattr(rates, unit)
    measured = max(seconds - others, 0.1 * amount * getattr(rates, unit)) / amount
    return replace(rates, **{unit: measured})


def format_duration(seconds: float) -> str:
    """`42 s`, `6 min 40 s`, `1 h 05 min`; `under 1 s` below half a second."""
    s = int(seconds + 0.5)  # half up: 0.5 s is "1 s", not "0 s"
    if seconds < 0.5:
        return "under 1 s"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def estimate_line(estimates: dict[str, float]) -> str:
    """`about 6 min 40 s on this machine (corpus 1 min 20 s, encoder 3 min 05 s, ...)`."""
    parts = ", ".join(f"{name} {format_duration(sec)}" for name, sec in estimates.items())
    return f"about {format_duration(sum(estimates.values()))} on this machine ({parts})"


class BuildClock:
    """The estimate of a build in progress: the work of the steps still to run and the rates known so far."""

    def __init__(self, work: dict[str, Work], todo: list[str], rates: Rates, calibration_seconds: float = 0.0):
        self.work, self.todo, self.rates = work, list(todo), rates
        self.calibrated, self.calibration_seconds = rates, calibration_seconds
        self.first = self.remaining()  # the estimate made before any step ran, per step

    def remaining(self) -> dict[str, float]:
        """Estimated seconds of each step still to run."""
        return {name: round(self.work[name].seconds(self.rates), 1) for name in self.todo}

    def done(self, name: str, seconds: float) -> float:
        """Record a finished step (its measured rate replaces the one known so far); returns the seconds left."""
        if name in self.todo:
            self.rates = learn(self.rates, self.work[name], seconds)
            self.todo.remove(name)
        return sum(self.remaining().values())

    def record(self, actual: dict[str, float]) -> dict:
        """What the model card keeps of the estimate (`estimate`): the first estimate per step and in all, what
        each step then took, and the calibration behind it (its seconds, and the rates it measured)."""
        return {"steps": self.first, "total_seconds": round(sum(self.first.values()), 1),
                "actual_seconds": {k: actual[k] for k in self.first if k in actual},
                "calibration_seconds": round(self.calibration_seconds, 1),
                "rates": {k: float(f"{v:.4g}") for k, v in asdict(self.calibrated).items()
                          if math.isfinite(v)}}  # a unit no step left to do needed is not measured


# -- calibration ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn, device: torch.device, calls: int = 2, budget_s: float = 1.0) -> float:
    """Mean seconds of `fn()` over up to `calls` calls after one warm-up call (which picks the kernels); stops
    early once `budget_s` seconds are spent timing (always one call at least). A warm-up that alone takes longer
    than `budget_s` is the measure: on a machine that slow (or that busy) the kernels' set-up is lost in the
    noise, and the calibration stays short."""
    t = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - t
    if warm > budget_s:
        return warm
    spent, n = 0.0, 0
    while n < calls and (n == 0 or spent < budget_s):
        t = time.perf_counter()
        fn()
        _sync(device)
        spent += time.perf_counter() - t
        n += 1
    return spent / n


def measure_video(plans: tuple[VideoPlan, ...], enc: EncoderTrainConfig, speech: bool = False) -> tuple[float, float]:
    """(seconds per pixel-frame rendered and encoded, seconds per frame read into clips) in this process: the
    first segment of each plan (a few seconds of video) rendered into a temporary directory, then read back as
    the encoder's training reads."""
    from videobert.corpus import write_video
    from videobert.reader import read_corpus

    pixel_frames = frames = 0
    with tempfile.TemporaryDirectory(prefix="vbs-eta-") as tmp:
        t = time.perf_counter()
        for k, p in enumerate(plans):
            short = replace(p, name=f"calibration_{k}", segments=p.segments[:1],
                            narration=tuple(n for n in p.narration if n.segment == 0 and n.t1 <= p.segments[0].t1))
            write_video(short, Path(tmp), speech=speech)
            frames += frames_of(short)
            pixel_frames += frames_of(short) * short.width * short.height
        render = (time.perf_counter() - t) / pixel_frames
        t = time.perf_counter()
        read_corpus(tmp, enc.spec, workers=1, progress=False, stride=enc.window_stride)
        read = (time.perf_counter() - t) / frames
    return render, read


# how much faster PocketSphinx recognises the shapes world's narration with the build's own language model (built
# in the build's speech_lm step, after this calibration) than with its general model, which the calibration has:
# 0.05 against 0.27 s a second of audio on a 2-core AMD EPYC (docs/MEASURED.md)
OWN_LM_SPEEDUP = 0.05 / 0.27


def measure_listening(plan: VideoPlan) -> float:
    """Seconds per second of audio recognised in this process, as a build that trains from speech transcribes: the
    first segments of `plan` (about 6 s) rendered with their narration spoken, read and recognised with PocketSphinx's general
    model (scaled by OWN_LM_SPEEDUP to the build's own language model)."""
    from videobert.corpus import write_video
    from videobert.speech import make_recognizer, read_audio, transcribe

    k = next((i + 1 for i, seg in enumerate(plan.segments) if seg.t1 >= 6.0), len(plan.segments))  # about 6 s
    end = plan.segments[k - 1].t1
    short = replace(plan, name="calibration_speech", segments=plan.segments[:k],
                    narration=tuple(n for n in plan.narration if n.segment < k and n.t1 <= end))
    recognizer = make_recognizer("pocketsphinx")
    with tempfile.TemporaryDirectory(prefix="vbs-eta-") as tmp:
        path = write_video(short, Path(tmp), speech=True)
        t = time.perf_counter()
        transcribe(read_audio(str(path)), recognizer)
        return (time.perf_counter() - t) / short.duration * OWN_LM_SPEEDUP


def encoder_probe(enc: EncoderTrainConfig, lines: list[str], device: torch.device, batch: int):
    """A throw-away encoder of the recipe's architecture, heads and optimiser on `batch` random clips of its clip
    spec, paired with `lines` as a batch's bags pair them: (step(precision), embed()), a training step as
    `vbs train encoder` runs it (videobert.train_encoder.encoder_step) and the clips through it in eval mode."""
    from videobert.encoders import ClipEmbedder, build_encoder
    from videobert.train_encoder import augment, encoder_step, narration_words, word_targets

    gen = torch.Generator().manual_seed(0)
    spec = enc.spec
    vocab = narration_words(lines, enc.word_min_lines) if enc.word_weight > 0 else []
    slots = enc.slots if enc.slot_weight > 0 else {}
    model = ClipEmbedder(build_encoder(enc.arch, **enc.arch_config), 384, vocab, slots).to(device)
    model.encoder.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), lr=enc.lr, weight_decay=enc.weight_decay, fused=True)
    clips = torch.randint(0, 256, (batch, spec.frames, spec.size, spec.size, 3), dtype=torch.uint8, generator=gen)
    batch_lines = (lines * (1 + batch // max(1, len(lines))))[: max(2, batch * 3 // 2)]  # about what a batch's bags hold
    text = torch.nn.functional.normalize(torch.randn(len(batch_lines), 384, generator=gen), dim=-1).to(device)
    positives = torch.zeros(batch, len(batch_lines), dtype=torch.bool)
    for r in range(batch):
        positives[r, torch.randint(len(batch_lines), (2,), generator=gen)] = True
    positives = positives.to(device)
    words = word_targets(batch_lines, vocab).to(device)
    slot_words = {name: word_targets(batch_lines, w).to(device) for name, w in slots.items()}

    def step(precision: str) -> None:
        model.train()
        encoder_step(model, opt, augment(clips, gen).to(device), text, positives, words, slot_words, enc, device,
                     precision)

    def embed() -> None:
        model.embed_words(clips, device=device)

    return step, embed


def measure_encoder(enc: EncoderTrainConfig, lines: list[str], device: torch.device, batch: int = 32
                    ) -> tuple[float, float]:
    """(seconds per training step of a full batch, seconds per clip in eval mode) of `encoder_probe` in the
    recipe's precision. Timed on `batch` clips (at most the recipe's batch) and scaled to the recipe's: a step's
    time grows in proportion to its clips (on a 2-core EPYC, 0.11 s at 32 clips and 0.35 s at 96), and a slow CPU
    then spends a third of the time."""
    from videobert.precision import resolve

    amp = resolve(enc.precision, device)
    b = min(batch, enc.batch_size)
    step, embed = encoder_probe(enc, lines, device, b)
    train = _seconds_per_call(lambda: step(amp), device) * enc.batch_size / b
    clip = _seconds_per_call(embed, device, calls=1) / b
    return train, clip


def videobert_probe(pre: PretrainConfig, visual_words: int, lines: list[str], device: torch.device, batch: int):
    """A throw-away VideoBERT of the recipe's size and optimiser on `batch` of the narration `lines` paired with
    random visual words, masked as pretraining masks them: (step(precision), model), a training step as `vbs train
    videobert` runs it (videobert.pretrain.train_step), on a new batch each call."""
    from videobert.model import VideoBertConfig, VideoBertForPreTraining
    from videobert.pretrain import train_step
    from videobert.sequences import SequenceBuilder, collate
    from videobert.text import load_tokenizer

    rng = np.random.default_rng(0)
    cfg = VideoBertConfig(visual_vocab_size=visual_words, num_layers=pre.num_layers)
    builder = SequenceBuilder(load_tokenizer(), cfg, pre.max_text_tokens)
    model = VideoBertForPreTraining(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=pre.lr, fused=True)
    ids = [builder.text_ids(t) for t in lines[:64]] or [[1000] * 8]

    def make_batch() -> dict:
        out = []
        for _ in range(batch):
            words = rng.integers(visual_words, size=int(rng.integers(2, pre.max_video_tokens + 1))).tolist()
            seq, types = builder.build(ids[int(rng.integers(len(ids)))], words)
            out.append(builder.mask_example(seq, types, rng, pre.text_mask_prob, pre.video_mask_prob,
                                            align=int(rng.integers(2))))
        return collate(out, device)

    def step(precision: str) -> None:
        model.train()
        train_step(model, opt, make_batch(), device, precision)

    return step, model


def measure_videobert(pre: PretrainConfig, visual_words: int, lines: list[str], device: torch.device,
                      batch: int = 16) -> tuple[float, float]:
    """(seconds per VideoBERT training step, seconds per sequence through a MiniLM-sized BERT forward only):
    `videobert_probe` in the recipe's precision on `batch` sequences (at most the recipe's batch, the time scaled
    to it as in `measure_encoder`); then its BERT, forward only, on a batch of the lines as the sentence encoder
    reads them (scaled to MiniLM's 6 layers)."""
    from videobert.precision import resolve
    from videobert.text import load_tokenizer

    amp = resolve(pre.precision, device)
    b = min(batch, pre.batch_size)
    step, model = videobert_probe(pre, visual_words, lines, device, b)
    train = _seconds_per_call(lambda: step(amp), device) * pre.batch_size / b
    chunk = (lines * (1 + 32 // max(1, len(lines))))[:32] or ["grow the red circle"]
    enc = load_tokenizer()(chunk, padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
    types = torch.zeros_like(enc["input_ids"])
    model.eval()
    with torch.no_grad():
        line = _seconds_per_call(lambda: model.bert(input_ids=enc["input_ids"], token_type_ids=types,
                                                    attention_mask=enc["attention_mask"]), device, calls=1)
    return train, line * 6 / pre.num_layers / len(chunk)  # MiniLM has 6 layers


def calibrate(train: CorpusRecipe, enc: EncoderTrainConfig, km: KMeansConfig,
              pre: PretrainConfig, device: str | torch.device, needs: set[str] | None = None,
              progress: bool = False) -> Rates:
    """Rates measured on this machine in a few seconds; `needs` (units) skips what no step left will use
    (their rates are then nan). It renders and reads a few seconds of `train`'s first videos and trains on
    its narration lines. Global torch random state is restored afterwards."""
    device = torch.device(device)
    needs = {f.name for f in fields(Rates)} if needs is None else needs
    plans = train.plans()[:3]
    lines = sorted({n.text for p in train.plans() for n in p.narration})
    got = dict.fromkeys((f.name for f in fields(Rates)), float("nan"))
    cuda = [device.index or 0] if device.type == "cuda" else []
    parts = [(units, measure) for units, measure in (
        (("render", "read"), lambda: measure_video(plans, enc, train.speech)),
        (("listen",), lambda: (measure_listening(plans[0]),)),
        (("encoder_step", "encoder_clip"), lambda: measure_encoder(enc, lines, device)),
        (("videobert_step", "text_line"), lambda: measure_videobert(pre, km.branching ** km.depth, lines, device)),
    ) if needs & set(units)]
    with torch.random.fork_rng(devices=cuda), tqdm(total=len(parts), desc="timing this machine", unit="part",
                                                   disable=not progress) as bar:
        for units, measure in parts:
            got.update(zip(units, measure()))
            bar.update()
    return Rates(**got)


def needed_units(work: dict[str, Work], todo: list[str]) -> set[str]:
    return {u for name in todo for u, a in work[name].units.items() if a > 0}
