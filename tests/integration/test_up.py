"""`vbs up` as a user runs it: a subprocess with its own local Ray; `vbs push` queues streams; Ctrl-C stops
cleanly and leaves a running live stream queued (not half-owned); the next `vbs up` resumes it. The client
commands of a second terminal (push, status, tags, stop) find the service through the run file `vbs up` writes:
its Redis is named only on `vbs up`'s command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import RedisServer, Streams, graph_settings, write_config
from bench.sources import UdpSender

pytestmark = pytest.mark.slow


def start_up(config, model, ready, *extra, env=None, log: Path | None = None):
    """`vbs up` in a session of its own; its output goes to `log` (a pipe nobody reads could fill and block it)."""
    ready.unlink(missing_ok=True)
    out = open(log, "a") if log else subprocess.PIPE
    p = subprocess.Popen([sys.executable, "-m", "ops.cli", "up", "--config", str(config), "--model", str(model),
                          "--num-cpus", "6", "--ready-file", str(ready), *extra], stdout=out,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env or {**os.environ})
    deadline = time.monotonic() + 240
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"vbs up did not start:\n{log.read_text()[-3000:] if log else p.stdout.read()[-3000:]}")
        time.sleep(0.5)
    return p


def interrupt(p, log: Path | None = None) -> str:
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("vbs up did not stop within 60 s of Ctrl-C")
    out = log.read_text() if log else out
    assert p.returncode == 0, out[-3000:]
    return out


def test_vbs_up_push_stop_and_resume(trained_model, tmp_path):
    prefix = f"vbsup{uuid.uuid4().hex[:6]}"
    media = tmp_path / "media"
    media.mkdir()
    video = shutil.copy(sorted((trained_model / "data" / "heldout").glob("*.mp4"))[0], media)
    (media / "bad.mp4").write_bytes(b"not a video at all")
    # no Redis in the config: `vbs up` is given one on its command line, the other commands are not
    config = write_config(tmp_path / "config.toml", prefix=prefix, media_root=media, redis_url=None,
                          supervisor={"heartbeat_s": 0.5, "lease_s": 4.0})
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"VBS_STATE_DIR": str(state)}

    def vbs(*args, check=True):
        r = subprocess.run([sys.executable, "-m", "ops.cli", *map(str, args), "--config", str(config)],
                           capture_output=True, text=True, timeout=60, env=env)
        assert not check or r.returncode == 0, f"vbs {' '.join(map(str, args))}: {r.stderr}"
        return r

    ready, log = tmp_path / "ready", tmp_path / "up.log"
    (tmp_path / "redis").mkdir()
    with RedisServer(tmp_path / "redis") as url, UdpSender(Path(video), loop=True, reencode=True) as udp:
        s = graph_settings(trained_model, media, prefix)
        s.redis.url = url
        streams = Streams(s)
        # given the service, its Redis named on its command line only
        p = start_up(config, trained_model, ready, "--redis-url", url, env=env, log=log)
        run = json.loads((state / "up.json").read_text())
        assert run["pid"] == p.pid and run["redis_url"] == url and run["prefix"] == prefix, run
        # when a user queues a corrupt file, a file and a live stream with `vbs push` from another terminal
        vbs("push", media / "bad.mp4", "--id", "up-bad")
        out = vbs("push", video, "--id", "up-file")
        assert json.loads(out.stdout)["stream_id"] == "up-file"
        vbs("push", udp.url, "--id", "up-live")
        # then they reach the service's own Redis, and the file is tagged
        assert streams.wait("up-file", {"finished", "failed"}, timeout=120)["status"] == "finished"
        assert streams.wait("up-bad", {"failed"}, timeout=60)
        # `vbs tags` prints what the sink wrote, `vbs status` the typed state
        written = streams.tags("up-file")
        printed = [json.loads(line) for line in vbs("tags", "up-file", "--json").stdout.splitlines()]
        assert [(x.pop("id"), x) for x in printed] == written
        assert len(vbs("tags", "up-file").stdout.splitlines()) == len(written)
        row = json.loads(vbs("status", "up-file", "--latest").stdout)
        assert row["clips_tagged"] == len(written) and isinstance(row["latest"], dict), row
        before = streams.wait_tags("up-live", 3, timeout=90)
        # when Ctrl-C: the service stops cleanly and the live stream is queued again, its job pending
        text = interrupt(p, log)
        assert "stopping" in text and f"{prefix}:ingest" in text
        assert "(dashboard: http://127.0.0.1:" in text, "the Ray dashboard is on (serve status needs it)"
        assert "stream up-bad: failed" in text, "an actor's warning reaches the terminal of vbs up"
        assert "assigned to" not in text, "an actor's info line does not, without -v"
        assert not (state / "up.json").exists(), "a clean stop removes the run file"
        h = streams.status("up-live")
        assert h["status"] == "queued" and h["owner"] == "" and h["entry"] in streams.pending(), h
        n = len(streams.tags("up-live"))
        # when the service starts again (`vbs up ... -v`, the flag after the subcommand): the live stream resumes,
        # later clips only, none twice
        p = start_up(config, trained_model, ready, "--redis-url", url, "-v", env=env, log=log)
        after = streams.wait_tags("up-live", n + 3, timeout=120)
        # and `vbs stop` from the other terminal ends it; `vbs tags --follow` ends with it
        assert "stop requested" in vbs("stop", "up-live").stdout
        followed = vbs("tags", "up-live", "--follow", "--json")
        assert "up-live: stopped" in followed.stderr
        assert streams.status("up-live")["status"] == "stopped"
        assert [json.loads(line)["id"] for line in followed.stdout.splitlines()] == [e for e, _ in
                                                                                    streams.tags("up-live")]
        text = interrupt(p, log)
        assert "assigned to" in text, "with -v the actors' info lines reach the terminal too"
    t0s = [r["t0"] for _, r in after]
    assert t0s == sorted(set(t0s)) and t0s[: len(before)] == [r["t0"] for _, r in before]
