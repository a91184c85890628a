"""The `vbs` command as a user runs it: help for every command, a real corpus, clear errors."""

import json
import subprocess
import sys

import pytest

from ops.cli import build_parser, main

COMMANDS = [[], ["corpus"], ["corpus", "make"], ["corpus", "read"], ["train"], ["train", "encoder"],
            ["train", "vocab"], ["train", "demo"], ["train", "videobert"], ["tag"], ["finetune"], ["eval"],
            ["eval", "encoder"], ["eval", "zero-shot"], ["eval", "words"], ["up"], ["push"], ["status"], ["stop"],
            ["tags"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "vbs")
def test_every_command_explains_itself(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: vbs" in text and len(text) > 200


def test_console_script_runs_corpus_make_and_read(tmp_path):
    out = tmp_path / "c"
    r = subprocess.run([sys.executable, "-m", "ops.cli", "corpus", "make", "--out", str(out), "--videos", "2",
                        "--seed", "4", "--workers", "2", "--min-seconds", "10", "--max-seconds", "10", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 videos" in r.stdout and "videos/min" in r.stdout
    assert len(list(out.glob("*.mp4"))) == 2 and len(list(out.glob("*.srt"))) == 2
    (out / "junk.mkv").write_bytes(b"junk")
    r = subprocess.run([sys.executable, "-m", "ops.cli", "corpus", "read", str(out), "--strict"],
                       capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1, "--strict fails when a file could not be read"
    assert [row.get("error", "")[:11] for row in rows if "junk" in row["file"]] == ["cannot open"]
    good = [row for row in rows if "error" not in row]
    assert len(good) == 2 and all(row["subtitles"] == "embedded" and row["labelled"] for row in good)


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "encoder", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "-q"])
    assert code == 2
    assert "vbs: error: no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("config, message", [("{fovea", "not JSON"), ("[4]", "must be a JSON object"),
                                             ('{"fovea_size": 4}', "takes no fovea_size")])
def test_bad_arch_config_is_a_clear_error(tiny_corpus, tmp_path, capsys, config, message):
    code = main(["train", "encoder", "--data", str(tiny_corpus), "--out", str(tmp_path / "o"), "--arch", "conv3d-fovea",
                 "--arch-config", config, "-q"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o" / "encoder.safetensors").exists()


def test_bad_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["corpus", "make", "--out", "x", "--videos", "1", "--container", "avi"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("slot, message", [("verb", "--slot takes NAME=word"), ("verb=grow", "at least 2 distinct"),
                                           ("noun=Star,circle", "at least 2 distinct")])
def test_bad_encoder_slot_is_a_clear_error(tiny_corpus, tmp_path, capsys, slot, message):
    code = main(["train", "encoder", "--data", str(tiny_corpus), "--out", str(tmp_path / "o"), "--slot", slot, "-q"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o" / "encoder.safetensors").exists()


def test_an_unknown_precision_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "videobert", "--data", "d", "--encoder", "e", "--vocab", "v", "--out", "o",
                                   "--precision", "fp16"])
    assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


def test_slot_loss_choices_are_the_trainers(capsys):
    from videobert.train_encoder import SLOT_LOSSES
    args = ["train", "encoder", "--data", "d", "--out", "o"]
    assert build_parser().parse_args(args).slot_loss == "mil"
    assert [build_parser().parse_args(args + ["--slot-loss", k]).slot_loss for k in SLOT_LOSSES] == list(SLOT_LOSSES)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(args + ["--slot-loss", "hinge"])
    assert e.value.code == 2 and "invalid choice: 'hinge'" in capsys.readouterr().err


def test_slot_and_no_slots_together_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "encoder", "--data", "d", "--out", "o", "--slot", "verb=grow,shrink",
                                   "--no-slots"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_encoder_slots_from_the_command_line(tiny_corpus, tmp_path):
    out = tmp_path / "o"
    code = main(["train", "encoder", "--data", str(tiny_corpus), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--arch-config", '{"width": 4, "feature_dim": 32}', "--slot", "verb=grow,shrink,lift,drop", "-q"])
    assert code == 0
    assert json.loads((out / "encoder.json").read_text())["slots"] == {"verb": ["grow", "shrink", "lift", "drop"]}
    train = json.loads((out / "encoder.json").read_text())["train"]
    assert train["slot_loss"] == "mil" and train["slot_q"] == 0.5
    code = main(["train", "encoder", "--data", str(tiny_corpus), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--arch-config", '{"width": 4, "feature_dim": 32}', "--no-slots", "--precision", "fp32", "-q"])
    encoder = json.loads((out / "encoder.json").read_text())
    assert code == 0 and encoder["slots"] == {} and encoder["train"]["precision"] == "fp32"
