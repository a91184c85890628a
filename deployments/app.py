"""The HTTP service: a FastAPI ingress on Ray Serve in front of Redis (the streaming graph's state) and the
on-demand tagger deployment.

    POST   /v1/streams               queue a stream (the same job as XADD vbs:ingest) -> 202
    GET    /v1/streams               streams, newest first, paged, with status
    GET    /v1/streams/{id}          status, counters, last error, latest tags
    DELETE /v1/streams/{id}          stop a stream
    GET    /v1/streams/{id}/tags     results as the sink wrote them (?since=SECONDS&limit=N)
    GET    /v1/streams/{id}/events   server-sent events: status changes and tags, live
    GET    /v1/streams/{id}/snapshot.jpg   the latest clip's frame as a small JPEG (made while someone asks)
    GET    /v1/streams/{id}/summary  consecutive clips with the same tags merged into segments, told as sentences
    GET    /v1/events                server-sent events of every stream in one feed (and rules that fired), resumable
    GET    /v1/search                clips of every stream ranked by similarity to a text (?q=TEXT&k=&stream=...)
    POST   /v1/tag                   tag an uploaded short clip (body: the video bytes)
    GET    /healthz /readyz /metrics /   health, readiness, Prometheus text, the live page

Errors are JSON: {"error": {"code": ..., "message": ...}}. With API keys configured, every /v1 route needs
`Authorization: Bearer KEY` (or `?access_token=KEY`, for EventSource, which cannot send headers).

/openapi.json is the contract: a model (schemas/api.py) for every answer and every status code a route can
answer, the real error body, the upload body, the bearer scheme as the keys are configured now; 405s name the
path's methods in Allow. tests/integration/test_openapi.py holds the service to it with schemathesis."""


import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors import control
from deployments import auth
from deployments.auth import RequireKey
from deployments.live import EventHub, Full, LiveHub, Seats, stream_feed
from deployments.tagger import Tagger
from schemas import VERSION
from schemas.api import (STREAM_ID_PATTERN, ErrorBody, Health, Readiness, SearchPage, StreamAccepted, StreamPage,
                         StreamRequest, StreamStopped, StreamView, SummaryPage, TagPage, UploadTags)
from schemas.config import Settings
from schemas.state import MAX_STREAM_SECONDS, StreamState, TagResult
from schemas.streams import LabelSet, StreamOptions, StreamStatus, valid_stream_id

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
MAX_OTHER_REQUESTS = 256  # requests in flight per ingress replica beside its live clients
MAX_OFFSET = 10**12  # a listing's offset beyond this is past every stream (and Redis takes no index past 2**63)
SUMMARY_MAX_CLIPS = 20_000  # tags one summary reads at most (a stream keeps tags_maxlen, 10,000 by default)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# -- the contract: what each route can answer, as the OpenAPI document says --------------------------------
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before asking again", "schema": {"type": "integer"}}}
WHEN = {
    404: "no such stream (not_found)",
    409: "a stream of that id is running (conflict): stop it first or use another id",
    413: "the upload is too large (too_large) or too long (too_long)",
    422: "the request is not valid (invalid_request, naming the field), or cannot be served (a code that says why)",
    429: "this API key runs as many streams as it may (too_many_streams)",
    503: "the service is starting (not_ready)",
}


