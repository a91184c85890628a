"""Rasterising the shapes world: the six shapes as anti-aliased coverage masks, backgrounds, and one
segment's motion (where the acting shape is, how big, how opaque, at progress u in [0, 1]).

Everything is vectorised numpy over a shape's bounding box; no per-pixel Python loops."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SUPERSAMPLE = 3  # sub-pixel samples per axis for anti-aliased edges (a Look may choose 1, no anti-aliasing)


@dataclass(frozen=True)
class Look:
    """What DEMO_WORLD.md leaves open about how the shapes are drawn, drawn once per video (`sample_look`), so that
    the encoder learns the shapes the spec describes, not one drawing of them. The defaults are the plain drawing.

    Proportions are in units of the shape's radius r (every shape fits a 2r x 2r box)."""

    ring_hole: float = 0.55  # the ring's inner radius: 1 minus its line width
    star_inner: float = 0.45  # the star's inner vertices (five points, as the spec says)
    cross_arm: float = 0.32  # half the thickness of the cross's arms
    cross_reach: float = 1.0  # how far its arms reach
    square_half: float = 0.82  # half the square's side
    square_round: float = 0.0  # the square's corner radius
    triangle_apex: float = 1.15  # how far above the centre the triangle's apex lies
    triangle_base: float = 0.35  # how far below the centre its base lies
    triangle_half: float = 0.866  # half its base
    tilt: float = 0.0  # degrees every shape but the round ones is turned by
    supersample: int = SUPERSAMPLE  # sub-pixel samples per axis (1: aliased edges)


PLAIN = Look()


def sample_look(rng: np.random.Generator) -> Look:
    """A random drawing of the spec's shapes: each proportion anywhere a reader of the spec could choose."""
    return Look(ring_hole=float(rng.uniform(0.42, 0.72)), star_inner=float(rng.uniform(0.36, 0.55)),
                cross_arm=float(rng.uniform(0.2, 0.38)), cross_reach=float(rng.uniform(0.85, 1.0)),
                square_half=float(rng.uniform(0.7, 0.88)), square_round=float(rng.choice([0.0, rng.uniform(0.0, 0.2)])),
                triangle_apex=float(rng.uniform(0.95, 1.1)), triangle_base=float(rng.uniform(0.45, 0.75)), triangle_half=float(rng.uniform(0.75, 0.98)),
                tilt=float(rng.uniform(-12, 12)) if rng.random() < 0.5 else 0.0,
                supersample=int(rng.choice([1, 2, 3, 4], p=[0.15, 0.25, 0.35, 0.25])))


def _polygon_inside(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for arrays of points (u, v) against verts (M, 2)."""
    inside = np.zeros(u.shape, dtype=bool)
    m = len(verts)
    for i in range(m):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % m]
        crosses = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def _star_vertices(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def inside_unit_shape(noun: str, u: np.ndarray, v: np.ndarray, look: Look = PLAIN) -> np.ndarray:
    """Membership of points (u, v), in units of the shape's radius, centred, v pointing down."""
    if noun == "circle":
        return u * u + v * v <= 1.0
    if noun == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= look.ring_hole**2)
    if look.tilt:
        a = math.radians(look.tilt)
        u, v = u * math.cos(a) + v * math.sin(a), -u * math.sin(a) + v * math.cos(a)
    if noun == "square":
        h, c = look.square_half, min(look.square_round, look.square_half)
        qu, qv = np.maximum(np.abs(u) - (h - c), 0.0), np.maximum(np.abs(v) - (h - c), 0.0)
        return (np.abs(u) <= h) & (np.abs(v) <= h) & (qu * qu + qv * qv <= c * c + 1e-12)
    if noun == "triangle":
        a, b, hb = look.triangle_apex, look.triangle_base, look.triangle_half
        return _polygon_inside(u, v, np.array([[0.0, -a], [-hb, b], [hb, b]]))
    if noun == "star":
        return _polygon_inside(u, v, _star_vertices(5, look.star_inner))
    if noun == "cross":
        au, av_, t, r = np.abs(u), np.abs(v), look.cross_arm, look.cross_reach
        return ((au <= r) & (av_ <= t)) | ((au <= t) & (av_ <= r))
    raise ValueError(f"unknown shape {noun!r}")


