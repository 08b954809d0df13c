"""What the Lightning components promise each other, as ``typing.Protocol``s instead of attribute probing.

* :class:`ChecksRun` — a callback that checks the model, data and settings before any work, and may need
  splits beyond the stage's own (the skill-neuron analysis needs the train split for its thresholds). The CLI
  runs :func:`preflight` before every stage; the callback also asks the DataModule for those splits itself
  (``datamodule.require``) when it is used without the CLI.
* :class:`PerturbsNeurons` — a callback that changes the model's neurons while it evaluates (suppression):
  the skill-neuron analysis and the transfer record stand aside.
* :class:`PromisesOutputs` — a callback whose files a run must hold before it counts as ``finished``.
* :class:`ReportsMetrics` — a callback that computes a stage's metrics itself (``predict`` logs none through
  Lightning): the run summary records them with the stage's other metrics.
* :class:`PromptData` — what the callbacks ask of the DataModule (``PromptDataModule`` has it all).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from records.eval_set import EvalSet


@runtime_checkable
class ChecksRun(Protocol):
    def data_roles(self, stage: str, trainer: Any = None) -> tuple[str, ...]:
        """Splits the DataModule must load for ``stage`` beyond its own (e.g. ``("train",)``)."""

    def check_run(self, trainer: Any, pl_module: Any, datamodule: Any, stage: str) -> None:
        """Raise one clear error (the project's own exception) for input that cannot give a meaningful run."""


@runtime_checkable
class PerturbsNeurons(Protocol):
    @property
    def perturbs_neurons(self) -> bool:
        """True while this callback evaluates a perturbed model."""


@runtime_checkable
class PromisesOutputs(Protocol):
    def promised_outputs(self, trainer: Any, stage: str) -> list[str]:
        """Paths relative to the run directory that ``stage`` writes."""


@runtime_checkable
class ReportsMetrics(Protocol):
    def stage_metrics(self, trainer: Any, stage: str) -> dict[str, float]:
        """Metrics this callback computed in ``stage`` (``{}`` when it computed none)."""


@runtime_checkable
class PromptData(Protocol):
    task: Any  # the task declaration (datamodules.task_spec.TaskSpec): name, text fields, label names
    source_rows: dict[str, Any]  # loaded evaluation sets before tokenising (text fields, label, idx), by EvalSet.split

    def load(self, stage: str | None) -> None:
        """Read, check and tokenise the splits ``stage`` needs."""

    def require(self, *roles: str) -> None:
        """Load splits beyond the stage's own, by role."""

    def eval_sets(self, stage: str) -> list[EvalSet]:
        """The evaluation sets of ``stage``, in loader order: the clean one first, then the adversarial ones."""

    def analysis_loader(self, role: str, indices: list[int], batch_size: int | None = None) -> Any:
        """A loader over the rows ``indices`` of split ``role``."""

    def state_for_summary(self) -> dict[str, Any]:
        """The task and its splits (files, hashes, rows) for ``summary.json``."""

    def scored_classes(self) -> list[str]:
        """The classes the model scores, in logit order: the labels, then ``extra:<word>`` per extra word."""


def neurons_perturbed(callbacks: list) -> bool:
    """Whether a callback of this trainer perturbs the model's neurons."""
    return any(isinstance(cb, PerturbsNeurons) and cb.perturbs_neurons for cb in callbacks)


def preflight(trainer: Any, pl_module: Any, datamodule: Any, stage: str) -> None:
    """Before ``stage`` starts (no logger, no run file yet): load what the stage and the callbacks need, and
    let every :class:`ChecksRun` callback check the run. A user's mistake fails here, before any work."""
    if not isinstance(datamodule, PromptData):
        return
    datamodule.load(stage)
    for callback in trainer.callbacks:
        if isinstance(callback, ChecksRun):
            datamodule.require(*callback.data_roles(stage, trainer))
            callback.check_run(trainer, pl_module, datamodule, stage)
