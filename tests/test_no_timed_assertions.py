"""CONTRIBUTING forbids timed assertions (a loaded CI machine must not fail a test):
tests wait on conditions with generous deadlines; performance figures live in
benchmarks/. This scans every test file for an assertion on a measured duration."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMED = re.compile(
    r"^\s*assert\b.*(\belapsed\b|duration_ms|\btook\b|perf_counter\(\)\s*-|monotonic\(\)\s*-|time\(\)\s*-).*[<>]")


def test_no_test_asserts_on_a_duration() -> None:
    offenders = []
    for path in sorted([*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]):
        if path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if TIMED.search(line) and "deadline" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
