"""The whole recipe end to end through the `vbs` command, on a small generated corpus: corpus -> encoder ->
visual words -> VideoBERT -> tags and evaluations on held-out videos of another seed."""

import json
import subprocess
import sys

import pytest

from tests.conftest import is_share_of, vbs
from videobert import world
from videobert.checkpoint import model_id

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(trained_model):
    return trained_model


def held_out_segments(model) -> int:
    return sum(len(json.loads(p.read_text())["segments"]) for p in (model / "data" / "heldout").glob("shapes_*.json"))


def test_the_trained_encoder_beats_chance_on_held_out_videos(model):
    out = vbs("eval", "encoder", "--encoder", model / "encoder", "--vocab", model / "vocab", "--data",
              model / "data" / "heldout", "--n", 40, "--json", model / "enc.json", "-q")
    r = json.loads((model / "enc.json").read_text())
    assert "trained" in out and "untrained" in out
    assert r["trained"]["n"] >= 30, "enough held-out narration to rank among"
    assert r["trained"]["r_at_5"] >= 2 * r["trained"]["chance_r_at_5"], r["trained"]
    assert r["trained"]["r_at_5"] > r["untrained"]["r_at_5"]
    # reported for every encoder with a spoken-word head (this small model's head is near chance: 40 steps),
    # over every labelled held-out clip
    assert r["labelled_clips"] == r["clips"] > 0
    assert is_share_of(r["trained"]["word_head_verb"], r["clips"]) and is_share_of(r["trained"]["word_head_noun"], r["clips"])


