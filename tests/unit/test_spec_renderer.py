"""bench/spec_renderer.py, the second renderer of docs/DEMO_WORLD.md: deterministic, its sidecar valid for
schemas/world.py, every verb's rule measured on what it draws, its files read by the project's reader."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from bench import spec_renderer as sr
from schemas.world import GroundTruth
from videobert import subtitles
from videobert.reader import read_video

SHORT = {"min_seconds": 10.0, "max_seconds": 11.0}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One short MP4 and one short MKV of seed 5 (about 10 s each)."""
    out = tmp_path_factory.mktemp("spec_world")
    plans = [sr.plan_video(5, 0, container="mp4", **SHORT), sr.plan_video(5, 1, container="mkv", **SHORT)]
    return out, plans, [sr.render_video(p, out) for p in plans]


def test_deterministic_per_seed_and_index(rendered, tmp_path):
    _, plans, paths = rendered
    again = sr.plan_video(5, 0, container="mp4", **SHORT)
    assert again == plans[0]
    assert sr.ground_truth(again) == json.loads(paths[0].with_suffix(".json").read_text())
    assert np.array_equal(sr.draw_frame(again, 7), sr.draw_frame(plans[0], 7))
    assert sr.plan_video(6, 0, container="mp4", **SHORT) != plans[0]
    assert sr.plan_video(5, 2, container="mp4", **SHORT) != plans[0]
    p2 = sr.render_video(again, tmp_path)  # the same files, byte for byte
    for ext in (".mp4", ".srt", ".json"):
        assert p2.with_suffix(ext).read_bytes() == paths[0].with_suffix(ext).read_bytes(), ext


def test_sidecar_is_valid_ground_truth(rendered):
    _, plans, paths = rendered
    for plan, path in zip(plans, paths):
        raw = json.loads(path.with_suffix(".json").read_text())
        gt = GroundTruth.model_validate(raw)
        assert 10 <= gt.duration <= 60 and 15 <= gt.fps <= 30
        assert (gt.width, gt.height) == (plan.width, plan.height)
        assert gt.segments[0].t0 == 0 and gt.segments[-1].t1 == pytest.approx(gt.duration)
        for a, b in zip(gt.segments, gt.segments[1:]):
            assert a.t1 == b.t0  # back to back
        for seg in gt.segments:
            assert 1.5 <= seg.t1 - seg.t0 <= 4.5
            assert seg.verb in sr.VERBS and seg.noun in sr.NOUNS and seg.color in sr.COLORS
            assert 0 <= len(seg.model_extra["still"]) <= 3
        for line in gt.narration:
            assert line.kind in ("instruction", "wrong", "filler") and 0 <= line.segment < len(gt.segments)


# the verb rules, measured on the drawn opacity of the acting shape ------------------------------------


def _measure(plan, shape):
    """(mass, centroid x, centroid y, peak opacity, nonzero box) of what `coverage` draws for a shape."""
    y0, y1, x0, x1, a = sr.coverage(shape, plan.width, plan.height)
    mass = float(a.sum())
    if mass == 0:
        return 0.0, math.nan, math.nan, 0.0, None
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    ys, xs = np.nonzero(a)
    return (mass, float((a * xx).sum() / mass), float((a * yy).sum() / mass), float(a.max()),
            (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1))


def _apart(a, b) -> bool:
    return a is None or b is None or a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _segments(n_plans=14):
    out = []
    for seed in range(n_plans):
        plan = sr.plan_video(100 + seed, seed % 3, **SHORT)
        out += [(plan, i, seg) for i, seg in enumerate(plan.segments)]
    return out


