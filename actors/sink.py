"""The sink: everything a stream writes to Redis, each change of one event in one server-side script.

Every write is *fenced* by the stream's ownership token: the supervisor hands a stream to a decoder with a
fresh token, so a decoder that lost its stream (it stalled, or was presumed dead and the stream moved)
can no longer write anything. Results are idempotent: the entry id of a clip in `vbs:tags:{id}` is derived
from its start time, and Redis refuses an id that is not greater than the last one, so a clip replayed
after a resume can never appear twice. Plain class, no Ray: the decoder actor calls it."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from string import Template

import numpy as np

from actors.keys import Keys
from schemas.state import StreamState, TagResult
from schemas.streams import FailureReason, StreamStatus

log = logging.getLogger(__name__)

# The scripts name stream-state fields (checked against StreamState by the tests) and statuses, which come from
# StreamStatus: `$failed` and `$queued` are substituted below.

# Every tag and status change is also noted in `vbs:events` (stream id + the tag's entry id, or the status with its
# reason): the one feed GET /v1/events reads and resumes from (deployments/live.py).
EVENT_ERROR_CHARS = 300  # of a status's error message, in vbs:events and the live status events

# KEYS: stream hash, tags stream, events stream. ARGV: token, entry id, data, t0, t1, maxlen, now, channel, stream id,
# events maxlen, vector. A tag entry holds `data` (the TagResult JSON), `at` (when it was written, Unix seconds) and,
# when the video encoder gave one, `vec`: the clip's joint-embedding code for search (videobert.retrieval, base64).
_COMMIT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
local ok
if ARGV[11] ~= '' then
  ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], ARGV[2], 'data', ARGV[3], 'at', ARGV[7], 'vec', ARGV[11])
else
  ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], ARGV[2], 'data', ARGV[3], 'at', ARGV[7])
end
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'equal or smaller', 1, true) then return 0 end
  return redis.error_reply(ok.err)
end
redis.call('HSET', KEYS[1], 'last_t0', ARGV[4], 'last_t1', ARGV[5], 'latest', ARGV[3], 'heartbeat', ARGV[7],
           'updated_at', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'clips_tagged', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], '*', 'stream', ARGV[9], 'tag', ARGV[2])
redis.call('PUBLISH', ARGV[8], '{"event":"tag","data":' .. ARGV[3] .. '}')
return 1
"""

# KEYS: stream hash. ARGV: token, now, n, then n field/value pairs to set, then field/increment pairs to add.
# Returns the stop request, or -1 when fenced.
_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'heartbeat', ARGV[2])
local n = tonumber(ARGV[3])
for i = 4, 3 + 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 4 + 2 * n, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return tonumber(redis.call('HGET', KEYS[1], 'stop') or '0')
"""

# KEYS: stream hash, dead stream, ingest stream, counters hash, tags stream. ARGV: token, status, error, reason,
# now, group, entry id, stream id, safe url, maxlen, channel, ttl, events maxlen; KEYS[6]: events stream. The job is
# acked and its entry deleted (it holds the raw URL, credentials and all); the stream's state and tags expire after
# the TTL.
_FINISH = Template("""
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'error', ARGV[3], 'reason', ARGV[4], 'finished_at', ARGV[5],
           'updated_at', ARGV[5], 'token', '')
if ARGV[2] == '$failed' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'stream_id', ARGV[8], 'entry', ARGV[7], 'url', ARGV[9],
             'reason', ARGV[4], 'error', ARGV[3])
end
if ARGV[7] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[6], ARGV[7])
  redis.call('XDEL', KEYS[3], ARGV[7])
end
redis.call('EXPIRE', KEYS[1], ARGV[12])
redis.call('EXPIRE', KEYS[5], ARGV[12])
redis.call('HINCRBY', KEYS[4], 'streams_' .. ARGV[2], 1)
if ARGV[2] == '$failed' then redis.call('HINCRBY', KEYS[4], 'failures:' .. ARGV[4], 1) end
local said = string.sub(ARGV[3], 1, $said)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[13], '*', 'stream', ARGV[8], 'status', ARGV[2], 'reason', ARGV[4],
           'error', said)
redis.call('PUBLISH', ARGV[11], cjson.encode({event = 'status', status = ARGV[2], reason = ARGV[4], error = said}))
return 1
""").substitute(failed=StreamStatus.failed.value, said=EVENT_ERROR_CHARS)

# KEYS: stream hash, events stream. ARGV: token, now, channel, stream id, events maxlen. A stream let go at
# shutdown: queued again, owned by nobody.
_RELEASE = Template("""
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
local said = 'released at shutdown; resumes from its checkpoint when the graph runs again'
redis.call('HSET', KEYS[1], 'status', '$queued', 'token', '', 'owner', '', 'updated_at', ARGV[2], 'error', said)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'stream', ARGV[4], 'status', '$queued', 'reason', '',
           'error', said)
