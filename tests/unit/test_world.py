"""The shapes world follows DEMO_WORLD.md: vocabulary, motions, narration mix."""

import math

import numpy as np
import pytest

from videobert import shapes, world
from videobert.text import load_tokenizer


def test_every_word_is_one_wordpiece_token():
    tok = load_tokenizer()
    for word in (*world.VERBS, *world.NOUNS, *world.COLORS):
        assert tok.tokenize(word) == [word], word


def _trace(m: shapes.Motion, n: int = 200):
    return [m.at(u) for u in np.linspace(0, 1, n)]


@pytest.mark.parametrize("verb", world.VERBS)
def test_motion_meets_its_rule_and_stays_in_frame(verb):
    for k in range(40):
        rng = np.random.default_rng(k)
        h, w = [(240, 320), (320, 240), (216, 384), (256, 256)][k % 4]
        seconds = float(rng.uniform(1.5, 4.5))
        m = shapes.sample_motion(rng, verb, h, w, seconds)
        tr = _trace(m)
        (x0, y0, r0, _), (x1, y1, r1, a1) = tr[0], tr[-1]
        for cx, cy, r, _ in tr:
            assert r <= cx <= w - r and r <= cy <= h - r, (verb, k)
        if verb == "grow":
            assert r1 >= 1.6 * r0
        elif verb == "shrink":
            assert r1 <= 0.6 * r0
        elif verb == "lift":
            assert y0 - y1 >= 0.25 * h
        elif verb == "drop":
            assert y1 - y0 >= 0.25 * h
        elif verb == "slide":
            assert abs(x1 - x0) >= 0.25 * w
        elif verb == "shake":
            xs = np.array([t[0] for t in tr]) - x0
            assert abs(xs[-1]) < 1e-6 and np.abs(xs).max() <= 0.06 * w
            assert m.cycles >= 3 and ((xs[:-1] < 0) & (xs[1:] >= 0)).sum() >= 3
        elif verb == "blink":
            vis = np.array([t[3] > 0 for t in _trace(m, 1000)])
            assert vis[0] and vis[-1] and (vis[:-1] & ~vis[1:]).sum() >= 2
        elif verb == "fade":
            alphas = [t[3] for t in tr]
            assert alphas[0] == 1.0 and a1 <= 0.1 and all(np.diff(alphas) <= 0)


@pytest.mark.parametrize("k", range(12))
def test_shapes_are_distinct_masks_however_they_are_drawn(k):
    look = shapes.PLAIN if k == 0 else shapes.sample_look(np.random.default_rng(k))
    masks = {}
    for noun in world.NOUNS:
        _, _, _, _, m = shapes.coverage(noun, 32, 32, 20, 64, 64, look)
        masks[noun] = m > 0.5
    for a in world.NOUNS:
        for b in world.NOUNS:
            if a < b:
                assert (masks[a] != masks[b]).mean() > 0.03, (a, b, look)
    ring = masks["ring"]
    assert not ring[ring.shape[0] // 2, ring.shape[1] // 2], "a ring is hollow"
    for noun in ("circle", "square", "triangle", "star", "cross"):
        m = masks[noun]
        assert m[m.shape[0] // 2, m.shape[1] // 2], f"a {noun} is filled"


def test_narration_mix_matches_the_spec():
    rng = np.random.default_rng(0)
    kinds = {"instruction": 0, "wrong": 0, "filler": 0, None: 0}
    n = 4000
    for _ in range(n):
        said = world.narrate(rng, "grow", "star", "red")
        kinds[said[0] if said else None] += 1
        if said and said[0] == "instruction":
            assert "grow" in said[1].split() and "star" in said[1].split()
        if said and said[0] == "wrong":
            words = said[1].split()
            assert not ("grow" in words and "star" in words)
    assert math.isclose(kinds["instruction"] / n, 0.70, abs_tol=0.03)
    assert math.isclose(kinds["wrong"] / n, 0.10, abs_tol=0.02)
    assert math.isclose((kinds["filler"] + kinds[None]) / n, 0.20, abs_tol=0.03)
