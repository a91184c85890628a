"""`vbs train demo`'s recipe on a tiny preset: every step runs once, the model card reports what each step
reached, and a second run reuses the finished steps."""

import json

import pytest

from videobert import demo

pytestmark = pytest.mark.slow

TINY = demo.Preset(train_videos=6, heldout_videos=3, min_seconds=10, max_seconds=12, encoder_epochs=1,
                   vocab_depth=1, vocab_branching=6, pretrain_steps=8)


def test_demo_builds_a_model_and_writes_its_card(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.PRESETS, "tiny", TINY)
    card = demo.build_demo(tmp_path, preset="tiny", seed=3, workers=2, device="cpu")
    assert card["heldout_seed"] == 1003 and card["recipe"]["train_videos"] == 6
    assert set(card["step_seconds"]) == {"corpus", "heldout_corpus", "encoder", "vocab", "eval_encoder", "videobert",
                                         "eval_zero_shot"}
    zs = card["heldout_zero_shot"]
    assert zs["n_segments"] > 0 and 0 <= zs["verb_top1"] <= zs["verb_top3"] <= 1
    assert card["vocab"]["vocab_size"] == 6
    on_disk = json.loads((tmp_path / "model_card.json").read_text())
    assert on_disk["heldout_zero_shot"] == zs
    md = (tmp_path / "model_card.md").read_text()
    assert "tiny preset, seed 3" in md and "| top-1 |" in md and "word head verb" in md
    for part in ("encoder/encoder.safetensors", "vocab/vocab.json", "videobert/pretrain_summary.json"):
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
