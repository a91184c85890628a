"""Search and summaries over real HTTP against the session's service (Ray Serve, real Redis, the graph): every clip
the graph tags is searchable by text across streams, and a stream reads back as segments told as sentences."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.integration.test_api import heldout, wait_status

pytestmark = pytest.mark.slow


def indexed_codes(service) -> dict[tuple[str, str], np.ndarray]:
    """Every clip code the sink kept under the service's prefix: (stream, entry) -> int8 vector."""
    from actors.keys import Keys, redis_client
    from videobert.retrieval import from_text

    r, keys = redis_client(service.settings.redis.url), Keys(service.settings.redis.prefix)
    out = {}
    for sid in r.zrange(keys.streams, 0, -1):
        for eid, f in r.xrange(keys.tags(sid)):
            if "vec" in f:
                out[(sid, eid)] = from_text(f["vec"])
    return out


def is_exact_top(hits: list[dict], codes: dict, query: np.ndarray, k: int, stream: str | None = None) -> bool:
    """Whether `hits` are a top-k of the stored codes by cosine with `query` (among `stream`'s only, when given), best
    first: their exact scores are the k best there are. Ties may come in any order: the session's other tests push
    the same videos as other streams, whose clips have the very same codes."""
    mine = {key: float(c.astype(np.float32) @ query) / 127 for key, c in codes.items()
            if stream is None or key[0] == stream}
    best = sorted(mine.values(), reverse=True)[:k]
    got = [mine.get((h["stream_id"], h["entry"])) for h in hits]
    return (len(got) == len(best) and None not in got and np.allclose(got, best, atol=1e-6)
            and all(abs(h["score"] - g) < 0.01 for h, g in zip(hits, got)))


@pytest.fixture(scope="module")
def three_files(service):
    ids = {}
    for i, video in enumerate(heldout(service)[:3]):
        sid = f"search-{i}"
        assert service.post("/v1/streams", json={"url": str(video), "stream_id": sid}).status_code == 202
        ids[sid] = video
    for sid in ids:
        assert wait_status(service, sid, {"finished", "failed"}, timeout=300)["status"] == "finished"
    return ids


def test_each_clip_keeps_its_own_joint_embedding(service, three_files):
    """The code in a tag entry is the clip's embedding as the encoder gives it, read from the file here."""
    from actors.stages import VideoEncoderStage
    from videobert.reader import read_video

    enc = VideoEncoderStage(service.settings.model_dir)
    codes = indexed_codes(service)
    video = three_files["search-1"]
    clips = read_video(video, enc.spec).clips[:4]
    for clip, mine in zip(clips, enc.encode([c.frames for c in clips])):
        stored = codes[("search-1", f"{int(round(clip.t0 * 1000))}-1")].astype(np.float32)
        here = np.frombuffer(mine.vector, np.int8).astype(np.float32)
        assert stored @ here / np.linalg.norm(stored) / np.linalg.norm(here) > 0.99


def test_a_query_ranks_every_streams_clips_exactly_as_their_cosine_does(service, three_files):
    from videobert.retrieval import QueryEncoder

    encoder = QueryEncoder(service.settings.model_dir)
    line = next(c.text for c in json_cues(three_files["search-2"]) if c.text)
    query = encoder([line])[0]
    deadline, ok = time.monotonic() + 60, False
    while time.monotonic() < deadline and not ok:  # the index follows the graph within a poll
        body = service.get("/v1/search", params={"q": line, "k": 5}).json()
        ok = is_exact_top(body["hits"], indexed_codes(service), query, 5)
        time.sleep(0 if ok else 0.5)
    assert ok, body["hits"]
    assert body["complete"] and body["indexed"] >= sum(1 for s, _ in indexed_codes(service) if s.startswith("search-"))
    hit = body["hits"][0]
    assert set(hit) == {"stream_id", "entry", "t0", "t1", "score", "at", "labels", "subtitle", "links"}
    assert hit["links"]["stream"] == f"/v1/streams/{hit['stream_id']}" and hit["links"]["snapshot"] is None  # ended
    assert 0 < hit["score"] <= 1.0 and list(hit["labels"]) == ["verb", "noun"]
    # one stream only, and a window of time that holds none of them
    only = service.get("/v1/search", params={"q": line, "k": 3, "stream": "search-0"}).json()["hits"]
    assert {h["stream_id"] for h in only} == {"search-0"} and is_exact_top(only, indexed_codes(service), query, 3,
                                                                          "search-0")
    assert service.get("/v1/search", params={"q": line, "until": 1.0}).json()["hits"] == []


