"""What the streaming graph writes about a stream, as typed values: its state (the hash `vbs:stream:{id}`) and
one tagged clip (`TagResult`, an entry of `vbs:tags:{id}` and the object `vbs tag` prints).

Every writer of the hash (the supervisor, the sink's scripts, heartbeats) names its fields through
`StreamState.encode`, and every reader (the API, the CLI, the supervisor, the runner) parses it with
`StreamState.from_hash`; a tag row is built by `videobert.tagging.tag_result` and nowhere else."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from schemas.streams import StreamStatus


MAX_STREAM_SECONDS = 1e12  # stream time beyond this is no clip's (a tag's entry id is its t0 in milliseconds)


class Ranked(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    score: float


class TagResult(BaseModel):
    """One tagged clip: field `data` of vbs:tags:{id}, `latest` of the stream's state, a line of `vbs tag`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t0: float  # seconds of stream time
    t1: float
    labels: dict[str, list[Ranked]]  # slot -> every label of its set, best first
    alignment: float | None  # how well the subtitle matches the picture (0-1); None without a subtitle
    subtitle: str
    embedding: list[float] | None = None  # the fused embedding, when asked for
    latency_s: float | None = None  # live sources: clip end (wall time it was on air) -> tag written
    model: str | None = None  # the model that wrote it: "name@hash" (videobert.checkpoint.model_id)
    # where `subtitle` came from: "subtitles" (a text stream or sidecar) or "speech" (recognised in the audio);
    # absent when the stream has neither
    text_source: Literal["subtitles", "speech"] | None = None

    _OPTIONAL: ClassVar[tuple[str, ...]] = ("embedding", "latency_s", "model", "text_source")

    def to_dict(self) -> dict[str, Any]:
        """As JSON objects carry it: `embedding`, `latency_s`, `model` and `text_source` only when set, `alignment`
        always."""
        return self.model_dump(exclude={k for k in self._OPTIONAL if getattr(self, k) is None})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def top(self, slot: str) -> str:
        return self.labels[slot][0].label


class StreamState(BaseModel):
    """The stream hash `vbs:stream:{id}`. A Redis hash holds strings: `encode` turns typed values into its
    fields (numbers as text, booleans as 0/1, JSON for options and the latest tag, "" for none) and
    `from_hash` reads them back; a field absent from the hash takes its default."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stream_id: str
    status: StreamStatus = StreamStatus.queued
    url: str = ""  # redacted once, when the job came in: never a credential
    options: dict[str, Any] = {}
    reason: str = ""  # a schemas.streams.FailureReason value when failed or stopped, else ""
    error: str = ""
    live: bool | None = None
    owner: str = ""  # the decoder that runs it
    client: str = ""  # who queued it: an API key's opaque id, "" for jobs written to Redis directly
    attempts: int = 0  # reassignments after its decoder died or went silent
    # counters: the sink's scripts and the heartbeats add to them (HINCRBY), across every owner
    clips_tagged: int = 0
    clips_dropped: int = 0
    # a live stream's gaps: clips on its grid that were never read, the source being away (a reconnect, a
    # decoder that died, a Redis outage) -- with clips_dropped, every clip a live stream has no tag for
    clips_missed: int = 0
    live_gaps: int = 0
    frames_decoded: int = 0
    reconnects: int = 0
    # wall-clock times (Unix seconds)
    created_at: float | None = None
    updated_at: float | None = None
    started_at: float | None = None  # a live stream's clock starts here (stream time 0)
    finished_at: float | None = None
    heartbeat: float | None = None
    # the resume checkpoint: the last clip committed
    last_t0: float | None = None
    last_t1: float | None = None
    latest: TagResult | None = None
    # bookkeeping of the graph, never shown
    entry: str = ""  # the ingest entry id, acked when the stream ends
    token: str = ""  # the ownership token that fences every write
    stop: bool = False  # a stop was requested
    owner_pid: str = ""

    PRIVATE: ClassVar[frozenset[str]] = frozenset({"entry", "token", "stop", "owner_pid"})

    @field_validator("options", "latest", mode="before")
    @classmethod
    def _json(cls, v):
        if isinstance(v, str):
            return json.loads(v) if v else None
        return v

    @field_validator("options", mode="after")
    @classmethod
    def _options(cls, v):
        return v or {}

    @field_validator("live", "created_at", "updated_at", "started_at", "finished_at", "heartbeat", "last_t0",
                     "last_t1", mode="before")
    @classmethod
    def _blank_is_none(cls, v):
        return None if v == "" else v

    @field_validator("clips_tagged", "clips_dropped", "clips_missed", "live_gaps", "frames_decoded", "reconnects", "attempts",
                     mode="before")
    @classmethod
    def _blank_is_zero(cls, v):
        return 0 if v in ("", None) else v

    @classmethod
    def from_hash(cls, stream_id: str, h: dict[str, str]) -> "StreamState":
        return cls.model_validate({**h, "stream_id": stream_id})

    @classmethod
    def encode(cls, **values) -> dict[str, str]:
        """Hash fields for a write of these fields (any subset); a name that is not a field is an error."""
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"not fields of the stream state: {', '.join(unknown)}")
        return {k: _text(v) for k, v in values.items()}

    def to_hash(self) -> dict[str, str]:
        """Every field, for writing a whole state."""
        return self.encode(**{k: getattr(self, k) for k in type(self).model_fields})

    def public(self) -> dict[str, Any]:
        """What the API and `vbs status` show: every field but the graph's bookkeeping, typed."""
        out = self.model_dump(mode="json", exclude=set(self.PRIVATE) | {"latest"})
        out["latest"] = self.latest.to_dict() if self.latest is not None else None
        return out


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, TagResult):
        return v.to_json()
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)
