"""`vbs up`: Redis (given, or a local redis-server started for the session), Ray (local, or joined with
--address), the streaming graph; says where everything is and stops cleanly on Ctrl-C or SIGTERM: the
decoders let go of their streams without ending them, so their jobs stay pending and resume from their
checkpoints on the next start. No stream is left half-owned."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from actors import control
from actors.keys import Keys, redis_client
from ops import runfile
from schemas.config import DEFAULT_REDIS, Settings
from schemas.streams import IngestJob, JobError

log = logging.getLogger("vbs.up")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.toml"
DEMO_ID = "demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Unreachable(Exception):
    """Redis does not answer (refused, timed out, wrong password): the CLI says so in one line and exits 1."""


# a client command waits this long for Redis to accept a connection and for each reply (XREAD BLOCK waits less)
CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 5.0


def quick_client(url: str, *, decode: bool = True):
    """A Redis client for a command run by hand: short timeouts and no retries, so that a Redis that is not there
    is said at once (the service's clients, actors.keys.redis_client, ride out outages instead)."""
    return redis_client(url, decode=decode, retries=0, connect_timeout_s=CONNECT_TIMEOUT_S, timeout_s=REPLY_TIMEOUT_S)


def why(e: BaseException) -> str:
    """A Redis error as one line."""
    return " ".join(str(e).split()) or type(e).__name__


def _reachable(url: str) -> bool:
    import redis

    try:
        with quick_client(url) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


class LocalRedis:
    """A redis-server of our own on a free loopback port, nothing on disk; stopped with the service."""

    def __init__(self):
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("no Redis at 127.0.0.1:6379 and no redis-server to start one: install redis-server "
                                    "or pass --redis-url")
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="vbs-redis-")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while not _reachable(self.url):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the local redis-server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def given_redis(settings: Settings) -> bool:
    """Whether the settings name a Redis (--redis-url, REDIS_URL or the config's redis.url), not the default."""
    return "url" in settings.redis.model_fields_set


def resolve_redis(settings: Settings) -> tuple[str, LocalRedis | None]:
    """The Redis of `vbs up`: the one given (--redis-url, else REDIS_URL, else the config's redis.url: Settings.load),
    which must answer; else 127.0.0.1:6379 if it answers; else a redis-server of our own."""
    from actors.url_policy import redact

    if given_redis(settings):
        url = settings.redis.url
        if not _reachable(url):
            raise Unreachable(f"cannot reach Redis at {redact(url)} (given by --redis-url, REDIS_URL or the config's "
                              "redis.url): start it, or name another")
        return url, None
    if _reachable(DEFAULT_REDIS):
        return DEFAULT_REDIS, None
    local = LocalRedis()
    return local.url, local


