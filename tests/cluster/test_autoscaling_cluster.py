"""The graph on Ray's fake autoscaling cluster: pools grow with the streams and the autoscaler launches nodes of
the right type for them (GPU model nodes for the model stages, CPU decode nodes for the decoders), they shrink
while streams run and the nodes go away, and a node lost mid-stream loses no file clip."""

from __future__ import annotations

import json

import pytest

from bench import wait_for
from bench.sources import HttpServer, TcpProxy, UdpSender
from tests.integration.conftest import Streams
from tests.integration.test_scaling import assert_complete_once, clip_starts, largest_videos

pytestmark = pytest.mark.cluster


def replicas_by_pool(graph) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in graph.view()[1]:
        out.setdefault(r["pool"], []).append(r)
    return out


def node_type_by_id(cluster) -> dict[str, str]:
    return {n["NodeID"]: cluster.type_of(n) for n in cluster.nodes()}


def assert_placed_by_type(graph, cluster) -> None:
    """Decoders only on CPU decode nodes, the GPU stages only on GPU model nodes."""
    types = node_type_by_id(cluster)
    for pool, reps in replicas_by_pool(graph).items():
        for r in reps:
            if r["state"] != "running":
                continue
            where = types.get(r["node_id"])
            if pool == "decoder":
                assert where == "cpu_decode", (r, types)
            elif pool in ("video_encoder", "fusion"):
                assert where == "gpu_model", (r, types)


def test_pools_and_nodes_follow_the_streams_up_and_down(cluster, cluster_graph, trained_model):
    g = cluster_graph
    streams = Streams(g.settings)
    # given a graph at its minimum: one decoder on a CPU node, the model stages on a GPU node
    assert_placed_by_type(g, cluster)
    assert cluster.node_types() == {"head": 1, "cpu_decode": 1, "gpu_model": 1}
    files = largest_videos(trained_model, 2) * 5
    live = UdpSender(files[0], loop=True, reencode=True).start()
    live2 = UdpSender(files[1], loop=True, reencode=True).start()
    try:
        # when two live streams and ten files arrive
        streams.push(live.receiver_url(5.0), "live-a", options={"live": True})
        streams.push(live2.receiver_url(5.0), "live-b", options={"live": True})
        for i, v in enumerate(files):
            streams.push(str(v), f"file{i}")
        # then the decoder pool and the video encoder pool grow, and the autoscaler launches a second GPU node
        # and more CPU nodes for them
        peak = {"decoder": 0, "video_encoder": 0, "cpu_decode": 0, "gpu_model": 0}

        def grown():
            pools, nodes = g.view()[0], cluster.node_types()
            for k in ("decoder", "video_encoder"):
                peak[k] = max(peak[k], pools[k]["replicas"])
            for k in ("cpu_decode", "gpu_model"):
                peak[k] = max(peak[k], nodes.get(k, 0))
            assert_placed_by_type(g, cluster)
            return peak["decoder"] >= 3 and peak["video_encoder"] == 2 and peak["gpu_model"] == 2 and peak["cpu_decode"] >= 2

        try:
            wait_for(grown, 240, "pools and nodes grow", every=1)
        except AssertionError as e:
            raise AssertionError(f"{e}: the most seen {peak}; pools {g.view()[0]}; replicas started {g.started}") from None
        for i in range(len(files)):
            h = streams.wait(f"file{i}", {"finished", "failed"}, timeout=300)
            assert h["status"] == "finished", json.dumps(h)
        # and while the live streams still run, the pools shrink back: decoders retire and their streams move
        wait_for(lambda: (p := g.view()[0])["decoder"]["replicas"] == 1 and p["video_encoder"]["replicas"] == 1
                 and not p["decoder"]["draining"], 120, f"pools back to their minimum: {g.view()[0]}", every=1)
        seen = {s: len(streams.tags(s)) for s in ("live-a", "live-b")}
        for s in seen:
            streams.wait_tags(s, seen[s] + 3, timeout=60)  # both live streams go on after the moves
            h = streams.status(s)
            assert h["status"] == "running" and h["owner"] in g.decoders, h
        # then, the streams ended, the extra nodes go away after their idle timeout
    finally:
        live.stop()
        live2.stop()
        for s in ("live-a", "live-b"):
            streams.stop(s)
    wait_for(lambda: cluster.node_types() == {"head": 1, "cpu_decode": 1, "gpu_model": 1}, 120,
             "the idle nodes leave", every=1)
    for i, v in enumerate(files):  # every file's tags are complete, none written twice
        assert_complete_once(streams, f"file{i}", clip_starts(g, v))
    for s in ("live-a", "live-b"):
        starts = [r["t0"] for _, r in streams.tags(s)]
        assert len(starts) == len(set(starts)), f"{s}: a clip written twice"


def test_a_node_lost_mid_stream_loses_no_file_clip(cluster, cluster_graph, trained_model):
    g = cluster_graph
    streams = Streams(g.settings)
    videos = largest_videos(trained_model, 2)
    with HttpServer(videos[0].parent) as http:
        proxy = TcpProxy(http.port).start()
        proxy.drip(600, rate=20_000)  # slow VOD: the streams still run when the node goes
        try:
            for i, v in enumerate(videos):
                streams.push(proxy.url(v.name), f"vod{i}")
            streams.wait_tags("vod0", 2, timeout=120)
            # when the node of the decoder running vod0 dies (its raylet killed)
            owner = streams.status("vod0")["owner"]
            node = next(r["node_id"] for r in replicas_by_pool(g)["decoder"] if r["name"] == owner)
            assert node_type_by_id(cluster)[node] == "cpu_decode"
            assert cluster.kill_node(node) == 1
            wait_for(lambda: node not in node_type_by_id(cluster), 60, "the node is declared dead")
            # then its streams resume elsewhere and every clip is tagged exactly once
            for i in range(2):
                h = streams.wait(f"vod{i}", {"finished", "failed"}, timeout=300)
                assert h["status"] == "finished", json.dumps(h)
            assert streams.status("vod0")["owner"] != owner or int(streams.status("vod0").get("attempts", 0)) >= 1
            for i, v in enumerate(videos):
                assert_complete_once(streams, f"vod{i}", clip_starts(g, v))
        finally:
            proxy.stop()
    assert_placed_by_type(g, cluster)
