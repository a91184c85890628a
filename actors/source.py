"""Reading one video source as a stream of 1.5 s clips: PyAV with connect and read timeouts, frames sampled
and resized inside FFmpeg, the subtitle text that overlaps each clip (embedded text stream, else sidecar
cues), stream time that keeps counting across reconnects of a live source, and a resume point. Plain code,
no Ray and no Redis: the decoder actor runs one reader per stream in a thread.

Stream time: for a file or VOD it is the media time (seconds from the first frame); for a live source it is
seconds since the stream was first started (wall clock at connect + media time since that connect), so a
clip of a reconnected or resumed live stream never reuses the time of an earlier clip."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from actors.fetch import GUARDED_SCHEMES, FetchError, PlaylistLoop, PolicyOpener, http_get
from actors.rtsp_relay import RtspRelay
from actors.url_policy import UrlRefused, addresses, check_url, pinned, redact, scheme_of
from actors.speech_track import SpeechTrack
from schemas.config import DecoderSettings, SpeechSettings, UrlPolicy
from schemas.streams import FailureReason
from videobert import subtitles
from videobert.reader import (AudioChunk, ClipCutter, ClipSpec, DecodeCounts, DecodeOptions, FrameTooLarge, demux,
                              media_offset, text_stream)
from videobert.subtitles import Cue

log = logging.getLogger(__name__)

LIVE_SCHEMES = {"udp", "rtp", "srt", "rtmp", "rtmps", "rtsp", "rtsps"}
FILE_SPEECH_WAIT_S = 120.0  # a file's clip waits at most this long (wall clock) for its speech to be recognised
MAX_CUES_KEPT = 512  # past this many, a stream's cues that ended before its current clip are let go
# What FFmpeg may open on behalf of each scheme: an HLS playlist cannot pull in file:// or other protocols.
_PROTOCOLS = {
    "http": "http,https,tcp,tls,crypto", "https": "http,https,tcp,tls,crypto",
    "rtsp": "rtsp,rtp,udp,tcp,tls", "rtsps": "rtsp,rtsps,rtp,udp,tcp,tls",
    "rtmp": "rtmp,tcp", "rtmps": "rtmps,rtmp,tcp,tls", "udp": "udp", "rtp": "rtp,udp", "srt": "srt",
    "file": "file",
}
# What a caller that checked its URL itself opens under (tests, benchmarks): files anywhere, any address. The
# decoders pass the service's policy.
TRUSTED = UrlPolicy(media_root="/", allow_private=True, allow_loopback=True)
# Demuxers that open other resources behind PyAV's io_open (concat: any file; sdp, rtp, rtsp: network
# addresses named in the file) or read devices are never used for a file or HTTP source.
_UNSAFE_DEMUXERS = {"concat", "lavfi", "sdp", "rtp", "rtsp", "sap", "alsa", "oss", "fbdev", "kmsgrab", "x11grab",
                    "video4linux2,v4l2"}


@functools.cache
def _safe_demuxers() -> str:
    """FFmpeg's format_whitelist for guarded sources: every demuxer this FFmpeg has but the unsafe ones."""
    names = []
    for name in sorted(av.formats_available):
        try:
            av.format.ContainerFormat(name, "r")
        except ValueError:  # a muxer only
            continue
        if name not in _UNSAFE_DEMUXERS:
            names.append(name)
    return ",".join(names)


class SourceError(Exception):
    """A source that cannot be read. `reason` is a short code (a metric label), `retry` whether trying
    again (a reconnect) can help; the message never holds credentials."""

    def __init__(self, reason: FailureReason | str, message: str, retry: bool = False):
        super().__init__(message)
        self.reason, self.retry = FailureReason(reason), retry


@dataclass(frozen=True)
class StreamClip:
    index: int  # position on the stream's clip grid: t0 = index * stride
    t0: float
    t1: float
    frames: np.ndarray  # (T, H, W, 3) uint8
    text: str
    end_wall: float | None  # live: wall time the clip's last moment was on air (for latency); None for files
    text_source: str = "none"  # where its text comes from: "subtitles", "speech" or "none" (the stream has neither)


def decode_options(settings: DecoderSettings) -> DecodeOptions:
    """How the decoder's settings have FFmpeg decode each stream."""
    return DecodeOptions(settings.skip_loop_filter, settings.skip_frame, settings.thread_type, settings.thread_count)