def test_tag_writes_one_line_per_clip_with_the_documented_fields(model):
    video = sorted((model / "data" / "heldout").glob("*.mp4"))[0]
    truth = json.loads(video.with_suffix(".json").read_text())
    rows = [json.loads(line) for line in vbs("tag", video, "--model", model).splitlines()]
    assert len(rows) == int(truth["duration"] // 1.5)
    for k, row in enumerate(rows):
        assert set(row) == {"t0", "t1", "labels", "alignment", "subtitle", "model", "text_source"}
        assert row["text_source"] == "subtitles"  # the corpus's videos carry their narration as subtitles
        assert row["model"] == model_id(model).id  # which build of which model wrote it
        assert (row["t0"], row["t1"]) == (1.5 * k, 1.5 * k + 1.5)
        assert [x["label"] for x in sorted(row["labels"]["verb"], key=lambda x: x["label"])] == sorted(world.VERBS)
        assert {x["label"] for x in row["labels"]["noun"]} == set(world.NOUNS)
        scores = [x["score"] for x in row["labels"]["verb"]]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-3
        assert (row["alignment"] is None) == (row["subtitle"] == "")
        if row["alignment"] is not None:
            assert 0 < row["alignment"] < 1  # a sigmoid


def test_tag_with_user_label_sets_and_a_bad_label(model, tmp_path):
    video = sorted((model / "data" / "heldout").glob("*.mp4"))[0]
    rows = [json.loads(line) for line in vbs("tag", video, "--model", model, "--template", "watch me [MASK] it",
                                             "--slot", "action=grow,shrink", "--embedding").splitlines()]
    assert set(rows[0]["labels"]) == {"action"} and len(rows[0]["embedding"]) == 384
    r = subprocess.run([sys.executable, "-m", "ops.cli", "tag", str(video), "--model", str(model), "--slot",
                        "verb=grow,photosynthesize", "--slot", "noun=star"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "'photosynthesize' of slot 'verb' is not a single WordPiece token" in r.stderr


def test_zero_shot_evaluation_reports_the_protocol_fields(model):
    out = vbs("eval", "zero-shot", "--model", model, "--data", model / "data" / "heldout", "--json", model / "zs.json", "-q")
    r = json.loads((model / "zs.json").read_text())
    n_segments = sum(len(json.loads(p.read_text())["segments"]) for p in (model / "data" / "heldout").glob("*.json")
                     if p.name != "corpus.json")
    assert r["n_segments"] == n_segments
    # the figures are the share of segments whose top label is the truth, scored here segment by segment
    from videobert.evaluate import read_labelled
    from videobert.tagging import Tagger

    tagger = Tagger(model)
    segs = read_labelled(tagger.visual, model / "data" / "heldout", progress=False).segments()
    scored = tagger.score([w for _, w in segs])
    verb = [s.labels["verb"][0]["label"] == seg.verb for (seg, _), s in zip(segs, scored)]
    noun = [s.labels["noun"][0]["label"] == seg.noun for (seg, _), s in zip(segs, scored)]
    assert r["verb_top1"] == round(sum(verb) / len(segs), 4) and r["noun_top1"] == round(sum(noun) / len(segs), 4)
    assert r["both_top1"] == round(sum(v and n for v, n in zip(verb, noun)) / len(segs), 4)
    assert r["verb_top1"] <= r["verb_top3"] and r["noun_top1"] <= r["noun_top3"]
    assert r["slots"] == ["verb", "noun"] and r["chance"] == {"verb_top1": 1 / 8, "noun_top1": 1 / 6, "both_top1": 1 / 48}
    assert "top-1" in out and "chance" in out and "0.125" in out and "0.167" in out and "0.021" in out


def test_an_unreadable_held_out_video_is_recorded_not_fatal(model, tmp_path):
    import shutil

    from videobert.evaluate import evaluate_held_out
    from videobert.tagging import Tagger

    for p in sorted((model / "data" / "heldout").glob("shapes_*"))[:6]:  # two videos with their .srt and .json
        shutil.copy(p, tmp_path / p.name)
    good = sorted(tmp_path.glob("*.json"))[0]
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    shutil.copy(good, tmp_path / "broken.json")
    r = evaluate_held_out(Tagger(model), tmp_path, progress=False)
    assert [f.split(":")[0].endswith("broken.mp4") for f in r["failures"]] == [True]
    assert r["n_segments"] > 0 and "alignment_auc" in r


def test_words_probe_reports_verb_and_noun(model):
    out = vbs("eval", "words", "--model", model, "--data", model / "data" / "train", "--json", model / "words.json", "-q")
    r = json.loads((model / "words.json").read_text())
    assert is_share_of(r["verb_accuracy"], r["test_segments"]) and is_share_of(r["noun_accuracy"], r["test_segments"])
    assert r["vocab_size"] == 24 and r["test_segments"] == held_out_segments(model)
    assert "linear probe" in out


def test_pretraining_resumes_after_an_interruption(model, tmp_path, monkeypatch):
    from videobert import pretrain as pre

    cfg = pre.PretrainConfig(steps=30, batch_size=8, checkpoint_every=10)
    args = (model / "data" / "train", model / "encoder", model / "vocab", tmp_path / "vb")
    real_collate, calls = pre.collate, {"n": 0}

    def collate_then_die(*a, **kw):  # injected failure: the process is interrupted during step 16
        calls["n"] += 1
        if calls["n"] == 16:
            raise KeyboardInterrupt
        return real_collate(*a, **kw)

    monkeypatch.setattr(pre, "collate", collate_then_die)
    with pytest.raises(KeyboardInterrupt):
        pre.pretrain(*args, cfg, device="cpu", progress=False)
    monkeypatch.setattr(pre, "collate", real_collate)
    summary = pre.pretrain(*args, cfg, device="cpu", progress=False)
    assert summary["steps"] == 30
    assert [h["step"] for h in summary["history"]] == [10, 20, 30], "resumed at the step-10 checkpoint"
    with pytest.raises(ValueError, match="another configuration"):
        pre.pretrain(*args, pre.PretrainConfig(steps=40, batch_size=8, checkpoint_every=10), device="cpu", progress=False)


def test_finetune_compares_pretrained_with_not_pretrained(model):
    out = vbs("finetune", "--model", model, "--data", model / "data" / "train", "--eval-data", model / "data" / "heldout",
              "--task", "verb", "--budget", 60, "--epochs", 3, "--json", model / "ft.json", "-q")
    r = json.loads((model / "ft.json").read_text())
    assert r["test_segments"] == held_out_segments(model) and r["chance_accuracy"] == 0.125
    for name in ("pretrained", "not_pretrained"):
        assert is_share_of(r[name]["accuracy"], r["test_segments"]) and 0 <= r[name]["macro_f1"] <= 1
    assert r["train_segments"] == 60 and "macro-F1" in out
