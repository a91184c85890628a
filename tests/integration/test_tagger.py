"""The on-demand tagger deployment's class in-process (no Serve): its health check asks the model, and an
upload is tagged with the graph's own context, as `vbs tag --context` tags it."""

from __future__ import annotations

import asyncio

import pytest

from schemas.config import TaggerSettings

pytestmark = pytest.mark.slow


def make(model, context_clips=0):
    from deployments.tagger import Tagger

    return Tagger.func_or_class(str(model), TaggerSettings(), "cpu", context_clips)


def test_the_health_check_asks_the_model(trained_model):
    t = make(trained_model)
    t.check_health()
    assert t.ready()["model"] is True

    def broken(*_a, **_k):  # injected failure: the fusion model can no longer tag
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    t.fusion.tagger.score = broken
    with pytest.raises(RuntimeError, match="illegal memory access"):
        t.check_health()
    with pytest.raises(RuntimeError):
        t.ready()


def test_an_upload_is_tagged_with_the_graph_s_context_as_vbs_tag_does(trained_model):
    from videobert.tagging import Tagger as OfflineTagger

    video = sorted((trained_model / "data" / "heldout").glob("*.mp4"))[0]
    data = video.read_bytes()
    for k in (0, 1):
        t = make(trained_model, context_clips=k)
        (rows,) = t._tag_batch([(t._decode(data, 60.0), None)])  # what one request of a batch gets (@serve.batch)
        offline = OfflineTagger(trained_model, context=k).tag_video(video)
        assert [(r["t0"], r["labels"]["verb"][0]["label"], r["labels"]["noun"][0]["label"]) for r in rows] \
            == [(e.t0, e.top("verb"), e.top("noun")) for e in offline], k


def test_bad_labels_of_an_upload_are_refused_before_decoding(trained_model):
    from schemas.streams import LabelSet

    t = make(trained_model)
    bad = LabelSet(slots=(("verb", ("grow", "photosynthesize")), ("noun", ("star",))))
    answer = asyncio.run(t.tag(b"not even a video", bad, 60.0))
    assert answer["error"]["code"] == "bad_labels" and "photosynthesize" in answer["error"]["message"]


def test_subtitle_lines_are_cut_where_the_model_was_trained_to_read_them(trained_model, tmp_path):
    """One tokenising path: the graph's language stage and `vbs tag` cut a line at the model's own
    max_text_tokens (they each had their own default of 24, whatever the model was pretrained with)."""
    import json

    import torch

    from actors.models import LanguageActor
    from schemas.config import StageSettings
    from videobert.tagging import Tagger

    model = tmp_path / "model"
    (model / "videobert").mkdir(parents=True)
    for part in ("encoder", "vocab", "videobert/model.safetensors"):
        (model / part).symlink_to(trained_model / part)
    meta = json.loads((trained_model / "videobert" / "config.json").read_text())
    meta["pretrain"]["max_text_tokens"] = 6
    (model / "videobert" / "config.json").write_text(json.dumps(meta))
    line = "now let me show you how to grow the big red circle slowly and then shrink it again"
    threads = torch.get_num_threads()
    try:
        stage = LanguageActor(str(model), StageSettings()).stage
    finally:
        torch.set_num_threads(threads)  # the actor sets its own thread count; this process keeps its
    tagger = Tagger(model)
    assert len(stage([line])[0]) == 6 and stage([line]) == [tagger.builder.text_ids(line)]
