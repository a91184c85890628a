"""Training precision: "auto" picks bf16 only where the hardware runs it, and bad settings are clear errors."""

import pytest
import torch

from videobert import precision
from videobert.pretrain import PretrainConfig, pretrain
from videobert.train_encoder import EncoderTrainConfig, train_encoder


def test_auto_follows_the_cpu_and_explicit_choices_stand():
    assert precision.resolve("auto", "cpu") == ("bf16" if precision.cpu_has_fast_bf16() else "fp32")
    assert precision.resolve("fp32", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "bf16"  # asked for: emulated where the CPU lacks it, but it runs


def test_autocast_runs_matrix_work_in_bf16_only_when_asked():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with precision.autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with precision.autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32


@pytest.mark.parametrize("bad, message", [("fp16", "precision must be one of"), ("", "precision must be one of")])
def test_unknown_precision_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        precision.resolve(bad, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_bf16_on_a_missing_cuda_device_is_refused():
    with pytest.raises(ValueError, match="not supported on cuda"):
        precision.resolve("bf16", "cuda")


def test_trainers_refuse_a_bad_precision_before_reading(tmp_path):
    """tmp_path holds no videos: the setting is refused before looking for them."""
    with pytest.raises(ValueError, match="precision must be one of"):
        train_encoder(tmp_path, tmp_path / "enc", EncoderTrainConfig(precision="half"), device="cpu", progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        pretrain(tmp_path, tmp_path / "enc", tmp_path / "vocab", tmp_path / "vb", PretrainConfig(precision="half"),
                 device="cpu", progress=False)


def test_precision_benchmark_writes_both_precisions_side_by_side(tmp_path):
    import json

    from bench import train_precision

    out = tmp_path / "p.json"
    # small batches: this checks the report, not the speed (bf16 is emulated, and slow, on a CPU without it)
    assert train_precision.main(["--out", str(out), "--rounds", "1", "--steps", "1", "--device", "cpu", "--clips", "8",
                                 "--sequences", "4", "--warmup", "1"]) == 0
    r = json.loads(out.read_text())
    assert (r["clips"], r["sequences"]) == (8, 4)
    for name in ("encoder", "videobert"):
        s = r[name]["seconds_per_step"]
        assert s["fp32"] > 0 and s["bf16"] > 0 and abs(r[name]["bf16_speedup"] - s["fp32"] / s["bf16"]) < 0.05


def test_auto_is_fp32_when_onednn_is_held_below_bf16(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bf16 (several times slower): auto must not pick it there."""
    from schemas.config import onednn_isa_cap

    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "AVX2" and onednn_isa_cap({}) is None
    try:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        precision.cpu_has_fast_bf16.cache_clear()
        assert precision.cpu_has_fast_bf16() is False and precision.resolve("auto", "cpu") == "fp32"
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
        precision.cpu_has_fast_bf16.cache_clear()
        uncapped = precision.cpu_has_fast_bf16()
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        precision.cpu_has_fast_bf16.cache_clear()
        assert uncapped == precision.cpu_has_fast_bf16(), "a cap at or above bf16 leaves the hardware to decide"
    finally:
        precision.cpu_has_fast_bf16.cache_clear()


def run_trial(trial, seconds: dict[str, float], steps: int) -> list[str]:
    """`steps` steps of a trial, each taking `seconds[its precision]`; the precisions they ran in."""
    ran = []
    for _ in range(steps):
        ran.append(trial.current())
        trial.record(seconds[ran[-1]])
    return ran


@pytest.mark.parametrize("bf16, fp32, kept", [(0.5, 1.0, "bf16"),  # bf16 pays (an AMD EPYC with AVX512-BF16)
                                              (1.1, 1.0, "bf16"),  # close: within the margin, the flag decides
                                              (1.48, 1.0, "fp32")])  # VideoBERT on a Xeon without AMX
def test_auto_on_a_bf16_cpu_measures_its_first_steps_and_keeps_the_faster(monkeypatch, bf16, fp32, kept):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    trial = precision.PrecisionTrial("auto", "cpu", warmup=2, timed=6)
    ran = run_trial(trial, {"bf16": bf16, "fp32": fp32}, 12)
    assert ran[:8] == ["bf16", "fp32"] * 4  # warm-up and timed steps alternate
    assert ran[8:] == [kept] * 4 and trial.chosen == kept
    assert trial.summary() == {"precision": kept, "precision_trial": {"bf16": bf16, "fp32": fp32}}


def test_the_trial_ignores_its_warm_up_steps(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    trial = precision.PrecisionTrial("auto", "cpu", warmup=2, timed=4)
    for s in (30.0, 0.9, 0.5, 1.0, 0.5, 1.0):  # bf16's first call took 30 s (kernels picked, memory allocated)
        trial.record(s)
    assert trial.chosen == "bf16" and trial.times == {"bf16": [0.5, 0.5], "fp32": [1.0, 1.0]}


@pytest.mark.parametrize("asked, fast_bf16, fixed", [("fp32", True, "fp32"), ("bf16", True, "bf16"),
                                                      ("auto", False, "fp32"), ("bf16", False, "bf16")])
def test_a_precision_that_needs_no_measuring_is_fixed_from_the_first_step(monkeypatch, asked, fast_bf16, fixed):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    trial = precision.PrecisionTrial(asked, "cpu")
    assert run_trial(trial, {"bf16": 9.0, "fp32": 1.0}, 10) == [fixed] * 10
    assert trial.summary() == {"precision": fixed}


def test_the_trainers_run_auto_through_the_trial_and_record_it(monkeypatch, tiny_corpus, tmp_path):
    """On a CPU taken to have fast bf16 (emulated where it has not: slow, but these steps are tiny) a trainer
    asked for auto runs its first steps in both precisions and its summary says which it kept, and why."""
    import json

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    cfg = EncoderTrainConfig(arch_config={"width": 4, "feature_dim": 32, "motion": True}, epochs=6, batch_size=16,
                             word_min_lines=2, precision="auto")
    summary = train_encoder(tiny_corpus, tmp_path / "enc", cfg, device="cpu", progress=False)
    assert summary["precision"] in ("bf16", "fp32") and set(summary["precision_trial"]) == {"bf16", "fp32"}
    assert json.loads((tmp_path / "enc" / "train_summary.json").read_text())["precision_trial"] == summary["precision_trial"]


def test_a_run_too_short_to_finish_its_trial_says_its_steps_were_mixed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    trial = precision.PrecisionTrial("auto", "cpu", warmup=2, timed=6)
    assert trial.summary() == {"precision": "bf16"}  # nothing ran yet: the first step would be bf16
    run_trial(trial, {"bf16": 1.0, "fp32": 1.0}, 1)
    assert trial.summary() == {"precision": "bf16"}
    run_trial(trial, {"bf16": 1.0, "fp32": 2.0}, 3)
    assert trial.summary() == {"precision": "mixed", "precision_trial": {"bf16": 1.0, "fp32": 2.0}}
