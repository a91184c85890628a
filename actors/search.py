"""Text search over every tagged clip: an index of the clips' joint-embedding codes (what the sink keeps in each tag
entry as `vec`), built from Redis and fed live from `vbs:events`. Plain classes, no Ray: the search deployment
(deployments/search.py) holds one `ClipIndex` and one `IndexFeed` per shard; tests and bench.search call them
directly.

The index is faiss's flat scalar quantiser over the int8 codes as they are (QT_8bit_direct_signed: no training,
no second rounding), searched exhaustively: exact for any filter (a stream, a time range), 384 bytes a clip, and
a scan of 1M clips is one pass over 384 MB. Redis stays the one source of truth: the index is rebuilt from the
tag entries at start and after any gap in the feed, and every hit is checked against its entry before it is
given out (an entry trimmed or replaced since is skipped)."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from actors.keys import Keys
from schemas.state import TagResult

log = logging.getLogger(__name__)

PAGE = 1000  # tag entries read at a time at a rebuild, events at a time from the feed


def _ms(entry: str) -> int:
    """The stream-time milliseconds of a tag entry id ('<ms>-1', actors.sink.entry_id)."""
    return int(entry.split("-", 1)[0])


def shard_of(stream_id: str, shards: int) -> int:
    """Which of `shards` index shards holds a stream's clips (stable across processes: crc32, not hash())."""
    return zlib.crc32(stream_id.encode()) % shards


@dataclass(frozen=True)
class Hit:
    """One clip the index ranks for a query, before it is checked against its tag entry."""

    stream_id: str
    entry: str
    at: float
    score: float


class ClipIndex:
    """The int8 joint-embedding codes of many clips of many streams, with what each one is: stream, tag entry id and
    the wall time it was written. Positions in the faiss index and in the arrays are the same (clips are added and
    evicted together). Thread-safe: the feed adds while requests search."""

    def __init__(self, dim: int, max_clips: int = 1_000_000, retention_s: float | None = None):
        import faiss

        self.dim, self.max_clips, self.retention_s = dim, max_clips, retention_s
        self._faiss = faiss
        self.index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed,
                                                faiss.METRIC_INNER_PRODUCT)
        self.streams: list[str] = []  # stream number -> id
        self._number: dict[str, int] = {}
        # per clip, in the index's order (the first len(self) rows of buffers that grow by doubling): its stream
        # number, its tag entry's stream-time milliseconds, when its tag was written (Unix seconds)
        self._cols = {"stream": np.zeros(0, np.int32), "ms": np.zeros(0, np.int64), "at": np.zeros(0, np.float64)}
        self.lock = threading.Lock()

    @property
    def stream(self) -> np.ndarray:
        return self._cols["stream"][:len(self)]

    @property
    def ms(self) -> np.ndarray:
        return self._cols["ms"][:len(self)]

    @property
    def at(self) -> np.ndarray:
        return self._cols["at"][:len(self)]

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def memory_bytes(self) -> int:
        """What the codes and the per-clip arrays take (the stream names aside)."""
        return len(self) * self.dim + sum(col.nbytes for col in self._cols.values())

    def add(self, stream_id: str, entries: list[str], at: list[float], codes: np.ndarray) -> None:
        """Clips of one stream: their tag entry ids, write times and int8 codes (N, dim)."""
        codes = np.asarray(codes, dtype=np.int8).reshape(-1, self.dim)
        if len(codes) != len(entries) or len(codes) != len(at):
            raise ValueError(f"{len(entries)} entries, {len(at)} times and {len(codes)} codes")
        if not len(codes):
            return
        with self.lock:
            n = self._number.setdefault(stream_id, len(self.streams))
            if n == len(self.streams):
                self.streams.append(stream_id)
            start, end = len(self), len(self) + len(codes)
            for name, col in self._cols.items():
                if len(col) < end:
                    grown = np.zeros(max(end, 2 * len(col), 1024), col.dtype)
                    grown[:start] = col[:start]
                    self._cols[name] = grown
            self._cols["stream"][start:end] = n
            self._cols["ms"][start:end] = [_ms(e) for e in entries]
            self._cols["at"][start:end] = at
            self.index.add(codes.astype(np.float32))

    def _drop(self, keep: np.ndarray) -> int:
        """Remove the clips where `keep` is False (under the lock). Returns how many went."""
        gone = int((~keep).sum())
        if gone:
            cols = {name: col[:len(self)][keep] for name, col in self._cols.items()}
            self.index.remove_ids(self._faiss.IDSelectorBatch(np.flatnonzero(~keep).astype(np.int64)))
            self._cols = cols
        return gone

    def remove_stream(self, stream_id: str) -> int:
        """Forget every clip of a stream (its id was used again: its old tags are gone)."""
        with self.lock:
            n = self._number.get(stream_id)
            return 0 if n is None else self._drop(self.stream != n)

    def evict(self, now: float | None = None) -> int:
        """Keep the retention: clips older than `retention_s` go, then the oldest past `max_clips`."""
        with self.lock:
            keep = np.ones(len(self.at), bool)
            if self.retention_s is not None:
                keep &= self.at >= (time.time() if now is None else now) - self.retention_s
            over = int(keep.sum()) - self.max_clips
            if over > 0:  # the oldest written go first
                kept = np.flatnonzero(keep)
                keep[kept[np.argsort(self.at[kept], kind="stable")[:over]]] = False
            return self._drop(keep)

    def search(self, query: np.ndarray, k: int, stream: str | None = None, since: float | None = None,
               until: float | None = None) -> list[Hit]:
        """The `k` clips nearest a unit query vector (dim,) by cosine, best first, among those of `stream` (an id)
        written between `since` and `until` (Unix seconds) when given. A scan of every clip that passes the
        filters: exact."""
        q = np.asarray(query, np.float32).reshape(-1)
        if q.shape != (self.dim,):
            raise ValueError(f"a query of {q.shape[0]} dimensions, the index holds {self.dim}")
        top = float(np.abs(q).max())
        if top == 0 or k <= 0:
            return []
        scale = 127 / top  # the query at full int8 range: faiss rounds it to int8 as it does the codes
        with self.lock:
            if not len(self):
                return []
            mask = None
            if stream is not None:
                n = self._number.get(stream)
                if n is None:
                    return []
                mask = self.stream == n
            if since is not None or until is not None:
                t = np.ones(len(self.at), bool)
                if since is not None:
                    t &= self.at >= since
                if until is not None:
                    t &= self.at <= until
                mask = t if mask is None else mask & t
            params = None
            if mask is not None:
                if not mask.any():
                    return []
                params = self._faiss.SearchParameters(sel=self._faiss.IDSelectorBitmap(
                    np.packbits(mask, bitorder="little")))
            scores, ids = self.index.search(np.rint(q * scale)[None, :], min(k, len(self)), params=params)
            return [Hit(self.streams[self.stream[i]], f"{self.ms[i]}-1", float(self.at[i]), float(s) / (127 * scale))
                    for s, i in zip(scores[0], ids[0]) if i >= 0]


