"""Starting, scaling and stopping the streaming graph on a Ray cluster (local or joined): a pool of actors per
stage (decoders, video encoder, language, fusion) and the supervisor, with the resources the config asks for.
`vbs up`, the Serve deployment of ops/serve.yaml and the tests use this.

The pools follow their load (actors/scaling.py decides how many replicas each wants): a replica added is an
actor asking Ray for its CPUs, GPUs and custom resources, so where the cluster has no room, the pending actor
is what makes Ray's cluster autoscaler launch a node of the right type. A replica joins its pool when it
answers (models loaded); it leaves by draining: a decoder through the supervisor, which moves its streams to
other decoders through the fenced release (they resume from their checkpoints); a model replica is dropped
from the replica lists the decoders send to and is killed once its queue is empty. One thread in the process
that started the graph runs the loop (it owns the actors, so they end with it)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from actors.decoder import DecoderActor
from actors.models import FusionActor, LanguageActor, SpeechActor, VideoEncoderActor
from actors.scaling import POOLS, PoolPolicy, QueueWindow, decoders_wanted, stage_wanted
from actors.supervisor import SupervisorActor
from schemas.config import Settings

log = logging.getLogger(__name__)

STARTING, RUNNING, DRAINING = "starting", "running", "draining"
STAGE_CLASSES = {"video_encoder": VideoEncoderActor, "language": LanguageActor, "fusion": FusionActor,
                 "speech": SpeechActor}  # speech only with [speech] enabled


@dataclass
class Replica:
    pool: str
    name: str
    handle: object
    state: str = STARTING
    since: float = field(default_factory=time.monotonic)
    ready: object = None  # while starting: the ref of its first where(); while draining a decoder: of retire
    info: dict = field(default_factory=dict)  # its last where(): node, device, queue
    empty_checks: int = 0  # a draining model replica: consecutive samples with nothing queued
    start_s: float | None = None  # from its creation to serving (scheduling, a node launched, models loaded)


class Pool:
    """One stage's replicas. `make(name)` starts an actor."""

    def __init__(self, stage: str, cfg, prefix: str, make):
        self.stage, self.cfg, self.prefix, self.make = stage, cfg, prefix, make
        self.replicas: dict[str, Replica] = {}
        self._next = 0

    def add(self, n: int = 1) -> list[Replica]:
        out = []
        for _ in range(n):
            name = f"{self.prefix}-{self.stage}-{self._next}"  # never reused: a killed actor's name lingers
            self._next += 1
            handle = self.make(name)
            r = self.replicas[name] = Replica(self.stage, name, handle, ready=handle.where.remote())
            out.append(r)
        return out

    def in_state(self, *states: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state in states]

    @property
    def size(self) -> int:  # what counts against the target: replicas starting or running
        return len(self.in_state(STARTING, RUNNING))


