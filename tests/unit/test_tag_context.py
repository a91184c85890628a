"""The context diagnostic (bench/tag_context.py), and what context means: the clips before a clip, the same
in `vbs tag`, the graph and uploads; each clip alone by default."""

import json

import pytest

from bench.tag_context import clip_accuracy, main
from schemas.state import TagResult


def test_clip_accuracy_scores_only_clips_inside_one_segment():
    segments = [{"t0": 0.0, "t1": 3.0, "verb": "grow", "noun": "star"},
                {"t0": 3.0, "t1": 4.0, "verb": "drop", "noun": "ring"}]

    def row(t0, verb, noun):
        return TagResult(t0=t0, t1=t0 + 1.5, labels={"verb": [{"label": verb, "score": 1.0}],
                                                     "noun": [{"label": noun, "score": 1.0}]},
                         alignment=None, subtitle="")

    rows = [row(0.0, "grow", "star"), row(1.5, "grow", "ring"), row(3.0, "drop", "ring")]  # the last straddles
    assert clip_accuracy(rows, segments) == (1.0, 0.5, 2)
    assert clip_accuracy([], segments) == (0.0, 0.0, 0)


def test_context_is_the_clips_before_each_clip():
    from videobert.tagging import with_context

    assert with_context([1, 2, 3, 4], 0) == [[1], [2], [3], [4]]
    assert with_context([1, 2, 3, 4], 2) == [[1], [1, 2], [1, 2, 3], [2, 3, 4]]


@pytest.mark.slow
def test_each_clip_is_tagged_alone_by_default_and_context_follows_the_graph(trained_model):
    """`vbs tag` (Tagger.tag_video) by default scores each clip's own word alone; with --context K it gives
    the K clips before it, exactly what the graph's fusion stage gets with context_clips K."""
    from actors.stages import FusionItem, FusionStage, VideoEncoderStage
    from ops.cli import build_parser
    from schemas.config import DecoderSettings
    from videobert.reader import read_video
    from videobert.tagging import Tagger

    video = sorted((trained_model / "data" / "heldout").glob("*.mp4"))[0]
    enc, fusion = VideoEncoderStage(trained_model), FusionStage(trained_model)
    words = enc([c.frames for c in read_video(video, enc.spec, with_text=False).clips])
    def scores(labels):  # slot -> {label: score}
        return {slot: {x["label"]: x["score"] for x in ranked} for slot, ranked in labels.items()}

    by_k = {}
    for k in (0, 1):
        graph = fusion([FusionItem(words=tuple(words[max(0, i - k): i + 1])) for i in range(len(words))])
        rows = Tagger(trained_model, context=k).tag_video(video) if k else Tagger(trained_model).tag_video(video)
        assert len(rows) == len(graph) == len(words)
        for r, g in zip(rows, graph):
            want = scores(g.labels)
            for slot, ranked in r.labels.items():
                assert {x.label: pytest.approx(x.score, abs=2e-3) for x in ranked} == want[slot], k
        by_k[k] = [scores(g.labels) for g in graph]
    assert by_k[0] != by_k[1], "an earlier clip as context changes what the model sees"
    assert DecoderSettings().context_clips == 0 and build_parser().parse_args(["tag", "x.mp4"]).context == 0


def test_a_negative_context_is_a_clear_error(tmp_path, capsys):
    from ops.cli import main as vbs_main
    from videobert.tagging import Tagger

    with pytest.raises(ValueError, match="context is a number of earlier clips, >= 0, not -1"):
        Tagger(tmp_path, context=-1)
    assert vbs_main(["tag", str(tmp_path / "x.mp4"), "--model", str(tmp_path), "--context", "-1"]) == 2
    assert "not -1" in capsys.readouterr().err


@pytest.mark.slow
def test_tag_context_writes_accuracy_per_context(trained_model, tmp_path):
    out = tmp_path / "ctx.json"
    assert main(["--model", str(trained_model), "--contexts", "0,1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["videos"] >= 1 and set(r["by_context"]) == {"0", "1"}
    from bench.tag_context import tag_context

    again = tag_context(trained_model, contexts=(0,))["by_context"]["0"]
    assert r["by_context"]["0"] == again, "the figure is what tagging the videos gives, every time"
    for row in r["by_context"].values():
        assert row["clips"] > 0 and row["verb_top1"] > 1 / 8, row  # the small model tags verbs above chance
    with pytest.raises(ValueError, match="no videos with a sidecar"):
        main(["--model", str(trained_model), "--data", str(tmp_path), "--out", str(out)])
