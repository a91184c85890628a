"""The search deployment: one shard of the clip index (actors/search.py) with the query's text encoder, behind GET
/v1/search. Each shard holds the streams crc32(id) % shards picks; the ingress embeds a query once (on shard 0),
asks every shard and merges their hits. A shard rebuilds its index from Redis when it starts and then follows
`vbs:events`; it answers while it rebuilds, from what it has (`complete` says so)."""

from __future__ import annotations

import logging
import threading
import time

from ray import serve

from schemas.config import Settings

log = logging.getLogger(__name__)

EVICT_EVERY_S = 30.0
GAP_CHECK_EVERY_S = 10.0


@serve.deployment(name="search", num_replicas=1, ray_actor_options={"num_cpus": 0.5})
class SearchShard:
    def __init__(self, settings: Settings, shard: int = 0, shards: int = 1):
        import faiss
        import torch

        from actors.keys import Keys, redis_client
        from actors.search import ClipIndex, IndexFeed
        from videobert.retrieval import QueryEncoder
        from videobert.text import use_minilm

        use_minilm(settings.minilm_dir)
        torch.set_num_threads(settings.search.threads)
        faiss.omp_set_num_threads(settings.search.threads)
        s = settings.search
        self.encoder = QueryEncoder(settings.model_dir)
        self.index = ClipIndex(self.encoder.dim, s.max_clips, s.retention_s)
        self.feed = IndexFeed(redis_client(settings.redis.url), Keys(settings.redis.prefix), self.index, shard, shards)
        self.complete = False  # the first rebuild has finished
        self.error: str | None = None  # why the feed is not following, while it is not
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"search-feed-{shard}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        """Rebuild, then follow the events; on any failure (Redis away, say) wait and rebuild from scratch: the index
        is only ever a copy of what Redis holds."""
        from actors.keys import redis_down

        wait = 0.5
        while not self._stop.is_set():
            try:
                self.feed.rebuild()
                self.complete, self.error, wait = True, None, 0.5
                evicted = checked = time.monotonic()
                while not self._stop.is_set():
                    self.feed.poll(block_ms=1000)
                    now = time.monotonic()
                    if now - evicted > EVICT_EVERY_S:
                        self.index.evict()
                        evicted = now
                    if now - checked > GAP_CHECK_EVERY_S:
                        checked = now
                        if self.feed.gap():
                            log.warning("search feed: events were trimmed before they were read; rebuilding")
                            break
            except Exception as e:  # noqa: BLE001 - the feed must outlive any failure; it says why meanwhile
                self.error = f"{type(e).__name__}: {e}"[:300]
                (log.warning if redis_down(e) else log.exception)("search feed failed (%s); rebuilding in %.1f s",
                                                                  self.error, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, 10.0)

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the search feed thread has died")

    async def embed(self, text: str) -> list[float]:
        import asyncio

        return (await asyncio.to_thread(self.encoder, [text]))[0].tolist()

    async def query(self, vector: list[float], k: int, stream: str | None = None, since: float | None = None,
                    until: float | None = None) -> dict:
        """This shard's best `k` hits, checked against Redis: {"hits", "clips", "complete"}."""
        import asyncio

        import numpy as np

        def run():
            # a few spare: a hit whose entry was trimmed or replaced since it was indexed is skipped
            ranked = self.index.search(np.asarray(vector, np.float32), k + 8, stream, since, until)
            return self.feed.hits(ranked, k)

        return {"hits": await asyncio.to_thread(run), "clips": len(self.index), "complete": self.complete}

    def stats(self) -> dict:
        return {"clips": len(self.index), "streams": len(self.feed.last_ms), "memory_bytes": self.index.memory_bytes(),
                "rebuilds": self.feed.rebuilds, "bad_vectors": self.feed.bad_vectors, "complete": self.complete,
                "error": self.error, "cursor": self.feed.cursor}

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
