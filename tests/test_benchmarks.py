"""The benchmark scripts run on CPU with tiny shapes and print their one JSON line (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, subprocess_env


def run_benchmark(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=600, env=subprocess_env({"PYTHONWARNINGS": "ignore"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
def test_analysis_benchmark_prints_its_json_line(tiny_backbones):
    result = run_benchmark("analysis.py", "--train=64", "--eval=24", "--adv=16", "--batch-size=16", "--repeats=1",
                           "--memory-scales=1,2")
    assert result["examples"] == {"train": 64, "validation": 24, "adv/marker_typo": 16}
    assert result["analysis_s"] > 0 and result["plain_s"] > 0 and result["device"].startswith("cpu")
    assert result["ratio_analysis_over_plain"] == result["analysis_s"] / result["plain_s"]
    assert [m["scale"] for m in result["memory"]] == [1, 2] and all(m["peak_mb"] > 0 for m in result["memory"])


@pytest.mark.subprocess
def test_train_step_benchmark_times_ours_and_peft(tiny_backbones):
    for backbone, family in (("tiny-roberta", "masked_lm"), ("tiny-t5", "seq2seq")):
        result = run_benchmark("train_step.py", f"--backbone={backbone}", "--batch-size=4", "--prompt-length=4",
                               "--text-length=12", "--steps=2", "--blocks=2", "--warmup=1")
        assert result["family"] == family and result["device"].startswith("cpu") and result["mfu"] is None
        assert result["tokens_per_step"] == 4 * (4 + 12) and result["non_embedding_params"] > 0
        assert result["peft"] is not None, result.get("peft_reason")  # peft is a dev extra: it must have run
        for side in ("ours", "peft"):
            figures = result[side]
            assert all(figures[key] > 0 for key in ("ms_per_step", "steps_per_s", "tokens_per_s"))
            assert len(figures["ms_per_step_blocks"]) == 2
        ratio = result["peft"]["ms_per_step"] / result["ours"]["ms_per_step"]
        assert result["ratio_steps_per_s_ours_over_peft"] == ratio
        # Same weights, same starting prompt, same batch, fp32: both sides see the same first loss.
        assert result["first_loss_abs_diff"] < 1e-4
