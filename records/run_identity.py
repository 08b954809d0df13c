"""The W&B name and job type of a ``skill-neurons`` command (command layer: reads the evaluated checkpoint and
its run's ``summary.json``; the naming rules themselves are :mod:`records.wandb_config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from records.configuration import label
from records.prompt_checkpoint import metadata_of, read_checkpoint
from records.summary import CHECKPOINT_DIR, flatten, read_summary
from records.sweep_trial import SweepTrial, sweep_trial
from records.wandb_config import job_type, run_name, task_name


def run_identity(config: dict[str, Any], stage: str, trial: SweepTrial | None = None) -> tuple[str, str]:
    """(W&B run name, job type) of a command, from its resolved config as a dict and, for ``validate``/``test``,
    the evaluated checkpoint: the task and seed its prompt was trained with (from the checkpoint and, for
    ``runs/<id>/checkpoints/*.ckpt``, that run's ``summary.json``). A sweep trial (``trial``, default: the one
    this process is, :func:`records.sweep_trial.sweep_trial`) adds the values of its varied keys that the
    name does not show yet, as :func:`records.configuration.label` writes them."""
    backbone = ((config.get("model") or {}).get("init_args") or {}).get("backbone")
    task, seed = task_name((config.get("data") or {}).get("task")), config.get("seed_everything")
    suppression = config.get("suppression") or {}
    source_task = None
    ckpt_path = config.get("ckpt_path")
    if stage != "fit" and ckpt_path and Path(ckpt_path).is_file():
        checkpoint = read_checkpoint(ckpt_path)
        imported = metadata_of(checkpoint).get("imported_from") or {}
        backbone = (checkpoint.get("hyper_parameters") or {}).get("backbone") or backbone
        trained_on = (checkpoint.get("datamodule_hyper_parameters") or {}).get("task")
        source_task = task_name(trained_on) or imported.get("task")
        folder = Path(ckpt_path).resolve().parent
        settings = read_summary(folder.parent).get("settings", {}) if folder.name == CHECKPOINT_DIR else {}
        seed = settings.get("seed", imported.get("seed", seed))
    rate = suppression.get("rate")
    trial = trial or sweep_trial()
    swept = label(flatten(config), trial.name_keys(suppression=rate is not None)) if trial else ""
    return (run_name(stage, backbone, task, seed, suppression=suppression if rate is not None else None,
                     source_task=source_task, swept=swept),
            job_type(stage, rate, source_task, task))
