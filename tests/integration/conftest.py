"""Integration fixtures: one local Ray per test session, real Redis (127.0.0.1:6379, every run under its own
key prefix), the small trained model of tests/conftest.py, and one streaming graph shared by the tests."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from schemas.config import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"


# Serve's proxy gets 5 s by default to say it is ready: on a busy 2-core machine it can take longer, and every
# Serve test then errors at set-up. The controller reads this when Ray starts its processes (they inherit it).
RAY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}


@pytest.fixture(scope="session")
def ray_local():
    import os

    import ray

    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(num_cpus=8, include_dashboard=False, namespace=f"vbs-tests-{uuid.uuid4().hex[:6]}",
             configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def graph_settings(model_dir: Path, media_root: Path, prefix: str) -> Settings:
    return Settings.model_validate({
        "model_dir": str(model_dir),
        "redis": {"url": REDIS_URL, "prefix": prefix},
        "url_policy": {"media_root": str(media_root), "allow_loopback": True},
        "decoder": {"replicas": 2, "num_cpus": 0.5, "open_timeout_s": 4, "read_timeout_s": 4, "watchdog_s": 8,
                    "max_in_flight": 2, "reconnect_initial_s": 0.2, "reconnect_max_s": 1.0, "max_reconnects": 2},
        "video_encoder": {"num_cpus": 1, "max_wait_ms": 5},
        "language": {"num_cpus": 0.25, "max_wait_ms": 2},
        "fusion": {"num_cpus": 1, "max_wait_ms": 5},
        "speech": {"num_cpus": 0.5, "max_wait_ms": 2},
        "supervisor": {"heartbeat_s": 0.5, "lease_s": 4.0, "poll_ms": 100},
    })


def write_config(path: Path, *, prefix: str, media_root: Path, redis_url: str | None = REDIS_URL,
                 **sections: dict) -> Path:
    """The TOML config of a test that runs `vbs up`: its Redis (None: none named, so that the commands find it
    another way), key prefix and media root (loopback allowed), one decoder, and `sections` on top, e.g.
    supervisor={"lease_s": 4.0}. Checked by Settings.load as the service would read it."""
    tables: dict[str, dict] = {"redis": {**({"url": redis_url} if redis_url else {}), "prefix": prefix},
                               "url_policy": {"media_root": str(media_root), "allow_loopback": True},
                               "decoder": {"replicas": 1, "num_cpus": 0.5}}
    for name, fields in sections.items():
        tables[name] = {**tables.get(name, {}), **fields}

    def toml(v) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v) if isinstance(v, str) else repr(v)

    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in fields.items())
                            for name, fields in tables.items()))
    Settings.load(path)
    return path


@pytest.fixture(scope="session")
def media(trained_model) -> Path:
    """The media root: the trained model's directory (its held-out videos are the file streams)."""
    return trained_model


@pytest.fixture
def keys():
    """Keys under a prefix of this test's own on the shared Redis, every key of it deleted afterwards."""
    from actors.keys import Keys, redis_client

    k = Keys(f"vbsk{uuid.uuid4().hex[:8]}")
    yield k
    r = redis_client(REDIS_URL)
    for key in r.scan_iter(f"{k.prefix}:*"):
        r.delete(key)


@pytest.fixture
def env(keys):
    """(a client of the shared Redis, this test's own keys): what a StreamRunner run by hand needs."""
    from actors.keys import redis_client

    return redis_client(REDIS_URL), keys


@pytest.fixture(scope="session")
def graph(ray_local, trained_model, media):
    from actors.graph import start_graph
    from actors.keys import redis_client

    prefix = f"vbstest{uuid.uuid4().hex[:8]}"
    settings = graph_settings(trained_model, media, prefix)
    g = start_graph(settings)
    yield g
    g.stop()
    r = redis_client(REDIS_URL)
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)


