"""How a run presents itself on the W&B dashboard: its name, its job type, the config W&B shows, the name of
its skill-neuron artifact and the step of its charts. Plain functions of plain data (no Lightning, no wandb,
no I/O), called by the CLI, the run summary and the skill-neuron callback.

=============  ==========================================  ==========================================
job type       when                                        name
=============  ==========================================  ==========================================
``fit``        ``skill-neurons fit``                       ``roberta-base·sst2·s33``
``validate``   ``validate`` of a prompt on its own task    ``roberta-base·sst2·s33·validate``
``test``       ``test`` of a prompt on its own task        ``roberta-base·sst2·s33·test``
``suppression``  ``--suppression.rate`` given              ``roberta-base·sst2·s33·supp-skill-5%``
``transfer``   a prompt of task A evaluated on task B      ``roberta-base·sst2·s33→qnli``
``report``     ``skill-neurons report --wandb``            ``report``
=============  ==========================================  ==========================================

The config W&B gets is the LightningCLI config without null values and without per-run paths
(:data:`PER_RUN_KEYS`), with every ``class_path``/``init_args`` list (``trainer.callbacks``) spelled out as
one key per argument (``trainer.callbacks.SkillNeuronCallback.part``), so "show differences" between runs
shows hyper-parameters only. ``summary.json`` keeps the full config.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

SEPARATOR = "·"
JOB_TYPES = ("fit", "validate", "test", "suppression", "transfer", "report")
# Keys that differ between any two runs without saying anything about the experiment.
PER_RUN_KEYS = frozenset({"trainer.default_root_dir", "checkpoint.dirpath", "summary.run_dir", "trainer.logger.id",
                          "trainer.logger.save_dir", "trainer.logger.dir", "trainer.logger.version", "run_id"})


def short_backbone(backbone: str | None) -> str:
    """``google/flan-t5-base`` -> ``flan-t5-base``; a local directory -> its folder name."""
    return PurePath(str(backbone)).name if backbone else "?"


def task_name(task: Any) -> str | None:
    """A task given by name or as a mapping (``{name: ..., ...}``)."""
    if isinstance(task, dict):
        return task.get("name")
    return None if task is None else str(task)


def job_type(stage: str, suppression_rate: float | None = None, source_task: str | None = None,
             task: str | None = None) -> str:
    """``fit``, ``validate`` or ``test``; ``suppression`` when neurons are perturbed; ``transfer`` when the
    evaluated prompt was trained on another task."""
    if stage == "fit":
        return "fit"
    if suppression_rate is not None:
        return "suppression"
    if source_task and task and source_task != task:
        return "transfer"
    return stage


def run_name(stage: str, backbone: str | None, task: str | None, seed: Any = None, *,
             suppression: dict[str, Any] | None = None, source_task: str | None = None, swept: str = "") -> str:
    """The readable run name of the table above. ``task`` is the data's task; ``source_task`` the task the
    evaluated prompt was trained on (None: the same); ``seed`` that prompt's seed; ``swept`` a sweep trial's
    values that tell it from the other trials (``lr3e-3``, :mod:`callbacks.sweep_trial`), right after the seed:
    ``tiny-roberta·marker·s33·lr3e-3``."""
    kind = job_type(stage, (suppression or {}).get("rate"), source_task, task)
    prompt_task = source_task or task
    parts = [short_backbone(backbone), prompt_task or "?"] + ([f"s{seed}"] if seed is not None else [])
    parts += [swept] if swept else []
    name = SEPARATOR.join(parts)
    if kind == "transfer":
        return f"{name}→{task}"
    if kind == "suppression":
        rate, selection = suppression["rate"], suppression.get("selection") or "skill"
        perturbation = suppression.get("perturbation") or "zero"
        name += f"{SEPARATOR}supp-{selection}-{rate:g}%" + ("" if perturbation == "zero" else f"-{perturbation}")
        return name + (f"→{task}" if source_task and task and source_task != task else "")
    return name if kind == "fit" else f"{name}{SEPARATOR}{kind}"


def artifact_name(backbone: str | None, task: str | None, layout: str | None, stage: str = "fit") -> str:
    """The skill-neuron artifact of one configuration: ``skill-neurons-roberta-base-sst2-paper``; the runs of
    every seed log versions of it (aliased by seed). Evaluation runs (``validate``/``test``) get their own
    (``…-validate``). W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    parts = ["skill-neurons", short_backbone(backbone), task or "task", layout or "standard"]
    if stage != "fit":
        parts.append(stage)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def _spell_out(key: str, items: list) -> dict[str, Any]:
    """``[{"class_path": "a.B", "init_args": {"x": 1}}]`` under ``key`` -> ``{key.B.class_path: "a.B",
    key.B.x: 1}``; a class that occurs twice gets ``B[1]`` for its second entry."""
    out: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for item in items:
        cls = str(item["class_path"]).rsplit(".", 1)[-1]
        index = seen.get(cls, 0)
        seen[cls] = index + 1
        prefix = f"{key}.{cls}" + (f"[{index}]" if index else "")
        out[f"{prefix}.class_path"] = item["class_path"]
        out.update({f"{prefix}.{name}": value for name, value in _drop_nulls(item.get("init_args") or {}).items()})
    return out


def is_class_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "class_path" in v for v in value)


def clean_config(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat CLI config (``model.learning_rate``...) as W&B shows it: no nulls, no per-run paths, lists of
    classes spelled out as one key per argument."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or key in PER_RUN_KEYS:
            continue
        if is_class_list(value):
            out.update(_spell_out(key, value))
        else:
            out[key] = _drop_nulls(value)
    return out


def chart_step(trainer: Any) -> int:
    """The step Lightning gives the logger (W&B's ``trainer/global_step`` axis): the number of batches that
    stepped the optimizer, counted *after* the epoch's validation, so one less than ``trainer.global_step`` at
    the end of an epoch's training."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))
