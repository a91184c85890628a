"""Two ways to plumb the model stages, side by side in one run on one local Ray, with the SAME stand-in stages:

  actors  one Ray actor per stage (async, max_concurrency=1000), batching across streams with actors/batching.py's
          Batcher; decoders chain object refs: w = v.encode.remote(clip); t = l.encode.remote(text);
          r = f.tag.remote(t, w) (as actors/pipeline.py's RayPipeline does).
  serve   one Ray Serve deployment per stage, `autoscaling_config` pinned to min = max = 1 replica (so the replica
          counts match the actors'), `@serve.batch` batching across streams; decoders call deployment handles and
          pass the encoders' DeploymentResponses into the fusion call (Serve resolves them).

    python -m bench.stage_designs --streams 48 --seconds 30 --out bench/results/stage_designs.json

The callers are Ray actors, as our decoders are: `--decoders` actors, each running its share of the streams as
asyncio tasks that send one clip every `--period` seconds (a live stream; jittered start). The stand-in stages
spend `--batch-ms` + `--item-ms` per item on each batch (language a `--language-scale` of that) with time.sleep:
the compute is real latency but no CPU, so it does not fight the plumbing for this machine's cores. Both designs
run a batch at a time in one worker thread of the replica. Per design: tag latency (submit -> fusion result:
p50/p95/p99), clips/s, mean batch size per stage, per-clip overhead (mean latency - the stand-in compute on the
clip's path; `plumbing_ms` also takes off the time waiting in a stage for its batch), the CPU seconds of every
process of this Ray session (driver, GCS, raylet, workers) by role, and with `--saturate` the most clips/s the
plumbing carries (every stream back to back, `--in-flight` clips at a time). `--designs ...,serve_tuned` adds Serve
with its latency knobs set (SERVE_TUNED_ENV below)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from bench import cpu_model, write_result

STAGES = ("video_encoder", "language", "fusion")
NS = "vbs-stage-designs"


class StageCore:
    """A stand-in stage on a batch of (arrival time, item): sleeps a fixed cost per batch plus one per item, and
    counts batches, items, the items' wait for their batch and their time in compute (for the summary)."""

    def __init__(self, kind: str, batch_ms: float, item_ms: float):
        self.kind, self.batch_s, self.item_s = kind, batch_ms / 1000, item_ms / 1000
        self.batches = self.items = 0
        self.wait_s = self.compute_s = 0.0

    def __call__(self, batch: list) -> list:
        start = time.perf_counter()
        time.sleep(self.batch_s + self.item_s * len(batch))
        took = time.perf_counter() - start
        self.batches, self.items = self.batches + 1, self.items + len(batch)
        self.wait_s += sum(start - t for t, _ in batch)
        self.compute_s += took * len(batch)
        return [self.one(x) for _, x in batch]

    def one(self, x):
        if self.kind == "video_encoder":  # uint8 clip -> visual word
            return int(x.flat[0]) * 31 + x.shape[0]
        if self.kind == "language":  # subtitle -> token ids
            return [zlib.crc32(w.encode()) % 30522 for w in x.split()]
        word, text_ids = x  # fusion: (word, text ids) -> a small tag
        return {"word": word, "label": f"l{word % 7}", "text_tokens": len(text_ids)}

    def stats(self) -> dict:
        return {"batches": self.batches, "items": self.items, "wait_s": self.wait_s, "compute_s": self.compute_s}


class _Calls:
    """The stage calls both designs' replicas answer: each item is stamped on arrival and handed to `_batch`."""

    async def encode(self, x):  # video_encoder: clip -> word; language: text -> ids
        return await self._batch((time.perf_counter(), x))

    async def tag(self, text_ids, word):  # fusion: the other stages' results, resolved by Ray / Serve
        return await self._batch((time.perf_counter(), (word, text_ids)))

    def stats(self) -> dict:
        return self.core.stats()


class ActorStage(_Calls):
    """Design A's stage: an async actor with a Batcher (one batch at a time in a worker thread)."""

    def __init__(self, kind, batch_ms, item_ms, max_batch, max_wait_s):
        from actors.batching import Batcher

        self.core = StageCore(kind, batch_ms, item_ms)
        self._batch = Batcher(self.core, max_batch, max_wait_s, kind).submit


@serve.deployment
class ServeStage(_Calls):
    """Design B's stage: @serve.batch, the batch run in one worker thread as the Batcher does (a blocking batch
    in the replica's event loop would hold up every request arriving meanwhile)."""

    def __init__(self, kind, batch_ms, item_ms, max_batch, max_wait_s):
        self.core, self.pool = StageCore(kind, batch_ms, item_ms), ThreadPoolExecutor(1)
        self._batch.set_max_batch_size(max_batch)
        self._batch.set_batch_wait_timeout_s(max_wait_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=1)
    async def _batch(self, items: list) -> list:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.core, items)


