"""The README is a page for users, kept true to the code: its troubleshooting table explains every failure
reason the graph records, every file it links exists, every `vbs` command and `bench` module it names is
real, and every metric it names is one the service exports (and the other way round)."""

from __future__ import annotations

import re
from pathlib import Path

from actors.metrics import METRICS
from schemas.streams import FailureReason

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start: end if end > 0 else None]


def test_troubleshooting_explains_every_failure_reason_with_a_cause_and_a_fix():
    rows = {}
    for line in section("Troubleshooting").splitlines():
        m = re.match(r"\| `([a-z_]+)` \| (.+?) \| (.+?) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    reasons = {r.value for r in FailureReason if r is not FailureReason.stopped}
    assert reasons - set(rows) == set(), f"reasons the README does not explain: {sorted(reasons - set(rows))}"
    assert set(rows) - reasons == set(), f"rows for reasons that do not exist: {sorted(set(rows) - reasons)}"
    assert all(cause.strip() and fix.strip() for cause, fix in rows.values())


def test_every_linked_file_exists_in_the_repository():
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links {target}, which is not in the repository"
        assert "../shared" not in text, f"{doc.name} names a file outside the repository"


def test_every_vbs_command_and_bench_module_it_names_is_real():
    from ops.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)
    named = set(re.findall(r"(?m)(?:^|`|\s)vbs ([a-z][a-z-]+)", README))
    assert named and named - commands == set(), f"the README names vbs commands that do not exist: {named - commands}"
    for module in set(re.findall(r"\bbench\.([a-z_]+)", README)):
        assert (ROOT / "bench" / f"{module}.py").is_file(), f"the README names bench.{module}, which does not exist"


def test_the_metrics_it_lists_are_the_ones_the_service_exports():
    named = set(re.findall(r"`(vbs_[a-z_]+)", section("The service")))
    declared = {m.name for m in METRICS}
    assert named - declared == set(), f"the README names metrics that are not exported: {named - declared}"
    assert declared - {"vbs_up"} - named == set(), f"exported metrics the README does not list: {declared - named}"
