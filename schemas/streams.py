"""What crosses Redis for the streaming graph on the way in: ingest jobs, per-stream options with their label
sets, and the closed vocabularies of statuses, failure reasons and back-pressure policies. Pydantic models,
validated at the boundary; no torch, no Ray. What the graph writes back is in schemas/state.py."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # use fullmatch: `$` would let "cam-1\n" through
MAX_URL = 4096
MAX_OPTIONS = 16_384  # bytes of a job's options JSON
JOB_FIELDS = ("url", "stream_id", "subtitles_url", "options", "client")
MAX_SLOTS = 8
MAX_LABELS = 64
MASK = "[MASK]"


def valid_stream_id(sid: str) -> bool:
    return isinstance(sid, str) and STREAM_ID.fullmatch(sid) is not None


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
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({StreamStatus.finished, StreamStatus.failed, StreamStatus.stopped})


class FailureReason(StrEnum):
    """Why a stream ended without finishing, or why its job was refused: the `reason` of the stream's status and
    of its dead letter, and the label of `vbs_failures_total`. Every code any part of the graph records is here."""

    # the job itself
    malformed_job = "malformed_job"
    poison_job = "poison_job"  # delivered to the supervisor over and over without ever being taken
    duplicate_stream = "duplicate_stream"
    bad_options = "bad_options"
    # refused by the URL policy (actors/url_policy.py: "refused_" + UrlRefused.code)
    refused_bad_url = "refused_bad_url"
    refused_scheme = "refused_scheme"
    refused_file_outside_root = "refused_file_outside_root"
    refused_file_missing = "refused_file_missing"
    refused_loopback_address = "refused_loopback_address"
    refused_private_address = "refused_private_address"
    refused_blocked_address = "refused_blocked_address"
    refused_unresolvable = "refused_unresolvable"
    refused_redirect = "refused_redirect"  # a redirect the policy refuses (or any, with redirects = "refuse")
    refused_segment_host = "refused_segment_host"  # a playlist naming a host or path it may not
    refused_format = "refused_format"  # a concat or SDP file: FFmpeg would open what it names unchecked
    # the source (actors/source.py)
    not_found = "not_found"
    forbidden = "forbidden"
    server_error = "server_error"  # HTTP 5xx: retried
    http_error = "http_error"  # another HTTP 4xx
    timeout = "timeout"
    connection_refused = "connection_refused"
    tls_error = "tls_error"  # a certificate that is not valid for the host (options.tls_verify = false accepts it)
    open_failed = "open_failed"
    invalid_data = "invalid_data"
    no_video = "no_video"
    frame_too_large = "frame_too_large"
    read_error = "read_error"
    no_frames = "no_frames"
    playlist_loop = "playlist_loop"  # a playlist that makes FFmpeg reopen resources in a tight loop
    stalled = "stalled"
    # the graph
    stage_error = "stage_error"
    redis_unavailable = "redis_unavailable"  # Redis took no write for longer than redis_outage_s
    reclaimed_too_often = "reclaimed_too_often"
    internal = "internal"
    # a rule's webhook (actors/rules.py): an event it never took, its stream unaffected
    webhook_failed = "webhook_failed"
    # not a failure: the reason recorded with status `stopped`
    stopped = "stopped"


class BackPressure(StrEnum):
    """What a stream does when the model stages fall behind and `max_in_flight` clips are waiting."""

    drop_oldest = "drop_oldest"  # drop the oldest waiting clip (counted in clips_dropped): live sources
    wait = "wait"  # stop reading until there is room: files and VOD, which lose nothing


class LabelSet(BaseModel):
    """What a stream is tagged with: a template with one [MASK] per slot, and the words each slot may take.
    Frozen and hashable: the fusion stage groups a batch by it. `None` for either part means the model's
    default; `over(default)` fills it in. Whether each word is a single WordPiece token needs the tokenizer:
    videobert.labels.label_ids checks that, once, where a stream or a request comes in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str | None = Field(default=None, min_length=1, max_length=512)
    slots: tuple[tuple[str, tuple[str, ...]], ...] | None = None  # ((slot, (word, ...)), ...) in template order

    @field_validator("slots")
    @classmethod
    def _slots(cls, v):
        if v is None:
            return v
        if not 1 <= len(v) <= MAX_SLOTS:
            raise ValueError(f"labels must name 1 to {MAX_SLOTS} slots")
        names = [name for name, _ in v]
        if len(set(names)) != len(names):
            raise ValueError("labels name a slot twice")
        for slot, words in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", slot):
                raise ValueError(f"slot name {slot!r} must be a short identifier")
            if not 1 <= len(words) <= MAX_LABELS or not all(isinstance(w, str) and 0 < len(w) <= 32 for w in words):
                raise ValueError(f"slot {slot!r} needs 1 to {MAX_LABELS} words of at most 32 characters")
        return v

    @model_validator(mode="after")
    def _one_mask_per_slot(self) -> "LabelSet":
        if self.template is not None and self.slots is not None:
            self.check_masks()
        return self

    def check_masks(self) -> None:
        masks = (self.template or "").count(MASK)
        if masks != len(self.slots or ()):
            raise ValueError(f"template has {masks} [MASK] slot(s) but {len(self.slots or ())} label set(s) were given")

    @classmethod
    def of(cls, template: str | None = None, labels: dict[str, list[str]] | None = None) -> "LabelSet | None":
        """From a template and a {slot: [words]} mapping (either may be None); None when both are."""
        if template is None and labels is None:
            return None
        if labels is not None and (not isinstance(labels, dict)
                                   or not all(isinstance(v, (list, tuple)) for v in labels.values())):
            raise TypeError("labels must map each slot name to a list of words")
        return cls(template=template, slots=tuple((k, tuple(v)) for k, v in labels.items()) if labels is not None else None)

    def over(self, default: "LabelSet") -> "LabelSet":
        """This set with its missing parts taken from `default` (a complete set); checked again as a whole."""
        full = LabelSet(template=self.template if self.template is not None else default.template,
                        slots=self.slots if self.slots is not None else default.slots)
        full.check_masks()
        return full

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.slots or ())

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(words) for name, words in self.slots or ()}


