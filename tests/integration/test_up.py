"""`vbs up` as a user runs it: a subprocess with its own local Ray; `vbs push` queues streams; Ctrl-C stops
cleanly and leaves a running live stream queued (not half-owned); the next `vbs up` resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.conftest import Streams, graph_settings
from bench.sources import UdpSender

pytestmark = pytest.mark.slow


def start_up(config, model, ready):
    ready.unlink(missing_ok=True)
    p = subprocess.Popen([sys.executable, "-m", "ops.cli", "up", "--config", str(config), "--model", str(model),
                          "--num-cpus", "6", "--ready-file", str(ready)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ})
    deadline = time.monotonic() + 240
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"vbs up did not start:\n{p.stdout.read()[-3000:]}")
        time.sleep(0.5)
    return p


def interrupt(p) -> str:
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("vbs up did not stop within 60 s of Ctrl-C")
    assert p.returncode == 0, out[-3000:]
    return out


def test_vbs_up_push_stop_and_resume(trained_model, tmp_path):
    prefix = f"vbsup{uuid.uuid4().hex[:6]}"
    s = graph_settings(trained_model, trained_model, prefix)
    config = tmp_path / "config.toml"
    config.write_text(f'''
[redis]
url = "{s.redis.url}"
prefix = "{prefix}"
[url_policy]
media_root = "{trained_model}"
allow_loopback = true
[decoder]
replicas = 1
num_cpus = 0.5
[supervisor]
heartbeat_s = 0.5
lease_s = 4.0
''')
    streams = Streams(s)
    ready = tmp_path / "ready"
    video = sorted((trained_model / "data" / "heldout").glob("*.mp4"))[0]
    try:
        with UdpSender(video, loop=True, reencode=True) as udp:
            # given the service, when a user queues a file and a live stream with `vbs push`
            p = start_up(config, trained_model, ready)
            out = subprocess.run([sys.executable, "-m", "ops.cli", "push", str(video), "--id", "up-file",
                                  "--config", str(config)], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and json.loads(out.stdout)["stream_id"] == "up-file", out.stderr
            subprocess.run([sys.executable, "-m", "ops.cli", "push", udp.url, "--id", "up-live", "--config", str(config)],
                           check=True, capture_output=True, timeout=60)
            # then both are tagged
            assert streams.wait("up-file", {"finished", "failed"}, timeout=120)["status"] == "finished"
            before = streams.wait_tags("up-live", 3, timeout=90)
            # when Ctrl-C: the service stops cleanly and the live stream is queued again, its job pending
            text = interrupt(p)
            assert "stopping" in text and f"{prefix}:ingest" in text
            assert "(dashboard: http://127.0.0.1:" in text, "the Ray dashboard is on (serve status needs it)"
            h = streams.status("up-live")
            assert h["status"] == "queued" and h["owner"] == "" and h["entry"] in streams.pending(), h
            n = len(streams.tags("up-live"))
            # when the service starts again: the live stream resumes, later clips only, none twice
            p = start_up(config, trained_model, ready)
            after = streams.wait_tags("up-live", n + 3, timeout=120)
            interrupt(p)
        t0s = [r["t0"] for _, r in after]
        assert t0s == sorted(set(t0s)) and t0s[: len(before)] == [r["t0"] for _, r in before]
    finally:
        for key in streams.r.scan_iter(f"{prefix}:*"):
            streams.r.delete(key)
