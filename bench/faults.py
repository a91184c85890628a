"""The fault suite: the whole service (`vbs up`, a real local Ray) on a Redis of its own with AOF on, real FFmpeg
sources on loopback, and in each run one fault injected while the streams play. After each run a history
check: every acked job has an ending status, every clip of a file is written exactly once, every clip a live
stream has no tag for is counted (dropped or missed). Writes JSON: per run the fault, jobs lost, clips lost and
doubled, live clips unaccounted for, streams that failed, and the time until every stream was tagged again.

    python -m bench.faults --model models/demo --runs 16 --out bench/results/faults.json

Faults (--faults, taken in turn): kill_decoder, kill_model, kill_supervisor (SIGKILL of one such actor's
process), kill_all (SIGKILL of `vbs up` and everything it started, then a new `vbs up`), redis_restart (Redis
killed, restarted from its AOF --redis-down seconds later, 5 to 90 by default), proxy_stall, proxy_cut,
proxy_drip (a TCP proxy between the decoders and an HTTP source holds, cuts or drip-feeds its bytes)."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cpu_model, write_result

FAULTS = ("kill_decoder", "kill_model", "kill_supervisor", "kill_all", "redis_restart", "proxy_stall", "proxy_cut",
          "proxy_drip")
ACTOR_OF = {"kill_decoder": ("ray::DecoderActor",), "kill_supervisor": ("ray::SupervisorActor",),
            "kill_model": ("ray::VideoEncoderActor", "ray::FusionActor", "ray::LanguageActor")}
CLIP_RATE = 4  # clips started per second on the file streams: they run long enough to be hit mid-stream


class Redis:
    """A redis-server of the bench's own on a free loopback port, append-only file on, fsync at every write."""

    def __init__(self, workdir: Path):
        from bench.sources import free_port

        self.dir, self.port = workdir / "redis", free_port()
        self.dir.mkdir(exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: the bench runs on one machine)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Service:
    """`vbs up` as a user runs it, in a session of its own (so that the whole of it can be killed)."""

    def __init__(self, config: Path, model: Path, workdir: Path):
        self.config, self.model, self.workdir = config, model, workdir
        self.proc: subprocess.Popen | None = None
        from bench.sources import free_port

        self.port = free_port()

    def start(self, timeout: float = 300) -> float:
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        start = time.monotonic()
        if self.proc is not None:
            self.log.close()  # the previous run's
        self.log = open(self.workdir / "up.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "up", "--config", str(self.config), "--model",
                                      str(self.model), "--num-cpus", "8", "--port", str(self.port), "--ready-file", str(ready)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() - start > timeout:
                raise RuntimeError(f"vbs up did not start; see {self.workdir / 'up.log'}")
            time.sleep(0.5)
        return time.monotonic() - start

    def actor_pids(self, prefixes: tuple[str, ...]) -> list[int]:
        return [p for p in descendants(self.proc.pid) if cmdline(p).startswith(prefixes)]

    def kill_all(self) -> None:
        procs = [self.proc.pid, *descendants(self.proc.pid)]
        for p in procs:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.kill_all()
        if self.proc is not None:
            self.log.close()


def config_text(redis_url: str, prefix: str, media: Path, outage_s: float) -> str:
    return f'''
[redis]
url = "{redis_url}"
prefix = "{prefix}"
[url_policy]
media_root = "{media}"
allow_loopback = true
[decoder]
replicas = 2
num_cpus = 0.5
open_timeout_s = 4
read_timeout_s = 4
watchdog_s = 8
reconnect_initial_s = 0.5
reconnect_max_s = 2
max_reconnects = 50
redis_outage_s = {outage_s}
[supervisor]
heartbeat_s = 0.5
lease_s = 4.0
'''


def expected_t0s(video: Path) -> list[float]:
    from videobert.reader import ClipSpec, read_video

    return [c.t0 for c in read_video(video, ClipSpec(), stride=1.0 / CLIP_RATE, with_text=False).clips]


def wait_for(cond, timeout: float, every: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except Exception:  # noqa: BLE001 - Redis may be the thing that is down
            pass
        time.sleep(every)
    return False


def one_run(i: int, fault: str, ctx: dict, rng: random.Random, down: tuple[float, float]) -> dict:
    from actors import control
    from schemas.state import TagResult
    from schemas.streams import IngestJob, StreamOptions

    r, keys, service, db, proxy = ctx["r"], ctx["keys"], ctx["service"], ctx["redis"], ctx["proxy"]
    files, live_url = ctx["files"], ctx["live_url"]
    ids = {f"r{i}-file{k}": (str(v), v) for k, v in enumerate(files[:2])}
    ids[f"r{i}-http"] = (proxy.url(files[2].name), files[2])
    live_id = f"r{i}-live"
    entries = {}
    for sid, (url, _) in ids.items():
        entries[sid] = control.submit(r, keys, IngestJob(url=url, stream_id=sid,
                                                          options=StreamOptions(clip_rate=CLIP_RATE))).entry
    entries[live_id] = control.submit(r, keys, IngestJob(url=live_url, stream_id=live_id)).entry
    all_ids = [*ids, live_id]

    def tagged(sid: str) -> int:
        st = control.state(r, keys, sid)
        return st.clips_tagged if st else 0

    wait_for(lambda: all(tagged(s) >= 2 for s in all_ids), 180)
    time.sleep(rng.uniform(0, 1.5))
    detail: dict = {}
    t_killed = 0.0
    counts = {s: tagged(s) for s in all_ids}
    t_fault = time.monotonic()
    if fault in ACTOR_OF:
        pids = service.actor_pids(ACTOR_OF[fault])
        victim = rng.choice(pids)
        detail["actor"] = cmdline(victim).split()[0]
        os.kill(victim, signal.SIGKILL)
    elif fault == "kill_all":  # instant; the restart is part of the recovery
        service.kill_all()
        t_killed = time.monotonic()
        detail["restart_s"] = round(service.start(), 1)
    elif fault == "redis_restart":
        detail["down_s"] = round(rng.uniform(*down), 1)
        db.kill()
        time.sleep(detail["down_s"])
        db.start()
    elif fault in ("proxy_stall", "proxy_drip"):
        detail["seconds"] = round(rng.uniform(3, 15), 1)
        (proxy.stall if fault == "proxy_stall" else proxy.drip)(detail["seconds"])
        time.sleep(detail["seconds"])
    elif fault == "proxy_cut":
        proxy.cut()
    t_recovered = t_killed if fault == "kill_all" else time.monotonic()
    # time to resume: from the end of the fault until every stream that was still running has a new tag
    resumed: dict[str, float] = {}
    def all_resumed() -> bool:
        for s in all_ids:
            if s in resumed:
                continue
            st = control.state(r, keys, s)
            if st is not None and (st.clips_tagged > counts[s] or st.status.terminal):
                resumed[s] = time.monotonic() - t_recovered
        return len(resumed) == len(all_ids)
    wait_for(all_resumed, 300)
    wait_for(lambda: all(control.state(r, keys, s).status.terminal for s in ids), 600)
    wait_for(lambda: tagged(live_id) >= counts[live_id] + 3, 60)
    control.request_stop(r, keys, live_id)
    wait_for(lambda: control.state(r, keys, live_id).status.terminal, 60)

    pending = {p["message_id"] for p in r.xpending_range(keys.ingest, keys.group, "-", "+", 10_000)}
    out = {"run": i, "fault": fault, **detail, "fault_s": round(t_recovered - t_fault, 1),
           "resume_s": round(max(resumed.values()), 1) if resumed else None, "jobs_lost": 0, "unfinished": [],
           "failed": {}, "clips_lost": 0, "clips_doubled": 0, "live_unaccounted": 0}
    for sid in all_ids:
        st = control.state(r, keys, sid)
        if st is None or (entries[sid] not in pending and not st.status.terminal):
            out["jobs_lost"] += 1  # acked (or gone) without an ending status
            continue
        if not st.status.terminal:
            out["unfinished"].append(sid)
        elif st.status.value == "failed":
            out["failed"][sid] = st.reason
        rows = [TagResult.model_validate_json(f["data"]) for _, f in r.xrange(keys.tags(sid))]
        t0s = [row.t0 for row in rows]
        out["clips_doubled"] += len(t0s) - len(set(t0s))
        if sid in ids:
            want = set(ctx["expected"][ids[sid][1].name])
            lost = sorted(want - set(t0s))
            out["clips_lost"] += len(lost)
            if lost:
                out.setdefault("lost_t0s", {})[sid] = lost[:20]
            out["clips_doubled"] += len(set(t0s) - want)
        elif t0s:
            stride = 1.5
            idx = sorted({round(t / stride) for t in t0s})
            missing = idx[-1] - idx[0] + 1 - len(idx)
            out["live_unaccounted"] += max(0, missing - st.clips_dropped - st.clips_missed)
            out["live"] = {"tags": len(idx), "span": idx[-1] - idx[0] + 1, "dropped": st.clips_dropped,
                           "missed": st.clips_missed, "gaps": st.live_gaps, "attempts": st.attempts}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/demo")
    p.add_argument("--runs", type=int, default=len(FAULTS))
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, taken in turn")
    p.add_argument("--redis-down", default="5,90", help="seconds Redis stays down: MIN,MAX")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/faults.json")
    a = p.parse_args(argv)
    faults = [f.strip() for f in a.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        p.error(f"unknown fault(s): {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    lo, hi = (float(x) for x in a.redis_down.split(","))
    model = Path(a.model).resolve()
    heldout = sorted((model / "data" / "heldout").glob("*.mp4"))
    if len(heldout) < 3:
        p.error(f"{model}/data/heldout needs 3 videos or more (build the model first)")
    from actors.keys import Keys, redis_client
    from bench.sources import HttpServer, TcpProxy, UdpSender

    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="vbs-faults-"))
    db = Redis(work)
    db.start()
    files = sorted(heldout, key=lambda v: -v.stat().st_size)[:3]
    prefix = "vbsfaults"
    config = work / "config.toml"
    config.write_text(config_text(db.url, prefix, model / "data" / "heldout", outage_s=hi + 60))
    service = Service(config, model, work)
    runs: list[dict] = []
    try:
        with HttpServer(model / "data" / "heldout") as http, TcpProxy(http.port) as proxy, \
                UdpSender(heldout[0], loop=True, reencode=True) as udp:
            ctx = {"r": redis_client(db.url), "keys": Keys(prefix), "service": service, "redis": db,
                   "proxy": proxy, "files": files, "live_url": udp.url,
                   "expected": {v.name: expected_t0s(v) for v in files}}
            service.start()
            for i in range(a.runs):
                fault = faults[i % len(faults)]
                run = one_run(i, fault, ctx, rng, (lo, hi))
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        service.stop()
        db.kill()
        shutil.rmtree(work, ignore_errors=True)
    totals = {k: sum(r[k] for r in runs) for k in ("jobs_lost", "clips_lost", "clips_doubled", "live_unaccounted")}
    resumes = sorted(r["resume_s"] for r in runs if r["resume_s"] is not None)
    result = {"cpu": cpu_model(), "runs": len(runs), "faults": {f: sum(r["fault"] == f for r in runs) for f in faults},
              **totals, "failed_streams": sum(len(r["failed"]) for r in runs),
              "unfinished_streams": sum(len(r["unfinished"]) for r in runs),
              "resume_s_median": resumes[len(resumes) // 2] if resumes else None,
              "resume_s_max": resumes[-1] if resumes else None, "details": runs}
    write_result(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "details"}))
    return result


if __name__ == "__main__":
    main()