redis.call('PUBLISH', ARGV[3], cjson.encode({event = 'status', status = '$queued', reason = '', error = said}))
return 1
""").substitute(queued=StreamStatus.queued.value)

# KEYS: stream hash. ARGV: counter, increment, ... What a fenced owner counted before it learnt it was fenced
# (clips it dropped, frames it decoded): facts about the stream, added whoever owns it now.
_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

SCRIPTS = {"commit": _COMMIT, "heartbeat": _HEARTBEAT, "finish": _FINISH, "release": _RELEASE, "count": _COUNT}
COUNTERS = ("clips_tagged", "clips_dropped", "clips_missed", "live_gaps", "frames_decoded", "reconnects")  # the fields heartbeats add to


class Fenced(Exception):
    """This worker no longer owns the stream: stop without writing anything more."""


def entry_id(t0: float) -> str:
    """The tags-stream id of the clip starting at t0 seconds: '<milliseconds>-1' (ids must exceed 0-0)."""
    return f"{int(round(t0 * 1000))}-1"


def status_event(status: StreamStatus, reason: str = "", error: str = "") -> str:
    """A live status message (pub/sub), with the reason and error that go with it ("" for none)."""
    return json.dumps({"event": "status", "status": status.value, "reason": reason,
                       "error": error[:EVENT_ERROR_CHARS]})


@dataclass
class Sink:
    redis: object  # redis.Redis with decode_responses=True
    keys: Keys
    tags_maxlen: int = 10_000
    dead_maxlen: int = 10_000
    ended_ttl_s: int = 7 * 24 * 3600
    events_maxlen: int = 100_000

    @classmethod
    def of(cls, redis, keys: Keys, settings) -> "Sink":
        """A sink with the limits of the service's RedisSettings."""
        return cls(redis, keys, settings.tags_maxlen, settings.dead_maxlen, settings.ended_ttl_s,
                   settings.events_maxlen)

    def __post_init__(self) -> None:
        self._commit = self.redis.register_script(_COMMIT)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._finish = self.redis.register_script(_FINISH)
        self._release = self.redis.register_script(_RELEASE)
        self._count = self.redis.register_script(_COUNT)

    def commit(self, stream_id: str, token: str, result: TagResult, vector: bytes | None = None) -> bool:
        """Write one clip's result, with its joint-embedding code (`vector`, int8 bytes) when there is one. True if
        written, False if it was already there (a replay). Raises Fenced if the stream has moved to another owner,
        and Redis's error if the write failed."""
        from videobert.retrieval import to_text

        data = result.to_json()
        vec = to_text(np.frombuffer(vector, dtype=np.int8)) if vector else ""
        r = self._commit(keys=[self.keys.stream(stream_id), self.keys.tags(stream_id), self.keys.events],
                         args=[token, entry_id(result.t0), data, result.t0, result.t1, self.tags_maxlen,
                               f"{time.time():.3f}", self.keys.live(stream_id), stream_id, self.events_maxlen, vec])
        if r == -1:
            raise Fenced(stream_id)
        return r == 1

    def heartbeat(self, stream_id: str, token: str, incr: dict[str, int] | None = None, **fields) -> bool:
        """Refresh the stream's heartbeat, set `fields` (StreamState fields) and add `incr` to its counters, in
        one step. Returns whether a stop was requested."""
        values = StreamState.encode(**fields)
        bad = sorted(set(incr or ()) - set(COUNTERS))
        if bad:
            raise ValueError(f"not counters of the stream state: {', '.join(bad)}")
        args: list = [token, f"{time.time():.3f}", len(values)]
        for k, v in values.items():
            args += [k, v]
        for k, v in (incr or {}).items():
            args += [k, int(v)]
        r = self._heartbeat(keys=[self.keys.stream(stream_id)], args=args)
        if r == -1:
            raise Fenced(stream_id)
        return bool(r)

    def count(self, stream_id: str, incr: dict[str, int]) -> bool:
        """Add `incr` to the stream's counters without an ownership check: what an owner counted before it was
        fenced happened all the same (a live stream's drops during an outage are its missing clips). False
        when the stream's state is gone."""
        bad = sorted(set(incr) - set(COUNTERS))
        if bad:
            raise ValueError(f"not counters of the stream state: {', '.join(bad)}")
        args = [x for k, v in incr.items() for x in (k, int(v))]
        return bool(args) and self._count(keys=[self.keys.stream(stream_id)], args=args) == 1

    def set_status(self, stream_id: str, token: str, status: StreamStatus, incr: dict[str, int] | None = None,
                   **fields) -> bool:
        stop = self.heartbeat(stream_id, token, incr, status=status, updated_at=time.time(), **fields)
        reason = StreamState.encode(reason=fields["reason"])["reason"] if "reason" in fields else ""
        error = str(fields.get("error") or "")[:EVENT_ERROR_CHARS]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.keys.events, {"stream": stream_id, "status": status.value, "reason": reason, "error": error},
                  maxlen=self.events_maxlen, approximate=True)
        pipe.publish(self.keys.live(stream_id), status_event(status, reason, error))
        pipe.execute()
        return stop

    def finish(self, stream_id: str, token: str, status: StreamStatus, *, entry: str = "", error: str = "",
               reason: FailureReason | None = None, url: str = "") -> None:
        """End the stream for good: final status, dead-letter entry when it failed, and the ingest job acked,
        all at once. A stream that has moved on is left alone (Fenced)."""
        if not status.terminal:
            raise ValueError(f"finish needs a final status, not {status.value}")
        r = self._finish(keys=[self.keys.stream(stream_id), self.keys.dead, self.keys.ingest, self.keys.counters,
                               self.keys.tags(stream_id), self.keys.events],
                         args=[token, status.value, error[:1000], FailureReason(reason).value if reason else "",
                               f"{time.time():.3f}", self.keys.group, entry, stream_id, url, self.dead_maxlen,
                               self.keys.live(stream_id), self.ended_ttl_s, self.events_maxlen])
        if r == -1:
            raise Fenced(stream_id)

    def release(self, stream_id: str, token: str) -> bool:
        """Give a running stream back without ending it (shutdown): its job stays pending, its status says
        queued, and the next supervisor resumes it from its checkpoint. False if it had already moved on."""
        return self._release(keys=[self.keys.stream(stream_id), self.keys.events],
                             args=[token, f"{time.time():.3f}", self.keys.live(stream_id), stream_id,
                                   self.events_maxlen]) == 1
