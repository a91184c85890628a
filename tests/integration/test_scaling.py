"""The graph's pools follow their load on one local Ray (real Redis, real streams, the small trained model):
the decoder pool grows with the streams and drains back, a retiring decoder's streams move to another
decoder and resume from their checkpoints, a model pool grows with its queue and retires a replica only once
it has answered. Each test runs a graph of its own (its own key prefix) beside the session's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from bench import wait_for
from bench.sources import HttpServer, TcpProxy
from tests.integration.conftest import Streams, graph_settings

pytestmark = pytest.mark.slow


def settings_for(model: Path, **sections):
    """A graph of its own, with small CPU requests: it runs beside the session's graph and Serve service on the
    session's 8 logical CPUs, and a replica that found no CPU left would wait for ever (no autoscaler here)."""
    s = graph_settings(model, model, f"vbsscale{uuid.uuid4().hex[:6]}").model_dump()
    for pool in ("decoder", "video_encoder", "language", "fusion"):
        s[pool]["num_cpus"] = 0.1
    for name, fields in sections.items():
        s[name] = {**s.get(name, {}), **fields}
    from schemas.config import Settings

    return Settings.model_validate(s)


def largest_videos(model: Path, n: int) -> list[Path]:
    return sorted((model / "data" / "heldout").glob("shapes_*.mp4"), key=lambda p: -p.stat().st_size)[:n]


def clip_starts(graph, video: Path) -> list[float]:
    """The clips the graph must tag for a file, in order (what the model's clip spec cuts)."""
    import ray

    from videobert.reader import ClipSpec, read_video

    spec = ClipSpec.from_dict(ray.get(graph.stages["video_encoder"][0].clip_spec.remote()))
    return [round(c.t0, 3) for c in read_video(video, spec).clips]


def pools(graph) -> dict:
    return graph.view()[0]


def assert_complete_once(streams: Streams, sid: str, expected: list[float]) -> None:
    rows = [r for _, r in streams.tags(sid)]
    starts = [round(r["t0"], 3) for r in rows]
    assert starts == expected, f"{sid}: {len(starts)} tags, {len(expected)} clips; lost or doubled"
    assert int(streams.status(sid)["clips_tagged"]) == len(expected)


@pytest.fixture
def own_graph(ray_local):
    from actors.graph import start_graph
    from actors.keys import redis_client

    made = []

    def start(settings):
        g = start_graph(settings)
        made.append(g)
        return g

    yield start
    for g in made:
        g.stop()
        r = redis_client(g.settings.redis.url)
        for key in r.scan_iter(f"{g.settings.redis.prefix}:*"):
            r.delete(key)


def test_the_decoder_pool_grows_with_the_streams_and_drains_back(own_graph, trained_model):
    # given a graph whose decoder pool runs 1..3 replicas, one stream each, and shrinks after 20 s
    g = own_graph(settings_for(trained_model, decoder={"replicas": 1, "min_replicas": 1, "max_replicas": 3,
                                                       "streams_per_replica": 1},
                               autoscaling={"interval_s": 0.5, "downscale_delay_s": 20}))
    streams = Streams(g.settings)
    videos = largest_videos(trained_model, 3)
    with HttpServer(videos[0].parent) as http:
        proxy = TcpProxy(http.port).start()
        proxy.drip(600, rate=10_000)  # slow VOD: the streams outlast the new decoders' start on a busy machine
        try:
            # when three streams arrive
            for i, v in enumerate(videos):
                streams.push(proxy.url(v.name), f"f{i}")
            # then the pool wants three decoders and gets them, each a Ray actor with its node in the graph view
            wait_for(lambda: pools(g)["decoder"]["replicas"] == 3, 120, "three decoders running")
            for i in range(3):
                streams.wait(f"f{i}", {"finished", "failed"}, timeout=180)
        finally:
            proxy.stop()
    # and when the streams have ended, after the delay, it drains back to its minimum
    wait_for(lambda: pools(g)["decoder"] == {**pools(g)["decoder"], "replicas": 1, "draining": 0, "target": 1}, 90,
             "back to one decoder")
    for i, v in enumerate(videos):
        assert streams.status(f"f{i}")["status"] == "finished"
        assert_complete_once(streams, f"f{i}", clip_starts(g, v))
    from actors.metrics import render
    from actors.placement import read_view

    view = read_view(streams.r, streams.keys)  # what `vbs status --graph`, /readyz and the metrics read
    assert view["pools"]["decoder"]["replicas"] == 1
    assert {x["pool"] for x in view["replicas"]} == {"decoder", "video_encoder", "language", "fusion", "speech"}
    assert all(x["node_id"] and x["device"] == "cpu" for x in view["replicas"]), view["replicas"]
    g.metrics.flush()
    text = render(streams.r, streams.keys).decode()
    assert 'vbs_pool_scale_events_total{direction="up",stage="decoder"} 2.0' in text
    assert 'vbs_pool_scale_events_total{direction="down",stage="decoder"} 2.0' in text
    assert 'vbs_pool_replicas{stage="decoder"} 1.0' in text and 'vbs_pool_target_replicas{stage="fusion"} 1.0' in text


