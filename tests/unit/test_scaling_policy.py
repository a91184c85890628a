"""The pools' arithmetic (actors/scaling.py) and their bounds in the config: no Ray, no Redis."""

from __future__ import annotations

import logging

import pytest

from actors.scaling import PoolPolicy, QueueWindow, decoders_wanted, stage_wanted
from schemas.config import DecoderSettings, Settings, StageSettings


def test_decoders_follow_the_streams_against_streams_per_replica():
    assert [decoders_wanted(n, 16) for n in (0, 1, 16, 17, 48)] == [0, 1, 1, 2, 3]


def test_a_model_stage_follows_its_queue_against_its_target():
    assert [stage_wanted(q, 64) for q in (0, 0.5, 64, 64.5, 200)] == [0, 1, 1, 2, 4]


def test_the_queue_is_averaged_over_the_look_back_window():
    w = QueueWindow(look_back_s=5)
    assert w.add(0, 100) == 100
    assert w.add(1, 0) == 50
    assert w.add(7, 0) == 0  # the burst has left the window


def test_up_at_once_down_only_after_the_delay_to_the_most_wanted_meanwhile():
    p = PoolPolicy("decoder", lo=1, hi=8, target=2, downscale_delay_s=10)
    assert p.decide(6, now=0) == 6  # up at once, by as many as wanted
    assert p.decide(20, now=1) == 8  # never past max_replicas
    assert p.decide(2, now=2) == 8  # wanting fewer: wait
    assert p.decide(4, now=5) == 8
    assert p.decide(1, now=12) == 4  # after 10 s: the most it wanted meanwhile
    assert p.decide(0, now=13) == 4
    assert p.decide(5, now=14) == 5  # a rise ends the wait
    assert p.decide(0, now=23) == 5
    assert p.decide(0, now=30) == 5
    assert p.decide(0, now=33) == 1  # never below min_replicas


def test_pool_bounds_default_to_a_fixed_pool_and_are_checked():
    s = Settings()
    assert (s.decoder.min_replicas, s.decoder.max_replicas) == (1, 1)
    assert (StageSettings(replicas=2, max_replicas=5).min_replicas, StageSettings(replicas=2, max_replicas=5).max_replicas) == (2, 5)
    assert DecoderSettings(replicas=3, min_replicas=1).max_replicas == 3
    with pytest.raises(ValueError, match=r"replicas \(6\) must lie between"):
        StageSettings(replicas=6, max_replicas=5)
    with pytest.raises(ValueError, match="must lie between"):
        DecoderSettings(replicas=1, min_replicas=2, max_replicas=4)


def test_the_quick_start_config_lets_the_decoder_pool_follow_the_streams():
    s = Settings.load("ops/config.toml")
    assert s.decoder.min_replicas < s.decoder.max_replicas and s.autoscaling.enabled


def test_a_stage_given_a_gpu_that_sees_no_cuda_runs_on_the_cpu_and_says_so(caplog):
    import torch

    from videobert.device import stage_device

    if torch.cuda.is_available():
        pytest.fail("this test needs a machine without CUDA (it checks the fallback for a declared-only GPU)")
    with caplog.at_level(logging.WARNING, logger="videobert.device"):
        assert stage_device("auto", 0.5) == torch.device("cpu")
    assert "sees no CUDA device" in caplog.text
    caplog.clear()
    assert stage_device("auto", 0) == torch.device("cpu") and not caplog.text  # no GPU asked for: no warning
    with pytest.raises(ValueError, match="no CUDA"):
        stage_device("cuda", 0.5)  # asked for by name: an error, not a fallback


def test_a_pool_does_not_shrink_while_a_replica_it_asked_for_is_still_starting():
    # a dip in the load while a new node boots must not cancel the replica only to ask for it again (flapping)
    p = PoolPolicy("video_encoder", lo=1, hi=2, target=1, downscale_delay_s=5)
    assert p.decide(2, now=0, starting=False) == 2  # the pool adds a replica; it waits for a node
    assert [p.decide(0, now=t, starting=True) for t in (1, 6, 30)] == [2, 2, 2]
    assert p.decide(0, now=31) == 2  # it runs: the delay begins now
    assert p.decide(0, now=35) == 2
    assert p.decide(0, now=36) == 1


def test_a_replica_given_up_lowers_the_target_and_the_load_asks_again():
    p = PoolPolicy("video_encoder", lo=1, hi=3, target=1, downscale_delay_s=5)
    assert p.decide(3, now=0) == 3
    assert p.gave_up(size=2) == 2  # one of the two new replicas found no node in start_timeout_s
    assert p.decide(0, now=1) == 2  # no load left: it is not asked for again
    assert p.decide(3, now=2) == 3  # load: asked for again
    assert p.gave_up(size=0) == 1  # never below min_replicas
