"""The API contract: the OpenAPI document (/openapi.json) says what the running service does, and schemathesis
holds the service to it. Every route is fuzzed over real HTTP (the session's Serve service, API keys on): no
500, and every status code, content type, header and body as documented; then the document itself is checked
for what schemathesis cannot see (the security scheme, a model for every answer, the real error body)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import schemathesis

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# schemathesis's own command line, as a user runs it; this module is its hooks module (the check below). What a
# schema cannot say is answered 422 with a code that says why: a URL the policy refuses or label sets the model
# cannot tag with (POST /v1/streams), bytes that are no video or too short a clip (POST /v1/tag). The URLs it
# makes up name no file under the media root and are refused; the stateful phase reuses URLs it read in listings
# and queues real streams, at most max_streams_per_key at a time (429 past them), stopped when it is done.
# DELETE /v1/streams/{id} stops a stream and keeps its record, as the document says: `use_after_free` (a GET after
# a DELETE must be 404) holds a DELETE that removes, so it is off.
CONFIG = """
hooks = "tests.integration.test_openapi"
max-stream-events = 1  # an event stream is judged by its first event, not read for ever
request-timeout = 30

[checks.use_after_free]
enabled = false

[generation]
max-examples = 12  # per route and phase: about 500 cases in 15 s on 2 cores
database = "none"

[[operations]]
include-path = "/v1/streams"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "409", "422", "429"]

