"""The on-demand tagger deployment behind POST /v1/tag: an uploaded short clip is decoded, cut into 1.5 s
clips and tagged like a stream's clips. Concurrent requests are batched together (@serve.batch): one
encoder call and one fusion call for every clip of every request in the batch."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile

from ray import serve

from schemas.config import TaggerSettings

log = logging.getLogger(__name__)


class UploadError(ValueError):
    """An upload that cannot be tagged; `code` goes into the HTTP error body."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code, self.status = code, status


@serve.deployment(name="tagger")
class Tagger:
    def __init__(self, model_dir: str, settings: TaggerSettings, device: str = "auto"):
        import torch

        from actors.stages import FusionStage, VideoEncoderStage, resolve_device

        torch.set_num_threads(settings.threads)
        dev = resolve_device(device if settings.num_gpus > 0 or device != "auto" else "cpu")
        self.encoder = VideoEncoderStage(model_dir, dev)
        self.fusion = FusionStage(model_dir, dev)
        self.tag_clips.set_max_batch_size(settings.max_batch_size)
        self.tag_clips.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.batch_sizes: list[int] = []

    def check_health(self) -> None:  # Serve's health check: the model is loaded
        if self.encoder is None or self.fusion is None:
            raise RuntimeError("model not loaded")

    def ready(self) -> dict:
        return {"model": True, "clip": self.encoder.spec.to_dict()}

    def _decode(self, data: bytes, max_seconds: float):
        from videobert.reader import VideoReadError, read_video

        fd, path = tempfile.mkstemp(suffix=".video")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                v = read_video(path, self.encoder.spec)
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

    async def tag(self, data: bytes, template: str | None, labels: dict | None, max_seconds: float) -> dict:
        """Tags of every clip of an upload, or {"error": {"code", "message", "status"}} when it cannot be
        tagged (errors are data: they cross the deployment boundary as they are)."""
        try:
            try:
                self.fusion.label_slots(template, labels)
            except ValueError as e:
                raise UploadError("bad_labels", str(e)) from e
            v = await asyncio.to_thread(self._decode, data, max_seconds)
        except UploadError as e:
            return {"error": {"code": e.code, "message": str(e), "status": e.status}}
        rows = await self.tag_clips((v, template, labels))
        return {"clips": rows, "duration": round(v.duration, 3), "subtitles": v.subtitle_source}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def tag_clips(self, requests: list[tuple]) -> list[list[dict]]:
        self.batch_sizes = (self.batch_sizes + [len(requests)])[-1000:]
        return await asyncio.to_thread(self._tag_batch, requests)

    def _tag_batch(self, requests: list[tuple]) -> list[list[dict]]:
        from actors.stages import FusionItem
        from videobert.tagging import with_context

        frames = [c.frames for v, _, _ in requests for c in v.clips]
        words = self.encoder(frames)
        items, k = [], 0
        lang = self.fusion.tagger.builder
        for v, template, labels in requests:
            clip_words = with_context(words[k:k + len(v.clips)], self.fusion.tagger.context)  # as `vbs tag` does
            k += len(v.clips)
            lab = tuple((s, tuple(x)) for s, x in labels.items()) if labels else None
            for i, c in enumerate(v.clips):
                ids = lang.text_ids(c.text) if c.text else None
                items.append(FusionItem(words=tuple(clip_words[i]), text_ids=tuple(ids) if ids else None,
                                        template=template, labels=lab))
        scored = self.fusion(items)
        out, k = [], 0
        for v, _, _ in requests:
            out.append([{"t0": c.t0, "t1": c.t1, "labels": r["labels"], "alignment": r["alignment"],
                         "subtitle": c.text} for c, r in zip(v.clips, scored[k:k + len(v.clips)])])
            k += len(v.clips)
        return out

    def stats(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes)}