def config_path(args) -> Path | None:
    """The config file every command reads: --config, else ops/config.toml."""
    if getattr(args, "config", None):
        return Path(args.config)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def actor_logs_quiet() -> None:
    """Ray's worker_process_setup_hook for `vbs up`: actors and replicas log warnings and errors."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def actor_logs_all() -> None:
    """The same for `vbs -v up`: everything from INFO up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(args) -> int:
    import ray

    from actors.graph import start_graph
    from actors.url_policy import redact

    config = config_path(args)
    settings = Settings.load(config, model_dir=args.model, redis_url=args.redis_url)
    url, local = resolve_redis(settings)
    settings.redis.url = url
    from videobert.checkpoint import ModelPaths

    ModelPaths.of(settings.model_dir)  # a clear error now rather than in every actor
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    graph = demo = None
    try:
        from actors.cluster import model_on_every_node, runtime_env

        # joining a cluster: the code travels to every node as the job's working_dir; the dashboard (and with it
        # `serve status`, `ray status` and the job's logs) is on either way. The actors' logs come to this terminal:
        # their warnings and errors, or everything with -v (a setup hook sets each worker's log level)
        hook = {"worker_process_setup_hook": f"ops.up.{'actor_logs_all' if args.verbose else 'actor_logs_quiet'}"}
        joined = dict(runtime_env={**runtime_env(settings.minilm_dir), **hook}) if args.address else dict(
            num_cpus=args.num_cpus, dashboard_host="127.0.0.1", runtime_env=hook)
        ctx = ray.init(address=args.address, namespace="vbs", include_dashboard=True, log_to_driver=True,
                       configure_logging=False, **joined)
        if args.address:
            missing = [n for n, ok in model_on_every_node(settings.model_dir).items() if not ok]
            if missing:
                raise ValueError(f"the model directory {settings.model_dir} is missing on {len(missing)} node(s) "
                                 f"({', '.join(m[:12] for m in missing)}): put it on a path every node shares (NFS, "
                                 "a Kubernetes volume) or in the image; see README, Scaling out")
        graph = start_graph(settings)
        keys = Keys(settings.redis.prefix)
        port = args.port or settings.api.port
        start_service(settings, port, verbose=args.verbose)
        page = f"http://{settings.api.host}:{port}/"
        run_file = runfile.write(redis_url=url, redis_shown=redact(url), redis_local=local is not None,
                                 prefix=settings.redis.prefix, http=page.rstrip("/"),
                                 config=str(Path(config).resolve()) if config else None)
        print(f"vbs up: streaming graph running ({len(graph.decoders)} decoder(s); model {settings.model_dir})", flush=True)
        print(f"  redis:   {redact(url)}{' (started for this session)' if local else ''}", flush=True)
        print(f"  ray:     {getattr(ctx, 'address_info', {}).get('address') or args.address or 'local'}"
              f"  (dashboard: {_http(ctx.dashboard_url) or 'off'})", flush=True)
        print(f"  ingest:  redis-cli -u {redact(url)} XADD {keys.ingest} '*' url <URL>   (or: vbs push URL)", flush=True)
        print(f"  tags:    {keys.tags('<id>')} (stream), {keys.stream('<id>')} (status), pub/sub {keys.live('<id>')}",
              flush=True)
        print(f"  http:    {page}  (live page; API under /v1, OpenAPI at /docs, metrics at /metrics)", flush=True)
        if args.demo:
            demo = DemoStream(Path(settings.model_dir), args.demo_port)
            demo.start()
            how = demo.push(redis_client(url), keys)
            print(f"  demo:    live stream 'demo' {how} ({demo.url}, looping {demo.video.name}); watch it at {page}",
                  flush=True)
        print(f"  clients: vbs push / status / tags / stop in another terminal find this service (run file "
              f"{run_file})", flush=True)
        print("  Ctrl-C stops; running streams resume on the next start", flush=True)
        if args.ready_file:
            Path(args.ready_file).write_text(url)
        while not stop.wait(1.0):
            pass
        print("vbs up: stopping", flush=True)
        return 0
    finally:
        runfile.remove()
        if demo is not None:
            demo.stop()
        if ray.is_initialized():
            try:
                from ray import serve

                serve.shutdown()
            except Exception as e:  # noqa: BLE001 - stopping goes on regardless
                log.warning("serve did not shut down cleanly: %s", e)
        if graph is not None:
            graph.stop()
        if ray.is_initialized():
            ray.shutdown()
        if local is not None:
            local.stop()


def _http(address: str | None) -> str:
    """Ray gives the dashboard as host:port; a URL to click."""
    return address if not address or "://" in address else f"http://{address}"


def start_service(settings: Settings, port: int, verbose: bool = False) -> None:
    """Ray Serve on `port`: the ingress (API, metrics, live page) and the on-demand tagger. Serve's own logs
    (its controller, proxy and replicas) say warnings and errors; with `verbose` everything, requests too."""
    from ray import serve

    from deployments.app import build_app

    logs = {"log_level": "INFO" if verbose else "WARNING", "enable_access_log": verbose}
    serve.start(http_options={"host": settings.api.host, "port": port}, logging_config=logs)
    serve.run(build_app(settings), name="vbs", route_prefix="/", blocking=False, logging_config=logs)


class DemoStream:
    """A live demo stream: ffmpeg loops a held-out video of the demo model in real time as MPEG-TS over UDP
    on loopback (re-encoded with a keyframe every second, so the decoder joins at once)."""

    def __init__(self, model_dir: Path, port: int = 55600):
        videos = sorted((model_dir / "data" / "heldout").glob("*.mp4"))
        if not videos or shutil.which("ffmpeg") is None:
            raise FileNotFoundError(f"the demo stream needs ffmpeg and the held-out videos of {model_dir}/data/heldout")
        self.video = max(videos, key=lambda p: p.stat().st_size)
        self.port = port  # fixed, so that a demo stream left queued by Ctrl-C resumes on the next start
        self.url = f"udp://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.video), "-map", "0:v:0",
             "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-threads", "1", "-pix_fmt", "yuv420p",
             "-force_key_frames", "expr:gte(t,n_forced*1)", "-f", "mpegts", f"{self.url}?pkt_size=1316"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def push(self, r, keys: Keys) -> str:
        """Queue the demo as stream 'demo' ("queued"), unless one left queued by an earlier Ctrl-C resumes on the
        same port ("resumed"); a demo still running on another port is stopped first."""
        st = control.state(r, keys, DEMO_ID)
        if st is not None and not st.status.terminal and st.url != self.url:
            control.request_stop(r, keys, DEMO_ID)  # an earlier demo on another port: end it first
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and st is not None and not st.status.terminal:
                time.sleep(0.2)
                st = control.state(r, keys, DEMO_ID)
        if st is None or st.status.terminal:
            control.submit(r, keys, IngestJob(url=self.url, stream_id=DEMO_ID))
            return "queued"
        return "resumed"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def settings_for(args) -> Settings:
    """The settings a client command reads: --config, else ops/config.toml (what `vbs up` reads)."""
    return Settings.load(config_path(args), redis_url=getattr(args, "redis_url", None))


