"""Shared test set-up: offline hubs, offline W&B in a temp dir, tiny backbones built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import isolated_env


def pytest_configure(config):
    """Before any test imports transformers/wandb: offline everything, caches in one session temp dir."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="skill-neurons-tests-"))
    for key, value in isolated_env(tmp).items():
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
