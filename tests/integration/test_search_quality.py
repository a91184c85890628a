"""Opt-in (-m quality): the default model (bash ops/demo.sh builds it, or VBS_MODEL_DIR) through the graph on its
held-out videos, each pushed as a stream; then what an operator asks of them: text search over every stream's
clips, rebuilt from Redis as the search deployment does, finds the clips a query names well above chance, and each
stream's summary finds the true segments' boundaries and labels well above chance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.quality


@pytest.fixture(scope="module")
def tagged(ray_local):
    from actors.graph import start_graph
    from tests.integration.conftest import Streams, graph_settings

    model = Path(os.environ.get("VBS_MODEL_DIR", "models/demo")).resolve()
    if not (model / "videobert").is_dir():
        pytest.fail(f"no demo model at {model}: build it with `bash ops/demo.sh` (or set VBS_MODEL_DIR)")
    g = start_graph(graph_settings(model, model, f"vbssq{os.getpid()}"))
    s = Streams(g.settings)
    videos = sorted((model / "data" / "heldout").glob("*.mp4"))
    for i, v in enumerate(videos):
        s.push(str(v), f"sq-{i}")
    for i in range(len(videos)):
        assert s.wait(f"sq-{i}", {"finished", "failed"}, timeout=900)["status"] == "finished"
    yield model, s, videos
    g.stop()
    for key in s.r.scan_iter(f"{s.keys.prefix}:*"):
        s.r.delete(key)


def test_search_finds_the_clips_a_query_names_well_above_chance(tagged):
    from actors.search import ClipIndex, IndexFeed
    from videobert import world
    from videobert.reader import load_truth
    from videobert.retrieval import QueryEncoder

    model, s, videos = tagged
    encoder = QueryEncoder(model)
    feed = IndexFeed(s.r, s.keys, ClipIndex(encoder.dim))
    assert feed.rebuild() > 100
    truth = {f"sq-{i}": load_truth(v).segments for i, v in enumerate(videos)}

    def shows(hit, verb, noun) -> bool:
        t0 = int(hit.entry.split("-")[0]) / 1000 + 0.75
        return any(g.t0 <= t0 < g.t1 and (g.verb, g.noun) == (verb, noun) for g in truth[hit.stream_id])

    pairs = [(v, n) for v in world.VERBS for n in world.NOUNS]
    found = sum(any(shows(h, v, n) for h in feed.index.search(encoder([f"{v} the {n}"])[0], 5)) for v, n in pairs)
    mids = [(g.verb, g.noun) for segs in truth.values() for g in segs]
    share = {p: mids.count(p) / len(mids) for p in pairs}
    chance = sum(1 - (1 - share[p]) ** 5 for p in pairs) / len(pairs)
    assert found / len(pairs) >= 2 * chance, (found / len(pairs), chance)


def test_summaries_find_segments_well_above_chance(tagged):
    from bench.summary import chance, pooled, score_video
    from schemas.state import TagResult
    from videobert import world
    from videobert.reader import load_truth
    from videobert.summary import summarise

    model, s, videos = tagged
    segs, truths = [], []
    for i, v in enumerate(videos):
        segs.append(summarise([TagResult.model_validate(r) for _, r in s.tags(f"sq-{i}")], min_clips=1))
        truths.append(load_truth(v).segments)
    got = pooled([score_video(p, t, 0.75) for p, t in zip(segs, truths)])
    base = chance(segs, truths, list(world.VERBS), list(world.NOUNS), 0.75)
    assert got["boundary_f1"] >= 1.5 * base["boundary_f1"] and got["boundary_f1"] > 0.3, (got, base)
    assert got["label_accuracy_by_duration"] >= 5 * base["label_accuracy_by_duration"], (got, base)
