"""Which model wrote a tag: every tag of the graph and of an upload carries the model's id (name and content
hash), /readyz shows it, and /metrics exports it as vbs_build_info{version,model}."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from schemas import VERSION
from tests.integration.test_api import heldout, wait_status
from videobert.checkpoint import model_id


def test_tags_readyz_and_metrics_name_the_model_that_tags(service, trained_model):
    # given the service of the session's graph and the id of the model it was given
    expected = model_id(trained_model)

    # when a file stream is tagged through the graph and a clip is uploaded
    video = heldout(service)[0]
    assert service.post("/v1/streams", json={"url": str(video), "stream_id": "model-id"}).status_code == 202
    assert wait_status(service, "model-id", {"finished", "failed"})["status"] == "finished"
    tags = service.get("/v1/streams/model-id/tags?limit=1000").json()["tags"]
    upload = service.post("/v1/tag", data=video.read_bytes(), headers={"Content-Type": "video/mp4"})

    # then every tag, the readiness body and the build-info metric name that model
    assert tags and {t["model"] for t in tags} == {expected.id}
    assert upload.status_code == 200, upload.text
    assert {c["model"] for c in upload.json()["clips"]} == {expected.id}
    ready = service.get("/readyz").json()
    assert ready["model"] == expected.to_dict() and ready["version"] == VERSION
    families = {f.name: f for f in text_string_to_metric_families(service.get("/metrics").text)}
    (sample,) = families["vbs_build_info"].samples
    assert sample.labels == {"version": VERSION, "model": expected.id} and sample.value == 1