def test_every_verb_rule_holds_for_the_acting_shape():
    segs = _segments()
    assert {seg.verb for _, _, seg in segs} == set(sr.VERBS)
    for plan, i, seg in segs:
        w, h = plan.width, plan.height
        shapes = [sr.frame_shapes(plan, k) for k in range(seg.k0, seg.k1)]
        assert all(sr.segment_of_frame(plan, k) == i for k in range(seg.k0, seg.k1))
        for fs in shapes:  # exactly one shape acts: the others are the same in every frame, apart from it
            assert tuple(fs[:-1]) == seg.still and len(seg.still) <= 3
        m = [_measure(plan, fs[-1]) for fs in shapes]
        still_boxes = [_measure(plan, s)[4] for s in seg.still]
        for (_, _, _, _, box), fs in zip(m, shapes):
            assert all(_apart(box, b) for b in still_boxes), (plan.name, i)
            a = fs[-1]  # never cut by the frame's edge
            assert a.x - a.r >= 0 and a.y - a.r >= 0 and a.x + a.r <= w and a.y + a.r <= h
        mass = np.array([x[0] for x in m])
        cx, cy, peak = (np.array([x[k] for x in m]) for k in (1, 2, 3))
        what = f"{plan.name} segment {i} {seg.verb}"
        v = seg.verb
        if v not in ("blink", "fade"):
            assert np.all(peak > 0.99), what
        if v in ("grow", "shrink"):
            ratio = math.sqrt(mass[-1] / mass[0])
            assert (ratio >= 1.6) if v == "grow" else (ratio <= 0.6), (what, ratio)
            assert np.ptp(cx) < 0.5 and np.ptp(cy) < 0.5, what
        else:
            if v != "fade":
                assert np.ptp(mass[mass > 0]) / mass[0] < 0.02, what  # the size stays put
        if v == "lift":
            assert cy[0] - cy[-1] >= 0.25 * h and np.ptp(cx) < 0.5, what
        if v == "drop":
            assert cy[-1] - cy[0] >= 0.25 * h and np.ptp(cx) < 0.5, what
        if v == "slide":
            assert abs(cx[-1] - cx[0]) >= 0.25 * w and np.ptp(cy) < 0.5, what
        if v == "shake":
            dx = cx - cx[0]
            signs = np.sign(dx[np.abs(dx) > 0.05])
            assert np.count_nonzero(np.diff(signs)) >= 5, what  # three cycles cross the start five times
            assert 1.5 <= np.abs(dx).max() <= 0.06 * w, what  # small, but visible
            assert abs(dx[-1]) < 0.05 and np.ptp(cy) < 0.5, what  # ends where it started
        if v == "blink":
            seen = mass > 0
            assert seen[0] and seen[-1], what
            assert np.count_nonzero(seen[:-1] & ~seen[1:]) >= 2, what  # disappears ...
            assert np.count_nonzero(~seen[:-1] & seen[1:]) >= 2, what  # ... and reappears, twice or more
            assert np.all((peak > 0.99) | (peak == 0)), what
        if v == "fade":
            assert peak[0] > 0.99 and peak[-1] <= 0.1 and peak[-1] > 0, what  # nearly, not quite, invisible
            steps = np.diff(peak)
            assert np.all(steps <= 1e-9) and steps.min() >= -0.2, what  # smoothly, never a jump
            assert np.count_nonzero((peak < 0.9) & (peak > 0.15)) >= 5, what
            assert np.ptp(cx) < 0.5 and np.ptp(cy) < 0.5, what


def test_each_noun_has_its_form():
    r = 40.0
    ang = np.linspace(0, 2 * np.pi, 720, endpoint=False)

    def inside(noun, x, y):
        return sr.signed_distance(noun, np.asarray(x, float), np.asarray(y, float), r) < 0

    def runs(noun, radius):
        hit = inside(noun, radius * np.cos(ang), radius * np.sin(ang))
        return np.count_nonzero(hit & ~np.roll(hit, 1))

    for noun in ("circle", "square", "triangle", "star", "cross"):
        assert inside(noun, 0, 0), noun  # filled
    assert not inside("ring", 0, 0) and inside("ring", 0.79 * r, 0)  # hollow centre
    assert runs("ring", 0.79 * r) == 0 and inside("ring", 0, 0.79 * r)  # a closed band all the way round
    assert runs("star", 0.75 * r) == 5  # five points
    assert runs("cross", 0.7 * r) == 4  # four arms
    assert runs("circle", 0.99 * r) == 0 and not inside("circle", r * 1.01, 0)


