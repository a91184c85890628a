"""The cluster deployment files, checked offline (no Ray cluster, no network): ops/cluster.yaml against the schema
and checks Ray's cluster launcher uses, ops/rayservice.yaml through Ray's KubeRay autoscaler config and Serve's
own schema, ops/serve.yaml too, all against the service's config (ops/config.cluster.toml: placement resources,
GPUs, the model's path), and ops/Dockerfile against what ops/setup.sh installs (run in a sandbox)."""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
CLUSTER_CONFIG = "ops/config.cluster.toml"
GCS_PORT = "6380"  # 6379 stays free for Redis on the head
DECODE = "vbs_decode"
# What the cluster tools need in the image beyond what ops/setup.sh installs: rsync and ssh (Ray's cluster
# launcher syncs into the container; the head's autoscaler reaches workers from it), wget (KubeRay's probes)
CLUSTER_TOOLS = {"rsync", "openssh-client", "wget"}
IMAGE_MODE = "service"  # the VBS_SETUP mode of ops/setup.sh the image mirrors


def load_yaml(name: str):
    return yaml.safe_load((OPS / name).read_text())


def settings():
    from schemas.config import Settings

    return Settings.load(ROOT / CLUSTER_CONFIG, env={})


def stages(s):
    return {"video_encoder": s.video_encoder, "language": s.language, "fusion": s.fusion}


def demand(cfg) -> dict[str, float]:
    """What one replica asks Ray for (actors/graph.py): its CPUs, GPUs and custom resources."""
    d = {"CPU": cfg.num_cpus, **cfg.resources}
    if getattr(cfg, "num_gpus", 0):
        d["GPU"] = cfg.num_gpus
    return {k: v for k, v in d.items() if v}


def fits(want: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(k, 0) >= v for k, v in want.items())


def check_placement(types: dict[str, dict], decode: str, gpu: str) -> None:
    """Node types as the autoscaler sees them (name -> resources, max_workers) against the config: each replica
    fits some type (or it would stay pending forever), decoders only the decode type, GPU stages only the GPU
    type, and the worker types at their max hold every pool at its max_replicas."""
    s = settings()
    res = {name: t["resources"] for name, t in types.items()}
    d = demand(s.decoder)
    assert [n for n in res if fits(d, res[n])] == [decode], f"decoders ({d}) must fit {decode} only, not {res}"
    cap = types[decode]["max_workers"] * (res[decode]["CPU"] // s.decoder.num_cpus)
    assert cap >= s.decoder.max_replicas, f"{decode} holds {cap} decoders, max_replicas is {s.decoder.max_replicas}"
    gpu_want = 0.0
    for name, st in stages(s).items():
        where = [n for n in res if fits(demand(st), res[n])]
        assert where, f"{name} ({demand(st)}) fits no node type"
        if st.num_gpus:
            assert where == [gpu], f"{name} asks for a GPU: {gpu} only, not {where}"
            gpu_want += st.num_gpus * st.max_replicas
    gpu_have = types[gpu]["max_workers"] * res[gpu]["GPU"]
    assert gpu_want <= gpu_have, f"the GPU stages at max_replicas want {gpu_want} GPUs, {gpu} has {gpu_have}"


def app_builder_args() -> set[str]:
    """The keys deployments.app:app_builder reads from its args (args.get("...") / args["..."])."""
    tree = ast.parse((ROOT / "deployments" / "app.py").read_text())
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "app_builder"), None)
    assert fn is not None, "deployments/app.py has no app_builder"
    arg = fn.args.args[0].arg
    keys = set()
    for n in ast.walk(fn):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                and isinstance(n.func.value, ast.Name) and n.func.value.id == arg and n.args
                and isinstance(n.args[0], ast.Constant)):
            keys.add(n.args[0].value)
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id == arg:
            keys.add(n.slice.value)
    return keys


