"""What crosses Redis for the streaming graph: ingest jobs, per-stream options, stream statuses and the
per-clip tag result. Pydantic models, validated at the boundary; no torch, no Ray."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_URL = 4096
MAX_LABELS = 64


class JobError(ValueError):
    """A queue message that is not a valid job; `reason` is short and safe to log and store."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StreamStatus(StrEnum):
    queued = "queued"
    starting = "starting"
    running = "running"
    reconnecting = "reconnecting"
    finished = "finished"
    failed = "failed"
    stopped = "stopped"

    @property
    def terminal(self) -> bool:
        return self in (StreamStatus.finished, StreamStatus.failed, StreamStatus.stopped)


class StreamOptions(BaseModel):
    """Per-stream tagging options (the job's `options` field, JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str | None = Field(default=None, min_length=1, max_length=512)
    labels: dict[str, list[str]] | None = None  # slot -> single-WordPiece words
    clip_rate: float | None = Field(default=None, gt=0, le=4)  # clips started per second (default: back to back)
    live: bool | None = None  # None: decided from the source (network streams without a duration are live)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if v is None:
            return v
        if not v or len(v) > 8:
            raise ValueError("labels must name 1 to 8 slots")
        for slot, words in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", slot):
                raise ValueError(f"slot name {slot!r} must be a short identifier")
            if not 1 <= len(words) <= MAX_LABELS or not all(isinstance(w, str) and 0 < len(w) <= 32 for w in words):
                raise ValueError(f"slot {slot!r} needs 1 to {MAX_LABELS} words of at most 32 characters")
        return v


class IngestJob(BaseModel):
    """One entry of the ingest stream: a video source to tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=MAX_URL)
    stream_id: str | None = None
    subtitles_url: str | None = Field(default=None, max_length=MAX_URL)
    options: StreamOptions = StreamOptions()

    @field_validator("stream_id")
    @classmethod
    def _stream_id(cls, v: str | None) -> str | None:
        if v is not None and not STREAM_ID.match(v):
            raise ValueError("stream_id must be 1-64 characters of letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return v

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> "IngestJob":
        """Parse the string fields of a Redis stream entry; raises JobError with a safe reason."""
        unknown = sorted(set(fields) - {"url", "stream_id", "subtitles_url", "options"})
        if unknown:
            raise JobError(f"unknown field(s): {', '.join(unknown)[:200]}")
        data: dict[str, Any] = {k: v for k, v in fields.items() if k != "options" and v != ""}
        if fields.get("options"):
            try:
                data["options"] = json.loads(fields["options"])
            except json.JSONDecodeError as e:
                raise JobError(f"options is not JSON: {e.msg} at character {e.pos}") from e
            if not isinstance(data["options"], dict):
                raise JobError("options must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise JobError(describe(e)) from e

    def to_fields(self) -> dict[str, str]:
        out = {"url": self.url}
        if self.stream_id:
            out["stream_id"] = self.stream_id
        if self.subtitles_url:
            out["subtitles_url"] = self.subtitles_url
        opts = self.options.model_dump(exclude_none=True)
        if opts:
            out["options"] = json.dumps(opts)
        return out


def describe(e: ValidationError) -> str:
    """A pydantic error as one short line without the offending values (they may hold credentials)."""
    parts = []
    for err in e.errors()[:4]:
        where = ".".join(str(x) for x in err["loc"]) or "job"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)[:500]


class TagResult(BaseModel):
    """One tagged clip: the object `vbs tag` prints, as the sink writes it (field `data` of vbs:tags:{id})."""

    t0: float
    t1: float
    labels: dict[str, list[dict[str, Any]]]
    alignment: float | None
    subtitle: str
    embedding: list[float] | None = None
    latency_s: float | None = None  # live sources: clip end (wall time it arrived) -> tag written
