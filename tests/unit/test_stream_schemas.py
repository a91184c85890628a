"""Queue messages and settings: what is accepted, and the clear reason for what is not."""

from __future__ import annotations

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