def check_serve_config(cfg: dict, *, config_file: str | None = None) -> dict:
    """A Serve config as `serve deploy` / KubeRay take it: valid for Serve's schema, the vbs application built by
    deployments.app:app_builder from args it reads, with a config file that exists and loads."""
    from ray.serve.schema import ServeDeploySchema

    from actors.cluster import OFFLINE
    from schemas.config import Settings

    ServeDeploySchema.model_validate(cfg)
    apps = {a["name"]: a for a in cfg["applications"]}
    assert set(apps) == {"vbs"}, apps.keys()
    app = apps["vbs"]
    assert app["import_path"] == "deployments.app:app_builder"
    assert app.get("route_prefix") == "/"
    unknown = set(app.get("args", {})) - app_builder_args()
    assert not unknown, f"args app_builder does not read: {sorted(unknown)}"
    path = app["args"]["config"]
    if config_file is not None:
        assert path == config_file
    assert (ROOT / path).is_file(), f"{path} (the application's config) does not exist"
    Settings.load(ROOT / path, env={})
    env = app.get("runtime_env", {}).get("env_vars", {})
    assert {k: env.get(k) for k in OFFLINE} == OFFLINE, f"runtime_env env_vars lack the offline switches {OFFLINE}"
    return app


# ---- the service's config -------------------------------------------------------------------------------------

def test_cluster_config_loads():
    # NOTE: needs the pool fields of schemas/config.py (min_replicas, max_replicas, target_queue, resources on
    # the decoder and the stages). If they are missing, this fails with "Extra inputs are not permitted" naming
    # the field: the fix is in schemas/config.py, not here.
    s = settings()
    assert s.decoder.resources == {DECODE: 1.0}
    assert s.model_dir.startswith("/mnt/models/")
    assert s.url_policy.allow_loopback is False
    assert any(c.num_gpus > 0 for c in stages(s).values()), "no stage asks for a GPU on the cluster"
    assert s.autoscaling.enabled


# ---- ops/cluster.yaml (Ray's cluster launcher) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def launcher():
    return load_yaml("cluster.yaml")


def test_cluster_yaml_matches_rays_schema(launcher):
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    # and what `ray up` checks beyond the schema (head type exists, min_workers fit max_workers), after merging
    # the provider's defaults as it does; offline (no cloud call)
    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_cluster_node_types_steer_placement(launcher):
    types = launcher["available_node_types"]
    assert set(types) == {"head", "cpu_decode", "gpu_model"}
    assert launcher["head_node_type"] == "head"
    res = {name: t["resources"] for name, t in types.items()}
    # CPU and GPU counts are written out: only AWS fills them in from the instance type (GCP, Azure do not)
    assert res["head"].get("CPU", 0) > 0, "the head needs CPUs (Serve, the ingress, the supervisor)"
    assert "GPU" not in res["head"] and DECODE not in res["head"], f"the head takes no decoders or models: {res['head']}"
    assert res["cpu_decode"].get(DECODE, 0) >= 1 and "GPU" not in res["cpu_decode"], res["cpu_decode"]
    assert res["gpu_model"].get("GPU", 0) >= 1 and DECODE not in res["gpu_model"], res["gpu_model"]
    for name in ("cpu_decode", "gpu_model"):
        assert types[name].get("min_workers", 0) == 0 and types[name]["max_workers"] >= 1, name
    assert launcher["idle_timeout_minutes"] == 5


def test_cluster_holds_every_pool(launcher):
    check_placement(launcher["available_node_types"], "cpu_decode", "gpu_model")


def _ray_start(cmds: list[str]) -> list[str]:
    for cmd in cmds:
        for part in re.split(r"[;&|]+", cmd):
            argv = shlex.split(part)
            if argv[:2] == ["ray", "start"]:
                return argv
    raise AssertionError(f"no `ray start` in {cmds}")


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def test_cluster_gcs_on_6380(launcher):
    head = _ray_start(launcher["head_start_ray_commands"])
    assert "--head" in head
    assert _flag(head, "--port") == GCS_PORT, f"the head's GCS must use {GCS_PORT} (Redis has 6379): {head}"
    assert _flag(head, "--autoscaling-config") == "~/ray_bootstrap_config.yaml"
    assert _flag(head, "--dashboard-host") == "0.0.0.0"
    worker = _ray_start(launcher["worker_start_ray_commands"])
    assert _flag(worker, "--address") == f"$RAY_HEAD_IP:{GCS_PORT}", worker


