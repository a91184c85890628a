"""What joining a Ray cluster needs: the `runtime_env` that carries the project's code to every node (its
working_dir, minus what never belongs on a worker), the offline switches every actor needs, and a check that
the model directory is a path every node shares. `vbs up --address` and tests/cluster use it; ops/serve.yaml
and ops/rayservice.yaml spell the same out for `serve deploy` and KubeRay (there the image carries the code).

The model is not shipped: a model directory holds hundreds of MB of weights (more with its corpus), Ray's
package upload is capped by its gRPC message size and is copied to every node per job. It lives where every
node sees it at the same path: a shared file system (NFS, EFS, a Kubernetes volume) or the Docker image."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the working_dir upload skips the .gitignore'd paths too (models/, runs/, data/, bench/results/, the venv)
EXCLUDES = [".git", ".venv", "models", "runs", "data", "bench/results", "**/__pycache__", "*.mp4", "*.mkv", "*.ts"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def runtime_env(minilm_dir: str | None = None) -> dict:
    """The runtime_env of a driver that joins a cluster: the code as working_dir, the offline switches, and
    the MiniLM copy the settings name (settings.minilm_dir, a path every node must have too) passed on."""
    from schemas.config import MINILM_ENV

    passed = {MINILM_ENV: minilm_dir} if minilm_dir else {}
    return {"working_dir": str(ROOT), "excludes": list(EXCLUDES), "env_vars": {**OFFLINE, **passed}}


def model_on_every_node(model_dir: str, timeout: float = 60) -> dict[str, bool]:
    """node id -> whether the model directory exists there (a zero-CPU task pinned to each alive node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def has(path: str) -> bool:
        return (Path(path) / "videobert").is_dir()

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = [has.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(model_dir)
            for n in nodes]
    return dict(zip(nodes, ray.get(refs, timeout=timeout)))