MAX_RULES = 16  # per stream, and in the config


class Rule(BaseModel):
    """When to tell someone (actors/rules.py): a stream's clips pass the rule's test for `clips` clips in a row, then
    one event goes to `vbs:events` and, with a `webhook`, is POSTed there as JSON. The test is one of
    `labels` (each named slot scores one of its labels at `min_score` or more) or `query` (the clip's embedding is
    at least `min_score` near the text's, in the encoder's joint space, as search ranks). The rule fires again only
    after a clip that fails it."""

    # the schema says what the validator below checks: exactly one of the two tests, neither empty
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["labels"], "properties": {"labels": {"type": "object", "minProperties": 1,
                                                           "additionalProperties": {"minItems": 1}},
                                                "query": {"type": "null"}}},
        {"required": ["query"], "properties": {"query": {"type": "string"}, "labels": {"type": "null"}}}]})

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    labels: dict[str, tuple[str, ...]] | None = None  # slot -> labels, any of which passes
    query: str | None = Field(default=None, min_length=1, max_length=512, pattern=r"\S")
    min_score: float = Field(default=0.5, ge=0, le=1)
    clips: int = Field(default=1, ge=1, le=10_000)  # consecutive clips
    webhook: str | None = Field(default=None, min_length=1, max_length=2048)  # http(s), under the URL policy

    @model_validator(mode="after")
    def _one_test(self) -> "Rule":
        if (self.labels is None) == (self.query is None):
            raise ValueError(f"rule {self.name!r} needs exactly one of labels and query")
        if self.labels is not None and (not self.labels or not all(self.labels.values())):
            raise ValueError(f"rule {self.name!r}: labels name each slot with at least one label")
        return self


