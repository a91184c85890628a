"""The client commands of a second terminal against real Redis: they find the service (--redis-url, REDIS_URL or
the config, the run file of a running `vbs up`, 127.0.0.1:6379, in that order), `vbs tags` prints and follows what
the sink wrote, an unknown stream exits 2 and a Redis that does not answer exits 1 at once, each in one line."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from actors.keys import Keys, redis_client
from actors.sink import Sink, entry_id
from ops import runfile
from schemas.state import StreamState, TagResult
from schemas.streams import StreamStatus
from tests.integration.conftest import REDIS_URL, RedisServer, free_port, write_config
from videobert.tagging import ClipScore, tag_result

TOKEN = "tok-test"


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own on a free loopback port: what a `vbs up` started for its session."""
    (tmp_path / "redis").mkdir()
    with RedisServer(tmp_path / "redis") as url:
        yield url


class Terminal:
    """A second terminal: `vbs` in a subprocess with its own state directory, no REDIS_URL unless given, and a
    config naming the test's prefix but no Redis."""

    def __init__(self, tmp_path: Path, prefix: str):
        self.state = tmp_path / "state"
        self.config = write_config(tmp_path / f"{prefix}.toml", prefix=prefix, media_root=tmp_path, redis_url=None)
        self.env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"VBS_STATE_DIR": str(self.state)}

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "ops.cli", *map(str, args), "--config", str(self.config)]

    def run(self, *args, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})

    def popen(self, *args) -> subprocess.Popen:
        # SIGINT as a terminal has it: a runner started in the background (`cmd &` in a script) ignores SIGINT, its
        # children inherit that, and Python then installs no KeyboardInterrupt handler
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def as_vbs_up(directory: Path, url: str, prefix: str) -> Path:
    """The run file a `vbs up` in this process would write (this process is alive, as a running vbs up is)."""
    return runfile.write(redis_url=url, redis_shown=url, redis_local=True, prefix=prefix, http="http://127.0.0.1:1",
                         config=None, directory=directory)


def running_stream(r, keys: Keys, sid: str) -> Sink:
    """A stream as a decoder holds it (its ownership token set), and the sink that writes its tags."""
    r.hset(keys.stream(sid), mapping=StreamState.encode(status=StreamStatus.running, token=TOKEN, live=False,
                                                        created_at=time.time()))
    r.zadd(keys.streams, {sid: time.time()})
    return Sink(r, keys)


def tag(t0: float, verb: str = "grow", subtitle: str = "now let me show you how to grow the circle") -> TagResult:
    score = ClipScore(labels={"verb": [{"label": verb, "score": 0.7}, {"label": "lift", "score": 0.2},
                                       {"label": "drop", "score": 0.1}],
                              "noun": [{"label": "circle", "score": 0.6}, {"label": "star", "score": 0.4}]},
                      alignment=0.8)
    return tag_result(t0, t0 + 1.5, subtitle, score)


# -- finding the service ---------------------------------------------------------------------------------------

