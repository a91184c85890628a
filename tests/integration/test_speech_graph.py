"""Speech through the whole graph on Ray (decoders, the speech pool, the model stages, Redis): a file with audio
and no subtitles, and a live UDP stream with audio and no subtitles, get their text from speech recognition;
their tags carry it, with alignment scores, and say where it came from."""

from __future__ import annotations

import pytest

from bench.sources import UdpSender
from tests.speech_media import spoken_track, with_audio
from videobert.reader import load_truth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spoken(media):
    """A held-out video's picture with its narration spoken and no subtitles, under the graph's media root."""
    video = sorted((media / "data" / "heldout").glob("*.mp4"))[1]
    truth = load_truth(video)
    out = media / "data" / "speech" / f"{video.stem}_spoken.mp4"
    out.parent.mkdir(exist_ok=True)
    if not out.is_file():
        with_audio(video, out, spoken_track([(n.t0, n.text) for n in truth.narration], truth.duration, seed=1))
    return out, truth


def test_the_graph_tags_a_file_with_audio_only_from_its_speech(streams, spoken):
    video, truth = spoken
    streams.push(str(video), "speech-file-1")
    h = streams.wait("speech-file-1", {"finished", "failed"}, timeout=180)
    assert h["status"] == "finished", h
    rows = [r for _, r in streams.tags("speech-file-1")]
    assert len(rows) == int(truth.duration // 1.5)
    assert all(r["text_source"] == "speech" for r in rows)
    heard = [r for r in rows if r["subtitle"]]
    assert len(heard) >= len(rows) // 3, [r["subtitle"] for r in rows]
    assert all(r["alignment"] is not None for r in heard)


def test_a_live_udp_stream_with_audio_and_no_subtitles_shows_recognised_lines(streams, spoken):
    video, _ = spoken
    with UdpSender(video, loop=True, reencode=True, audio=True) as udp:
        streams.push(udp.url, "speech-udp-1")
        deadline_rows = streams.wait_tags("speech-udp-1", 6, timeout=90)
        rows = [r for _, r in deadline_rows]
        for _ in range(3):  # a few more clips if none had words yet (the sender may start between lines)
            if any(r["subtitle"] for r in rows):
                break
            rows = [r for _, r in streams.wait_tags("speech-udp-1", len(rows) + 4, timeout=60)]
        streams.stop("speech-udp-1")
        assert streams.wait("speech-udp-1", {"stopped", "failed"}, timeout=30)["status"] == "stopped"
    assert all(r["text_source"] == "speech" for r in rows)
    heard = [r for r in rows if r["subtitle"]]
    assert heard and all(r["alignment"] is not None for r in heard)
    assert all(r["latency_s"] is not None and r["latency_s"] < 30 for r in rows)


def test_an_upload_and_vbs_tag_with_audio_only_are_tagged_from_their_speech(service, spoken):
    import json

    from tests.conftest import vbs

    video, truth = spoken
    r = service.post("/v1/tag", data=video.read_bytes(), headers={"Content-Type": "video/mp4"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subtitles"] == "speech"
    assert all(c["text_source"] == "speech" for c in body["clips"])
    said = {w for n in truth.narration for w in n.text.split()}
    heard = {w for c in body["clips"] for w in c["subtitle"].split()}
    assert len(heard & said) >= 0.8 * len(said), (heard, said)  # the model's own speech language model
    rows = [json.loads(line) for line in vbs("tag", video, "--model", service.settings.model_dir).splitlines()]
    assert [(x["t0"], x["subtitle"], x["text_source"]) for x in rows] == \
           [(c["t0"], c["subtitle"], c["text_source"]) for c in body["clips"]]  # the same reading path
