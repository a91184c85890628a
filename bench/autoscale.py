"""The graph's autoscaling on Ray's fake multi-node cluster (bench/fakecluster.py, one machine): a ramp of live
streams, e.g. 4 -> 32 -> 4, with each pool's size and the cluster's nodes by type sampled every second, the time
from the load's arrival to each new replica serving, p95 tag latency during each phase, and every stream's clips
tagged, dropped (live back-pressure), missed (gaps: a stream moved between decoders, a node lost) and doubled.

    python -m bench.autoscale --model models/demo --ramp 4,32,4 --hold 60 --out bench/results/autoscale.json

Node types: cpu_decode (CPU, vbs_decode: only decoders go there) and gpu_model (a fake GPU: the video encoder
and fusion ask for half a GPU each, so they land only there; torch sees no CUDA and they run on the CPU). On a 2-core machine every fake node shares
those 2 cores: the figures are for the mechanism (how fast pools and nodes follow the load), not throughput.
The fake nodes share this checkout's code (tests/cluster/test_vbs_up_on_a_cluster.py shows the working_dir
shipping on a cluster joined with `vbs up --address`)."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench import cpu_model, write_result

log = logging.getLogger("bench.autoscale")

WORKER_TYPES = {
    "cpu_decode": {"resources": {"CPU": 4, "vbs_decode": 1000}, "node_config": {}, "min_workers": 0, "max_workers": 3},
    "gpu_model": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
}


def cluster_settings(model: Path, prefix: str, redis_url: str, streams_per_decoder: int, downscale_delay: float):
    from schemas.config import Settings

    return Settings.model_validate({
        "model_dir": str(model), "redis": {"url": redis_url, "prefix": prefix},
        "url_policy": {"media_root": str(model), "allow_loopback": True},
        "decoder": {"replicas": 1, "min_replicas": 1, "max_replicas": 8, "streams_per_replica": streams_per_decoder,
                    "num_cpus": 1, "resources": {"vbs_decode": 1}, "open_timeout_s": 5, "read_timeout_s": 5,
                    "watchdog_s": 10, "max_in_flight": 2},
        "video_encoder": {"replicas": 1, "min_replicas": 1, "max_replicas": 2, "num_gpus": 0.5, "num_cpus": 1,
                          "target_queue": 8, "max_wait_ms": 5},
        "language": {"num_cpus": 0.25, "max_wait_ms": 2},
        "fusion": {"replicas": 1, "min_replicas": 1, "max_replicas": 2, "num_gpus": 0.5, "num_cpus": 1,
                   "target_queue": 8, "max_wait_ms": 5},
        "supervisor": {"heartbeat_s": 0.5, "lease_s": 5.0, "poll_ms": 100},
        "autoscaling": {"interval_s": 1.0, "look_back_s": 5.0, "downscale_delay_s": downscale_delay,
                        "drain_timeout_s": 30},
    })


def make_source(model: Path, out: Path) -> Path:
    """A held-out video re-encoded with a keyframe every second (a receiver joins at once), 20 s."""
    src = max((model / "data" / "heldout").glob("*.mp4"), key=lambda p: p.stat().st_size)
    target = out / "live_source.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", "20", "-an",
                    "-c:v", "libx264", "-preset", "veryfast", "-g", "15", "-keyint_min", "15", "-sc_threshold", "0",
                    "-pix_fmt", "yuv420p", str(target)], check=True)
    return target


class Streams:
    """The streams as a user sees them, through Redis only."""

    def __init__(self, settings):
        from actors.keys import Keys, redis_client

        self.r, self.keys = redis_client(settings.redis.url), Keys(settings.redis.prefix)

    def push(self, url: str, sid: str, options: dict) -> None:
        self.r.xadd(self.keys.ingest, {"url": url, "stream_id": sid, "options": json.dumps(options)})

    def status(self, sid: str) -> dict:
        return self.r.hgetall(self.keys.stream(sid))

    def tags(self, sid: str) -> list[tuple[str, dict]]:
        return [(eid, json.loads(f["data"])) for eid, f in self.r.xrange(self.keys.tags(sid))]

    def stop(self, sid: str) -> None:
        self.r.hset(self.keys.stream(sid), "stop", 1)


def sample(graph, cluster, t0: float) -> dict:
    pools, _ = graph.view()
    return {"t": round(time.monotonic() - t0, 1), "pools": {k: [v["replicas"], v["target"]] for k, v in pools.items()},
            "nodes": cluster.node_types()}


def run(args) -> dict:
    import ray

    from actors.graph import start_graph
    from actors.keys import Keys, redis_client
    from bench.fakecluster import FakeCluster
    from bench.sources import UdpSender

    ramp = [int(x) for x in args.ramp.split(",")]
    model = Path(args.model).resolve()
    prefix = f"vbsauto{uuid.uuid4().hex[:6]}"
    settings = cluster_settings(model, prefix, args.redis_url, args.streams_per_decoder, args.downscale_delay)
    work = Path(tempfile.mkdtemp(prefix="vbs-autoscale-"))
    source = make_source(model, work)
    senders = [UdpSender(source, loop=True) for _ in range(max(ramp))]
    cluster = FakeCluster({"CPU": 2}, WORKER_TYPES, idle_timeout_s=args.idle_timeout)
    cluster.start()
    timeline, phases, graph = [], [], None
    try:
        # no runtime_env here: every fake node shares this checkout, and one session dir; with a working_dir, the
        # unpacked copy vanished under running workers as fake nodes came and went (their os.getcwd() raised
        # FileNotFoundError). Real nodes each have their own disk
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        t0 = time.monotonic()
        graph = start_graph(settings)
        log.info("graph up in %.0f s", time.monotonic() - t0)
        streams = Streams(settings)
        running: list[int] = []
        t0, t0_wall = time.monotonic(), time.time()
        nodes_at_start = sum(cluster.node_types().values())
        for phase, n in enumerate(ramp):
            start = time.monotonic()
            while len(running) < n:  # more streams: start senders and push them
                i = len(running)
                senders[i].start()
                streams.push(senders[i].receiver_url(5.0), f"live{i}", options={"live": True})
                running.append(i)
            while len(running) > n:  # fewer: stop them (the stream ends as stopped)
                i = running.pop()
                streams.stop(f"live{i}")
                senders[i].stop()
            lat_from = {i: len(streams.tags(f"live{i}")) for i in running}
            hold_until = start + args.hold
            settle = phase == len(ramp) - 1
            while time.monotonic() < hold_until or (settle and time.monotonic() < hold_until + args.settle
                                                     and not settled(graph, cluster, nodes_at_start)):
                timeline.append(sample(graph, cluster, t0))
                time.sleep(1.0)
            lat = [r.get("latency_s") for i in running for _, r in streams.tags(f"live{i}")[lat_from[i]:]]
            lat = [x for x in lat if x is not None]
            if settle:
                timeline.append(sample(graph, cluster, t0))
            phases.append({"streams": n, "started_at_s": round(start - t0, 1), "seconds": round(time.monotonic() - start, 1),
                           "tags": len(lat), "p50_latency_s": _pct(lat, 50), "p95_latency_s": _pct(lat, 95)})
        for i in running:
            streams.stop(f"live{i}")
        time.sleep(3)
        totals = {"tagged": 0, "dropped": 0, "missed": 0, "doubled": 0, "moves_or_reclaims": 0}
        for i in range(max(ramp)):
            h, rows = streams.status(f"live{i}"), streams.tags(f"live{i}")
            starts = [r["t0"] for _, r in rows]
            totals["tagged"] += len(rows)
            totals["doubled"] += len(starts) - len(set(starts))
            totals["dropped"] += int(h.get("clips_dropped", 0) or 0)
            totals["missed"] += int(h.get("clips_missed", 0) or 0)
        started = []
        for x in graph.started:  # replicas that came up after the ramp began: load arrival -> serving
            at = x["wall"] - t0_wall  # when it served; it was created start_s before, in the phase whose load
            if at > 0:                 # asked for it
                k = _phase_at(at - x["start_s"], phases)
                started.append({"pool": x["pool"], "name": x["name"], "phase": k, "start_s": x["start_s"],
                                "serving_after_load_s": round(at - phases[k]["started_at_s"], 1)})
        r = redis_client(settings.redis.url)
        totals["moves_or_reclaims"] = int(r.hget(Keys(prefix).counters, "reclaims") or 0)
    finally:
        for s in senders:
            s.stop()
        if graph is not None:
            graph.stop()
            rc = redis_client(settings.redis.url)
            for key in rc.scan_iter(f"{prefix}:*"):
                rc.delete(key)
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    return {"bench": "autoscale", "cpu": cpu_model(), "ramp": ramp, "hold_s": args.hold, "phases": phases,
            "scale_up_s": scale_up_times(timeline, phases), "streams": totals, "timeline": timeline,
            "replica_start_s": started,
            "settings": {"worker_types": WORKER_TYPES, "idle_timeout_s": args.idle_timeout,
                         "streams_per_decoder": args.streams_per_decoder, "downscale_delay_s": args.downscale_delay}}


def settled(graph, cluster, nodes_at_start: int) -> bool:
    """Every pool back at its minimum and the cluster back to the nodes it had before the ramp."""
    pools, _ = graph.view()
    at_min = all(p["replicas"] == p["min"] and not p["draining"] and not p["starting"] for p in pools.values())
    return at_min and sum(cluster.node_types().values()) <= nodes_at_start


def scale_up_times(timeline: list[dict], phases: list[dict]) -> dict:
    """For each phase that raised the load: seconds from its start until each pool reached its largest size
    in that phase, and until the cluster had its most nodes."""
    out = {}
    for k, ph in enumerate(phases):
        if k and ph["streams"] <= phases[k - 1]["streams"]:
            continue
        t_start, t_end = ph["started_at_s"], ph["started_at_s"] + ph["seconds"]
        rows = [x for x in timeline if t_start <= x["t"] <= t_end]
        if not rows:
            continue
        res = {}
        for pool in rows[0]["pools"]:
            top = max(x["pools"][pool][0] for x in rows)
            res[pool] = {"replicas": top, "after_s": round(next(x["t"] for x in rows if x["pools"][pool][0] == top) - t_start, 1)}
        nodes = [sum(x["nodes"].values()) for x in rows]
        res["nodes"] = {"count": max(nodes), "after_s": round(rows[nodes.index(max(nodes))]["t"] - t_start, 1)}
        out[f"to_{ph['streams']}"] = res
    return out


def _phase_at(t: float, phases: list[dict]) -> int:
    return max([k for k, p in enumerate(phases) if p["started_at_s"] <= t] or [0])


def _pct(xs, q):
    return round(float(np.percentile(xs, q)), 3) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (its data/heldout videos are the live sources)")
    ap.add_argument("--ramp", default="4,32,4", help="live streams in each phase (default 4,32,4)")
    ap.add_argument("--hold", type=float, default=60, help="seconds each phase lasts (default 60)")
    ap.add_argument("--settle", type=float, default=120,
                    help="after the last phase, wait at most this long for the pools and nodes to shrink (default 120)")
    ap.add_argument("--streams-per-decoder", type=int, default=4, help="decoder pool's target load (default 4)")
    ap.add_argument("--downscale-delay", type=float, default=15, help="autoscaling.downscale_delay_s (default 15)")
    ap.add_argument("--idle-timeout", type=float, default=15, help="seconds before an idle fake node leaves (default 15)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--out", default="bench/results/autoscale.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(args)
    write_result(args.out, result)
    print(json.dumps({k: result[k] for k in ("cpu", "ramp", "phases", "scale_up_s", "streams")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