class Decoders:
    """Stand-in decoders: one Ray actor running several streams as asyncio tasks; each clip goes through the
    three stages as a chain (refs or DeploymentResponses), the decoder awaiting only the fusion result."""

    def __init__(self, design: str, streams: list[int], shape: tuple, seed: int):
        import ray

        self.design, self.streams = design, streams
        if design == "actors":
            self.stages = [ray.get_actor(s, namespace=NS) for s in STAGES]
        else:
            self.stages = [serve.get_deployment_handle(s, app_name=s) for s in STAGES]
        rng = np.random.default_rng(seed)
        self.clips = {s: rng.integers(0, 256, shape, dtype=np.uint8) for s in streams}

    def _chain(self, s: int, k: int):
        v, lang, f = self.stages
        w = v.encode.remote(self.clips[s])
        t = lang.encode.remote(f"stream {s} clip {k} says something about the picture")
        return f.tag.remote(t, w)  # an ObjectRef or a DeploymentResponse: both awaitable

    async def warm(self) -> int:
        await asyncio.gather(*(self._chain(s, -1) for s in self.streams))
        return len(self.streams)

    async def run(self, start_at: float, stop_at: float, period: float, in_flight: int, drain_s: float) -> list:
        """(wall time submitted, latency s or None, error or None) per clip submitted in [start_at, stop_at)."""
        out, pending = [], set()
        rng = np.random.default_rng(self.streams[0])

        async def one(s, k):
            t0, p0 = time.time(), time.perf_counter()
            try:
                await self._chain(s, k)
                out.append((t0, time.perf_counter() - p0, None))
            except Exception as e:  # noqa: BLE001 - counted, not raised
                out.append((t0, None, repr(e)[:200]))

        async def live(s, phase):  # one clip every `period`, whether the last one is done or not
            k = 0
            while (t := start_at + phase + k * period) < stop_at:
                await asyncio.sleep(max(0.0, t - time.time()))
                task = asyncio.create_task(one(s, k))
                pending.add(task)
                task.add_done_callback(pending.discard)
                k += 1

        async def back_to_back(s, lane):
            await asyncio.sleep(max(0.0, start_at - time.time()))
            k = lane
            while time.time() < stop_at:
                await one(s, k)
                k += in_flight

        if in_flight:
            await asyncio.gather(*(back_to_back(s, j) for s in self.streams for j in range(in_flight)))
        else:
            await asyncio.gather(*(live(s, rng.uniform(0, period)) for s in self.streams))
        if pending:
            await asyncio.wait(set(pending), timeout=drain_s)
        return out


