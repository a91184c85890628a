"""Training from speech: `--text-source speech` reads each video's narration through the recogniser (with the
speech language model of `vbs train speech-lm`), so videos with audio and no subtitles train a model; transcripts
are cached by file and language model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import vbs
from videobert.reader import read_video
from videobert.speech import TextSource

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spoken_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Four spoken videos (seed 13), and the same videos with audio only: no subtitle stream, no sidecar."""
    with_subs = tmp_path_factory.mktemp("spoken")
    vbs("corpus", "make", "--out", with_subs, "--videos", 4, "--seed", 13, "--min-seconds", 10, "--max-seconds", 12,
        "--speech", "-q")
    bare = tmp_path_factory.mktemp("audio_only")
    for v in sorted(with_subs.glob("*.mp4")):
        subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(v), "-map", "0:v", "-map", "0:a", "-c", "copy",
                        str(bare / v.name)], check=True, timeout=60)
        (bare / v.with_suffix(".json").name).write_text(v.with_suffix(".json").read_text())  # ground truth only
    return with_subs, bare


def test_auto_reads_speech_where_a_video_has_no_subtitles_and_matches_them_closely(spoken_corpus, tmp_path):
    with_subs, bare = spoken_corpus
    vbs("train", "speech-lm", "--data", with_subs, "--out", tmp_path / "lm", "-q")
    video = sorted(bare.glob("*.mp4"))[0]
    text = TextSource("auto", model_dir=str(tmp_path / "lm"))
    heard = read_video(video, text=text)
    said = read_video(with_subs / video.name)
    assert heard.subtitle_source == "speech" and said.subtitle_source == "embedded"
    ref = " ".join(c.text for c in said.cues).split()
    hyp = " ".join(c.text for c in heard.cues).split()
    from videobert.speech import word_errors

    assert word_errors(" ".join(ref), " ".join(hyp)) <= 0.3 * len(ref), (ref, hyp)
    assert sum(bool(c.text) for c in heard.clips) >= len(heard.clips) // 3
    # the same file again: from the transcript cache (a file of its own under VBS_CACHE_DIR)
    cached = list((Path(os.environ["VBS_CACHE_DIR"]) / "speech").glob("*.json"))
    assert cached and read_video(video, text=text).cues == heard.cues


def test_an_encoder_trains_from_the_speech_of_videos_without_subtitles(spoken_corpus, tmp_path):
    with_subs, bare = spoken_corpus
    vbs("train", "speech-lm", "--data", with_subs, "--out", tmp_path / "lm", "-q")
    summary = json.loads(vbs("train", "encoder", "--data", bare, "--out", tmp_path / "enc", "--epochs", 1,
                             "--text-source", "speech", "--speech-lm", tmp_path / "lm", "-q"))
    assert summary["text_source"] == "speech" and summary["lines"] > 0 and summary["clips"] > 0
    # without --text-source the same videos have no narration to learn from
    r = subprocess.run([sys.executable, "-m", "ops.cli", "train", "encoder", "--data", str(bare), "--out",
                        str(tmp_path / "enc2"), "--epochs", "1", "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0


def test_a_speech_lm_that_is_not_there_is_a_clear_error(spoken_corpus, tmp_path):
    r = subprocess.run([sys.executable, "-m", "ops.cli", "train", "encoder", "--data", str(spoken_corpus[1]),
                        "--out", str(tmp_path / "e"), "--text-source", "speech", "--speech-lm", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no speech language model there" in r.stderr
