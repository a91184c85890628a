"""A second, independent renderer of the shapes world, written from the text of docs/DEMO_WORLD.md alone.

It is a held-out robustness check (never training data): a model trained on the project's own corpus is
scored on videos whose geometry, colours, backgrounds, anti-aliasing, motion curves, narration phrasing
and encoder settings were all chosen here, independently, within what the spec says.

    python -m bench.spec_renderer --out /tmp/spec_world --videos 24 --seed 7
    vbs corpus read /tmp/spec_world
    vbs eval zero-shot --model models/demo --data /tmp/spec_world

Each video `<name>.mp4` (or `.mkv`) carries its narration as an embedded text subtitle stream (mov_text in
MP4, SubRip in MKV), with a sidecar `<name>.srt` and the ground truth `<name>.json` (schemas/world.py).

How it works: `plan_video(seed, index)` draws everything random about one video (deterministic per
(seed, index)); `frame_shapes(plan, k)` is the exact state (centre, size, opacity) of every shape in
frame k, a pure function of the plan; `draw_frame` composites those states; `render_video` encodes the
frames and writes the three files. Tests measure the verb rules on the states and on the drawn masks.

Choices where the spec is open (all deliberate, none copied from the project's renderer):
- geometry: signed distance fields, anti-aliased by a smoothstep over 1.4 px, composited in linear
  light (gamma 2.2); all shapes fit a 2r x 2r box: square of half-side 0.8r with rounded corners
  (0.08r), isosceles triangle with its centroid at the centre (apex r up, base 0.5r down, half-base
  0.9r), five-point star with inner radius 0.42r, plus sign with arms 0.95r long and 0.27r half-thick,
  ring with a hole of 0.58r; r is 0.09-0.14 of the frame's short side (grow starts at 0.06-0.085,
  shrink at 0.12-0.17, still shapes 0.075-0.12);
- colours: own sRGB values, jittered by up to 7 levels a channel per shape;
- backgrounds: solid, linear gradient (any angle), radial gradient, or two-octave value noise with grain,
  in dark desaturated colours (12% light ones), dithered;
- motion: grow/shrink geometric in scale to 1.75-2.4x / 0.32-0.5x, lift decelerating, drop accelerating
  with a small bounce, slide with a trapezoidal speed profile (0.3-0.46 of the width), shake 4-7 cycles
  of 2.2-4.5% of the width (at most ~3 Hz), blink 2-4 hard disappearances of 0.16 s or more, fade to an
  opacity of 0.02-0.07; each but shake and blink holds still 4-14% of the segment at either end;
- scene: every segment is a fresh layout (a cut): the actor and 0-3 still shapes that never overlap its
  swept area;
- encoder: libx264 yuv420p, CRF 20-30, preset veryfast/faster/fast, GOP 1-5 s, 0/2/3 B-frames, tune
  animation half the time, 2 threads; 15-30 fps (including 29.97); six small resolutions of five aspect
  ratios (one portrait); MP4 70%, MKV 30%.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VERBS = ("grow", "shrink", "lift", "drop", "slide", "shake", "blink", "fade")
NOUNS = ("circle", "square", "triangle", "star", "cross", "ring")
COLORS = ("red", "green", "blue", "yellow", "purple", "white")

PALETTE = {  # sRGB, chosen here
    "red": (212, 40, 54),
    "green": (40, 168, 78),
    "blue": (44, 92, 226),
    "yellow": (240, 206, 36),
    "purple": (142, 60, 184),
    "white": (242, 242, 236),
}
COLOR_JITTER = 7

RESOLUTIONS = ((320, 180), (288, 216), (256, 256), (216, 288), (336, 224), (304, 176))
FRAME_RATES = (Fraction(15), Fraction(18), Fraction(20), Fraction(24), Fraction(25), Fraction(30000, 1001))
PRESETS = ("veryfast", "faster", "fast")
GAMMA = 2.2
AA_HALF_WIDTH = 0.7  # px: coverage goes 1 -> 0 over [-0.7, +0.7] px of signed distance (smoothstep)
SEG_MIN, SEG_MAX = 1.52, 4.48  # inside the spec's 1.5-4.5 s, with room for rounding to milliseconds
MARGIN = 4.0  # px kept free between any shape's box and the frame edge

# ASS header the mov_text / SubRip encoders need (their styles are ours; the reader only takes the text)
ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\nWrapStyle: 0\n\n"
    b"[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, "
    b"Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, "
    b"Alignment, MarginL, MarginR, MarginV, Encoding\n"
    b"Style: Default,DejaVu Sans,17,&H00D8F4FF,&H000000FF,&H00202020,&H90000000,0,0,0,0,100,100,0,0,1,1.4,0,2,"
    b"14,14,12,1\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


# ----------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Shape:
    """One shape as drawn in one frame: centre (x, y) and size r in pixels (it fits the box centre +/- r),
    opacity alpha in [0, 1]; rgb is its sRGB fill."""

    noun: str
    color: str
    rgb: tuple[int, int, int]
    x: float
    y: float
    r: float
    alpha: float = 1.0


@dataclass(frozen=True)
class SegmentPlan:
    t0: float
    t1: float
    k0: int  # first frame of the segment
    k1: int  # one past its last frame
    verb: str
    actor: Shape  # the acting shape in the segment's first frame
    motion: dict  # the verb's parameters
    still: tuple[Shape, ...]  # the shapes that stay still

    @property
    def frames(self) -> int:
        return self.k1 - self.k0


@dataclass(frozen=True)
class Cue:
    t0: float
    t1: float
    text: str
    kind: str  # instruction | wrong | filler
    segment: int


@dataclass(frozen=True)
class VideoPlan:
    seed: int
    index: int
    name: str
    container: str  # mp4 | mkv
    width: int
    height: int
    fps: Fraction
    duration: float
    n_frames: int
    encoder: dict
    background: dict
    segments: tuple[SegmentPlan, ...]
    cues: tuple[Cue, ...] = field(default=())

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.container}"


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> sRGB floats in [0, 1]."""
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _background_spec(rng: np.random.Generator) -> dict:
    kind = str(rng.choice(["solid", "linear", "radial", "noise"], p=[0.22, 0.26, 0.18, 0.34]))
    light = rng.random() < 0.12
    hue = float(rng.random())

    def colour(dv: float = 0.0) -> list[float]:
        if light:
            c = _hsv((hue + rng.normal(0, 0.03)) % 1, float(rng.uniform(0.03, 0.15)), float(rng.uniform(0.6, 0.74)))
        else:
            c = _hsv((hue + rng.normal(0, 0.06)) % 1, float(rng.uniform(0.08, 0.4)),
                     float(np.clip(rng.uniform(0.1, 0.34) + dv, 0.06, 0.4)))
        return [round(float(x), 4) for x in c]

    spec = {"kind": kind, "light": bool(light), "c1": colour(), "c2": colour(-0.06 if not light else 0.0),
            "tex_seed": int(rng.integers(2**31))}
    if kind == "linear":
        spec["angle"] = round(float(rng.uniform(0, 2 * math.pi)), 4)
    elif kind == "radial":
        spec["centre"] = [round(float(rng.uniform(0.15, 0.85)), 4), round(float(rng.uniform(0.15, 0.85)), 4)]
    elif kind == "noise":
        spec["cell"] = int(rng.integers(18, 40))
        spec["grain"] = round(float(rng.uniform(0.01, 0.03)), 4)
    return spec


