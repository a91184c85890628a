"""Decoding only what the clips need (videobert.reader.DecodeOptions, the decoder's settings): each option reaches
FFmpeg, skipping leaves the clips as they were (the same windows, close pictures), bad values are clear errors,
and the benchmark that measures them writes its figures."""

import json

import av
import numpy as np
import pytest

from actors.source import SourceReader, decode_options
from schemas.config import DecoderSettings
from videobert.reader import ClipSpec, DecodeOptions, read_video


def first_video(corpus):
    return sorted(corpus.glob("*.mp4"))[0]


@pytest.mark.parametrize("field, value, message", [("skip_loop_filter", "some", "skip_loop_filter must be one of"),
                                                   ("skip_frame", "bidir", "skip_frame must be one of"),
                                                   ("thread_type", "many", "thread_type must be one of"),
                                                   ("thread_count", -1, "thread_count must be 0")])
def test_a_bad_decode_option_is_a_clear_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        DecodeOptions(**{field: value})
    with pytest.raises(ValueError, match=field):  # and in the config, before anything runs
        DecoderSettings(**{field: value})


def test_auto_skips_unreferenced_frames_only_where_a_sample_has_frames_to_spare():
    spec = ClipSpec(seconds=1.5, frames=8)  # 5.33 samples a second
    auto = DecodeOptions(skip_frame="auto")
    assert auto.skips_nonref(25, spec) and auto.skips_nonref(30, spec)  # 4.7 and 5.6 frames a sample
    assert not auto.skips_nonref(15, spec) and not auto.skips_nonref(20, spec)  # 2.8 and 3.75
    assert DecodeOptions(skip_frame="nonref").skips_nonref(5, spec)
    assert not DecodeOptions().skips_nonref(60, spec)


def test_the_options_reach_ffmpeg(tiny_corpus):
    with av.open(str(first_video(tiny_corpus))) as c:
        vs = c.streams.video[0]
        DecodeOptions(skip_loop_filter="all", skip_frame="nonref", thread_type="slice", thread_count=1).apply(vs, ClipSpec())
        assert vs.codec_context.skip_frame == "NONREF" and vs.codec_context.thread_count == 1
        assert vs.thread_type.name == "SLICE" and vs.codec_context.options["skip_loop_filter"] == "all"
        next(c.decode(vs))  # FFmpeg opens the decoder with them


def test_the_decoder_settings_become_the_stream_decoder_s_options(tiny_corpus):
    """The graph's reader: with skip_frame=nonref it decodes fewer frames of the corpus's x264 video (B-frames
    are about half), and gives the same clips."""
    path = str(first_video(tiny_corpus))
    runs = {}
    for skip in ("none", "nonref"):
        settings = DecoderSettings(skip_frame=skip, skip_loop_filter="all" if skip == "nonref" else "none")
        assert decode_options(settings).skip_frame == skip
        reader = SourceReader(path, ClipSpec(), settings, live=False)
        runs[skip] = ([(c.index, c.t0, c.t1) for c in reader.clips()], reader.frames_decoded)
    assert runs["nonref"][0] == runs["none"][0]
    assert runs["nonref"][1] < 0.8 * runs["none"][1], runs


def test_skipping_leaves_the_clips_close_to_a_full_decode(tiny_corpus):
    path = first_video(tiny_corpus)
    full = read_video(path, ClipSpec(), with_text=False)
    skipped = read_video(path, ClipSpec(), with_text=False,
                         decode=DecodeOptions(skip_loop_filter="all", skip_frame="nonref"))
    assert [(c.t0, c.t1) for c in skipped.clips] == [(c.t0, c.t1) for c in full.clips]
    a = np.stack([c.frames for c in full.clips]).astype(np.int16)
    b = np.stack([c.frames for c in skipped.clips]).astype(np.int16)
    diff = np.abs(a - b).mean()
    assert diff < 4.0, f"mean absolute difference {diff:.2f} of 255"  # a sample may land a frame or two earlier


def test_the_benchmark_writes_every_set_side_by_side(tiny_corpus, tmp_path):
    from bench import decode_options as bench

    out = tmp_path / "d.json"
    assert bench.main(["--source", str(first_video(tiny_corpus)), "--no-tags", "--rounds", "1", "--seconds", "0.3",
                       "--concurrency", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["sets"]) == set(bench.SETS) and r["source"]["codec"] == "h264" and r["source"]["b_frames"]
    for name, row in r["sets"].items():
        assert row["raw_decode_fps"] > 0 and row["raw_decode_streams"] == int(row["raw_decode_fps"] // r["source"]["fps"])
        assert row["options"] == json.loads(json.dumps(bench.asdict(bench.SETS[name]))) and row["clip_read_x_real_time"] > 0
    assert r["sets"]["ffmpeg defaults"]["raw_decode_over_defaults"] == 1.0
