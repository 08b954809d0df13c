"""The run's own record: ``summary.json`` in the run directory, and the matching W&B summary.

W&B offline runs cannot be read back through ``wandb.Api``, so every run also writes ``summary.json``:
its settings (the LightningCLI config, secrets removed), its data (task, splits with content hashes),
the final metrics, the metrics of the epoch with the best clean validation accuracy, a per-epoch history,
its checkpoints and where its W&B run lives. Other callbacks add their own sections through
:func:`update_summary` (e.g. the skill-neuron analysis).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_modules.contracts import (
    AnalysesNeurons, PromisesOutputs, PromptData, ReportsMetrics, neurons_perturbed,
)
from records.eval_set import ADVERSARIAL
from records.files import jsonable
from records.run_identity import prompt_provenance
from records.run_status import process_record
from records.secrets import redact
from records.settings import RunSettings
from records.summary import BEST_KEY, SUMMARY_FILE, SummaryError, offline_segments, read_summary, update_summary
from records.sweep_trial import sweep_trial
from records.transfer import transfer_record
from records.wandb_config import chart_step, run_config, run_tags

# A fit under --trainer.fast_dev_run: a check that the pipeline runs, not a trained prompt (see RunSummary).
SMOKE = ("--trainer.fast_dev_run: one batch per loop, no best checkpoint, no config.yaml, no skill-neuron "
         "analysis, no W&B run; never counted as a finished fit")


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if getattr(v, "numel", lambda: 1)() == 1}


def run_dir_of(trainer: Trainer) -> Path | None:
    """The run directory the run summary writes to (the CLI's ``runs/<id>``), if a callback knows it."""
    return next((Path(cb.run_dir) for cb in trainer.callbacks if isinstance(cb, RunSummary) and cb.run_dir), None)


class RunSummary(Callback):
    """Writes ``summary.json`` in the run directory and declares W&B summary metrics.

    Hooks: ``setup`` (settings, data, W&B metric declarations and config), ``on_validation_epoch_end``
    (history and best epoch), ``on_fit_end`` / ``on_validation_end`` / ``on_test_end`` / ``on_predict_end``
    (final metrics, with those of every :class:`~lightning_modules.contracts.ReportsMetrics` callback).

    A fit under ``--trainer.fast_dev_run`` (Lightning runs one batch per loop and turns logging and
    checkpointing off) ends with ``status: smoke`` (and ``smoke``: what it left out) instead of ``finished``,
    and records no ``best`` epoch and no ``history``: nothing that looks for finished fits (``--from_run``, the
    report, transfer references, sweeps) takes it for a trained prompt.

    Args:
        run_dir: where ``summary.json`` goes (default: the trainer's ``default_root_dir``, which the
            ``skill-neurons`` CLI sets to ``runs/<run_id>``).
    """

    def __init__(self, run_dir: str | None = None):
        self.run_dir = run_dir
        self.config: dict[str, Any] = {}
        self.run_id: str | None = None
        self.changes: dict[str, list] = {}
        self._best: dict[str, Any] | None = None
        self._history: list[dict[str, Any]] = []

    def describe_run(self, run_id: str | None, config: dict[str, Any],
                     changes: dict[str, list] | None = None) -> None:
        """The run's id and its flat resolved config (LightningCLI's keys, e.g. ``model.learning_rate``), given
        by the CLI before the stage starts; recorded in ``summary.json`` and the W&B config. ``changes`` are the
        settings a resume changed (``{key: [was, now]}``), appended to ``settings_history``."""
        self.run_id, self.config, self.changes = run_id, dict(config), dict(changes or {})

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Record settings and data (rank 0), declare W&B metrics and log the CLI config to W&B."""
        # Every rank agrees on rank 0's directory (ranks started by torchrun/SLURM may have made their own id).
        self.run_dir = trainer.strategy.broadcast(str(self.run_dir or trainer.default_root_dir))
        previous = read_summary(self.run_dir) if trainer.is_global_zero else {}
        self._best = previous.get("best") if stage == "fit" else None
        self._history = previous.get("history", []) if stage == "fit" else []
        if not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)
        analysis = next((cb.analysis_settings() for cb in trainer.callbacks if isinstance(cb, AnalysesNeurons)), {})
        settings = RunSettings.read({  # the module's init arguments (backbone, layout, ...) and what it runs with
            **pl_module.hparams, "family": getattr(pl_module, "family", None),
            "task": getattr(getattr(datamodule, "task", None), "name", None),
            "seed": self.config.get("seed_everything"), "stage": stage, "precision": str(trainer.precision),
            "world_size": trainer.world_size, **analysis,
        })
        sections: dict[str, Any] = {
            "run_id": self.run_id or Path(self.run_dir).name, "run_dir": str(Path(self.run_dir).resolve()),
            "stage": stage, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "process": process_record(), "settings": settings.to_json(), "config": redact(self.config),
        }
        if isinstance(datamodule, PromptData):
            sections["data"] = datamodule.state_for_summary()
        trial = sweep_trial()
        if trial is not None:  # a sweep's trial: the sweep and the values it gave this run
            sections["sweep"] = trial.to_summary()
        if stage == "fit" and self.changes:  # a resume that changed e.g. max_epochs: from which epoch on
            sections["settings_history"] = [*previous.get("settings_history", []),
                                            {"from_epoch": previous.get("epochs_completed", len(self._history)),
                                             "at": sections["started"], "changed": self.changes}]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # a run without an analysis logs no analysed part or positions
                logged = {k: v for k, v in settings.to_json().items() if analysis or k not in ("part", "positions")}
                sections["wandb"] = self._setup_wandb(logger, logged, stage)
        update_summary(self.run_dir, **sections)

    def _setup_wandb(self, logger: WandbLogger, settings: dict[str, Any], stage: str) -> dict[str, Any]:
        run = logger.experiment
        run.define_metric("trainer/global_step")
        run.define_metric("val/acc", summary="max,last")
        run.define_metric("val/loss", summary="min")
        run.define_metric(f"{ADVERSARIAL}/*", summary="last")
        # the settings that apply to this run, one key each (records.wandb_config.run_config)
        run.config.update(run_config(redact(self.config), stage, settings), allow_val_change=True)
        run.tags = tuple(run_tags(settings, run.tags))  # plain tags for dashboard filters, after the config's
        trial = sweep_trial()
        if trial is not None:  # the sweep and the keys it sweeps (W&B adds each swept value under its own key)
            run.config.update(trial.wandb_config(), allow_val_change=True)
        offline = run.settings.mode in ("offline", "dryrun")
        files_dir = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>
        segments = offline_segments(files_dir.parent, run.id) if offline else []
        return {
            "id": run.id, "project": run.project, "mode": "offline" if offline else "online",
            "dir": str(files_dir), "url": None if offline else run.url,
            "sync_command": shlex.join(["wandb", "sync", *map(str, segments or [files_dir])]) if offline else None,
        }

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Append this epoch's evaluation metrics to the history; remember the best clean epoch."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        metrics = {k: v for k, v in _floats(trainer.callback_metrics).items()
                   if not k.startswith("train/") and not k.endswith("_best")}
        if BEST_KEY not in metrics:
            return
        entry = {"epoch": trainer.current_epoch, "step": chart_step(trainer), **metrics}  # W&B's x-axis step
        self._history = [h for h in self._history if h["epoch"] != trainer.current_epoch] + [entry]
        if self._best is None or metrics[BEST_KEY] > self._best[BEST_KEY]:
            self._best = entry
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.summary.update({f"best/{k}": v for k, v in entry.items()})
        update_summary(self.run_dir, best=self._best, history=self._history)

    def _finish(self, trainer: Trainer, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = _floats(trainer.callback_metrics)
        for callback in trainer.callbacks:
            if isinstance(callback, ReportsMetrics):
                metrics.update(_floats(callback.stage_metrics(trainer, stage)))
        if stage == "fit" and self._history:
            # A resume whose training was already complete runs no epoch: keep the last epoch's evaluation.
            last = {k: v for k, v in self._history[-1].items() if k not in ("epoch", "step")}
            metrics = {**last, **metrics}
        missing = self._missing(trainer, stage)
        smoke = stage == "fit" and bool(trainer.fast_dev_run)
        sections: dict[str, Any] = {
            "status": "smoke" if smoke else "incomplete" if missing else "finished", "missing": missing or None,
            "smoke": SMOKE if smoke else None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), f"{stage}_metrics": metrics,
            "epochs_completed": trainer.current_epoch, "global_step": trainer.global_step,
        }
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        if stage == "fit" and checkpoint is not None:
            sections["checkpoints"] = {"best": checkpoint.best_model_path or None,
                                       "best_score": jsonable(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
                                       "last": checkpoint.last_model_path or None}
        if stage != "fit":
            sections["ckpt_path"] = trainer.ckpt_path
            if trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
                sections.update(self._transfer(trainer, stage, sections[f"{stage}_metrics"]))
        update_summary(self.run_dir, **sections)

    def _missing(self, trainer: Trainer, stage: str) -> list[str]:
        """The outputs promised for ``stage`` (e.g. the neuron files) that the run directory lacks."""
        return [path for cb in trainer.callbacks if isinstance(cb, PromisesOutputs)
                for path in cb.promised_outputs(trainer, stage) if not (Path(self.run_dir) / path).exists()]

    def _transfer(self, trainer: Trainer, stage: str, metrics: dict[str, float]) -> dict[str, Any]:
        """``prompt_source`` of an evaluated checkpoint and, unless neurons are perturbed, ``transfer``."""
        source = prompt_provenance(trainer.ckpt_path)
        sections: dict[str, Any] = {"prompt_source": source}
        datamodule = getattr(trainer, "datamodule", None)
        target = getattr(getattr(datamodule, "task", None), "name", None)
        accuracy = metrics.get("val/acc" if stage == "validate" else "test/acc")
        perturbed = neurons_perturbed(trainer.callbacks)
        if source["task"] and target and accuracy is not None and not perturbed:
            backbone = trainer.lightning_module.hparams.get("backbone")
            roots = [Path(self.run_dir).parent] + ([Path(source["run_dir"]).parent] if source["run_dir"] else [])
            sections["transfer"] = transfer_record(source, target, backbone, accuracy, roots)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.summary.update({f"transfer/{k}": v for k, v in sections["transfer"].items()
                                                      if isinstance(v, (int, float, str))})
        return sections

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A run that stops on an error is ``failed`` (with the error), one stopped by Ctrl-C or SIGTERM
        ``interrupted``; either lists what it did not write (``missing``: ``skill-neurons analyse runs/<id>``
        completes a run stopped during its analysis). A summary that cannot be written (full disk) or that no
        longer parses is left as it is: the error itself is what the command reports."""
        if not trainer.is_global_zero or not self.run_dir or not (Path(self.run_dir) / SUMMARY_FILE).exists():
            return  # nothing recorded yet (the run failed before it started): leave no summary behind
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        stage = str(getattr(trainer.state.fn, "value", trainer.state.fn) or "fit")
        try:
            update_summary(self.run_dir, status="interrupted" if interrupted else "failed",
                           ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), missing=self._missing(trainer, stage) or None,
                           error=None if interrupted else f"{type(exception).__name__}: {exception}"[:2000])
        except (OSError, SummaryError):
            pass

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the final metrics (``fit_metrics``) and checkpoint paths."""
        self._finish(trainer, "fit")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``validate`` (not the validation inside ``fit``), record ``validate_metrics``."""
        if trainer.state.fn == "validate":
            self._finish(trainer, "validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``test``, record ``test_metrics``."""
        self._finish(trainer, "test")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``predict``, record ``predict_metrics`` (each set's accuracy, from its predictions)."""
        self._finish(trainer, "predict")
