"""How many concurrent live 360p25 streams this machine tags in real time, side by side in the same run
with how many it can merely decode (the same decoders, no model), with p50/p95 end-to-end tag latency
(clip end in stream time -> tag written to Redis). Writes JSON.

    python -m bench.streams --model models/demo --ladder 8,16,24,32,40 --seconds 20 --out bench/results/streams.json

Each step of the ladder: N looping live MPEG-TS streams over UDP on loopback (ffmpeg -re -c copy, a few
% CPU for all of them), pushed onto the ingest stream of a fresh graph; after a warm-up, tags are counted
for `--seconds`. A step is *real time* when every stream delivered all its clips
(seconds / 1.5 each, less one for the phase of the window), no clip was dropped, and p95 latency <= --p95-limit. Decode-only runs the same
decoders with a pipeline that skips the models. Beside them, in the same run: raw PyAV decoding of the same
source with the config's decode options, `--raw-concurrency` copies at once, no graph (bench.decode_options):
`raw_decode_fps` and `raw_decode_streams`, the ceiling the graph's decode-only figure is held against."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from actors.source import decode_options
from bench import write_result
from bench.decode_options import raw_decode_fps, source_fps

log = logging.getLogger("bench.streams")


class NullPipeline:
    """Decode only: clips are cut (frames sampled and resized) and committed without running a model."""

    def submit(self, clip, context, item):
        from videobert.tagging import ClipScore

        return 0, ClipScore(labels={}, alignment=None)

    def result(self, handle, timeout):
        return handle


def _null_factory(key):
    return NullPipeline()


def make_source(model: Path, out: Path, seconds: int = 30) -> Path:
    """A 640x360, 25 fps H.264 clip with a keyframe every second, from the model's held-out videos."""
    src = sorted((model / "data" / "heldout").glob("*.mp4"))
    if not src:
        raise FileNotFoundError(f"{model}/data/heldout has no videos (build the demo model first)")
    target = out / "source_360p25.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src[0]), "-t", str(seconds),
                    "-vf", "scale=640:360,fps=25", "-an", "-c:v", "libx264", "-preset", "veryfast", "-g", "25",
                    "-keyint_min", "25", "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(target)], check=True)
    return target


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def started_counts(r, keys, n: int, timeout: float) -> dict[str, int]:
    """Each stream's clips tagged so far, once every stream has its first tag (or after `timeout` seconds: a stream
    still without a state counts from 0, and falls short)."""
    from actors import control

    deadline = time.time() + timeout
    while True:
        states = {f"b{i}": control.state(r, keys, f"b{i}") for i in range(n)}
        if all(st is not None and st.clips_tagged > 0 for st in states.values()) or time.time() >= deadline:
            return {sid: st.clips_tagged if st is not None else 0 for sid, st in states.items()}
        time.sleep(0.5)


