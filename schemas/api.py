"""Bodies of the HTTP API (deployments/app.py): what each route takes and answers, as the OpenAPI document
publishes them. A stream request is exactly an ingest job, less the fields the service sets itself; a stream
as the API shows it is its state (schemas/state.py) less the graph's bookkeeping; every error is `ErrorBody`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema

from schemas.state import StreamState, TagResult
from schemas.streams import MAX_LABELS, MAX_SLOTS, STREAM_ID, IngestJob, StreamOptions, StreamStatus

# -- errors ------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="what went wrong, for programs: invalid_request, not_found, unauthorized, "
                                  "refused_* (the URL policy), too_large, too_many_streams, ...")
    message: str = Field(description="what went wrong, for people: names the field or value")


class ErrorBody(BaseModel):
    """Every error the service answers, whatever the route and status."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


# -- streams -----------------------------------------------------------------------------------------------

# what the validators of schemas.streams check, said in JSON Schema so that a client (and a fuzzer) knows it
# before it asks; the validators stay the judges (and their messages the answers)
STREAM_ID_PATTERN = f"^{STREAM_ID.pattern}$"
_LABELS_SCHEMA = {
    "anyOf": [{"type": "object", "minProperties": 1, "maxProperties": MAX_SLOTS,
               "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,31}$"},
               "additionalProperties": {"type": "array", "minItems": 1, "maxItems": MAX_LABELS,
                                        "items": {"type": "string", "minLength": 1, "maxLength": 32}}},
              {"type": "null"}],
    "default": None,
    "description": "slot -> the words it may take (each a single WordPiece token of the model), one slot per "
                   "[MASK] of the template; null: the model's default label sets",
}


_STREAM_ID_SCHEMA = {"anyOf": [{"type": "string", "pattern": STREAM_ID_PATTERN}, {"type": "null"}], "default": None,
                     "description": "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; "
                                    "null: the service names the stream"}


class RequestOptions(StreamOptions):
    """StreamOptions, its label sets' shape published (schemas.streams checks them the same way). Whether the
    template's [MASK]s fit the label sets no schema can say: StreamRequest.to_job judges it, a refusal of what the
    request asks (bad_options, as for label sets that do not fit the model's default template), not of its form."""

    labels: Annotated[dict[str, list[str]] | None, WithJsonSchema(_LABELS_SCHEMA)] = None

    @model_validator(mode="after")
    def _masks(self) -> "RequestOptions":  # replaces StreamOptions._masks: see to_job
        return self


class StreamRequest(IngestJob):
    """POST /v1/streams: {url, stream_id?, subtitles_url?, options?} - the same fields as an XADD job."""

    stream_id: Annotated[str | None, WithJsonSchema(_STREAM_ID_SCHEMA)] = None
    options: RequestOptions = RequestOptions()
    client: SkipJsonSchema[str | None] = None  # never accepted (see _no_client), so never published

    @model_validator(mode="before")
    @classmethod
    def _no_client(cls, data):
        if isinstance(data, dict) and "client" in data:
            raise ValueError("client is set by the service from the API key, not by the request")
        return data

    def to_job(self) -> IngestJob:
        """The ingest job; ValueError (one plain reason) for a template whose [MASK]s do not fit its label sets."""
        try:
            return IngestJob.model_validate(self.model_dump(exclude={"client"}))
        except ValidationError as e:
            raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


class StreamAccepted(BaseModel):
    stream_id: str
    entry: str = Field(description="the ingest entry id")
    status: StreamStatus
    links: dict[str, str] = Field(description="self, tags, events: where to read the stream")


def _public_fields(*, latest: bool) -> dict[str, Any]:
    """The fields of StreamState the API shows (StreamState.public), every one always present."""
    out = {}
    for name, f in StreamState.model_fields.items():
        if name in StreamState.PRIVATE or (name == "latest" and not latest):
            continue
        out[name] = (f.annotation, Field(..., description=f.description))
    return out


StreamView = create_model(
    "StreamView", __config__=ConfigDict(extra="forbid"),
    __doc__="A stream's state: status, counters, the last error and reason, the latest tag.",
    **_public_fields(latest=True))
