"""``skill-neurons predict``: one table of per-example predictions per evaluation set.

Each set of ``data.predict_sets`` (default: the clean validation set and every adversarial set) becomes
``predictions/<set>.csv`` in the run directory and the W&B Table ``predictions/<set>``, with the columns

    set, row, <the task's text fields>, label, prediction, correct, prob_<class> ...

``row`` is the example's row in its source file (the ``idx`` every analysis aligns examples by), ``label`` the
gold label's name, ``prediction`` the predicted one (the argmax of the scored words' logits, exactly as
``validate`` counts accuracy), ``correct`` 1 or 0, and ``prob_<class>`` the softmax over those logits, one
column per label (then ``prob_extra:<word>`` for words a layout scores that are no label, P1's MNLI), summing
to 1 in every row. Each set's accuracy (``predict/<set>/acc``, the mean of ``correct``) goes to ``summary.json``
(``predict_metrics``, and the ``predictions`` section: files, rows, correct) and the W&B summary.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from callbacks.run_summary import run_dir_of
from lightning_modules.contracts import PromptData
from records.eval_set import PREDICT
from records.files import atomic_write
from records.summary import update_summary

OUTPUT_DIR = "predictions"
FORMAT = "csv"


def prediction_rows(set_label: str, rows: Any, text_fields: list[str], classes: list[str],
                    outputs: dict[str, torch.Tensor]) -> list[list[Any]]:
    """The table's rows, in the order of the set's source rows (``rows``: a split before tokenising, with
    ``idx`` and the text fields). ``outputs``: ``idx`` (N,), ``label`` (N,), ``prediction`` (N,) and
    ``probabilities`` (N, C) of the predicted examples, in any order and each at least once."""
    source = [int(i) for i in rows["idx"]]
    position = {i: k for k, i in enumerate(source)}
    texts = {field: list(rows[field]) for field in text_fields}
    order: dict[int, int] = {}  # source position -> index into outputs (an example predicted twice counts once)
    for n, i in enumerate(outputs["idx"].tolist()):
        order.setdefault(position[i], n)
    table = []
    for at in sorted(order):
        n = order[at]
        label, prediction = int(outputs["label"][n]), int(outputs["prediction"][n])
        table.append([set_label, source[at], *(texts[f][at] for f in text_fields), classes[label],
                      classes[prediction], int(label == prediction), *outputs["probabilities"][n].tolist()])
    return table


class PredictionWriter(Callback):
    """Collects ``predict_step``'s outputs per evaluation set and writes the tables (see the module docstring).

    Hooks: ``on_predict_start`` (forgets earlier outputs), ``on_predict_batch_end`` (keeps a batch's outputs on
    the CPU), ``on_predict_epoch_end`` (gathers every rank's outputs; rank 0 writes the CSV files, the W&B
    Tables and the summary). ``promised_outputs`` names the files (the run is ``finished`` only when all
    exist) and ``stage_metrics`` each set's accuracy (``predict/<set>/acc``).
    """

    def __init__(self):
        self._outputs: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.metrics: dict[str, float] = {}

    def promised_outputs(self, trainer: Trainer, stage: str) -> list[str]:
        """``predictions/<set>.csv`` for every set ``predict`` writes."""
        datamodule = getattr(trainer, "datamodule", None)
        if stage != "predict" or not isinstance(datamodule, PromptData):
            return []
        return [f"{OUTPUT_DIR}/{s.file_stem}.{FORMAT}" for s in datamodule.eval_sets(PREDICT)]

    def stage_metrics(self, trainer: Trainer, stage: str) -> dict[str, float]:
        """``predict/<set>/acc`` of the last ``predict``; nothing for other stages."""
        return dict(self.metrics) if stage == "predict" else {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._outputs, self.metrics = {}, {}

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._outputs.setdefault(dataloader_idx, []).append({k: v.detach().cpu() for k, v in outputs.items()})

    def _gathered(self, trainer: Trainer, loader: int) -> dict[str, torch.Tensor]:
        """One loader's outputs of every rank, concatenated (each rank predicts a shard of the set)."""
        batches = self._outputs.get(loader, [])
        mine = {k: torch.cat([b[k] for b in batches]) for k in batches[0]} if batches else {}
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            every: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(every, mine)
            every = [part for part in every if part]
            return {k: torch.cat([part[k] for part in every]) for k in every[0]} if every else {}
        return mine

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write one table per set (rank 0) and remember each set's accuracy."""
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, PromptData):
            raise TypeError("PredictionWriter needs a PromptDataModule (it names the sets and keeps their rows' text)")
        eval_sets = datamodule.eval_sets(PREDICT)
        gathered = [self._gathered(trainer, loader) for loader in range(len(eval_sets))]
        if not trainer.is_global_zero:
            return
        task, classes = datamodule.task, datamodule.scored_classes()
        columns = ["set", "row", *task.text_fields, "label", "prediction", "correct", *(f"prob_{c}" for c in classes)]
        run_dir = run_dir_of(trainer) or Path(trainer.default_root_dir)
        (run_dir / OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
        sets: dict[str, Any] = {}
        for eval_set, outputs in zip(eval_sets, gathered):
            name = eval_set.name
            rows = datamodule.source_rows[eval_set.split]
            table = prediction_rows(name, rows, list(task.text_fields), classes, outputs) if outputs else []
            file = f"{OUTPUT_DIR}/{eval_set.file_stem}.{FORMAT}"
            atomic_write(run_dir / file, lambda f, table=table: _write_csv(f, columns, table))
            correct = sum(row[columns.index("correct")] for row in table)
            accuracy = correct / len(table) if table else None
            sets[name] = {"file": file, "role": eval_set.split, "rows": len(table), "of_rows": len(rows),
                          "correct": correct, "accuracy": accuracy, "wandb_key": f"{OUTPUT_DIR}/{name}"}
            if accuracy is not None:
                self.metrics[eval_set.metric(PREDICT, "acc")] = accuracy
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_table(key=f"{OUTPUT_DIR}/{name}", columns=columns, data=table)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(self.metrics)
        update_summary(run_dir, predictions={"format": FORMAT, "columns": columns, "classes": classes, "sets": sets})
        self._outputs = {}


def _write_csv(f, columns: list[str], table: list[list[Any]]) -> None:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(table)