def json_cues(video):
    from videobert.subtitles import read_sidecar

    return read_sidecar(video.with_suffix(".srt"))


@pytest.mark.parametrize("params", [{}, {"q": ""}, {"q": "   "}, {"q": "x", "stream": "bad id!"}, {"q": "x", "k": 0},
                                    {"q": "x", "since": -1}, {"q": "x" * 513}])
def test_bad_queries_are_422_with_a_reason(service, params):
    r = service.get("/v1/search", params=params)
    assert r.status_code == 422 and set(r.json()["error"]) == {"code", "message"}, r.text


def test_an_empty_window_and_an_unknown_stream_match_nothing(service, three_files):
    for params in ({"since": 10, "until": 5}, {"stream": "no-such-stream"}):
        r = service.get("/v1/search", params={"q": "grow the star", **params})
        assert r.status_code == 200 and r.json()["hits"] == [], r.text


def test_a_generated_videos_summary_is_its_segments_told_as_sentences(service, three_files):
    from videobert.reader import load_truth

    sid = "search-0"
    body = service.get(f"/v1/streams/{sid}/summary").json()
    tags = service.get(f"/v1/streams/{sid}/tags?limit=1000").json()["tags"]
    segs = body["segments"]
    assert body["clips"] == len(tags) and not body["truncated"] and segs
    assert sum(s["clips"] for s in segs) == len(tags)
    assert segs[0]["t0"] == 0.0 and segs[-1]["t1"] == tags[-1]["t1"]
    assert all(a["t1"] <= b["t0"] + 1e-6 for a, b in zip(segs, segs[1:]))
    for s in segs:
        assert s["sentence"] == f"now let me show you how to {s['labels']['verb']} the {s['labels']['noun']}"
    smooth = service.get(f"/v1/streams/{sid}/summary", params={"min_clips": 3}).json()["segments"]
    assert len(smooth) <= len(segs) and sum(s["clips"] for s in smooth) == len(tags)
    truth = load_truth(three_files[sid])
    assert truth is not None and len(truth.segments) > 1
    part = service.get(f"/v1/streams/{sid}/summary", params={"since": 3.0, "until": 9.0}).json()
    assert part["clips"] == sum(1 for t in tags if 3.0 < t["t0"] < 9.0)
    assert service.get("/v1/streams/nobody/summary").status_code == 404


def test_vbs_search_and_vbs_summary_say_what_the_api_says(service, three_files, tmp_path):
    from tests.integration.conftest import API_KEY, REDIS_URL, free_port
    from tests.integration.test_cli_service import Terminal

    term = Terminal(tmp_path, service.settings.redis.prefix)
    line = "drop the square"
    api = service.get("/v1/search", params={"q": line, "k": 4}).json()["hits"]
    out = term.run("search", line, "--k", 4, "--json", "--api", service.base, "--api-key", API_KEY, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [(h["stream_id"], h["entry"]) for h in map(json.loads, out.stdout.splitlines())] == \
        [(h["stream_id"], h["entry"]) for h in api]
    human = term.run("search", line, "--k", 2, "--api", service.base, "--api-key", API_KEY, timeout=120)
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 2 and "verb:" in human.stdout, human.stderr
    refused = term.run("search", line, "--api", service.base, "--api-key", "wrong")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1 and "unauthorized" in refused.stderr
    nobody = term.run("search", line, "--api", f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and "cannot reach the service" in nobody.stderr, nobody.stderr

    summary = term.run("summary", "search-0", "--json", "--redis-url", REDIS_URL)
    assert summary.returncode == 0, summary.stderr
    assert [json.loads(x) for x in summary.stdout.splitlines()] == \
        service.get("/v1/streams/search-0/summary").json()["segments"]
    told = term.run("summary", "search-0", "--redis-url", REDIS_URL).stdout.splitlines()
    assert told and all("now let me show you how to" in x for x in told)
    assert term.run("summary", "nobody", "--redis-url", REDIS_URL).returncode == 2
