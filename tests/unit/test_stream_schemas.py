"""Queue messages and settings: what is accepted, and the clear reason for what is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.config import Settings
from schemas.streams import IngestJob, JobError, StreamStatus


def test_a_job_round_trips_through_redis_fields():
    job = IngestJob.from_fields({"url": "rtsp://cam/1", "stream_id": "cam-1",
                                 "options": '{"labels": {"verb": ["grow"]}, "clip_rate": 1}'})
    assert job.options.labels == {"verb": ["grow"]} and job.options.clip_rate == 1
    assert IngestJob.from_fields(job.to_fields()) == job


@pytest.mark.parametrize("fields, reason", [
    ({}, "url: Field required"),
    ({"url": "x", "options": "{not json"}, "options is not JSON"),
    ({"url": "x", "options": "[1]"}, "options must be a JSON object"),
    ({"url": "x", "colour": "red"}, "unknown field(s): colour"),
    ({"url": "x", "stream_id": "../etc"}, "stream_id"),
    ({"url": "x", "options": '{"clip_rate": 100}'}, "clip_rate"),
    ({"url": "x", "options": '{"labels": {"verb": []}}'}, "needs 1 to 64 words"),
    ({"url": "x", "options": '{"fps": 3}'}, "options.fps"),
    ({"url": "y" * 5000}, "url"),
])
def test_a_malformed_job_has_a_specific_reason(fields, reason):
    with pytest.raises(JobError) as e:
        IngestJob.from_fields(fields)
    assert reason in e.value.reason


def test_a_reason_never_echoes_the_values():
    with pytest.raises(JobError) as e:
        IngestJob.from_fields({"url": "rtsp://u:hunter2@h/x", "stream_id": "hunter2/../x"})
    assert "hunter2" not in e.value.reason


def test_statuses_know_which_are_final():
    assert {s.value for s in StreamStatus if s.terminal} == {"finished", "failed", "stopped"}


def test_settings_from_file_env_and_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model_dir = "m"\n[decoder]\nreplicas = 3\n[fusion]\nnum_gpus = 0.5\n')
    s = Settings.load(cfg, env={"REDIS_URL": "redis://other:6379/1"})
    assert s.decoder.replicas == 3 and s.fusion.num_gpus == 0.5 and s.redis.url == "redis://other:6379/1"
    flagged = Settings.load(cfg, redis_url="redis://flag/0", model_dir="x", env={})
    assert flagged.model_dir == str(Path("x").resolve()) and flagged.redis.url == "redis://flag/0"


@pytest.mark.parametrize("text, message", [
    ("[decoder]\nreplicas = 0\n", "decoder.replicas"),
    ("[decoder]\nreplica = 2\n", "decoder.replica: Extra inputs are not permitted"),
    ("model_dir = \n", "not valid TOML"),
])
def test_a_bad_config_names_the_file_and_field(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match="bad.toml") as e:
        Settings.load(cfg, env={})
    assert message in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml", env={})


def test_the_stream_state_reads_and_writes_the_hash_with_types():
    from schemas.state import StreamState, TagResult

    tag = TagResult(t0=1.5, t1=3.0, labels={"verb": [{"label": "grow", "score": 0.9}]}, alignment=None, subtitle="")
    st = StreamState(stream_id="cam-1", status="running", clips_tagged=12, live=True, last_t0=1.5, latest=tag,
                     options={"clip_rate": 1.0}, token="secret-token", stop=False)
    h = st.to_hash()
    assert h["clips_tagged"] == "12" and h["live"] == "1" and h["last_t0"] == "1.500" and h["finished_at"] == ""
    assert json.loads(h["latest"]) == {"t0": 1.5, "t1": 3.0, "labels": {"verb": [{"label": "grow", "score": 0.9}]},
                                       "alignment": None, "subtitle": ""}
    back = StreamState.from_hash("cam-1", h)
    assert back == st
    public = back.public()
    assert public["clips_tagged"] == 12 and public["live"] is True and public["latest"]["t0"] == 1.5
    assert not {"token", "stop", "entry", "owner_pid"} & set(public)
    assert StreamState.from_hash("x", {}).status == StreamStatus.queued  # absent fields take their defaults
    with pytest.raises(ValueError, match="not fields of the stream state: clips_dropped_total"):
        StreamState.encode(clips_dropped_total=3)


def test_a_tag_row_carries_embedding_and_latency_only_when_set():
    from schemas.state import TagResult

    row = TagResult(t0=0.0, t1=1.5, labels={}, alignment=0.5, subtitle="hi")
    assert set(row.to_dict()) == {"t0", "t1", "labels", "alignment", "subtitle"}
    assert set(TagResult(**row.to_dict(), latency_s=0.2).to_dict()) == {"t0", "t1", "labels", "alignment", "subtitle",
                                                                        "latency_s"}


def test_labels_are_one_frozen_value_built_by_the_options():
    from schemas.streams import LabelSet, StreamOptions

    opts = StreamOptions(template="watch me [MASK] it", labels={"action": ["grow", "shrink"]})
    assert opts.label_set == LabelSet(template="watch me [MASK] it", slots=(("action", ("grow", "shrink")),))
    assert hash(opts.label_set) == hash(StreamOptions.model_validate(opts.model_dump()).label_set)
    assert StreamOptions().label_set is None and StreamOptions(labels={"verb": ["grow"]}).label_set.template is None
    full = StreamOptions(labels={"verb": ["grow"]}).label_set.over(
        LabelSet(template="watch me [MASK]", slots=(("noun", ("star",)),)))
    assert full == LabelSet(template="watch me [MASK]", slots=(("verb", ("grow",)),))
    with pytest.raises(ValueError, match="template has 2 \\[MASK\\] slot\\(s\\) but 1 label set"):
        LabelSet(template="[MASK] [MASK]", slots=(("verb", ("grow",)),))
    with pytest.raises(JobError, match="template has 1"):
        IngestJob.from_fields({"url": "x", "options": '{"template": "a [MASK]", "labels": {"a": ["x"], "b": ["y"]}}'})


def test_statuses_and_failure_reasons_are_the_metrics_label_sets():
    from actors.metrics import BY_NAME, FINAL_STATUSES, STATUSES
    from actors.url_policy import UrlRefused
    from schemas.streams import FailureReason

    assert STATUSES == tuple(s.value for s in StreamStatus)
    assert set(FINAL_STATUSES) == {"finished", "failed", "stopped"}
    assert set(BY_NAME["vbs_failures_total"].values["reason"]) == {r.value for r in FailureReason} - {"stopped"}
    assert UrlRefused("scheme", "x").failure == FailureReason.refused_scheme
    with pytest.raises(ValueError):
        UrlRefused("no_such_code", "x")  # every refusal has its declared reason
