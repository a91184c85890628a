"""The clip index on its own (no Redis, no Ray): int8 codes, exact ranking, filters, eviction."""

from __future__ import annotations

import numpy as np
import pytest

from actors.search import ClipIndex
from videobert.retrieval import from_text, quantise, to_text

DIM = 64


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_code_survives_redis_text_and_keeps_the_cosine():
    x = unit(200)
    codes = quantise(x)
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 127
    back = np.stack([from_text(to_text(c), DIM) for c in codes])
    assert (back == codes).all()
    exact = x @ x[:10].T
    coded = (back.astype(np.float32) / 127) @ x[:10].T
    assert np.abs(exact - coded).max() < 0.02  # rounding to int8 moves a cosine by far less than ranks differ
    with pytest.raises(ValueError):
        from_text("not base64 !!", DIM)
    with pytest.raises(ValueError):
        from_text(to_text(codes[0][:10]), DIM)


def test_search_ranks_exactly_as_the_cosine_does_within_filters():
    x = unit(300)
    idx = ClipIndex(DIM)
    for s in range(3):  # three streams of 100 clips, written at times 1000 + i
        rows = range(100 * s, 100 * s + 100)
        idx.add(f"cam-{s}", [f"{1500 * i}-1" for i in rows], [1000.0 + i for i in rows], quantise(x[rows.start:rows.stop]))
    assert len(idx) == 300
    q = x[42] + 0.8 * x[250]
    q /= np.linalg.norm(q)
    hits = idx.search(q, 5)
    exact = np.argsort(-(quantise(x).astype(np.float32) @ q))[:5]
    assert [h.entry for h in hits] == [f"{1500 * i}-1" for i in exact]
    assert hits[0].stream_id == "cam-0" and hits[0].entry == f"{1500 * 42}-1" and hits[0].score == pytest.approx(
        float(x[42] @ q), abs=0.02)
    only2 = idx.search(q, 3, stream="cam-2")
    assert {h.stream_id for h in only2} == {"cam-2"} and only2[0].entry == f"{1500 * 250}-1"
    window = idx.search(q, 50, since=1100.0, until=1199.0)
    assert window and all(1100 <= h.at <= 1199 for h in window) and len(window) == 50
    assert idx.search(q, 5, stream="nobody") == [] and idx.search(q, 5, since=5000.0) == []


def test_eviction_keeps_codes_and_what_they_are_aligned():
    x = unit(100, seed=3)
    idx = ClipIndex(DIM, max_clips=60, retention_s=50.0)
    idx.add("a", [f"{i}-1" for i in range(50)], [float(i) for i in range(50)], quantise(x[:50]))
    idx.add("b", [f"{i}-1" for i in range(50, 100)], [float(i) for i in range(50, 100)], quantise(x[50:]))
    assert idx.evict(now=100.0) == 50  # retention: written before 50 s
    assert len(idx) == 50 and idx.stream.tolist() == [1] * 50
    for i in (50, 77, 99):  # every clip still finds itself first: the codes moved with their rows
        assert idx.search(x[i], 1)[0].entry == f"{i}-1"
    idx.add("a", [f"{i}-1" for i in range(200, 220)], [200.0 + i for i in range(20)], quantise(unit(20, seed=9)))
    assert idx.evict(now=100.0) == 10 and len(idx) == 60  # max_clips: the oldest written go
    assert idx.at.min() == 60.0
    assert idx.remove_stream("a") == 20 and set(idx.stream.tolist()) == {1}
    assert idx.search(x[80], 1)[0].entry == "80-1"
    assert idx.memory_bytes() >= 40 * DIM


def test_a_query_of_the_wrong_size_is_refused():
    idx = ClipIndex(DIM)
    with pytest.raises(ValueError, match="dimensions"):
        idx.search(np.ones(DIM + 1, np.float32), 3)
    with pytest.raises(ValueError):
        idx.add("a", ["0-1"], [0.0, 1.0], quantise(unit(1)))
