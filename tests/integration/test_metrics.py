"""Pipeline metrics (actors/metrics.py) against a real Redis: recorders -> Redis hash -> Prometheus text,
checked by promtool and scraped by a real Prometheus server; plus the Grafana dashboard's queries."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.keys import Keys, redis_client
from actors.metrics import BY_NAME, CONTENT_TYPE, METRICS, Metrics, render

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rk():
    """A Redis client and Keys under a prefix of this test's own; its keys are deleted afterwards."""
    r = redis_client(REDIS_URL)
    keys = Keys(f"vbsmetrics{uuid.uuid4().hex[:8]}")
    yield r, keys
    for k in r.scan_iter(f"{keys.prefix}:*"):
        r.delete(k)


def samples(text: bytes) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(s: dict, name: str, **labels) -> float:
    return s[(name, frozenset(labels.items()))]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install prometheus (bash ops/setup.sh does, with apt-get)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- recorder -> Redis -> text -----------------------------------------------------------------------------
def test_round_trip(rk):
    r, keys = rk
    m = Metrics(r, keys)
    m.inc("vbs_pipeline_clips_tagged_total", 5)
    m.inc("vbs_pipeline_clips_tagged_total")
    m.inc("vbs_decoder_frames_decoded_total", 96)
    for x in (0.003, 0.02, 0.02, 0.3, 7.0):  # buckets .005 .025 .025 .5 +Inf
        m.observe("vbs_stage_latency_seconds", x, stage="fusion")
    m.observe("vbs_stage_latency_seconds", 0.01, stage="language")  # le=0.01 exactly: in the 0.01 bucket
    m.observe("vbs_stage_batch_size", 3, stage="video_encoder")
    m.observe("vbs_tag_latency_seconds", 1.2)
    assert m.flush() and m.pending() == {}
    # what the sink's Lua scripts and the supervisor write into the counters hash
    r.hincrby(keys.counters, "failures:not_found", 2)
    r.hincrby(keys.counters, "failures:refused_blocked_address", 1)
    r.hincrby(keys.counters, "streams_finished", 4)
    r.hincrby(keys.counters, "streams_failed", 3)
    r.hincrby(keys.counters, "reclaims", 1)

    s = samples(render(r, keys))
    assert val(s, "vbs_pipeline_clips_tagged_total") == 6
    assert val(s, "vbs_decoder_frames_decoded_total") == 96
    assert val(s, "vbs_decoder_clips_dropped_total") == 0  # never incremented, still exposed
    assert val(s, "vbs_decoder_reconnects_total") == 0
    fusion = {le: val(s, "vbs_stage_latency_seconds_bucket", stage="fusion", le=le)
              for le in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "+Inf")}
    assert list(fusion.values()) == [1, 1, 3, 3, 3, 3, 4, 4, 4, 4, 5]  # cumulative
    assert val(s, "vbs_stage_latency_seconds_count", stage="fusion") == 5
    assert val(s, "vbs_stage_latency_seconds_sum", stage="fusion") == pytest.approx(7.343)
    assert val(s, "vbs_stage_latency_seconds_bucket", stage="language", le="0.005") == 0
    assert val(s, "vbs_stage_latency_seconds_bucket", stage="language", le="0.01") == 1
    assert val(s, "vbs_stage_latency_seconds_count", stage="video_encoder") == 0  # declared stage, no data yet
    assert val(s, "vbs_stage_batch_size_bucket", stage="video_encoder", le="2.0") == 0
    assert val(s, "vbs_stage_batch_size_bucket", stage="video_encoder", le="4.0") == 1
    assert val(s, "vbs_stage_batch_size_sum", stage="video_encoder") == 3
    assert val(s, "vbs_tag_latency_seconds_bucket", le="1.0") == 0
    assert val(s, "vbs_tag_latency_seconds_bucket", le="1.5") == 1
    assert val(s, "vbs_failures_total", reason="not_found") == 2
    assert val(s, "vbs_failures_total", reason="refused_blocked_address") == 1
    assert val(s, "vbs_streams_ended_total", status="finished") == 4
    assert val(s, "vbs_streams_ended_total", status="failed") == 3
    assert val(s, "vbs_streams_ended_total", status="stopped") == 0
    assert val(s, "vbs_supervisor_reclaims_total") == 1
    assert val(s, "vbs_up") == 1
    # no series carries a stream id, and every family is declared
    names = {n for n, _ in s}
    assert all(re.sub(r"_(bucket|sum|count)$", "", n) in BY_NAME for n in names)
    assert not any("stream_id" in dict(lbl) for _, lbl in s)


