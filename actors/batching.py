"""Batching across streams inside an async Ray actor: callers `await batcher.submit(item)`; a loop collects
up to `max_batch_size` items or waits at most `max_wait_s` after the first one, runs the stage function on
the whole batch in a worker thread (the event loop keeps accepting calls meanwhile), and answers each
caller. An exception in the stage fails that batch's callers only; the loop keeps going."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class Batcher:
    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch_size: int, max_wait_s: float, name: str,
                 on_batch: Callable[[int, float], None] | None = None):
        self.fn, self.max_batch_size, self.max_wait_s, self.name = fn, max_batch_size, max_wait_s, name
        self.on_batch = on_batch  # (batch size, seconds) after every batch: metrics
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-batch")
        self.batches = 0
        self.items = 0
        self.busy_s = 0.0
        self.queued = 0  # items submitted and not answered yet (waiting, or in the running batch): the pool's load
        self.last_sizes: list[int] = []  # recent batch sizes (for metrics), capped

    def _start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, item: Any) -> Any:
        self._start()
        fut = asyncio.get_running_loop().create_future()
        self.queued += 1
        try:
            await self._queue.put((item, fut))
            return await fut
        finally:
            self.queued -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    while len(batch) < self.max_batch_size and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            items = [b[0] for b in batch]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._pool, self.fn, items)
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
            except Exception as e:  # noqa: BLE001 - the batch's callers get the error, the loop goes on
                log.exception("%s: batch of %d failed", self.name, len(items))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                elapsed = time.perf_counter() - start
                self.busy_s += elapsed
            if self.on_batch is not None:
                self.on_batch(len(items), elapsed)
            self.batches += 1
            self.items += len(items)
            self.last_sizes = (self.last_sizes + [len(items)])[-1000:]
            for (_, fut), r in zip(batch, results):
                if not fut.done():
                    fut.set_result(r)

    def stats(self) -> dict:
        return {"batches": self.batches, "items": self.items, "busy_s": round(self.busy_s, 3), "queued": self.queued,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0}