class Streams:
    """Test-side view of the graph through Redis only, as a user sees it."""

    def __init__(self, settings: Settings):
        from actors.keys import Keys, redis_client

        self.r = redis_client(settings.redis.url)
        self.keys = Keys(settings.redis.prefix)

    def push(self, url: str, stream_id: str | None = None, **fields) -> str:
        job = {"url": url, **({"stream_id": stream_id} if stream_id else {}),
               **{k: (json.dumps(v) if k == "options" else v) for k, v in fields.items()}}
        return self.r.xadd(self.keys.ingest, job)

    def status(self, sid: str) -> dict:
        return self.r.hgetall(self.keys.stream(sid))

    def wait(self, sid: str, statuses: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.status(sid)
            if h.get("status") in statuses:
                return h
            time.sleep(0.1)
        raise AssertionError(f"stream {sid} not in {statuses} after {timeout} s: {self.status(sid)}")

    def tags(self, sid: str) -> list[tuple[str, dict]]:
        return [(eid, json.loads(f["data"])) for eid, f in self.r.xrange(self.keys.tags(sid))]

    def wait_tags(self, sid: str, n: int, timeout: float = 60) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.tags(sid)
            if len(t) >= n:
                return t
            time.sleep(0.1)
        raise AssertionError(f"stream {sid}: {len(self.tags(sid))} tags after {timeout} s, wanted {n}: {self.status(sid)}")

    def dead(self) -> list[dict]:
        return [f for _, f in self.r.xrange(self.keys.dead)]

    def pending(self) -> set[str]:
        return {p["message_id"] for p in self.r.xpending_range(self.keys.ingest, self.keys.group, "-", "+", 1000)}

    def stop(self, sid: str) -> None:
        self.r.hset(self.keys.stream(sid), "stop", 1)


@pytest.fixture(scope="session")
def streams(graph) -> Streams:
    return Streams(graph.settings)


API_KEY = "test-key-5f1c"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own on a free loopback port (for tests that restart, fill or kill Redis):
    a context manager that gives its URL; `restart()` stops it and starts it again on the same port."""

    def __init__(self, directory: Path, *args: str, persist: bool = False):
        self.dir, self.port, self.proc = Path(directory), free_port(), None
        # persist: an append-only file written at every write, so that a restart keeps everything
        self.args = (*(("--appendonly", "yes", "--appendfsync", "always") if persist else ("--appendonly", "no")), *args)

    def start(self) -> str:
        import shutil
        import subprocess

        import redis

        self.proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(self.port),
                                      "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir), *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=1).ping():
                    return self.url
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Service:
    """The HTTP service of the session's graph, over real HTTP."""

    def __init__(self, base: str, settings: Settings):
        import requests

        self.base, self.settings = base, settings
        self.http = requests.Session()
        self.auth = {"Authorization": f"Bearer {API_KEY}"}

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str, key: bool = True, **kw):
        return self.http.get(self.url(path), headers=self.auth if key else {}, timeout=60, **kw)

    def post(self, path: str, key: bool = True, **kw):
        return self.http.post(self.url(path), headers={**(self.auth if key else {}), **kw.pop("headers", {})},
                              timeout=120, **kw)

    def delete(self, path: str, key: bool = True):
        return self.http.delete(self.url(path), headers=self.auth if key else {}, timeout=60)

    def configure(self, **api) -> None:
        """Redeploy with other API settings: only the ingress's user_config changes (reconfigure, no restart)."""
        from ray import serve

        from deployments.app import build_app

        s = self.settings.model_copy(deep=True)
        for k, v in api.items():
            setattr(s.api, k, v)
        serve.run(build_app(s), name="vbs", route_prefix="/", blocking=False)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        import requests

        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.http.get(self.url("/readyz"), headers=self.auth, timeout=10)
                if last.status_code == 200:
                    return
            except requests.RequestException as e:
                last = e
            time.sleep(0.5)
        raise AssertionError(f"service not ready after {timeout} s: {getattr(last, 'text', last)}")


@pytest.fixture(scope="session")
def service(graph) -> Service:
    """Ray Serve on a free port with the ingress and tagger of the session's graph; API keys on."""
    from ray import serve

    from deployments.app import build_app

    port = free_port()
    settings = graph.settings.model_copy(deep=True)
    settings.api.keys = [API_KEY]
    settings.tagger.batch_wait_timeout_s = 0.5  # concurrent uploads land in one batch
    settings.tagger.max_replicas = 1
    settings.api.max_sse_clients = 6  # small, so that a test can reach the limit
    settings.api.max_streams_per_key = 3
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings), name="vbs", route_prefix="/", blocking=False)
    svc = Service(f"http://127.0.0.1:{port}", settings)
    svc.wait_ready()
    yield svc
    serve.shutdown()


