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
    python -m bench.search --no-retrieval --sizes 100000,1000000        # latency only, no model needed
    python -m bench.search --service --data DIR --clips 1000,10000 --no-latency   # recall over HTTP, as users get it"""

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


def through_service(model: Path, data: Path, sizes: list[int], redis_url: str) -> dict:
    """The recall as a user gets it: the held-out videos pushed as file streams through the graph and the service
    (a local Ray, Serve on a free loopback port, Redis at `redis_url` under a prefix of its own), queried over HTTP
    once the index holds `n` clips, for each of `sizes` (videos are pushed until the tagged clips reach it)."""
    import urllib.parse
    import urllib.request
    import uuid

    import ray
    from ray import serve

    from actors.graph import start_graph
    from actors.keys import Keys, redis_client
    from bench import wait_for
    from bench.sources import free_port
    from deployments.app import build_app
    from schemas.config import Settings
    from videobert.reader import list_videos, load_truth

    prefix = f"vbsbench{uuid.uuid4().hex[:6]}"
    settings = Settings.model_validate({
        "model_dir": str(model.resolve()), "redis": {"url": redis_url, "prefix": prefix},
        "url_policy": {"media_root": str(data.resolve()), "allow_loopback": True},
        "decoder": {"replicas": 2, "max_streams": 64}, "autoscaling": {"enabled": False}})
    videos = [v for v in list_videos(data) if load_truth(v) is not None]
    truth = {f"b-{i}": load_truth(v).segments for i, v in enumerate(videos)}
    r, keys = redis_client(redis_url), Keys(prefix)
    ray.init(num_cpus=8, include_dashboard=False, configure_logging=False, log_to_driver=False)
    port = free_port()
    graph = start_graph(settings)
    out: dict = {"videos": len(videos)}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings), name="vbs", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"

        def get(path: str, **params) -> dict:
            with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=60) as resp:
                return json.loads(resp.read())

        wait_for(lambda: _ok(base + "/readyz"), 300, "the service ready")
        pushed = 0

        def tagged() -> int:
            return sum(int(r.hget(keys.stream(f"b-{i}"), "clips_tagged") or 0) for i in range(pushed))

        for n in sorted(sizes):
            while pushed < len(videos) and pushed * 19 < n:  # about 20 clips of 1.5 s a video of 25-35 s
                r.xadd(keys.ingest, {"url": str(videos[pushed].resolve()), "stream_id": f"b-{pushed}"})
                pushed += 1
            wait_for(lambda: all(r.hget(keys.stream(f"b-{i}"), "status") in ("finished", "failed")
                                 for i in range(pushed)), 3600, "every stream pushed has ended", every=2)
            clips = tagged()
            wait_for(lambda: get("/v1/search", q="grow the star", k=1)["indexed"] >= clips, 300, "the index caught up")
            pairs = sorted({(g.verb, g.noun) for i in range(pushed) for g in truth[f"b-{i}"]})
            found = {k: 0 for k in KS}
            times = []
            for verb, noun in pairs:
                t = time.perf_counter()
                hits = get("/v1/search", q=f"{verb} the {noun}", k=max(KS))["hits"]
                times.append(time.perf_counter() - t)
                ok = [any(g.t0 <= h["t0"] + 0.75 < g.t1 and (g.verb, g.noun) == (verb, noun)
                          for g in truth[h["stream_id"]]) for h in hits]
                for k in KS:
                    found[k] += any(ok[:k])
            times.sort()
            out[f"{clips} clips"] = {"streams": pushed, "queries": len(pairs),
                                     **{f"R@{k}": round(found[k] / len(pairs), 4) for k in KS},
                                     "http_p50_ms": round(1000 * statistics.median(times), 1),
                                     "http_p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 1)}
            print(f"through the service, {clips} clips: {json.dumps(out[f'{clips} clips'])}", flush=True)
    finally:
        serve.shutdown()
        graph.stop()
        ray.shutdown()
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)
    return out


def _ok(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


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
    p.add_argument("--service", action="store_true",
                   help="measure the recall through the graph and the service over HTTP instead (a local Ray and "
                        "Serve; Redis at --redis-url): the videos pushed as streams until each --clips size")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="for --service")
    p.add_argument("--threads", type=int, default=1, help="threads faiss and torch use (default 1: one search "
                                                           "replica's share of a small machine)")
    p.add_argument("--out", default="bench/results/search.json")
    a = p.parse_args(argv)
    import faiss
    import torch

    faiss.omp_set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    result: dict = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": a.threads}
    model = Path(a.model)
    data = Path(a.data) if a.data else model / "data" / "heldout"
    if a.service:
        result["through_service"] = through_service(model, data, a.clips, a.redis_url)
    elif not a.no_retrieval:
        result["retrieval"] = retrieval(model, data, a.clips)
    if not a.no_latency:
        result["latency"] = latency(a.sizes, a.dim, a.queries)
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