def test_push_status_and_stop_find_the_redis_of_a_running_vbs_up(tmp_path, own_redis, keys):
    term = Terminal(tmp_path, keys.prefix)
    r = redis_client(own_redis)
    # given a running `vbs up` whose Redis only its run file names
    as_vbs_up(term.state, own_redis, keys.prefix)
    # when the second terminal pushes, reads and stops a stream, naming no Redis
    out = term.run("push", "udp://127.0.0.1:5000", "--id", "cam-1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stream_id"] == "cam-1"
    # then the job is in that Redis
    assert [f["url"] for _, f in r.xrange(keys.ingest)] == ["udp://127.0.0.1:5000"]
    assert "no streaming graph is running" in out.stderr, "and it says that nothing will take it yet"
    running_stream(r, keys, "cam-1")
    st = term.run("status", "cam-1")
    assert st.returncode == 0 and json.loads(st.stdout)["status"] == "running", st.stderr
    stop = term.run("stop", "cam-1")
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    assert StreamState.from_hash("cam-1", r.hgetall(keys.stream("cam-1"))).stop is True
    # and what is named beats the run file: REDIS_URL (or the config), then --redis-url
    other = term.run("status", "cam-1", env={"REDIS_URL": REDIS_URL})
    assert other.returncode == 2 and "no stream 'cam-1'" in other.stderr, "REDIS_URL's Redis has no such stream"
    named = term.run("status", "cam-1", "--redis-url", own_redis, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert named.returncode == 0, named.stderr
    # and a command reading another prefix than the running vbs up's is told so
    warned = Terminal(tmp_path, "otherprefix").run("status")  # the same state directory, another config
    assert warned.returncode == 0 and f"uses the key prefix {keys.prefix!r}" in warned.stderr, warned.stderr


def test_a_stale_run_file_is_ignored(tmp_path, own_redis, keys):
    term = Terminal(tmp_path, keys.prefix)
    r = redis_client(own_redis)
    running_stream(r, keys, "cam-2")
    path = as_vbs_up(term.state, own_redis, keys.prefix)
    assert term.run("status", "cam-2").returncode == 0
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    path.write_text(json.dumps({**json.loads(path.read_text()), "pid": ended.pid}))  # its vbs up was killed
    out = term.run("status", "cam-2")
    # the default Redis (127.0.0.1:6379) has no such stream under this prefix
    assert out.returncode == 2 and "no stream 'cam-2'" in out.stderr, out.stderr


def test_a_run_file_without_the_password_says_how_to_give_it(tmp_path, own_redis, keys):
    term = Terminal(tmp_path, keys.prefix)
    path = as_vbs_up(term.state, own_redis, keys.prefix)
    path.write_text(json.dumps({**json.loads(path.read_text()), "redis_url": None,
                                "redis_shown": "redis://:***@127.0.0.1:7/0"}))
    out = term.run("status")
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "redis://:***@127.0.0.1:7/0" in out.stderr and "--redis-url or REDIS_URL" in out.stderr


# -- a Redis that does not answer ------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [["push", "udp://127.0.0.1:5000"], ["status"], ["status", "cam"], ["stop", "cam"],
                                 ["tags", "cam", "--follow"], ["status", "--graph"]], ids=lambda c: " ".join(c[:2]))
def test_a_redis_that_refuses_is_one_line_and_exit_1_at_once(tmp_path, cmd):
    term = Terminal(tmp_path, "vbsdown")
    port = free_port()  # nothing listens there
    start = time.monotonic()
    out = term.run(*cmd, "--redis-url", f"redis://127.0.0.1:{port}/0")
    took = time.monotonic() - start
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in out.stderr and "Connection refused" in out.stderr
    assert took < 5, f"{took:.1f} s: it retried"


@pytest.mark.parametrize("cmd", [["push", "udp://127.0.0.1:5000"], ["tags", "cam"]], ids=lambda c: c[0])
def test_a_redis_that_never_answers_is_one_line_and_exit_1_in_seconds(tmp_path, cmd):
    term = Terminal(tmp_path, "vbsmute")
    with socket.socket() as silent:  # accepts connections (the kernel does), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.monotonic()
        out = term.run(*cmd, env={"REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"})
        took = time.monotonic() - start
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and "Timeout" in out.stderr, out.stderr
    assert took < 10, f"{took:.1f} s"


def test_vbs_up_with_a_redis_that_refuses_says_so_before_starting_anything(tmp_path):
    term = Terminal(tmp_path, "vbsdown")
    start = time.monotonic()
    out = term.run("up", "--redis-url", f"redis://:secret@127.0.0.1:{free_port()}/0")
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in out.stderr and "secret" not in out.stderr
    assert time.monotonic() - start < 10 and not runfile.path_in(term.state).exists()


# -- vbs tags and vbs status -----------------------------------------------------------------------------------

def test_vbs_tags_prints_what_the_sink_wrote(tmp_path, keys):
    r = redis_client(REDIS_URL)
    sink = running_stream(r, keys, "cam-3")
    for i, t0 in enumerate((0.0, 1.5, 3.0)):
        assert sink.commit("cam-3", TOKEN, tag(t0, verb=("grow", "lift", "drop")[i]))
    term = Terminal(tmp_path, keys.prefix)
    out = term.run("tags", "cam-3", "--json", "--redis-url", REDIS_URL)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    # the API's items: the entry id and the TagResult as the sink stored it
    assert rows == [{"id": eid, **TagResult.model_validate_json(f["data"]).to_dict()}
                    for eid, f in r.xrange(keys.tags("cam-3"))]
    assert [x["id"] for x in rows] == [entry_id(t) for t in (0.0, 1.5, 3.0)]
    human = term.run("tags", "cam-3", "--redis-url", REDIS_URL).stdout.splitlines()
    assert len(human) == 3
    assert human[0].split() == ["0.00-1.50", "verb:", "grow", "0.70,", "lift", "0.20", "noun:", "circle", "0.60,",
                                "star", "0.40", '"now', "let", "me", "show", "you", "how", "to", "grow", "the",
                                'circle"'], human[0]
    since = term.run("tags", "cam-3", "--json", "--since", "1.5", "--redis-url", REDIS_URL)
    assert [json.loads(line)["t0"] for line in since.stdout.splitlines()] == [3.0], "clips that start after 1.5 s"
    assert term.run("tags", "cam-3", "--since", "3", "--redis-url", REDIS_URL).stdout == ""