def run_step(n: int, mode: str, source: Path, settings, seconds: float, warmup: float) -> dict:
    import ray

    from actors import control
    from actors.decoder import DecoderActor
    from actors.graph import start_graph
    from actors.keys import Keys, redis_client
    from bench.sources import paced_udp_streams
    from schemas.state import StreamState, TagResult
    from schemas.streams import IngestJob

    prefix = f"vbsbench{uuid.uuid4().hex[:6]}"
    s = settings.model_copy(deep=True)
    s.redis.prefix = prefix
    keys, r = Keys(prefix), redis_client(s.redis.url)
    graph = None
    decoders = []
    try:
        if mode == "pipeline":
            graph = start_graph(s)
        else:  # the same decoders and supervisor, with the model stages replaced by NullPipeline
            from actors.supervisor import SupervisorActor

            spec = {"seconds": 1.5, "frames": 8, "size": 64}
            names = [f"{prefix}-decoder-{i}" for i in range(s.decoder.replicas)]
            decoders = [ray.remote(DecoderActor).options(num_cpus=s.decoder.num_cpus, name=nm,
                                                         max_concurrency=s.decoder.max_streams + 8)
                        .remote(nm, s, None, _null_factory, spec) for nm in names]
            ray.get([d.active.remote() for d in decoders])
            sup = ray.remote(SupervisorActor).options(num_cpus=0, max_concurrency=4).remote(s, names)
            ray.get(sup.ready.remote())
            decoders.append(sup)
        with paced_udp_streams(source, n) as senders:
            for i, snd in enumerate(senders):
                control.submit(r, keys, IngestJob(url=snd.url, stream_id=f"b{i}"))
            time.sleep(warmup)
            start = started_counts(r, keys, n, timeout=60.0)
            pids = [snd.proc.pid for snd in senders]
            t_start, cpu_start = time.time(), cpu_seconds(pids)
            time.sleep(seconds)
            t_end, sender_cpu = time.time(), cpu_seconds(pids) - cpu_start
            stats = {}
            lat, per_stream, dropped, lagging = [], [], 0, {}
            for i in range(n):
                sid = f"b{i}"
                st = StreamState.from_hash(sid, r.hgetall(keys.stream(sid)))
                per_stream.append(st.clips_tagged - start[sid])
                if per_stream[-1] < (t_end - t_start) / 1.5 - 1.5:  # say why a stream fell short
                    lagging[sid] = {k: getattr(st, k) for k in ("status", "reason", "error", "reconnects", "clips_tagged")}
                dropped += st.clips_dropped
                started = st.started_at or 0.0
                for _, f in r.xrange(keys.tags(sid)):
                    row = TagResult.model_validate_json(f["data"])
                    if row.latency_s is None:
                        continue
                    written = started + row.t1 + row.latency_s  # wall time the tag was written
                    if t_start <= written <= t_end:
                        lat.append(row.latency_s)
            if graph is not None:
                stats = graph.stats()
            for i in range(n):
                control.request_stop(r, keys, f"b{i}")
            time.sleep(2)
        expected = (t_end - t_start) / 1.5
        lat_a = np.array(lat) if lat else np.array([np.nan])
        result = {"streams": n, "mode": mode, "seconds": round(t_end - t_start, 1),
                  "clips_expected_per_stream": round(expected, 1),
                  "clips_min_per_stream": min(per_stream), "clips_mean_per_stream": round(float(np.mean(per_stream)), 2),
                  "dropped": dropped, "latency_p50_s": round(float(np.nanpercentile(lat_a, 50)), 3),
                  "latency_p95_s": round(float(np.nanpercentile(lat_a, 95)), 3), "latency_n": len(lat),
                  # the bench's own ffmpeg senders take part of the machine: the graph had the rest
                  "sender_cpu_cores": round(sender_cpu / (t_end - t_start), 2),
                  "short_streams": lagging}
        if stats:
            result["batch_mean"] = {k: stats[k][0]["mean_batch"] for k in ("video_encoder", "fusion")}
        return result
    finally:
        if graph is not None:
            graph.stop()
        for d in decoders:
            ray.kill(d, no_restart=True)
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/demo")
    p.add_argument("--ladder", default="8,16,24,32,40", help="stream counts to try, ascending")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--p95-limit", type=float, default=2.5)
    p.add_argument("--modes", default="decode,pipeline")
    p.add_argument("--config", default=None, help="TOML config (default: ops/config.toml)")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--decoder-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a [decoder] setting for this run, e.g. skip_frame=auto (repeatable; over the config's)")
    p.add_argument("--raw-concurrency", type=int, default=16, help="streams decoded at once for the raw figure")
    p.add_argument("--raw-seconds", type=float, default=10.0, help="seconds of raw decoding (default 10)")
    p.add_argument("--out", default="bench/results/streams.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray

    from ops.up import DEFAULT_CONFIG
    from schemas.config import Settings

    settings = Settings.load(a.config or DEFAULT_CONFIG, redis_url=a.redis_url, model_dir=a.model)
    settings.model_dir = str(Path(settings.model_dir).resolve())
    if a.decoder_option:
        from schemas.config import DecoderSettings

        given = dict(o.split("=", 1) for o in a.decoder_option)
        settings.decoder = DecoderSettings.model_validate({**settings.decoder.model_dump(), **given})
    ladder = [int(x) for x in a.ladder.split(",")]
    ray.init(num_cpus=8, include_dashboard=False, namespace="vbs-bench", log_to_driver=False, configure_logging=False)
    results: dict = {"machine": {"cpus": os.cpu_count(), "gpu": False}, "p95_limit_s": a.p95_limit, "steps": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = make_source(Path(settings.model_dir), Path(tmp))
            results["raw_decode_fps"] = round(raw_decode_fps(source, decode_options(settings.decoder), a.raw_concurrency,
                                                             a.raw_seconds), 1)
            results["raw_decode_streams"] = int(results["raw_decode_fps"] // source_fps(source))
            results["decode_options"] = asdict(decode_options(settings.decoder))
            print(json.dumps({k: results[k] for k in ("raw_decode_fps", "raw_decode_streams")}), flush=True)
            for mode in a.modes.split(","):
                for n in ladder:
                    step = run_step(n, mode, source, settings, a.seconds, a.warmup)
                    ok = (step["clips_min_per_stream"] >= step["clips_expected_per_stream"] - 1.5 and step["dropped"] == 0
                          and (mode == "decode" or step["latency_p95_s"] <= a.p95_limit))
                    step["real_time"] = bool(ok)
                    results["steps"].append(step)
                    print(json.dumps(step), flush=True)
                    if not ok:
                        break
    finally:
        ray.shutdown()
    for mode in ("decode", "pipeline"):
        good = [s["streams"] for s in results["steps"] if s["mode"] == mode and s["real_time"]]
        results[f"{mode}_streams"] = max(good) if good else 0
    if results.get("decode_streams"):
        results["pipeline_over_decode"] = round(results["pipeline_streams"] / results["decode_streams"], 3)
    if results.get("raw_decode_streams") and "decode_streams" in results:
        results["decode_over_raw"] = round(results["decode_streams"] / results["raw_decode_streams"], 3)
    write_result(a.out, results)
    print(json.dumps({k: v for k, v in results.items() if k != "steps"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
