"""Thumbnails of live streams (GET /v1/streams/{id}/snapshot.jpg): the last frame of a stream's latest clip as a
small JPEG in Redis (`vbs:snapshot:{id}`, with a TTL), made only while someone watches.

Who watches: the ingress sets `vbs:watched:{id}` with a short TTL (WATCH_TTL_S) at every snapshot request, so a
page that shows a stream's picture keeps it watched, and one that stops asking lets it lapse. The decoder side is
`SnapshotTap`, a `Pipeline` around the stream's own: at each clip it sends through, at most once a second, it asks
Redis whether the stream is watched (one EXISTS, the only cost when nobody watches) and, if so, encodes the clip's
last frame and stores it. So a stream is encoded at most once a second, and never when nobody asked.

The frame is the clip's as the model sees it (sampled and resized by the reader: `ClipSpec.size` square), no
larger than `snapshot_width`; PyAV's own MJPEG encoder writes the JPEG (no other image library)."""

from __future__ import annotations

import logging
import time
from fractions import Fraction

import numpy as np

log = logging.getLogger(__name__)

WATCH_TTL_S = 15  # a snapshot request keeps its stream watched this long
CHECK_EVERY_S = 1.0  # a stream asks whether it is watched (and encodes) at most this often
JPEG_QSCALE = 4  # MJPEG quantiser, 2 (best) .. 31 (worst)


def encode_jpeg(rgb: np.ndarray, max_width: int = 320) -> bytes:
    """One (H, W, 3) uint8 RGB frame as JPEG bytes, scaled down (aspect kept) to at most `max_width` wide."""
    import av

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"a frame is (H, W, 3) uint8, not {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if w > max_width:
        h, w = max(1, round(h * max_width / w)), max_width
    w, h = max(2, w - w % 2), max(2, h - h % 2)  # 4:2:0 chroma: even sizes
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame = frame.reformat(width=w, height=h, format="yuvj420p", interpolation="AREA")
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = w, h, "yuvj420p", Fraction(1, 1)
    ctx.flags |= av.codec.context.Flags.qscale
    ctx.global_quality = JPEG_QSCALE * 118  # FF_QP2LAMBDA: a fixed quantiser, not a bit rate
    return b"".join(bytes(p) for p in (*ctx.encode(frame), *ctx.encode(None)))


class SnapshotTap:
    """A stream's pipeline with a thumbnail taken on the way: `submit` passes every clip on unchanged, and at most
    once every CHECK_EVERY_S seconds first stores the clip's last frame as the stream's snapshot, if the stream
    is watched. A failure here (Redis away, an odd frame) costs the thumbnail, never the clip."""

    def __init__(self, inner, stream_id: str, redis, keys, width: int = 320, ttl_s: int = 30, metrics=None,
                 clock=time.monotonic):
        self.inner, self.stream_id, self.redis, self.keys = inner, stream_id, redis, keys
        self.width, self.ttl_s, self.metrics, self.clock = width, ttl_s, metrics, clock
        self._next = 0.0
        self.encoded = 0
        self._warned = False

    def submit(self, clip, context, item):
        now = self.clock()
        if now >= self._next:
            self._next = now + CHECK_EVERY_S
            self._snap(clip)
        return self.inner.submit(clip, context, item)

    def result(self, handle, timeout):
        return self.inner.result(handle, timeout)

    @property
    def hears(self) -> bool:
        return self.inner.hears

    def recognise(self, samples):
        return self.inner.recognise(samples)

    def transcript(self, handle, timeout):
        return self.inner.transcript(handle, timeout)

    def _snap(self, clip) -> None:
        try:
            if not self.redis.exists(self.keys.watched(self.stream_id)):
                return
            jpeg = encode_jpeg(clip.frames[-1], self.width)
            self.redis.set(self.keys.snapshot(self.stream_id), jpeg, ex=self.ttl_s)
        except Exception as e:  # noqa: BLE001 - a thumbnail is best effort: the clip goes on regardless
            if not self._warned:
                self._warned = True
                log.warning("stream %s: no snapshot of the clip at %.3f s: %s: %s", self.stream_id, clip.t0,
                            type(e).__name__, str(e)[:200])
            return
        self._warned = False
        self.encoded += 1
        if self.metrics is not None:
            self.metrics.inc("vbs_decoder_snapshots_encoded_total")
