"""The on-demand tagger deployment behind POST /v1/tag: an uploaded short clip is decoded, cut into 1.5 s
clips and tagged like a stream's clips. Concurrent requests are batched together (@serve.batch): one
encoder call and one fusion call for every clip of every request in the batch."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile

from ray import serve

from schemas.config import MAX_FRAME_PIXELS, TaggerSettings

log = logging.getLogger(__name__)


class UploadError(ValueError):
    """An upload that cannot be tagged; `code` goes into the HTTP error body."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code, self.status = code, status


@serve.deployment(name="tagger")
class Tagger:
    def __init__(self, model_dir: str, settings: TaggerSettings, device: str = "auto", context_clips: int = 0,
                 minilm_dir: str | None = None, max_frame_pixels: int = MAX_FRAME_PIXELS):
        import torch

        from actors.stages import FusionStage, VideoEncoderStage
        from videobert.device import stage_device
        from videobert.text import use_minilm

        use_minilm(minilm_dir)
        self.model_dir = model_dir
        torch.set_num_threads(settings.threads)
        dev = stage_device(device, settings.num_gpus)
        self.encoder = VideoEncoderStage(model_dir, dev)
        self.fusion = FusionStage(model_dir, dev)
        self.context = context_clips  # as the graph's decoders give the fusion model (DecoderSettings.context_clips)
        self.max_frame_pixels = max_frame_pixels  # as the graph's decoders refuse frames
        self.tag_clips.set_max_batch_size(settings.max_batch_size)
        self.tag_clips.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.batch_sizes: list[int] = []

    def _probe(self) -> None:
        """A blank clip through the encoder and the fusion model: raises if the model cannot tag."""
        import numpy as np

        from actors.stages import FusionItem

        spec = self.encoder.spec
        word = self.encoder([np.zeros((spec.frames, spec.size, spec.size, 3), np.uint8)])[0]
        (score,) = self.fusion([FusionItem(words=(word,))])
        if not score.labels:
            raise RuntimeError("the model tagged a blank clip with no labels")

    def check_health(self) -> None:  # Serve's health check: the model still tags
        self._probe()

    def ready(self) -> dict:
        self._probe()
        return {"model": True, "model_id": self.fusion.tagger.identity.to_dict(), "clip": self.encoder.spec.to_dict()}

    def _decode(self, data: bytes, max_seconds: float):
        from videobert.reader import VideoReadError, VideoTooLong, read_video
        from videobert.speech import TextSource

        fd, path = tempfile.mkstemp(suffix=".video")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                v = read_video(path, self.encoder.spec, max_pixels=self.max_frame_pixels, max_seconds=max_seconds,
                               text=TextSource("auto", model_dir=self.model_dir, cache=False))
            except VideoTooLong as e:
                raise UploadError("too_long", f"the clip {e.reason}; at most {max_seconds:.0f} s can be tagged on "
                                              "demand (push longer videos as streams)", status=413) from e
            except VideoReadError as e:
                raise UploadError("unreadable_video", f"not a readable video: {e.reason}") from e
        finally:
            os.unlink(path)
        if v.duration > max_seconds:
            raise UploadError("too_long", f"the clip lasts {v.duration:.1f} s; at most {max_seconds:.0f} s can be "
                                          "tagged on demand (push longer videos as streams)", status=413)
        if not v.clips:
            raise UploadError("too_short", f"the clip lasts {v.duration:.2f} s, shorter than one "
                                           f"{self.encoder.spec.seconds} s clip")
        return v

    async def tag(self, data: bytes, labels, max_seconds: float) -> dict:
        """Tags of every clip of an upload (`labels`: a LabelSet, or None for the model's default), or
        {"error": {"code", "message", "status"}} when it cannot be tagged (errors are data: they cross the
        deployment boundary as they are)."""
        from videobert.labels import check

        try:
            try:
                check(labels, self.fusion.tagger.labels)
            except ValueError as e:
                raise UploadError("bad_labels", str(e)) from e
            v = await asyncio.to_thread(self._decode, data, max_seconds)
        except UploadError as e:
            return {"error": {"code": e.code, "message": str(e), "status": e.status}}
        rows = await self.tag_clips((v, labels))
        return {"clips": rows, "duration": round(v.duration, 3), "subtitles": v.subtitle_source}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def tag_clips(self, requests: list[tuple]) -> list[list[dict]]:
        self.batch_sizes = (self.batch_sizes + [len(requests)])[-1000:]
        return await asyncio.to_thread(self._tag_batch, requests)

    def _tag_batch(self, requests: list[tuple]) -> list[list[dict]]:
        from actors.stages import FusionItem
        from videobert.tagging import source_of, tag_result, with_context

        frames = [c.frames for v, _ in requests for c in v.clips]
        words = self.encoder(frames)
        items, k = [], 0
        builder = self.fusion.tagger.builder
        for v, labels in requests:
            clip_words = with_context(words[k:k + len(v.clips)], self.context)  # as the graph and `vbs tag` do
            k += len(v.clips)
            for i, c in enumerate(v.clips):
                ids = builder.text_ids(c.text) if c.text else None
                items.append(FusionItem(words=tuple(clip_words[i]), text_ids=tuple(ids) if ids else None, labels=labels))
        scored = self.fusion(items)
        out, k = [], 0
        for v, _ in requests:
            out.append([tag_result(c.t0, c.t1, c.text, r, text_source=source_of(v.subtitle_source)).to_dict()
                        for c, r in zip(v.clips, scored[k:k + len(v.clips)])])
            k += len(v.clips)
        return out

    def stats(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes)}
