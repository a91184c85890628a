"""Speech: utterances found in real espeak-ng speech by PocketSphinx's endpointer, the recogniser registry, word
error rate, and a stream's speech track (when a clip's text is final; a stage that fails)."""

from __future__ import annotations

import numpy as np
import pytest

from actors.pipeline import LocalPipeline
from actors.speech_track import SpeechTrack
from tests.speech_media import spoken_track
from videobert import speech
from videobert.speech import SAMPLE_RATE, Segmenter, TextSource, make_recognizer, wer, word_errors
from videobert.tts import Voice, speak

LINES = [(1.0, "now let me show you how to grow the red circle"), (5.0, "watch me shake this star"),
         (9.0, "thanks for watching")]


@pytest.fixture(scope="module")
def track():
    return spoken_track(LINES, 12.0)


def chunks(x: np.ndarray, n: int, t0: float = 0.0):
    return [(t0 + k / SAMPLE_RATE, x[k:k + n]) for k in range(0, len(x), n)]


def segment(x: np.ndarray, n: int = 1024, **kw) -> list[speech.Utterance]:
    seg, out = Segmenter(**kw), []
    for t, c in chunks(x, n):
        out += seg.push(c, t)
    return out + seg.flush()


def test_the_endpointer_finds_each_spoken_line_where_it_was_said(track):
    us = segment(track)
    assert len(us) == 3
    for u, (t0, text) in zip(us, LINES):
        said = len(speak(text, Voice())) / SAMPLE_RATE  # about as long as the voice that spoke it
        assert t0 - 0.6 <= u.t0 <= t0 + 0.1, (u.t0, t0)
        assert u.t1 >= t0 + 0.6 * said, (u.t1, t0, said)
        assert u.t1 <= t0 + 2 * said + 0.8


def test_utterances_do_not_depend_on_how_the_audio_is_chunked(track):
    a, b = segment(track, 1024), segment(track, 333)
    assert [(round(u.t0, 2), round(u.t1, 2)) for u in a] == [(round(u.t0, 2), round(u.t1, 2)) for u in b]


def test_noise_alone_and_digital_silence_are_no_speech():
    rng = np.random.default_rng(3)
    assert segment(rng.normal(0, 60, 5 * SAMPLE_RATE).astype(np.int16)) == []
    assert segment(np.zeros(5 * SAMPLE_RATE, np.int16)) == []


def test_long_speech_is_cut_into_pieces_no_longer_than_the_limit():
    lines = [(0.5, "now let me show you how to grow the red circle and then we slide the blue square and "
                   "watch me shake this star here i drop the green ring")]
    us = segment(spoken_track(lines, 9.0), max_utterance_s=2.0)
    assert len(us) >= 2
    assert all(u.t1 - u.t0 <= 2.0 + 0.05 for u in us)
    assert all(a.t1 <= b.t0 + 1e-6 for a, b in zip(us, us[1:]))


def test_a_jump_in_time_ends_the_utterance_under_way(track):
    seg = Segmenter()
    out = []
    head = track[: int(2.0 * SAMPLE_RATE)]  # mid-line: speech under way
    for t, c in chunks(head, 1024):
        out += seg.push(c, t)
    assert out == [] and seg.settled < 1.0  # the line's text is not final yet
    out += seg.push(track[-SAMPLE_RATE:], 50.0)  # a reconnect: the stream's clock jumped
    assert len(out) == 1 and out[0].t0 < 1.0 and out[0].t1 <= 2.1


def test_settled_trails_the_audio_and_stops_at_an_open_utterance(track):
    seg = Segmenter()
    for t, c in chunks(track[: int(4.5 * SAMPLE_RATE)], 1024):
        seg.push(c, t)
    assert 3.3 < seg.settled <= 4.5  # the first line is over and its end heard
    for t, c in chunks(track[int(4.5 * SAMPLE_RATE): int(5.6 * SAMPLE_RATE)], 1024, 4.5):
        seg.push(c, t)
    assert 4.3 < seg.settled <= 5.0  # the second line is being said: nothing after its start is final


def test_word_error_rate():
    assert word_errors("grow the red circle", "grow the red circle") == 0
    assert word_errors("grow the red circle", "grow a red") == 2
    assert word_errors("", "okay") == 1
    assert wer(["grow the red circle", "okay"], ["grow the circle", "okay so"]) == pytest.approx(2 / 5)


def test_the_registry_builds_registered_recognisers_and_refuses_unknown_ones():
    with pytest.raises(ValueError, match="unknown speech recogniser 'nope'.*pocketsphinx"):
        make_recognizer("nope")

    @speech.register("test-echo")
    class Echo:
        name = "test-echo"

        def __init__(self, model_dir, **options):
            self.options = options

        def recognise(self, samples):
            return f"{len(samples)} samples"

    try:
        r = make_recognizer("test-echo", None, level=3)
        assert r.options == {"level": 3} and r.recognise(np.zeros(160, np.int16)) == "160 samples"
    finally:
        speech.RECOGNIZERS.pop("test-echo")


def test_text_source_names_are_checked():
    with pytest.raises(ValueError, match="subtitles, speech, auto"):
        TextSource("captions")
    assert TextSource().key() == "subtitles" and TextSource("speech").key() == "speech:pocketsphinx:general"


def test_pocketsphinx_general_model_reads_speech_as_lowercase_words():
    # its general model is poor on synthetic speech (the model's own language model is what makes it good:
    # test_speech_lm.py); here only what it returns is checked
    rec = make_recognizer("pocketsphinx")
    assert rec.language_model == "general"
    assert rec.recognise(np.zeros(SAMPLE_RATE // 20, np.int16)) == ""  # too short to read
    heard = rec.recognise(spoken_track([(0.2, "now let me show you how to grow the red circle")], 4.5))
    assert heard and heard == heard.lower() and not any(w.startswith(("<", "[")) for w in heard.split()), heard


class Failing:
    """A speech stage that is away (the injected failure)."""

    def __call__(self, utterances):
        raise ConnectionError("speech replica died")


def test_a_speech_track_finalises_text_only_after_the_line_is_heard(track):
    heard = []

    class Recorder:
        def __call__(self, utterances):
            heard.extend(utterances)
            return ["line %d" % len(heard) for _ in utterances]

    t = SpeechTrack(LocalPipeline(None, None, None, Recorder()))
    for when, c in chunks(track[: int(4.9 * SAMPLE_RATE)], 1024):
        t.push(when, c)
    assert [c.text for c in t.cues] == ["line 1"] and t.cues[0].start < 1.0 and 3.5 < t.settled() <= 4.9
    for when, c in chunks(track[int(4.9 * SAMPLE_RATE):], 1024, 4.9):
        t.push(when, c)
    t.finish(5)
    assert [c.text for c in t.cues] == ["line 1", "line 2", "line 3"] and t.settled() == float("inf")
    assert (t.heard, t.silent, t.failed) == (3, 0, 0)


def test_a_failing_speech_stage_gives_no_text_and_is_counted(track):
    t = SpeechTrack(LocalPipeline(None, None, None, Failing()))
    for when, c in chunks(track, 1024):
        t.push(when, c)
    t.finish(1)
    assert t.cues == [] and t.failed == 3 and t.settled() == float("inf")