[[operations]]
include-path = "/v1/tag"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "413", "422"]
"""


@schemathesis.check
def refused_only_for_what_the_schema_cannot_say(ctx, response, case):
    """A request made from the schema (positive mode) is never refused for its form (invalid_request): every rule
    of form the service checks is in the document. What it cannot be (refused_*, bad_options, unreadable_video,
    ...) has a code of its own."""
    if response.status_code != 422 or case.meta is None or case.meta.generation.mode.is_negative:
        return None
    if response.json()["error"]["code"] == "invalid_request":
        raise AssertionError(f"a request the schema allows was refused for its form: {response.text[:300]}")
    return None


def test_every_route_answers_as_documented(service, tmp_path):
    """schemathesis 4.32 against the document found 16 distinct failures: a 500 on ?since=2.78e16, schema-valid
    requests rejected, undocumented status codes and content types, a 405 without Allow (or with only some of the
    path's methods), a 400 for a body that is not UTF-8. Now every phase (examples, coverage, fuzzing, stateful)
    of every route passes every check."""
    before = {s["stream_id"] for s in service.get("/v1/streams?limit=10000").json()["streams"]}
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    try:
        r = subprocess.run([str(Path(sys.executable).parent / "st"), "--config-file", "schemathesis.toml", "--no-color",
                            "run", service.url("/openapi.json"), "-H", f"Authorization: Bearer {API_KEY}",
                            "--seed", "19"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=600)
    finally:  # the streams the fuzzer queued are stopped, and have stopped before the next test runs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = [s["stream_id"] for s in service.get("/v1/streams?limit=10000").json()["streams"]
                       if s["stream_id"] not in before and s["status"] not in ("finished", "failed", "stopped")]
            if not running:
                break
            for sid in running:
                service.delete(f"/v1/streams/{sid}")
            time.sleep(0.5)
    assert r.returncode == 0, r.stdout[-12000:] + r.stderr[-3000:]
    routes = sum(len(ops) for ops in service.get("/openapi.json").json()["paths"].values())
    assert f"Tested: {routes}" in r.stdout, r.stdout[-3000:]  # every route, none skipped


def test_the_document_declares_the_bearer_scheme_the_keys_enforce(service):
    """There was no security scheme: auth was parsed by hand and the document said nothing of it. Now it declares
    the two ways a key is taken, and each operation the keys guard requires one and answers 401 (test_api's
    test_auth_on_and_off checks the document follows the keys when they change)."""
    from deployments.auth import Auth, document

    spec = service.get("/openapi.json", key=False).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    assert schemes["access_token"]["in"] == "query" and schemes["access_token"]["name"] == "access_token"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            guarded = path.startswith("/v1/")
            assert (op.get("security") == [{"bearer": []}, {"access_token": []}]) == guarded, (method, path)
            assert ("401" in op["responses"]) == guarded, (method, path)
            if guarded:
                assert op["responses"]["401"]["headers"]["WWW-Authenticate"]
    guarded = document(spec, Auth(keys=("k",), health=True, metrics=True))["paths"]
    assert guarded["/metrics"]["get"]["security"] and guarded["/healthz"]["get"]["security"]
    assert guarded["/readyz"]["get"]["security"] and "security" not in guarded["/"]["get"]
    open_ = document(spec, Auth())["paths"]
    assert not any("security" in op or "401" in op["responses"] for ops in open_.values() for op in ops.values())


def test_every_answer_has_a_model_and_errors_are_the_real_envelope(service):
    """A response model on one route only, and FastAPI's {"detail": ...} advertised for 422 while the service
    answers {"error": {"code", "message"}}; the /v1/tag body undeclared; SSE, metrics and the page as JSON."""
    spec = service.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    assert components["ErrorBody"]["required"] == ["error"]
    assert set(components["ErrorDetail"]["required"]) == {"code", "message"}
    media = {"/v1/streams/{stream_id}/events": "text/event-stream", "/v1/events": "text/event-stream",
             "/v1/streams/{stream_id}/snapshot.jpg": "image/jpeg", "/metrics": "text/plain", "/": "text/html"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, r in op["responses"].items():
                content = r.get("content", {})
                if int(status) >= 400:
                    assert content == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}} \
                        or (path, status) == ("/readyz", "503"), (method, path, status, content)
                elif path in media:
                    assert list(content) == [media[path]], (method, path, status)
                else:
                    ref = content["application/json"]["schema"]["$ref"]  # a model, never an empty schema
                    assert ref.startswith("#/components/schemas/"), (method, path, status)
    stop = spec["paths"]["/v1/streams/{stream_id}"]["delete"]  # a stop, not a removal: the record stays
    assert set(stop["responses"]) >= {"200", "202", "404"} and "is not removed" in stop["description"]
    upload = spec["paths"]["/v1/tag"]["post"]["requestBody"]
    assert upload["required"] and upload["content"]["application/octet-stream"]["schema"] == \
        {"type": "string", "format": "binary"}
    assert {"$ref": "#/components/schemas/ErrorBody"} in \
        spec["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]["anyOf"]


def test_405_names_every_method_of_the_path(service):
    """A 405 had no Allow header (and Starlette's names only the first route's methods: GET hid POST)."""
    r = service.http.request("PATCH", service.url("/v1/streams"), headers=service.auth, timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}
    r = service.http.request("PUT", service.url("/v1/streams/nope"), headers=service.auth, timeout=30)
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"DELETE", "GET", "HEAD"}


def test_a_body_that_is_not_utf8_is_422_like_any_invalid_body(service):
    """FastAPI answered such a body 400 (undocumented), {"code": "http_error"}."""
    r = service.post("/v1/streams", data=b'9\xff\x7f\xfe', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text


def test_the_schema_says_the_rules_of_form_the_service_checks(service):
    """Schema-valid requests were refused for their form: a `client` field the document offered, stream ids and
    label sets it said nothing about; a bad label set in /v1/tag answered with pydantic's whole report."""
    spec = service.get("/openapi.json").json()
    body = spec["components"]["schemas"]["StreamRequest"]
    assert "client" not in body["properties"] and body["additionalProperties"] is False
    sid = body["properties"]["stream_id"]["anyOf"][0]
    assert sid["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    labels = spec["components"]["schemas"]["RequestOptions"]["properties"]["labels"]["anyOf"][0]
    assert labels["maxProperties"] == 8 and labels["additionalProperties"]["maxItems"] == 64
    r = service.post("/v1/tag", data=b"x", params={"template": "no masks", "labels": '{"a": ["b"], "c": ["d"]}'})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_labels"
    assert "pydantic" not in r.text and "validation error" not in r.text, r.text
    # a template whose [MASK]s do not fit its label sets is what no schema can say: refused as the supervisor
    # refuses such a job (bad_options), not as a malformed request
    r = service.post("/v1/streams", json={"url": "x", "options": {"template": "0", "labels": {"A": ["1"]}}})
    assert r.status_code == 422 and r.json()["error"] == {
        "code": "bad_options", "message": "template has 0 [MASK] slot(s) but 1 label set(s) were given"}


def test_a_path_too_long_for_the_file_system_is_refused_not_500(service):
    """The fuzzer's longest URL (4,096 characters, as the schema allows) is a file path the OS refuses to stat
    (ENAMETOOLONG): the URL policy let the OSError through and the API answered 500."""
    r = service.post("/v1/streams", json={"url": "0" * 4096})
    assert r.status_code == 422 and r.json()["error"]["code"] == "refused_file_missing", r.text[:300]
