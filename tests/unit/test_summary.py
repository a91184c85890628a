"""A stream's summary from its tags: segments, flickers, gaps, the sentence, and the boundary measure."""

from __future__ import annotations

import pytest

from schemas.state import TagResult
from videobert.summary import boundary_f1, fill, summarise


def tag(t0: float, verb: str, noun: str, subtitle: str = "", score: float = 0.8) -> TagResult:
    other = lambda w, pool: [x for x in pool if x != w][0]
    return TagResult(t0=t0, t1=t0 + 1.5, alignment=None, subtitle=subtitle,
                     labels={"verb": [{"label": verb, "score": score},
                                      {"label": other(verb, ["grow", "drop"]), "score": 1 - score}],
                             "noun": [{"label": noun, "score": score},
                                      {"label": other(noun, ["star", "square"]), "score": 1 - score}]})


def test_consecutive_clips_with_the_same_tags_make_one_segment_told_as_a_sentence():
    tags = [tag(0.0, "grow", "star", "grow the star"), tag(1.5, "grow", "star", "grow the star"),
            tag(3.0, "drop", "square", "now drop it"), tag(4.5, "drop", "square")]
    segs = summarise(tags)
    assert [(s.t0, s.t1, s.labels, s.clips) for s in segs] == [
        (0.0, 3.0, {"verb": "grow", "noun": "star"}, 2), (3.0, 6.0, {"verb": "drop", "noun": "square"}, 2)]
    assert segs[0].sentence == "now let me show you how to grow the star"
    assert segs[0].subtitles == ["grow the star"] and segs[1].subtitles == ["now drop it"]
    assert segs[0].score == pytest.approx(0.8)
    assert summarise(tags, template="[MASK] a [MASK]!")[1].sentence == "drop a square!"


def test_a_flicker_joins_the_segment_before_it_and_its_score_counts_against_that_label():
    tags = [tag(0.0, "grow", "star"), tag(1.5, "grow", "star"), tag(3.0, "drop", "star", score=0.6),
            tag(4.5, "grow", "star"), tag(6.0, "drop", "square"), tag(7.5, "drop", "square")]
    plain = summarise(tags, min_clips=1)
    assert len(plain) == 4
    smooth = summarise(tags, min_clips=2)
    assert [(s.t0, s.t1, s.labels["verb"], s.clips) for s in smooth] == [(0.0, 6.0, "grow", 4), (6.0, 9.0, "drop", 2)]
    # the flicker scored "grow" at 0.4 for its verb and "star" at 0.6: (0.8 * 3 + 0.5) / 4
    assert smooth[0].score == pytest.approx((0.8 * 3 + 0.5) / 4)
    first = summarise([tag(0.0, "drop", "star"), tag(1.5, "grow", "star"), tag(3.0, "grow", "star")], min_clips=2)
    assert [(s.t0, s.labels["verb"]) for s in first] == [(0.0, "grow")]  # a flicker at the start joins the next


def test_a_gap_ends_a_segment_and_nothing_is_a_summary_of_nothing():
    segs = summarise([tag(0.0, "grow", "star"), tag(1.5, "grow", "star"), tag(30.0, "grow", "star")], min_clips=2)
    assert [(s.t0, s.t1) for s in segs] == [(0.0, 3.0), (30.0, 31.5)]
    assert summarise([]) == []
    with pytest.raises(ValueError):
        summarise([], min_clips=0)


def test_fill_and_boundary_f1():
    assert fill("how to [MASK] the [MASK]", {"verb": "lift", "noun": "star"}) == "how to lift the star"
    r = boundary_f1([3.0, 6.2, 9.0], [3.5, 6.0, 12.0])
    assert r["hits"] == 2 and r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert boundary_f1([], [])["f1"] == 1.0 and boundary_f1([1.0], [])["f1"] == 0.0
    assert boundary_f1([3.0, 3.2], [3.1])["hits"] == 1  # one true boundary matches one prediction only
