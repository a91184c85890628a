"""`vbs train demo`'s recipe on a tiny preset: every step runs once, the model card reports what each step
reached, and a second run reuses the finished steps."""

import json

import pytest

from tests.conftest import is_share_of
from videobert import demo

pytestmark = pytest.mark.slow

TINY = demo.Preset(train_videos=6, heldout_videos=3, min_seconds=10, max_seconds=12, encoder_epochs=1,
                   vocab_depth=1, vocab_branching=6, pretrain_steps=8)


def test_demo_builds_a_model_and_writes_its_card(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.PRESETS, "tiny", TINY)
    card = demo.build_demo(tmp_path, preset="tiny", seed=3, workers=2, device="cpu")
    assert card["heldout_seed"] == 1003 and card["recipe"]["train_videos"] == 6
    assert set(card["step_seconds"]) == {"corpus", "heldout_corpus", "speech_lm", "encoder", "vocab", "eval_encoder",
                                         "videobert", "eval_zero_shot"}
    zs = card["heldout_zero_shot"]
    assert zs["n_segments"] == sum(len(json.loads(p.read_text())["segments"])
                                   for p in (tmp_path / "data" / "heldout").glob("shapes_*.json"))
    assert is_share_of(zs["verb_top1"], zs["n_segments"]) and zs["verb_top1"] <= zs["verb_top3"]
    assert zs["chance"] == {"verb_top1": 1 / 8, "noun_top1": 1 / 6, "both_top1": 1 / 48}
    assert card["vocab"]["vocab_size"] == 6
    from videobert.precision import resolve

    # auto: float32, or on a bf16 CPU the faster of the two its first 8 steps timed (the tiny encoder's one step is
    # the trial's first, in bf16; VideoBERT's 8 finish it)
    if resolve(TINY.precision, "cpu") == "fp32":
        assert card["encoder"]["precision"] == card["videobert"]["precision"] == "fp32"
    else:
        trial = card["videobert"]["precision_trial"]
        assert card["encoder"]["precision"] == "bf16"
        assert card["videobert"]["precision"] == ("fp32" if trial["bf16"] >= 1.2 * trial["fp32"] else "bf16")
    on_disk = json.loads((tmp_path / "model_card.json").read_text())
    assert on_disk["heldout_zero_shot"] == zs
    md = (tmp_path / "model_card.md").read_text()
    assert "tiny preset, seed 3" in md and "| top-1 |" in md and "word head verb" in md
    assert "| chance top-1 | 0.125 | 0.167 | 0.021 |" in md  # from the label sets' sizes
    lm = card["speech_lm"]  # the speech recogniser's language model, built from the 6 videos' narration
    assert lm["videos"] == 6 and lm["lines"] > 0 and lm == json.loads((tmp_path / "speech" / "speech_lm.json").read_text())
    assert f"{lm['lines']} lines ({lm['distinct_lines']} distinct), {lm['words']} words" in md
    for part in ("encoder/encoder.safetensors", "vocab/vocab.json", "videobert/pretrain_summary.json",
                 "speech/lm.arpa", "speech/words.dict"):
        assert (tmp_path / part).is_file(), part

    again = demo.build_demo(tmp_path, preset="tiny", seed=3, workers=2, device="cpu")
    assert again["heldout_zero_shot"] == zs and again["step_seconds"] == card["step_seconds"]  # nothing redone
    with pytest.raises(ValueError, match="holds a build of preset 'tiny', seed 3"):
        demo.build_demo(tmp_path, preset="tiny", seed=4, workers=2, device="cpu")
    assert sorted(p.name for p in (tmp_path / "data" / "train").glob("*.mp4")) == sorted(
        f"shapes_3_{i:05d}.mp4" for i in range(6))  # nothing of seed 4 written


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        demo.build_demo(tmp_path, preset="huge")