@lru_cache(maxsize=16)  # a shape that blinks or fades stays put: its mask is drawn once per segment
def coverage(noun: str, cx: float, cy: float, radius: float, height: int, width: int, look: Look = PLAIN):
    """Anti-aliased coverage of a shape: (y0, y1, x0, x1, mask) with mask (y1-y0, x1-x0) in [0, 1], read-only.

    Returns None when the shape lies entirely outside the frame."""
    x0, x1 = max(0, int(math.floor(cx - radius)) - 1), min(width, int(math.ceil(cx + radius)) + 2)
    y0, y1 = max(0, int(math.floor(cy - radius)) - 1), min(height, int(math.ceil(cy + radius)) + 2)
    if x1 <= x0 or y1 <= y0 or radius <= 0:
        return None
    s = look.supersample
    offs = (np.arange(s) + 0.5) / s
    xs = (np.arange(x0, x1)[:, None] + offs[None, :]).reshape(-1)  # (Wb*s,)
    ys = (np.arange(y0, y1)[:, None] + offs[None, :]).reshape(-1)  # (Hb*s,)
    u = (xs[None, :] - cx) / radius
    v = (ys[:, None] - cy) / radius
    hit = inside_unit_shape(noun, np.broadcast_to(u, (len(ys), len(xs))), np.broadcast_to(v, (len(ys), len(xs))), look)
    mask = hit.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3)).astype(np.float32)
    mask.flags.writeable = False  # shared by every caller of the cache
    return y0, y1, x0, x1, mask


def painted(img: np.ndarray, noun: str, rgb: tuple[int, int, int], cx: float, cy: float, radius: float,
            alpha: float = 1.0, look: Look = PLAIN) -> tuple[int, int, np.ndarray] | None:
    """The part of img (H, W, 3) float32 that painting a shape over it changes, alpha-blended, as a new array:
    (y0, x0, region), or None when nothing changes. img itself is left as it is."""
    if alpha <= 0:
        return None
    cov = coverage(noun, cx, cy, radius, img.shape[0], img.shape[1], look)
    if cov is None:
        return None
    y0, y1, x0, x1, mask = cov
    a = (mask * alpha)[:, :, None]
    region = img[y0:y1, x0:x1] * (1.0 - a)
    region += a * np.asarray(rgb, dtype=np.float32)
    return y0, x0, region


def paint(img: np.ndarray, noun: str, rgb: tuple[int, int, int], cx: float, cy: float, radius: float,
          alpha: float = 1.0, look: Look = PLAIN) -> None:
    """Alpha-blend a shape into img (H, W, 3) float32, in place."""
    p = painted(img, noun, rgb, cx, cy, radius, alpha, look)
    if p is not None:
        y0, x0, region = p
        img[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float32 pixels -> uint8, rounded and clipped."""
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A dark-to-mid background (H, W, 3) float32 so that every shape colour stands out."""
    if kind == "solid":
        return np.broadcast_to(rng.uniform(0, 90, 3).astype(np.float32), (height, width, 3)).copy()
    if kind == "gradient":
        a, b = rng.uniform(0, 100, 3), rng.uniform(0, 100, 3)
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (xx / width - 0.5) * math.cos(theta) + (yy / height - 0.5) * math.sin(theta) + 0.5
        t = np.clip(t, 0, 1)[:, :, None]
        return (a * (1 - t) + b * t).astype(np.float32)
    if kind == "noise":
        cells = rng.uniform(10, 100, (6, 8, 3)).astype(np.float32)
        yi = np.linspace(0, cells.shape[0] - 1, height)
        xi = np.linspace(0, cells.shape[1] - 1, width)
        y0, x0 = np.floor(yi).astype(int), np.floor(xi).astype(int)
        y1, x1 = np.minimum(y0 + 1, cells.shape[0] - 1), np.minimum(x0 + 1, cells.shape[1] - 1)
        fy, fx = (yi - y0)[:, None, None], (xi - x0)[None, :, None]
        low = (cells[y0][:, x0] * (1 - fy) * (1 - fx) + cells[y1][:, x0] * fy * (1 - fx)
               + cells[y0][:, x1] * (1 - fy) * fx + cells[y1][:, x1] * fy * fx)
        grain = rng.normal(0, 8, (height, width, 1)).astype(np.float32)
        return np.clip(low + grain, 0, 120).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}")


