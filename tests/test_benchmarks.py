"""The benchmark scripts run on CPU with tiny shapes and print their one JSON line (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def run_benchmark(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_analysis_benchmark_prints_its_json_line(tiny_backbones):
    result = run_benchmark("analysis.py", "--train=64", "--eval=24", "--adv=16", "--batch-size=16", "--repeats=1",
                           "--memory-scales=1,2")
    assert result["examples"] == {"train": 64, "validation": 24, "adv/marker_typo": 16}
    assert result["analysis_s"] > 0 and result["plain_s"] > 0 and result["device"].startswith("cpu")
    assert result["ratio_analysis_over_plain"] == result["analysis_s"] / result["plain_s"]
    assert [m["scale"] for m in result["memory"]] == [1, 2] and all(m["peak_mb"] > 0 for m in result["memory"])
