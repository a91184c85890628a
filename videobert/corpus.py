"""The shapes-world corpus generator (docs/DEMO_WORLD.md): plans each video from its seed, renders
it, encodes H.264 with PyAV, embeds the narration as a text subtitle stream (mov_text in MP4, SubRip in
MKV), and writes a sidecar .srt and a ground-truth .json beside it. Deterministic per (seed, index).

With `vary`, each video also draws its own way what the spec leaves open about the picture, so that a model
learns the shapes the spec describes rather than one drawing of them: the shapes' proportions (the ring's
hole, the star's inner radius, the cross's arms, the square's corners, the triangle's apex and base), a small
tilt, anti-aliasing from none to 4x4 samples (`shapes.Look`); colour values up to 24 levels a channel from
each colour's; sensor grain in about a third of the videos; x264 CRF 18-30 at two presets. These come from a
generator of their own, so a varied corpus has the same videos, segments and narration as the plain one of its
seed, drawn differently.

With `speech`, each video also gets its narration spoken (espeak-ng, videobert.tts) as an AAC audio track: each
line from its subtitle's t0, spoken faster when it would run into the next line (or the end) and cut there if it
still does, over a faint background of noise (and sometimes mains hum), never digital silence. The narrator's
voice, speeds and the background come from a generator of their own too: the frames, segments, narration and
subtitles are the same with and without speech. The ground-truth .json says under `speech` which voice spoke
each line and from when to when its audio runs.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.subtitles.subtitle import SubtitleSet
from tqdm import tqdm

from schemas.world import GroundTruth, NarrationLine, Segment
from videobert import shapes, tts, world
from videobert.subtitles import Cue, format_srt

log = logging.getLogger(__name__)

RESOLUTIONS = ((320, 240), (256, 256), (384, 216), (240, 320), (426, 240), (352, 288), (480, 270), (288, 352))
X264_PRESETS = ("superfast", "veryfast")
FRAME_RATES = (15, 20, 24, 25, 30)
SUBTITLE_CODEC = {"mp4": "mov_text", "mkv": "subrip"}
SPEECH_CODEC = "aac"
SPEECH_BIT_RATE = 48_000
SPEECH_GAP = 0.1  # seconds: a spoken line ends at least this long before the next one starts
ASS_HEADER = (
    "[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
    "Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, "
    "MarginR, MarginV, Encoding\n"
    "Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    "[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
).encode()


@dataclass(frozen=True)
class Distractor:
    noun: str
    color: str
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class PlannedSegment:
    t0: float
    t1: float
    noun: str
    color: str
    motion: shapes.Motion
    distractors: tuple[Distractor, ...]


@dataclass(frozen=True)
class VideoPlan:
    name: str
    width: int
    height: int
    fps: int
    background: str
    segments: tuple[PlannedSegment, ...]
    narration: tuple[NarrationLine, ...]
    seed: int
    index: int
    bg_seed: int = 0
    look: shapes.Look = shapes.PLAIN  # how this video draws the shapes
    palette: tuple[tuple[int, int, int], ...] = tuple(world.COLORS.values())  # its colour values, in COLORS' order
    grain: float = 0.0  # sensor noise: standard deviation of each frame's grain, in levels
    crf: int = 20  # x264's quality (higher: more compression artefacts)
    x264_preset: str = "veryfast"

    def rgb(self, color: str) -> tuple[int, int, int]:
        return self.palette[list(world.COLORS).index(color)]

    @property
    def duration(self) -> float:
        return self.segments[-1].t1

    def ground_truth(self) -> GroundTruth:
        return GroundTruth(
            segments=[Segment(t0=s.t0, t1=s.t1, verb=s.motion.verb, noun=s.noun, color=s.color) for s in self.segments],
            narration=list(self.narration), width=self.width, height=self.height, fps=self.fps,
            duration=self.duration, seed=self.seed, index=self.index, background=self.background)


def _ms(t: float) -> float:
    return round(t, 3)


def plan_video(seed: int, index: int, min_seconds: float = 10.0, max_seconds: float = 60.0,
               vary: bool = False, scale: float = 1.0) -> VideoPlan:
    """Everything about video `index` of corpus `seed`, drawn from its own generator; `scale` < 1: its frame
    drawn that much smaller (each side rounded to an even number of pixels, as H.264 wants), the whole scene
    with it (`make_corpus`)."""
    rng = np.random.default_rng([seed, index])
    width, height = RESOLUTIONS[rng.integers(len(RESOLUTIONS))]
    if scale != 1.0:
        width, height = (max(16, 2 * round(v * scale / 2)) for v in (width, height))
    fps = int(FRAME_RATES[rng.integers(len(FRAME_RATES))])
    bg = shapes.BACKGROUNDS[rng.integers(len(shapes.BACKGROUNDS))]
    target = rng.uniform(min_seconds, max(min_seconds, max_seconds - 4.5))
    segments: list[PlannedSegment] = []
    t = 0.0
    while t < target or not segments:
        seconds = _ms(rng.uniform(1.5, 4.5))
        verb = world.VERBS[rng.integers(len(world.VERBS))]
        noun = world.NOUNS[rng.integers(len(world.NOUNS))]
        color = list(world.COLORS)[rng.integers(len(world.COLORS))]
        motion = shapes.sample_motion(rng, verb, height, width, seconds)
        distractors = []
        for _ in range(int(rng.integers(0, 4))):
            for _attempt in range(20):  # keep still shapes off the acting shape's path
                r = rng.uniform(0.09, 0.14) * min(width, height)
                cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
                reach = motion.radius * max(1.0, motion.scale) + abs(motion.dx) + abs(motion.dy) + r + 4
                mid_x, mid_y = motion.cx + motion.dx / 2, motion.cy + motion.dy / 2
                if np.hypot(cx - mid_x, cy - mid_y) > reach and all(
                        np.hypot(cx - d.cx, cy - d.cy) > r + d.radius + 2 for d in distractors):
                    distractors.append(Distractor(
                        world.NOUNS[rng.integers(len(world.NOUNS))], list(world.COLORS)[rng.integers(len(world.COLORS))],
                        cx, cy, r))
                    break
        segments.append(PlannedSegment(_ms(t), _ms(t + seconds), noun, color, motion, tuple(distractors)))
        t = _ms(t + seconds)
    narration = _plan_narration(rng, segments)
    plan = VideoPlan(f"shapes_{seed}_{index:05d}", width, height, fps, bg, tuple(segments), tuple(narration),
                     seed, index, bg_seed=int(rng.integers(2**31)))
    return vary_drawing(plan) if vary else plan


def vary_drawing(plan: VideoPlan) -> VideoPlan:
    """The plan drawn its own way where the spec leaves the picture open: the shapes' look, colour values near
    each colour's, grain, compression; from a generator of its own (the plan's videos, segments and narration
    stay as they are)."""
    rng = np.random.default_rng([plan.seed, plan.index, 1])
    palette = tuple(tuple(int(v) for v in np.clip(np.array(c) + rng.integers(-24, 25, 3), 0, 255))
                    for c in world.COLORS.values())
    grain = float(rng.uniform(1.0, 5.0)) if rng.random() < 0.35 else 0.0
    return replace(plan, look=shapes.sample_look(rng), palette=palette, grain=grain, crf=int(rng.integers(18, 31)),
                   x264_preset=str(X264_PRESETS[rng.integers(len(X264_PRESETS))]))


def _plan_narration(rng: np.random.Generator, segments: list[PlannedSegment]) -> list[NarrationLine]:
    duration = segments[-1].t1
    lines: list[NarrationLine] = []
    for k, seg in enumerate(segments):
        said = world.narrate(rng, seg.motion.verb, seg.noun, seg.color)
        if said is None:
            continue
        kind, text = said
        t0 = _ms(min(max(0.0, seg.t0 + rng.uniform(-1.0, 1.0)), duration - 0.5))
        t1 = _ms(min(duration, t0 + rng.uniform(1.2, 2.5)))
        if lines and lines[-1].t1 > t0:  # speech does not overlap: the earlier line ends where this begins
            prev = lines[-1]
            lines[-1] = prev.model_copy(update={"t1": t0})
            if lines[-1].t1 - lines[-1].t0 < 0.4:
                lines.pop()
        lines.append(NarrationLine(t0=t0, t1=t1, text=text, kind=kind, segment=k))
    return [ln for ln in lines if ln.t1 - ln.t0 >= 0.4]


@dataclass(frozen=True)
class SpokenLine:
    """One narration line as the audio track speaks it."""

    voice: tts.Voice  # speed: what it was spoken at (raised from the narrator's to fit, where it had to be)
    t0: float  # seconds: where its audio starts (its subtitle's t0)
    t1: float  # and where it ends (its subtitle's t1 is not involved)
    cut: bool  # still too long at tts.MAX_SPEED: cut where the next line starts (or the video ends)


@dataclass(frozen=True, eq=False)
class SpeechTrack:
    samples: np.ndarray  # (N,) int16 at tts.SAMPLE_RATE, mono; N: the video's duration in samples
    lines: tuple[SpokenLine, ...]  # one per narration line, in its order
    noise_dbfs: float  # the background noise's RMS, dB below full scale (negative)
    hum_hz: float | None  # mains hum, where this video has it
    hum_dbfs: float | None

    def summary(self) -> dict:
        """What the ground-truth .json says of it (`speech`)."""
        return {"codec": SPEECH_CODEC, "sample_rate": tts.SAMPLE_RATE, "bit_rate": SPEECH_BIT_RATE,
                "noise_dbfs": round(self.noise_dbfs, 1), "hum_hz": self.hum_hz,
                "hum_dbfs": None if self.hum_dbfs is None else round(self.hum_dbfs, 1),
                "lines": [{"voice": ln.voice.name, "speed": ln.voice.speed, "pitch": ln.voice.pitch,
                           "amplitude": ln.voice.amplitude, "t0": ln.t0, "t1": ln.t1, "cut": ln.cut}
                          for ln in self.lines]}


def speech_track(plan: VideoPlan) -> SpeechTrack:
    """The plan's narration spoken by one narrator over a faint background, as long as the video. Every choice
    is drawn up front from a generator of its own ([seed, index, 2]), so that what espeak-ng returns changes none."""
    rng = np.random.default_rng([plan.seed, plan.index, 2])
    narrator = tts.Voice.sample(rng)
    voices = [replace(narrator, speed=int(narrator.speed + rng.integers(-12, 13)),
                      pitch=int(np.clip(narrator.pitch + rng.integers(-6, 7), 0, 99))) for _ in plan.narration]
    noise_dbfs = -float(rng.uniform(40.0, 55.0))
    hum_hz = float((50.0, 60.0)[rng.integers(2)]) if rng.random() < 0.4 else None
    hum_dbfs, hum_phase = -float(rng.uniform(52.0, 64.0)), float(rng.uniform(0, 2 * np.pi))
    noise_seed = int(rng.integers(2**31))

    rate, full = tts.SAMPLE_RATE, 32768.0
    n = int(round(int(round(plan.duration * plan.fps)) / plan.fps * rate))  # as long as the video's frames
    track = np.random.default_rng(noise_seed).normal(0.0, full * 10 ** (noise_dbfs / 20), n).astype(np.float32)
    if hum_hz is not None:  # the fundamental and two harmonics, at hum_dbfs RMS in all
        w = 2 * np.pi * hum_hz * np.arange(n) / rate + hum_phase
        hum = np.sin(w) + 0.5 * np.sin(2 * w) + 0.25 * np.sin(3 * w)
        track += (full * 10 ** (hum_dbfs / 20) / np.sqrt(np.mean(hum ** 2))) * hum.astype(np.float32)
    lines = []
    for k, (line, voice) in enumerate(zip(plan.narration, voices)):
        start = int(round(line.t0 * rate))
        end = int(round(plan.narration[k + 1].t0 * rate - SPEECH_GAP * rate)) if k + 1 < len(plan.narration) else n
        x, used, cut = tts.speak_within(line.text, voice, (end - start) / rate)
        track[start:start + x.size] += x
        lines.append(SpokenLine(used, _ms(start / rate), _ms((start + x.size) / rate), cut))
    samples = np.clip(np.round(track), -32768, 32767).astype(np.int16)
    return SpeechTrack(samples, tuple(lines), noise_dbfs, hum_hz, hum_dbfs if hum_hz is not None else None)


def render_frames(plan: VideoPlan):
    """Yield (frame_index, rgb uint8 (H, W, 3)) for every frame of the video.

    Each segment's still picture (background and distractors) is converted to uint8 once; a frame copies it
    and redraws only the acting shape's bounding box, which is most of the speed. Grain, where the plan has it,
    is one of a few noise fields drawn once per video, at a random offset each frame."""
    bg = shapes.background(np.random.default_rng(plan.bg_seed), plan.background, plan.height, plan.width)
    noise_rng = np.random.default_rng([plan.bg_seed, 7])
    grain = (np.round(noise_rng.normal(0, plan.grain, (4, plan.height + 8, plan.width + 8, 1))).astype(np.int16)
             if plan.grain > 0 else None)
    n_frames = int(round(plan.duration * plan.fps))
    seg_i, base, still = -1, None, None
    for i in range(n_frames):
        t = i / plan.fps
        while seg_i + 1 < len(plan.segments) and plan.segments[seg_i + 1].t0 <= t:
            seg_i += 1
            seg = plan.segments[seg_i]
            base = bg.copy()
            for d in seg.distractors:
                shapes.paint(base, d.noun, plan.rgb(d.color), d.cx, d.cy, d.radius, look=plan.look)
            still = shapes.to_uint8(base)
        seg = plan.segments[seg_i]
        u = min(1.0, max(0.0, (t - seg.t0) / (seg.t1 - seg.t0)))
        cx, cy, r, alpha = seg.motion.at(u)
        img = still.copy()
        p = shapes.painted(base, seg.noun, plan.rgb(seg.color), cx, cy, r, alpha, plan.look)
        if p is not None:
            y0, x0, region = p
            img[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = shapes.to_uint8(region)
        if grain is not None:
            oy, ox = noise_rng.integers(0, 9, 2)
            g = grain[i % len(grain), oy:oy + plan.height, ox:ox + plan.width]
            img = np.clip(img + g, 0, 255).astype(np.uint8)
        yield i, img


def write_video(plan: VideoPlan, out_dir: Path, container: str = "mp4", speech: bool = False) -> Path:
    """Render, encode and write `<name>.<container>`, `<name>.srt` and `<name>.json` into out_dir; `speech`:
    with the narration spoken as an AAC audio track too (`speech_track`)."""
    if container not in SUBTITLE_CODEC:
        raise ValueError(f"container must be one of {sorted(SUBTITLE_CODEC)}, got {container!r}")
    path = out_dir / f"{plan.name}.{container}"
    tmp = out_dir / f".{plan.name}.partial.{container}"
    cues = [Cue(n.t0, n.t1, n.text) for n in plan.narration]
    spoken = speech_track(plan) if speech else None
    with av.open(str(tmp), "w", format="mp4" if container == "mp4" else "matroska") as out:
        vs = out.add_stream("libx264", rate=plan.fps, options={"preset": plan.x264_preset, "crf": str(plan.crf),
                                                                "threads": "1"})
        vs.width, vs.height, vs.pix_fmt = plan.width, plan.height, "yuv420p"
        vs.codec_context.time_base = Fraction(1, plan.fps)
        ss = out.add_stream(SUBTITLE_CODEC[container])
        ss.codec_context.subtitle_header = ASS_HEADER
        aus = None
        if spoken is not None:
            # the fast coder: a quarter of the default's time, and as good at this bit rate
            aus = out.add_stream(SPEECH_CODEC, rate=tts.SAMPLE_RATE, options={"aac_coder": "fast"})
            aus.codec_context.layout = "mono"
            aus.codec_context.bit_rate = SPEECH_BIT_RATE
        out.start_encoding()  # writes the header: the subtitle stream's time base is known from here on
        pending = list(enumerate(cues))

        def mux_subtitles_until(t: float) -> None:
            while pending and pending[0][1].start <= t:
                k, cue = pending.pop(0)
                tb = ss.time_base
                start, dur = int(round(cue.start / tb)), int(round((cue.end - cue.start) / tb))
                sub = SubtitleSet.create(f"{k},0,Default,,0,0,0,,{cue.text}".encode(), 0,
                                         int(round((cue.end - cue.start) * 1000)), pts=start)
                pkt = ss.codec_context.encode_subtitle(sub)
                pkt.stream = ss
                pkt.pts = pkt.dts = start
                pkt.duration = dur
                out.mux(pkt)

        audio_at = 0  # samples of the speech track encoded so far

        def mux_audio_until(t: float) -> None:  # in whole encoder frames, the last one as short as it is
            nonlocal audio_at
            if aus is None:
                return
            size, total = aus.codec_context.frame_size, spoken.samples.size
            until = min(total, int(round(min(t, total) * tts.SAMPLE_RATE)))
            while audio_at < total and (audio_at + size <= until or until == total):
                chunk = spoken.samples[audio_at:audio_at + size].astype(np.float32) / 32768.0
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = tts.SAMPLE_RATE, audio_at, Fraction(1, tts.SAMPLE_RATE)
                audio_at += chunk.size
                for pkt in aus.encode(frame):
                    out.mux(pkt)

        for i, rgb in render_frames(plan):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for pkt in vs.encode(frame):
                out.mux(pkt)
            mux_subtitles_until(i / plan.fps)
            mux_audio_until((i + 1) / plan.fps)  # the sound of this frame's time, interleaved with it
        for pkt in vs.encode():
            out.mux(pkt)
        mux_subtitles_until(float("inf"))
        if aus is not None:
            mux_audio_until(float("inf"))
            for pkt in aus.encode(None):
                out.mux(pkt)
    tmp.replace(path)
    path.with_suffix(".srt").write_text(format_srt(cues))
    gt = plan.ground_truth()
    gt_dict = gt.model_dump()
    gt_dict.update(file=path.name, container=container, subtitle_codec=SUBTITLE_CODEC[container])
    if spoken is not None:
        gt_dict["speech"] = spoken.summary()
    path.with_suffix(".json").write_text(json.dumps(gt_dict, indent=1))
    return path


def _make_one(args: tuple) -> str:
    seed, index, out_dir, container, min_s, max_s, vary, speech, scale = args
    plan = plan_video(seed, index, min_s, max_s, vary, scale)
    return str(write_video(plan, Path(out_dir), container, speech))


@dataclass(frozen=True)
class CorpusReport:
    videos: int
    seconds_of_video: float
    wall_seconds: float

    @property
    def videos_per_minute(self) -> float:
        return 60.0 * self.videos / max(self.wall_seconds, 1e-9)


def make_corpus(out_dir: str | Path, videos: int, seed: int = 0, workers: int = 1, container: str = "mp4",
                min_seconds: float = 10.0, max_seconds: float = 60.0, progress: bool = True,
                vary: bool = False, speech: bool = False, scale: float = 1.0) -> CorpusReport:
    """Generate `videos` shapes-world videos into out_dir (created), `workers` processes in parallel; `vary`:
    each drawn its own way (`vary_drawing`); `speech`: with the narration spoken as an audio track too
    (`speech_track`); `scale`: every frame size times this (0.5: 160x120 for 320x240), which makes the corpus
    about that squared cheaper to render and encode, for a model that reads its clips at 64x64 anyway."""
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if not 0.1 <= scale <= 1.0:
        raise ValueError(f"scale must be between 0.1 and 1, got {scale}")
    if not 1.5 <= min_seconds <= max_seconds:
        raise ValueError(f"need 1.5 <= min_seconds ({min_seconds}) <= max_seconds ({max_seconds})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, str(out), container, min_seconds, max_seconds, vary, speech, scale) for i in range(videos)]
    start = time.perf_counter()
    bar = tqdm(total=videos, desc=f"corpus seed={seed}", unit="video", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _make_one(job)
            bar.update()
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_one, jobs):
                bar.update()
    bar.close()
    wall = time.perf_counter() - start
    seconds = sum(json.loads(p.read_text())["duration"] for p in out.glob(f"shapes_{seed}_*.json"))
    report = CorpusReport(videos, seconds, wall)
    (out / "corpus.json").write_text(json.dumps({
        "seed": seed, "videos": videos, "container": container, "min_seconds": min_seconds,
        "max_seconds": max_seconds, "vary": vary, "speech": speech, "scale": scale, "seconds_of_video": round(seconds, 1), "wall_seconds": round(wall, 2),
        "videos_per_minute": round(report.videos_per_minute, 2)}, indent=1))
    return report
