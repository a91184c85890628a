"""A soak: live streams (8 by default) through the whole graph for --minutes, with the resident memory (RSS) of
every actor process and Redis's used memory sampled every --every seconds. After --warmup minutes each series
must stay within --tolerance (10%) of its value at the end of the warm-up: what grows past that is a leak.
Writes JSON (every sample, and per series its value after warm-up, its peak and its growth).

    python -m bench.soak --model models/demo --minutes 60 --out bench/results/soak.json

Each stream's tag stream is capped at --tags-maxlen rows (the service's default keeps 10,000 per stream,
which 8 streams take 5 hours to reach: Redis would grow through any shorter soak by design, not by a leak)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import cpu_model, write_result

log = logging.getLogger("bench.soak")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (from /proc; the soak runs on one machine)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def actor_pids(graph) -> dict[str, int]:
    """Every actor of the graph by a readable name -> its process id."""
    import ray

    actors = {"supervisor": graph.supervisor, **{f"decoder-{i}": d for i, d in enumerate(graph.decoders.values())}}
    for stage, handles in graph.stages.items():
        actors |= {f"{stage}-{i}": h for i, h in enumerate(handles)}
    pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors.values()], timeout=60)
    return dict(zip(actors, pids))


def growth(series: list[tuple[float, float]], warmup_min: float) -> dict:
    """A series' value at the end of the warm-up, its peak after it, and the peak's growth over that value."""
    after = [v for t, v in series if t >= warmup_min]
    if not after:
        return {"after_warmup": None, "peak": None, "growth": None}
    base = after[0]
    peak = max(after)
    return {"after_warmup": round(base, 1), "peak": round(peak, 1), "last": round(after[-1], 1),
            "growth": round(peak / base - 1, 4) if base else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/demo")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0, help="minutes before the baseline is taken")
    p.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--tolerance", type=float, default=0.10, help="largest growth after warm-up that is flat")
    p.add_argument("--tags-maxlen", type=int, default=200)
    p.add_argument("--config", default=None, help="TOML config (default: ops/config.toml)")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--out", default="bench/results/soak.json")
    a = p.parse_args(argv)
    if a.warmup >= a.minutes:
        p.error("--warmup must be shorter than --minutes")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray

    from actors import control
    from actors.graph import start_graph
    from actors.keys import Keys, redis_client
    from bench.sources import paced_udp_streams
    from bench.streams import make_source
    from ops.up import DEFAULT_CONFIG
    from schemas.config import Settings
    from schemas.streams import IngestJob

    settings = Settings.load(a.config or DEFAULT_CONFIG, redis_url=a.redis_url, model_dir=a.model)
    prefix = f"vbssoak{uuid.uuid4().hex[:6]}"
    settings.redis.prefix, settings.redis.tags_maxlen = prefix, a.tags_maxlen
    keys, r = Keys(prefix), redis_client(settings.redis.url)
    ray.init(num_cpus=8, include_dashboard=False, namespace="vbs-soak", log_to_driver=False, configure_logging=False)
    samples: list[dict] = []
    graph = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = make_source(Path(settings.model_dir), Path(tmp))
            graph = start_graph(settings)
            pids = actor_pids(graph)
            with paced_udp_streams(source, a.streams) as senders:
                for i, snd in enumerate(senders):
                    control.submit(r, keys, IngestJob(url=snd.url, stream_id=f"soak{i}"))
                start = time.monotonic()
                while True:
                    t_min = (time.monotonic() - start) / 60
                    states = [control.state(r, keys, f"soak{i}") for i in range(a.streams)]
                    sample = {"t_min": round(t_min, 2), "redis_mb": round(r.info("memory")["used_memory"] / 2**20, 1),
                              "rss_mb": {name: round(rss_mb(pid), 1) for name, pid in pids.items()},
                              "clips_tagged": sum(s.clips_tagged for s in states if s),
                              "clips_dropped": sum(s.clips_dropped for s in states if s),
                              "running": sum(1 for s in states if s and s.status.value == "running")}
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
                    if t_min >= a.minutes:
                        break
                    time.sleep(min(a.every, max(0.0, a.minutes * 60 - (time.monotonic() - start))))
                for i in range(a.streams):
                    control.request_stop(r, keys, f"soak{i}")
                time.sleep(2)
    finally:
        if graph is not None:
            graph.stop()
        ray.shutdown()
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)
    series = {"redis": growth([(s["t_min"], s["redis_mb"]) for s in samples], a.warmup)}
    for name in samples[0]["rss_mb"]:
        series[name] = growth([(s["t_min"], s["rss_mb"][name]) for s in samples], a.warmup)
    worst = max((v["growth"] for v in series.values() if v["growth"] is not None), default=None)
    result = {"cpu": cpu_model(), "streams": a.streams, "minutes": a.minutes, "warmup_min": a.warmup,
              "tolerance": a.tolerance, "tags_maxlen": a.tags_maxlen, "series": series, "worst_growth": worst,
              "flat": worst is not None and worst <= a.tolerance,
              "clips_per_stream_per_min": round(samples[-1]["clips_tagged"] / a.streams / samples[-1]["t_min"], 2),
              "clips_dropped": samples[-1]["clips_dropped"], "samples": samples}
    write_result(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    return 0 if result["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
