"""The finished adversarial set as a W&B artifact of type ``dataset``, logged by a run of job type ``attack``.

The artifact is named after the configuration and recipe (``attack-tiny-roberta-marker-deepwordbug``); each
attacked prompt logs a version of it, aliased ``run-<source run id>`` (the W&B id of the prompt's fit run) and
``seed-<seed>``, with the sidecar's metadata (recipe, constraints, seed, source run, checkpoint hash, counts). The
attack's run names the prompt's run in its config (``source_run``), joins its group and declares the prompt's own
artifact (``prompt-…:run-<id>``, logged by the fit) as used, so W&B's lineage graph reads prompt -> attack run ->
adversarial set; W&B cannot record that from an offline run, and the sidecar's ``wandb`` entry says what was
declared. Without W&B credentials it logs offline (``wandb sync`` uploads it later), as every other command does.
"""

from __future__ import annotations

import re
from pathlib import Path

from records import prompt_artifact
from records.wandb_config import short_backbone
from skill_neurons.wandb_env import offline_reason

NO_PROMPT_ARTIFACT = ("the prompt's run has no prompt artifact (runs/<id>/prompt_artifact: it logs one when it "
                      "finishes with W&B on) — nothing to link the set to")


def artifact_name(backbone: str | None, task: str | None, recipe: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(["attack", short_backbone(backbone), task or "task", recipe]))


def prompt_reference(run_dir: Path) -> str | None:
    """The W&B reference of the attacked prompt's artifact: the run's ``prompt_artifact/`` (or the run folder
    itself when it is a downloaded artifact); None without one."""
    for folder in (Path(run_dir), Path(run_dir) / prompt_artifact.FOLDER):
        if prompt_artifact.is_folder(folder):
            return prompt_artifact.reference(folder)
    return None


def log_dataset(out: Path, meta: dict, model) -> dict:
    """Log ``out`` and its sidecar as a dataset artifact by a run that declares the prompt's artifact as used;
    returns ``{"artifact": name, "prompt_artifact": what was declared}``."""
    import wandb

    from lightning_modules.tracking import declare_prompt_use

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
        ref = prompt_reference(model.run)
        used = declare_prompt_use(run, ref) if ref else {"ref": None, "declared": False, "why": NO_PROMPT_ARTIFACT}
        seed = (model.summary.get("settings") or {}).get("seed")
        metadata = {k: v for k, v in meta.items() if k not in ("progress",)}
        artifact = wandb.Artifact(name, type="dataset", metadata=metadata)
        artifact.add_file(str(out), name=out.name)
        artifact.add_file(str(out) + ".meta.json", name=out.name + ".meta.json")
        aliases = ["latest", f"run-{source}", *[f"seed-{seed}"] * (seed is not None)]
        run.log_artifact(artifact, aliases=aliases)
        run.summary.update({**{f"attack/{k}": v for k, v in meta.items() if isinstance(v, (int, float))},
                            "prompt_artifact": used})
    finally:
        run.finish()
    return {"artifact": name, "prompt_artifact": used}
