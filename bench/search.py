"""Text search, measured (actors/search.py, GET /v1/search). Two parts, both in one JSON:

  retrieval   text-to-clip R@1, R@5 and R@10 over the held-out clips of a model: each clip encoded by the graph's
              own video stage (the int8 code the sink keeps), indexed in a ClipIndex as the search deployment
              holds it, and queried by sentences: "<verb> the <noun>" for every pair the clips show, and every
              narration line. A hit is a clip inside a ground-truth segment whose verb and noun the query names
              (from the sidecar .json). The service ranks exactly as this index does over the same codes
              (tests/integration/test_search.py checks that over real HTTP), so these are the service's figures.
              --clips N caps the clips (several sizes: --clips 1000,10000; a size past the corpus takes all of it).
  latency     query time p50 / p95 and the memory the index takes at each --sizes (synthetic unit vectors of the
              model's dimension over 100 streams): no filter, one stream, a time window.

    python -m bench.search --model models/demo --out bench/results/search.json
    python -m bench.search --no-retrieval --sizes 100000,1000000        # latency only, no model needed"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from actors.search import ClipIndex
from bench import cpu_model, write_result

KS = (1, 5, 10)


def encode_heldout(model: Path, data: Path, limit: int | None) -> tuple[np.ndarray, list, list, list[str]]:
    """int8 codes (N, D) of the held-out clips as the graph's video stage gives them, with each clip's true verb and
    noun (None where no segment covers it) and its subtitle."""
    from actors.stages import VideoEncoderStage
    from videobert.clipset import load_clipset

    enc = VideoEncoderStage(model)
    cs = load_clipset(data, enc.spec, workers=min(4, os.cpu_count() or 1), progress=True)
    n = len(cs) if limit is None else min(limit, len(cs))
    out = []
    for i in range(0, n, 64):
        out += enc.encode(list(cs.frames[i:min(n, i + 64)]))
    codes = np.stack([np.frombuffer(e.vector, np.int8) for e in out])
    return codes, list(cs.verb[:n]), list(cs.noun[:n]), [cs.text[i] for i in range(n)]


def recall(index: ClipIndex, queries: list[tuple[str, np.ndarray, str, str]], verbs, nouns) -> dict:
    """R@k of each query: whether any of its first k hits shows the verb and noun it names."""
    found = {k: 0 for k in KS}
    for _, vec, verb, noun in queries:
        hits = index.search(vec, max(KS))
        ok = [verbs[int(h.entry.split("-")[0])] == verb and nouns[int(h.entry.split("-")[0])] == noun for h in hits]
        for k in KS:
            found[k] += any(ok[:k])
    return {f"R@{k}": round(found[k] / len(queries), 4) for k in KS} | {"queries": len(queries)}


def retrieval(model: Path, data: Path, sizes: list[int]) -> dict:
    from videobert.retrieval import QueryEncoder

    codes, verbs, nouns, texts = encode_heldout(model, data, max(sizes))
    encoder = QueryEncoder(model)
    out: dict = {"model": str(model), "data": str(data), "clips_available": len(codes)}
    for n in sorted({min(n, len(codes)) for n in sizes}):  # a size past the corpus: all of it
        index = ClipIndex(codes.shape[1])
        index.add("heldout", [f"{i}-1" for i in range(n)], [0.0] * n, codes[:n])
        pairs = sorted({(v, o) for v, o in zip(verbs[:n], nouns[:n]) if v is not None})
        labelled = {t: (verbs[i], nouns[i]) for i, t in enumerate(texts[:n]) if t and verbs[i] is not None}
        pair_q = [(f"{v} the {o}", v, o) for v, o in pairs]
        line_q = [(t, v, o) for t, (v, o) in labelled.items()]
        vecs = encoder([q for q, _, _ in pair_q + line_q])
        # a ranking by chance: a query whose pair a share p of the clips shows finds one in k with 1 - (1 - p)^k
        share = {pair: sum(1 for x in zip(verbs[:n], nouns[:n]) if x == pair) / n for pair in pairs}
        chance = {k: round(statistics.mean(1 - (1 - share[(v, o)]) ** k for _, v, o in pair_q), 4) for k in KS}
        out[f"{n} clips"] = {
            "verb_noun_sentences": recall(index, [(q, x, v, o) for (q, v, o), x in zip(pair_q, vecs)], verbs, nouns),
            "narration_lines": recall(index, [(q, x, v, o) for (q, v, o), x in zip(line_q, vecs[len(pair_q):])],
                                      verbs, nouns),
            "chance_verb_noun_sentences": {f"R@{k}": chance[k] for k in KS},
        }
        print(f"{n} clips: {json.dumps(out[f'{n} clips'])}", flush=True)
    return out


def latency(sizes: list[int], dim: int, queries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        index = ClipIndex(dim, max_clips=n)
        started = time.perf_counter()
        per = max(1, n // 100)
        for s in range(0, n, per):  # 100 streams, each written over the last hour
            m = min(per, n - s)
            x = rng.standard_normal((m, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            index.add(f"stream-{s // per}", [f"{1500 * i}-1" for i in range(m)],
                      list(1_700_000_000 + rng.uniform(0, 3600, m)), np.rint(x * 127).astype(np.int8))
        add_s = time.perf_counter() - started
        q = rng.standard_normal((queries, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        row = {"clips": len(index), "memory_bytes": index.memory_bytes(),
               "memory_mib": round(index.memory_bytes() / 2**20, 1), "add_clips_per_s": round(n / add_s)}
        for name, kw in (("no_filter", {}), ("one_stream", {"stream": "stream-7"}),
                         ("time_window_10_min", {"since": 1_700_000_000 + 600, "until": 1_700_000_000 + 1200})):
            times = []
            for v in q:
                t = time.perf_counter()
                index.search(v, 10, **kw)
                times.append(time.perf_counter() - t)
            times.sort()
            row[name] = {"p50_ms": round(1000 * statistics.median(times), 2),
                         "p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 2)}
        out[f"{n} clips"] = row
        print(f"{n} clips: {json.dumps(row)}", flush=True)
        del index
    return out


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/demo", help="a model directory (default models/demo)")
    p.add_argument("--data", default=None, help="held-out videos with sidecar .json (default: MODEL/data/heldout)")
    p.add_argument("--clips", type=_ints, default=[1000, 10000], help="index sizes for the recall (default 1000,10000)")
    p.add_argument("--sizes", type=_ints, default=[100_000, 1_000_000],
                   help="index sizes for the latency (default 100000,1000000)")
    p.add_argument("--dim", type=int, default=384, help="vector dimensions for the latency (default 384, MiniLM's)")
    p.add_argument("--queries", type=int, default=200, help="queries per latency figure (default 200)")
    p.add_argument("--no-retrieval", action="store_true", help="latency only (no model needed)")
    p.add_argument("--no-latency", action="store_true", help="recall only")
    p.add_argument("--threads", type=int, default=1, help="threads faiss and torch use (default 1: one search "
                                                           "replica's share of a small machine)")
    p.add_argument("--out", default="bench/results/search.json")
    a = p.parse_args(argv)
    import faiss
    import torch

    faiss.omp_set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    result: dict = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": a.threads}
    if not a.no_retrieval:
        model = Path(a.model)
        result["retrieval"] = retrieval(model, Path(a.data) if a.data else model / "data" / "heldout", a.clips)
    if not a.no_latency:
        result["latency"] = latency(a.sizes, a.dim, a.queries)
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
