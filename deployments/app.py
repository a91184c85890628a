"""The HTTP service: a FastAPI ingress on Ray Serve in front of Redis (the streaming graph's state) and the
on-demand tagger deployment.

    POST   /v1/streams               queue a stream (the same job as XADD vbs:ingest) -> 202
    GET    /v1/streams               streams, newest first, paged, with status
    GET    /v1/streams/{id}          status, counters, last error, latest tags
    DELETE /v1/streams/{id}          stop a stream
    GET    /v1/streams/{id}/tags     results as the sink wrote them (?since=SECONDS&limit=N)
    GET    /v1/streams/{id}/events   server-sent events: status changes and tags, live
    POST   /v1/tag                   tag an uploaded short clip (body: the video bytes)
    GET    /healthz /readyz /metrics /   health, readiness, Prometheus text, the live page

Errors are JSON: {"error": {"code": ..., "message": ...}}. With API keys configured, every /v1 route needs
`Authorization: Bearer KEY` (or `?access_token=KEY`, for EventSource, which cannot send headers)."""


import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors import control
from deployments.auth import RequireKey
from deployments.live import Full, LiveHub
from deployments.tagger import Tagger
from schemas.api import StreamAccepted, StreamRequest
from schemas.config import Settings
from schemas.state import StreamState, TagResult
from schemas.streams import LabelSet, StreamStatus, valid_stream_id

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
MAX_OTHER_REQUESTS = 256  # requests in flight per ingress replica beside its live clients
MAX_STREAM_SECONDS = 1e12  # stream time beyond this is no clip's (a tag's entry id is its t0 in milliseconds)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


api = FastAPI(title="videobert-stream", version="0.1.0",
              description="Live VideoBERT tagging: queue video streams, read their tags live, tag clips on demand.")


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
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return JSONResponse(error_body(code, str(e.detail)), status_code=e.status_code)


