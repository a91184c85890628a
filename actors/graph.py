"""Starting and stopping the streaming graph on a Ray cluster (local or joined): the model actors, the
decoders and the supervisor, with the resources the config asks for. `vbs up` and the tests use this."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from actors.decoder import DecoderActor
from actors.models import FusionActor, LanguageActor, VideoEncoderActor
from actors.supervisor import SupervisorActor
from schemas.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Graph:
    settings: Settings
    stages: dict[str, list] = field(default_factory=dict)
    decoders: dict[str, object] = field(default_factory=dict)
    supervisor: object | None = None

    def stats(self, timeout: float = 10) -> dict:
        import ray

        out = {"supervisor": ray.get(self.supervisor.stats.remote(), timeout=timeout),
               "decoders": ray.get([d.stats.remote() for d in self.decoders.values()], timeout=timeout)}
        for name, actors in self.stages.items():
            out[name] = ray.get([a.stats.remote() for a in actors], timeout=timeout)
        return out

    def stop(self, timeout: float = 15) -> None:
        """Stop cleanly: the supervisor first (no new assignments), then each decoder lets go of its streams
        without ending them (their jobs stay pending and resume on the next start), then every actor."""
        import ray

        if self.supervisor is not None:
            try:
                ray.get(self.supervisor.close.remote(), timeout=timeout)
            except Exception as e:  # noqa: BLE001 - stopping goes on regardless
                log.warning("supervisor did not close cleanly: %s", e)
        refs = [d.close.remote() for d in self.decoders.values()]
        try:
            released = sum(ray.get(refs, timeout=timeout))
            log.info("released %d running stream(s); they resume from their checkpoints on the next start", released)
        except Exception as e:  # noqa: BLE001
            log.warning("decoders did not close cleanly: %s", e)
        for a in [self.supervisor, *self.decoders.values(), *(x for v in self.stages.values() for x in v)]:
            if a is not None:
                ray.kill(a, no_restart=True)


def start_graph(settings: Settings, name_prefix: str | None = None, ready_timeout: float = 300) -> Graph:
    """Start every actor of the graph and wait until the models are loaded. Ray must be initialised."""
    import ray

    prefix = name_prefix or settings.redis.prefix
    g = Graph(settings)
    need = (sum(c.num_cpus * c.replicas for c in (settings.video_encoder, settings.language, settings.fusion))
            + settings.decoder.num_cpus * settings.decoder.replicas)
    have = ray.cluster_resources().get("CPU", 0)
    if need > have:
        log.warning("the graph asks Ray for %.2f CPUs but the cluster has %.0f: actors wait for an autoscaler. "
                    "Locally, start Ray with more logical CPUs (ray start --head --num-cpus 8; vbs up does so) "
                    "or lower num_cpus in the config", need, have)
    opts = dict(max_restarts=-1, max_task_retries=0)

    def stage(cls, cfg, *args):
        return [ray.remote(cls).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_concurrency=1000,
                                        name=f"{prefix}-{cls.name}-{i}", **opts).remote(*args)
                for i in range(cfg.replicas)]

    g.stages["video_encoder"] = stage(VideoEncoderActor, settings.video_encoder, settings.model_dir,
                                      settings.video_encoder, settings.device, settings.redis, settings.minilm_dir)
    g.stages["language"] = stage(LanguageActor, settings.language, settings.model_dir, settings.language,
                                 settings.redis, settings.minilm_dir)
    g.stages["fusion"] = stage(FusionActor, settings.fusion, settings.model_dir, settings.fusion, settings.device,
                               settings.redis, settings.minilm_dir)
    start = time.monotonic()
    try:
        ray.get([a.ready.remote() for v in g.stages.values() for a in v], timeout=ready_timeout)
    except ray.exceptions.GetTimeoutError as e:
        raise RuntimeError(f"the model actors did not start within {ready_timeout:.0f} s: they ask for {need:.2f} "
                           f"CPUs and the Ray cluster has {have:.0f} (see num_cpus in the config)") from e
    log.info("model actors ready in %.1f s", time.monotonic() - start)
    spec = ray.get(g.stages["video_encoder"][0].clip_spec.remote())
    for i in range(settings.decoder.replicas):
        name = f"{prefix}-decoder-{i}"
        g.decoders[name] = ray.remote(DecoderActor).options(
            num_cpus=settings.decoder.num_cpus, max_concurrency=max(8, settings.decoder.max_streams + 4), name=name,
            **opts).remote(name, settings, g.stages, spec=spec)
    ray.get([d.active.remote() for d in g.decoders.values()], timeout=ready_timeout)
    g.supervisor = ray.remote(SupervisorActor).options(num_cpus=0, max_concurrency=4, name=f"{prefix}-supervisor",
                                                       **opts).remote(settings, list(g.decoders))
    ray.get(g.supervisor.ready.remote(), timeout=ready_timeout)
    return g
