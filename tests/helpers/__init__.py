"""Helpers of the test suite, imported one way: ``from tests.helpers import ...``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Real GLUE / AdvGLUE files for the label-map tests: a folder holding glue_sst2/{train,dev}.tsv,
# glue_qnli/dev.tsv, glue_mnli/dev_matched.jsonl and advglue/dev{,_ann}.json as the releases ship them.
REAL_DATA_ENV = "SKILL_NEURONS_REAL_DATA"

# Fast CLI options: a couple of short epochs on the marker task, no progress bars.
QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.num_sanity_val_steps=0"]


def isolated_env(tmp: Path) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp / "wandb"), "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "SKILL_NEURONS_HOME": str(tmp / "skill-neurons-home"),
        "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
    }


def real_data(*parts: str) -> Path:
    """A real data file under ``$SKILL_NEURONS_REAL_DATA``; the test is skipped, naming the variable, without it."""
    folder = os.environ.get(REAL_DATA_ENV)
    path = Path(folder).joinpath(*parts) if folder else None
    if path is None or not path.exists():
        pytest.skip(f"no {'/'.join(parts)} here: set {REAL_DATA_ENV} to a folder with the GLUE/AdvGLUE files "
                    "(glue_sst2/, glue_qnli/, glue_mnli/, advglue/ as the releases name them)")
    return path


def subprocess_env(extra: dict | None = None) -> dict[str, str]:
    """The test environment for a child process, without this process's W&B service: a CLI run that
    attached to it would leave its records to a service that the test session may tear down first."""
    env = {**os.environ, **(extra or {})}
    env.pop("WANDB_SERVICE", None)
    return env


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``skill-neurons`` CLI in a subprocess (the console script's entry point)."""
    full_env = subprocess_env(env)
    proc = subprocess.run([sys.executable, "-m", "skill_neurons.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"skill-neurons {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def cli_in_process(args: list[str], cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    """``skill-neurons ARGS`` run in this process — the console script's ``main`` without a new interpreter (no
    start-up, no imports): its exit code, stdout and stderr, as :func:`run_cli` gives them; ``check`` raises on
    a non-zero exit as :func:`run_cli` does. The environment and ``sys.argv`` are restored afterwards."""
    from skill_neurons.cli import main

    saved_env, saved_argv = dict(os.environ), sys.argv
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        sys.argv = ["skill-neurons"]
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    if check and code != 0:
        raise AssertionError(f"skill-neurons {' '.join(args)} failed ({code}):\n{err.getvalue()[-4000:]}")
    return subprocess.CompletedProcess(["skill-neurons", *args], code, out.getvalue(), err.getvalue())


def leet(*args: str) -> str:
    """W&B's own reader of a run's .wandb log (``wandb leet inspect``)."""
    wandb = str(Path(sys.executable).parent / "wandb")
    return subprocess.run([wandb, "leet", "inspect", *args], capture_output=True, text=True, timeout=120,
                          check=True).stdout


def wandb_state(record: Path) -> dict:
    """An offline W&B run as W&B reads it back: name, tags, config, summary (``wandb leet inspect``)."""
    return json.loads(leet("--summary", "--json", str(record)))


def only_run_dir(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def summary_of(run_dir: Path) -> dict:
    from records.summary import summary_path

    return json.loads(summary_path(run_dir).read_text())
