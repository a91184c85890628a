"""The neighbouring-context diagnostic (bench/tag_context.py) and the context defaults it informed."""

import inspect
import json

import pytest

from bench.tag_context import clip_accuracy, main


def test_clip_accuracy_scores_only_clips_inside_one_segment():
    segments = [{"t0": 0.0, "t1": 3.0, "verb": "grow", "noun": "star"},
                {"t0": 3.0, "t1": 4.0, "verb": "drop", "noun": "ring"}]

    def row(t0, verb, noun):
        return {"t0": t0, "t1": t0 + 1.5, "labels": {"verb": [{"label": verb}], "noun": [{"label": noun}]}}

    rows = [row(0.0, "grow", "star"), row(1.5, "grow", "ring"), row(3.0, "drop", "ring")]  # the last straddles
    assert clip_accuracy(rows, segments) == (1.0, 0.5, 2)
    assert clip_accuracy([], segments) == (0.0, 0.0, 0)


def test_each_clip_is_tagged_alone_by_default():
    from ops.cli import build_parser
    from schemas.config import DecoderSettings
    from videobert.tagging import Tagger

    assert inspect.signature(Tagger).parameters["context"].default == 0
    assert DecoderSettings().context_clips == 0
    assert build_parser().parse_args(["tag", "x.mp4"]).context == 0


def test_a_negative_context_is_a_clear_error(tmp_path, capsys):
    from ops.cli import main as vbs_main
    from videobert.tagging import Tagger

    with pytest.raises(ValueError, match="context is a number of neighbouring clips on each side, >= 0, not -1"):
        Tagger(tmp_path, context=-1)
    assert vbs_main(["tag", str(tmp_path / "x.mp4"), "--model", str(tmp_path), "--context", "-1"]) == 2
    assert "not -1" in capsys.readouterr().err


@pytest.mark.slow
def test_tag_context_writes_accuracy_per_context(trained_model, tmp_path):
    out = tmp_path / "ctx.json"
    assert main(["--model", str(trained_model), "--contexts", "0,1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["videos"] >= 1 and set(r["by_context"]) == {"0", "1"}
    for row in r["by_context"].values():
        assert row["clips"] > 0 and 0 <= row["verb_top1"] <= 1 and 0 <= row["noun_top1"] <= 1
    with pytest.raises(ValueError, match="no videos with a sidecar"):
        main(["--model", str(trained_model), "--data", str(tmp_path), "--out", str(out)])