def test_cluster_head_can_launch_nodes(launcher):
    """The head's autoscaler (in the container) drives the cloud through its SDK, which the image lacks."""
    sdk = {"aws": "boto3", "gcp": "google-api-python-client", "azure": "azure-mgmt-compute"}[launcher["provider"]["type"]]
    cmds = launcher.get("head_setup_commands", []) + launcher.get("setup_commands", [])
    assert any("pip install" in c and sdk in c for c in cmds), f"head_setup_commands must pip install {sdk}"


def test_cluster_mounts_the_model_and_media(launcher):
    s = settings()
    targets = []
    for opt in launcher["docker"].get("run_options", []):
        argv = shlex.split(opt)
        if argv[0] in ("-v", "--volume"):
            targets.append(argv[1].split(":")[1])
    for path in (s.model_dir, s.url_policy.media_root):
        assert any(Path(path).is_relative_to(t) for t in targets), f"{path} is on no mounted volume ({targets})"


# ---- ops/rayservice.yaml (KubeRay) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rayservice():
    return load_yaml("rayservice.yaml")


def _groups(rs) -> dict[str, dict]:
    spec = rs["spec"]["rayClusterConfig"]
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def _kuberay_node_types(rs) -> dict[str, dict]:
    """The node types Ray's in-tree KubeRay autoscaler derives from the cluster spec (rayStartParams' quoted
    JSON resources, num-cpus, the containers' cpu / nvidia.com/gpu limits); the head group named "head"."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"metadata": {"name": rs["metadata"]["name"], "namespace": "default"}, "spec": rs["spec"]["rayClusterConfig"]}
    types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]
    return {("head" if name == "headgroup" else name): t for name, t in types.items()}


def test_rayservice_serve_config_is_valid(rayservice):
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    raw = rayservice["spec"]["serveConfigV2"]
    assert isinstance(raw, str), "serveConfigV2 is a YAML string (a block scalar)"
    cfg = yaml.safe_load(raw)
    check_serve_config(cfg, config_file=CLUSTER_CONFIG)
    assert cfg["http_options"]["host"] == "0.0.0.0", "Serve's proxy must listen beyond the pod's loopback"
    assert cfg["http_options"]["port"] == 8000


def test_rayservice_autoscales(rayservice):
    spec = rayservice["spec"]["rayClusterConfig"]
    assert spec["enableInTreeAutoscaling"] is True, "without it pods never follow the pools' pending actors"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    assert _kuberay_node_types(rayservice)  # the autoscaler can read the groups (it validates Ray's schema too)
    groups = _groups(rayservice)
    assert set(groups) == {"head", "cpu-decode", "gpu-model"}
    for name in ("cpu-decode", "gpu-model"):
        g = groups[name]
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1, name
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], name
    assert groups["head"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def test_rayservice_groups_match_the_config(rayservice):
    s = settings()
    types = _kuberay_node_types(rayservice)
    assert set(types) == {"head", "cpu-decode", "gpu-model"}
    res = {name: t["resources"] for name, t in types.items()}
    assert res["head"].get("CPU", 0) > 0 and "GPU" not in res["head"] and DECODE not in res["head"], res["head"]
    for key, value in s.decoder.resources.items():
        assert res["cpu-decode"].get(key, 0) >= value, f"cpu-decode must advertise {key} (decoder.resources)"
        assert key not in res["gpu-model"] and key not in res["head"], f"only cpu-decode advertises {key}"
    assert "GPU" not in res["cpu-decode"], res["cpu-decode"]
    check_placement(types, "cpu-decode", "gpu-model")


def test_rayservice_containers_get_redis_and_the_model(rayservice):
    s = settings()
    text = (OPS / "rayservice.yaml").read_text()
    secrets = set(re.findall(r"://[^/\s@]*:([^@\s/]+)@", text)) - {"<password>", "CHANGE-ME", "PASSWORD"}
    assert not secrets, "a password in ops/rayservice.yaml (only placeholders belong there; the Secret holds it)"
    for name, g in _groups(rayservice).items():
        pod = g["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            where = f"{name}/{c['name']}"
            assert c.get("workingDir") == "/app", f"{where}: workingDir /app (the image's code, config paths)"
            env = {e["name"]: e for e in c.get("env", [])}
            assert "REDIS_URL" in env, f"{where}: no REDIS_URL"
            assert "value" not in env["REDIS_URL"], f"{where}: REDIS_URL must come from a Secret, not a literal"
            ref = env["REDIS_URL"].get("valueFrom", {}).get("secretKeyRef")
            assert ref == {"name": "vbs-redis", "key": "url"}, f"{where}: REDIS_URL from secretKeyRef vbs-redis/url"
            mounts = [m for m in c.get("volumeMounts", []) if m["name"] in claims
                      and claims[m["name"]]["claimName"] == "vbs-models"]
            assert mounts, f"{where}: the vbs-models volume is not mounted"
            m = mounts[0]
            assert m.get("readOnly") is True and claims[m["name"]].get("readOnly") is True, f"{where}: read-only"
            assert Path(s.model_dir).is_relative_to(m["mountPath"]), f"{where}: model_dir {s.model_dir} not under it"


def test_gpu_nodes_run_the_cuda_image(launcher, rayservice):
    """torch's CPU build (the default image) would leave the GPU unused: GPU nodes run the CUDA build."""
    dockerfile = (OPS / "Dockerfile").read_text()
    joined = re.sub(r"\\\n#?", " ", dockerfile)
    assert any("vbs:cuda" in ln and re.search(r"whl/cu\d+", ln) for ln in joined.splitlines()), \
        "ops/Dockerfile no longer says how to build vbs:cuda (TORCH_INDEX_URL=.../whl/cuNNN)"
    assert launcher["available_node_types"]["gpu_model"]["docker"]["worker_image"].endswith("vbs:cuda")
    gpu = _groups(rayservice)["gpu-model"]["template"]["spec"]["containers"][0]
    assert gpu["image"].endswith("vbs:cuda"), gpu["image"]