@dataclass
class IndexFeed:
    """Keeps a ClipIndex equal to the tag entries in Redis of the streams of one shard: `rebuild` reads them all,
    `poll` adds what `vbs:events` says was written since. A gap in the feed (the events stream trimmed past where it
    was read) triggers a rebuild."""

    redis: object  # redis.Redis, decode_responses=True
    keys: Keys
    index: ClipIndex
    shard: int = 0
    shards: int = 1
    cursor: str = "0-0"  # the last vbs:events entry read
    last_ms: dict[str, int] = field(default_factory=dict)  # per stream: the newest tag entry indexed
    rebuilds: int = 0
    bad_vectors: int = 0  # tag entries whose vec could not be read (skipped, counted)

    def owns(self, stream_id: str) -> bool:
        return self.shards == 1 or shard_of(stream_id, self.shards) == self.shard

    def _codes(self, sid: str, entries) -> tuple[list[str], list[float], list[np.ndarray]]:
        from videobert.retrieval import from_text

        ids, at, codes = [], [], []
        for eid, f in entries:
            if "vec" not in f:
                continue  # written without an embedding (an older model or a stage that gave none)
            try:
                codes.append(from_text(f["vec"], self.index.dim))
                at.append(float(f.get("at") or 0.0))
            except ValueError:
                self.bad_vectors += 1
                continue
            ids.append(eid)
        return ids, at, codes

    def rebuild(self) -> int:
        """Index every tag entry of this shard's streams that Redis still holds; the feed then goes on from the
        events written meanwhile. Returns the clips indexed."""
        started = time.perf_counter()
        newest = self.redis.xrevrange(self.keys.events, count=1)
        cursor = newest[0][0] if newest else "0-0"  # read first: nothing written during the scan is missed
        fresh = ClipIndex(self.index.dim, self.index.max_clips, self.index.retention_s)
        last: dict[str, int] = {}
        for sid in self.redis.zrange(self.keys.streams, 0, -1):
            if not self.owns(sid):
                continue
            start = "-"
            while True:
                entries = self.redis.xrange(self.keys.tags(sid), min=start, count=PAGE)
                ids, at, codes = self._codes(sid, entries)
                if ids:
                    fresh.add(sid, ids, at, np.stack(codes))
                if entries:
                    last[sid] = _ms(entries[-1][0])
                if len(entries) < PAGE:
                    break
                start = f"({entries[-1][0]}"
        fresh.evict()
        with self.index.lock:  # swap in place: callers hold this ClipIndex
            for name in ("index", "streams", "_number", "_cols"):
                setattr(self.index, name, getattr(fresh, name))
        self.cursor, self.last_ms = cursor, last
        self.rebuilds += 1
        log.info("search index (shard %d/%d): %d clips of %d streams rebuilt in %.1f s", self.shard, self.shards,
                 len(self.index), len(last), time.perf_counter() - started)
        return len(self.index)

    def gap(self) -> bool:
        """Whether events after the cursor may have been trimmed away before they were read: the entry at the cursor
        is gone and the stream now starts after it (an approximate trim may say so falsely: a rebuild too many)."""
        if self.cursor == "0-0" or self.redis.xrange(self.keys.events, min=self.cursor, max=self.cursor):
            return False
        first = self.redis.xrange(self.keys.events, count=1)
        return bool(first) and _stream_id_key(first[0][0]) > _stream_id_key(self.cursor)

    def poll(self, block_ms: int = 1000) -> int:
        """Index the tags written since the cursor (waiting up to `block_ms` for one). Returns the clips added."""
        reply = self.redis.xread({self.keys.events: self.cursor}, count=PAGE, block=block_ms) or []
        wanted: dict[str, list[str]] = {}
        for _, events in reply:
            for eid, f in events:
                self.cursor = eid
                sid, tag = f.get("stream"), f.get("tag")
                if sid and tag and self.owns(sid):
                    wanted.setdefault(sid, []).append(tag)
        added = 0
        if not wanted:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        order = []
        for sid, tags in wanted.items():
            for tag in tags:
                pipe.xrange(self.keys.tags(sid), min=tag, max=tag, count=1)
                order.append(sid)
        found: dict[str, list] = {}
        for sid, entries in zip(order, pipe.execute()):
            found.setdefault(sid, []).extend(entries)
        for sid, entries in found.items():
            newest = self.last_ms.get(sid)
            if newest is not None and entries and _ms(entries[0][0]) <= newest:
                # the stream's id was used again (its old tags were deleted): its old clips go
                if not self.redis.xrange(self.keys.tags(sid), min=f"{newest}-1", max=f"{newest}-1"):
                    self.index.remove_stream(sid)
                    newest = None
            fresh = [(e, f) for e, f in entries if newest is None or _ms(e) > newest]
            ids, at, codes = self._codes(sid, fresh)
            if ids:
                self.index.add(sid, ids, at, np.stack(codes))
                added += len(ids)
            if fresh:
                self.last_ms[sid] = _ms(fresh[-1][0])
        return added

    def hits(self, ranked: list[Hit], k: int) -> list[dict]:
        """The first `k` ranked hits whose tag entry is still there as indexed, with its tags: dicts of stream_id,
        entry, t0, t1, score, at, labels (each slot's best), subtitle."""
        if not ranked:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for h in ranked:
            pipe.xrange(self.keys.tags(h.stream_id), min=h.entry, max=h.entry, count=1)
        out = []
        for h, entries in zip(ranked, pipe.execute()):
            if not entries or abs(float(entries[0][1].get("at") or 0) - h.at) > 1e-3:
                continue  # trimmed, expired, or replaced by a stream of the same id since it was indexed
            try:
                t = TagResult.model_validate_json(entries[0][1]["data"])
            except (ValueError, KeyError):
                continue
            out.append({"stream_id": h.stream_id, "entry": h.entry, "t0": t.t0, "t1": t.t1,
                        "score": round(h.score, 4), "at": h.at,
                        "labels": {slot: {"label": r[0].label, "score": r[0].score} for slot, r in t.labels.items()},
                        "subtitle": t.subtitle})
            if len(out) == k:
                break
        return out


def _stream_id_key(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)
