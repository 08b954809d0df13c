"""Where an evaluated prompt came from, and the W&B name and job type of a ``skill-neurons`` command (reads the
evaluated checkpoint and its run's ``summary.json``; the naming rules themselves are :mod:`records.wandb_config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from records.configuration import label
from records.prompt_artifact import read_record, reference
from records.prompt_checkpoint import metadata_of, read_checkpoint
from records.settings import RunSettings
from records.summary import flatten, read_summary, run_of_checkpoint
from records.sweep_trial import SweepTrial, sweep_trial
from records.wandb_config import SEPARATOR, job_type, run_name, task_name


def prompt_provenance(ckpt_path: str | Path) -> dict[str, Any]:
    """Where the prompt of a checkpoint came from: the checkpoint, the task and backbone it was trained on and,
    when it lies in ``<run>/checkpoints/`` (:func:`~records.summary.run_of_checkpoint`), that run's id, directory
    and seed — in a prompt artifact's folder, those of the fit run that logged it, and ``artifact``, the W&B
    reference of that version; an imported prompt's task and seed are those ``import-prompt`` recorded
    (``imported_from``)."""
    path = Path(ckpt_path).resolve()
    checkpoint = read_checkpoint(path)
    imported = metadata_of(checkpoint).get("imported_from") or {}
    run_dir = run_of_checkpoint(path)
    # a prompt artifact's folder (records.prompt_artifact) holds its fit run's record as run.json
    source = (read_summary(run_dir) or read_record(run_dir)) if run_dir else {}
    settings = RunSettings.from_summary(source) if source else RunSettings()
    trained_on = task_name((checkpoint.get("datamodule_hyper_parameters") or {}).get("task"))
    artifact = reference(run_dir) if run_dir else None
    return {
        "checkpoint": str(path), "run_id": source.get("run_id"), "run_dir": str(run_dir) if source else None,
        "task": trained_on or settings.task or imported.get("task"),
        "backbone": (checkpoint.get("hyper_parameters") or {}).get("backbone") or settings.backbone,
        "seed": settings.seed if source else imported.get("seed"),
        **({"artifact": artifact} if artifact else {}),
    }


def run_identity(config: dict[str, Any], stage: str, trial: SweepTrial | None = None) -> tuple[str, str]:
    """(W&B run name, job type) of a command, from its resolved config as a dict and, for ``validate``/``test``,
    the evaluated checkpoint: the task and seed its prompt was trained with (:func:`prompt_provenance`). A sweep
    trial (``trial``, default: the one this process is, :func:`records.sweep_trial.sweep_trial`) adds the values
    of its varied keys that the name does not show yet, as :func:`records.configuration.label` writes them."""
    backbone = ((config.get("model") or {}).get("init_args") or {}).get("backbone")
    task, seed = task_name((config.get("data") or {}).get("task")), config.get("seed_everything")
    suppression = config.get("suppression") or {}
    source_task = None
    ckpt_path = config.get("ckpt_path")
    if stage != "fit" and ckpt_path and Path(ckpt_path).is_file():
        source = prompt_provenance(ckpt_path)
        backbone, source_task = source["backbone"] or backbone, source["task"]
        seed = source["seed"] if source["run_dir"] or source["seed"] is not None else seed
    rate = suppression.get("rate")
    intervention = config.get("intervention") or {}
    intervening = stage in ("validate", "test") and intervention.get("kind") is not None
    trial = trial or sweep_trial()
    named = trial.name_keys(suppression=rate is not None, intervention=intervening) if trial else []
    swept = label(flatten(config), named) if trial else ""
    if intervening:
        return (intervention_name(backbone, task, seed, intervention, swept), "intervention")
    return (run_name(stage, backbone, task, seed, suppression=suppression if rate is not None else None,
                     source_task=source_task, swept=swept),
            job_type(stage, rate, source_task, task))


def intervention_name(backbone: str | None, task: str | None, seed: Any, intervention: dict[str, Any],
                      swept: str = "") -> str:
    """``tiny-roberta·marker·s33·patch-skill-5%``, ``…·scale2-random-5%`` (``…-mean`` from the threshold)."""
    kind, selection = intervention["kind"], intervention.get("selection") or "skill"
    rate = intervention.get("rate")
    rate = 5.0 if rate is None else rate
    what = "patch" if kind == "patch" else f"scale{intervention.get('alpha'):g}"
    baseline = "-mean" if kind == "scale" and intervention.get("baseline") == "mean" else ""
    return run_name("fit", backbone, task, seed, swept=swept) + f"{SEPARATOR}{what}-{selection}-{rate:g}%{baseline}"
