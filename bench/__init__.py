"""Benchmarks and diagnostics: each a `python -m bench.NAME` command that writes its result as JSON."""

import json
from pathlib import Path


def write_result(path: str | Path, result: dict) -> None:
    """Write a benchmark's result as indented JSON, creating the folder (bench/results/ is not in git)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))


def cpu_model() -> str:
    """The CPU's model name (what a result was measured on), from /proc/cpuinfo where there is one."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def wait_for(cond, timeout: float, what: str, every: float = 0.25):
    """Poll `cond()` until it returns something truthy (returned), or raise AssertionError naming `what` after
    `timeout` seconds. For the benchmarks and the tests that watch a running graph."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")
