"""The cluster files in ops/, validated with the schemas their tools use (no cluster needed): the launcher YAML
against the cluster-config JSON schema in Ray's wheel, the Serve configs with Serve's own schema, the KubeRay
RayService against what the service's cluster config asks for, and the Dockerfile against ops/setup.sh."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"


def load_yaml(name: str) -> dict:
    return yaml.safe_load((OPS / name).read_text())


def test_the_launcher_config_is_valid_for_ray_and_puts_each_pool_on_its_node_type():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load_yaml("cluster.yaml")
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert types["gpu_model"]["resources"].get("GPU", 0) >= 1
    assert types["cpu_decode"]["resources"].get("vbs_decode", 0) >= 1 and "GPU" not in types["cpu_decode"]["resources"]
    assert not {"GPU", "vbs_decode"} & set(types[cfg["head_node_type"]]["resources"])
    assert all(types[t]["max_workers"] >= 1 and types[t]["min_workers"] == 0 for t in ("cpu_decode", "gpu_model"))
    assert cfg["idle_timeout_minutes"] > 0
    # Ray's GCS keeps off Redis's port, and the workers dial it there
    assert any("--port=6380" in c and "--autoscaling-config" in c for c in cfg["head_start_ray_commands"])
    assert any(":6380" in c for c in cfg["worker_start_ray_commands"])
    # what the decoders ask for is what the decode nodes advertise
    service = tomllib.loads((OPS / "config.cluster.toml").read_text())
    assert set(service["decoder"]["resources"]) <= set(types["cpu_decode"]["resources"])


def test_a_broken_launcher_config_fails_the_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load_yaml("cluster.yaml")
    cfg["available_node_types"]["gpu_model"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, schema)


def serve_schema():
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema


@pytest.mark.parametrize("source", ["serve.yaml", "rayservice.yaml"])
def test_the_serve_configs_are_valid_for_serve_and_name_a_config_that_loads(source):
    from schemas.config import Settings

    cfg = load_yaml(source)
    serve_cfg = yaml.safe_load(cfg["spec"]["serveConfigV2"]) if source == "rayservice.yaml" else cfg
    parsed = serve_schema().model_validate(serve_cfg) if hasattr(serve_schema(), "model_validate") else \
        serve_schema().parse_obj(serve_cfg)
    (app,) = parsed.applications
    assert app.import_path == "deployments.app:app_builder" and app.args["graph"] is True
    assert app.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    Settings.load(ROOT / app.args["config"])  # the config it names exists and is valid


def test_the_rayservice_autoscales_worker_groups_that_match_the_cluster_config():
    from schemas.config import Settings

    rs = load_yaml("rayservice.yaml")
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    advertised = json.loads(json.loads(groups["cpu-decode"]["rayStartParams"]["resources"]))
    s = Settings.load(OPS / "config.cluster.toml")
    assert set(s.decoder.resources) <= set(advertised)
    (gpu,) = groups["gpu-model"]["template"]["spec"]["containers"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] >= 1 and s.video_encoder.num_gpus > 0 and s.fusion.num_gpus > 0
    assert all(g["minReplicas"] == 0 < g["maxReplicas"] for g in groups.values())
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
                  *(g["template"]["spec"]["containers"][0] for g in groups.values())]
    for c in containers:  # Redis comes from a Secret on every pod; no URL or password in the manifest
        (env,) = [e for e in c["env"] if e["name"] == "REDIS_URL"]
        assert set(env) == {"name", "valueFrom"} and "secretKeyRef" in env["valueFrom"]
        assert any(m["mountPath"] == "/mnt/models" for m in c["volumeMounts"])
    assert s.model_dir.startswith("/mnt/models/")
    assert "redis://" not in (OPS / "rayservice.yaml").read_text().replace("rediss://:PASSWORD@", "")


def setup_packages(mode: str) -> set[str]:
    """The apt packages ops/setup.sh installs in a mode (full, or service), read off the script."""
    text = (OPS / "setup.sh").read_text()
    full = set(re.findall(r'missing="\$missing ([\w-]+)"', text))
    service_block = text.split('if [ "$SETUP" != service ]; then', 1)[1].split("fi", 1)[0]
    test_only = set(re.findall(r'missing="\$missing ([\w-]+)"', service_block))
    return full if mode == "full" else full - test_only


def test_the_dockerfile_installs_what_setup_sh_installs():
    docker = (OPS / "Dockerfile").read_text()
    runs = " ".join(line for line in docker.replace("\\\n", " ").splitlines() if line.startswith("RUN"))
    # the image is set up by ops/setup.sh itself, in its service mode: no package list of its own to drift
    assert "VBS_SETUP=service bash ops/setup.sh" in runs
    assert "apt-get" not in runs
    pins = re.findall(r'pip install[^&]*?"?torch==([\d.]+)"?', runs)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert pins == [torch_pin.split("==")[1]], "the Dockerfile's torch is pyproject.toml's pin, from its index"
    assert re.search(r"ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu", docker)
    assert "pip install" not in runs.replace(f'pip install -q --index-url "$TORCH_INDEX_URL" "torch=={pins[0]}"', "")
    # the service mode is the full set-up less the test tools
    assert setup_packages("service") == {"ffmpeg", "redis-server", "openssl"}
    assert setup_packages("service") < setup_packages("full")
    assert 'CMD ["vbs", "up", "--address", "auto", "--config", "ops/config.cluster.toml"]' in docker