@pytest.mark.parametrize("record", ["recipe.json", "model_card.json"])
def test_a_build_of_another_preset_or_seed_is_refused(tmp_path, monkeypatch, record):
    """Steps are reused by what a directory holds: a quick build's corpus must not become a full build's."""
    monkeypatch.setitem(demo.PRESETS, "tiny", TINY)
    from dataclasses import asdict

    (tmp_path / record).write_text(json.dumps({"preset": "quick", "seed": 0, "recipe": asdict(demo.PRESETS["quick"])}))
    for preset, seed in (("tiny", 0), ("quick", 1)):
        with pytest.raises(ValueError, match="holds a build of preset 'quick', seed 0"):
            demo.build_demo(tmp_path, preset=preset, seed=seed, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [record]  # nothing started


def test_a_build_of_an_older_recipe_is_refused_and_named(tmp_path):
    from dataclasses import asdict

    older = {**asdict(demo.PRESETS["quick"]), "encoder_epochs": 6}
    (tmp_path / "model_card.json").write_text(json.dumps({"preset": "quick", "seed": 0, "recipe": older}))
    with pytest.raises(ValueError, match=r"seed 0 of an older recipe \(\{'encoder_epochs': 6\}"):
        demo.build_demo(tmp_path, preset="quick", seed=0)


def test_a_build_from_before_the_slot_loss_was_recorded_is_refused(tmp_path):
    from dataclasses import asdict

    before = {k: v for k, v in asdict(demo.PRESETS["quick"]).items() if k not in ("slot_loss", "slot_q")}
    (tmp_path / "recipe.json").write_text(json.dumps({"preset": "quick", "seed": 0, "recipe": before}))
    with pytest.raises(ValueError, match=r"older recipe \(\{'slot_loss': '\(not recorded\)', 'slot_q': '\(not recorded\)'\}"):
        demo.build_demo(tmp_path, preset="quick", seed=0)


def test_a_build_from_before_a_field_that_keeps_its_behaviour_is_reused(tmp_path):
    from dataclasses import asdict

    before = {k: v for k, v in asdict(demo.PRESETS["quick"]).items() if k not in demo.UNRECORDED_MEANT}
    (tmp_path / "recipe.json").write_text(json.dumps({"preset": "quick", "seed": 0, "recipe": before}))
    wanted = {"preset": "quick", "seed": 0, "recipe": asdict(demo.PRESETS["quick"])}
    demo.claim(tmp_path, wanted)  # not refused: those fields' defaults are what it did
    assert json.loads((tmp_path / "recipe.json").read_text()) == wanted
    (tmp_path / "recipe.json").write_text(json.dumps({"preset": "quick", "seed": 0, "recipe": {**before, "clip_size": 48}}))
    with pytest.raises(ValueError, match=r"older recipe \(\{'clip_size': 48\}"):
        demo.claim(tmp_path, wanted)


WALL_CLOCK = {"seconds", "seconds_this_run", "wall_seconds"}  # how long a step took: not a property of the model


def _build_in_a_new_process(out, hash_seed: str) -> None:
    """The tiny build in a fresh interpreter: nothing cached in memory, and another string-hash order."""
    import os
    import subprocess
    import sys
    from dataclasses import asdict

    from videobert.precision import cpu_has_fast_bf16

    # a fixed precision: `auto` on a bf16 CPU picks bf16 or float32 by timing its first steps, which a busy machine
    # can tip either way where the two are close (as they are for a model this tiny)
    recipe = {**asdict(TINY), "precision": "bf16" if cpu_has_fast_bf16() else "fp32"}
    code = ("import sys\nfrom videobert import demo\n"
            f"demo.PRESETS['tiny'] = demo.Preset(**{recipe!r})\n"
            f"demo.build_demo({str(out)!r}, preset='tiny', seed=3, workers=2, device='cpu')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600,
                   env={**os.environ, "PYTHONHASHSEED": hash_seed})


def test_a_build_is_deterministic_per_seed(tmp_path):
    """Two builds of one seed and precision, each in its own process, give the same bytes: corpus, encoder, visual
    words, VideoBERT, and the held-out figures (on one machine: the float sums depend on its thread count)."""
    import hashlib

    a, b = tmp_path / "a", tmp_path / "b"
    _build_in_a_new_process(a, "1")
    _build_in_a_new_process(b, "2")
    for part in ["data/train/shapes_3_00000.mp4", "data/heldout/shapes_1003_00002.mp4", "encoder/encoder.safetensors",
                 "videobert/model.safetensors"] + [f"vocab/{p.name}" for p in (a / "vocab").glob("*.safetensors")]:
        assert hashlib.sha256((a / part).read_bytes()).digest() == hashlib.sha256((b / part).read_bytes()).digest(), part

    def figures(d, part):  # a JSON record without what names its own directory or the wall clock
        return {k: v for k, v in json.loads((d / part).read_text()).items()
                if not str(v).startswith(str(d)) and k not in WALL_CLOCK}

    for part in ("vocab/vocab.json", "eval_encoder.json", "eval_zero_shot.json"):
        assert figures(a, part) == figures(b, part), part
    card_a, card_b = (json.loads((d / "model_card.json").read_text()) for d in (a, b))
    assert card_a["encoder"]["final_loss"] == card_b["encoder"]["final_loss"]
    assert card_a["videobert"]["history"] == card_b["videobert"]["history"]
