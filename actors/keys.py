"""Redis key names of the streaming graph, all under one configurable prefix (see DESIGN.md, Redis layout)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "vbs"

    @property
    def ingest(self) -> str:  # stream of jobs, read by the supervisors' consumer group
        return f"{self.prefix}:ingest"

    @property
    def group(self) -> str:
        return f"{self.prefix}-supervisors"

    @property
    def dead(self) -> str:  # stream of jobs and clips that failed for good, with the reason
        return f"{self.prefix}:dead"

    @property
    def streams(self) -> str:  # sorted set of every stream id, scored by creation time (listing)
        return f"{self.prefix}:streams"

    @property
    def counters(self) -> str:  # hash of pipeline-wide counters (streams by final status, failures by reason)
        return f"{self.prefix}:counters"

    @property
    def metrics(self) -> str:  # hash of Prometheus series recorded by every actor (actors/metrics.py)
        return f"{self.prefix}:metrics"

    @property
    def supervisor(self) -> str:  # the supervisor's heartbeat (a timestamp with a TTL): is the graph running?
        return f"{self.prefix}:supervisor"

    @property
    def graph(self) -> str:  # JSON: the pools and where each replica runs (actors/placement.py), with a TTL
        return f"{self.prefix}:graph"

    @property
    def model(self) -> str:  # JSON {"id", "name", "hash"}: the model the fusion stage serves (vbs_build_info)
        return f"{self.prefix}:model"

    def stream(self, stream_id: str) -> str:  # hash: status, owner, checkpoint, counters, latest result
        return f"{self.prefix}:stream:{stream_id}"

    def tags(self, stream_id: str) -> str:  # stream: one entry per clip, id derived from the clip's start
        return f"{self.prefix}:tags:{stream_id}"

    def live(self, stream_id: str) -> str:  # pub/sub channel of live results and status changes
        return f"{self.prefix}:live:{stream_id}"

    @property
    def events(self) -> str:  # stream of every stream's tag and status notifications, capped (GET /v1/events)
        return f"{self.prefix}:events"

    @property
    def rules_group(self) -> str:  # the consumer group of vbs:events that evaluates rules (actors/rules.py)
        return f"{self.prefix}-rules"

    @property
    def webhooks(self) -> str:  # stream of webhook deliveries waiting to be POSTed, read by its consumer group
        return f"{self.prefix}:webhooks"

    @property
    def webhooks_group(self) -> str:
        return f"{self.prefix}-webhooks"

    def fired(self, stream_id: str, rule: str, entry: str) -> str:  # a rule event already fired (dedupe, with a TTL)
        return f"{self.prefix}:fired:{stream_id}:{rule}:{entry}"

    def snapshot(self, stream_id: str) -> str:  # bytes: the latest clip's frame as a JPEG, with a TTL
        return f"{self.prefix}:snapshot:{stream_id}"

    def watched(self, stream_id: str) -> str:  # set with a short TTL while someone asks for the snapshot
        return f"{self.prefix}:watched:{stream_id}"


def redis_client(url: str, *, asyncio: bool = False, decode: bool = True, retries: int = 8,
                 connect_timeout_s: float = 5, timeout_s: float = 30):
    """The one Redis client factory: redis-py (or redis.asyncio with `asyncio=True`) with string replies (bytes
    with `decode=False`, for reading what clients wrote: a reply that is not UTF-8 must not raise inside the
    client) and the same policy for all: connection errors and timeouts retried `retries` times with
    exponential backoff (Redis restarts, blips), connect and read timeouts, and a health check on idle
    connections. A command run by hand asks for no retries and short timeouts (ops.up.quick_client)."""
    import redis
    from redis.backoff import ExponentialBackoff

    opts = dict(decode_responses=decode, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s,
                health_check_interval=15, retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    if asyncio:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry as AsyncRetry

        return aioredis.Redis.from_url(url, retry=AsyncRetry(ExponentialBackoff(cap=5, base=0.1), retries), **opts)
    from redis.retry import Retry

    return redis.Redis.from_url(url, retry=Retry(ExponentialBackoff(cap=5, base=0.1), retries), **opts)


def redis_down(e: BaseException) -> bool:
    """Whether `e` means Redis cannot take writes right now (gone, slow, or out of memory), not a bug."""
    import redis

    return isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError))
