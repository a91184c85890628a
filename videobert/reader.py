"""Reading any directory of videos into clips: 1.5 s windows of frames sampled at a fixed rate and
resized inside FFmpeg (PyAV's swscale), each with the subtitle text that overlaps it and, where a sidecar
`<name>.json` exists, its ground-truth labels.

Subtitles come from the embedded text subtitle stream first, else a sidecar .srt/.vtt. A corrupt file
raises VideoReadError for that file only; `read_corpus` records it and moves on."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from schemas.config import MAX_FRAME_PIXELS
from schemas.world import GroundTruth, Segment
from videobert import subtitles
from videobert.subtitles import Cue

if TYPE_CHECKING:
    from videobert.speech import TextSource

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".ts", ".m4v", ".flv")
TEXT_CODECS = ("mov_text", "subrip", "srt", "ass", "ssa", "webvtt", "text")  # subtitle streams read as text


class VideoReadError(Exception):
    """A video that cannot be read: the message says which file and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class VideoTooLong(VideoReadError):
    """A video longer than the caller's limit, found before decoding past it."""


FITS = ("pad", "stretch")


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut: `frames` frames evenly spaced over `seconds`, each made size x size.

    `fit` says how a frame that is not square becomes square. "stretch" (the default) scales each axis on
    its own (a circle in a 16:9 video becomes an ellipse); "pad" scales the frame to fit and fills the rest
    with black, so every form keeps its shape whatever the aspect ratio, at the price of fewer pixels
    along the long side (which suits the shapes world better: docs/MEASURED.md)."""

    seconds: float = 1.5
    frames: int = 8
    size: int = 64
    fit: str = "stretch"

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.frames < 1 or self.size < 8:
            raise ValueError(f"bad clip spec: seconds={self.seconds} frames={self.frames} size={self.size}")
        if self.fit not in FITS:
            raise ValueError(f"bad clip spec: fit={self.fit!r}; choose from {', '.join(FITS)}")

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "frames": self.frames, "size": self.size, "fit": self.fit}

    @classmethod
    def from_dict(cls, d: dict) -> "ClipSpec":
        """A spec as stored in a checkpoint or sent between actors (written before `fit` existed: "stretch")."""
        return cls(**{"fit": "stretch", **d})

    def fitted_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) a width x height frame is resized to before it is padded to size x size."""
        if self.fit == "stretch" or width <= 0 or height <= 0:
            return self.size, self.size
        scale = self.size / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    def sample_times(self, t0: float, t1: float) -> np.ndarray:
        """Times (seconds) of the frames that make the clip [t0, t1): centres of `frames` equal slices."""
        return t0 + (np.arange(self.frames) + 0.5) * (t1 - t0) / self.frames


LOOP_FILTER_SKIPS = ("none", "nonref", "all")
FRAME_SKIPS = ("none", "nonref", "auto")
THREAD_TYPES = ("auto", "frame", "slice", "none")
NONREF_MIN_FRAMES_PER_SAMPLE = 4  # "auto" skips unreferenced frames only where a sample has this many frames


@dataclass(frozen=True)
class DecodeOptions:
    """How FFmpeg decodes a video stream: only what the clips need. A clip samples a few frames a second at
    64 pixels, so most of what a decoder does for a full-quality picture is work nothing sees.

    `skip_loop_filter`: H.264/HEVC's deblocking filter skipped on no frame ("none"), on frames no other frame
    refers to ("nonref") or on all ("all"); the blockiness it leaves is averaged away by the resize to clip size.
    `skip_frame`: "nonref" does not decode frames no other frame refers to (B-frames, mostly: about half of an
    x264 stream's); "auto" does so only where the stream has at least NONREF_MIN_FRAMES_PER_SAMPLE frames per
    clip sample (25 fps against 8 samples in 1.5 s: 4.7), so that a sample still finds a frame within a few
    frames of its time; "none" decodes every frame. A stream without such frames loses nothing either way.
    `thread_type` / `thread_count`: FFmpeg's threading per stream (count 0: FFmpeg picks, a thread per core and
    one more). A decoder that carries dozens of streams on two cores is better off with one thread each.
    Measured side by side: `python -m bench.decode_options`."""

    skip_loop_filter: str = "none"
    skip_frame: str = "none"
    thread_type: str = "auto"
    thread_count: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("skip_loop_filter", self.skip_loop_filter, LOOP_FILTER_SKIPS),
                                     ("skip_frame", self.skip_frame, FRAME_SKIPS),
                                     ("thread_type", self.thread_type, THREAD_TYPES)):
            if value not in allowed:
                raise ValueError(f"decode option {name} must be one of {', '.join(allowed)}, not {value!r}")
        if not 0 <= self.thread_count <= 64:
            raise ValueError(f"decode option thread_count must be 0 (FFmpeg picks) to 64, not {self.thread_count}")

    def skips_nonref(self, fps: float, spec: ClipSpec) -> bool:
        """Whether a stream of `fps` frames a second read into `spec`'s clips skips unreferenced frames."""
        if self.skip_frame == "auto":
            return fps >= NONREF_MIN_FRAMES_PER_SAMPLE * spec.fps
        return self.skip_frame == "nonref"

    def apply(self, vs, spec: ClipSpec) -> None:
        """Set the options on a PyAV video stream before its first packet is decoded."""
        cc = vs.codec_context
        vs.thread_type = self.thread_type.upper()
        if self.thread_count:
            cc.thread_count = self.thread_count
        if self.skips_nonref(float(vs.average_rate or 25), spec):
            cc.skip_frame = "NONREF"
        if self.skip_loop_filter != "none":
            cc.options = {**cc.options, "skip_loop_filter": self.skip_loop_filter}


