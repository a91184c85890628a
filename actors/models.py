"""The model actors: each wraps one stage of actors/stages.py and batches calls from every stream
(`max_batch_size`, `max_wait_ms` from config). They are plain async classes; actors/graph.py turns them
into Ray actors with the CPUs and GPUs (fractions allowed) that the config asks for."""

from __future__ import annotations

import logging
import os

from actors.batching import Batcher
from schemas.config import RedisSettings, StageSettings, visible_gpus

log = logging.getLogger(__name__)


def _setup(settings: StageSettings, device: str, minilm_dir: str | None):
    import torch

    from videobert.device import stage_device
    from videobert.text import use_minilm

    use_minilm(minilm_dir)
    torch.set_num_threads(settings.threads)  # Ray's OMP_NUM_THREADS follows num_cpus; we decide on purpose
    dev = stage_device(device, settings.num_gpus)
    log.info("stage on %s with %d torch threads (pid %d, CUDA_VISIBLE_DEVICES=%s)", dev, settings.threads, os.getpid(),
             visible_gpus())
    return dev


class _Batched:
    name = "stage"

    def _init_batcher(self, stage, settings: StageSettings, redis: RedisSettings | None, device="cpu") -> None:
        self.stage, self.device = stage, str(device)
        self.metrics = None
        if redis is not None:
            from actors.keys import Keys, redis_client
            from actors.metrics import Metrics

            self.metrics = Metrics(redis_client(redis.url), Keys(redis.prefix)).start()
        self.batcher = Batcher(stage, settings.max_batch_size, settings.max_wait_ms / 1000, self.name, self._record)

    def _record(self, size: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe("vbs_stage_batch_size", size, stage=self.name)
            self.metrics.observe("vbs_stage_latency_seconds", seconds, stage=self.name)

    def stats(self) -> dict:
        return {"stage": self.name, **self.batcher.stats(), "batch_sizes": list(self.batcher.last_sizes)}

    def ready(self) -> bool:
        return True

    def where(self) -> dict:
        """Where this replica runs and its queue (the autoscaler asks every interval)."""
        from actors.placement import here

        return {**here(), "device": self.device, "queued": self.batcher.queued}


class VideoEncoderActor(_Batched):
    name = "video_encoder"

    def __init__(self, model_dir: str, settings: StageSettings, device: str = "auto", redis: RedisSettings | None = None,
                 minilm_dir: str | None = None):
        from actors.stages import VideoEncoderStage

        dev = _setup(settings, device, minilm_dir)
        self.encoder = VideoEncoderStage(model_dir, dev)
        self._init_batcher(self.encoder.encode, settings, redis, dev)

    def clip_spec(self) -> dict:
        return self.encoder.spec.to_dict()

    async def encode(self, clip):
        """One clip (T, H, W, 3) uint8 -> its visual word and joint-embedding code (actors.stages.EncodedClip)."""
        return await self.batcher.submit(clip)


class LanguageActor(_Batched):
    name = "language"

    def __init__(self, model_dir: str, settings: StageSettings, redis: RedisSettings | None = None,
                 minilm_dir: str | None = None):
        from actors.stages import LanguageStage
        from videobert.checkpoint import ModelPaths

        _setup(settings, "cpu", minilm_dir)
        self._init_batcher(LanguageStage(ModelPaths.of(model_dir).max_text_tokens()), settings, redis)

    async def encode(self, text: str) -> list[int]:
        return await self.batcher.submit(text)


class SpeechActor(_Batched):
    name = "speech"

    def __init__(self, model_dir: str, settings, redis: RedisSettings | None = None, minilm_dir: str | None = None):
        from actors.stages import SpeechStage

        _setup(settings, "cpu", minilm_dir)
        self._init_batcher(SpeechStage(model_dir, settings.recognizer), settings, redis)

    async def recognise(self, samples) -> str:
        """One utterance (int16 mono 16 kHz) -> its words ("" when nothing was heard)."""
        return await self.batcher.submit(samples)


class FusionActor(_Batched):
    name = "fusion"

    def __init__(self, model_dir: str, settings: StageSettings, device: str = "auto", redis: RedisSettings | None = None,
                 minilm_dir: str | None = None):
        from actors.stages import FusionStage

        dev = _setup(settings, device, minilm_dir)
        self._init_batcher(FusionStage(model_dir, dev), settings, redis, dev)
        if redis is not None:
            self._announce_model(redis)

    def _announce_model(self, redis: RedisSettings) -> None:
        """Record which model tags, for /metrics (vbs_build_info); Redis away only delays that (next start)."""
        import json

        from actors.keys import Keys

        try:
            self.metrics.redis.set(Keys(redis.prefix).model, json.dumps(self.stage.tagger.identity.to_dict()))
        except Exception as e:  # noqa: BLE001 - the stage tags regardless; the metric says "none" meanwhile
            log.warning("fusion: could not record the model id in Redis: %s", type(e).__name__)

    async def tag(self, item, text_ids, *words):
        """Tag one clip (a ClipScore). `text_ids` and `words` arrive as object refs from the other stages; Ray
        resolves them before the call, so a clip goes decoder -> encoders -> fusion without waiting in the decoder."""
        from actors.pipeline import fusion_input

        return await self.batcher.submit(fusion_input(item, words, text_ids))