def open_options(url: str, settings: DecoderSettings) -> dict[str, str]:
    scheme = scheme_of(url)
    opts = {"protocol_whitelist": _PROTOCOLS.get(scheme, scheme)}
    if scheme in GUARDED_SCHEMES:  # opened through actors.fetch.PolicyOpener
        # http_persistent: HLS would reuse FFmpeg's own HTTP connection, which a Python opener does not have
        opts |= {"format_whitelist": _safe_demuxers(), "http_persistent": "0"}
    us = str(int(settings.read_timeout_s * 1e6))
    if scheme in ("http", "https"):
        opts["rw_timeout"] = us
    elif scheme in ("rtsp", "rtsps"):
        opts |= {"rtsp_transport": "tcp", "timeout": us}
    elif scheme in ("udp", "rtp"):
        # fifo_size counts 188-byte packets
        opts |= {"timeout": us, "overrun_nonfatal": "1", "fifo_size": str(settings.udp_buffer_bytes // 188)}
    elif scheme == "srt":
        opts |= {"timeout": us}
    elif scheme in ("rtmp", "rtmps"):
        opts |= {"rw_timeout": us}
    if scheme in LIVE_SCHEMES:
        opts |= {"analyzeduration": "2000000", "probesize": "2000000"}
    return opts


def _classify_open_error(url: str, e: Exception, when: str = "") -> SourceError:
    """What an open failure means, from the error's type (PyAV maps FFmpeg's HTTP and socket errors to their
    own classes); the text is consulted only with the URL taken out of it, since a URL may say "404" or
    "refused" itself."""
    msg = str(e).replace(url, redact(url))
    said = str(e).replace(url, "").lower()
    if isinstance(e, UrlRefused):
        return SourceError(e.failure, when + e.reason)
    if isinstance(e, PlaylistLoop):
        return SourceError("playlist_loop", when + str(e))
    if isinstance(e, ssl.SSLCertVerificationError):
        return SourceError("tls_error", f"the certificate is not valid for the host ({e.verify_message}); "
                                        "options.tls_verify = false accepts it")
    if isinstance(e, FetchError) and e.status:
        status = e.status
        reason = "not_found" if status in (404, 410) else "forbidden" if status in (401, 403) else \
            "server_error" if status >= 500 else "http_error"
        return SourceError(reason, msg, retry=reason == "server_error")
    if isinstance(e, (FileNotFoundError, av.error.HTTPNotFoundError)):
        return SourceError("not_found", f"not found: {msg}")
    if isinstance(e, (av.error.HTTPForbiddenError, av.error.HTTPUnauthorizedError)):
        return SourceError("forbidden", f"forbidden: {msg}")
    if isinstance(e, av.error.HTTPServerError):
        return SourceError("server_error", f"the server failed: {msg}", retry=True)
    if isinstance(e, av.error.HTTPClientError):
        return SourceError("http_error", f"the server refused the request: {msg}")
    if isinstance(e, (TimeoutError, av.error.ExitError)) or "timed out" in said:
        return SourceError("timeout", f"no answer within the timeout: {msg}", retry=True)
    if isinstance(e, (ConnectionError, av.error.ConnectionRefusedError)) or "connection refused" in said:
        return SourceError("connection_refused", f"connection refused: {msg}", retry=True)
    if isinstance(e, av.error.InvalidDataError):
        return SourceError("invalid_data", f"not a readable video: {msg}")
    return SourceError("open_failed", f"cannot open: {msg}", retry=True)


class SourceReader:
    """One connection to a source, read into clips on the stream's grid (t0 = k * stride).

    `resume_after`: the t0 of the last clip already delivered (or None): only later clips come out; a file
    seeks close to it first. `live`: True/False, or None to decide from the source (network schemes that
    have no duration). `started_at`: wall time the stream first started (live stream time counts from it)."""

    def __init__(self, url: str, spec: ClipSpec, settings: DecoderSettings, *, stride: float | None = None,
                 resume_after: float | None = None, live: bool | None = None, started_at: float | None = None,
                 sidecar_cues: list[Cue] | None = None, policy: UrlPolicy = TRUSTED, tls_verify: bool = True,
                 resolve=None, speech=None, text_source: str = "auto", speech_settings: SpeechSettings | None = None,
                 metrics=None, stream_id: str = ""):
        self.url, self.spec, self.settings = url, spec, settings
        self.policy, self.tls_verify, self.resolve = policy, tls_verify, resolve  # resolve: tests' own DNS
        self.opener: PolicyOpener | None = None
        self.relay: RtspRelay | None = None
        self._opened = url
        self.stride = stride or spec.seconds
        self.resume_after = resume_after
        self.live_option = live
        self.started_at = started_at if started_at is not None else time.time()
        self.sidecar_cues = sidecar_cues or []
        self.live = bool(live)
        self.counts = DecodeCounts()
        self.last_progress = time.monotonic()  # the watchdog reads this
        self.width = self.height = 0
        self.subtitle_source = "none"
        # speech: a pipeline with a speech stage (None: none); text_source: "auto", "subtitles" or "speech"
        self.speech, self.text_source = speech, text_source
        self.speech_settings = speech_settings or SpeechSettings()
        self.metrics, self.stream_id = metrics, stream_id
        self.track: SpeechTrack | None = None
        self._route = "none"

    def _open(self):
        """Open the source under the URL policy: files and HTTP(S) through a PolicyOpener (every resource FFmpeg
        asks for is checked), the other schemes at the address the policy checked."""
        timeouts = (self.settings.open_timeout_s, self.settings.read_timeout_s)
        options = open_options(self.url, self.settings)
        started = time.monotonic()
        opened = self._opened = self.url  # what FFmpeg is given (its errors name it: redacted like the job's URL)
        try:
            if scheme_of(self.url) in GUARDED_SCHEMES:
                self.opener = PolicyOpener(self.url, self.policy, tls_verify=self.tls_verify,
                                           connect_timeout=timeouts[0], read_timeout=timeouts[1], resolve=self.resolve)
                c = av.open(self.url, options=options, timeout=timeouts, io_open=self.opener)
            elif scheme_of(self.url) == "rtsp":  # through a relay that refuses redirects, at the checked address
                self.relay = RtspRelay(self.url, addresses(self.url, self.policy, self.resolve)[0], timeouts[0])
                opened = self._opened = self.relay.local_url
                c = av.open(opened, options=options, timeout=timeouts)
            else:
                opened = self._opened = pinned(self.url, self.policy, self.resolve)
                c = av.open(opened, options=options, timeout=timeouts)
        except Exception as e:  # noqa: BLE001 - every open failure becomes a SourceError
            self._close_relay()
            if isinstance(e, UrlRefused):
                pass  # the policy refused the address itself
            elif self.relay is not None and (self.relay.refused or self.relay.error) is not None:
                e = self.relay.refused or self.relay.error
            elif self.opener is not None and self.opener.failure is not None:
                e = self.opener.failure
            elif self.opener is not None and isinstance(e, av.error.ArgumentError):  # EINVAL: the format_whitelist
                e = UrlRefused("format", "the source is a list of other files or addresses (concat, sdp) that "
                                         "FFmpeg would open outside the URL policy; not allowed")
            elif (self.opener is None and isinstance(e, av.error.InvalidDataError)
                  and time.monotonic() - started >= 0.95 * self.settings.read_timeout_s):
                # FFmpeg's RTSP client reports a reply that never came as invalid data, once its timeout is up
                e = TimeoutError(f"the server sent nothing for {self.settings.read_timeout_s:.0f} s")
            raise _classify_open_error(opened, e) from e
        if not c.streams.video:
            c.close()
            raise SourceError("no_video", "the source has no video stream")
        vs = c.streams.video[0]
        self.width, self.height = vs.codec_context.width, vs.codec_context.height
        if self.width * self.height > self.settings.max_frame_pixels:
            c.close()
            raise SourceError("frame_too_large", f"frames of {self.width}x{self.height} exceed the limit of "
                                                 f"{self.settings.max_frame_pixels} pixels")
        if self.live_option is None:
            self.live = scheme_of(self.url) in LIVE_SCHEMES or (scheme_of(self.url) != "file" and c.duration is None)
        return c

    def clips(self) -> Iterator[StreamClip]:
        """Decode until the source ends. Raises SourceError when it cannot be read (before or mid-stream)."""
        try:
            yield from self._clips()
        finally:
            self._close_relay()

    def _clips(self) -> Iterator[StreamClip]:
        container = self._open()
        with container:
            vs = container.streams.video[0]
            decode_options(self.settings).apply(vs, self.spec)
            offset = media_offset(vs)
            rate = float(vs.average_rate or 25)
            if not self.live and self.resume_after is not None and self.resume_after > 0:
                target = self.resume_after + self.stride - 1.0  # a little before: the cutter skips what is earlier
                if target > 0:
                    try:
                        container.seek(int((target + offset) / vs.time_base), stream=vs, backward=True)
                    except av.error.FFmpegError as e:
                        log.info("%s: cannot seek (%s); decoding from the start", redact(self.url), e)
            cues: list[Cue] = list(self.sidecar_cues)
            embedded = False
            cutter: ClipCutter | None = None
            self._wall_offset = float("inf")
            base = 0.0  # stream time minus media time (live: seconds since started_at, fixed at the first frame)
            counts = self.counts = DecodeCounts()
            text, audio = self._text_route(container)
            held: deque = deque()  # clips waiting for their speech to be recognised
            try:
                for item in demux(container, vs, text, counts, on_packet=self._progress,
                                  max_pixels=self.settings.max_frame_pixels, audio=audio):
                    if isinstance(item, AudioChunk):
                        if cutter is not None or not self.live:  # live: stream time is known from the first frame
                            self.track.push(item.t + base, item.samples)
                            if held:
                                yield from self._release(held, held[-1][2])
                        continue
                    if isinstance(item, Cue):
                        if not embedded:
                            cues, embedded, self.subtitle_source = [], True, "embedded"
                        cues.append(Cue(round(item.start + base, 3), round(item.end + base, 3), item.text)
                                    if base else item)
                        continue
                    media_t, frame = item
                    # wall clock minus media time, at its smallest: the frame that reached us soonest
                    # after it was on air; clip ends are put on the wall clock with it (latency)
                    self._wall_offset = min(self._wall_offset, time.time() - media_t)
                    if cutter is None:
                        if self.live:
                            base = (time.time() - self.started_at) - media_t
                        cutter = self._cutter(media_t + base)
                    for index, t0, t1, arr in cutter.push(media_t + base, frame):
                        if self.track is None:
                            yield self._clip(index, t0, t1, arr, cues, base)
                        else:
                            held.append((index, t0, t1, arr, base, time.monotonic()))
                    if self.track is not None:
                        yield from self._release(held, media_t + base)
                if cutter is not None:
                    for index, t0, t1, arr in cutter.flush(1.0 / rate):
                        if self.track is None:
                            yield self._clip(index, t0, t1, arr, cues, base)
                        else:
                            held.append((index, t0, t1, arr, base, time.monotonic()))
                if self.track is not None:  # the end of the source: what was said last, then the clips held
                    self.track.finish(self.speech_settings.max_hold_s)
                    yield from self._release(held)
            except FrameTooLarge as e:
                raise SourceError("frame_too_large", f"after {counts.frames} frames: {e}") from e
            except (av.error.FFmpegError, OSError, UrlRefused) as e:
                self._opener_failed()
                msg = str(e).replace(self._opened, redact(self._opened)).replace(self.url, redact(self.url))
                raise SourceError("read_error", f"read error after {counts.frames} frames: {msg}", retry=True) from e
        self._opener_failed()
        if counts.frames == 0:
            raise SourceError("no_frames", "no decodable video frames", retry=self.live)

    def _text_route(self, container):
        """(text stream, audio stream) to demux: the subtitles where the stream has them, else (or when the job
        asks for speech) its first audio track when there is a speech stage; sets up the speech track."""
        text = text_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        wants = self.text_source == "speech" or (
            self.text_source == "auto" and text is None and not self.sidecar_cues)
        self.track = None
        self._route = "subtitles" if text is not None or self.sidecar_cues else "none"
        if wants and audio is not None and self.speech is not None and self.speech.hears:
            self.subtitle_source = "speech"
            self.track = SpeechTrack(self.speech, self.speech_settings.max_utterance_s, self.metrics, self.stream_id)
            return None, audio
        if wants and audio is not None and self.speech is None:
            log.info("%s: audio and no subtitles, but no speech stage ([speech] enabled = false)", redact(self.url))
        if self.text_source == "speech":
            self._route = "none"
            return None, None  # speech asked for and not possible (no audio, no stage): no text
        return text, None

    def _release(self, held: deque, now: float | None = None) -> Iterator[StreamClip]:
        """The held clips whose text is final: the speech up to their end recognised; or no audio came for
        max_hold_s of stream time (the track ended or stalled); or a clip waited max_hold_s (a live stream: a tag
        late by more than that is worth less than one without its words; a file waits FILE_SPEECH_WAIT_S, for
        a busy speech pool); or the source ended (`now` None: everything that is left)."""
        track = self.track
        track.poll()
        settled = track.settled()
        hold = self.speech_settings.max_hold_s
        limit = hold if self.live else max(hold, FILE_SPEECH_WAIT_S)
        stalled = now is not None and track.segmenter.clock + hold < now
        while held:
            index, t0, t1, arr, base, since = held[0]
            if not (now is None or t1 <= settled or stalled or time.monotonic() - since >= limit):
                return
            held.popleft()
            yield self._clip(index, t0, t1, arr, track.cues, base, source="speech")

    def _opener_failed(self) -> None:
        """A playlist that named something the policy refused, or that loops on itself (its demuxer skips what
        it cannot open), or an RTSP server's redirect, fails with that reason, not as a quiet end or a read
        error."""
        e = (self.opener.failure if self.opener is not None else None) or \
            (self.relay.refused if self.relay is not None else None)
        if e is not None:
            raise _classify_open_error(self.url, e, f"after {self.counts.frames} frames: ")

    def _close_relay(self) -> None:
        if self.relay is not None:
            self.relay.close()

    def _progress(self) -> None:
        self.last_progress = time.monotonic()

    @property
    def frames_decoded(self) -> int:
        return self.counts.frames

    @property
    def decode_errors(self) -> int:
        return self.counts.errors

    def _cutter(self, first_t: float) -> ClipCutter:
        start = first_t if self.live else 0.0
        if self.resume_after is not None:
            start = max(start, self.resume_after + self.stride / 2)
        k0 = max(0, math.ceil(start / self.stride - 1e-6))
        self._k0 = k0
        windows = ((k * self.stride, k * self.stride + self.spec.seconds) for k in itertools.count(k0))
        return ClipCutter(self.spec, windows)

    def _clip(self, index: int, t0: float, t1: float, arr: np.ndarray, cues: list[Cue], base: float,
              source: str | None = None) -> StreamClip:
        end_wall = None
        if self.live:  # the wall time the clip's end was on air: its media time + the smallest frame delay
            end_wall = (t1 - base) + self._wall_offset
        text = subtitles.text_in_window(cues, t0, t1)
        if len(cues) > MAX_CUES_KEPT:  # a long stream: cues that ended before this clip are never read again
            cues[:] = [c for c in cues if c.end > t0]
        if source is None:
            source = "subtitles" if cues else self._route
        return StreamClip(self._k0 + index, round(t0, 3), round(t1, 3), arr, text, end_wall, source)


def sidecar_cues(subtitles_url: str, stream_id: str, settings: DecoderSettings, policy: UrlPolicy = TRUSTED,
                 tls_verify: bool = True) -> list[Cue] | None:
    """A stream's sidecar cues, from what the URL policy answered for it (actors.control.admit: the job's
    subtitles_url, else a file's own `<name>.srt/.vtt` under the media root). None without one; subtitles are
    optional, so one that cannot be read (refused, too large, too slow, not text) is logged and the stream
    runs without."""
    try:
        if subtitles_url:
            return subtitles.parse_bytes(fetch_bytes(subtitles_url, settings.subtitle_max_bytes,
                                                     settings.subtitle_fetch_s, settings.read_timeout_s,
                                                     policy, tls_verify))
    except Exception as e:  # noqa: BLE001 - subtitles are optional: the stream runs without them
        log.warning("stream %s: ignoring sidecar subtitles: %s", stream_id, str(e)[:200])
    return None


def fetch_bytes(url: str, limit: int, deadline_s: float, timeout_s: float, policy: UrlPolicy = TRUSTED,
                tls_verify: bool = True) -> bytes:
    """A sidecar file from disk (held to the media root again as it is opened) or over HTTP(S) under the URL
    policy (actors.fetch.http_get: redirects re-checked, certificates verified), at most `limit` bytes, within
    `deadline_s` seconds in all."""
    if scheme_of(url) == "file":
        with open(check_url(url, policy), "rb") as f:
            data = f.read(limit + 1)
    else:
        data = http_get(url, policy, limit, deadline_s, timeout_s, tls_verify)
    if len(data) > limit:
        raise FetchError(f"subtitle file larger than {limit} bytes")
    return data
