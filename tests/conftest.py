"""Shared test set-up: offline hubs, offline W&B in a temp dir, tiny backbones built once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _isolated_env(tmp: Path) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp / "wandb"), "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "SKILL_NEURONS_HOME": str(tmp / "skill-neurons-home"),
        "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
    }


def pytest_configure(config):
    """Before any test imports transformers/wandb: offline everything, caches in one session temp dir."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="skill-neurons-tests-"))
    for key, value in _isolated_env(tmp).items():
        os.environ[key] = value
    for key in ("WANDB_API_KEY", "WANDB_RUN_ID", "SKILL_NEURONS_RUN_ID"):
        os.environ.pop(key, None)


@pytest.fixture(autouse=True)
def _finish_wandb():
    yield
    import wandb

    wandb.finish()


@pytest.fixture(scope="session")
def tiny_backbones():
    """Build the tiny presets once (saved with save_pretrained, loaded back through from_pretrained)."""
    from lightning_modules.backbones import build_tiny_preset

    return {name: build_tiny_preset(name) for name in ("tiny-roberta", "tiny-t5")}


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared/data is only beside the development checkout)")
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
    proc = subprocess.run([sys.executable, "-m", "lightning_modules.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"skill-neurons {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def only_run_dir(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# Fast CLI options: a couple of short epochs on the marker task, no progress bars.
QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.num_sanity_val_steps=0"]