def test_vbs_status_prints_typed_values_as_the_api_does(tmp_path, keys):
    """It printed the hash's strings: "clips_tagged": "12", `latest` as a JSON string, "live": "1"."""
    r = redis_client(REDIS_URL)
    sink = running_stream(r, keys, "cam-4")
    sink.commit("cam-4", TOKEN, tag(0.0))
    sink.commit("cam-4", TOKEN, tag(1.5))
    term = Terminal(tmp_path, keys.prefix)
    out = term.run("status", "cam-4", "--latest", "--redis-url", REDIS_URL)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["clips_tagged"] == 2 and row["live"] is False and row["last_t0"] == 1.5, row
    assert row["latest"] == tag(1.5).to_dict() and isinstance(row["created_at"], float)
    assert row == StreamState.from_hash("cam-4", r.hgetall(keys.stream("cam-4"))).public()
    listed = [json.loads(line) for line in term.run("status", "--redis-url", REDIS_URL).stdout.splitlines()]
    assert [x["stream_id"] for x in listed] == ["cam-4"] and listed[0]["clips_tagged"] == 2


@pytest.mark.parametrize("cmd", [["tags", "nope"], ["tags", "nope", "--follow"], ["status", "nope"], ["stop", "nope"],
                                 ["tags", "bad id"]], ids=lambda c: " ".join(c))
def test_an_unknown_stream_is_one_line_and_exit_2(tmp_path, keys, cmd):
    out = Terminal(tmp_path, keys.prefix).run(*cmd, "--redis-url", REDIS_URL)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "no stream" in out.stderr, out.stderr


def _read_lines(p: subprocess.Popen, n: int, timeout: float) -> list[str]:
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    lines, deadline = [], time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
    return lines


def test_vbs_tags_follow_prints_tags_as_they_come_and_ends_with_the_stream(tmp_path, keys):
    r = redis_client(REDIS_URL)
    sink = running_stream(r, keys, "cam-5")
    sink.commit("cam-5", TOKEN, tag(0.0))
    term = Terminal(tmp_path, keys.prefix)
    term.env["REDIS_URL"] = REDIS_URL
    p = term.popen("tags", "cam-5", "--follow", "--json")
    try:
        assert len(_read_lines(p, 1, 30)) == 1, "what was there before"
        sink.commit("cam-5", TOKEN, tag(1.5))
        came = _read_lines(p, 1, 10)
        assert [json.loads(x)["t0"] for x in came] == [1.5], "a new tag, while the stream runs"
        sink.commit("cam-5", TOKEN, tag(3.0))
        sink.finish("cam-5", TOKEN, StreamStatus.finished)
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert [json.loads(x)["t0"] for x in out.splitlines()] == [3.0], "the last one, written just before the end"
    assert err.strip() == "cam-5: finished"


def test_vbs_tags_follow_ends_cleanly_on_ctrl_c(tmp_path, keys):
    r = redis_client(REDIS_URL)
    running_stream(r, keys, "cam-6").commit("cam-6", TOKEN, tag(0.0))
    term = Terminal(tmp_path, keys.prefix)
    term.env["REDIS_URL"] = REDIS_URL
    p = term.popen("tags", "cam-6", "--follow")
    try:
        assert len(_read_lines(p, 1, 30)) == 1
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == 130 and err.strip() == "vbs: interrupted", err


def test_vbs_tags_follows_a_stream_of_the_real_graph_to_its_end(streams, media, tmp_path):
    video = sorted((media / "data" / "heldout").glob("*.mp4"))[0]
    sid = f"cli-{uuid.uuid4().hex[:6]}"
    streams.push(str(video), sid)
    streams.wait(sid, {"queued", "starting", "running", "finished"}, timeout=30)
    config = write_config(tmp_path / "graph.toml", prefix=streams.keys.prefix, media_root=media)
    out = subprocess.run([sys.executable, "-m", "ops.cli", "tags", sid, "--follow", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stderr.strip() == f"{sid}: finished", out.stderr
    assert [(x.pop("id"), x) for x in map(json.loads, out.stdout.splitlines())] == streams.tags(sid)
    assert len(out.stdout.splitlines()) >= 5
