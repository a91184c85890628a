"""Ray's fake multi-node autoscaling cluster on one machine, for the cluster tests and bench.autoscale: a head
started with `--autoscaling-config` under RAY_FAKE_CLUSTER=1, whose autoscaler "launches" worker nodes of the
configured types as extra raylets on this machine (a fake GPU is only a resource: torch sees no CUDA there).

Why not `ray.cluster_utils.AutoscalingCluster` itself (ray 2.60):
- its `start()` and `shutdown()` run `ray stop --force`, which ends every Ray on the machine. Here `ray start`
  runs in a session (setsid) and temp dir of its own; every process of the cluster stays in that session (GCS,
  raylets, dashboard, autoscaler, the worker raylets its fake provider starts, their agents and workers: Ray
  gives workers process groups, not sessions, of their own), and shutdown stops that session plus what names
  the temp dir. Not the temp dir alone: many processes retitle themselves (ray::IDLE, ray::DashboardAgent,
  ray-dashboard-*Head), and a worker node's agent outlived such a shutdown by a minute. Not by GCS port in
  argv: ":4364" is in another Ray's ":43645";
- it reads `fake_multi_node/example.yaml`, which the wheel lacks: the base config is written here;
- its GCS takes 6379, Redis's here: the head gets a free port, and the provider its address (without
  `provider.gcs_address` the fake worker raylets dial 6379 and never join);
- other `ray start` defaults that another Ray here holds get free ports: the dashboard (8265), the head's
  dashboard-agent HTTP port (52365: taken, the agent runs on without its HTTP server), the client server (10001)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.sources import free_port

HEAD_TYPE = "ray.head.default"  # the fake provider's FAKE_HEAD_NODE_TYPE
# a killed node is declared dead after about 5 s instead of Ray's 30 (its raylet's health checks fail)
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                          "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}


def _psutil():
    import ray  # noqa: F401  psutil is no dependency of ours: Ray ships it in ray/thirdparty_files, which
    import psutil  # `import ray` puts on sys.path

    return psutil


def _running(p) -> bool:  # a killed process stays a zombie until init reaps it, a second or so here
    try:
        return p.is_running() and p.status() != _psutil().STATUS_ZOMBIE
    except _psutil().Error:
        return False


class FakeCluster:
    """`FakeCluster(head_resources, worker_node_types)`; `start()`, then `ray.init(address=c.address)`;
    `shutdown()` at the end (or use it as a context manager). Worker types as Ray's cluster config has them:
    `{"gpu_model": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}}`."""

    def __init__(self, head_resources: dict, worker_node_types: dict, idle_timeout_s: float = 10,
                 max_workers: int = 8, port: int | None = None, system_config: dict | None = None):
        if port == 6379:
            raise ValueError("port 6379 is Redis's on this machine: give another, or None for a free one")
        self.head_resources = dict(head_resources)  # copied: AutoscalingCluster pops CPU/GPU out of the caller's
        self.worker_node_types = json.loads(json.dumps(worker_node_types))
        self.idle_timeout_s, self.max_workers = idle_timeout_s, max_workers
        self.port = port or free_port()
        self.system_config = FAST_FAILURE_DETECTION if system_config is None else system_config
        self.temp_dir: str | None = None
        self.sid: int | None = None  # the session id of every process of this cluster
        self.address = self.dashboard_url = ""

    # -- the config (AutoscalingCluster._generate_config, with example.yaml's base written out) ---------------
    def config(self, ip: str) -> dict:
        types = {**self.worker_node_types,
                 HEAD_TYPE: {"resources": dict(self.head_resources), "node_config": {}, "max_workers": 0}}
        return {"cluster_name": f"vbs-fake-{self.port}", "max_workers": self.max_workers,
                "upscaling_speed": 1.0, "idle_timeout_minutes": self.idle_timeout_s / 60,
                "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                             "disable_launch_config_check": True, "gcs_address": f"{ip}:{self.port}"},
                "head_node_type": HEAD_TYPE, "available_node_types": types,
                "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
                **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                                   "setup_commands", "head_setup_commands", "worker_setup_commands",
                                   "head_start_ray_commands", "worker_start_ray_commands")}}

    # -- start and stop -----------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> "FakeCluster":
        import ray

        ip = ray.util.get_node_ip_address()  # what the fake worker raylets register with, so the head too
        self.temp_dir = tempfile.mkdtemp(prefix="vbsfc", dir="/tmp")  # short: Ray's socket paths have a limit
        cfg = Path(self.temp_dir) / "autoscaling.json"
        cfg.write_text(json.dumps(self.config(ip)))
        res, dash = dict(self.head_resources), free_port()
        ray_exe = Path(sys.executable).with_name("ray")  # the venv's `ray`, not one on PATH
        cmd = [str(ray_exe) if ray_exe.exists() else "ray", "start", "--head", f"--port={self.port}",
               f"--temp-dir={self.temp_dir}", f"--autoscaling-config={cfg}", f"--num-cpus={res.pop('CPU', 0)}",
               f"--num-gpus={res.pop('GPU', 0)}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
               f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]
        if res:
            cmd.append(f"--resources={json.dumps(res)}")
        if self.system_config:
            cmd.append(f"--system-config={json.dumps(self.system_config, separators=(',', ':'))}")
        # AutoscalingCluster's env; and token authentication (ray start's default in 2.60) off: a driver started
        # by ray.init() has none, and this cluster lives on this machine only, for one test session
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
        atexit.register(self.shutdown)  # a crashed test run leaves no cluster behind
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # the session every process of the cluster inherits
        self.sid = proc.pid
        try:
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode:
                raise RuntimeError(f"ray start failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
            self.address, self.dashboard_url = f"{ip}:{self.port}", f"http://127.0.0.1:{dash}"
            self.wait_for(self._dashboard_up, timeout, "the head's dashboard answers")  # after GCS and raylet
        except BaseException:
            self.shutdown()
            raise
        return self

    def _dashboard_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.dashboard_url + "/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def own_processes(self) -> list:
        """psutil.Process (with .info["cmdline"]) of this cluster: in its session, or naming its temp dir, and
        their children; zombies left out (killed, not yet reaped by init: nothing left to stop)."""
        psutil, me = _psutil(), os.getpid()
        if self.sid is None:
            return []
        needle = self.temp_dir + "/" if self.temp_dir else None
        procs = {p.pid: p for p in psutil.process_iter(["cmdline", "status"])
                 if p.pid != me and p.info["status"] != psutil.STATUS_ZOMBIE}
        mine: set[int] = set()
        for pid, p in procs.items():
            try:
                if os.getsid(pid) == self.sid or (needle and any(needle in a for a in p.info["cmdline"] or ())):
                    mine.update([pid, *(c.pid for c in p.children(recursive=True))])
            except (OSError, psutil.Error):
                continue
        return [procs[pid] for pid in sorted(mine) if pid in procs]

    @staticmethod
    def _stop(procs: list, sig: int, wait: float) -> None:
        psutil = _psutil()
        for p in procs:
            try:
                p.send_signal(sig)  # psutil first checks the pid is still that process (no pid reuse)
            except psutil.Error:
                pass
        deadline = time.monotonic() + wait  # not psutil.wait_procs: it waits out zombies (init reaps them late)
        while procs and time.monotonic() < deadline:
            procs = [p for p in procs if _running(p)]
            time.sleep(0.1)

    def shutdown(self, timeout: float = 20) -> None:
        """Stop every process of this cluster (and nothing else), then remove its temp dir."""
        if self.sid is None:
            return
        atexit.unregister(self.shutdown)
        import ray

        if ray.is_initialized() and ray.get_runtime_context().gcs_address.endswith(f":{self.port}"):
            ray.shutdown()  # this process's driver, before its cluster goes
        argv = lambda p: p.info["cmdline"] or [""]  # noqa: E731
        # the autoscaler first, and at once: it would launch nodes for the dying ones, and it sits out SIGTERM
        # for over 10 s; then the raylets, as Ray's own Node.kill_all_processes: a raylet given SIGTERM stops
        # its workers itself
        self._stop([p for p in self.own_processes() if any(a.endswith("/_private/monitor.py") for a in argv(p))],
                   signal.SIGKILL, 2)
        self._stop([p for p in self.own_processes() if argv(p)[0].endswith("/raylet")], signal.SIGTERM, 3)
        self._stop(self.own_processes(), signal.SIGTERM, timeout / 2)
        self._stop(self.own_processes(), signal.SIGKILL, timeout / 2)
        left = self.own_processes()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.temp_dir, self.sid = None, None
        if left:
            raise RuntimeError(f"FakeCluster processes survived SIGKILL: {[p.pid for p in left]}")

    def __enter__(self) -> "FakeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- looking at it (from a driver connected to it) ----------------------------------------------------
    def type_of(self, node: dict) -> str:
        """A node's type, told by its resources: the worker type whose own resources (GPU, custom) it has. Not by
        label: the fake provider sets RAY_NODE_TYPE_NAME in the raylet's env only, so ray.nodes() Labels hold just
        ray.io/node-id (fake ids fffff...0000N, the head's ...00000); NodeName is the IP, the same on every node."""
        res = node.get("Resources", {})
        if "node:__internal_head__" in res:
            return "head"
        for name, t in self.worker_node_types.items():
            marks = {k for k in t["resources"] if k != "CPU"}
            if marks and marks <= set(res):
                return name
        return "worker"

    def nodes(self) -> list[dict]:
        """The alive nodes (ray.nodes() entries: NodeID, Resources, Labels...), from this process's driver."""
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def node_types(self) -> dict[str, int]:
        """Alive nodes by type: {"head": 1, "gpu_model": 1, ...}."""
        types = [self.type_of(n) for n in self.nodes()]
        return {t: types.count(t) for t in sorted(set(types))}

    @staticmethod
    def wait_for(predicate, timeout: float, what: str = "the condition", every: float = 0.25):
        """bench.wait_for: the predicate's first truthy value, or AssertionError after `timeout` s."""
        from bench import wait_for

        return wait_for(predicate, timeout, what, every)

    def kill_node(self, node_id: str, raylet_only: bool = False) -> int:
        """SIGKILL a worker node's raylet and (unless raylet_only) its children, the node's agents and workers, as
        a lost machine would: on their own its actors outlived the raylet past Ray marking the node dead (~5 s
        with FAST_FAILURE_DETECTION), its agents by up to a minute. Returns how many raylets got it (1).
        The autoscaler (v1) keeps the dead node on its books until it idles out: a new node for the demand that
        node could have met comes idle_timeout_s + ~5 s after the kill (19 s at 10 s, 70 s at 60 s)."""
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        if node_id == FAKE_HEAD_NODE_ID:
            raise ValueError("that is the head node")
        psutil, killed = _psutil(), 0
        for p in self.own_processes():  # the raylet's argv names its node: --node_id=<hex>
            argv = p.info["cmdline"] or []
            if argv and argv[0].endswith("/raylet") and f"--node_id={node_id}" in argv:
                for q in [p] + ([] if raylet_only else p.children(recursive=True)):
                    try:
                        q.kill()
                    except psutil.Error:
                        pass
                killed += 1
        return killed
