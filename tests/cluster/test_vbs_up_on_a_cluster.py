"""`vbs up --address` joins a running Ray cluster (a head started with `ray start`, as on a real cluster): the
project's code reaches the actors as the job's working_dir (not from this checkout), the dashboard is on, and
`vbs status --graph` and /readyz say where each replica runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from bench.fakecluster import FakeCluster
from bench.sources import free_port
from tests.integration.conftest import Streams, graph_settings, write_config
from tests.integration.test_up import interrupt

pytestmark = pytest.mark.cluster


def test_vbs_up_joins_a_cluster_and_ships_its_code(trained_model, tmp_path):
    prefix = f"vbsjoin{uuid.uuid4().hex[:6]}"
    s = graph_settings(trained_model, trained_model, prefix)
    port = free_port()
    config = write_config(tmp_path / "config.toml", prefix=prefix, media_root=trained_model, redis_url=s.redis.url,
                          api={"port": port})
    ready = tmp_path / "ready"
    with FakeCluster({"CPU": 6}, {}) as head:
        p = subprocess.Popen([sys.executable, "-m", "ops.cli", "up", "--address", head.address, "--config", str(config),
                              "--model", str(trained_model), "--ready-file", str(ready)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ})
        try:
            deadline = time.monotonic() + 300
            while not ready.exists():
                if p.poll() is not None or time.monotonic() > deadline:
                    os.killpg(p.pid, signal.SIGKILL)
                    pytest.fail(f"vbs up --address did not start:\n{p.stdout.read()[-3000:]}")
                time.sleep(0.5)
            streams = Streams(s)
            video = sorted((trained_model / "data" / "heldout").glob("shapes_*.mp4"))[0]
            streams.push(str(video), "joined")
            assert streams.wait("joined", {"finished", "failed"}, timeout=120)["status"] == "finished"
            graph = subprocess.run([sys.executable, "-m", "ops.cli", "status", "--graph", "--config", str(config)],
                                   capture_output=True, text=True, timeout=60)
            assert graph.returncode == 0, graph.stderr
            assert "decoder" in graph.stdout and "video_encoder" in graph.stdout and prefix in graph.stdout
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as r:
                body = json.loads(r.read())
            reps = body["graph"]["replicas"]
            assert {x["pool"] for x in reps} == {"decoder", "video_encoder", "language", "fusion", "speech"}
            here = str(Path(__file__).resolve().parents[2])
            for x in reps:  # the code every replica runs is the job's working_dir, unpacked by Ray
                assert "working_dir_files" in x["code"] and x["code"] != here, x
            with urllib.request.urlopen(head.dashboard_url + "/api/version", timeout=30) as r:
                assert r.status == 200
        finally:
            if p.poll() is None:
                out = interrupt(p)
                assert "dashboard" in out