@dataclass(frozen=True)
class Clip:
    index: int
    t0: float
    t1: float
    frames: np.ndarray  # (T, H, W, 3) uint8
    text: str = ""
    segment: Segment | None = None  # ground truth covering the clip's midpoint, when known


@dataclass(frozen=True)
class VideoClips:
    path: str
    clips: list[Clip]
    cues: list[Cue]
    subtitle_source: str  # "embedded" | "sidecar" | "none"
    truth: GroundTruth | None
    duration: float
    decode_errors: int = 0
    width: int = 0
    height: int = 0


class ClipCutter:
    """Turns a stream of decoded frames (time, av.VideoFrame) into clips.

    Windows come from `windows` (sorted by start; overlapping allowed) or, by default, back-to-back
    windows of spec.seconds from time 0. A frame is reformatted (resize + RGB, in FFmpeg) only when a
    sample time picks it: the frame shown at sample time s is the last frame that starts at or before s."""

    def __init__(self, spec: ClipSpec, windows: Iterable[tuple[float, float]] | None = None,
                 stride: float | None = None):
        self.spec = spec
        if windows is None:
            step = stride or spec.seconds
            windows = ((k * step, k * step + spec.seconds) for k in itertools.count())
        self._windows: Iterator[tuple[float, float]] = iter(windows)
        self._next: tuple[float, float] | None = next(self._windows, None)
        self._open: list[dict] = []
        self._index = 0
        self._prev: tuple[float, object] | None = None
        self._last_rgb: tuple[int, np.ndarray] | None = None  # (id of frame, rgb) cache
        # one scaler for the whole stream: FFmpeg's scaling context is set up once, not for every frame
        # (VideoFrame.reformat makes a new one each call: 600 us a 360p frame against 150 us, same pixels)
        self._reformatter = VideoReformatter()

    def _rgb(self, frame) -> np.ndarray:
        if self._last_rgb is None or self._last_rgb[0] is not frame:
            size = self.spec.size
            w, h = self.spec.fitted_size(frame.width, frame.height)
            rgb = self._reformatter.reformat(frame, width=w, height=h, format="rgb24",
                                             interpolation="AREA").to_ndarray()
            if (w, h) != (size, size):  # pad: centre the fitted frame on black
                out = np.zeros((size, size, 3), np.uint8)
                y0, x0 = (size - h) // 2, (size - w) // 2
                out[y0:y0 + h, x0:x0 + w] = rgb
                rgb = out
            self._last_rgb = (frame, rgb)
        return self._last_rgb[1]

    def _admit(self, until: float) -> None:
        while self._next is not None and self.spec.sample_times(*self._next)[0] < until:
            t0, t1 = self._next
            self._open.append({"index": self._index, "t0": t0, "t1": t1, "times": self.spec.sample_times(t0, t1),
                               "slots": [None] * self.spec.frames})
            self._index += 1
            self._next = next(self._windows, None)

    def _fill(self, before: float, frame) -> list[tuple[int, float, float, np.ndarray]]:
        done = []
        for w in self._open:
            for k, s in enumerate(w["times"]):
                if w["slots"][k] is None and s < before:
                    w["slots"][k] = self._rgb(frame)
            if all(slot is not None for slot in w["slots"]):
                done.append(w)
        self._open = [w for w in self._open if w not in done]
        return [(w["index"], w["t0"], w["t1"], np.stack(w["slots"])) for w in done]

    def push(self, t: float, frame) -> list[tuple[int, float, float, np.ndarray]]:
        """Feed the next decoded frame (time t in seconds); returns clips completed by it."""
        self._admit(until=t)
        out: list = []
        if self._prev is None:
            out = self._fill(t, frame)  # sample times before the first frame show the first frame
        else:
            out = self._fill(t, self._prev[1])
        self._prev = (t, frame)
        return out

    def flush(self, frame_duration: float) -> list[tuple[int, float, float, np.ndarray]]:
        """End of stream: complete windows whose samples fall within the last frame's display time."""
        if self._prev is None:
            return []
        end = self._prev[0] + frame_duration
        self._admit(until=end)
        out = self._fill(end, self._prev[1])
        self._open.clear()
        return out


