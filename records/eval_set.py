"""One name per evaluation set: :class:`EvalSet` spells every name a set has, and reads them back.

A set is ``validation`` (the clean validation split), ``test`` (the labelled test split) or an adversarial set
(``adv_sst2``, ``marker_typo``). Its names, exactly as runs have always written them (old runs are still read),
for the clean ``validation`` / the adversarial ``x``:

- split (the DataModule's key, ``split`` in neuron files and summaries): ``validation`` / ``adv/x``;
- file stem (``skill_neurons/<stem>.safetensors``, ``predictions/<stem>.csv``): ``validation`` / ``x``;
- metric prefix: ``val`` / ``adv/x`` under ``val``; ``test`` (the set ``test``) / ``test/adv/x`` under ``test``;
  ``predict/validation`` / ``predict/x`` under ``predict``; ``skill_neurons/validation`` / ``skill_neurons/x``
  for the skill-neuron scalars.

:func:`parse_metric` and :func:`parse_neuron_metric` are the only readers of these metric names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CLEAN_SETS = ("validation", "test")  # the labelled clean splits an evaluation can read
ADVERSARIAL = "adv"  # the split and metric prefix of adversarial sets: adv/<name>
NEURONS = "skill_neurons"  # the W&B summary prefix of the skill-neuron metrics: skill_neurons/<name>/<metric>
PREDICT = "predict"  # the metric stage of predict: predict/<name>/<metric>
STAGE_OF_CLEAN = {"validation": "val", "test": "test"}  # a clean set's metric stage (and prefix)
MetricStage = Literal["val", "test", "predict"]


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set, named by ``name`` (``validation``, ``test`` or an adversarial set's name)."""

    name: str

    @classmethod
    def clean(cls, stage: str | None) -> EvalSet:
        """The clean set a Lightning ``stage`` evaluates: ``test`` under ``test``, else ``validation``."""
        return cls("test" if stage == "test" else "validation")

    @classmethod
    def of(cls, text: str) -> EvalSet:
        """The set a name or a split spells: ``adv/x`` and ``x`` are the adversarial set ``x``; ``validation``
        and ``test`` the clean splits."""
        prefix = f"{ADVERSARIAL}/"
        return cls(text[len(prefix):] if text.startswith(prefix) else text)

    @classmethod
    def from_section(cls, name: str, section: dict[str, Any] | None = None) -> EvalSet:
        """The set of a summary section ``sets[name]`` (``skill_neurons``, ``predictions``): its recorded
        ``split`` (or ``role``) when there is one, else its name."""
        section = section or {}
        return cls.of(str(section.get("split") or section.get("role") or name))

    @property
    def adversarial(self) -> bool:
        return self.name not in CLEAN_SETS

    @property
    def role(self) -> Literal["clean", "adversarial"]:
        return "adversarial" if self.adversarial else "clean"

    @property
    def split(self) -> str:
        """The DataModule's key for the set's rows, recorded as ``split`` in neuron files and summaries."""
        return f"{ADVERSARIAL}/{self.name}" if self.adversarial else self.name

    @property
    def file_stem(self) -> str:
        """``skill_neurons/<stem>.safetensors``, ``predictions/<stem>.csv``."""
        return self.name

    @property
    def display(self) -> str:
        """How figures and tables title the set: ``clean (validation)``, ``adversarial: adv_sst2``."""
        return f"adversarial: {self.name}" if self.adversarial else f"clean ({self.name})"

    def metric_prefix(self, stage: MetricStage) -> str:
        """The prefix of the set's metrics logged under ``stage`` (``val``, ``test``, ``predict``)."""
        if stage == PREDICT:
            return f"{PREDICT}/{self.name}"
        if stage not in ("val", "test"):
            raise ValueError(f"metric stage {stage!r}: use val, test or predict")
        if not self.adversarial:
            if STAGE_OF_CLEAN[self.name] != stage:
                raise ValueError(f"the clean set {self.name!r} is not evaluated under the metric stage {stage!r}")
            return stage
        return self.split if stage == "val" else f"{stage}/{self.split}"

    def metric(self, stage: MetricStage, metric: str) -> str:
        """A metric's full name: ``val/acc``, ``adv/x/acc``, ``test/adv/x/loss``, ``predict/x/acc``."""
        return f"{self.metric_prefix(stage)}/{metric}"

    @property
    def neuron_prefix(self) -> str:
        """The prefix of the set's skill-neuron metrics: ``skill_neurons/<name>``."""
        return f"{NEURONS}/{self.name}"

    def neuron_metric(self, metric: str) -> str:
        return f"{self.neuron_prefix}/{metric}"


@dataclass(frozen=True)
class Metric:
    """A metric name read back: its set, its stage (``val``, ``test``, ``predict``; ``None`` for the
    skill-neuron metrics, which name no stage) and the metric itself (``acc``, ``loss``, ``top5_mean``...)."""

    eval_set: EvalSet
    stage: MetricStage | None
    name: str


def parse_metric(key: str) -> Metric | None:
    """The set, stage and metric of an evaluation metric's name (the inverse of :meth:`EvalSet.metric`);
    ``None`` for other names (``train/loss_step``, ``trainer/global_step``, ``skill_neurons/...``)."""
    parts = key.split("/")
    if len(parts) >= 4 and parts[0] == "test" and parts[1] == ADVERSARIAL:
        return Metric(EvalSet(parts[2]), "test", "/".join(parts[3:]))
    if len(parts) >= 3 and parts[0] == ADVERSARIAL:
        return Metric(EvalSet(parts[1]), "val", "/".join(parts[2:]))
    if len(parts) >= 3 and parts[0] == PREDICT:
        return Metric(EvalSet(parts[1]), PREDICT, "/".join(parts[2:]))
    if len(parts) >= 2 and parts[0] in ("val", "test"):
        return Metric(EvalSet("validation" if parts[0] == "val" else "test"), parts[0], "/".join(parts[1:]))
    return None


def parse_neuron_metric(key: str) -> Metric | None:
    """The set and metric of a skill-neuron scalar ``skill_neurons/<set>/<metric>`` (the inverse of
    :meth:`EvalSet.neuron_metric`); ``None`` for other names (``skill_neurons/top_neurons``, the table)."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == NEURONS:
        return Metric(EvalSet(parts[1]), None, parts[2])
    return None