def errors(*statuses: int, **when: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the errors a route can answer: the error body, why, and Retry-After where it is sent;
    `when` adds to a status's reason (`s503=...`). 401 is added by deployments.auth.document where keys guard."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        extra = when.get(f"s{s}")
        out[s] = {"model": ErrorBody, "description": WHEN[s] + (f"; {extra}" if extra else "")}
        if s in (429, 503):
            out[s]["headers"] = RETRY_AFTER
    return out


# what a client can do with a stream it queued (OpenAPI links, which generators and fuzzers follow)
STREAM_LINKS = {name: {"operationId": op, "parameters": {"stream_id": "$response.body#/stream_id"}}
                for name, op in (("state", "get_stream"), ("tags", "get_tags"), ("events", "events"),
                                 ("snapshot", "snapshot"), ("stop", "stop_stream"))}


def sse_content(events: tuple[str, ...]) -> dict[str, Any]:
    """The content of a server-sent-events answer: each event (`itemSchema`, OpenAPI 3.2's word for it) has a
    name and JSON data, and `id:` where a reconnect may resume from it."""
    return {"text/event-stream": {"itemSchema": {
        "type": "object", "required": ["event", "data"],
        "properties": {"event": {"type": "string", "enum": list(events)},
                       "data": {"type": "string", "contentMediaType": "application/json"},
                       "id": {"type": "string"}, "retry": {"type": "integer", "minimum": 0}}}}}


class Jpeg(Response):
    media_type = "image/jpeg"


class Api(FastAPI):
    """FastAPI whose OpenAPI document says what the service answers: every error is ErrorBody (FastAPI's own
    `{"detail": [...]}` body is never sent, _validation_error answers instead), and the security is that of the
    API keys as they are configured now (deployments.auth.document)."""

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()  # FastAPI's, made again only when the routes change
        if schema is not getattr(self, "_contract_of", None):
            _real_errors(schema)
            self._contract_of = schema
        return auth.document(schema)


def _real_errors(schema: dict[str, Any]) -> None:
    """FastAPI's default 422 (HTTPValidationError) becomes the error body _validation_error really sends, and
    error bodies are JSON whatever a route answers when it succeeds (FastAPI gives them the route's media type)."""
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            for status, r in op.get("responses", {}).items():
                schemas = [c.get("schema") for c in r.get("content", {}).values()]
                if error in schemas or {"$ref": "#/components/schemas/HTTPValidationError"} in schemas:
                    r["content"] = {"application/json": {"schema": dict(error)}}
                    if status == "422":
                        r["description"] = WHEN[422]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)  # every route declares ErrorBody (its 503 at least), so it is there


api = Api(title="videobert-stream", version=VERSION, generate_unique_id_function=lambda route: route.name,
          description="Live VideoBERT tagging: queue video streams, read their tags live, tag clips on demand. "
                      "Every error is {\"error\": {\"code\", \"message\"}}. With API keys configured, every /v1 "
                      "route needs `Authorization: Bearer KEY` (or `?access_token=KEY`, for EventSource).")


@api.exception_handler(ApiError)
async def _api_error(request: Request, e: ApiError):
    return JSONResponse(error_body(e.code, e.message), status_code=e.status, headers=e.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, e: RequestValidationError):
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return JSONResponse(error_body("invalid_request", "; ".join(parts)), status_code=422)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException):
    if e.status_code == 400:  # a body FastAPI could not parse (not UTF-8, say): answered as any invalid body
        return JSONResponse(error_body("invalid_request", f"body: {e.detail}"), status_code=422)
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    headers = getattr(e, "headers", None)
    if e.status_code == 405:  # RFC 9110: a 405 lists the methods the resource takes
        headers = {**(headers or {}), **({"Allow": allowed} if (allowed := _allowed(request)) else {})}
    return JSONResponse(error_body(code, str(e.detail)), status_code=e.status_code, headers=headers)


def _allowed(request: Request) -> str | None:
    """The methods the OpenAPI document lists for this path (Starlette's Allow names only those of the first route
    that matched the path: GET /v1/streams hid POST /v1/streams); None for a path it does not list."""
    path = request.scope["path"].removeprefix(request.scope.get("root_path", "")) or "/"
    for template, ops in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path):
            methods = {m.upper() for m in ops} | ({"HEAD"} if "get" in ops else set())
            return ", ".join(sorted(methods))
    return None