StreamSummary = create_model(
    "StreamSummary", __config__=ConfigDict(extra="forbid"),
    __doc__="A stream in a listing: its state without the latest tag.", **_public_fields(latest=False))


class StreamPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    streams: list[StreamSummary]  # newest first
    offset: int
    limit: int
    total: int = Field(description="streams in all (with ?status=, those of that status)")


class StreamStopped(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_id: str
    status: Literal["stopping", "finished", "failed", "stopped"] = Field(
        description="stopping (202): it stops within a heartbeat; otherwise (200) how it had already ended")


class TagRow(TagResult):
    """One tagged clip, with the entry id it has in the stream's tags."""

    id: str = Field(description="the entry id of the clip in vbs:tags:{id}: <t0 in milliseconds>-1")


class TagPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_id: str
    tags: list[TagRow]
    next_since: float | None = Field(description="pass as ?since= for the next page (the last tag's t0)")


# -- search and summary ----------------------------------------------------------------------------------


class TopLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    score: float


class SearchLinks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str = Field(description="the stream's state")
    tags: str = Field(description="its tags from this clip on")
    snapshot: str | None = Field(description="its latest picture while it runs (made while someone asks), else null")


class SearchHit(BaseModel):
    """One clip that matches the query, best first."""

    model_config = ConfigDict(extra="forbid")

    stream_id: str
    entry: str = Field(description="the clip's entry id in vbs:tags:{id}")
    t0: float = Field(description="stream seconds")
    t1: float
    score: float = Field(description="cosine similarity of the clip and the query in the encoder's joint space")
    at: float = Field(description="when the clip was tagged (Unix seconds)")
    labels: dict[str, TopLabel] = Field(description="each slot's top label")
    subtitle: str
    links: SearchLinks


class SearchPage(BaseModel):
    """GET /v1/search: the clips of every stream nearest the query's text."""

    model_config = ConfigDict(extra="forbid")

    query: str
    hits: list[SearchHit]
    indexed: int = Field(description="clips in the index, over every shard")
    complete: bool = Field(description="false while a shard is still rebuilding its index from Redis")


class SummarySegment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t0: float = Field(description="stream seconds")
    t1: float
    labels: dict[str, str] = Field(description="slot -> the label over the segment")
    score: float = Field(description="the mean score of those labels over the segment's clips (0-1)")
    clips: int
    subtitles: list[str] = Field(description="the distinct subtitle lines of its clips, in order")
    sentence: str = Field(description="the stream's template filled with the labels")


class SummaryPage(BaseModel):
    """GET /v1/streams/{id}/summary: consecutive clips with the same top labels merged into segments."""

    model_config = ConfigDict(extra="forbid")

    stream_id: str
    segments: list[SummarySegment]
    clips: int = Field(description="the tagged clips summarised")
    truncated: bool = Field(description="true when the stream has more tags than one summary reads")


# -- on-demand tagging -------------------------------------------------------------------------------------


class UploadTags(BaseModel):
    """POST /v1/tag: the tags of every 1.5 s clip of the uploaded video."""

    model_config = ConfigDict(extra="forbid")

    clips: list[TagResult]
    duration: float = Field(description="seconds")
    subtitles: Literal["embedded", "sidecar", "speech", "none"] = Field(
        description="where the clips' text came from: the embedded text stream, a sidecar file, speech recognised "
                    "in the audio (a video with audio and no subtitles), or none")


# -- health ------------------------------------------------------------------------------------------------


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool


class ModelIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="name@hash")
    name: str
    hash: str


class GraphView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pools: dict[str, dict[str, int]] = Field(description="stage -> replicas, starting, draining, target, min, max")
    replicas: list[dict[str, Any]] = Field(description="one per replica: pool, name, state, node, device, ...")


class Readiness(BaseModel):
    """GET /readyz, 200 when ready, 503 when not (the same body)."""

    model_config = ConfigDict(extra="forbid")

    ready: bool
    checks: dict[str, bool | str] = Field(description="redis, model, graph: true when they answer; *_error: why not")
    model: ModelIdentity | None = Field(description="the model the tagger serves (the last one seen)")
    version: str
    graph: GraphView | None = Field(None, description="where the graph runs (present while Redis answers)")
