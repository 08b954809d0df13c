"""Benchmark: how long the command layer's tools take to start, and what they import.

    python benchmarks/startup.py                       # median of 5 starts of each command
    python benchmarks/startup.py --repeats 9

Each command runs in a fresh interpreter with ``-X importtime``: ``skill-neurons sweep --status DIR`` (on a
sweep directory with one recorded trial), ``skill-neurons report --help`` and, for comparison,
``skill-neurons fit --help`` (the LightningCLI). Reported per command: the median wall time of the process, the
median total import time (the sum of ``-X importtime``'s top-level cumulative times) and whether Lightning,
transformers or datasets were imported. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("lightning", "transformers", "datasets")
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")


def sweep_dir(root: Path) -> Path:
    """A sweep directory as the runner leaves it: state.json with one finished trial."""
    directory = root / "sweep"
    directory.mkdir()
    state = {"version": 1, "sweep_id": "bench123", "sweep_file": "sweeps/quickstart.yaml", "cwd": str(root),
             "config": {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"}},
             "trials": [{"number": 1, "params": {"model.learning_rate": 0.01}, "state": "finished",
                         "metrics": {"val/acc": 0.9}, "history": [],
                         "attempts": [{"run_id": "abcd1234", "started": 0.0, "state": "finished"}]}]}
    (directory / "state.json").write_text(json.dumps(state))
    return directory


def measure(args: list[str], repeats: int) -> dict:
    walls, imports, heavy = [], [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "skill_neurons.cli", *args],
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"skill-neurons {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        total = 0
        for line in proc.stderr.splitlines():
            match = IMPORT_LINE.match(line)
            if not match:
                continue
            if not match.group(3).strip(" ") and len(match.group(3)) == 1:  # a top-level import
                total += int(match.group(2))
            name = match.group(4).split(".")[0]
            if name in HEAVY:
                heavy.add(name)
        imports.append(total / 1e6)
    return {"wall_s": statistics.median(walls), "import_s": statistics.median(imports), "heavy": sorted(heavy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = sweep_dir(Path(tmp))
        result = {
            "sweep_status": measure(["sweep", "--status", str(directory)], args.repeats),
            "report_help": measure(["report", "--help"], args.repeats),
            "fit_help": measure(["fit", "--help"], args.repeats),
        }
    result["ratio_sweep_status_over_fit_help"] = result["sweep_status"]["wall_s"] / result["fit_help"]["wall_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