api.add_middleware(RequireKey)


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: Settings, tagger, graph=None, search: list | None = None, rules=None):
        from actors.keys import Keys, redis_client

        self.settings, self.tagger, self.graph = settings.model_copy(deep=True), tagger, graph
        self.search_shards = list(search or [])  # deployments/search.py, one handle per shard
        self.rules = rules  # deployments/rules.py: bound so that it runs with the app (the ingress never calls it)
        self.keys = Keys(settings.redis.prefix)
        self.redis = redis_client(settings.redis.url, asyncio=True)
        self.sync_redis = redis_client(settings.redis.url)  # what runs in a thread: /metrics, actors.control
        self.page = PAGE.read_text() if PAGE.is_file() else "<h1>videobert-stream</h1>"
        self.model: dict | None = None  # {"id", "name", "hash"} of the model the tagger serves (/readyz)
        seats = Seats(settings.api.max_sse_clients)  # live clients of both feeds, together
        self.live = LiveHub(self.redis, self.keys.live("*"), seats)
        self.hub = EventHub(self.redis, self.keys, seats, settings.api.page_limit)  # GET /v1/events
        self.raw_redis = redis_client(settings.redis.url, asyncio=True, decode=False)  # bytes: the JPEG snapshots
        self.reconfigure({"keys": settings.api.keys, "auth_health": settings.api.auth_health,
                          "auth_metrics": settings.api.auth_metrics})

    def reconfigure(self, config: dict) -> None:
        """Live settings (Serve user_config): API keys and what they guard, changed without a restart."""
        from deployments import auth  # the module itself: Serve may have copied this class, not that module

        auth.configure(auth.Auth(tuple(config.get("keys", [])), bool(config.get("auth_health", False)),
                                 bool(config.get("auth_metrics", False))))

    async def _running_of(self, client: str) -> int:
        """How many streams queued with this client's key have not ended (the most recent ones: bounded)."""
        ids = await self.redis.zrevrange(self.keys.streams, 0, 9_999)
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(self.keys.stream(sid), "status", "client")
        return sum(1 for status, c in await pipe.execute()
                   if c == client and status is not None and not StreamStatus(status).terminal)

    async def _stream(self, stream_id: str) -> StreamState:
        if not valid_stream_id(stream_id):
            raise ApiError(404, "not_found", f"no stream {stream_id!r}")
        h = await self.redis.hgetall(self.keys.stream(stream_id))
        if not h:
            raise ApiError(404, "not_found", f"no stream {stream_id!r}")
        return StreamState.from_hash(stream_id, h)

    # -- streams -------------------------------------------------------------------------------------
    @api.post("/v1/streams", status_code=202, response_model=StreamAccepted, summary="Queue a stream",
              responses={202: {"links": STREAM_LINKS},
                         **errors(409, 422, 429, 503, s422="a URL the policy refuses (refused_*), label sets the model "
                                                           "cannot tag with (bad_options), TLS it cannot verify "
                                                           "(tls_error)")})
    async def create_stream(self, body: StreamRequest, request: Request):
        try:  # the checks the supervisor would make, answered now instead of as a failed stream later
            job = body.to_job()
            await asyncio.to_thread(control.admit, job, self.settings.url_policy)
        except control.Refused as e:
            raise ApiError(422, e.reason.value, str(e)) from None
        except ValueError as e:  # a template whose [MASK]s do not fit its label sets (StreamRequest.to_job)
            raise ApiError(422, "bad_options", str(e)) from None
        client = request.state.client
        limit = self.settings.api.max_streams_per_key
        if client != "anonymous" and limit:
            running = await self._running_of(client)
            if running >= limit:
                raise ApiError(429, "too_many_streams", f"this API key runs {running} streams, the most it may; "
                                                        "stop one or wait for one to end", headers={"Retry-After": "30"})
            job = job.model_copy(update={"client": client})
        if job.stream_id:
            st = await asyncio.to_thread(control.state, self.sync_redis, self.keys, job.stream_id)
            if st is not None and not st.status.terminal:
                raise ApiError(409, "conflict", f"stream {job.stream_id!r} is {st.status.value}; stop it first or use "
                                                "another id")
        done = await asyncio.to_thread(control.submit, self.sync_redis, self.keys, job)
        sid = done.stream_id
        return StreamAccepted(stream_id=sid, entry=done.entry, status=StreamStatus.queued.value,
                              links={"self": f"/v1/streams/{sid}", "tags": f"/v1/streams/{sid}/tags",
                                     "events": f"/v1/streams/{sid}/events"})

    @api.get("/v1/streams", response_model=StreamPage, summary="List streams, newest first",
             responses=errors(422, 503))
    async def list_streams(self, request: Request, offset: int = Query(0, ge=0, le=MAX_OFFSET),
                           limit: int = Query(50, ge=1, description="at most the service's page_limit are given"),
                           status: StreamStatus | None = None):
        limit = min(limit, self.settings.api.page_limit)
        total = await self.redis.zcard(self.keys.streams)
        if status is None:
            ids = await self.redis.zrevrange(self.keys.streams, offset, offset + limit - 1)
        else:  # filtered: walk the newest streams (bounded) and page over the matches
            ids = await self.redis.zrevrange(self.keys.streams, 0, 9_999)
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self.keys.stream(sid))
        rows = [StreamState.from_hash(sid, h).public() for sid, h in zip(ids, await pipe.execute()) if h]
        for r in rows:
            r.pop("latest")
        if status is not None:
            rows = [r for r in rows if r.get("status") == status.value]
            total = len(rows)
            rows = rows[offset: offset + limit]
        return {"streams": rows, "offset": offset, "limit": limit, "total": total}

    @api.get("/v1/streams/{stream_id}", response_model=StreamView, response_model_exclude_unset=True,
             summary="A stream's state", responses=errors(404, 503))
    async def get_stream(self, stream_id: str, request: Request):
        return (await self._stream(stream_id)).public()

    @api.delete("/v1/streams/{stream_id}", status_code=202, response_model=StreamStopped, summary="Stop a stream",
                description="Stops the stream: 202 while it stops (within a heartbeat), 200 when it had already ended. "
                            "A stopped stream is not removed: its state (status `stopped`) and its tags stay readable "
                            "until ended streams expire, and the same id can be queued again.",
                responses={200: {"model": StreamStopped, "description": "it had already ended: how"},
                           **errors(404, 503)})
    async def stop_stream(self, stream_id: str, request: Request):
        st = await asyncio.to_thread(control.request_stop, self.sync_redis, self.keys, stream_id)
        if st is None:
            raise ApiError(404, "not_found", f"no stream {stream_id!r}")
        if st.status.terminal:
            return JSONResponse({"stream_id": stream_id, "status": st.status.value}, status_code=200)
        return {"stream_id": stream_id, "status": "stopping"}

    @api.get("/v1/streams/{stream_id}/tags", response_model=TagPage, response_model_exclude_unset=True,
             summary="A stream's tags, oldest first", responses=errors(404, 422, 503))
    async def get_tags(self, stream_id: str, request: Request,
                       since: float | None = Query(None, ge=0, le=MAX_STREAM_SECONDS, allow_inf_nan=False,
                                                   description="only clips starting after this many seconds"),
                       limit: int = Query(100, ge=1, description="at most the service's page_limit are given")):
        from actors.sink import entry_id

        await self._stream(stream_id)
        limit = min(limit, self.settings.api.page_limit)
        start = f"({entry_id(since)}" if since is not None else "-"
        entries = await self.redis.xrange(self.keys.tags(stream_id), min=start, count=limit)
        tags = [{"id": eid, **TagResult.model_validate_json(f["data"]).to_dict()} for eid, f in entries]
        return {"stream_id": stream_id, "tags": tags, "next_since": tags[-1]["t0"] if tags else since}

    @api.get("/v1/streams/{stream_id}/summary", response_model=SummaryPage, summary="A stream's summary",
             responses=errors(404, 422, 503))
    async def summary(self, stream_id: str, request: Request,
                      since: float | None = Query(None, ge=0, le=MAX_STREAM_SECONDS, allow_inf_nan=False,
                                                  description="only clips starting after this many seconds"),
                      until: float | None = Query(None, ge=0, le=MAX_STREAM_SECONDS, allow_inf_nan=False,
                                                  description="only clips starting before this many seconds"),
                      min_clips: int = Query(1, ge=1, le=100, description="a run of fewer clips with other tags "
                                                                          "is a flicker: it joins the segment before "
                                                                          "(1: none is; the shapes world's actions "
                                                                          "can last one clip)")):
        """Consecutive clips with the same top label in every slot, merged into segments (t0, t1, labels, mean score,
        the subtitle lines they overlap), each told as the stream's template filled with its labels."""
        from actors.sink import entry_id
        from videobert.summary import summarise

        st = await self._stream(stream_id)
        start = f"({entry_id(since)}" if since is not None else "-"
        end = f"({entry_id(until)}" if until is not None else "+"
        entries = await self.redis.xrange(self.keys.tags(stream_id), min=start, max=end, count=SUMMARY_MAX_CLIPS + 1)
        truncated = len(entries) > SUMMARY_MAX_CLIPS
        tags = []
        for _, f in entries[:SUMMARY_MAX_CLIPS]:
            try:
                tags.append(TagResult.model_validate_json(f.get("data", "")))
            except ValidationError:
                continue  # not a tag (written by hand): the summary is of the tags
        segments = summarise(tags, StreamOptions.template_of(st.options), min_clips=min_clips)
        return {"stream_id": stream_id, "segments": [g.to_dict() for g in segments], "clips": len(tags),
                "truncated": truncated}

    @api.get("/v1/search", response_model=SearchPage, summary="Search every stream's clips by text",
             responses=errors(422, 503, s503="search is off in this service's config (search_off), or an index "
                                                  "shard does not answer"))
    async def search(self, request: Request,
                     q: str = Query(..., min_length=1, max_length=512, pattern=r"\S",
                                    description="what to look for, in words"),
                     k: int = Query(10, ge=1, description="hits wanted; at most the service's search.max_k"),
                     stream: str | None = Query(None, pattern=STREAM_ID_PATTERN, description="only this stream's clips"),
                     since: float | None = Query(None, ge=0, allow_inf_nan=False,
                                                 description="only clips tagged at or after this time (Unix seconds)"),
                     until: float | None = Query(None, ge=0, allow_inf_nan=False,
                                                 description="only clips tagged at or before this time (Unix seconds)")):
        """Clips of every stream ranked by the cosine of their embedding in the encoder's joint space with the
        query's text embedding (what `vbs eval encoder` measures as text-to-clip retrieval)."""
        if not self.search_shards:
            raise ApiError(503, "search_off", "search is off in this service's config ([search] enabled = false)")
        k = min(k, self.settings.search.max_k)
        try:
            vector = await asyncio.wait_for(self.search_shards[0].embed.remote(q), 30)
            answers = await asyncio.wait_for(asyncio.gather(
                *(s.query.remote(vector, k, stream, since, until) for s in self.search_shards)), 30)
        except Exception as e:  # noqa: BLE001 - a shard away is the service's trouble, said as such
            raise ApiError(503, "search_unavailable", f"the search index does not answer ({type(e).__name__})",
                           headers={"Retry-After": "5"}) from None
        hits = sorted((h for a in answers for h in a["hits"]), key=lambda h: -h["score"])[:k]
        running = {}
        if hits:
            pipe = self.redis.pipeline(transaction=False)
            names = list(dict.fromkeys(h["stream_id"] for h in hits))
            for sid in names:
                pipe.hget(self.keys.stream(sid), "status")
            running = {sid: st is not None and not StreamStatus(st).terminal
                       for sid, st in zip(names, await pipe.execute())}
        for h in hits:
            sid = h["stream_id"]
            h["links"] = {"stream": f"/v1/streams/{sid}", "tags": f"/v1/streams/{sid}/tags?since={max(h['t0'] - 0.001, 0)}",
                          "snapshot": f"/v1/streams/{sid}/snapshot.jpg" if running.get(sid) else None}
        return {"query": q, "hits": hits, "indexed": sum(a["clips"] for a in answers),
                "complete": all(a["complete"] for a in answers)}

    def _too_many(self, e: Full) -> ApiError:
        return ApiError(503, "too_many_clients", f"this replica serves {self.settings.api.max_sse_clients} live "
                                                 f"clients at most ({e}); try again shortly", headers={"Retry-After": "5"})

    @api.get("/v1/streams/{stream_id}/events", response_class=StreamingResponse, summary="A stream's live events",
             responses={200: {"content": sse_content(("status", "tag")), "description": "status and tag events"},
                        **errors(404, 503, s503="too many live clients on this replica (too_many_clients)")})
    async def events(self, stream_id: str, request: Request):
        """Server-sent events of one stream: `status` (with `reason` and `error`), then `tag` events whose `id:` is
        the tag's entry id; a reconnect with Last-Event-ID gets the tags written since (deployments/live.py)."""
        await self._stream(stream_id)
        channel = self.keys.live(stream_id)
        try:
            queue = self.live.join(channel)
        except Full as e:
            raise self._too_many(e) from None
        try:  # the state is read after joining: nothing committed in between is missed
            first = (await self._stream(stream_id)).public()
        except BaseException:
            self.live.leave(channel, queue)
            raise

        async def feed():
            try:
                async for text in stream_feed(self.redis, self.keys, stream_id, first, queue,
                                              request.headers.get("last-event-id"), request.is_disconnected,
                                              self.settings.api.page_limit):
                    yield text
            finally:
                self.live.leave(channel, queue)

        return StreamingResponse(feed(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.get("/v1/events", response_class=StreamingResponse, summary="Every stream's live events, resumable",
             responses={200: {"content": sse_content(("status", "tag", "rule", "ready", "reset")),
                              "description": "status and tag events of every stream, and the rules that fired"},
                        **errors(503, s503="too many live clients on this replica (too_many_clients)")})
    async def all_events(self, request: Request):
        """Server-sent events of every stream in one feed (a page opens one EventSource): `status` (with `reason`
        and `error`), `tag` and `rule` (a rule that fired, as its webhook gets it) events, each naming its
        `stream_id`, each with `id:` set to its entry id in
        vbs:events; a reconnect with Last-Event-ID resumes from there and loses nothing (deployments/live.py)."""
        try:
            client = self.hub.join()
        except Full as e:
            raise self._too_many(e) from None
        # ?last_event_id= for a new EventSource, which sends no Last-Event-ID (the header, when sent, is newer)
        since = request.headers.get("last-event-id") or request.query_params.get("last_event_id")

        async def feed():
            try:
                async for text in self.hub.feed(client, since, request.is_disconnected):
                    yield text
            finally:
                self.hub.leave(client)

        return StreamingResponse(feed(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.get("/v1/streams/{stream_id}/snapshot.jpg", response_class=Jpeg, summary="A stream's latest picture",
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the last frame of the latest clip"},
                        **errors(404, 503, s404="or no picture of it yet (no_snapshot, with Retry-After)")})
    async def snapshot(self, stream_id: str, request: Request):
        """The last frame of the stream's latest clip as a small JPEG. Asking marks the stream watched for a few
        seconds: thumbnails are made only while someone asks (at most once a second), so the first answer may be
        404 (actors/snapshot.py)."""
        from actors.snapshot import WATCH_TTL_S

        if not valid_stream_id(stream_id) or not await self.redis.exists(self.keys.stream(stream_id)):
            raise ApiError(404, "not_found", f"no stream {stream_id!r}")
        pipe = self.raw_redis.pipeline(transaction=False)
        pipe.set(self.keys.watched(stream_id), b"1", ex=WATCH_TTL_S)
        pipe.get(self.keys.snapshot(stream_id))
        _, jpeg = await pipe.execute()
        if not jpeg:
            raise ApiError(404, "no_snapshot", f"no picture of stream {stream_id!r} yet: one is made from its next clip "
                                               "while someone asks for it", headers={"Retry-After": "1"})
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    # -- on-demand tagging ---------------------------------------------------------------------------
    @api.post("/v1/tag", response_model=UploadTags, response_model_exclude_unset=True, summary="Tag a short clip",
              openapi_extra={"requestBody": {"required": True, "description": "the video file's bytes", "content": {
                  media: {"schema": {"type": "string", "format": "binary"}}
                  for media in ("application/octet-stream", "video/*")}}},
              responses=errors(413, 422, 503, s422="an empty body (empty_body), bytes that are no video "
                                                   "(unreadable_video), a clip shorter than one clip (too_short), "
                                                   "label sets the model cannot tag with (bad_labels)"))
    async def tag(self, request: Request, template: str | None = Query(None, max_length=512),
                  labels: str | None = Query(None, description='JSON: {"slot": ["word", ...]}')):
        limit = self.settings.api.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "too_large", f"upload of {declared} bytes exceeds the limit of {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "too_large", f"upload exceeds the limit of {limit} bytes")
        if not body:
            raise ApiError(422, "empty_body", "send the video clip as the request body")
        try:
            label_set = LabelSet.of(template, json.loads(labels) if labels else None)
        except (ValueError, TypeError) as e:  # not JSON, not slot -> words, or no fit with the template
            why = e.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(e, ValidationError) else str(e)
            raise ApiError(422, "bad_labels", f"labels must be a JSON object of slot -> words: {why}"[:400]) from e
        result = await self.tagger.tag.remote(bytes(body), label_set, self.settings.api.max_upload_seconds)
        if "error" in result:
            err = result["error"]
            raise ApiError(err["status"], err["code"], err["message"])
        return result

    # -- health, metrics, page -----------------------------------------------------------------------
    @api.get("/healthz", response_model=Health, summary="Alive", responses=errors(503))
    async def healthz(self, request: Request):
        return {"ok": True}

    @api.get("/readyz", response_model=Readiness, summary="Ready: Redis, the model and the graph answer",
             responses={503: {"model": Readiness | ErrorBody,
                              "description": "not ready (which check failed), or starting (not_ready)"}})
    async def readyz(self, request: Request):
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(await asyncio.wait_for(self.redis.ping(), 3))
        except Exception as e:  # noqa: BLE001
            checks["redis"] = False
            checks["redis_error"] = type(e).__name__
        try:
            ready = await asyncio.wait_for(self.tagger.ready.remote(), 5)
            checks["model"] = ready["model"]
            self.model = ready.get("model_id") or self.model  # the model's identity, kept for when it stops answering
        except Exception as e:  # noqa: BLE001
            checks["model"] = False
            checks["model_error"] = type(e).__name__
        try:
            beat = await self.redis.get(self.keys.supervisor) if checks["redis"] else None
            checks["graph"] = beat is not None and time.time() - float(beat) < 3 * self.settings.supervisor.lease_s
        except Exception:  # noqa: BLE001
            checks["graph"] = False
        ok = checks["redis"] and checks["model"] and checks["graph"]
        body: dict[str, Any] = {"ready": ok, "checks": checks, "model": self.model, "version": VERSION}
        if checks["redis"]:  # where the graph runs: each pool and each replica's node and device
            try:
                raw = await self.redis.get(self.keys.graph)
                view = json.loads(raw) if raw else None
                body["graph"] = {"pools": view["pools"], "replicas": view["replicas"]} if view else None
            except Exception:  # noqa: BLE001 - the checks above say what matters
                body["graph"] = None
        return JSONResponse(body, status_code=200 if ok else 503)

    @api.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of the whole pipeline",
             responses=errors(503))
    async def metrics(self, request: Request):
        from actors.metrics import CONTENT_TYPE, render

        text = await asyncio.to_thread(render, self.sync_redis, self.keys)
        return Response(text, media_type=CONTENT_TYPE)

    @api.get("/", response_class=HTMLResponse, summary="The live page", responses=errors(503))
    async def page(self):
        return HTMLResponse(self.page)


def build_app(settings: Settings, with_graph: bool = False):
    """The Serve application: the ingress bound to a tagger deployment with the configured autoscaling (and,
    with_graph, a deployment that runs the streaming graph too)."""
    t = settings.tagger
    tagger = Tagger.options(
        autoscaling_config={"min_replicas": t.min_replicas, "max_replicas": t.max_replicas,
                            "target_ongoing_requests": t.target_ongoing_requests},
        ray_actor_options={"num_cpus": t.num_cpus, "num_gpus": t.num_gpus},
    ).bind(settings.model_dir, t, settings.device, settings.decoder.context_clips, settings.minilm_dir,
           settings.decoder.max_frame_pixels)
    api = settings.api
    live = {"keys": list(api.keys), "auth_health": api.auth_health, "auth_metrics": api.auth_metrics}
    quiet = settings.model_copy(deep=True)
    quiet.api.keys = []  # the keys travel as user_config (reconfigure), so changing them restarts nothing
    graph = GraphKeeper.bind(settings) if with_graph else None
    search = None
    if settings.search.enabled:
        from deployments.search import SearchShard

        n = settings.search.shards
        search = [SearchShard.options(name="search" if n == 1 else f"search-{i}",
                                      ray_actor_options={"num_cpus": settings.search.num_cpus}).bind(quiet, i, n)
                  for i in range(n)]
    rules = None
    if settings.rules.enabled:
        from deployments.rules import Rules

        rules = Rules.options(ray_actor_options={"num_cpus": settings.rules.num_cpus}).bind(quiet)
    # every live (SSE) client is a request in flight for as long as it listens: Serve's default of 5 at a time
    # per replica would queue the sixth client and every request after it
    return Ingress.options(ray_actor_options={"num_cpus": 0}, user_config=live,
                           max_ongoing_requests=api.max_sse_clients + MAX_OTHER_REQUESTS).bind(quiet, tagger, graph,
                                                                                              search, rules)


def app_builder(args: dict):
    """For `serve run` / `serve deploy` (see ops/serve.yaml): args config, model, redis_url."""
    settings = Settings.load(args.get("config"), model_dir=args.get("model"), redis_url=args.get("redis_url"))
    return build_app(settings, with_graph=bool(args.get("graph", True)))


@serve.deployment(name="graph", num_replicas=1, ray_actor_options={"num_cpus": 0})
class GraphKeeper:
    """For `serve run` / `serve deploy`: keeps the streaming graph (supervisor, decoders, model actors)
    running as long as the application is deployed. `vbs up` starts the graph itself instead."""

    def __init__(self, settings: Settings):
        from actors.graph import start_graph

        self.graph = start_graph(settings)

    def check_health(self) -> None:
        import ray

        ray.get(self.graph.supervisor.ready.remote(), timeout=30)

    def __del__(self):
        graph = getattr(self, "graph", None)
        if graph is not None:
            graph.stop()
