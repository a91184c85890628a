"""The `vbs` command line's contract, without a service: global flags before or after the subcommand, bad input
in one line with exit 2, an unexpected failure in one line with exit 1, `vbs tag` of a file that is no video."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ops import cli
from ops.cli import build_parser, main


def run_vbs(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


SERVICE = [["up"], ["push", "x.mp4"], ["status"], ["status", "cam"], ["stop", "cam"], ["tags", "cam"]]


@pytest.mark.parametrize("cmd", SERVICE, ids=lambda c: c[0])
def test_global_flags_work_before_and_after_a_service_command(cmd):
    flags = ["-v", "--config", "c.toml", "--redis-url", "redis://127.0.0.1:1/0"]
    for argv in ([*flags, *cmd], [*cmd, *flags], [flags[0], *cmd, *flags[1:]]):
        a = build_parser().parse_args(argv)
        assert (a.verbose, a.config, a.redis_url) == (True, "c.toml", "redis://127.0.0.1:1/0"), argv
    a = build_parser().parse_args(cmd)
    assert (a.verbose, a.config, a.redis_url) == (False, None, None), "unset, they take their defaults"
    a = build_parser().parse_args(["--config", "a.toml", *cmd, "--config", "b.toml"])
    assert a.config == "b.toml", "given twice: the later one"


@pytest.mark.parametrize("cmd", [["corpus", "make", "--out", "o", "--videos", "1"], ["train", "demo", "--out", "o"],
                                 ["eval", "zero-shot", "--model", "m", "--data", "d"], ["tag", "x.mp4"]],
                         ids=lambda c: " ".join(c[:2]))
def test_verbose_works_after_any_command(cmd):
    assert build_parser().parse_args([*cmd, "-v"]).verbose and build_parser().parse_args(["-v", *cmd]).verbose
    assert not build_parser().parse_args(cmd).verbose


@pytest.mark.parametrize("argv, says", [
    ([], "the following arguments are required: COMMAND"),
    (["stauts"], "invalid choice: 'stauts'"),
    (["up", "--bogus"], "unrecognized arguments: --bogus"),
    (["tags"], "vbs tags: error: the following arguments are required: id"),
    (["tags", "cam", "--since", "-1"], "--since: takes stream seconds from 0"),
    (["tags", "cam", "--since", "nan"], "not 'nan'"),
    (["tags", "cam", "--since", "inf"], "not 'inf'"),
    (["tags", "cam", "--since", "2.78e16"], "not '2.78e16'"),
    (["status", "--limit", "many"], "invalid int value: 'many'"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    assert e.value.code == 2
    assert len(out.err.splitlines()) == 1 and says in out.err and "--help)" in out.err, out.err
    assert out.out == ""


def test_since_takes_stream_seconds():
    assert build_parser().parse_args(["tags", "cam", "--since", "12.5"]).since == 12.5
    assert build_parser().parse_args(["tags", "cam"]).since is None


def test_an_unexpected_failure_is_one_line_and_exit_1(monkeypatch, capsys):
    def broken(a):  # a stub that injects the failure
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_status", broken)
    assert main(["status", "cam"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["vbs: error: RuntimeError: boom second line (vbs -v shows where)"]


def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[redis]\nprefix = 'has spaces'\n")
    for cmd in (["status"], ["tags", "cam"], ["push", "udp://127.0.0.1:5000"], ["up"]):
        assert main([*cmd, "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "redis.prefix" in err, err
    assert main(["status", "--config", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("what", ["missing", "junk", "text", "directory"])
def test_vbs_tag_of_what_is_no_video_is_one_line_and_exit_2(tmp_path, what):
    """It was a traceback from deep inside the reader, after the model had loaded."""
    source = tmp_path / "bad.mp4"
    if what == "junk":
        source.write_bytes(bytes(range(256)) * 64)
    elif what == "text":
        source = tmp_path / "notes.txt"
        source.write_text("not a video\n")
    elif what == "directory":
        source.mkdir()
    r = run_vbs("tag", source, "--model", tmp_path / "no-model")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr and str(source) in r.stderr, r.stderr
    assert r.stdout == ""


def test_the_console_script_restarts_once_with_malloc_tuned_and_leaves_a_user_s_tunables_alone():
    """glibc reads its tunables only when a process starts, so `vbs` execs itself once with MALLOC_TUNABLES added
    (the same process: its pid does not change); VBS_MALLOC=system and a user's own malloc tunables are left as
    they are; a bad VBS_MALLOC is one line and exit 2."""
    import os
    import platform

    from schemas.config import MALLOC_TUNABLES

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the restart is for glibc's malloc")
    probe = ("import os, sys; print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', '-'), flush=True); "
             "from ops.cli import main; sys.argv = ['vbs', '--help']; sys.exit(main())")

    def run(**env):
        base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VBS_MALLOC")}
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                              env={**base, **env})

    r = run()
    starts = [line.split(" ", 2)[1:] for line in r.stdout.splitlines() if line.startswith("start ")]
    assert r.returncode == 0 and "usage: vbs" in r.stdout, r.stderr
    assert [t for _, t in starts] == ["-", ":".join(MALLOC_TUNABLES)], "started once more, with the tunables"
    assert starts[0][0] == starts[1][0], "exec: the same process"
    for env, tunables in (({"VBS_MALLOC": "system"}, "-"), ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                                              "glibc.malloc.arena_max=2")):
        r = run(**env)
        assert r.returncode == 0 and [line.split(" ", 2)[2] for line in r.stdout.splitlines()
                                      if line.startswith("start ")] == [tunables], (env, r.stdout)
    r = run(VBS_MALLOC="jemalloc")
    assert r.returncode == 2 and r.stderr.strip() == "vbs: error: VBS_MALLOC must be 'tuned' or 'system', not 'jemalloc'"


def test_tuned_malloc_env_adds_to_other_tunables_and_only_for_glibc():
    from schemas.config import MALLOC_TUNABLES, tuned_malloc_env

    assert tuned_malloc_env({"GLIBC_TUNABLES": "glibc.rtld.nns=8"}, "glibc")["GLIBC_TUNABLES"] == \
        "glibc.rtld.nns=8:" + ":".join(MALLOC_TUNABLES)
    assert tuned_malloc_env({"PATH": "/bin"}, "glibc") == {"PATH": "/bin", "GLIBC_TUNABLES": ":".join(MALLOC_TUNABLES)}
    assert tuned_malloc_env({}, "") is None, "musl or another libc: nothing to tune"
    assert tuned_malloc_env({"VBS_MALLOC": ""}, "glibc") is not None, "empty means the default"
