"""The alerting rules (ops/prometheus-rules.yml): valid for promtool, each alert unit-tested with promtool's
own rule tests (ops/prometheus-rules.test.yml), loaded by the scrape config, and naming only series the
service exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from actors.metrics import METRICS

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus-rules.yml"
ALERTS = {"VbsTargetDown", "VbsStreamFailures", "VbsClipsDropped", "VbsTagLatencyHigh", "VbsIngestBacklogGrowing"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is needed (bash ops/setup.sh installs prometheus with apt-get)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=OPS)


def test_promtool_checks_the_rules_and_the_config_that_loads_them():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 5 rules found" in r.stdout
    r = promtool("check", "config", str(OPS / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "prometheus-rules.yml" in r.stdout  # the config loads the rules


def test_every_alert_passes_its_promtool_unit_test():
    r = promtool("test", "rules", str(OPS / "prometheus-rules.test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", (OPS / "prometheus-rules.test.yml").read_text()))
    assert tested == ALERTS == set(re.findall(r"- alert: (\w+)", RULES.read_text()))


def test_the_rules_name_only_series_the_service_exports():
    exported = {m.name for m in METRICS}
    exported |= {f"{m.name}_{s}" for m in METRICS if m.type == "histogram" for s in ("bucket", "sum", "count")}
    named = set(re.findall(r"\b(vbs_[a-z_]+)\b", "\n".join(
        line.split("expr:", 1)[1] for line in RULES.read_text().splitlines() if "expr:" in line)))
    assert named and named <= exported, named - exported