BACKGROUNDS = ("solid", "gradient", "noise")


@dataclass(frozen=True)
class Motion:
    """How the acting shape moves over one segment; `at(u)` gives (cx, cy, radius, alpha) at progress u."""

    verb: str
    cx: float
    cy: float
    radius: float
    dx: float = 0.0  # lift/drop/slide: total displacement; shake: amplitude
    dy: float = 0.0
    scale: float = 1.0  # grow/shrink: final size / starting size
    cycles: int = 0  # shake: oscillations; blink: disappearances
    end_alpha: float = 1.0  # fade

    def at(self, u: float) -> tuple[float, float, float, float]:
        cx, cy, r, alpha = self.cx, self.cy, self.radius, 1.0
        if self.verb in ("grow", "shrink"):
            r = self.radius * (1.0 + (self.scale - 1.0) * u)
        elif self.verb in ("lift", "drop", "slide"):
            cx, cy = self.cx + self.dx * u, self.cy + self.dy * u
        elif self.verb == "shake":
            cx = self.cx + self.dx * math.sin(2 * math.pi * self.cycles * u)
        elif self.verb == "blink":
            phase = min(int(u * (2 * self.cycles + 1)), 2 * self.cycles)
            alpha = 0.0 if phase % 2 == 1 else 1.0
        elif self.verb == "fade":
            alpha = 1.0 + (self.end_alpha - 1.0) * u
        return cx, cy, r, alpha


def sample_motion(rng: np.random.Generator, verb: str, height: int, width: int, seconds: float) -> Motion:
    """Draw a motion that meets the verb's rule in DEMO_WORLD.md and keeps the shape inside the frame."""
    m = min(height, width)
    r = rng.uniform(0.11, 0.16) * m
    margin = 2.0

    def centre(rad: float, span_x: float = 0.0, span_y: float = 0.0) -> tuple[float, float]:
        lo_x, hi_x = rad + margin + max(0.0, -span_x), width - rad - margin - max(0.0, span_x)
        lo_y, hi_y = rad + margin + max(0.0, -span_y), height - rad - margin - max(0.0, span_y)
        return rng.uniform(lo_x, max(lo_x, hi_x)), rng.uniform(lo_y, max(lo_y, hi_y))

    if verb == "grow":
        r0 = rng.uniform(0.08, 0.10) * m
        scale = rng.uniform(1.7, 2.0)
        cx, cy = centre(r0 * scale)
        return Motion(verb, cx, cy, r0, scale=scale)
    if verb == "shrink":
        r0 = rng.uniform(0.15, 0.19) * m
        cx, cy = centre(r0)
        return Motion(verb, cx, cy, r0, scale=rng.uniform(0.35, 0.55))
    if verb in ("lift", "drop"):
        r = min(r, 0.14 * height)
        dy = rng.uniform(0.28, 0.38) * height * (-1 if verb == "lift" else 1)
        cx, cy = centre(r, span_y=dy)
        return Motion(verb, cx, cy, r, dy=dy)
    if verb == "slide":
        r = min(r, 0.14 * width)
        dx = rng.uniform(0.28, 0.42) * width * rng.choice([-1, 1])
        cx, cy = centre(r, span_x=dx)
        return Motion(verb, cx, cy, r, dx=dx)
    if verb == "shake":
        amp = rng.uniform(0.03, 0.05) * width
        cx, cy = centre(r, span_x=amp)
        cx = min(max(cx, r + amp + margin), width - r - amp - margin)
        return Motion(verb, cx, cy, r, dx=amp, cycles=max(3, math.ceil(2.0 * seconds)))
    if verb == "blink":
        cx, cy = centre(r)
        return Motion(verb, cx, cy, r, cycles=max(2, math.ceil(seconds / 1.5)))
    if verb == "fade":
        cx, cy = centre(r)
        return Motion(verb, cx, cy, r, end_alpha=rng.uniform(0.0, 0.08))
    raise ValueError(f"unknown verb {verb!r}")
