"""The finished adversarial set as a W&B artifact of type ``dataset``, logged by a run of job type ``attack``.

The artifact is named after the configuration and recipe (``attack-tiny-roberta-marker-deepwordbug``); each
attacked prompt logs a version of it, aliased ``run-<source run id>`` (the W&B id of the prompt's fit run) and
``seed-<seed>``, with the sidecar's metadata (recipe, constraints, seed, source run, checkpoint hash, counts). The
attack's run names the prompt's run in its config (``source_run``) and joins its group. Without W&B credentials it
logs offline (``wandb sync`` uploads it later), as every other command does.
"""

from __future__ import annotations

import re
from pathlib import Path

from records.wandb_config import short_backbone
from skill_neurons.wandb_env import offline_reason


def artifact_name(backbone: str | None, task: str | None, recipe: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(["attack", short_backbone(backbone), task or "task", recipe]))


def log_dataset(out: Path, meta: dict, model) -> str:
    """Log ``out`` and its sidecar as a dataset artifact; returns the artifact's name."""
    import wandb

    settings = meta["settings"]
    logger = ((model.config.get("trainer") or {}).get("logger") or {})
    logger_args = (logger.get("init_args") or {}) if isinstance(logger, dict) else {}
    mode = "offline" if offline_reason() else None
    source = settings["source_run"]
    name = artifact_name(settings["backbone"], settings["task"], settings["recipe"])
    run = wandb.init(project=logger_args.get("project") or "skill-neurons", job_type="attack", mode=mode,
                     group=logger_args.get("group"), name=f"{source}·attack-{settings['recipe']}",
                     config={"source_run": source, **{k: v for k, v in settings.items() if k != "constraints"},
                             **{f"constraints.{k}": v for k, v in settings["constraints"].items()}},
                     settings=wandb.Settings(silent=True), reinit="create_new")
    try:
        seed = (model.summary.get("settings") or {}).get("seed")
        metadata = {k: v for k, v in meta.items() if k not in ("progress",)}
        artifact = wandb.Artifact(name, type="dataset", metadata=metadata)
        artifact.add_file(str(out), name=out.name)
        artifact.add_file(str(out) + ".meta.json", name=out.name + ".meta.json")
        aliases = ["latest", f"run-{source}", *[f"seed-{seed}"] * (seed is not None)]
        run.log_artifact(artifact, aliases=aliases)
        run.summary.update({f"attack/{k}": v for k, v in meta.items() if isinstance(v, (int, float))})
    finally:
        run.finish()
    return name
