"""The label-ceiling diagnostic (bench/label_ceiling.py): trains with ground truth and scores held-out
clips; refuses material without labels."""

import json

import pytest

from bench.label_ceiling import main
from tests.conftest import is_share_of


def test_label_ceiling_writes_held_out_accuracy(tiny_corpus, tmp_path):
    out = tmp_path / "ceiling.json"
    # the tiny corpus as both sides: this checks the plumbing and the report, not generalisation
    assert main(["--data", str(tiny_corpus), "--heldout", str(tiny_corpus), "--epochs", "1", "--workers", "1",
                 "--arch-config", '{"width": 4, "feature_dim": 32}', "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["steps"] >= 1 and r["train_clips"] > r["heldout_clips"] > 0  # training windows overlap
    assert is_share_of(r["verb_top1"], r["heldout_clips"]) and is_share_of(r["noun_top1"], r["heldout_clips"])
    assert r["clip"]["fit"] == "stretch" and r["arch_config"] == {"width": 4, "feature_dim": 32}


def test_label_ceiling_needs_labels(tiny_corpus, tmp_path):
    for p in sorted(tiny_corpus.glob("*.mp4"))[:1]:
        (tmp_path / p.name).write_bytes(p.read_bytes())  # the video without its sidecar .json
    with pytest.raises(ValueError, match="need labelled clips"):
        main(["--data", str(tmp_path), "--heldout", str(tmp_path), "--epochs", "1", "--workers", "1",
              "--out", str(tmp_path / "x.json")])