def text_stream(container):
    """The container's first text subtitle stream (the narration), or None."""
    return next((st for st in container.streams.subtitles if st.codec_context.name in TEXT_CODECS), None)


def media_offset(vs) -> float:
    """Seconds of the video stream's first timestamp: media time counts from it."""
    return float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0


def packet_cues(pkt, offset: float) -> list[Cue]:
    """The cues of one subtitle packet, in media time (seconds after `offset`); none for an empty packet."""
    if not pkt.size or pkt.pts is None:
        return []
    try:
        subs = pkt.decode()
    except av.error.FFmpegError:
        return []
    out = []
    for sub in subs:
        text = subtitles.clean_text(getattr(sub, "dialogue", b"").decode("utf-8", "replace"))
        if text:
            start = float(pkt.pts * pkt.time_base) - offset
            dur = float((pkt.duration or 0) * pkt.time_base) or 2.0
            out.append(Cue(round(start, 3), round(start + dur, 3), text[: subtitles.MAX_CUE_CHARS]))
    return out


@dataclass
class DecodeCounts:
    frames: int = 0  # decoded video frames
    errors: int = 0  # packets that failed to decode (skipped)
    audio_errors: int = 0  # audio packets or frames that failed to decode or resample (skipped)


@dataclass(frozen=True)
class AudioChunk:
    """Decoded audio of the track being listened to: int16 mono at 16 kHz (videobert.speech.SAMPLE_RATE)."""

    t: float  # media time of its first sample
    samples: np.ndarray


class FrameTooLarge(ValueError):
    """A decoded frame larger than the limit (a stream may switch to a larger size at any frame)."""

    def __init__(self, width: int, height: int, limit: int):
        super().__init__(f"frames of {width}x{height} exceed the limit of {limit} pixels")
        self.width, self.height, self.limit = width, height, limit


def demux(container, vs, text, counts: DecodeCounts, on_packet: Callable[[], None] | None = None,
          max_pixels: int = MAX_FRAME_PIXELS, audio=None) -> Iterator[tuple[float, av.VideoFrame] | Cue | AudioChunk]:
    """The one demux/decode loop of every reader: (media time, frame) for each decoded video frame, in
    decode order, each cue of the text stream `text` (or None) as it comes, and with an `audio` stream its
    sound as AudioChunks (resampled in FFmpeg to 16 kHz mono). A packet that fails to decode is counted and
    skipped (audio never fails the source: a broken track is silence); an error of the container itself
    (av.error.FFmpegError) is raised, and FrameTooLarge for any frame over `max_pixels`, the first or the
    thousandth."""
    offset = media_offset(vs)
    rate = float(vs.average_rate or 25)
    resampler = None
    if audio is not None:
        from videobert.speech import AudioResampler16k

        resampler = AudioResampler16k()
    streams = [vs, *([text] if text is not None else []), *([audio] if audio is not None else [])]
    for pkt in container.demux(*streams):
        if on_packet is not None:
            on_packet()
        kind = pkt.stream.type
        if kind == "subtitle":
            yield from packet_cues(pkt, offset)
            continue
        if kind == "audio":
            try:
                aframes = pkt.decode()
            except (av.error.FFmpegError, ValueError):
                counts.audio_errors += 1
                continue
            for af in aframes:
                failed = resampler.failed
                got = resampler.push(af, offset)
                counts.audio_errors += resampler.failed - failed
                if got is not None:
                    yield AudioChunk(*got)
            continue
        try:
            frames = pkt.decode()
        except av.error.FFmpegError:
            counts.errors += 1
            continue
        for frame in frames:
            if frame.width * frame.height > max_pixels:
                raise FrameTooLarge(frame.width, frame.height, max_pixels)
            t = (frame.time - offset) if frame.time is not None else counts.frames / rate
            counts.frames += 1
            yield t, frame


def load_truth(video: str | Path) -> GroundTruth | None:
    """The ground-truth sidecar `<name>.json`, if there is one (a malformed one is an error)."""
    p = Path(video).with_suffix(".json")
    if not p.is_file():
        return None
    try:
        return GroundTruth.model_validate(json.loads(p.read_text()))
    except (ValueError, OSError) as e:
        raise VideoReadError(p, f"ground truth is not valid: {e}") from e