api.add_middleware(RequireKey)


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: Settings, tagger, graph=None):
        from actors.keys import Keys, redis_client

        self.settings, self.tagger, self.graph = settings.model_copy(deep=True), tagger, graph
        self.keys = Keys(settings.redis.prefix)
        self.redis = redis_client(settings.redis.url, asyncio=True)
        self.sync_redis = redis_client(settings.redis.url)  # what runs in a thread: /metrics, actors.control
        self.page = PAGE.read_text() if PAGE.is_file() else "<h1>videobert-stream</h1>"
        self.live = LiveHub(self.redis, self.keys.live("*"), settings.api.max_sse_clients)
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
    @api.post("/v1/streams", status_code=202, response_model=StreamAccepted)
    async def create_stream(self, body: StreamRequest, request: Request):
        job = body.to_job()
        try:  # the checks the supervisor would make, answered now instead of as a failed stream later
            await asyncio.to_thread(control.admit, job, self.settings.url_policy)
        except control.Refused as e:
            raise ApiError(422, e.reason.value, str(e)) from None
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

    @api.get("/v1/streams")
    async def list_streams(self, request: Request, offset: int = Query(0, ge=0),
                           limit: int = Query(50, ge=1), status: StreamStatus | None = None):
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

    @api.get("/v1/streams/{stream_id}")
    async def get_stream(self, stream_id: str, request: Request):
        return (await self._stream(stream_id)).public()

    @api.delete("/v1/streams/{stream_id}", status_code=202)
    async def stop_stream(self, stream_id: str, request: Request):
        st = await asyncio.to_thread(control.request_stop, self.sync_redis, self.keys, stream_id)
        if st is None:
            raise ApiError(404, "not_found", f"no stream {stream_id!r}")
        if st.status.terminal:
            return JSONResponse({"stream_id": stream_id, "status": st.status.value}, status_code=200)
        return {"stream_id": stream_id, "status": "stopping"}

    @api.get("/v1/streams/{stream_id}/tags")
    async def get_tags(self, stream_id: str, request: Request,
                       since: float | None = Query(None, ge=0, le=MAX_STREAM_SECONDS, allow_inf_nan=False),
                       limit: int = Query(100, ge=1)):
        from actors.sink import entry_id

        await self._stream(stream_id)
        limit = min(limit, self.settings.api.page_limit)
        start = f"({entry_id(since)}" if since is not None else "-"
        entries = await self.redis.xrange(self.keys.tags(stream_id), min=start, count=limit)
        tags = [{"id": eid, **TagResult.model_validate_json(f["data"]).to_dict()} for eid, f in entries]
        return {"stream_id": stream_id, "tags": tags, "next_since": tags[-1]["t0"] if tags else since}

    @api.get("/v1/streams/{stream_id}/events")
    async def events(self, stream_id: str, request: Request):
        first = (await self._stream(stream_id)).public()
        channel = self.keys.live(stream_id)
        try:
            queue = self.live.join(channel)
        except Full as e:
            raise ApiError(503, "too_many_clients", f"this replica serves {self.settings.api.max_sse_clients} live "
                                                    f"clients at most ({e}); try again shortly",
                           headers={"Retry-After": "5"}) from None

        async def feed():
            try:
                yield f"event: status\ndata: {json.dumps({'status': first['status'], 'stream': first})}\n\n"
                if first.get("latest"):
                    yield f"event: tag\ndata: {json.dumps(first['latest'])}\n\n"
                last_beat = time.monotonic()
                while not await request.is_disconnected():
                    try:
                        data = await asyncio.wait_for(queue.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        if time.monotonic() - last_beat > 15:
                            last_beat = time.monotonic()
                            yield ": keep-alive\n\n"
                        continue
                    ev = json.loads(data)
                    if ev.get("event") == "tag":
                        yield f"event: tag\ndata: {json.dumps(ev['data'])}\n\n"
                    else:
                        yield f"event: status\ndata: {json.dumps({'status': ev.get('status')})}\n\n"
            finally:
                self.live.leave(channel, queue)

        return StreamingResponse(feed(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- on-demand tagging ---------------------------------------------------------------------------
    @api.post("/v1/tag")
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
            raise ApiError(422, "bad_labels", f"labels must be a JSON object of slot -> words: {e}"[:400]) from e
        result = await self.tagger.tag.remote(bytes(body), label_set, self.settings.api.max_upload_seconds)
        if "error" in result:
            err = result["error"]
            raise ApiError(err["status"], err["code"], err["message"])
        return result

    # -- health, metrics, page -----------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self, request: Request):
        return {"ok": True}

    @api.get("/readyz")
    async def readyz(self, request: Request):
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(await asyncio.wait_for(self.redis.ping(), 3))
        except Exception as e:  # noqa: BLE001
            checks["redis"] = False
            checks["redis_error"] = type(e).__name__
        try:
            checks["model"] = (await asyncio.wait_for(self.tagger.ready.remote(), 5))["model"]
        except Exception as e:  # noqa: BLE001
            checks["model"] = False
            checks["model_error"] = type(e).__name__
        try:
            beat = await self.redis.get(self.keys.supervisor) if checks["redis"] else None
            checks["graph"] = beat is not None and time.time() - float(beat) < 3 * self.settings.supervisor.lease_s
        except Exception:  # noqa: BLE001
            checks["graph"] = False
        ok = checks["redis"] and checks["model"] and checks["graph"]
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if checks["redis"]:  # where the graph runs: each pool and each replica's node and device
            try:
                raw = await self.redis.get(self.keys.graph)
                view = json.loads(raw) if raw else None
                body["graph"] = {"pools": view["pools"], "replicas": view["replicas"]} if view else None
            except Exception:  # noqa: BLE001 - the checks above say what matters
                body["graph"] = None
        return JSONResponse(body, status_code=200 if ok else 503)

    @api.get("/metrics")
    async def metrics(self, request: Request):
        from actors.metrics import CONTENT_TYPE, render

        text = await asyncio.to_thread(render, self.sync_redis, self.keys)
        return Response(text, media_type=CONTENT_TYPE)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
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
    # every live (SSE) client is a request in flight for as long as it listens: Serve's default of 5 at a time
    # per replica would queue the sixth client and every request after it
    return Ingress.options(ray_actor_options={"num_cpus": 0}, user_config=live,
                           max_ongoing_requests=api.max_sse_clients + MAX_OTHER_REQUESTS).bind(quiet, tagger, graph)


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
