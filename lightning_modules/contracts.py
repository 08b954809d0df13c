"""What the Lightning components promise each other, as ``typing.Protocol``s instead of attribute probing.

* :class:`ChecksRun` — a callback that checks the model, data and settings before any work; with
  :class:`NeedsData` it also names splits beyond the stage's own (the skill-neuron analysis needs the train
  split for its thresholds). The CLI runs :func:`preflight` before every stage; the callback's ``setup`` calls
  :func:`check_at_setup`, which checks only what :func:`preflight` did not (a Trainer used without the CLI), so
  the check runs once per stage.
* :class:`PerturbsNeurons` — a callback that changes the model's neurons while it evaluates (suppression):
  the skill-neuron analysis and the transfer record stand aside.
* :class:`PromisesOutputs` — a callback whose files a run must hold before it counts as ``finished``.
* :class:`ReportsMetrics` — a callback that computes a stage's metrics itself (``predict`` logs none through
  Lightning): the run summary records them with the stage's other metrics.
* :class:`AnalysesNeurons` — a callback that analyses neurons: the part and positions it analyses are settings
  of the run (``summary.json`` → ``settings``).
* :class:`PromptData` — what the callbacks and the CLI ask of the DataModule; :class:`ModelData` — what the
  prompt-tuning module reads from it in ``setup`` (``PromptDataModule`` has both). Two protocols, so that a
  callback's ``isinstance`` check does not evaluate the verbalizer properties the module needs.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable
from weakref import WeakKeyDictionary

from records.eval_set import EvalSet


@runtime_checkable
class ChecksRun(Protocol):
    def check_run(self, trainer: Any, pl_module: Any, datamodule: Any, stage: str) -> None:
        """Raise one clear error (a :class:`records.errors.UserError`) for input that cannot give a meaningful run."""


@runtime_checkable
class NeedsData(Protocol):
    def data_roles(self, stage: str, trainer: Any = None) -> tuple[str, ...]:
        """Splits the DataModule must load for ``stage`` beyond its own (e.g. ``("train",)``)."""


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
class AnalysesNeurons(Protocol):
    def analysis_settings(self) -> dict[str, str]:
        """``{"part": ..., "positions": ...}``: which neurons this callback analyses."""


@runtime_checkable
class PromptData(Protocol):
    task: Any  # the task declaration (datamodules.task_spec.TaskSpec): name, text fields, label names
    datasets: dict[str, Any]  # loaded, tokenised splits by EvalSet.split / role (input_ids, label, idx ...)
    source_rows: dict[str, Any]  # loaded evaluation sets before tokenising (text fields, label, idx), by EvalSet.split

    @property
    def num_classes(self) -> int:
        """How many labels the task has."""

    def load(self, stage: str | None) -> None:
        """Read, check and tokenise the splits ``stage`` needs."""

    def require(self, *roles: str) -> None:
        """Load splits beyond the stage's own, by role."""

    def eval_sets(self, stage: str) -> list[EvalSet]:
        """The evaluation sets of ``stage``, in loader order: the clean one first, then the adversarial ones."""

    def lengths(self, role: str) -> list[int]:
        """The token count of every example of a loaded split."""

    def analysis_loader(self, role: str, indices: list[int], batch_size: int | None = None) -> Any:
        """A loader over the rows ``indices`` of split ``role``."""

    def state_for_summary(self) -> dict[str, Any]:
        """The task and its splits (files, hashes, rows) for ``summary.json``."""

    def scored_classes(self) -> list[str]:
        """The classes the model scores, in logit order: the labels, then ``extra:<word>`` per extra word."""


@runtime_checkable
class ModelData(Protocol):
    @property
    def family(self) -> str:
        """The backbone family of the DataModule's tokenizer (``masked_lm``, ``seq2seq``, ``causal_lm``)."""

    @property
    def layout(self) -> str:
        """``paper`` or ``standard``: how the text is laid out."""

    @property
    def label_token_ids(self) -> list[int]:
        """Vocabulary ids of the scored words, in logit order."""

    @property
    def label_target_ids(self) -> list[list[int]] | None:
        """``paper`` seq2seq: per label, its word's target tokens (-100 padded); ``None`` otherwise."""

    @property
    def mask_index(self) -> int | None:
        """Where ``<mask>`` sits among the text tokens; ``None`` when the text holds none."""

    def eval_sets(self, stage: str) -> list[EvalSet]:
        """The evaluation sets of ``stage``, in loader order (their metric names)."""


def neurons_perturbed(callbacks: list) -> bool:
    """Whether a callback of this trainer perturbs the model's neurons."""
    return any(isinstance(cb, PerturbsNeurons) and cb.perturbs_neurons for cb in callbacks)


# callback -> (trainer, stage) that preflight checked and whose setup has not run yet (a weak key: callbacks
# pickled to spawned processes check again there, with the data loaded there)
_PREFLIGHTED: WeakKeyDictionary = WeakKeyDictionary()


def preflight(trainer: Any, pl_module: Any, datamodule: Any, stage: str) -> None:
    """Before ``stage`` starts (no logger, no run file yet): load what the stage and the callbacks need, and
    let every :class:`ChecksRun` callback check the run. A user's mistake fails here, before any work."""
    if not isinstance(datamodule, PromptData):
        return
    datamodule.load(stage)
    for callback in trainer.callbacks:
        if isinstance(callback, ChecksRun):
            _check(callback, trainer, pl_module, datamodule, stage)
            _PREFLIGHTED[callback] = (id(trainer), stage)


def check_at_setup(callback: ChecksRun, trainer: Any, pl_module: Any, stage: str) -> None:
    """A :class:`ChecksRun` callback's ``setup``: load its splits and check the run, unless :func:`preflight`
    did both for this trainer and stage (the CLI) — so the check runs once per stage either way."""
    if _PREFLIGHTED.pop(callback, None) == (id(trainer), stage):
        return
    _check(callback, trainer, pl_module, getattr(trainer, "datamodule", None), stage)


def _check(callback: ChecksRun, trainer: Any, pl_module: Any, datamodule: Any, stage: str) -> None:
    if isinstance(callback, NeedsData) and isinstance(datamodule, PromptData):
        datamodule.require(*callback.data_roles(stage, trainer))
    callback.check_run(trainer, pl_module, datamodule, stage)
