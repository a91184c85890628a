"""The run file of `vbs up`: how a client command in another terminal finds the service that `vbs up` started.

`vbs up` writes `up.json` in the state directory (VBS_STATE_DIR, else $XDG_STATE_HOME/vbs, else
~/.local/state/vbs) once the service answers, and removes it when it stops cleanly. It holds the Redis URL (only
when it carries no password: a redis-server that `vbs up` started has none), the key prefix, the HTTP port, the
config file and the pid. A run file whose process has gone (killed, machine restarted) is stale and ignored.

The state directory comes from the environment, read where every setting is (schemas.config.state_dir_from)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.config import state_dir_from

log = logging.getLogger(__name__)

RUN_FILE = "up.json"


def has_secret(url: str) -> bool:
    """Whether a Redis URL carries a password (in its userinfo or as ?password=)."""
    try:
        parts = urlsplit(url)
        return bool(parts.password) or any(k.lower() == "password" for k, _ in parse_qsl(parts.query))
    except ValueError:
        return True  # unparseable: treat as secret, never write it


class RunInfo(BaseModel):
    """What `up.json` holds."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pid: int
    started: str = ""  # the process's start time as /proc gives it (guards against a reused pid); "" elsewhere
    redis_url: str | None  # None when the URL has a password: the client must be given it
    redis_shown: str  # the URL with any password replaced by ***, for messages
    redis_local: bool = False  # a redis-server `vbs up` started for the session
    prefix: str
    http: str  # the base URL of the API and live page
    config: str | None = None  # the config file `vbs up` read
    at: float  # when it was written (Unix seconds)


def _proc_started(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), "" where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # the fields after the command name, which may hold spaces


def alive(pid: int, started: str = "") -> bool:
    """Whether process `pid` runs (and, where /proc tells, is the same process that wrote `started`)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    return not started or _proc_started(pid) in ("", started)


def path_in(directory: Path | None = None) -> Path:
    return (state_dir_from() if directory is None else Path(directory)) / RUN_FILE


def write(*, redis_url: str, redis_shown: str, redis_local: bool, prefix: str, http: str, config: str | None,
          directory: Path | None = None) -> Path:
    """Write this process's run file (atomically, readable by this user only); returns its path."""
    p = path_in(directory)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    other = read_live(p.parent)
    if other is not None and other.pid != os.getpid():
        log.warning("another vbs up (pid %s, %s) has a run file in %s; client commands now find this one",
                    other.pid, other.http, p.parent)
    info = RunInfo(pid=os.getpid(), started=_proc_started(os.getpid()),
                   redis_url=None if has_secret(redis_url) else redis_url, redis_shown=redis_shown,
                   redis_local=redis_local, prefix=prefix, http=http, config=config, at=time.time())
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(info.model_dump_json(indent=1) + "\n")
    os.replace(tmp, p)
    return p


def read_live(directory: Path | None = None) -> RunInfo | None:
    """The run file of a `vbs up` that is running, or None (no file, an unreadable one, or a stale one)."""
    p = path_in(directory)
    try:
        info = RunInfo.model_validate(json.loads(p.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as e:
        log.warning("ignoring the run file %s: %s", p, e)
        return None
    if not alive(info.pid, info.started):
        log.debug("ignoring the stale run file %s (pid %s has ended)", p, info.pid)
        return None
    return info


def remove(directory: Path | None = None) -> None:
    """Remove the run file if it is this process's (a later `vbs up` may have written its own)."""
    p = path_in(directory)
    try:
        if json.loads(p.read_text()).get("pid") == os.getpid():
            p.unlink()
    except (OSError, ValueError, AttributeError):
        pass
