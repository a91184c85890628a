"""Ray's fake multi-node autoscaling cluster on one machine, for the cluster tests and bench.autoscale: a head
started with `--autoscaling-config` under RAY_FAKE_CLUSTER=1, whose autoscaler "launches" worker nodes of the
configured types as extra raylets on this machine (a fake GPU is only a resource: torch sees no CUDA there).

Why not `ray.cluster_utils.AutoscalingCluster` itself (ray 2.60):
- its `start()` and `shutdown()` run `ray stop --force`, which ends every Ray on the machine (another test
  session's, a benchmark's); this cluster runs under a temp dir of its own and stops only its own processes
  (every process whose command line names that dir: the head's, and the worker raylets the fake provider starts,
  which share the head's session dir);
- it reads `fake_multi_node/example.yaml`, which the wheel lacks: the base config is written here;
- its GCS takes port 6379, Redis's here: the head gets a free port, and the provider its address (without
  `provider.gcs_address` the fake worker raylets dial 6379 and never join)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.sources import free_port

HEAD_TYPE = "ray.head.default"
# a killed node is declared dead after about 5 s instead of Ray's 30 (its raylet's health checks fail)
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                          "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}


def _ray_exe() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else "ray"


class FakeCluster:
    """`FakeCluster(head_resources, worker_node_types)`; `start()`, then `ray.init(address=c.address)`;
    `shutdown()` at the end (or use it as a context manager). Worker types as Ray's cluster config has them:
    `{"gpu_model": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}}`."""

    def __init__(self, head_resources: dict, worker_node_types: dict, idle_timeout_s: float = 10,
                 max_workers: int = 8, port: int | None = None, system_config: dict | None = None):
        self.head_resources = dict(head_resources)
        self.worker_node_types = json.loads(json.dumps(worker_node_types))
        self.idle_timeout_s, self.max_workers = idle_timeout_s, max_workers
        self.port = port or free_port()
        self.system_config = FAST_FAILURE_DETECTION if system_config is None else system_config
        self.temp_dir: str | None = None
        self.address = ""
        self.dashboard_url = ""

    # -- the config ---------------------------------------------------------------------------------------
    def config(self, ip: str) -> dict:
        types = {**self.worker_node_types,
                 HEAD_TYPE: {"resources": dict(self.head_resources), "node_config": {}, "max_workers": 0}}
        return {"cluster_name": f"vbs-fake-{self.port}", "max_workers": self.max_workers,
                "upscaling_speed": 1.0, "idle_timeout_minutes": self.idle_timeout_s / 60,
                "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                             "disable_launch_config_check": True, "gcs_address": f"{ip}:{self.port}"},
                "head_node_type": HEAD_TYPE, "available_node_types": types,
                "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
                "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
                "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
                "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}

    # -- start and stop -----------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> "FakeCluster":
        import ray

        ip = ray.util.get_node_ip_address()
        self.temp_dir = tempfile.mkdtemp(prefix="vbsfc", dir="/tmp")  # short: Ray's socket paths have a limit
        cfg = Path(self.temp_dir) / "autoscaling.json"
        cfg.write_text(json.dumps(self.config(ip)))
        res = dict(self.head_resources)
        dash = free_port()
        cmd = [_ray_exe(), "start", "--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
               f"--autoscaling-config={cfg}", f"--num-cpus={res.pop('CPU', 0)}", f"--num-gpus={res.pop('GPU', 0)}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
               "--disable-usage-stats"]
        if res:
            cmd.append(f"--resources={json.dumps(res)}")
        if self.system_config:
            cmd.append(f"--system-config={json.dumps(self.system_config, separators=(',', ':'))}")
        # token authentication (ray start's default in 2.60) off: a driver started by ray.init() has none, and
        # this cluster lives on this machine only, for one test session
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=timeout)
        self.address, self.dashboard_url = f"{ip}:{self.port}", f"http://127.0.0.1:{dash}"
        return self

    def _own_pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir (or its GCS port, for the workers)."""
        pids = []
        needles = [self.temp_dir.encode(), f":{self.port}".encode()] if self.temp_dir else []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if any(n in cmd for n in needles):
                pids.append(int(d.name))
        return pids

    def shutdown(self, timeout: float = 20) -> None:
        """Stop every process of this cluster (and nothing else), then remove its temp dir."""
        if self.temp_dir is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout / 2), (signal.SIGKILL, timeout / 2)):
            for pid in self._own_pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while self._own_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.temp_dir = None

    def __enter__(self) -> "FakeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- looking at it (from a driver connected to it) ----------------------------------------------------
    def type_of(self, node: dict) -> str:
        """A node's type, told by its resources: the worker type whose own resources (GPU, custom) it has."""
        res = node.get("Resources", {})
        for name, t in self.worker_node_types.items():
            marks = {k for k in t["resources"] if k != "CPU"}
            if marks and marks <= set(res):
                return name
        return "head" if "node:__internal_head__" in res else "worker"

    def nodes(self) -> list[dict]:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def node_types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes():
            t = self.type_of(n)
            out[t] = out.get(t, 0) + 1
        return out

    def kill_node(self, node_id: str) -> int:
        """Kill a worker node's raylet (and so the node): returns how many processes got SIGKILL."""
        killed = 0
        for pid in self._own_pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"raylet" in cmd and node_id.encode() in cmd:
                os.kill(pid, signal.SIGKILL)
                killed += 1
        return killed