def test_a_retiring_decoder_moves_its_streams_and_no_clip_is_lost_or_doubled(own_graph, trained_model):
    # given two slow VOD streams over HTTP (a proxy lets 20 KB/s through), one on each of two decoders
    videos = largest_videos(trained_model, 2)
    with HttpServer(videos[0].parent) as http:
        proxy = TcpProxy(http.port).start()
        proxy.drip(600, rate=20_000)
        try:
            g = own_graph(settings_for(trained_model, decoder={"replicas": 2, "min_replicas": 1, "max_replicas": 2,
                                                               "streams_per_replica": 2},
                                       autoscaling={"interval_s": 0.5, "downscale_delay_s": 4}))
            streams = Streams(g.settings)
            for i, v in enumerate(videos):
                streams.push(proxy.url(v.name), f"h{i}")
            owners = wait_for(lambda: (o := {streams.status(f"h{i}").get("owner") for i in range(2)}) and len(o) == 2
                              and "" not in o and None not in o and o, 60, "one stream on each decoder")
            streams.wait_tags("h0", 1, timeout=60)
            # when the pool, wanting one decoder for two streams, retires one while both run
            wait_for(lambda: pools(g)["decoder"]["replicas"] == 1 and pools(g)["decoder"]["draining"] == 0, 60,
                     f"one decoder left: {pools(g)}")
            left = set(g.decoders)
            assert len(left) == 1 and left < owners
            # then both streams finish on the one left, each clip tagged exactly once
            for i in range(2):
                h = streams.wait(f"h{i}", {"finished", "failed"}, timeout=180)
                assert h["status"] == "finished", json.dumps(h)
                assert h["owner"] in left
            moved = [i for i in range(2) if int(streams.status(f"h{i}").get("attempts", 0)) == 0]
            assert len(moved) == 2, "a move is not a reclaim: no attempt counted"
            for i, v in enumerate(videos):
                assert_complete_once(streams, f"h{i}", clip_starts(g, v))
        finally:
            proxy.stop()


def test_streams_spread_onto_decoders_that_join_and_no_clip_is_lost_or_doubled(own_graph, trained_model):
    # given one decoder of a pool of up to two, one stream each, and two slow VOD streams that both land on it
    videos = largest_videos(trained_model, 2)
    with HttpServer(videos[0].parent) as http:
        proxy = TcpProxy(http.port).start()
        proxy.drip(600, rate=8_000)  # slow VOD: the streams outlast the second decoder's start on a busy machine
        try:
            # the watchdog at its default: a stream that moves reopens the drip-fed source from its checkpoint, and on
            # a slow, busy machine its first packet can take longer than the suite's 8 s
            g = own_graph(settings_for(trained_model, decoder={"replicas": 1, "min_replicas": 1, "max_replicas": 2,
                                                               "streams_per_replica": 1, "watchdog_s": 30},
                                       autoscaling={"interval_s": 0.5, "downscale_delay_s": 30}))
            first = set(g.decoders)
            streams = Streams(g.settings)
            for i, v in enumerate(videos):
                streams.push(proxy.url(v.name), f"s{i}")
            # when the second decoder joins, one stream moves to it (the first one sat idle before)
            wait_for(lambda: len({streams.status(f"s{i}").get("owner") for i in range(2)} - {"", None}) == 2, 150,
                     f"the streams on two decoders: {[streams.status(f's{i}').get('owner') for i in range(2)]}")
            owners = {streams.status(f"s{i}")["owner"] for i in range(2)}
            assert owners - first, "one stream runs on the decoder that joined"
            # then both finish, every clip tagged once, and the move counted no attempt
            for i in range(2):
                h = streams.wait(f"s{i}", {"finished", "failed"}, timeout=240)
                assert h["status"] == "finished" and int(h.get("attempts", 0)) == 0, json.dumps(h)
            for i, v in enumerate(videos):
                assert_complete_once(streams, f"s{i}", clip_starts(g, v))
        finally:
            proxy.stop()


def test_a_model_pool_grows_with_its_queue_and_retires_a_replica_only_after_answering(own_graph, trained_model):
    # given a video encoder pool of 1..2 replicas whose target is one clip waiting per replica
    g = own_graph(settings_for(trained_model, video_encoder={"min_replicas": 1, "max_replicas": 2, "target_queue": 1},
                               decoder={"max_in_flight": 8},
                               autoscaling={"interval_s": 0.5, "look_back_s": 1, "downscale_delay_s": 5}))
    streams = Streams(g.settings)
    videos, pushed = largest_videos(trained_model, 2), []

    def push(n):
        for _ in range(n):
            streams.push(str(videos[len(pushed) % 2]), f"m{len(pushed)}")
            pushed.append(videos[len(pushed) % 2])

    def running() -> int:
        return sum(streams.status(f"m{i}").get("status") not in ("finished", "failed") for i in range(len(pushed)))

    def grown_and_used():
        if running() < 6 and len(pushed) < 120:
            push(4)  # the load lasts until the new replica serves, however long its start takes on this machine
        stats = g.stats()["video_encoder"]
        return len(stats) == 2 and all(x["items"] > 0 for x in stats)

    # when file streams keep it busy
    push(8)
    # then it grows to two replicas, and the decoders send clips to both
    wait_for(grown_and_used, 300, "a second video encoder that clips reach", every=0.5)
    for i in range(len(pushed)):
        streams.wait(f"m{i}", {"finished", "failed"}, timeout=300)
    # and once the streams end it shrinks to one, the retired replica killed only after its queue emptied:
    # no clip was lost to it (each stream has every clip, none failed)
    wait_for(lambda: pools(g)["video_encoder"]["replicas"] == 1 and pools(g)["video_encoder"]["draining"] == 0, 60,
             f"back to one video encoder: {pools(g)}")
    expected = {v: clip_starts(g, v) for v in videos}
    for i, v in enumerate(pushed):
        assert streams.status(f"m{i}")["status"] == "finished"
        assert_complete_once(streams, f"m{i}", expected[v])
