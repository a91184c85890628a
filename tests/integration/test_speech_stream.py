"""Streams with sound through one stream runner (the stage classes in-process, real Redis, real media made at test
time): a file with audio and no subtitles gets its text from speech; a file with both uses its subtitles (unless
the job asks for speech); a silent or broken audio track is an empty text, never a failed stream; a speech stage
that fails costs the text, not the stream."""

from __future__ import annotations

import json
import uuid

import pytest

from actors.assignment import Assignment
from actors.pipeline import LocalPipeline
from actors.runner import StreamRunner
from actors.sink import Sink
from actors.stages import FusionStage, LanguageStage, SpeechStage, VideoEncoderStage
from schemas.config import DecoderSettings, SpeechSettings
from schemas.streams import IngestJob, StreamStatus
from tests.speech_media import spoken_track, with_audio, with_broken_audio
from videobert.reader import load_truth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stages(trained_model):
    return (VideoEncoderStage(trained_model), LanguageStage(), FusionStage(trained_model),
            SpeechStage(trained_model))


@pytest.fixture(scope="module")
def media(trained_model, tmp_path_factory):
    """A held-out video's picture with its narration spoken (no subtitles), with both, silent, and broken."""
    video = sorted((trained_model / "data" / "heldout").glob("*.mp4"))[0]
    truth = load_truth(video)
    lines = [(n.t0, n.text) for n in truth.narration]
    d = tmp_path_factory.mktemp("speech")
    samples = spoken_track(lines, truth.duration)
    return {"truth": truth,
            "speech": with_audio(video, d / "speech_only.mp4", samples),
            "both": with_audio(video, d / "both.mp4", samples, subtitles=True),
            "silent": with_audio(video, d / "silent.mp4", None),
            "broken": with_broken_audio(video, d / "broken.mkv")}


def run(env, stages, url, pipeline=None, speech=None, **options) -> tuple[StreamStatus, list[dict], StreamRunner]:
    r, keys = env
    sid, token = f"s{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    r.hset(keys.stream(sid), mapping={"token": token, "status": "starting"})
    job = IngestJob(url=str(url), options=options)
    runner = StreamRunner(Assignment(sid, job, "", str(url), token=token), pipeline or LocalPipeline(*stages),
                          Sink(r, keys), stages[0].spec, DecoderSettings(), r, keys, speech=speech)
    status = runner.run()
    tags = [json.loads(f["data"]) for _, f in r.xrange(keys.tags(sid))]
    return status, tags, runner


def words(tags: list[dict]) -> set[str]:
    return {w for t in tags for w in t["subtitle"].split()}


def test_a_file_with_audio_and_no_subtitles_gets_its_text_from_speech(env, stages, media, trained_model):
    status, tags, runner = run(env, stages, media["speech"])
    assert status == StreamStatus.finished
    assert tags and all(t["text_source"] == "speech" for t in tags)
    assert runner._reader is None or runner._reader.subtitle_source == "speech"
    said = {w for n in media["truth"].narration for w in n.text.split()}
    heard = words(tags)
    # the model's own speech language model (vbs train speech-lm, from its training narration): most words
    assert len(heard & said) >= 0.8 * len(said), (heard, said)
    assert len(heard - said) <= 2, (heard, said)
    assert any(t["alignment"] is not None for t in tags)  # the recognised text reached the fusion model
    assert all(t["alignment"] is None for t in tags if not t["subtitle"])
    # each clip waited for the speech up to its end: the stream's texts are those of the whole file read at once
    from videobert.reader import read_video
    from videobert.speech import TextSource

    offline = read_video(media["speech"], stages[0].spec, text=TextSource("speech", model_dir=str(trained_model), cache=False))
    assert [t["subtitle"] for t in tags] == [c.text for c in offline.clips]


def test_a_file_with_both_uses_its_subtitles_unless_the_job_asks_for_speech(env, stages, media):
    status, tags, _ = run(env, stages, media["both"])
    assert status == StreamStatus.finished
    assert tags and all(t["text_source"] == "subtitles" for t in tags)
    assert words(tags) == {w for n in media["truth"].narration for w in n.text.split()}  # the subtitles' own words
    status, spoken, _ = run(env, stages, media["both"], text_source="speech")
    assert status == StreamStatus.finished
    assert all(t["text_source"] == "speech" for t in spoken) and words(spoken) != words(tags)
    status, plain, _ = run(env, stages, media["speech"], text_source="subtitles")  # never listened to
    assert status == StreamStatus.finished and "text_source" not in plain[0] and not words(plain)


@pytest.mark.parametrize("kind", ["silent", "broken"])
def test_a_silent_or_broken_audio_track_is_an_empty_text_not_a_failed_stream(env, stages, media, kind):
    status, tags, _ = run(env, stages, media[kind])
    assert status == StreamStatus.finished
    assert len(tags) == len(run(env, stages, media["speech"], text_source="subtitles")[1])  # every clip tagged
    assert all(t["subtitle"] == "" and t["alignment"] is None for t in tags)


class DeadSpeech:
    """The injected failure: a speech stage that does not answer."""

    def __call__(self, utterances):
        raise ConnectionError("the speech replica died")


def test_a_failing_speech_stage_costs_the_text_not_the_stream(env, stages, media):
    pipe = LocalPipeline(*stages[:3], DeadSpeech())
    status, tags, _ = run(env, stages, media["speech"], pipeline=pipe)
    assert status == StreamStatus.finished
    assert tags and all(t["subtitle"] == "" for t in tags)


def test_speech_disabled_in_the_config_leaves_the_audio_alone(env, stages, media):
    status, tags, _ = run(env, stages, media["speech"], speech=SpeechSettings(enabled=False))
    assert status == StreamStatus.finished and tags and not words(tags) and "text_source" not in tags[0]
