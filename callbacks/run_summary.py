"""The run's own record: ``summary.json`` in the run directory, and the matching W&B summary.

W&B offline runs cannot be read back through ``wandb.Api``, so every run also writes ``summary.json``:
its settings (the LightningCLI config, secrets removed), its data (task, splits with content hashes),
the final metrics, the metrics of the epoch with the best clean validation accuracy, a per-epoch history,
its checkpoints and where its W&B run lives. Other callbacks add their own sections through
:func:`update_summary` (e.g. the skill-neuron analysis).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.relative_transfer import reference_accuracy, relative_score

SUMMARY_FILE = "summary.json"
BEST_KEY = "val/acc"
FILE_MODE = 0o644  # like the run's other files (mkstemp creates 0600)
SECRET = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a flat config without keys that look like secrets (API keys, tokens, passwords)."""
    return {k: v for k, v in config.items() if not SECRET.search(k)}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"init_args": {"lr": 1}}}`` -> ``{"model.lr": 1}`` (LightningCLI's command-line keys)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "init_args":
                out.update(flatten(value, prefix))
                continue
            out.update(flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    if isinstance(tree, (list, tuple)) and any(isinstance(x, dict) for x in tree):
        out[prefix[:-1]] = json.loads(json.dumps(tree, default=str))
        return out
    out[prefix[:-1]] = tree if isinstance(tree, (str, int, float, bool, type(None), list)) else str(tree)
    return out


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def update_summary(run_dir: str | Path, /, **sections: Any) -> dict[str, Any]:
    """Merge ``sections`` into ``run_dir/summary.json`` atomically (write a temp file, then rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = read_summary(run_dir)
    summary.update(sections)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".summary-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(summary, f, indent=2, default=_jsonable)
    os.chmod(tmp, FILE_MODE & ~_umask())
    os.replace(tmp, run_dir / SUMMARY_FILE)
    return summary


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def offline_segments(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """Every offline W&B directory of run ``run_id`` (one per command: a resumed run has several), oldest first;
    ``wandb sync`` takes them all and uploads them into the one W&B run."""
    return sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}"))


@runtime_checkable
class PromisesOutputs(Protocol):
    """A callback whose outputs a run must hold before it counts as ``finished`` (e.g. the skill-neuron files)."""

    def promised_outputs(self, trainer: Trainer, stage: str) -> list[str]:
        """Paths relative to the run directory that ``stage`` writes."""


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if getattr(v, "numel", lambda: 1)() == 1}


def run_dir_of(trainer: Trainer) -> Path | None:
    """The run directory the run summary writes to (the CLI's ``runs/<id>``), if a callback knows it."""
    return next((Path(cb.run_dir) for cb in trainer.callbacks if getattr(cb, "run_dir", None)), None)


def finished_fit_runs(roots: list[str | Path], recursive: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, summary) of every finished ``fit`` run directly under ``roots`` (or anywhere below them
    with ``recursive``); unreadable summaries are skipped."""
    found = {}
    for root in roots:
        files = Path(root).rglob(SUMMARY_FILE) if recursive else Path(root).glob(f"*/{SUMMARY_FILE}")
        for file in files:
            try:
                summary = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if summary.get("stage") == "fit" and summary.get("status") == "finished":
                found[file.parent.resolve()] = (file.parent, summary)
    return [found[key] for key in sorted(found)]


def prompt_source(ckpt_path: str | Path) -> dict[str, Any]:
    """Where an evaluated prompt came from: its checkpoint, the task and backbone it was trained on and, when
    the checkpoint lies in ``runs/<id>/checkpoints/``, that run's id and seed."""
    import torch

    path = Path(ckpt_path).resolve()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    task = (checkpoint.get("datamodule_hyper_parameters") or {}).get("task")
    imported = (checkpoint.get("skill_neurons") or {}).get("imported_from") or {}
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    source = read_summary(run_dir) if run_dir else {}
    settings = source.get("settings", {})
    return {
        "checkpoint": str(path), "run_id": source.get("run_id"), "run_dir": str(run_dir) if source else None,
        "task": (task.get("name") if isinstance(task, dict) else task) or settings.get("task") or imported.get("task"),
        "backbone": (checkpoint.get("hyper_parameters") or {}).get("backbone") or settings.get("backbone"),
        "seed": settings.get("seed", imported.get("seed")),
    }


def transfer_record(source: dict[str, Any], target_task: str, backbone: str, accuracy: float,
                    runs_roots: list[Path]) -> dict[str, Any]:
    """Transfer of a prompt from ``source['task']`` (A) to ``target_task`` (B): the accuracy and, when B's own
    fit runs with this backbone are in one of ``runs_roots``, the relative score as
    :mod:`callbacks.relative_transfer` defines it (the one definition the report uses too)."""
    own = [summary for _, summary in finished_fit_runs(runs_roots)
           if summary.get("settings", {}).get("task") == target_task
           and summary.get("settings", {}).get("backbone") == backbone
           and (summary.get("best") or {}).get(BEST_KEY) is not None]
    candidates = [(o.get("run_id"), o["settings"].get("seed"), o["best"][BEST_KEY]) for o in own]
    reference, runs, how = reference_accuracy(candidates, source.get("seed"))
    return {
        "source_task": source.get("task"), "target_task": target_task, "accuracy": accuracy,
        "reference_accuracy": reference, "reference_runs": runs, "reference": how,
        "relative": relative_score(accuracy, reference),
    }


class RunSummary(Callback):
    """Writes ``summary.json`` in the run directory and declares W&B summary metrics.

    Hooks: ``setup`` (settings, data, W&B metric declarations and config), ``on_validation_epoch_end``
    (history and best epoch), ``on_fit_end`` / ``on_validation_end`` / ``on_test_end`` (final metrics).

    Args:
        run_dir: where ``summary.json`` goes (default: the trainer's ``default_root_dir``, which the
            ``skill-neurons`` CLI sets to ``runs/<run_id>``).
    """

    def __init__(self, run_dir: str | None = None):
        self.run_dir = run_dir
        self.config: dict[str, Any] = {}
        self.run_id: str | None = None
        self._best: dict[str, Any] | None = None
        self._history: list[dict[str, Any]] = []

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
        hparams = dict(pl_module.hparams)
        settings = {
            "backbone": hparams.get("backbone"), "family": getattr(pl_module, "family", None),
            "task": getattr(getattr(datamodule, "task", None), "name", None),
            "seed": self.config.get("seed_everything"), "prompt_length": hparams.get("prompt_length"),
            "layout": hparams.get("layout", "standard"),
            "learning_rate": hparams.get("learning_rate"), "precision": str(trainer.precision),
            "world_size": trainer.world_size,
        }
        sections: dict[str, Any] = {
            "run_id": self.run_id or Path(self.run_dir).name, "run_dir": str(Path(self.run_dir).resolve()),
            "stage": stage, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": settings, "config": redact(self.config),
        }
        if datamodule is not None and hasattr(datamodule, "state_for_summary"):
            sections["data"] = datamodule.state_for_summary()
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                sections["wandb"] = self._setup_wandb(logger, settings)
        update_summary(self.run_dir, **sections)

    def _setup_wandb(self, logger: WandbLogger, settings: dict[str, Any]) -> dict[str, Any]:
        run = logger.experiment
        run.define_metric("trainer/global_step")
        run.define_metric("val/acc", summary="max")
        run.define_metric("val/loss", summary="min")
        run.define_metric("adv/*", summary="last")
        flat = redact(self.config)
        run.config.update(flat, allow_val_change=True)
        run.config.update({f"run.{k}": v for k, v in settings.items()}, allow_val_change=True)
        offline = run.settings.mode in ("offline", "dryrun")
        files_dir = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>
        segments = offline_segments(files_dir.parent, run.id) if offline else []
        return {
            "id": run.id, "project": run.project, "mode": "offline" if offline else "online",
            "dir": str(files_dir), "url": None if offline else run.url,
            "sync_command": f"wandb sync {' '.join(map(str, segments or [files_dir]))}" if offline else None,
        }

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Append this epoch's evaluation metrics to the history; remember the best clean epoch."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in _floats(trainer.callback_metrics).items()
                   if not k.startswith("train/") and not k.endswith("_best")}
        if BEST_KEY not in metrics:
            return
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
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
        if stage == "fit" and self._history:
            # A resume whose training was already complete runs no epoch: keep the last epoch's evaluation.
            last = {k: v for k, v in self._history[-1].items() if k not in ("epoch", "step")}
            metrics = {**last, **metrics}
        missing = [path for cb in trainer.callbacks if isinstance(cb, PromisesOutputs)
                   for path in cb.promised_outputs(trainer, stage) if not (Path(self.run_dir) / path).exists()]
        sections: dict[str, Any] = {
            "status": "incomplete" if missing else "finished", "missing": missing or None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), f"{stage}_metrics": metrics,
            "epochs_completed": trainer.current_epoch, "global_step": trainer.global_step,
        }
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        if stage == "fit" and checkpoint is not None:
            sections["checkpoints"] = {"best": checkpoint.best_model_path or None,
                                       "best_score": _jsonable(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
                                       "last": checkpoint.last_model_path or None}
        if stage != "fit":
            sections["ckpt_path"] = trainer.ckpt_path
            if trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
                sections.update(self._transfer(trainer, stage, sections[f"{stage}_metrics"]))
        update_summary(self.run_dir, **sections)

    def _transfer(self, trainer: Trainer, stage: str, metrics: dict[str, float]) -> dict[str, Any]:
        """``prompt_source`` of an evaluated checkpoint and, unless neurons are perturbed, ``transfer``."""
        source = prompt_source(trainer.ckpt_path)
        sections: dict[str, Any] = {"prompt_source": source}
        datamodule = getattr(trainer, "datamodule", None)
        target = getattr(getattr(datamodule, "task", None), "name", None)
        accuracy = metrics.get("val/acc" if stage == "validate" else "test/acc")
        perturbed = any(getattr(cb, "perturbs_neurons", False) for cb in trainer.callbacks)
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
        """A run that stops on an error is ``failed``, one stopped by Ctrl-C or SIGTERM ``interrupted``."""
        if not trainer.is_global_zero or not self.run_dir or not (Path(self.run_dir) / SUMMARY_FILE).exists():
            return  # nothing recorded yet (the run failed before it started): leave no summary behind
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        update_summary(self.run_dir, status="interrupted" if interrupted else "failed",
                       ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       error=None if interrupted else f"{type(exception).__name__}: {exception}"[:2000])

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
