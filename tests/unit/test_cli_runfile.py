"""The run file of `vbs up` (ops/runfile.py): where it lives, what it keeps (never a password), and that only a
running `vbs up`'s file counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops import runfile


def test_the_state_directory_follows_the_environment(tmp_path):
    assert runfile.state_dir_from({"VBS_STATE_DIR": str(tmp_path), "XDG_STATE_HOME": "/x"}) == tmp_path
    assert runfile.state_dir_from({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}) == Path("/x/state/vbs")
    assert runfile.state_dir_from({"HOME": "/home/u"}) == Path("/home/u/.local/state/vbs")
    assert runfile.state_dir_from({"VBS_STATE_DIR": "", "HOME": "/home/u"}) == Path("/home/u/.local/state/vbs")


def test_the_cache_directory_follows_the_environment_as_the_state_directory_does(tmp_path):
    from schemas.config import cache_dir_from

    assert cache_dir_from({"VBS_CACHE_DIR": str(tmp_path), "XDG_CACHE_HOME": "/x"}) == tmp_path
    assert cache_dir_from({"XDG_CACHE_HOME": "/x/cache", "HOME": "/home/u"}) == Path("/x/cache/vbs")
    assert cache_dir_from({"HOME": "/home/u"}) == Path("/home/u/.cache/vbs")
    assert cache_dir_from({"VBS_CACHE_DIR": "", "HOME": "/home/u"}) == Path("/home/u/.cache/vbs")


@pytest.mark.parametrize("url, secret", [("redis://127.0.0.1:6379/0", False), ("redis://u@127.0.0.1:6379/0", False),
                                         ("redis://:pw@127.0.0.1:6379/0", True), ("rediss://u:pw@h:6380/0", True),
                                         ("redis://127.0.0.1:6379/0?password=pw", True)])
def test_a_url_with_a_password_is_never_written(tmp_path, url, secret):
    assert runfile.has_secret(url) is secret
    p = runfile.write(redis_url=url, redis_shown="shown", redis_local=False, prefix="vbs",
                      http="http://127.0.0.1:8000", config=None, directory=tmp_path)
    text = p.read_text()
    assert ("pw" in text) is False and json.loads(text)["redis_url"] == (None if secret else url)
    assert p.stat().st_mode & 0o777 == 0o600


def test_the_run_file_of_this_process_is_read_back_and_removed(tmp_path):
    assert runfile.read_live(tmp_path) is None, "no file: none"
    runfile.write(redis_url="redis://127.0.0.1:5/0", redis_shown="redis://127.0.0.1:5/0", redis_local=True,
                  prefix="p", http="http://127.0.0.1:8000", config="/c.toml", directory=tmp_path)
    info = runfile.read_live(tmp_path)
    assert info is not None and info.pid == os.getpid() and info.redis_local and info.prefix == "p"
    runfile.remove(tmp_path)
    assert not runfile.path_in(tmp_path).exists()


def _rewrite(tmp_path, **changes) -> None:
    p = runfile.path_in(tmp_path)
    p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))


def test_a_stale_run_file_is_ignored_and_left_to_its_owner(tmp_path):
    runfile.write(redis_url="redis://127.0.0.1:5/0", redis_shown="x", redis_local=True, prefix="p", http="h",
                  config=None, directory=tmp_path)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    _rewrite(tmp_path, pid=ended.pid)
    assert runfile.read_live(tmp_path) is None, "its process has ended"
    runfile.remove(tmp_path)
    assert runfile.path_in(tmp_path).exists(), "not ours: another vbs up's to remove (or to overwrite)"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
def test_a_reused_pid_does_not_revive_a_run_file(tmp_path):
    runfile.write(redis_url="redis://127.0.0.1:5/0", redis_shown="x", redis_local=True, prefix="p", http="h",
                  config=None, directory=tmp_path)
    assert runfile.read_live(tmp_path) is not None
    _rewrite(tmp_path, started="1")  # the same pid, but another process's start time
    assert runfile.read_live(tmp_path) is None


@pytest.mark.parametrize("text", ["{not json", "[]", '{"pid": "me"}', ""])
def test_an_unreadable_run_file_is_ignored(tmp_path, text):
    runfile.path_in(tmp_path).write_text(text)
    assert runfile.read_live(tmp_path) is None
