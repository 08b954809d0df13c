"""A sweep trial's record: the sweep that started this run and the values it swept, read from the environment
that ``skill-neurons sweep`` and ``wandb agent`` give a trial (bottom layer: no Lightning, no wandb).

Both write the trial's parameters to ``$WANDB_SWEEP_PARAM_PATH`` in W&B's config-file format (``key: {value:
v}``; ``wandb.init`` reads the same file and adds each key to the run's W&B config). ``skill-neurons sweep`` also
says the sweep's name and id and which keys take more than one value in the sweep file (``$SKILL_NEURONS_SWEEP``,
``$SKILL_NEURONS_SWEEP_ID``, ``$SKILL_NEURONS_SWEEP_VARIED``); under ``wandb agent`` the id is
``$WANDB_SWEEP_ID`` and every swept key counts as varied (the agent does not pass the sweep file).

A trial's run name shows the varied values that the name does not already hold (:meth:`SweepTrial.name_keys`):
two trials of ``sweeps/quickstart.yaml`` are ``tiny-roberta·marker·s33·lr0.01`` and ``…·s33·lr3e-3``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAM_PATH_ENV = "WANDB_SWEEP_PARAM_PATH"
AGENT_SWEEP_ID_ENV = "WANDB_SWEEP_ID"
SWEEP_NAME_ENV = "SKILL_NEURONS_SWEEP"
SWEEP_ID_ENV = "SKILL_NEURONS_SWEEP_ID"
VARIED_ENV = "SKILL_NEURONS_SWEEP_VARIED"  # comma-separated keys
# Settings every run name already shows (backbone · task · seed), never repeated as swept values.
NAMED_KEYS = frozenset({"seed_everything", "model.backbone", "data.backbone", "data.task"})
# What a suppression run's name already shows (``supp-skill-5%``).
SUPPRESSION_NAMED_KEYS = frozenset({"suppression.rate", "suppression.selection", "suppression.perturbation"})
# What an intervention run's name already shows (``patch-skill-5%``, ``scale2-random-5%-mean``).
INTERVENTION_NAMED_KEYS = frozenset({"intervention.kind", "intervention.rate", "intervention.selection",
                                     "intervention.alpha", "intervention.baseline"})


def varied_keys(parameters: Mapping[str, Any]) -> list[str]:
    """The keys of a sweep file's ``parameters`` that take more than one value: ``values`` with two or more
    distinct entries, or a distribution (``min``/``max``); ``value`` and one-entry ``values`` are fixed."""
    keys = []
    for key, spec in parameters.items():
        if not isinstance(spec, Mapping):
            continue
        values = spec.get("values")
        distinct = {repr(v) for v in values} if isinstance(values, list) else set()
        if len(distinct) > 1 or ("min" in spec and "max" in spec):
            keys.append(str(key))
    return keys


def read_param_file(path: str | os.PathLike) -> dict[str, Any]:
    """``{key: value}`` from a W&B config file (``wandb_version: 1``, ``key: {value: v}``); W&B's own keys
    (``wandb_version``, ``_wandb``) are left out. ``{}`` when the file is missing or unreadable."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): (v.get("value") if isinstance(v, dict) and "value" in v else v) for k, v in data.items()
            if k not in ("wandb_version", "_wandb")}


@dataclass(frozen=True)
class SweepTrial:
    """The sweep (name, id) that started this run, the values it gave (``parameters``) and the keys that vary
    across the sweep's trials (``varied``)."""

    name: str | None
    id: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    varied: tuple[str, ...] = ()

    def name_keys(self, suppression: bool = False, intervention: bool = False) -> list[str]:
        """The varied keys a run name must add to tell this trial from the others: those it does not show yet."""
        named = (NAMED_KEYS | (SUPPRESSION_NAMED_KEYS if suppression else frozenset())
                 | (INTERVENTION_NAMED_KEYS if intervention else frozenset()))
        return [k for k in self.varied if k not in named]

    def to_summary(self) -> dict[str, Any]:
        """``summary.json`` → ``sweep``."""
        return {"name": self.name, "id": self.id, "parameters": dict(self.parameters), "varied": list(self.varied)}

    def wandb_config(self) -> dict[str, Any]:
        """The W&B config keys of the trial: ``sweep.name``, ``sweep.id`` and ``sweep.parameters`` (the swept keys;
        W&B adds each key's value under its own name from ``$WANDB_SWEEP_PARAM_PATH``)."""
        config: dict[str, Any] = {"sweep.parameters": sorted(self.parameters)}
        config.update({f"sweep.{k}": v for k, v in (("name", self.name), ("id", self.id)) if v})
        return config


def sweep_trial(environ: Mapping[str, str] | None = None) -> SweepTrial | None:
    """The sweep trial this process is (from ``environ``, default ``os.environ``), or None outside a sweep."""
    env = os.environ if environ is None else environ
    path = env.get(PARAM_PATH_ENV)
    if not path:
        return None
    parameters = read_param_file(path)
    sweep_id = env.get(SWEEP_ID_ENV) or env.get(AGENT_SWEEP_ID_ENV) or None
    varied = env.get(VARIED_ENV)
    keys = [k for k in varied.split(",") if k] if varied is not None else list(parameters)
    return SweepTrial(name=env.get(SWEEP_NAME_ENV) or sweep_id, id=sweep_id, parameters=parameters,
                      varied=tuple(keys))
