"""Where the graph runs: each replica's node and device (`here`, asked of every actor by the autoscaler),
and the graph view the autoscaler writes to Redis (`{prefix}:graph`, JSON with a TTL) for the readers in
other processes: `vbs status --graph`, the /readyz body and the pool metrics."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from actors.keys import Keys

VIEW_TTL_S = 30  # a view not refreshed for this long is gone: no graph runs


CODE_DIR = str(Path(__file__).resolve().parent.parent)  # where this process's copy of the project lives


def here() -> dict:
    """The node and process this Ray actor runs in (node fields empty outside Ray), and the project's code it
    runs (on a cluster joined with `vbs up --address`: the job's working_dir, as Ray unpacked it on that node)."""
    try:
        import ray

        if ray.is_initialized():
            return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                    "pid": os.getpid(), "code": CODE_DIR}
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass
    return {"node_id": "", "node_ip": "", "pid": os.getpid(), "code": CODE_DIR}


def write_view(redis, keys: Keys, pools: dict, replicas: list[dict]) -> None:
    """`pools`: stage -> {replicas (running), target, min, max, starting, draining}; `replicas`: one dict per
    replica (pool, name, state, node_id, node_ip, device, ...)."""
    redis.set(keys.graph, json.dumps({"at": time.time(), "pools": pools, "replicas": replicas}), ex=VIEW_TTL_S)


def read_view(redis, keys: Keys) -> dict | None:
    raw = redis.get(keys.graph)
    return json.loads(raw) if raw else None
