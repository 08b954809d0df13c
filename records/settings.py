"""A run's settings: one frozen value, read the same way from ``summary.json``, from the config a run logged to
W&B and from a neuron file's metadata, and written once (``summary.json`` → ``settings``).

The settings are what tell one run's prompt and analysis from another's: backbone, family, task, seed, prompt
length, input layout, the analysed positions and part, the stage, and the hyper-parameters a sweep varies
(learning rate, precision, world size). Files written by older versions lack some of them; what those runs
were is decided here and nowhere else (:data:`OLDER_FILES`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from records.wandb_config import SETTING_KEYS, short_backbone, task_name

# What a file written before a setting was recorded did: every such run used these.
OLDER_FILES = {"layout": "standard", "positions": "prompt", "part": "encoder"}
# Lightning's short spellings of a precision -> the one ``str(trainer.precision)`` records.
PRECISIONS = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}
ANALYSIS_CLASS = "SkillNeuronCallback"  # the callback whose ``part`` and ``positions`` are the analysed ones
ANALYSIS_KEYS = {"positions": "analysed_positions", "part": "part"}  # setting -> key in a neuron file's metadata


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def family_of_backbone(backbone: str | None) -> str:
    """The family of a run that recorded none (files of the papers' two families only): T5 or RoBERTa-like."""
    return "seq2seq" if "t5" in str(backbone or "").lower() else "masked_lm"


def artifact_name(backbone: str | None, task: str | None, layout: str | None, stage: str | None = "fit",
                  kind: str = "skill-neurons") -> str:
    """The artifact of one configuration: ``skill-neurons-roberta-base-sst2-paper`` (the neuron files, ``kind``
    ``skill-neurons``) or ``prompt-roberta-base-sst2-paper`` (the trained prompt, ``kind`` ``prompt``); the runs of
    every seed log versions of it (aliased by seed). Evaluation runs (``validate``/``test``) get their own
    (``…-validate``). W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    parts = [kind, short_backbone(backbone), task or "task", layout or OLDER_FILES["layout"]]
    if stage not in (None, "fit"):
        parts.append(stage)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


def _analysis_in_config(callbacks: Any) -> dict[str, Any]:
    """``part`` and ``positions`` of the skill-neuron callback in a config's ``trainer.callbacks`` list."""
    for item in callbacks if isinstance(callbacks, list) else ():
        if isinstance(item, dict) and str(item.get("class_path", "")).rsplit(".", 1)[-1] == ANALYSIS_CLASS:
            return dict(item.get("init_args") or {})
    return {}


@dataclass(frozen=True)
class RunSettings:
    """The settings of one run. ``positions``/``part`` are those of its skill-neuron analysis (the callback's,
    also for a run that evaluates without analysing); ``stage`` is ``fit``, ``validate``, ``test`` or
    ``predict``. Build one with :meth:`read` (fills what older files lack) or one of the ``from_*`` readers."""

    backbone: str | None = None
    family: str | None = None
    task: str | None = None
    seed: int | None = None
    prompt_length: int | None = None
    layout: str = OLDER_FILES["layout"]
    positions: str = OLDER_FILES["positions"]
    part: str = OLDER_FILES["part"]
    stage: str | None = None
    learning_rate: float | None = None
    precision: str | None = None
    world_size: int | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def read(cls, values: dict[str, Any]) -> RunSettings:
        """Settings from ``{name: value}`` (unknown names ignored, None = not recorded): what a file written
        before a setting existed lacks is filled in as those runs had it (:data:`OLDER_FILES`, the family from
        the backbone's name), a task given as a mapping is its name, a precision and a stage are spelled as
        Lightning records them (``32-true``, ``fit``)."""
        found = {name: values.get(name) for name in cls.names() if values.get(name) is not None}
        found.update({name: value for name, value in OLDER_FILES.items() if name not in found})
        if "family" not in found:
            found["family"] = family_of_backbone(found.get("backbone"))
        if "task" in found:
            found["task"] = task_name(found["task"])
        if "stage" in found:  # Lightning's stage is a string enum: its value ("fit"), never its name
            found["stage"] = str(getattr(found["stage"], "value", found["stage"]))
        if "precision" in found:
            found["precision"] = PRECISIONS.get(str(found["precision"]), str(found["precision"]))
        return cls(**found)

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> RunSettings:
        """The settings of a ``summary.json`` (or the same structure read from W&B): its ``settings``, and for
        files that did not record one there, its skill-neuron section, data section and config."""
        settings, neurons = summary.get("settings") or {}, summary.get("skill_neurons") or {}
        data, config = summary.get("data") or {}, summary.get("config") or {}
        analysis = _analysis_in_config(config.get("trainer.callbacks"))
        values = {name: _first(settings.get(name), config.get(SETTING_KEYS.get(name, "")))
                  for name in cls.names()}
        values["backbone"] = _first(values["backbone"], neurons.get("backbone"))
        values["family"] = _first(values["family"], neurons.get("family"))
        values["task"] = _first(values["task"], data.get("task"), neurons.get("task"))
        values["layout"] = _first(settings.get("layout"), neurons.get("layout"), data.get("layout"),
                                  config.get(SETTING_KEYS["layout"]))
        for name, key in ANALYSIS_KEYS.items():
            values[name] = _first(settings.get(name), neurons.get(key), analysis.get(name))
        values["stage"] = _first(settings.get("stage"), summary.get("stage"), neurons.get("stage"))
        return cls.read(values)

    @classmethod
    def from_wandb_config(cls, config: dict[str, Any], stage: str | None = None) -> RunSettings:
        """The settings of a W&B run from the config :class:`~callbacks.run_summary.RunSummary` logged: each
        setting under its CLI key (:data:`~records.wandb_config.SETTING_KEYS`) or, where none holds it, as
        ``run.<name>`` (runs logged before one key per setting have ``run.*`` for all). ``stage``: for runs
        logged before ``run.stage`` existed (the caller infers it from the metrics)."""
        values = {name: _first(config.get(f"run.{name}"), config.get(SETTING_KEYS.get(name, "")))
                  for name in cls.names()}
        analysis = _analysis_in_config(config.get("trainer.callbacks"))  # a list, as logged before spell-out
        for name in ANALYSIS_KEYS:
            values[name] = _first(values[name], analysis.get(name))
        values["stage"] = _first(values["stage"], stage)
        return cls.read(values)

    @classmethod
    def from_neuron_file(cls, metadata: dict[str, Any]) -> RunSettings:
        """The settings a neuron file records (backbone, family, task, layout, analysed positions, part, stage)."""
        values = {name: metadata.get(ANALYSIS_KEYS.get(name, name)) for name in cls.names()}
        return cls.read(values)

    def to_json(self) -> dict[str, Any]:
        """``summary.json`` → ``settings``: every setting by name (None where not known)."""
        return dataclasses.asdict(self)

    def neuron_metadata(self) -> dict[str, Any]:
        """The settings a neuron file records, under the file's keys (``analysed_positions``)."""
        names = ("backbone", "family", "part", "task", "stage", "layout", "positions")
        return {ANALYSIS_KEYS.get(name, name): getattr(self, name) for name in names}

    @property
    def artifact_name(self) -> str:
        """The skill-neuron artifact of this run's configuration (:func:`artifact_name`)."""
        return artifact_name(self.backbone, self.task, self.layout, self.stage)

    @property
    def prompt_artifact_name(self) -> str:
        """The prompt artifact of this run's configuration (``prompt-<backbone>-<task>-<layout>``): one per
        configuration, whatever the stage (only fits train a prompt)."""
        return artifact_name(self.backbone, self.task, self.layout, "fit", kind="prompt")