@dataclass
class Graph:
    settings: Settings
    pools: dict[str, Pool] = field(default_factory=dict)
    supervisor: object | None = None
    policies: dict[str, PoolPolicy] = field(default_factory=dict)
    windows: dict[str, QueueWindow] = field(default_factory=dict)
    version: int = 0  # of the model replica lists the decoders have been sent
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    metrics: object = None
    started: list[dict] = field(default_factory=list)  # every replica that came up: pool, name, start_s

    # -- views --------------------------------------------------------------------------------------------
    @property
    def stages(self) -> dict[str, list]:
        """stage -> handles of its running replicas (what the decoders send clips to)."""
        return {s: [r.handle for r in self.pools[s].in_state(RUNNING)] for s in self.stage_names}

    @property
    def stage_names(self) -> list[str]:
        """The model stages this graph runs (speech only when enabled)."""
        return [s for s in STAGE_CLASSES if s in self.pools]

    @property
    def decoders(self) -> dict[str, object]:
        return {r.name: r.handle for r in self.pools["decoder"].in_state(RUNNING)}

    def _send_decoders(self) -> None:
        """The decoder pool as the supervisor must see it: the running decoders and the draining ones."""
        import ray

        pool = self.pools["decoder"]
        handles = {r.name: r.handle for r in pool.in_state(RUNNING, DRAINING)}
        ray.get(self.supervisor.set_decoders.remote(handles, [r.name for r in pool.in_state(DRAINING)]), timeout=10)

    def stats(self, timeout: float = 10) -> dict:
        import ray

        out = {"supervisor": ray.get(self.supervisor.stats.remote(), timeout=timeout),
               "decoders": ray.get([d.stats.remote() for d in self.decoders.values()], timeout=timeout)}
        for name, actors in self.stages.items():
            out[name] = ray.get([a.stats.remote() for a in actors], timeout=timeout)
        return out

    def view(self) -> tuple[dict, list[dict]]:
        """(pool -> counts and bounds, one dict per replica with where it runs): `vbs status --graph`, /readyz."""
        pools, replicas = {}, []
        for name, p in self.pools.items():
            pools[name] = {"replicas": len(p.in_state(RUNNING)), "starting": len(p.in_state(STARTING)),
                           "draining": len(p.in_state(DRAINING)), "target": self.policies[name].target,
                           "min": p.cfg.min_replicas, "max": p.cfg.max_replicas}
            for r in p.replicas.values():
                replicas.append({"pool": name, "name": r.name, "state": r.state,
                                 **{k: r.info.get(k) for k in ("node_id", "node_ip", "device", "pid", "code") if k in r.info},
                                 **({"streams": r.info["streams"]} if "streams" in r.info else {}),
                                 **({"start_s": r.start_s} if r.start_s is not None else {}),
                                 **({"queued": r.info["queued"]} if "queued" in r.info else {})})
        return pools, replicas

    # -- the scaling loop ---------------------------------------------------------------------------------
    def scale_once(self, now: float | None = None) -> None:
        """One round: replicas that came up join, the load is read, each pool's target decided, replicas added
        or drained, the decoders sent the current model replica lists, the view written."""
        import ray

        now = time.monotonic() if now is None else now
        a = self.settings.autoscaling
        changed = self._poll_starting(now)
        self._sample()
        loads, sup = self._loads(now)
        for name, pool in self.pools.items():
            target = (self.policies[name].decide(loads[name], now, starting=bool(pool.in_state(STARTING)))
                      if a.enabled else self.policies[name].target)
            if pool.size < target:
                added = pool.add(target - pool.size)
                self._event(name, "up", len(added))
                log.info("pool %s: %d -> %d replicas (load %s)", name, pool.size - len(added), target, loads[name])
            elif pool.size > target:
                changed |= self._retire(pool, pool.size - target, now)
        changed |= self._drain(now)
        if changed:
            self.version += 1
        self._sync_decoders(wait=changed)
        pool = self.pools["decoder"]
        if changed or (sup is not None and (sup.get("decoders") != sorted(r.name for r in pool.in_state(RUNNING, DRAINING))
                                            or sup.get("draining") != sorted(r.name for r in pool.in_state(DRAINING)))):
            try:  # also mends a supervisor restarted with the pool it was first given
                self._send_decoders()
            except Exception as e:  # noqa: BLE001 - the next round sends it again
                log.warning("the supervisor did not take the decoder pool: %s", e)
        self._write_view()

    def _poll_starting(self, now: float) -> bool:
        import ray

        changed = False
        for pool in self.pools.values():
            for r in pool.in_state(STARTING):
                done, _ = ray.wait([r.ready], timeout=0)
                if done:
                    try:
                        r.info = ray.get(done[0])
                    except Exception as e:  # noqa: BLE001 - it died starting: the pool starts another
                        log.error("replica %s failed to start: %s", r.name, e)
                        self._kill(pool, r)
                        self._given_up(pool)
                        continue
                    r.state, r.start_s, r.since, r.ready, changed = RUNNING, round(now - r.since, 2), now, None, True
                    self.started.append({"pool": pool.stage, "name": r.name, "start_s": r.start_s,
                                         "node_id": r.info.get("node_id", ""), "wall": time.time()})
                    log.info("replica %s running on node %s (%s)", r.name, r.info.get("node_ip"), r.info.get("device"))
                elif now - r.since > self.settings.autoscaling.start_timeout_s:
                    log.error("replica %s still pending after %.0f s (no node has its resources?): given up",
                              r.name, now - r.since)
                    self._kill(pool, r)
                    self._given_up(pool)
        return changed

    def _given_up(self, pool: Pool) -> None:
        """After a replica failed to start: an autoscaled pool asks again only if its load still wants it; a
        fixed pool starts another."""
        if self.settings.autoscaling.enabled:
            self.policies[pool.stage].gave_up(pool.size)

    def _sample(self) -> None:
        import ray

        reps = [r for p in self.pools.values() for r in p.in_state(RUNNING, DRAINING)]
        refs = [r.handle.where.remote() for r in reps]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=5)
        done = set(done)
        for r, ref in zip(reps, refs):
            if ref in done:
                try:
                    r.info = ray.get(ref)
                except Exception:  # noqa: BLE001 - dead or restarting: keep its last view
                    r.info = {**r.info, "queued": 0}

    def _loads(self, now: float) -> tuple[dict[str, int], dict | None]:
        """Each pool's wanted replicas, and the supervisor's stats (None when it did not answer)."""
        import ray

        loads = {}
        try:
            sup = ray.get(self.supervisor.stats.remote(), timeout=5)
            held = sup["held"]
        except Exception as e:  # noqa: BLE001 - keep the decoders as they are
            log.warning("supervisor stats unavailable: %s", e)
            sup = held = None
        d = self.settings.decoder
        loads["decoder"] = (self.policies["decoder"].target if held is None
                            else decoders_wanted(held, d.streams_per_replica))
        for s in self.stage_names:
            cfg = getattr(self.settings, s)
            queue = sum(r.info.get("queued", 0) for r in self.pools[s].in_state(RUNNING))
            mean = self.windows[s].add(now, queue)
            loads[s] = stage_wanted(mean, cfg.target_queue or cfg.max_batch_size)
        return loads, sup

    def _retire(self, pool: Pool, n: int, now: float) -> bool:
        """Start draining `n` running replicas of a pool (one with a replica starting does not shrink: the
        policy holds its target until the replica runs or is given up)."""
        changed = False
        # the replicas whose nodes host the fewest of the graph's replicas go first (so that nodes empty and the
        # cluster autoscaler can release them), then the least loaded, then the newest
        per_node: dict[str, int] = {}
        for p in self.pools.values():
            for x in p.in_state(STARTING, RUNNING):
                per_node[x.info.get("node_id", "")] = per_node.get(x.info.get("node_id", ""), 0) + 1
        running = sorted(pool.in_state(RUNNING), key=lambda r: (per_node.get(r.info.get("node_id", ""), 0),
                                                                r.info.get("streams", 0), r.info.get("queued", 0),
                                                                -_index(r.name)))
        for r in running[:n]:
            r.state, r.since, changed = DRAINING, now, True
            if pool.stage == "decoder":
                r.ready = self.supervisor.retire_decoder.remote(r.name, r.handle, self.settings.autoscaling.drain_timeout_s)
            self._event(pool.stage, "down", 1)
            log.info("pool %s: draining %s", pool.stage, r.name)
        return changed

    def _drain(self, now: float) -> bool:
        """Kill the draining replicas that are done: a decoder once the supervisor has moved its streams, a
        model replica once it has answered everything it was sent (two samples in a row with nothing queued,
        after the decoders were sent lists without it)."""
        import ray

        changed = False
        timeout = self.settings.autoscaling.drain_timeout_s
        for pool in self.pools.values():
            for r in pool.in_state(DRAINING):
                if pool.stage == "decoder":
                    done = bool(ray.wait([r.ready], timeout=0)[0])
                else:
                    r.empty_checks = r.empty_checks + 1 if r.info.get("queued", 0) == 0 else 0
                    done = r.empty_checks >= 2 and now - r.since >= 2 * self.settings.autoscaling.interval_s
                if done or now - r.since > timeout + 10:
                    if not done:
                        log.warning("replica %s did not drain within %.0f s: killed", r.name, timeout)
                    self._kill(pool, r)
                    changed = True
        return changed

    def _kill(self, pool: Pool, r: Replica) -> None:
        import ray

        pool.replicas.pop(r.name, None)
        try:
            ray.kill(r.handle, no_restart=True)
        except Exception as e:  # noqa: BLE001 - gone already
            log.debug("kill %s: %s", r.name, e)

    def _sync_decoders(self, wait: bool) -> None:
        """Send the model replica lists to every decoder that lacks the current version (waiting for them
        when the lists changed, so that a draining replica gets no new clip from here on)."""
        import ray

        stages = self.stages
        if not all(stages.values()):
            return
        refs = [r.handle.set_stages.remote(self.version, stages) for r in self.pools["decoder"].in_state(RUNNING)
                if r.info.get("stages_version") != self.version]
        if wait and refs:
            ray.wait(refs, num_returns=len(refs), timeout=10)

    def _event(self, stage: str, direction: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.inc("vbs_pool_scale_events_total", n, stage=stage, direction=direction)

    def _write_view(self) -> None:
        from actors.keys import Keys, redis_client
        from actors.placement import write_view

        try:
            if not hasattr(self, "_redis"):
                self._redis = redis_client(self.settings.redis.url)
            write_view(self._redis, Keys(self.settings.redis.prefix), *self.view())
        except Exception as e:  # noqa: BLE001 - Redis away: the next round writes it
            log.debug("graph view not written: %s", e)

    def _loop(self) -> None:
        every = self.settings.autoscaling.interval_s
        while not self._stop.wait(every):
            try:
                self.scale_once()
            except Exception:  # noqa: BLE001 - one bad round must not end scaling
                log.exception("autoscaling round failed")

    def start_scaling(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vbs-autoscaler")
        self._thread.start()

    # -- stopping -----------------------------------------------------------------------------------------
    def stop(self, timeout: float = 15) -> None:
        """Stop cleanly: the scaling loop, then the supervisor (no new assignments), then each decoder lets go
        of its streams without ending them (their jobs stay pending and resume on the next start), then every
        actor."""
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        if self.supervisor is not None:
            try:
                ray.get(self.supervisor.close.remote(), timeout=timeout)
            except Exception as e:  # noqa: BLE001 - stopping goes on regardless
                log.warning("supervisor did not close cleanly: %s", e)
        refs = [r.handle.close.remote() for r in self.pools["decoder"].in_state(RUNNING, DRAINING)]
        try:
            released = sum(ray.get(refs, timeout=timeout))
            log.info("released %d running stream(s); they resume from their checkpoints on the next start", released)
        except Exception as e:  # noqa: BLE001
            log.warning("decoders did not close cleanly: %s", e)
        for r in [self.supervisor, *(r.handle for p in self.pools.values() for r in p.replicas.values())]:
            if r is not None:
                ray.kill(r, no_restart=True)
        self.pools = {k: Pool(p.stage, p.cfg, p.prefix, p.make) for k, p in self.pools.items()}
        if self.metrics is not None:
            self.metrics.close()
        if hasattr(self, "_redis"):
            from actors.keys import Keys

            try:
                self._redis.delete(Keys(self.settings.redis.prefix).graph)
            except Exception:  # noqa: BLE001
                pass


def _index(name: str) -> int:
    return int(name.rsplit("-", 1)[-1])


def start_graph(settings: Settings, name_prefix: str | None = None, ready_timeout: float = 300,
                scale: bool = True) -> Graph:
    """Start the pools at their starting sizes and the supervisor, wait until the models are loaded, then
    (`scale`) run the scaling loop. Ray must be initialised."""
    import ray

    from actors.keys import Keys, redis_client
    from actors.metrics import Metrics

    prefix = name_prefix or settings.redis.prefix
    g = Graph(settings)
    stages = [s for s in STAGE_CLASSES if s != "speech" or settings.speech.enabled]
    need = (sum(getattr(settings, s).num_cpus * getattr(settings, s).replicas for s in stages)
            + settings.decoder.num_cpus * settings.decoder.replicas)
    have = ray.cluster_resources().get("CPU", 0)
    if need > have:
        log.warning("the graph asks Ray for %.2f CPUs but the cluster has %.0f: actors wait for an autoscaler. "
                    "Locally, start Ray with more logical CPUs (ray start --head --num-cpus 8; vbs up does so) "
                    "or lower num_cpus in the config", need, have)
    opts = dict(max_restarts=-1, max_task_retries=0)
    args = {"video_encoder": (settings.model_dir, settings.video_encoder, settings.device, settings.redis,
                              settings.minilm_dir),
            "language": (settings.model_dir, settings.language, settings.redis, settings.minilm_dir),
            "fusion": (settings.model_dir, settings.fusion, settings.device, settings.redis, settings.minilm_dir),
            "speech": (settings.model_dir, settings.speech, settings.redis, settings.minilm_dir)}

    def stage_maker(stage):
        cfg = getattr(settings, stage)
        return lambda name: ray.remote(STAGE_CLASSES[stage]).options(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=dict(cfg.resources) or None,
            max_concurrency=1000, name=name, **opts).remote(*args[stage])

    for stage in stages:
        g.pools[stage] = Pool(stage, getattr(settings, stage), prefix, stage_maker(stage))
        g.pools[stage].add(getattr(settings, stage).replicas)
    start = time.monotonic()
    model_refs = [r.ready for s in stages for r in g.pools[s].replicas.values()]
    try:
        ray.get(model_refs, timeout=ready_timeout)
    except ray.exceptions.GetTimeoutError as e:
        raise RuntimeError(f"the model actors did not start within {ready_timeout:.0f} s: they ask for {need:.2f} "
                           f"CPUs and the Ray cluster has {have:.0f} (see num_cpus, num_gpus and resources in the "
                           "config)") from e
    g._poll_starting(time.monotonic())
    log.info("model actors ready in %.1f s", time.monotonic() - start)
    spec = ray.get(g.pools["video_encoder"].in_state(RUNNING)[0].handle.clip_spec.remote())
    d = settings.decoder
    g.pools["decoder"] = Pool("decoder", d, prefix, lambda name: ray.remote(DecoderActor).options(
        num_cpus=d.num_cpus, resources=dict(d.resources) or None, max_concurrency=max(8, d.max_streams + 4),
        name=name, **opts).remote(name, settings, g.stages, spec=spec))
    g.pools["decoder"].add(d.replicas)
    ray.get([r.ready for r in g.pools["decoder"].replicas.values()], timeout=ready_timeout)
    g._poll_starting(time.monotonic())
    g.version = 1
    g._sync_decoders(wait=True)
    g.supervisor = ray.remote(SupervisorActor).options(num_cpus=0, max_concurrency=4, name=f"{prefix}-supervisor",
                                                       **opts).remote(settings, list(g.decoders))
    ray.get(g.supervisor.ready.remote(), timeout=ready_timeout)
    for name in (p for p in POOLS if p in g.pools):
        cfg = getattr(settings, name)
        g.policies[name] = PoolPolicy(name, cfg.min_replicas, cfg.max_replicas, cfg.replicas,
                                      settings.autoscaling.downscale_delay_s)
        g.windows[name] = QueueWindow(settings.autoscaling.look_back_s)
    g.metrics = Metrics(redis_client(settings.redis.url), Keys(settings.redis.prefix)).start()
    g._write_view()
    if scale:
        g.start_scaling()
    return g