def find_redis(args, settings: Settings) -> tuple[str, str]:
    """The Redis of a client command and where it came from: --redis-url, else REDIS_URL or the config's
    redis.url, else the run file of a running `vbs up`, else 127.0.0.1:6379."""
    if getattr(args, "redis_url", None):
        return settings.redis.url, "given by --redis-url"
    if given_redis(settings):
        return settings.redis.url, "given by REDIS_URL or the config's redis.url"
    run = runfile.read_live()
    if run is None:
        return DEFAULT_REDIS, f"the default; no vbs up is running (no live run file in {runfile.state_dir_from()})"
    if run.redis_url is None:
        raise ValueError(f"the vbs up running as pid {run.pid} uses Redis at {run.redis_shown}, with a password its run "
                         "file does not keep: give it with --redis-url or REDIS_URL")
    if run.prefix != settings.redis.prefix:
        log.warning("the vbs up running as pid %s uses the key prefix %r (config %s); this command reads %r: pass "
                    "--config %s", run.pid, run.prefix, run.config, settings.redis.prefix, run.config or "FILE")
    return run.redis_url, f"of the vbs up running as pid {run.pid}"


def find_api(args, settings: Settings) -> tuple[str, str]:
    """The HTTP service of a client command and where it came from: --api, else the run file of a running `vbs up`,
    else the config's api host and port."""
    if getattr(args, "api", None):
        return args.api.rstrip("/"), "given by --api"
    run = runfile.read_live()
    if run is not None:
        return run.http, f"of the vbs up running as pid {run.pid}"
    return f"http://{settings.api.host}:{settings.api.port}", "the config's api host and port"


def api_get(args, path: str, params: dict) -> dict:
    """GET a route of the service as a client command: the JSON body, the service's own error as ValueError (bad
    input, exit 2), a service that does not answer as Unreachable (exit 1). The API key: --api-key, else the config's
    first."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    settings = settings_for(args)
    base, source = find_api(args, settings)
    key = getattr(args, "api_key", None) or (settings.api.keys[0] if settings.api.keys else None)
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    req = urllib.request.Request(f"{base}{path}?{query}", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            said = f"{err['code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            said = f"HTTP {e.code}"
        if e.code in (401, 403, 404, 409, 413, 422, 429):
            raise ValueError(f"the service at {base} refused: {said}") from None
        raise Unreachable(f"the service at {base} ({source}) failed: {said}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(f"cannot reach the service at {base} ({source}): {why(e)}") from None


def client_for(args):
    """(Redis client, Keys, Settings) of a client command, Redis found by `find_redis` and checked to answer:
    Unreachable at once if it does not."""
    import redis

    from actors.url_policy import redact

    settings = settings_for(args)
    url, source = find_redis(args, settings)
    r = quick_client(url)
    try:
        r.ping()
    except (redis.RedisError, OSError) as e:
        raise Unreachable(f"cannot reach Redis at {redact(url)} ({source}): {why(e)}") from None
    settings.redis.url = url
    return r, Keys(settings.redis.prefix), settings


def push(args) -> int:
    import json

    r, keys, settings = client_for(args)
    fields = {"url": args.url}
    if args.id:
        fields["stream_id"] = args.id
    if args.subtitles:
        fields["subtitles_url"] = args.subtitles
    if args.options:
        fields["options"] = args.options
    try:
        job = IngestJob.from_fields(fields)
    except JobError as e:
        raise ValueError(f"not a valid job: {e.reason}") from e
    try:  # the checks the service would make, answered now
        control.admit(job, settings.url_policy)
    except control.Refused as e:
        raise ValueError(f"refused ({e.reason.value}): {e}") from None
    done = control.submit(r, keys, job)
    print(json.dumps({"entry": done.entry, "stream_id": done.stream_id}))
    if not r.exists(keys.supervisor):
        log.warning("no streaming graph is running under the prefix %r: the stream waits in %s until vbs up runs",
                    keys.prefix, keys.ingest)
    return 0
