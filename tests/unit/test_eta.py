"""The estimate of a demo build's time (videobert/eta.py): its arithmetic, the work it counts against what the
reader and the trainer really do, the calibration's hands off the build's random state, and the lines a tiny
build logs."""

import logging
import math

import pytest
import torch

from videobert import demo, eta
from videobert.kmeans import KMeansConfig
from videobert.pretrain import PretrainConfig
from videobert.train_encoder import EncoderTrainConfig

RATES = eta.Rates(render=1e-8, read=1e-4, encoder_step=0.3, encoder_clip=2e-3, videobert_step=0.5, text_line=5e-3)


@pytest.mark.parametrize("seconds, text", [(0.2, "under 1 s"), (0.5, "1 s"), (2.5, "3 s"), (42.4, "42 s"),
                                           (59.6, "1 min 00 s"),
                                           (400, "6 min 40 s"), (3599.4, "59 min 59 s"), (3725, "1 h 02 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert eta.format_duration(seconds) == text


def test_a_step_costs_its_setup_plus_its_work_at_the_rates():
    work = eta.Work(setup=2.0, units={"render": 1e9, "read": 1e4})
    assert work.seconds(RATES) == pytest.approx(2.0 + 10.0 + 1.0)
    assert work.main_unit(RATES) == "render"
    assert eta.Work(setup=1.0, units={}).main_unit(RATES) is None


def test_a_finished_step_replaces_the_rate_of_its_main_unit():
    work = eta.Work(setup=2.0, units={"render": 1e9, "read": 1e4})
    learned = eta.learn(RATES, work, seconds=33.0)  # 33 s = 2 s setup + 1 s of reading + 30 s of rendering
    assert learned.render == pytest.approx(3e-8)
    assert learned.read == RATES.read and learned.encoder_step == RATES.encoder_step  # the rest as calibrated
    quick = eta.learn(RATES, work, seconds=1.0)  # quicker than its own setup: the unit is not made free
    assert quick.render == pytest.approx(0.1 * RATES.render)
    assert eta.learn(RATES, eta.Work(1.0, {}), 5.0) == RATES


def test_the_clock_carries_what_a_step_measured_to_the_steps_after_it():
    work = {"corpus": eta.Work(1.0, {"render": 2e9}), "heldout_corpus": eta.Work(1.0, {"render": 1e9}),
            "encoder": eta.Work(2.0, {"encoder_step": 100})}
    clock = eta.BuildClock(work, list(work), RATES, calibration_seconds=3.0)
    assert clock.first == {"corpus": 21.0, "heldout_corpus": 11.0, "encoder": 32.0}
    left = clock.done("corpus", 41.0)  # rendering took twice the calibrated time
    assert clock.todo == ["heldout_corpus", "encoder"]
    assert left == pytest.approx(21.0 + 32.0)
    assert clock.first["heldout_corpus"] == 11.0  # the first estimate is kept as it was
    record = clock.record({"corpus": 41.0})
    assert record["steps"] == clock.first and record["total_seconds"] == 64.0
    assert record["actual_seconds"] == {"corpus": 41.0} and record["calibration_seconds"] == 3.0
    assert record["rates"]["render"] == RATES.render  # the calibrated rates, not the learned ones


def test_the_estimate_line_names_every_step_and_the_total():
    line = eta.estimate_line({"corpus": 80.0, "encoder": 185.0, "vocab": 0.2})
    assert line == "about 4 min 25 s on this machine (corpus 1 min 20 s, encoder 3 min 05 s, vocab under 1 s)"


def _work_of(videos: int, epochs: int, steps: int, workers: int = 2) -> dict[str, eta.Work]:
    train = eta.CorpusRecipe(0, videos, 10.0, 30.0)
    heldout = eta.CorpusRecipe(1000, 5, 10.0, 60.0)
    return eta.step_work(train, heldout, EncoderTrainConfig(epochs=epochs), KMeansConfig(depth=2, branching=12),
                         PretrainConfig(steps=steps), workers)


def test_the_work_of_a_recipe_follows_its_videos_epochs_and_steps():
    small, big = _work_of(40, epochs=4, steps=100), _work_of(160, epochs=2, steps=300)
    assert set(small) == set(eta.STEPS)
    # four times the videos of the same lengths: about four times the rendering and the clips
    assert big["corpus"].units["render"] / small["corpus"].units["render"] == pytest.approx(4, rel=0.15)
    assert big["vocab"].units["encoder_clip"] / small["vocab"].units["encoder_clip"] == pytest.approx(4, rel=0.15)
    # and half the epochs: about twice the encoder's training steps, in whole epochs
    assert big["encoder"].units["encoder_step"] / small["encoder"].units["encoder_step"] == pytest.approx(2, rel=0.15)
    assert small["encoder"].units["encoder_step"] % 4 == 0 and big["encoder"].units["encoder_step"] % 2 == 0
    assert small["videobert"].units["videobert_step"] == 100 and big["videobert"].units["videobert_step"] == 300
    assert small["heldout_corpus"] == big["heldout_corpus"]  # the same held-out videos
    seconds = sum(p.duration for p in eta.CorpusRecipe(0, 40, 10.0, 30.0).plans())
    assert seconds / 1.5 - 40 <= small["vocab"].units["encoder_clip"] <= seconds / 1.5  # back-to-back 1.5 s clips
    one = _work_of(40, epochs=4, steps=100, workers=1)  # one process renders all of it
    assert one["corpus"].units["render"] == pytest.approx(2 * small["corpus"].units["render"])


def test_a_build_that_trains_from_speech_counts_its_transcription():
    """A build with --text-source speech recognises every training video's audio in its encoder step (per worker
    process); a build from subtitles listens to nothing."""
    train, heldout = eta.CorpusRecipe(0, 40, 10.0, 30.0, speech=True), eta.CorpusRecipe(1000, 5, 10.0, 60.0)
    args = (train, heldout, EncoderTrainConfig(), KMeansConfig(depth=2, branching=12), PretrainConfig(steps=10), 2)
    heard, read = eta.step_work(*args, listen=True), eta.step_work(*args)
    seconds = sum(p.duration for p in train.plans())
    assert heard["encoder"].units["listen"] == pytest.approx(seconds / 2)
    assert "listen" not in read["encoder"].units and eta.needed_units(read, list(read)) == eta.needed_units(
        heard, list(heard)) - {"listen"}
    rates = eta.Rates(**{**vars(RATES), "listen": 0.01})
    assert heard["encoder"].seconds(rates) - read["encoder"].seconds(rates) == pytest.approx(0.01 * seconds / 2)


def test_an_estimate_for_a_recipe_is_its_work_at_the_rates():
    work = _work_of(40, epochs=4, steps=100)
    clock = eta.BuildClock(work, list(eta.STEPS), RATES)
    enc = work["encoder"].units
    assert clock.first["encoder"] == pytest.approx(eta.SETUP_SECONDS["encoder"] + enc["encoder_step"] * 0.3
                                                   + enc["read"] * 1e-4 + enc["text_line"] * 5e-3, abs=0.05)
    assert clock.first["videobert"] == pytest.approx(eta.SETUP_SECONDS["videobert"] + 100 * 0.5
                                                     + work["videobert"].units["encoder_clip"] * 2e-3, abs=0.05)


def test_the_clip_windows_counted_are_the_ones_the_reader_cuts(tmp_path):
    from videobert.corpus import make_corpus
    from videobert.reader import read_video

    cfg = EncoderTrainConfig()
    recipe = eta.CorpusRecipe(5, 3, 4.0, 9.0)
    make_corpus(tmp_path, recipe.videos, seed=recipe.seed, min_seconds=recipe.min_seconds,
                max_seconds=recipe.max_seconds, progress=False)
    for plan in recipe.plans():
        for stride in (cfg.window_stride, None):
            clips = read_video(tmp_path / f"{plan.name}.mp4", cfg.spec, stride=stride).clips
            want = eta.windows(plan.duration, cfg.spec.seconds, stride or cfg.spec.seconds, cfg.spec.frames)
            got = [t for c in clips for t in (c.t0, c.t1)]
            assert got == pytest.approx([t for w in want for t in w]), (plan.name, stride)


@pytest.mark.slow
def test_the_encoder_steps_counted_are_the_ones_it_trains(tmp_path):
    """The training steps come from the planned narration alone; the trainer counts them from the clips it
    read: the same number."""
    from videobert.corpus import make_corpus
    from videobert.train_encoder import train_encoder

    recipe = eta.CorpusRecipe(4, 4, 10.0, 14.0)
    cfg = EncoderTrainConfig(epochs=1, batch_size=16)
    make_corpus(tmp_path / "data", recipe.videos, seed=recipe.seed, min_seconds=recipe.min_seconds,
                max_seconds=recipe.max_seconds, progress=False)
    work = eta.step_work(recipe, recipe, cfg, KMeansConfig(depth=1, branching=4), PretrainConfig(steps=1), 1)
    summary = train_encoder(tmp_path / "data", tmp_path / "enc", cfg, device="cpu", progress=False)
    full, rest = divmod(summary["clips"], cfg.batch_size)  # a last batch of one clip is skipped
    assert work["encoder"].units["encoder_step"] == full + (rest >= 2)
    assert work["encoder"].units["text_line"] == summary["lines"]


@pytest.mark.slow
def test_calibration_measures_every_rate_and_leaves_the_random_state_alone():
    recipe = eta.CorpusRecipe(0, 3, 10.0, 12.0)
    enc, km, pre = EncoderTrainConfig(), KMeansConfig(depth=1, branching=6), PretrainConfig(steps=8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    rates = eta.calibrate(recipe, enc, km, pre, "cpu")
    assert torch.equal(torch.get_rng_state(), before)
    for name, value in vars(rates).items():
        assert math.isfinite(value) and value > 0, name
    assert rates.encoder_step > rates.encoder_clip  # a training step of a batch costs more than one clip's pass
    some = eta.calibrate(recipe, enc, km, pre, "cpu", needs={"render"})
    assert math.isfinite(some.render) and math.isfinite(some.read) and math.isnan(some.encoder_step)


TINY = demo.Preset(train_videos=6, heldout_videos=3, min_seconds=10, max_seconds=12, encoder_epochs=1,
                   vocab_depth=1, vocab_branching=6, pretrain_steps=8)


@pytest.mark.slow
def test_a_build_logs_its_estimate_and_each_step_and_keeps_it_in_the_card(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(demo.PRESETS, "tiny", TINY)
    caplog.set_level(logging.INFO, logger="videobert.demo")
    card = demo.build_demo(tmp_path, preset="tiny", seed=3, workers=2, device="cpu")
    said = [r.getMessage() for r in caplog.records if r.name == "videobert.demo"]
    estimate = [m for m in said if m.startswith("estimated time for this build: about ")]
    assert len(estimate) == 1, said
    per_step = estimate[0].split(" (", 1)[1].split(")")[0].split(", ")  # "corpus 2 s", "encoder 1 min 05 s", ...
    assert [part.split()[0] for part in per_step] == list(eta.STEPS)
    assert said.index(estimate[0]) < said.index("step corpus ...")  # before the first step
    done = [m for m in said if " done in " in m]
    assert [m.split()[1] for m in done] == list(eta.STEPS)
    assert all(m.endswith(" left") for m in done[:-1]) and "the build took " in done[-1]

    record = card["estimate"]
    assert set(record["steps"]) == set(eta.STEPS) and set(record["actual_seconds"]) == set(eta.STEPS)
    assert record["total_seconds"] == pytest.approx(sum(record["steps"].values()), abs=0.1)
    assert record["actual_seconds"] == card["step_seconds"]
    assert all(v > 0 for v in record["rates"].values()) and record["calibration_seconds"] > 0

    caplog.clear()
    again = demo.build_demo(tmp_path, preset="tiny", seed=3, workers=2, device="cpu")  # nothing left to do
    assert not [r for r in caplog.records if r.getMessage().startswith(("timing a few steps", "estimated time"))]
    assert again["estimate"] == record