def test_empty_prefix_renders_every_declared_series(rk):
    r, keys = rk
    s = samples(render(r, keys))
    assert val(s, "vbs_pipeline_clips_tagged_total") == 0
    assert val(s, "vbs_supervisor_reclaims_total") == 0
    assert val(s, "vbs_ingest_backlog") == 0 and val(s, "vbs_ingest_pending") == 0
    assert val(s, "vbs_tag_latency_seconds_count") == 0
    assert {dict(lbl)["status"] for n, lbl in s if n == "vbs_streams"} == {
        "queued", "starting", "running", "reconnecting", "finished", "failed", "stopped"}
    families = {f.name for f in text_string_to_metric_families(render(r, keys).decode())}
    assert {m.name.removesuffix("_total") for m in METRICS} <= families
    assert CONTENT_TYPE.startswith("text/plain")


def test_gauges_from_redis(rk):
    r, keys = rk
    statuses = {"a": "running", "b": "running", "c": "queued", "d": "finished", "e": "reconnecting"}
    for i, (sid, st) in enumerate(statuses.items()):
        r.hset(keys.stream(sid), mapping={"stream_id": sid, "status": st})
        r.zadd(keys.streams, {sid: 1000 + i})
    r.zadd(keys.streams, {"gone": 999})  # listed, hash already deleted: not counted
    for i in range(7):
        r.xadd(keys.ingest, {"url": f"file:///v{i}.mp4"})
    r.xgroup_create(keys.ingest, keys.group, id="0")
    read = r.xreadgroup(keys.group, "supervisor", {keys.ingest: ">"}, count=3)
    r.xack(keys.ingest, keys.group, read[0][1][0][0])  # one of the three streams is over

    s = samples(render(r, keys))
    assert val(s, "vbs_streams", status="running") == 2
    assert val(s, "vbs_streams", status="queued") == 1
    assert val(s, "vbs_streams", status="finished") == 1
    assert val(s, "vbs_streams", status="reconnecting") == 1
    assert val(s, "vbs_streams", status="failed") == 0
    assert val(s, "vbs_ingest_backlog") == 4
    assert val(s, "vbs_ingest_pending") == 2

    # lag becomes unknown (null) after an entry is deleted from the middle of the unread part: entries-read
    # arithmetic no longer applies either, so the bounded count of entries after last-delivered-id answers
    ids = [e for e, _ in r.xrange(keys.ingest)]
    r.xdel(keys.ingest, ids[5])
    s = samples(render(r, keys))
    assert val(s, "vbs_ingest_backlog") == 3


def test_ingest_without_group_is_all_backlog(rk):
    r, keys = rk
    for i in range(3):
        r.xadd(keys.ingest, {"url": f"file:///v{i}.mp4"})
    s = samples(render(r, keys))
    assert val(s, "vbs_ingest_backlog") == 3 and val(s, "vbs_ingest_pending") == 0


def test_two_recorders_add_up(rk):
    r, keys = rk
    a, b = Metrics(r, keys), Metrics(r, keys)  # as two decoder actors on two nodes would
    a.inc("vbs_pipeline_clips_tagged_total", 3)
    b.inc("vbs_pipeline_clips_tagged_total", 4)
    a.observe("vbs_stage_batch_size", 8, stage="fusion")
    b.observe("vbs_stage_batch_size", 8, stage="fusion")
    b.observe("vbs_stage_batch_size", 300, stage="fusion")
    a.flush(), b.flush()
    a.inc("vbs_pipeline_clips_tagged_total", 1)  # a second flush adds the new delta only
    a.flush()
    a.flush()
    s = samples(render(r, keys))
    assert val(s, "vbs_pipeline_clips_tagged_total") == 8
    assert val(s, "vbs_stage_batch_size_bucket", stage="fusion", le="8.0") == 2
    assert val(s, "vbs_stage_batch_size_bucket", stage="fusion", le="256.0") == 2
    assert val(s, "vbs_stage_batch_size_bucket", stage="fusion", le="+Inf") == 3
    assert val(s, "vbs_stage_batch_size_count", stage="fusion") == 3
    assert val(s, "vbs_stage_batch_size_sum", stage="fusion") == 316