def test_narration_follows_the_spec():
    vocab = set(sr.VERBS) | set(sr.NOUNS) | set(sr.COLORS)
    kinds, spoken, n_segments = {"instruction": 0, "wrong": 0, "filler": 0}, set(), 0
    for seed in range(40):
        plan = sr.plan_video(seed, 0, **SHORT)
        n_segments += len(plan.segments)
        for a, b in zip(plan.cues, plan.cues[1:]):
            assert a.t1 <= b.t0  # one line at a time
        for c in plan.cues:
            seg = plan.segments[c.segment]
            words = c.text.split()
            assert re.fullmatch(r"[a-z ]+", c.text), c.text
            assert 0 <= c.t0 < c.t1 <= plan.duration
            kinds[c.kind] += 1
            spoken.add((seed, c.segment))
            if c.kind == "filler":
                assert not vocab & set(words), c.text
                continue
            assert abs(c.t0 - seg.t0) <= 1.0 + 1e-6, c  # shifted by up to one second
            verb = sorted({x for x in words if x in sr.VERBS})  # a stutter may say a word twice
            noun = sorted({x for x in words if x in sr.NOUNS})
            assert len(verb) == 1 and len(noun) == 1, c.text
            right = (verb[0], noun[0]) == (seg.verb, seg.actor.noun)
            assert right == (c.kind == "instruction"), c
    share = {k: v / n_segments for k, v in kinds.items()}
    assert 0.6 <= share["instruction"] <= 0.8 and 0.04 <= share["wrong"] <= 0.18, share
    assert 0.05 <= share["filler"] <= 0.25 and 0.02 <= 1 - len(spoken) / n_segments <= 0.2, share


def test_the_reader_reads_the_embedded_subtitles_and_labels(rendered):
    _, plans, paths = rendered
    for plan, path in zip(plans, paths):
        v = read_video(path)
        assert v.subtitle_source == "embedded", path
        want = [(c.t0, c.t1, c.text) for c in plan.cues]
        assert [c.text for c in v.cues] == [t for _, _, t in want]
        for cue, (t0, t1, _) in zip(v.cues, want):
            assert cue.start == pytest.approx(t0, abs=0.002) and cue.end == pytest.approx(t1, abs=0.002)
        side = subtitles.read_sidecar(path.with_suffix(".srt"))
        assert [c.text for c in side] == [c.text for c in plan.cues]
        got = [t for c in side for t in (c.start, c.end)]
        assert got == pytest.approx([t for c in plan.cues for t in (c.t0, c.t1)], abs=1e-6)
        assert (v.width, v.height) == (plan.width, plan.height)
        assert v.duration == pytest.approx(plan.n_frames / float(plan.fps), abs=0.01)
        assert v.truth is not None and len(v.truth.segments) == len(plan.segments)
        assert v.clips and all(c.segment == v.truth.segment_at((c.t0 + c.t1) / 2) for c in v.clips)
        assert sum(c.segment is not None for c in v.clips) >= len(v.clips) - 1
        assert any(c.text for c in v.clips)
        # the picture is what was drawn (within H.264's loss): the first frame, decoded
        first = v.clips[0].frames[0]
        assert first.shape == (64, 64, 3) and first.std() > 1


def test_cli_writes_what_the_reader_takes(tmp_path, capsys):
    assert sr.main(["--out", str(tmp_path), "--videos", "1", "--seed", "3", "--min-seconds", "10",
                    "--max-seconds", "10", "--container", "mkv", "-q"]) == 0
    assert "wrote 1 videos" in capsys.readouterr().out
    (video,) = tmp_path.glob("*.mkv")
    assert video.with_suffix(".srt").is_file() and video.with_suffix(".json").is_file()
    assert read_video(video).subtitle_source == "embedded"
    with pytest.raises(ValueError):
        sr.plan_video(0, 0, min_seconds=5, max_seconds=8)  # the spec's videos last 10 to 60 s