def ray_cpu() -> dict:
    """CPU seconds (user + system) of this process and its descendants (GCS, raylet, agents, every worker) by
    (pid, start time), with a role read from the process title."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            cmd, t = p.cmdline(), p.cpu_times()
            if p.pid == me.pid:
                role = "driver"
            elif cmd and cmd[0].startswith("ray::"):
                role = cmd[0].split()[0].split(".")[0]  # ray::ServeReplica:fusion:fusion, ray::ActorStage, ...
            else:
                role = os.path.basename(next((c for c in cmd if c.endswith(".py")), cmd[0] if cmd else p.name()))
            out[(p.pid, p.create_time())] = (role, t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            pass
    return out


def cpu_delta(before: dict, after: dict) -> dict:
    roles: dict[str, float] = {}
    for key, (role, cpu) in after.items():
        roles[role] = roles.get(role, 0.0) + cpu - before.get(key, (role, 0.0))[1]
    return {r: round(c, 2) for r, c in sorted(roles.items(), key=lambda rc: -rc[1]) if c >= 0.01}


def measure(design, stage_stats, decoders, a, saturate: bool) -> dict:
    """One timed window: the decoders' clips submitted in it, the stages' counters and the CPU over it."""
    import ray

    warm, length = (1.0, a.saturate_seconds) if saturate else (a.warmup, a.seconds)
    t0 = time.time() + 1.0  # the run call reaches every decoder before its first clip
    w0, w1 = t0 + warm, t0 + warm + length
    refs = [d.run.remote(t0, w1, a.period, a.in_flight if saturate else 0, a.drain) for d in decoders]
    time.sleep(max(0.0, w0 - time.time()))
    s0, c0 = stage_stats(), ray_cpu()
    time.sleep(max(0.0, w1 - time.time()))
    s1, c1 = stage_stats(), ray_cpu()
    rows = [r for rs in ray.get(refs) for r in rs if w0 <= r[0] < w1]
    lat = np.array([r[1] for r in rows if r[1] is not None]) * 1000
    res = {"window_s": round(length, 1), "clips_submitted": len(rows), "clips_done": int(lat.size),
           "errors": sorted({r[2] for r in rows if r[2]})[:3], "clips_per_s": round(lat.size / length, 2)}
    if not saturate:
        res["clips_per_s_offered"] = round(a.streams / a.period, 2)
    if lat.size:
        res.update({f"latency_{k}_ms": round(float(np.percentile(lat, q)), 2)
                    for k, q in (("p50", 50), ("p95", 95), ("p99", 99))})
        res["latency_mean_ms"] = round(float(lat.mean()), 2)
    stages = {}
    for s in STAGES:
        d = {k: s1[s][k] - s0[s][k] for k in s1[s]}
        n = max(d["items"], 1)
        stages[s] = {"mean_batch": round(d["items"] / max(d["batches"], 1), 2),
                     "wait_ms": round(d["wait_s"] / n * 1000, 2), "compute_ms": round(d["compute_s"] / n * 1000, 2)}
    res["stages"] = stages
    if lat.size:  # a clip's path: both encoders side by side, then fusion (from per-stage means: an estimate)
        def path(*ks):
            return (max(sum(stages[s][k] for k in ks) for s in STAGES[:2]) + sum(stages["fusion"][k] for k in ks))

        res["compute_ms"] = round(path("compute_ms"), 2)
        res["overhead_ms"] = round(res["latency_mean_ms"] - path("compute_ms"), 2)  # with the waits for a batch
        res["plumbing_ms"] = round(res["latency_mean_ms"] - path("wait_ms", "compute_ms"), 2)  # transport only
    by_role = cpu_delta(c0, c1)
    res["cpu_s"] = round(sum(by_role.values()), 2)
    res["cpu_ms_per_clip"] = round(res["cpu_s"] * 1000 / max(lat.size, 1), 3)
    res["cpu_by_role"] = by_role
    return res


def run_design(design: str, a) -> dict:
    import ray

    scale = {"video_encoder": 1.0, "language": a.language_scale, "fusion": 1.0}
    conf = {s: (s, a.batch_ms * scale[s], a.item_ms * scale[s], a.max_batch, a.max_wait_ms / 1000) for s in STAGES}
    env = {"runtime_env": {"env_vars": SERVE_TUNED_ENV}} if design == "serve_tuned" else {}
    if design == "actors":
        stages = {s: ray.remote(ActorStage).options(name=s, namespace=NS, num_cpus=1, max_concurrency=1000)
                  .remote(*conf[s]) for s in STAGES}
        ray.get([h.stats.remote() for h in stages.values()])
        stage_stats = lambda: dict(zip(STAGES, ray.get([stages[s].stats.remote() for s in STAGES])))  # noqa: E731
    else:
        # one application per stage, no HTTP route: reached through handles only. max_ongoing_requests: Serve's
        # default (5) would cap every batch at 5 clips and queue the rest in the callers' routers
        for s in STAGES:
            serve.run(ServeStage.options(name=s, max_ongoing_requests=1000, autoscaling_config=dict(AUTOSCALING),
                                         ray_actor_options={"num_cpus": 1, **env},
                                         logging_config={"enable_access_log": not env}).bind(*conf[s]),
                      name=s, route_prefix=None)
        handles = {s: serve.get_deployment_handle(s, app_name=s) for s in STAGES}
        stage_stats = lambda: {s: handles[s].stats.remote().result() for s in STAGES}  # noqa: E731
    shares = np.array_split(np.arange(a.streams), a.decoders)
    decoders = [ray.remote(Decoders).options(num_cpus=1, max_concurrency=1000, namespace=NS, **env)
                .remote(design, [int(i) for i in share], tuple(a.shape), i) for i, share in enumerate(shares)]
    ray.get([d.warm.remote() for d in decoders])  # routers learn their replicas, workers import everything
    out = {"live": measure(design, stage_stats, decoders, a, saturate=False)}
    if a.saturate:
        out["saturate"] = measure(design, stage_stats, decoders, a, saturate=True)
    for d in decoders:
        ray.kill(d)
    if design == "actors":
        for h in stages.values():
            ray.kill(h)
    else:
        for s in STAGES:
            serve.delete(s)
    return out


# min = max = 1: Serve's autoscaler is wired in as in Ray's video-analysis tutorial, but the replica count is
# held at the actors' one per stage so that only the plumbing differs
AUTOSCALING = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1, "target_ongoing_requests": 32}
# design "serve_tuned" (opt-in): Serve's own latency knobs, in the replicas and in the callers' routers: user code
# and the handle's router on the process's main event loop instead of a thread / loop of their own each (both
# default to 1), and no access log line per request
SERVE_TUNED_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(results: dict) -> dict:
    """Each design over the actors for the figures that decide, and which design wins each (lower is better,
    but clips/s)."""
    keys = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "overhead_ms", "plumbing_ms", "cpu_ms_per_clip",
            "clips_per_s")
    ratio, wins = {}, {}
    for run in ("live", "saturate"):
        for k in keys:
            got = {d: r[run][k] for d, r in results.items() if r.get(run, {}).get(k) is not None}
            if len(got) < 2:
                continue
            best = (max if k == "clips_per_s" else min)(got.values())
            top = [d for d, v in got.items() if v == best]
            wins[f"{run}.{k}"] = top[0] if len(top) == 1 else "tie"
            for d, y in got.items():
                if d != "actors" and got.get("actors"):
                    ratio.setdefault(f"{d}_over_actors", {})[f"{run}.{k}"] = round(y / got["actors"], 3)
    return {**ratio, "winner": wins}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=48, help="live streams (client loops), default 48")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds of the live run, per design")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of live load before the measured window")
    p.add_argument("--period", type=float, default=1.5, help="seconds between a stream's clips (live rate)")
    p.add_argument("--decoders", type=int, default=2, help="decoder actors the streams are shared among")
    p.add_argument("--shape", type=int, nargs=4, default=[16, 64, 64, 3], metavar=("T", "H", "W", "C"),
                   help="uint8 clip shape sent to the video encoder, default 16 64 64 3")
    p.add_argument("--batch-ms", type=float, default=5.0, help="stand-in cost per batch (video encoder, fusion)")
    p.add_argument("--item-ms", type=float, default=0.2, help="stand-in cost per item in a batch")
    p.add_argument("--language-scale", type=float, default=0.2, help="language's cost as a share of the others'")
    p.add_argument("--max-batch", type=int, default=32, help="max batch size per stage (both designs)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest wait for a batch to fill after its first item (Batcher max_wait_s, "
                        "serve.batch batch_wait_timeout_s)")
    p.add_argument("--saturate", action="store_true", help="also a saturation run: every stream back to back")
    p.add_argument("--in-flight", type=int, default=4, help="clips in flight per stream in the saturation run")
    p.add_argument("--saturate-seconds", type=float, default=6.0, help="measured seconds of the saturation run")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for clips in flight after a window")
    p.add_argument("--designs", default="actors,serve",
                   help="designs to run, in this order: actors, serve, serve_tuned (Serve with its latency knobs)")
    p.add_argument("--out", default="bench/results/stage_designs.json")
    a = p.parse_args(argv)
    import ray

    load = os.getloadavg()
    # a fresh local Ray of our own (never someone else's session on this machine), on loopback only
    ray.init(address="local", num_cpus=8, include_dashboard=False, namespace=NS, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    results: dict = {}
    port = free_port()
    try:
        for design in a.designs.split(","):
            if design.startswith("serve"):  # once; a second start is a no-op
                serve.start(http_options={"host": "127.0.0.1", "port": port})
            t = time.time()
            results[design] = run_design(design, a)
            results[design]["wall_s"] = round(time.time() - t, 1)
            print(f"{design}: {json.dumps(results[design]['live'])}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    doc = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in load],
           "streams": a.streams, "designs": results,
           "ratio": summary(results),
           "settings": {**{k: v for k, v in vars(a).items() if k != "out"}, "ray_num_cpus": 8,
                        "stage_cost": "time.sleep(batch_ms + item_ms * batch size) per batch: latency, not CPU",
                        "serve_autoscaling_config": AUTOSCALING, "serve_max_ongoing_requests": 1000,
                        "serve_http": f"127.0.0.1:{port}",
                        "note": "autoscaling min = max = 1 so each stage has one replica in both designs; "
                                "cpu_s: every process of this Ray session, by role, over the window"}}
    write_result(a.out, doc)
    rows = [("live", k) for k in ("clips_per_s", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                                  "compute_ms", "overhead_ms", "plumbing_ms", "cpu_ms_per_clip")]
    rows += [("saturate", k) for k in ("clips_per_s", "latency_p50_ms", "cpu_ms_per_clip")] if a.saturate else []
    print(f"\n{'':28}" + "".join(f"{d:>12}" for d in results))
    for run, k in rows:
        print(f"{run + '.' + k:28}" + "".join(f"{results[d].get(run, {}).get(k, float('nan')):>12}" for d in results))
    for s in STAGES:
        print(f"{'live.batch.' + s:28}" + "".join(f"{results[d]['live']['stages'][s]['mean_batch']:>12}"
                                                   for d in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
