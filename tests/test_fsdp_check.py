"""``benchmarks/fsdp_check.py`` and its step in ``benchmarks/gpu_check.sh``: Lightning's FSDP needs a GPU, so on
CPU the check is rehearsed with ``--accelerator cpu --strategy auto``; what is tested here is that it measures
the right things and fails loudly when the statistics are not exact."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from records.neuron_files import save_neuron_file
from tests.helpers import ROOT, subprocess_env


def fsdp_check():
    spec = importlib.util.spec_from_file_location("fsdp_check", ROOT / "benchmarks" / "fsdp_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def neuron_file(path, threshold_shift: float = 0.0, flipped: int = 0) -> dict:
    """A validation neuron file of 2 layers x 1 position x 8 units over 40 examples; ``flipped`` examples of
    unit 0 counted on the other side of its threshold."""
    threshold = torch.linspace(-1, 1, 16).reshape(2, 1, 8) + threshold_shift
    accuracy = torch.full((2, 1, 8), 30 / 40)
    accuracy[0, 0, 0] += flipped / 40
    save_neuron_file(path, {"threshold": threshold, "accuracy": accuracy, "score": accuracy.amax(dim=1)},
                     {"analysed_positions": "last"})
    return {"neurons": str(path)}


def test_compare_accepts_rounding_of_thresholds_and_refuses_any_other_difference(tmp_path):
    compare = fsdp_check().compare
    reference = neuron_file(tmp_path / "a.safetensors")
    diffs, failures = compare(reference, neuron_file(tmp_path / "b.safetensors", threshold_shift=1e-7), 1e-5)
    assert failures == [] and 0 < diffs["threshold"] < 1e-6 and diffs["accuracy"] == diffs["score"] == 0
    diffs, failures = compare(reference, neuron_file(tmp_path / "c.safetensors", threshold_shift=1e-3), 1e-5)
    assert failures == [f"thresholds differ by {diffs['threshold']:.3g} (> 1e-05 x 1)"]
    _, failures = compare(reference, neuron_file(tmp_path / "d.safetensors", flipped=1), 1e-5)
    assert failures == ["accuracy differs by 0.025 (counts of examples must be equal)",
                        "score differs by 0.025 (counts of examples must be equal)"]
    _, failures = compare(reference, {"analysis_error": "RuntimeError: sharded weight"}, 1e-5)
    assert failures == ["the skill-neuron analysis failed: RuntimeError: sharded weight"]


def gpu_check(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "out"
    python = Path(sys.executable).parent  # gpu_check.sh calls python3: this environment's
    env = subprocess_env({"SMOKE": "1", "FSDP_ONLY": "1", "OUT": str(out), "FSDP_ARGS": " ".join(extra),
                          "OMP_NUM_THREADS": "1", "PATH": f"{python}:{os.environ['PATH']}"})
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return proc, [line for line in lines if line["step"] == "fsdp_causal_lm"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_gpu_check_runs_the_fsdp_check_and_fails_clearly_when_statistics_are_not_exact(tmp_path, tiny_backbones):
    proc, [step] = gpu_check(tmp_path / "rehearsal")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert step["ok"] is True and step["failures"] == [] and "error" not in step
    assert step["fsdp"]["backbone_identical"] and step["fsdp"]["prompt_trained"]
    assert step["fsdp"]["checkpoint_keys"] == ["prompt.weight"]
    assert step["analysis"] == {"threshold": 0.0, "accuracy": 0.0, "score": 0.0}  # one device: bit for bit
    # a tolerance below zero makes even equal thresholds "not exact": the failure path end to end
    proc, [step] = gpu_check(tmp_path / "failing", "--threshold-tolerance", "-1")
    assert proc.returncode == 1 and "gpu_check: FAILED: fsdp_causal_lm" in proc.stdout
    assert step["ok"] is False and step["error"].startswith("exit 1: thresholds differ by 0 (> -1 x")
    log = (tmp_path / "failing" / "out" / "log.txt").read_text()
    assert "fsdp_check: FAILED: thresholds differ by 0" in log