class StreamOptions(BaseModel):
    """Per-stream tagging options (the job's `options` field, JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str | None = Field(default=None, min_length=1, max_length=512)
    labels: dict[str, list[str]] | None = None  # slot -> single-WordPiece words
    clip_rate: float | None = Field(default=None, gt=0, le=4)  # clips started per second (default: back to back)
    live: bool | None = None  # None: decided from the source (network streams without a duration are live)
    backpressure: BackPressure | None = None  # None: drop_oldest for live sources, wait for files
    # HTTPS, RTSPS and RTMPS certificates are verified against the URL's host name; False accepts any
    # certificate for this stream only (a camera with a self-signed one)
    tls_verify: bool = True
    rules: tuple[Rule, ...] = Field(default=(), max_length=MAX_RULES)  # this stream's, beside the config's
    # where the clips' text comes from: "subtitles" (embedded text stream or sidecar), "speech" (the audio through
    # the speech stage, even when there are subtitles), or None/"auto": subtitles where the stream has them,
    # else speech where it has audio
    text_source: Literal["auto", "subtitles", "speech"] | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if v is not None:
            _label_set_or_error(None, v)
        return v

    @model_validator(mode="after")
    def _masks(self) -> "StreamOptions":
        if self.template is not None and self.labels is not None:
            _label_set_or_error(self.template, self.labels)
        return self

    @classmethod
    def template_of(cls, options: dict) -> str | None:
        """The template of a stream's stored options (None: the model's default, or options that no longer read)."""
        try:
            return cls.model_validate(options).template
        except ValidationError:
            return None

    @cached_property
    def label_set(self) -> LabelSet | None:
        """The stream's template and label sets as one value (None: the model's defaults)."""
        return LabelSet.of(self.template, self.labels)

    def policy(self, live: bool) -> BackPressure:
        return self.backpressure or (BackPressure.drop_oldest if live else BackPressure.wait)


def _label_set_or_error(template: str | None, labels: dict[str, list[str]] | None) -> LabelSet | None:
    """LabelSet.of, its validation error as the one plain reason a field validator reports."""
    try:
        return LabelSet.of(template, labels)
    except ValidationError as e:
        raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


class IngestJob(BaseModel):
    """One entry of the ingest stream: a video source to tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=MAX_URL)
    stream_id: str | None = None
    subtitles_url: str | None = Field(default=None, max_length=MAX_URL)
    options: StreamOptions = StreamOptions()
    client: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")  # who queued it (an API key's opaque id)

    @field_validator("stream_id")
    @classmethod
    def _stream_id(cls, v: str | None) -> str | None:
        if v is not None and not valid_stream_id(v):
            raise ValueError("stream_id must be 1-64 characters of letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return v

    @classmethod
    def from_raw(cls, fields: dict[bytes, bytes]) -> "IngestJob":
        """Parse the fields of a Redis stream entry as Redis gives them (bytes, whatever they hold); raises
        JobError with a safe reason for anything that is not a job, including names or values that are not
        UTF-8 and fields too large to be one."""
        out: dict[str, str] = {}
        for k, v in fields.items():
            try:
                name = k.decode("utf-8")
            except UnicodeDecodeError:
                raise JobError("a field name is not UTF-8") from None
            limit = MAX_OPTIONS if name == "options" else MAX_URL
            if name in JOB_FIELDS and len(v) > limit:
                raise JobError(f"{name} is longer than {limit} bytes")
            try:
                out[name] = v.decode("utf-8")
            except UnicodeDecodeError:
                raise JobError(f"{name[:64]!r} is not UTF-8") from None
        return cls.from_fields(out)

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> "IngestJob":
        """Parse the string fields of a Redis stream entry; raises JobError with a safe reason."""
        unknown = sorted(set(fields) - set(JOB_FIELDS))
        if unknown:
            raise JobError(f"unknown field(s): {', '.join(unknown)[:200]}")
        data: dict[str, Any] = {k: v for k, v in fields.items() if k != "options" and v != ""}
        if fields.get("options"):
            if len(fields["options"]) > MAX_OPTIONS:
                raise JobError(f"options is longer than {MAX_OPTIONS} characters")
            try:
                data["options"] = json.loads(fields["options"])
            except json.JSONDecodeError as e:
                raise JobError(f"options is not JSON: {e.msg} at character {e.pos}") from e
            except RecursionError:
                raise JobError("options nests too deeply") from None
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
        if self.client:
            out["client"] = self.client
        opts = self.options.model_dump(mode="json", exclude_none=True)
        if opts:
            out["options"] = json.dumps(opts)
        return out

    def stream_id_for(self, entry: str) -> str:
        """The stream's id: the job's own, else one derived from its ingest entry id."""
        return self.stream_id or f"s{entry}"


def describe(e: ValidationError) -> str:
    """A pydantic error as one short line without the offending values (they may hold credentials)."""
    parts = []
    for err in e.errors()[:4]:
        where = ".".join(str(x) for x in err["loc"]) or "job"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)[:500]
