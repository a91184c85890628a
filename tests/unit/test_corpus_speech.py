"""`vbs corpus make --speech`: the narration spoken (real espeak-ng) into an AAC track of the same file, read back
with PyAV. The audio track adds to a video and changes nothing else: frames, subtitles and sidecars stay the same."""

import hashlib
import json

import av
import numpy as np
import pytest

from tests.conftest import vbs
from videobert import tts
from videobert.corpus import SPEECH_GAP, plan_video, speech_track
from videobert.reader import list_videos

RATE = tts.SAMPLE_RATE


def make(out, *flags):
    vbs("corpus", "make", "--out", out, "--videos", 2, "--seed", 7, "--min-seconds", 10, "--max-seconds", 12,
        "--workers", 1, "-q", *flags)
    return list_videos(out)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Seed 7 made three ways: mp4 with and without speech, mkv with speech."""
    root = tmp_path_factory.mktemp("speech")
    return {"plain": make(root / "plain"), "mp4": make(root / "mp4", "--speech"),
            "mkv": make(root / "mkv", "--speech", "--container", "mkv")}


def audio_of(path) -> np.ndarray:
    """The audio track as 16 kHz mono int16, sample 0 at media time 0."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    parts = []
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            assert frame.pts * frame.time_base >= 0, "no priming samples before time 0"
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0


def truth(path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_the_audio_track_is_aac_mono_16k_as_long_as_the_video(corpora, container):
    for path in corpora[container]:
        with av.open(str(path)) as c:
            vs, (aus,), (ss,) = c.streams.video[0], c.streams.audio, c.streams.subtitles
            assert (aus.codec_context.name, aus.codec_context.sample_rate, aus.codec_context.channels) == ("aac", RATE, 1)
            assert aus.codec_context.layout.name == "mono"
            assert ss.codec_context.name in ("mov_text", "subrip", "srt")
            frames = sum(1 for _ in c.decode(vs))
        gt = truth(path)
        video_seconds = frames / gt["fps"]
        assert frames == int(round(gt["duration"] * gt["fps"]))
        # the track is the video's length; the decoder pads the last AAC frame (1,024 samples) with silence
        samples = audio_of(path)
        assert 0 <= samples.size / RATE - video_seconds <= 1024 / RATE + 1e-9
        meta = json.loads((path.parent / "corpus.json").read_text())
        assert meta["speech"] is True and meta["container"] == container
    assert json.loads((corpora["plain"][0].parent / "corpus.json").read_text())["speech"] is False


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_speech_is_loud_in_its_lines_and_the_background_faint_but_never_silent(corpora, container):
    for path in corpora[container]:
        gt = truth(path)
        x = audio_of(path)[: int(round(round(gt["duration"] * gt["fps"]) / gt["fps"] * RATE))]  # the video's frames
        noise = 32768 * 10 ** (gt["speech"]["noise_dbfs"] / 20)
        spoken = [(int(ln["t0"] * RATE), int(ln["t1"] * RATE)) for ln in gt["speech"]["lines"]]
        assert spoken, "the test videos have narration"
        for a, b in spoken:
            assert rms(x[a:b]) > 10 * noise, "speech is well above the background"
            assert rms(x[a:a + RATE // 5]) > 5 * noise, "and starts at the line's t0"
        quiet = np.ones(x.size, bool)  # away from speech by 0.1 s (the codec smears a little around onsets)
        for a, b in spoken:
            quiet[max(0, a - RATE // 10): b + RATE // 10] = False
        windows = x[: x.size // 160 * 160].reshape(-1, 160)  # 10 ms each
        levels = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
        assert levels.min() > 0, "no 10 ms of digital silence anywhere"
        quiet_levels = levels[quiet[: windows.shape[0] * 160].reshape(-1, 160).all(axis=1)]
        assert quiet_levels.size > 100 and quiet_levels.max() < 4 * noise + 200


def test_frames_and_subtitles_are_the_same_with_and_without_speech(corpora):
    def frames_hash(path) -> str:
        h = hashlib.sha256()
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                h.update(f.to_ndarray(format="rgb24").tobytes())
        return h.hexdigest()

    def embedded_cues(path) -> list:
        with av.open(str(path)) as c:
            ss = c.streams.subtitles[0]
            return [(pkt.pts, pkt.duration, [getattr(s, "dialogue", b"") for s in pkt.decode()])
                    for pkt in c.demux(ss) if pkt.size]

    for plain, spoken in zip(corpora["plain"], corpora["mp4"]):
        assert plain.name == spoken.name
        assert frames_hash(plain) == frames_hash(spoken)
        assert plain.with_suffix(".srt").read_bytes() == spoken.with_suffix(".srt").read_bytes()
        assert embedded_cues(plain) == embedded_cues(spoken) and any(text for *_, text in embedded_cues(plain))
        with_speech = truth(spoken)
        del with_speech["speech"]
        assert truth(plain) == with_speech  # segments, narration and all the rest: only `speech` is added


def test_the_ground_truth_says_which_voice_spoke_each_line_when(corpora):
    for path in corpora["mp4"] + corpora["mkv"]:
        gt = truth(path)
        speech, narration = gt["speech"], gt["narration"]
        assert (speech["codec"], speech["sample_rate"]) == ("aac", RATE)
        assert -55 <= speech["noise_dbfs"] <= -40
        assert len(speech["lines"]) == len(narration)
        for k, (said, line) in enumerate(zip(speech["lines"], narration)):
            assert said["voice"] in tts.VOICES and 0 <= said["pitch"] <= 99 and said["speed"] <= tts.MAX_SPEED
            assert said["t0"] == line["t0"] < said["t1"] <= gt["duration"]
            if k + 1 < len(narration):
                assert said["t1"] <= narration[k + 1]["t0"] - SPEECH_GAP + 1e-3, "one line at a time"


def test_the_speech_track_is_drawn_on_its_own_and_reproducible():
    plan = plan_video(7, 0, 10, 12)
    a, b = speech_track(plan), speech_track(plan)
    assert np.array_equal(a.samples, b.samples) and a.lines == b.lines
    assert a.samples.dtype == np.int16 and a.samples.size == int(round(plan.duration * plan.fps)) * RATE // plan.fps
    # the plan's own generator is untouched: planning again gives the same video
    assert plan_video(7, 0, 10, 12) == plan


def test_a_line_too_long_for_its_time_is_spoken_faster_then_cut():
    text = "now let me show you how to grow the red circle and then how to shake the blue star"
    slow = tts.Voice("en-us", speed=150)
    full = tts.speak(text, slow)
    x, used, cut = tts.speak_within(text, slow, 0.8 * full.size / RATE)
    assert used.speed > slow.speed and not cut and x.size <= 0.8 * full.size
    x, used, cut = tts.speak_within(text, slow, 1.0)
    assert used.speed == tts.MAX_SPEED and cut and x.size == RATE
    assert np.abs(x[-16:]).max() < 2000, "cut with a fade, not a click"
    x, used, cut = tts.speak_within("okay", slow, 2.0)
    assert used == slow and not cut