# ---- ops/serve.yaml ----------------------------------------------------------------------------------------------

def test_serve_yaml_is_valid():
    check_serve_config(load_yaml("serve.yaml"))


# ---- ops/Dockerfile against ops/setup.sh ----------------------------------------------------------------------

def _commands(text: str) -> list[list[str]]:
    """Shell commands as argv lists: continuation lines joined, comments and redirections dropped, split at
    && || ; | & (quotes respected)."""
    out = []
    for ln in re.sub(r"\\\n", " ", text).splitlines():
        lex = shlex.shlex(ln, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        cur: list[str] = []
        toks = list(lex)
        i = 0
        while i < len(toks):
            t = toks[i]
            if t in ("&&", "||", ";", "|", "&"):
                if cur:
                    out.append(cur)
                cur = []
            elif re.fullmatch(r"[<>]+&?", t):  # a redirection and its target
                if cur and cur[-1].isdigit():
                    cur.pop()
                i += 1
            else:
                cur.append(t)
            i += 1
        if cur:
            out.append(cur)
    return out


def _after(argv: list[str], *words: str) -> list[str] | None:
    """The arguments after the words (e.g. apt-get install), or None when the command is not that."""
    for i in range(len(argv) - len(words) + 1):
        if tuple(argv[i:i + len(words)]) == words:
            return argv[i + len(words):]
    return None


PIP_VALUE_OPTIONS = {"--index-url", "-i", "--extra-index-url", "-r", "--requirement", "-c", "--constraint",
                     "-f", "--find-links", "--target", "-t"}


def _installs(argvs: list[list[str]]) -> tuple[set[str], set[str]]:
    """(apt packages, pip targets) the commands install; pip targets are specifiers or `-e PATH[extras]`."""
    apt: set[str] = set()
    pip: set[str] = set()
    for argv in argvs:
        args = _after(argv, "apt-get", "install")
        if args is not None:
            apt |= {a for a in args if not a.startswith("-")}
        args = _after(argv, "pip", "install")
        if args is not None:
            it = iter(args)
            for a in it:
                if a in ("-e", "--editable"):
                    pip.add(f"-e {next(it)}")
                elif a in PIP_VALUE_OPTIONS:
                    next(it)
                elif not a.startswith("-"):
                    pip.add(a)
    return apt, pip


STUBS = {
    "apt-get": 'echo "apt-get $*" >> "$LOG"',
    "sudo": 'exec "$@"',
    # python3 -m venv DIR: a venv whose python records what it is asked to do
    "python3": 'echo "python3 $*" >> "$LOG"\nif [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"\n'
               '  printf \'#!/bin/bash\\necho "python $*" >> "$LOG"\\n\' > "$3/bin/python"; chmod +x "$3/bin/python"; fi',
}


@pytest.fixture(scope="module")
def setup_sh(tmp_path_factory):
    """mode -> (apt packages, pip targets) that ops/setup.sh installs with VBS_SETUP=mode: it runs in a sandbox
    where nothing is installed (PATH holds only the few tools it needs besides), with apt-get, sudo and python3
    stubs recording what they are asked for."""

    def run(mode: str) -> tuple[set[str], set[str]]:
        tmp = tmp_path_factory.mktemp(f"setup-{mode}")
        repo, bin_ = tmp / "repo", tmp / "bin"
        (repo / "ops").mkdir(parents=True)
        bin_.mkdir()
        shutil.copy(OPS / "setup.sh", repo / "ops" / "setup.sh")
        shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
        for tool in ("dirname", "id", "sha256sum", "cut", "rm", "touch", "mkdir", "chmod", "cat"):
            (bin_ / tool).symlink_to(shutil.which(tool))
        for name, body in STUBS.items():
            (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
            (bin_ / name).chmod(0o755)
        log = tmp / "log"
        env = {"PATH": str(bin_), "HOME": str(tmp), "LOG": str(log), "PYTHON": "python3", "VBS_SETUP": mode}
        r = subprocess.run([shutil.which("bash"), str(repo / "ops" / "setup.sh")], env=env, cwd=tmp,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"ops/setup.sh (VBS_SETUP={mode}) failed in the sandbox: {r.stderr}"
        apt, pip = _installs([shlex.split(ln) for ln in log.read_text().splitlines()])
        assert apt and pip, f"ops/setup.sh (VBS_SETUP={mode}) installed nothing in the sandbox? {log.read_text()}"
        return apt, pip

    cache: dict[str, tuple[set[str], set[str]]] = {}

    def installs(mode: str) -> tuple[set[str], set[str]]:
        if mode not in cache:
            cache[mode] = run(mode)
        return cache[mode]

    return installs


def _dockerfile_installs(setup_sh) -> tuple[set[str], set[str]]:
    """What the Dockerfile's RUN lines install; a RUN of `VBS_SETUP=<mode> bash ops/setup.sh` counts as what
    setup.sh installs in that mode."""
    text = re.sub(r"\\\n", " ", (OPS / "Dockerfile").read_text())
    runs = "\n".join(ln.strip()[4:] for ln in text.splitlines() if ln.strip().startswith("RUN "))
    argvs = _commands(runs)
    apt, pip = _installs([a for a in argvs if not any(t.endswith("ops/setup.sh") for t in a)])
    for argv in argvs:
        if any(t.endswith("ops/setup.sh") for t in argv):
            mode = next((t.split("=", 1)[1] for t in argv if t.startswith("VBS_SETUP=")), "full")
            apt, pip = apt | setup_sh(mode)[0], pip | setup_sh(mode)[1]
    return apt, pip


def test_dockerfile_apt_packages_are_setup_shs(setup_sh):
    want = setup_sh(IMAGE_MODE)[0]
    have = _dockerfile_installs(setup_sh)[0]
    missing, extra = want - have, have - want - CLUSTER_TOOLS
    assert not missing and not extra, (f"ops/Dockerfile vs ops/setup.sh (VBS_SETUP={IMAGE_MODE}) apt-get packages: "
                                       f"missing in the Dockerfile {sorted(missing)}, only in the Dockerfile "
                                       f"{sorted(extra)}")
    assert CLUSTER_TOOLS <= have, f"the image lacks the cluster tools {sorted(CLUSTER_TOOLS - have)}"
    assert want <= setup_sh("full")[0], "the service mode installs something the full set-up does not"


def test_the_main_command_installs_only_what_the_service_needs(setup_sh):
    # ops/demo.sh (the main command) sets up in the service mode; the test command's full set-up adds the tools
    demo = (OPS / "demo.sh").read_text()
    assert re.search(r"^VBS_SETUP=service bash ops/setup\.sh", demo, re.M), "ops/demo.sh must set up in service mode"
    assert not re.search(r"^bash ops/setup\.sh", demo, re.M)
    service_apt, service_pip = setup_sh("service")
    full_apt, full_pip = setup_sh("full")
    assert not service_apt & {"chromium", "chromium-driver", "prometheus"}, service_apt
    assert not any("[test]" in t for t in service_pip), service_pip
    assert {"chromium", "chromium-driver", "prometheus"} <= full_apt and any("[test]" in t for t in full_pip)


def test_dockerfile_pip_installs_are_setup_shs(setup_sh):
    want = setup_sh(IMAGE_MODE)[1]
    have = _dockerfile_installs(setup_sh)[1]
    # the Dockerfile may pre-install a dependency at exactly pyproject.toml's pin (torch, from another index)
    pins = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    missing, extra = want - have, have - want - pins
    assert not missing and not extra, (f"ops/Dockerfile vs ops/setup.sh (VBS_SETUP={IMAGE_MODE}) pip installs: "
                                       f"missing in the Dockerfile {sorted(missing)}, only in the Dockerfile "
                                       f"{sorted(extra)} (pyproject pins allowed: {sorted(pins & have)})")


def test_dockerfile_builds_the_service_image():
    from actors.cluster import OFFLINE

    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", (OPS / "Dockerfile").read_text()).splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]
    get = lambda k: [v for i, v in instr if i == k]  # noqa: E731
    assert get("FROM") == ["python:3.11-slim"]
    assert get("WORKDIR") == ["/app"]
    args = dict(a.split("=", 1) for a in get("ARG"))
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu", "the default image is torch's CPU build"
    assert any("--index-url" in r and "TORCH_INDEX_URL" in r for r in get("RUN")), "torch is not installed from TORCH_INDEX_URL"
    env = dict(kv.split("=", 1) for e in get("ENV") for kv in shlex.split(e))
    assert {k: env.get(k) for k in OFFLINE} == OFFLINE
    assert {"8000", "8265"} <= {p for e in get("EXPOSE") for p in e.split()}
    copy_at = next(i for i, (k, v) in enumerate(instr) if k == "COPY" and v.split()[0] == ".")
    install = [i for i, (k, v) in enumerate(instr) if k == "RUN" and (" -e " in v or "ops/setup.sh" in v)]
    assert install and copy_at < install[0], "the project must be copied before it is installed"
    cmd = json.loads(get("CMD")[-1])
    assert cmd == ["vbs", "up", "--address", "auto", "--config", CLUSTER_CONFIG]
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    need = {".venv", "models", "runs", "data", "bench/results", ".git", "**/__pycache__"}
    assert need <= ignored, f".dockerignore lacks {sorted(need - ignored)}"


def test_the_image_sets_glibc_s_malloc_up_as_vbs_does():
    """Every process of the image (`ray start` on a KubeRay pod, not only `vbs`) runs with the malloc tunables
    `vbs` restarts itself with."""
    from schemas.config import MALLOC_TUNABLES

    envs = re.findall(r"^ENV GLIBC_TUNABLES=(\S+)$", (OPS / "Dockerfile").read_text(), flags=re.M)
    assert envs == [":".join(MALLOC_TUNABLES)], envs
