"""The fault suite's short version (bench/faults.py): the whole service under `vbs up` on its own Redis (AOF
on), one run per fault with Redis down 5 to 10 s: no job lost, no file clip lost or written twice, no live clip
unaccounted for, no stream failed. Opt-in (-m faults); .ci/run runs it after the default suite."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.faults


def test_one_run_of_every_fault_loses_nothing(trained_model, tmp_path):
    from bench import faults

    result = faults.main(["--model", str(trained_model), "--runs", str(len(faults.FAULTS)), "--redis-down", "5,10",
                          "--out", str(tmp_path / "faults.json")])
    summary = {k: v for k, v in result.items() if k != "details"}
    assert result["runs"] == len(faults.FAULTS) and set(result["faults"]) == set(faults.FAULTS), summary
    bad = [r for r in result["details"] if r["jobs_lost"] or r["clips_lost"] or r["clips_doubled"]
           or r["live_unaccounted"] or r["failed"] or r["unfinished"]]
    assert not bad, json.dumps(bad)
    assert all(r["resume_s"] is not None for r in result["details"]), json.dumps(result["details"])