def test_flusher_thread_and_close(rk):
    r, keys = rk
    m = Metrics(r, keys).start(interval_s=0.05)
    m.inc("vbs_decoder_reconnects_total", 2)
    deadline = time.monotonic() + 5
    while m.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.pending() == {} and m.flushes >= 1
    m.inc("vbs_decoder_clips_dropped_total", 3)
    assert m.close()
    s = samples(render(r, keys))
    assert val(s, "vbs_decoder_reconnects_total") == 2 and val(s, "vbs_decoder_clips_dropped_total") == 3


def test_redis_down_keeps_deltas(rk, caplog):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r, keys = rk
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))  # nothing listens there; no retries (they take seconds)
    m = Metrics(down, keys)
    m.inc("vbs_pipeline_clips_tagged_total", 2)
    m.observe("vbs_tag_latency_seconds", 0.7)
    t = time.monotonic()
    assert m.flush() is False and m.flush() is False  # logged, not raised
    assert time.monotonic() - t < 5
    assert m.flush_errors == 2 and "metrics flush failed" in caplog.text
    m.inc("vbs_pipeline_clips_tagged_total", 1)  # recorded while Redis is down
    assert m.pending()["vbs_pipeline_clips_tagged_total|"] == 3
    m.redis = r  # Redis is back
    assert m.flush() and m.pending() == {}
    s = samples(render(r, keys))
    assert val(s, "vbs_pipeline_clips_tagged_total") == 3
    assert val(s, "vbs_tag_latency_seconds_bucket", le="1.0") == 1 and val(s, "vbs_tag_latency_seconds_count") == 1


def test_render_raises_when_redis_is_down():
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        render(down, Keys("vbsmetricsdown"))


@pytest.mark.parametrize("call", [
    lambda m: m.inc("vbs_no_such_metric_total"),
    lambda m: m.inc("vbs_pipeline_clips_tagged_total", stream_id="s1"),  # no per-stream labels
    lambda m: m.inc("vbs_pipeline_clips_tagged_total", 1.5),  # counts are whole
    lambda m: m.inc("vbs_pipeline_clips_tagged_total", -1),
    lambda m: m.inc("vbs_failures_total", reason="not_found"),  # written by the Lua scripts, not recorders
    lambda m: m.inc("vbs_stage_latency_seconds", stage="fusion"),  # a histogram
    lambda m: m.observe("vbs_stage_latency_seconds", 0.1),  # missing its label
    lambda m: m.observe("vbs_stage_latency_seconds", 0.1, stage="decoder"),  # not a stage
    lambda m: m.observe("vbs_pipeline_clips_tagged_total", 1),  # a counter
    lambda m: m.observe("vbs_tag_latency_seconds", float("nan")),
])
def test_bad_records_raise(rk, call):
    r, keys = rk
    m = Metrics(r, keys)
    with pytest.raises(ValueError):
        call(m)
    assert m.pending() == {}


def test_declarations_are_clean():
    for m in METRICS:
        assert re.fullmatch(r"vbs_[a-z0-9_]+", m.name), m.name
        assert m.type in ("counter", "histogram", "gauge") and m.help
        assert m.name.endswith("_total") == (m.type == "counter"), m.name
        assert "stream_id" not in m.labels and "le" not in m.labels
        assert (m.type == "histogram") == bool(m.buckets)
        assert list(m.buckets) == sorted(set(m.buckets))
    assert len(BY_NAME) == len(METRICS)


