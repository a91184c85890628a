"""The narration-noise diagnostic (bench/bag_noise.py): candidate words per training window against the truth."""

import json

import pytest

from bench.bag_noise import bag_noise, main


def _sidecar(path, segments, narration, duration):
    path.write_text(json.dumps({"segments": segments, "narration": narration, "duration": duration}))


def test_bag_noise_counts_right_wrong_and_missing_candidates(tmp_path):
    segs = [{"t0": 0.0, "t1": 1.5, "verb": "grow", "noun": "circle", "color": "red"},
            {"t0": 1.5, "t1": 3.0, "verb": "lift", "noun": "star", "color": "red"}]
    lines = [{"t0": 0.0, "t1": 1.4, "text": "grow the circle", "kind": "instruction", "segment": 0},
             {"t0": 1.9, "t1": 2.8, "text": "now shake the ring", "kind": "wrong", "segment": 1}]
    _sidecar(tmp_path / "a.json", segs, lines, 3.0)
    (tmp_path / "corpus.json").write_text("{}")  # not a sidecar: skipped
    r = bag_noise(tmp_path, "noun", contexts=(0.0, 0.5))
    # windows [0, 1.5], [0.75, 2.25] and [1.5, 3]; the truth at their midpoints: circle, star (1.5 starts it), star
    exact = r["by_context"]["0.0"]
    assert exact["windows"] == 3
    # [0, 1.5]: circle, right alone; [0.75, 2.25]: circle and ring, truth star -> only wrong; [1.5, 3]: ring -> only wrong
    assert exact["right_among_candidates"] == pytest.approx(1 / 3, abs=1e-3)
    assert exact["right_alone"] == pytest.approx(1 / 3, abs=1e-3)
    assert exact["only_wrong"] == pytest.approx(2 / 3, abs=1e-3) and exact["no_candidate"] == 0
    assert exact["mean_candidates"] == pytest.approx(4 / 3, abs=0.01)
    wide = r["by_context"]["0.5"]  # every window now hears both lines
    assert wide["mean_candidates"] == 2 and wide["right_among_candidates"] == pytest.approx(1 / 3, abs=1e-3)
    assert bag_noise(tmp_path, "verb", contexts=(0.0,))["by_context"]["0.0"]["only_wrong"] == pytest.approx(2 / 3, abs=1e-3)


def test_bag_noise_on_a_generated_corpus_and_its_errors(tiny_corpus, tmp_path):
    out = tmp_path / "noise.json"
    assert main(["--data", str(tiny_corpus), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["videos"] == 4 and r["slot"] == "noun"
    for row in r["by_context"].values():
        assert row["windows"] > 20
        assert row["no_candidate"] + row["right_among_candidates"] + row["only_wrong"] == pytest.approx(1, abs=0.002)
        assert row["right_alone"] <= row["right_among_candidates"]
    # wider contexts hear more lines: fewer windows without a candidate
    rows = list(r["by_context"].values())
    assert rows[0]["no_candidate"] >= rows[1]["no_candidate"] >= rows[2]["no_candidate"]
    with pytest.raises(ValueError, match="no sidecar .json"):
        bag_noise(tmp_path / "nothing")
    with pytest.raises(ValueError, match="slot must be one of"):
        bag_noise(tiny_corpus, "color")
