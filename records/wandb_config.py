"""How a run presents itself on the W&B dashboard: its name, its job type, the config W&B shows and the step of
its charts (its skill-neuron artifact's name is :func:`records.settings.artifact_name`). Plain functions of plain
data (no Lightning, no wandb, no I/O), called by the CLI, the run summary and the skill-neuron callback.

=============  ==========================================  ==========================================
job type       when                                        name
=============  ==========================================  ==========================================
``fit``        ``skill-neurons fit``                       ``roberta-base·sst2·s33``
``validate``   ``validate`` of a prompt on its own task    ``roberta-base·sst2·s33·validate``
``test``       ``test`` of a prompt on its own task        ``roberta-base·sst2·s33·test``
``suppression``  ``--suppression.rate`` given              ``roberta-base·sst2·s33·supp-skill-5%``
``transfer``   a prompt of task A evaluated on task B      ``roberta-base·sst2·s33→qnli``
``predict``    ``skill-neurons predict`` (any task)         ``roberta-base·sst2·s33·predict`` (``…→qnli·predict``)
``report``     ``skill-neurons report --wandb``            ``report``
=============  ==========================================  ==========================================

The config W&B gets (:func:`run_config`) is the LightningCLI config without null or empty values and without
per-run paths (:data:`PER_RUN_KEYS`), with every ``class_path``/``init_args`` list (``trainer.callbacks``)
spelled out as one key per argument (``trainer.callbacks.SkillNeuronCallback.part``), one key per setting (the
copies LightningCLI links from the model, :data:`LINKED_KEYS`, are left out) and only the settings that apply
to the run's job type (:func:`applies`), so "show differences" between runs shows hyper-parameters only.
``summary.json`` keeps the full config. Every run also gets plain tags (:func:`run_tags`: ``backbone:…``,
``task:…``, ``seed:…``, ``layout:…``) to type in a dashboard filter; names keep ``·`` and ``→`` for reading.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

SEPARATOR = "·"
REPORT_NAME = "report"  # the W&B name of a `skill-neurons report --wandb` run
# Keys that differ between any two runs without saying anything about the experiment.
PER_RUN_KEYS = frozenset({"trainer.default_root_dir", "checkpoint.dirpath", "summary.run_dir", "trainer.logger.id",
                          "trainer.logger.save_dir", "trainer.logger.dir", "trainer.logger.version", "run_id"})
# Copies of a model setting that the CLI links into the data (``--model.backbone`` fills ``data.backbone``).
LINKED_KEYS = frozenset({"data.backbone", "data.prompt_length", "data.layout"})
# The run's settings (:class:`records.settings.RunSettings`) and the config key that already holds each one; a
# setting is logged (as ``run.<name>``) only when no config key holds it (``run.family``, ``run.stage``).
SETTING_KEYS = {"backbone": "model.backbone", "task": "data.task", "seed": "seed_everything",
                "prompt_length": "model.prompt_length", "layout": "model.layout",
                "positions": "trainer.callbacks.SkillNeuronCallback.positions",
                "part": "trainer.callbacks.SkillNeuronCallback.part",
                "learning_rate": "model.learning_rate", "precision": "trainer.precision"}
# What a fit's checkpoint callback decides about the experiment: which epoch's prompt is kept (and analysed). Its
# other options (file names, versions, verbosity) only manage files.
CHECKPOINT_SETTINGS = frozenset({"checkpoint.monitor", "checkpoint.mode"})
TAGGED = ("backbone", "task", "seed", "layout")  # the settings every run carries as a plain tag
MAX_TAG = 64  # W&B refuses longer tags


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
    """``fit``, ``predict``, ``validate`` or ``test``; ``suppression`` when neurons are perturbed; ``transfer``
    when the evaluated prompt was trained on another task."""
    if stage in ("fit", "predict"):
        return stage
    if suppression_rate is not None:
        return "suppression"
    if source_task and task and source_task != task:
        return "transfer"
    return stage


def run_name(stage: str, backbone: str | None, task: str | None, seed: Any = None, *,
             suppression: dict[str, Any] | None = None, source_task: str | None = None, swept: str = "") -> str:
    """The readable run name of the table above. ``task`` is the data's task; ``source_task`` the task the
    evaluated prompt was trained on (None: the same); ``seed`` that prompt's seed; ``swept`` a sweep trial's
    values that tell it from the other trials (``lr3e-3``, :mod:`records.sweep_trial`), right after the seed:
    ``tiny-roberta·marker·s33·lr3e-3``."""
    kind = job_type(stage, (suppression or {}).get("rate"), source_task, task)
    prompt_task = source_task or task
    parts = [short_backbone(backbone), prompt_task or "?"] + ([f"s{seed}"] if seed is not None else [])
    parts += [swept] if swept else []
    name = SEPARATOR.join(parts)
    if kind == "transfer" or (kind == "predict" and source_task and task and source_task != task):
        name = f"{name}→{task}"
    if kind == "transfer":
        return name
    if kind == "suppression":
        rate, selection = suppression["rate"], suppression.get("selection") or "skill"
        perturbation = suppression.get("perturbation") or "zero"
        name += f"{SEPARATOR}supp-{selection}-{rate:g}%" + ("" if perturbation == "zero" else f"-{perturbation}")
        return name + (f"→{task}" if source_task and task and source_task != task else "")
    return name if kind == "fit" else f"{name}{SEPARATOR}{kind}"


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


def applies(key: str, stage: str, suppression: bool, intervention: bool = False) -> bool:
    """Whether config ``key`` is a setting of a run of ``stage`` (``fit``, ``validate``, ``test``):
    ``suppression.*`` only where neurons are suppressed (``suppression`` true), ``intervention.*`` only where they
    are patched or scaled (``intervention`` true); of ``checkpoint.*`` only which
    epoch a fit keeps (:data:`CHECKPOINT_SETTINGS`), in a fit; ``ckpt_path`` only in an evaluation (in a fit it
    is a resume: a per-run path); never ``runs_dir`` (a folder), ``verbose`` (what is printed) or
    ``trainer.logger.*``, which configure the W&B run itself (W&B shows its project, group and tags)."""
    if key.startswith("suppression."):
        return suppression
    if key.startswith("intervention."):
        return intervention
    if key.startswith("checkpoint."):
        return stage == "fit" and key in CHECKPOINT_SETTINGS
    if key == "ckpt_path":
        return stage != "fit"
    return key not in ("runs_dir", "verbose") and not key.startswith("trainer.logger.")


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def run_config(flat: dict[str, Any], stage: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The W&B config of a run of ``stage``: :func:`clean_config` of its flat CLI config, one key per setting,
    only the settings that apply (:func:`applies`), no empty values; plus ``run.<name>`` for each derived
    setting of ``settings`` that no config key holds (:data:`SETTING_KEYS`; e.g. ``run.family``)."""
    suppression = flat.get("suppression.rate") is not None
    intervention = flat.get("intervention.kind") is not None
    out = {key: value for key, value in clean_config(flat).items()
           if key not in LINKED_KEYS and applies(key, stage, suppression, intervention) and not _empty(value)}
    for name, value in (settings or {}).items():
        if not _empty(value) and SETTING_KEYS.get(name) not in out:
            out[f"run.{name}"] = value
    return out


def run_tags(settings: dict[str, Any], existing: Any = ()) -> list[str]:
    """``existing`` tags (the config's ``trainer.logger.tags``) followed by ``backbone:…``, ``task:…``,
    ``seed:…``, ``layout:…`` from the run's ``settings`` (unset ones left out), each once."""
    tags = [str(t) for t in existing or ()]
    for name in TAGGED:
        value = settings.get(name)
        if name == "backbone":
            value = short_backbone(value) if value else None
        elif name == "task":
            value = task_name(value)
        if not _empty(value):
            tags.append(f"{name}:{value}"[:MAX_TAG])
    return list(dict.fromkeys(tags))


def chart_step(trainer: Any) -> int:
    """The step Lightning gives the logger (W&B's ``trainer/global_step`` axis): the number of batches that
    stepped the optimizer, counted *after* the epoch's validation, so one less than ``trainer.global_step`` at
    the end of an epoch's training."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))