# -- promtool and a real Prometheus ------------------------------------------------------------------------
def test_promtool_check_metrics(rk, tmp_path):
    r, keys = rk
    m = Metrics(r, keys)
    m.inc("vbs_pipeline_clips_tagged_total", 3)
    m.observe("vbs_stage_latency_seconds", 0.2, stage="video_encoder")
    m.observe("vbs_tag_latency_seconds", 2.2)
    m.flush()
    r.hincrby(keys.counters, "failures:stalled", 1)
    r.hincrby(keys.counters, "streams_stopped", 1)
    out = tmp_path / "metrics.txt"
    out.write_bytes(render(r, keys))
    with out.open("rb") as f:
        p = subprocess.run([tool("promtool"), "check", "metrics"], stdin=f, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "" and p.stderr.strip() == "", p.stdout + p.stderr  # no lint warnings either


@contextlib.contextmanager
def serve_metrics(r, keys):
    """render() at http://127.0.0.1:<port>/metrics from a thread; yields 'host:port'."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = render(r, keys)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def run_prometheus(target_host_port: str, tmp_path: Path, metrics_path: str = "/metrics", timeout: float = 60):
    """A real Prometheus server scraping `target_host_port` every second (job "vbs"). Yields a function
    `query(promql) -> list of results` (the instant-query API's data.result). Killed on exit."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: vbs
    metrics_path: {metrics_path}
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["{target_host_port}"]
""")
    log_path = tmp_path / "prometheus.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([tool("prometheus"), f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--log.level=warn"], stdout=log_file, stderr=subprocess.STDOUT)
        try:
            def query(promql: str) -> list:
                url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = json.load(resp)
                assert body["status"] == "success", body
                return body["data"]["result"]

            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"prometheus not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield query
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_for_value(query, promql: str, want: float, timeout: float = 40) -> float:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        result = query(promql)
        if result:
            last = float(result[0]["value"][1])
            if last == want:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{promql}: {last} after {timeout} s, wanted {want}")


@pytest.mark.slow
def test_real_prometheus_scrapes_render(rk, tmp_path):
    r, keys = rk
    m = Metrics(r, keys)
    m.inc("vbs_pipeline_clips_tagged_total", 42)
    m.observe("vbs_tag_latency_seconds", 0.8)
    m.flush()
    r.hincrby(keys.counters, "failures:not_found", 2)
    with serve_metrics(r, keys) as target, run_prometheus(target, tmp_path) as query:
        assert wait_for_value(query, "vbs_pipeline_clips_tagged_total", 42) == 42
        assert wait_for_value(query, 'vbs_failures_total{reason="not_found"}', 2) == 2
        assert wait_for_value(query, 'up{job="vbs"}', 1) == 1
        m.inc("vbs_pipeline_clips_tagged_total", 8)  # a later increase reaches Prometheus too
        m.flush()
        assert wait_for_value(query, "vbs_pipeline_clips_tagged_total", 50) == 50


# -- ops files ---------------------------------------------------------------------------------------------
def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "ops" / "grafana" / "vbs-dashboard.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))

    walk(dash["panels"])
    assert dash["schemaVersion"] >= 36 and any(i["name"] == "DS_PROMETHEUS" for i in dash["__inputs"])
    return exprs


def test_dashboard_queries_use_declared_metrics(tmp_path):
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used = set()
    for e in exprs:
        for name in re.findall(r"vbs_[a-z_]+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in BY_NAME, f"{name} in {e!r} is not declared in actors.metrics.METRICS"
            used.add(base)
    wanted = {"vbs_streams", "vbs_pipeline_clips_tagged_total", "vbs_decoder_frames_decoded_total",
              "vbs_tag_latency_seconds", "vbs_stage_latency_seconds", "vbs_stage_batch_size",
              "vbs_decoder_clips_dropped_total", "vbs_decoder_reconnects_total", "vbs_failures_total",
              "vbs_ingest_backlog"}
    assert wanted <= used, wanted - used
    # every query parses as PromQL: promtool checks them as recording rules (Grafana's $__ variables filled in)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"vbs:dashboard_{i}", "expr": e.replace("$__rate_interval", "1m")} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    p = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ops_prometheus_config_is_valid():
    p = subprocess.run([tool("promtool"), "check", "config", str(ROOT / "ops" / "prometheus.yml")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_batch_being_written_is_still_pending_until_it_is_in_redis(rk):
    # pending() read {} while a flush's batch was on its way and before `flushes` counted it: a reader that
    # waited for nothing pending saw no flush (the clean-clone CI's failure of test_flusher_thread_and_close)
    import threading
    import types

    r, keys = rk
    m = Metrics(r, keys)
    m.inc("vbs_decoder_reconnects_total", 2)
    gate = threading.Event()

    class SlowPipeline:  # injects a slow write: execute waits for the gate
        def __init__(self, p):
            self.p = p

        def __getattr__(self, name):
            return getattr(self.p, name)

        def execute(self):
            gate.wait(5)
            return self.p.execute()

    m.redis = types.SimpleNamespace(pipeline=lambda transaction=True: SlowPipeline(r.pipeline(transaction=transaction)))
    t = threading.Thread(target=m.flush)
    t.start()
    time.sleep(0.3)
    assert m.pending() == {"vbs_decoder_reconnects_total|": 2} and m.flushes == 0
    gate.set()
    t.join(5)
    assert m.pending() == {} and m.flushes == 1
    assert val(samples(render(r, keys)), "vbs_decoder_reconnects_total") == 2
