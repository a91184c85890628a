"""The cluster suite (-m cluster, opt-in; .ci/run runs it after the default suite, in a pytest run of its own):
Ray's fake multi-node autoscaler on this machine (bench/fakecluster.py), with CPU decode nodes and GPU model
nodes (a fake GPU), the code shipped to every node as the job's working_dir, real Redis, real streams."""

from __future__ import annotations

import uuid

import pytest

WORKER_TYPES = {
    "cpu_decode": {"resources": {"CPU": 2, "vbs_decode": 1000}, "node_config": {}, "min_workers": 0, "max_workers": 3},
    "gpu_model": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
}


@pytest.fixture(scope="module")
def cluster():
    import ray

    from actors.cluster import runtime_env
    from bench.fakecluster import FakeCluster

    if ray.is_initialized():
        pytest.fail("the cluster suite needs a pytest run of its own (-m cluster): a local Ray is already up")
    c = FakeCluster({"CPU": 2}, WORKER_TYPES, idle_timeout_s=10).start()
    try:
        ray.init(address=c.address, configure_logging=False, log_to_driver=False,
                 namespace=f"vbs-cluster-{uuid.uuid4().hex[:6]}")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def cluster_settings(model, prefix: str):
    from schemas.config import Settings

    return Settings.model_validate({
        "model_dir": str(model), "redis": {"url": "redis://127.0.0.1:6379/0", "prefix": prefix},
        "url_policy": {"media_root": str(model), "allow_loopback": True},
        "decoder": {"replicas": 1, "min_replicas": 1, "max_replicas": 4, "streams_per_replica": 2, "num_cpus": 1,
                    "resources": {"vbs_decode": 1}, "open_timeout_s": 5, "read_timeout_s": 5, "watchdog_s": 10,
                    "max_in_flight": 8, "reconnect_initial_s": 0.2, "reconnect_max_s": 1.0},
        "video_encoder": {"replicas": 1, "min_replicas": 1, "max_replicas": 2, "num_gpus": 0.5, "num_cpus": 1,
                          "target_queue": 2, "max_wait_ms": 5},
        "language": {"num_cpus": 0.25, "max_wait_ms": 2},
        "fusion": {"num_gpus": 0.5, "num_cpus": 1, "max_wait_ms": 5},
        # asks Ray for no CPU: it runs beside the others, so that the node counts below are the decoders' and the
        # GPU stages' alone (the speech pool is tested in tests/integration/test_speech_*)
        "speech": {"num_cpus": 0, "max_wait_ms": 2},
        "supervisor": {"heartbeat_s": 0.5, "lease_s": 4.0, "poll_ms": 100},
        "autoscaling": {"interval_s": 0.5, "look_back_s": 2, "downscale_delay_s": 5, "drain_timeout_s": 30},
    })


@pytest.fixture(scope="module")
def cluster_graph(cluster, trained_model):
    from actors.graph import start_graph
    from actors.keys import redis_client

    prefix = f"vbscl{uuid.uuid4().hex[:6]}"
    g = start_graph(cluster_settings(trained_model, prefix), ready_timeout=240)
    yield g
    g.stop()
    r = redis_client(g.settings.redis.url)
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)