def _durations(rng: np.random.Generator, total: float) -> list[float]:
    """Back-to-back segment lengths in [SEG_MIN, SEG_MAX] that add up to `total` exactly."""
    lo_n, hi_n = math.ceil(total / SEG_MAX), math.floor(total / SEG_MIN)
    n = int(np.clip(round(total / rng.uniform(2.3, 3.4)), lo_n, hi_n))
    out, left = [], total
    for i in range(n - 1):
        rest = n - i - 1
        lo, hi = max(SEG_MIN, left - SEG_MAX * rest), min(SEG_MAX, left - SEG_MIN * rest)
        d = float(rng.uniform(lo, hi))
        out.append(d)
        left -= d
    out.append(left)
    rng.shuffle(out)
    return out


def _jitter(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    base = np.array(PALETTE[color]) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def _motion(rng: np.random.Generator, verb: str, frames: int, fps: float, w: int, h: int) -> dict:
    hold0, hold1 = float(rng.uniform(0.04, 0.14)), float(rng.uniform(0.04, 0.14))
    if verb == "grow":
        return {"factor": float(rng.uniform(1.75, 2.4)), "hold": [hold0, hold1]}
    if verb == "shrink":
        return {"factor": float(rng.uniform(0.32, 0.5)), "hold": [hold0, hold1]}
    if verb in ("lift", "drop"):
        m = {"dist": float(rng.uniform(0.3, 0.42)) * h, "hold": [hold0, hold1]}
        if verb == "drop":
            m["bounce"] = float(rng.uniform(0.03, 0.08))
        return m
    if verb == "slide":
        return {"dist": float(rng.uniform(0.3, 0.46)) * w * (1 if rng.random() < 0.5 else -1),
                "accel": float(rng.uniform(0.15, 0.35)), "hold": [hold0, hold1]}
    if verb == "shake":
        most = max(4, min(7, frames // 5, math.floor(3.0 * frames / fps)))  # >= 5 frames a cycle, <= 3 Hz-ish
        return {"amp": float(rng.uniform(0.022, 0.045)) * w, "cycles": int(rng.integers(4, most + 1)),
                "sign": 1 if rng.random() < 0.5 else -1, "ramp": float(rng.uniform(0.06, 0.14))}
    if verb == "blink":
        min_off = max(2, math.ceil(0.16 * fps))  # each disappearance lasts 0.16 s or more
        most = max(2, min(4, (frames - 2) // (2 + min_off)))  # every phase lasts two frames or more
        m = int(rng.integers(2, most + 1))
        base = [2 if i % 2 == 0 else min_off for i in range(2 * m + 1)]
        weights = np.array([rng.uniform(1.0, 2.0) if i % 2 == 0 else rng.uniform(0.6, 1.2) for i in range(2 * m + 1)])
        extra = np.floor((frames - sum(base)) * weights / weights.sum()).astype(int)
        lengths = np.array(base) + extra
        lengths[-1] += frames - lengths.sum()
        edges = np.concatenate([[0], np.cumsum(lengths)])
        return {"off": [[int(edges[i]), int(edges[i + 1])] for i in range(1, 2 * m + 1, 2)]}
    if verb == "fade":
        return {"end_alpha": float(rng.uniform(0.02, 0.07)), "hold": [hold0, hold1],
                "curve": float(rng.uniform(0.75, 1.3))}
    raise ValueError(verb)


def _size_range(verb: str, rng: np.random.Generator, side: int) -> float:
    """The acting shape's starting size r, as a share of the frame's short side."""
    if verb == "grow":
        return float(rng.uniform(0.06, 0.085)) * side
    if verb == "shrink":
        return float(rng.uniform(0.12, 0.17)) * side
    return float(rng.uniform(0.09, 0.14)) * side


def _swept_box(actor: Shape, verb: str, motion: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) the acting shape covers over the whole segment."""
    x, y, r = actor.x, actor.y, actor.r
    xs, ys = [x, x], [y, y]
    if verb == "grow":
        r *= motion["factor"]
    elif verb == "lift":
        ys[0] = y - motion["dist"]
    elif verb == "drop":
        ys[1] = y + motion["dist"]
    elif verb == "slide":
        xs = sorted([x, x + motion["dist"]])
    elif verb == "shake":
        xs = [x - motion["amp"], x + motion["amp"]]
    return xs[0] - r, ys[0] - r, xs[1] + r, ys[1] + r


def _place_actor(rng, verb, motion, r, w, h) -> tuple[float, float]:
    """A start centre that keeps the whole motion inside the frame."""
    rr = r * (motion["factor"] if verb == "grow" else 1.0)
    lo_x, hi_x, lo_y, hi_y = MARGIN + rr, w - MARGIN - rr, MARGIN + rr, h - MARGIN - rr
    if verb == "lift":
        lo_y += motion["dist"]
    elif verb == "drop":
        hi_y -= motion["dist"]
    elif verb == "slide":
        if motion["dist"] > 0:
            hi_x -= motion["dist"]
        else:
            lo_x -= motion["dist"]
    elif verb == "shake":
        lo_x, hi_x = lo_x + motion["amp"], hi_x - motion["amp"]
    return float(rng.uniform(lo_x, max(lo_x, hi_x))), float(rng.uniform(lo_y, max(lo_y, hi_y)))


def _overlaps(a, b, gap: float = 3.0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _segment(rng, verb, noun, color, t0, t1, fps, w, h) -> SegmentPlan:
    k0, k1 = math.ceil(t0 * fps - 1e-9), math.ceil(t1 * fps - 1e-9)
    side = min(w, h)
    motion = _motion(rng, verb, k1 - k0, float(fps), w, h)
    r = _size_range(verb, rng, side)
    x, y = _place_actor(rng, verb, motion, r, w, h)
    actor = Shape(noun, color, _jitter(rng, color), x, y, r)
    taken = [_swept_box(actor, verb, motion)]
    used = {(noun, color)}
    still = []
    for _ in range(int(rng.choice(4, p=[0.14, 0.34, 0.32, 0.2]))):
        for _try in range(60):
            n2, c2 = str(rng.choice(NOUNS)), str(rng.choice(COLORS))
            if (n2, c2) in used:
                continue
            r2 = float(rng.uniform(0.075, 0.12)) * side
            x2, y2 = float(rng.uniform(MARGIN + r2, w - MARGIN - r2)), float(rng.uniform(MARGIN + r2, h - MARGIN - r2))
            box = (x2 - r2, y2 - r2, x2 + r2, y2 + r2)
            if any(_overlaps(box, b) for b in taken):
                continue
            taken.append(box)
            used.add((n2, c2))
            still.append(Shape(n2, c2, _jitter(rng, c2), x2, y2, r2))
            break
    return SegmentPlan(round(t0, 3), round(t1, 3), k0, k1, verb, actor, motion, tuple(still))


# narration --------------------------------------------------------------------------------------------

PHRASES = (  # {v} verb, {o} "color noun" or "noun"
    "alright so here we {v} the {o}",
    "in this step you {v} the {o}",
    "go ahead and {v} that {o}",
    "what i do now is {v} the {o}",
    "okay let us {v} the {o} together",
    "first thing is to {v} the {o}",
    "you want to {v} this {o} right here",
    "time to {v} our {o}",
    "just {v} the {o} like so",
    "i am going to {v} the {o} for you",
    "and then we {v} the {o}",
    "so the idea is you {v} the {o}",
    "try to {v} the {o} nice and easy",
    "see how i {v} the {o}",
    "the next move is to {v} the {o}",
    "over here we will {v} the {o}",
)
FILLERS = (
    "okay", "right", "so yeah", "hmm", "hold on a second", "this one is pretty easy", "bear with me here",
    "that looks about right", "and there we go", "make sure you can see this", "thanks for sticking around",
    "let me know in the comments", "nothing tricky here", "almost done with this part", "good", "you got it",
    "all set", "see you in the next one", "if you missed it just rewind", "pretty neat huh",
)
DISFLUENCIES = ("um", "uh", "er")
P_INSTRUCTION, P_WRONG, P_FILLER = 0.70, 0.10, 0.13  # the rest (0.07) is silence


def _say(rng, verb: str, noun: str, color: str | None) -> str:
    obj = f"{color} {noun}" if color else noun
    words = str(rng.choice(PHRASES)).format(v=verb, o=obj).split()
    if rng.random() < 0.15:  # speech-recognition texture: a hesitation, or a stutter
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(DISFLUENCIES)))
    elif rng.random() < 0.08:
        i = int(rng.integers(0, len(words)))
        words.insert(i, words[i])
    return " ".join(words)


def _narration(rng: np.random.Generator, segments: list[SegmentPlan], duration: float) -> list[Cue]:
    raw = []
    for i, seg in enumerate(segments):
        p = rng.random()
        color = seg.actor.color if rng.random() < 0.75 else None
        if p < P_INSTRUCTION:
            text, kind = _say(rng, seg.verb, seg.actor.noun, color), "instruction"
        elif p < P_INSTRUCTION + P_WRONG:
            q = rng.random()
            verb = str(rng.choice([v for v in VERBS if v != seg.verb])) if q < 0.7 else seg.verb
            noun = str(rng.choice([n for n in NOUNS if n != seg.actor.noun])) if q >= 0.5 else seg.actor.noun
            text, kind = _say(rng, verb, noun, color), "wrong"
        elif p < P_INSTRUCTION + P_WRONG + P_FILLER:
            text, kind = str(rng.choice(FILLERS)), "filler"
        else:
            continue  # silence
        n_words = len(text.split())
        length = float(np.clip(0.5 + 0.32 * n_words + rng.uniform(-0.1, 0.35), 0.6, 3.4))
        if kind == "filler":
            start = seg.t0 + float(rng.uniform(-0.3, max(-0.3, seg.t1 - seg.t0 - 0.8)))
        else:
            start = seg.t0 + float(rng.uniform(-1.0, 1.0))
        start = max(0.0, start)
        end = min(duration, start + length)
        if end - start < 0.4:
            start = max(0.0, end - 0.4)
        raw.append([start, end, text, kind, i])
    raw.sort(key=lambda c: c[0])
    kept: list[list] = []
    for c in raw:  # cues do not overlap: trim the earlier one, else drop the later one
        if kept and c[0] < kept[-1][1] + 0.04:
            prev = kept[-1]
            if c[0] - 0.04 - prev[0] >= 0.4:
                prev[1] = c[0] - 0.04
            else:
                continue
        kept.append(c)
    return [Cue(round(a, 3), round(b, 3), t, k, s) for a, b, t, k, s in kept]


def plan_video(seed: int, index: int, min_seconds: float = 15.0, max_seconds: float = 30.0,
               container: str = "mix") -> VideoPlan:
    """Every random choice about video `index` of corpus `seed`: the same arguments give the same plan."""
    if not 10.0 <= min_seconds <= max_seconds <= 60.0:
        raise ValueError(f"video length must lie within the spec's 10-60 s: got {min_seconds}-{max_seconds}")
    ss = np.random.SeedSequence([int(seed), int(index), 0x5BEC])
    r_fmt, r_scene, r_talk = (np.random.default_rng(s) for s in ss.spawn(3))
    width, height = RESOLUTIONS[int(r_fmt.integers(len(RESOLUTIONS)))]
    fps = FRAME_RATES[int(r_fmt.integers(len(FRAME_RATES)))]
    if container == "mix":
        container = "mp4" if r_fmt.random() < 0.7 else "mkv"
    elif container not in ("mp4", "mkv"):
        raise ValueError(f"container must be mp4, mkv or mix: {container}")
    gop_seconds = float(r_fmt.choice([1.0, 2.0, 3.0, 5.0]))
    encoder = {"codec": "libx264", "crf": int(r_fmt.integers(20, 31)), "preset": str(r_fmt.choice(PRESETS)),
               "gop": max(1, round(float(fps) * gop_seconds)), "bframes": int(r_fmt.choice([0, 2, 3])),
               "tune": "animation" if r_fmt.random() < 0.5 else None}
    background = _background_spec(r_fmt)

    total = round(float(r_scene.uniform(min_seconds, max_seconds)), 3)
    edges = np.concatenate([[0.0], np.cumsum(_durations(r_scene, total))])
    edges[-1] = total
    segments: list[SegmentPlan] = []
    last = None
    for t0, t1 in itertools.pairwise(edges):
        while True:
            triple = (str(r_scene.choice(VERBS)), str(r_scene.choice(NOUNS)), str(r_scene.choice(COLORS)))
            if triple != last:
                break
        last = triple
        segments.append(_segment(r_scene, *triple, float(t0), float(t1), fps, width, height))
    n_frames = segments[-1].k1
    cues = _narration(r_talk, segments, total)
    return VideoPlan(int(seed), int(index), f"spec_s{seed}_{index:03d}", container, width, height, fps, total,
                     n_frames, encoder, background, tuple(segments), tuple(cues))


# motion -----------------------------------------------------------------------------------------------


def _ramp(u: float, a: float, b: float) -> float:
    return min(1.0, max(0.0, (u - a) / (b - a)))


def _smoother(w: float) -> float:
    return w * w * w * (w * (6 * w - 15) + 10)


def actor_at(seg: SegmentPlan, j: int) -> Shape:
    """The acting shape in the j-th frame of its segment (j = 0 .. frames-1; the last frame ends the move)."""
    a, m = seg.actor, seg.motion
    u = j / max(1, seg.frames - 1)
    hold = m.get("hold", [0.0, 0.0])
    w = _ramp(u, hold[0], 1 - hold[1])
    v = seg.verb
    if v in ("grow", "shrink"):
        return replace(a, r=a.r * m["factor"] ** _smoother(w))  # geometric in scale
    if v == "lift":
        return replace(a, y=a.y - m["dist"] * (1 - (1 - w) ** 2))  # decelerates
    if v == "drop":
        fall = 0.82
        if w < fall:
            dy = m["dist"] * (w / fall) ** 2  # accelerates, then a small bounce and settles
        else:
            dy = m["dist"] * (1 - m["bounce"] * math.sin(math.pi * (w - fall) / (1 - fall)))
        return replace(a, y=a.y + dy)
    if v == "slide":
        acc = m["accel"]
        vmax = 1 / (1 - acc)
        if w < acc:
            s = 0.5 * vmax * w * w / acc
        elif w <= 1 - acc:
            s = vmax * (w - acc / 2)
        else:
            s = 1 - 0.5 * vmax * (1 - w) ** 2 / acc
        return replace(a, x=a.x + m["dist"] * s)
    if v == "shake":
        env = min(1.0, min(u, 1 - u) / m["ramp"])
        return replace(a, x=a.x + m["sign"] * m["amp"] * env * math.sin(2 * math.pi * m["cycles"] * u))
    if v == "blink":
        off = any(lo <= j < hi for lo, hi in m["off"])
        return replace(a, alpha=0.0 if off else 1.0)
    if v == "fade":
        return replace(a, alpha=1 - (1 - m["end_alpha"]) * _smoother(w) ** m["curve"])
    raise ValueError(v)


def segment_of_frame(plan: VideoPlan, k: int) -> int:
    for i, seg in enumerate(plan.segments):
        if seg.k0 <= k < seg.k1:
            return i
    raise IndexError(f"frame {k} is past the video's {plan.n_frames} frames")


def frame_shapes(plan: VideoPlan, k: int) -> list[Shape]:
    """Every shape in frame k, in drawing order: the still ones, then the acting one on top."""
    seg = plan.segments[segment_of_frame(plan, k)]
    return [*seg.still, actor_at(seg, k - seg.k0)]


# drawing ----------------------------------------------------------------------------------------------


def _box(px, py, hx, hy, corner=0.0):
    qx, qy = np.abs(px) - (hx - corner), np.abs(py) - (hy - corner)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - corner


def _polygon(px, py, verts: np.ndarray):
    """Exact signed distance to a closed polygon (negative inside)."""
    d2 = np.full(px.shape, np.inf)
    sign = np.ones(px.shape)
    n = len(verts)
    for i in range(n):
        ax, ay = verts[i]
        bx, by = verts[i - 1]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        c1, c2, c3 = py >= ay, py < by, ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = np.where(flip, -sign, sign)
    return sign * np.sqrt(d2)


_TRIANGLE = np.array([[0.0, -1.0], [0.9, 0.5], [-0.9, 0.5]])  # centroid at the centre: scaling never moves it
_STAR = np.array([[(1.0 if i % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + i * math.pi / 5),
                   (1.0 if i % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + i * math.pi / 5)] for i in range(10)])


def signed_distance(noun: str, px, py, r: float):
    """Signed distance (pixels, negative inside) of the shape of size r centred at the origin."""
    if noun == "circle":
        return np.hypot(px, py) - r
    if noun == "square":
        return _box(px, py, 0.8 * r, 0.8 * r, 0.08 * r)
    if noun == "triangle":
        return _polygon(px, py, _TRIANGLE * r)
    if noun == "star":
        return _polygon(px, py, _STAR * r)
    if noun == "cross":
        return np.minimum(_box(px, py, 0.95 * r, 0.27 * r), _box(px, py, 0.27 * r, 0.95 * r))
    if noun == "ring":
        return np.abs(np.hypot(px, py) - 0.79 * r) - 0.21 * r
    raise ValueError(noun)


def coverage(shape: Shape, width: int, height: int) -> tuple[int, int, int, int, np.ndarray]:
    """(y0, y1, x0, x1, a): the shape's drawn opacity (anti-aliased coverage times alpha) over the frame
    region [y0:y1, x0:x1]; zero outside it."""
    pad = shape.r + 2
    x0, x1 = max(0, math.floor(shape.x - pad)), min(width, math.ceil(shape.x + pad))
    y0, y1 = max(0, math.floor(shape.y - pad)), min(height, math.ceil(shape.y + pad))
    if x1 <= x0 or y1 <= y0 or shape.alpha <= 0:
        return y0, max(y0, y1), x0, max(x0, x1), np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.float32)
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    d = signed_distance(shape.noun, px - shape.x, py - shape.y, shape.r)
    t = np.clip((AA_HALF_WIDTH - d) / (2 * AA_HALF_WIDTH), 0, 1)
    return y0, y1, x0, x1, (t * t * (3 - 2 * t) * shape.alpha).astype(np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    gy, gx = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.random((gy, gx))
    ys, xs = (np.arange(h) + 0.5) / cell, (np.arange(w) + 0.5) / cell
    iy, ix = ys.astype(int), xs.astype(int)
    fy, fx = ys - iy, xs - ix
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
    g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def background(plan: VideoPlan) -> np.ndarray:
    """The video's background in linear light, (H, W, 3) float32 (constant over the video)."""
    b, h, w = plan.background, plan.height, plan.width
    rng = np.random.default_rng(b["tex_seed"])
    c1, c2 = np.array(b["c1"]), np.array(b["c2"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    if b["kind"] == "solid":
        t = np.zeros((h, w))
    elif b["kind"] == "linear":
        ca, sa = math.cos(b["angle"]), math.sin(b["angle"])
        p = (xx - w / 2) * ca + (yy - h / 2) * sa
        t = (p - p.min()) / max(1e-9, p.max() - p.min())
    elif b["kind"] == "radial":
        cx, cy = b["centre"][0] * w, b["centre"][1] * h
        dist = np.hypot(xx - cx, yy - cy)
        t = dist / dist.max()
    else:
        t = 0.65 * _value_noise(rng, h, w, b["cell"]) + 0.35 * _value_noise(rng, h, w, b["cell"] / 3.1)
        t = np.clip((t - 0.5) * 1.6 + 0.5, 0, 1)
    srgb = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    if b["kind"] == "noise":
        srgb = srgb + rng.normal(0, b["grain"], (h, w, 1))
    srgb = srgb + rng.uniform(-0.5, 0.5, (h, w, 1)) / 255  # dither against banding
    return (np.clip(srgb, 0, 1) ** GAMMA).astype(np.float32)


def draw_frame(plan: VideoPlan, k: int, bg: np.ndarray | None = None) -> np.ndarray:
    """Frame k as (H, W, 3) uint8 sRGB."""
    img = (background(plan) if bg is None else bg).copy()
    for s in frame_shapes(plan, k):
        y0, y1, x0, x1, a = coverage(s, plan.width, plan.height)
        if a.size == 0 or not a.any():
            continue
        col = (np.array(s.rgb, np.float32) / 255) ** GAMMA
        region = img[y0:y1, x0:x1]
        region += (col[None, None] - region) * a[..., None]
    return np.round(np.clip(img, 0, 1) ** (1 / GAMMA) * 255).astype(np.uint8)


# files ------------------------------------------------------------------------------------------------


def _stamp(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def srt_text(cues) -> str:
    return "".join(f"{i}\n{_stamp(c.t0)} --> {_stamp(c.t1)}\n{c.text}\n\n" for i, c in enumerate(cues, 1))


def ground_truth(plan: VideoPlan) -> dict:
    """The sidecar `<name>.json` (schemas/world.py GroundTruth; extra fields are this renderer's)."""
    segs = []
    for seg in plan.segments:
        end = actor_at(seg, seg.frames - 1)
        segs.append({"t0": seg.t0, "t1": seg.t1, "verb": seg.verb, "noun": seg.actor.noun, "color": seg.actor.color,
                     "still": [{"noun": s.noun, "color": s.color} for s in seg.still],
                     "actor": {"start": _rounded(seg.actor), "end": _rounded(end)}})
    return {"segments": segs,
            "narration": [{"t0": c.t0, "t1": c.t1, "text": c.text, "kind": c.kind, "segment": c.segment}
                          for c in plan.cues],
            "width": plan.width, "height": plan.height, "fps": round(float(plan.fps), 6),
            "duration": plan.duration,
            "renderer": {"name": "bench.spec_renderer", "seed": plan.seed, "index": plan.index,
                         "container": plan.container, "encoder": plan.encoder,
                         "background": plan.background["kind"]}}


def _rounded(s: Shape) -> dict:
    return {"x": round(s.x, 2), "y": round(s.y, 2), "r": round(s.r, 2), "alpha": round(s.alpha, 4)}


def render_video(plan: VideoPlan, out: str | Path) -> Path:
    """Encode the plan's video into directory `out` with its .srt and .json; returns the video's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / plan.filename
    enc = plan.encoder
    params = f"keyint={enc['gop']}:min-keyint={max(1, enc['gop'] // 4)}:bframes={enc['bframes']}:aq-mode=2"
    options = {"crf": str(enc["crf"]), "preset": enc["preset"], "x264-params": params, "threads": "2"}
    if enc["tune"]:
        options["tune"] = enc["tune"]
    container = av.open(str(path), "w", options={"fflags": "+bitexact"})
    try:
        vs = container.add_stream("libx264", rate=plan.fps, options=options)
        vs.width, vs.height, vs.pix_fmt = plan.width, plan.height, "yuv420p"
        ts = container.add_stream("mov_text" if plan.container == "mp4" else "subrip")
        ts.codec_context.subtitle_header = ASS_HEADER
        container.metadata["title"] = plan.name
        container.start_encoding()
        tb = ts.time_base
        pending = list(plan.cues)
        bg = background(plan)
        for k in range(plan.n_frames):
            t = k / plan.fps
            while pending and pending[0].t0 <= t:  # subtitles interleaved with the picture in time order
                _mux_cue(container, ts, tb, pending.pop(0))
            frame = av.VideoFrame.from_ndarray(draw_frame(plan, k, bg), format="rgb24")
            frame.pts, frame.time_base = k, 1 / plan.fps
            for pkt in vs.encode(frame):
                container.mux(pkt)
        for cue in pending:
            _mux_cue(container, ts, tb, cue)
        for pkt in vs.encode():
            container.mux(pkt)
    finally:
        container.close()
    path.with_suffix(".srt").write_text(srt_text(plan.cues))
    path.with_suffix(".json").write_text(json.dumps(ground_truth(plan), indent=1))
    return path


def _mux_cue(container, ts, tb: Fraction, cue: Cue) -> None:
    start, length = round(cue.t0 / tb), round((cue.t1 - cue.t0) / tb)
    sub = av.subtitles.subtitle.SubtitleSet.create(f"0,0,Default,,0,0,0,,{cue.text}".encode(), 0, length, pts=start)
    pkt = ts.codec_context.encode_subtitle(sub)
    pkt.stream = ts
    pkt.pts = pkt.dts = start
    pkt.duration = length
    container.mux(pkt)


def render_corpus(out: str | Path, videos: int = 24, seed: int = 0, min_seconds: float = 15.0,
                  max_seconds: float = 30.0, container: str = "mix", progress: bool = True) -> list[Path]:
    paths, started, seconds = [], time.monotonic(), 0.0
    for i in range(videos):
        plan = plan_video(seed, i, min_seconds, max_seconds, container)
        paths.append(render_video(plan, out))
        seconds += plan.duration
        if progress:
            print(f"\rspec_renderer: {i + 1}/{videos} videos, {seconds:.0f} s of video, "
                  f"{time.monotonic() - started:.1f} s elapsed  [{plan.filename} {plan.width}x{plan.height} "
                  f"{float(plan.fps):.2f} fps {len(plan.segments)} segments]   ", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.spec_renderer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory to write the videos, .srt and .json into")
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-seconds", type=float, default=15.0)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--container", choices=("mix", "mp4", "mkv"), default="mix")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    started = time.monotonic()
    paths = render_corpus(args.out, args.videos, args.seed, args.min_seconds, args.max_seconds, args.container,
                          progress=not args.quiet)
    print(f"wrote {len(paths)} videos to {args.out} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