def read_video(path: str | Path, spec: ClipSpec = ClipSpec(),
               windows: list[tuple[float, float]] | None = None, with_text: bool = True,
               stride: float | None = None, max_pixels: int = MAX_FRAME_PIXELS,
               max_seconds: float | None = None, decode: DecodeOptions = DecodeOptions(),
               text: TextSource | None = None) -> VideoClips:
    """Decode one video into clips: the given windows, or windows of spec.seconds every `stride` seconds
    (default: back to back). With `max_seconds`, a longer video is refused (VideoTooLong) from its declared
    duration, or as soon as a frame past it is decoded, never after decoding all of it. `text`: where the
    clips' text comes from (videobert.speech.TextSource; default: subtitles)."""
    path = Path(path)
    truth = load_truth(path)
    try:
        container = av.open(str(path), timeout=(10.0, 10.0))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(path, f"cannot open: {e}") from e
    with container:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream")
        vs = container.streams.video[0]
        width, height = vs.codec_context.width, vs.codec_context.height
        if width * height > max_pixels:
            raise VideoReadError(path, f"frame too large: {width}x{height}")
        if max_seconds is not None and container.duration is not None and container.duration / 1e6 > max_seconds + 1:
            raise VideoTooLong(path, f"lasts {container.duration / 1e6:.1f} s, longer than {max_seconds:.0f} s")
        decode.apply(vs, spec)
        rate = float(vs.average_rate or 25)
        cutter = ClipCutter(spec, windows, stride)
        raw: list[tuple[int, float, float, np.ndarray]] = []
        cues: list[Cue] = []
        counts, last_t = DecodeCounts(), 0.0
        try:
            for item in demux(container, vs, text_stream(container) if with_text else None, counts,
                              max_pixels=max_pixels):
                if isinstance(item, Cue):
                    cues.append(item)
                    continue
                t, frame = item
                if max_seconds is not None and t > max_seconds:
                    raise VideoTooLong(path, f"runs past {max_seconds:.0f} s")
                last_t = max(last_t, t)
                raw.extend(cutter.push(t, frame))
        except FrameTooLarge as e:
            raise VideoReadError(path, f"frame too large: {e.width}x{e.height}") from e
        except av.error.FFmpegError as e:
            counts.errors += 1
            log.warning("%s: stopped reading after %d frames: %s", path, counts.frames, e)
        raw.extend(cutter.flush(1.0 / rate))
        width, height = vs.codec_context.width, vs.codec_context.height
    if counts.frames == 0:
        raise VideoReadError(path, "no decodable video frames")
    cues.sort(key=lambda c: c.start)
    source = "embedded" if cues else "none"
    if with_text and not cues and (sidecar := subtitles.find_sidecar(path)) is not None:
        try:
            cues, source = subtitles.read_sidecar(sidecar), "sidecar"
        except subtitles.SubtitleError as e:
            log.warning("%s: ignoring sidecar subtitles: %s", path, e)
    if with_text and text is not None and text.route != "subtitles" and (text.route == "speech" or not cues):
        heard = text.transcribe(path)  # audio with no usable subtitles (auto), or speech asked for
        if heard or text.route == "speech":
            cues, source = heard, "speech"
    clips = [Clip(i, round(t0, 3), round(t1, 3), frames, subtitles.text_in_window(cues, t0, t1),
                  truth.segment_at((t0 + t1) / 2) if truth else None)
             for i, t0, t1, frames in sorted(raw, key=lambda r: r[0])]
    return VideoClips(str(path), clips, cues, source, truth, last_t + 1.0 / rate, counts.errors, width, height)


def list_videos(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such directory: {directory}")
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                  and not p.name.startswith("."))


@dataclass
class CorpusRead:
    videos: list[VideoClips] = field(default_factory=list)
    failures: list[VideoReadError] = field(default_factory=list)


def _read_or_error(args) -> VideoClips | VideoReadError:
    path, spec, stride, text = args
    try:
        return read_video(path, spec, stride=stride, text=text)
    except VideoReadError as e:
        return e


def read_corpus(directory: str | Path, spec: ClipSpec = ClipSpec(), workers: int = 1,
                progress: bool = True, limit: int | None = None, stride: float | None = None,
                text: TextSource | None = None) -> CorpusRead:
    """Read every video under `directory`; failures are collected per file, never raised. `text`: where the
    clips' text comes from (videobert.speech.TextSource; default: subtitles)."""
    from tqdm import tqdm

    paths = list_videos(directory)[:limit]
    result = CorpusRead()
    jobs = [(p, spec, stride, text) for p in paths]
    bar = tqdm(total=len(jobs), desc="reading videos", unit="video", disable=not progress)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            outcomes = []
            for o in pool.imap(_read_or_error, jobs):
                outcomes.append(o)
                bar.update()
    else:
        outcomes = []
        for j in jobs:
            outcomes.append(_read_or_error(j))
            bar.update()
    bar.close()
    for o in outcomes:
        if isinstance(o, VideoReadError):
            log.warning("skipping %s", o)
            result.failures.append(o)
        else:
            result.videos.append(o)
    return result
