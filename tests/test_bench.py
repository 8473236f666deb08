"""`make bench-quick`: every benchmark section runs end to end at CI size and reports its figures
against their targets. No timing is asserted (timings belong in the benchmarks, not in tests)."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
@pytest.mark.bench  # not in `python -m pytest` (CI): `make bench-quick` runs it, `make bench` the real thing
def test_quick_bench_reports_every_target(mnist_path, tmp_path):
    import bench

    report = tmp_path / "quick.md"
    out = subprocess.run([sys.executable, "bench/bench.py", "--quick", "--report", str(report)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    text = report.read_text()
    assert "--quick" in text.splitlines()[0]
    for section in ("Epoch time", "The fixed cost", "Time to the tutorial's accuracy", "Sweep throughput", "Peak memory"):
        assert f"### {section}" in text
    rows = {what: figure for what, figure in re.findall(r"^\| (.+?) \| ([-0-9.]+) \| .+ \| (?:met|\*\*missed\*\*) \|$",
                                                        text, re.M)}
    for what, _, _ in bench.TARGETS.values():  # every target has a finite figure from this run
        assert what in rows, f"no figure for {what!r} in:\n{text}"
        assert math.isfinite(float(rows[what]))
