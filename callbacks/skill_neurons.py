"""``SkillNeuronCallback``: which FFN neurons a tuned prompt activates, and do they stay predictive on
adversarial data? (README, "Skill neurons"; the statistics: :mod:`lightning_modules.neuron_statistics`.)

At the end of ``fit`` (with the best checkpoint's prompt) and after ``validate`` / ``test`` (with the prompt
that was loaded) the callback makes three kinds of passes of the frozen backbone, with forward hooks on the
FFN units (``lightning_modules/ffn.py``) that exist only during the passes:

1. **threshold**: over the train split (``max_threshold_samples`` caps it with a seeded random subset),
   the mean activation ``b[l,t,i]`` of every layer ``l``, prompt position ``t`` and unit ``i``;
2. **evaluation**: over the clean evaluation split (``validation``; ``test`` under ``test``) and each
   adversarial set, how often ``a > b`` agrees with the label: accuracy, predictivity ``max(acc, 1-acc)``,
   and the per-neuron score (max over prompt positions).

Each pass runs the backbone only as far as the neurons need (the encoder alone for encoder neurons). Every
rank takes every ``world_size``-th example — no example is duplicated or dropped, unlike a
``DistributedSampler`` — and the sums and counts are all-reduced, so 1 and N processes count the same.
Multi-class tasks use one-vs-rest (see ``neuron_statistics.py``). With ``correlations=True`` the evaluation passes
run the whole model and also accumulate the continuous metrics (``callbacks/neuron_metrics.py``).

Outputs (rank 0), in ``<run dir>/skill_neurons/``: ``<set>.safetensors`` per evaluation set (``threshold``,
``accuracy``, ``predictivity``: (L, P, N), or (C, L, P, N) one-vs-rest for C > 2 classes; ``score``: (L, N);
``class_count``: (C,); metadata: examples, backbone, task, splits, prompt checkpoint), the per-layer figure
``per_layer_predictivity.png`` and ``top_neurons.csv``. The scalars (best predictivity, mean predictivity of
the top n% per layer, overlap@n% of clean and adversarial skill neurons, adversarial predictivity of the clean
top n%) go to ``summary.json`` (``skill_neurons``), to the W&B summary (``skill_neurons/<set>/...``) and to
``trainer.callback_metrics`` (so they reach the main process under ``ddp_spawn``); W&B also gets the table of
top neurons, the figure and the files as an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.neuron_metrics import (  # noqa: F401 (shard, threshold_indices: public here too)
    ContinuousMetrics, agreement_metrics, balanced_view, shard, threshold_indices, threshold_recorders,
)
from callbacks.neuron_outputs import per_layer_figure, position_span, top_rows
from callbacks.progress import pass_bar, progress_enabled
from callbacks.run_summary import run_dir_of
from lightning_modules.contracts import PromptData, check_at_setup, neurons_perturbed
from lightning_modules.ffn import PARTS, FFNLookupError, Part, ffn_hooks, ffn_shape
from lightning_modules.neuron_statistics import PredictivityAccumulator, ThresholdAccumulator
from lightning_modules.prompt_tuning import PromptTuningModule
from lightning_modules.rules import check_positions
from records.eval_set import EvalSet
from records.files import atomic_write
from records.neuron_files import (  # noqa: F401 (combine_neuron_files, neuron_file_of: public here too)
    OUTPUT_DIR, SkillNeuronError, combine_neuron_files, load_neuron_file, neuron_file_of, save_neuron_file,
)
from records.neuron_selection import mean_of_top, num_selected, overlap_at, per_layer_top_means, sizing_of
from records.prompt_checkpoint import read_prompt
from records.summary import update_summary
from records.settings import RunSettings

THRESHOLD_ROLE = "train"


class SkillNeuronCallback(Callback):
    """Skill-neuron analysis of the prompt at the end of ``fit`` and after ``validate`` / ``test``.

    Hooks: ``setup`` (checks the model, the data and the part), ``on_train_end`` (analyses the best
    checkpoint's prompt while the devices and loggers are still up), ``on_validation_end`` (after
    ``validate``), ``on_test_end`` (after ``test``). ``data_roles`` names the train split (thresholds), which
    the DataModule loads whatever the stage; ``check_run`` refuses bad input before any run starts (the CLI's
    preflight, or ``setup``: once per stage).

    Args:
        part: ``encoder`` (default; P1) or ``decoder`` (encoder–decoders only: the units of the first
            decoder step, as the decoder never sees the prompt positions).
        positions: which encoder positions are analysed: ``prompt`` (default; P1/P2: the prompt slots
            0..P−1, which under ``layout: paper`` include a masked LM's ``<mask>`` in slot 0), ``mask`` (the
            ``<mask>`` position alone) or ``prompt+mask`` (masked LMs only); causal LMs: ``last`` (each
            example's last text position, where the label is read) or ``text_mean`` (the mean over each
            example's text positions) — their prompt positions come before the text and cannot depend on it.
            The choice and the positions are recorded in every neuron file and in ``summary.json``.
        max_threshold_samples: at most this many train examples for thresholds (seeded random subset;
            default: the whole train split).
        threshold_seed: seed of that subset.
        batch_size: examples per forward pass (default: the DataModule's ``eval_batch_size``).
        top_percents: n for "mean predictivity of the top n% neurons per layer".
        overlap_percents: n for overlap@n% and "adversarial predictivity of the clean top n%".
        table_rows: rows of the top-neuron table (W&B and ``top_neurons.csv``).
        on_fit / on_validate / on_test: run after that stage.
        log_artifact: upload the files as a W&B artifact.
        balanced: also compute the class-balanced predictivity (beyond the papers; see
            ``neuron_statistics.PredictivityAccumulator.balanced_predictivity_per_class``), stored beside the
            raw one (``balanced_predictivity``, ``balanced_score``) with ``balanced_*`` summary metrics.
        correlations: also compute the continuous metrics in the same passes (beyond the papers; README,
            "Continuous neuron metrics"): each unit's correlation with the label and with the model's logit
            margin, at the analysed positions and over the text's mean, and its activation probability.
    """

    def __init__(
        self,
        part: Part = "encoder",
        positions: Literal["prompt", "mask", "prompt+mask", "last", "text_mean"] = "prompt",
        max_threshold_samples: int | None = None,
        threshold_seed: int = 0,
        batch_size: int | None = None,
        top_percents: list[float] = (1, 5, 10),
        overlap_percents: list[float] = (1, 5, 10, 15),
        table_rows: int = 100,
        on_fit: bool = True,
        on_validate: bool = True,
        on_test: bool = True,
        log_artifact: bool = True,
        balanced: bool = False,
        correlations: bool = False,
    ):
        if part not in PARTS:
            raise SkillNeuronError(f"SkillNeuronCallback(part={part!r}): use 'encoder' or 'decoder'")
        if max_threshold_samples is not None and max_threshold_samples < 1:
            raise SkillNeuronError(f"max_threshold_samples={max_threshold_samples}: give a positive number of "
                                   "train examples, or leave it unset to use the whole train split")
        for name, values in (("top_percents", top_percents), ("overlap_percents", overlap_percents)):
            if not values or any(not 0 < p <= 100 for p in values):
                raise SkillNeuronError(f"{name}={list(values)}: give percentages in (0, 100]")
        self.part = part
        self.positions = positions
        self.max_threshold_samples = max_threshold_samples
        self.threshold_seed = threshold_seed
        self.batch_size = batch_size
        self.top_percents = list(top_percents)
        self.overlap_percents = list(overlap_percents)
        self.table_rows = table_rows
        self.stages = {"fit": on_fit, "validate": on_validate, "test": on_test}
        self.log_artifact = log_artifact
        self.balanced = balanced
        self.correlations = correlations
        self.results: dict[str, dict[str, torch.Tensor]] = {}
        self.metrics: dict[str, float] = {}
        self._fit_analysed, self._signalled = False, None  # _signalled: the analysing trainer (see analyse)
        self._progress, self._live = False, None  # the passes' progress (per analysis, rank 0; callbacks/progress.py)

    def analysis_settings(self) -> dict[str, str]:  # the run's analysed part and positions (its settings)
        return {"part": self.part, "positions": self.positions}

    # ------------------------------------------------------------------ checks (before any work)
    def runs_in(self, stage: str, trainer: Trainer | None = None) -> bool:
        """Whether the analysis runs after ``stage``: switched on for it, and the model is not perturbed
        (a run that suppresses neurons measures accuracy; its neurons are those of the unperturbed prompt)."""
        callbacks = trainer.callbacks if trainer is not None else []
        first = next((cb for cb in callbacks if isinstance(cb, SkillNeuronCallback)), self)
        if self is not first:
            return False  # a second SkillNeuronCallback: the first one analyses (and warned in setup)
        return bool(self.stages.get(stage)) and not neurons_perturbed(callbacks)

    def data_roles(self, stage: str, trainer: Trainer | None = None) -> tuple[str, ...]:
        """Splits the DataModule must load for this stage beyond its own: the train split (thresholds)."""
        return (THRESHOLD_ROLE,) if self.runs_in(stage, trainer) else ()

    def check_run(self, trainer: Trainer, pl_module: LightningModule, datamodule, stage: str) -> None:
        """Raise one clear error for input that cannot give a meaningful analysis."""
        if not self.runs_in(stage, trainer):
            return
        if not isinstance(pl_module, PromptTuningModule):
            raise SkillNeuronError(
                f"SkillNeuronCallback analyses the soft prompt of a prompt-tuning module, but the model is a "
                f"{type(pl_module).__name__} — use lightning_modules.MaskedLMPromptTuning, Seq2SeqPromptTuning or "
                "CausalLMPromptTuning, or remove the callback"
            )
        try:
            ffn_shape(pl_module.backbone, self.part)
        except FFNLookupError as error:
            raise SkillNeuronError(f"SkillNeuronCallback(part={self.part!r}): {error}") from None
        check_positions(pl_module.family, self.part, self.positions)
        if not isinstance(datamodule, PromptData):
            raise SkillNeuronError("SkillNeuronCallback needs a PromptDataModule (it reads its splits by role)")
        datasets = datamodule.datasets
        train = datasets.get(THRESHOLD_ROLE)
        if train is None or len(train) == 0:
            raise SkillNeuronError(
                "no train split to compute skill-neuron thresholds from (thresholds are means over the TRAIN "
                "split) — give the task a train split, e.g. --data.files='{train: path/to/train.tsv}'"
            )
        classes = datamodule.num_classes
        for split in (s.split for s in datamodule.eval_sets(stage)):
            counts = torch.bincount(torch.tensor(datasets[split]["label"], dtype=torch.long), minlength=classes)
            present = int((counts > 0).sum())
            if present < 2 or (classes > 2 and present < classes):
                raise SkillNeuronError(
                    f"evaluation set {split!r} has examples per class {counts.tolist()}: predictivity needs every "
                    "class present (a neuron's agreement with a single label is only its firing rate) — use "
                    "the full split (check data.max_eval_samples) or drop this set with --data.adversarial"
                )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Ask the DataModule for the train split (thresholds) and check the run, unless the CLI did both before
        the stage started (:func:`lightning_modules.contracts.check_at_setup`); warn once when the trainer has
        more than one SkillNeuronCallback (only the first one runs)."""
        check_at_setup(self, trainer, pl_module, stage)
        found = [cb for cb in trainer.callbacks if isinstance(cb, SkillNeuronCallback)]
        if len(found) > 1 and self is found[0]:
            rank_zero_warn(f"the trainer has {len(found)} SkillNeuronCallbacks: only the first one runs the analysis "
                           "— remove the others (a config that lists it already needs no --trainer.callbacks+=)")

    # ------------------------------------------------------------------ when it runs
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A new fit has not been analysed yet."""
        self._fit_analysed = False

    def promised_outputs(self, trainer: Trainer, stage: str) -> list[str]:
        """The neuron files ``stage`` writes (the run summary marks a run ``finished`` only when they exist)."""
        datamodule = getattr(trainer, "datamodule", None)
        if not self.runs_in(stage, trainer) or trainer.fast_dev_run or not isinstance(datamodule, PromptData):
            return []
        return [f"{OUTPUT_DIR}/{s.file_stem}.safetensors" for s in datamodule.eval_sets(stage)]

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A resume whose training was already complete (killed during the analysis, or ``skill-neurons analyse``)
        runs no training loop and so no ``on_train_end``: analyse now, on the device the model trained on."""
        if self._fit_analysed or not self.runs_in("fit", trainer) or trainer.fast_dev_run:
            return
        device = pl_module.device
        pl_module.to(trainer.strategy.root_device)  # the strategy's teardown moved it to the CPU
        try:
            self.on_train_end(trainer, pl_module)
        finally:
            pl_module.to(device)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """End of ``fit``: analyse the best checkpoint's prompt (P1 keeps the best epoch's prompt)."""
        if not self.runs_in("fit", trainer) or trainer.fast_dev_run:
            return
        self._fit_analysed = True
        path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        path = trainer.strategy.broadcast(path)
        final = pl_module.prompt.weight.detach().clone()
        if path:
            best = None
            if trainer.is_global_zero:
                best = read_prompt(path)
            best = trainer.strategy.broadcast(best)
            with torch.no_grad():
                pl_module.prompt.weight.copy_(best.to(pl_module.prompt.weight))
        try:
            self.analyse(trainer, pl_module, "fit", path or "final prompt (no best checkpoint)")
        finally:
            with torch.no_grad():
                pl_module.prompt.weight.copy_(final)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``validate`` (not the validation epochs inside ``fit``)."""
        if trainer.state.fn == "validate" and self.runs_in("validate", trainer) and not trainer.sanity_checking:
            self.analyse(trainer, pl_module, "validate", trainer.ckpt_path or "prompt in memory")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``test``."""
        if self.runs_in("test", trainer):
            self.analyse(trainer, pl_module, "test", trainer.ckpt_path or "prompt in memory")

    # ------------------------------------------------------------------ the passes
    def analyse(self, trainer: Trainer, pl_module: LightningModule, stage: str, prompt_source: str) -> dict:
        """Threshold pass, one evaluation pass per set, then outputs on rank 0. Returns the scalar metrics."""
        datamodule = trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        self._progress = trainer.is_global_zero and progress_enabled(trainer.progress_bar_callback is not None)
        bar = trainer.progress_bar_callback  # Lightning's rich bar, still on screen at on_train_end: add to it
        live = bar.progress if isinstance(bar, RichProgressBar) else None
        self._live = live if live is not None and live.live.is_started else None
        self._signalled = trainer  # an attribute, not a closure: the callback is pickled by ddp_spawn
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                self.results = self.passes(pl_module, datamodule, [s.split for s in datamodule.eval_sets(stage)],
                                           trainer.global_rank, trainer.world_size)
        finally:
            pl_module.train(was_training)
            self._signalled = None
        self.metrics = self._metrics(datamodule, stage, pl_module.hparams.get("layout"))
        for key, value in self.metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        if trainer.is_global_zero:
            self._write(trainer, pl_module, datamodule, stage, prompt_source)
        trainer.strategy.barrier("skill_neurons")
        return self.metrics

    def passes(self, pl_module, datamodule, splits: list[str], rank: int = 0,
               world: int = 1) -> dict[str, dict[str, torch.Tensor]]:
        """The threshold pass over the train split, then one pass per evaluation set's ``split``; this rank's shard
        of each, all-reduced when ``world > 1``. Call it inside ``torch.no_grad()`` (and the precision context).
        Returns, per split, threshold / accuracy / predictivity / score / class_count on the CPU."""
        layers, units = ffn_shape(pl_module.backbone, self.part)
        analysed = pl_module.analysed_positions(self.part, self.positions)
        num_positions, select = analysed.count, analysed.select  # select: (B, S, N) units -> (B, P', N)
        device = pl_module.device

        train = datamodule.datasets[THRESHOLD_ROLE]
        rows = threshold_indices(len(train), self.max_threshold_samples, self.threshold_seed)
        thresholds = ThresholdAccumulator(layers, num_positions, units, device=device)
        # the continuous metrics' position-free variant: the mean over the text tokens (encoder units only)
        text_select = pl_module.text_mean_units if self.correlations and self.part == "encoder" else None
        text_thresholds = ThresholdAccumulator(layers, 1, units, device=device) if text_select else None
        self._stream(pl_module, datamodule, THRESHOLD_ROLE, shard(rows, rank, world),
                     threshold_recorders(thresholds, text_thresholds, select, text_select))
        if world > 1:
            for accumulator in (thresholds, text_thresholds):
                if accumulator is not None:
                    accumulator.all_reduce(dist.all_reduce)
        threshold = thresholds.threshold()  # (L, P, N)

        results = {}
        for split in splits:
            counts = PredictivityAccumulator(threshold, datamodule.num_classes)
            continuous = ContinuousMetrics(threshold, text_thresholds.threshold() if text_select else None,
                                           datamodule.num_classes, select, text_select) if self.correlations else None

            def update(layer, units_, batch, acc=counts, more=continuous):
                acc.update(select(units_, batch), batch["labels"], layer=layer)
                if more is not None:
                    more.record(layer, units_, batch)
            rows_eval = list(range(len(datamodule.datasets[split])))
            self._stream(pl_module, datamodule, split, shard(rows_eval, rank, world), update,
                         continuous.finish if continuous is not None else None)
            if world > 1:
                counts.all_reduce(dist.all_reduce)
                if continuous is not None:
                    continuous.all_reduce(dist.all_reduce)
            results[split] = {
                "threshold": threshold, "accuracy": counts.accuracy(datamodule.accuracy_label), "score": counts.score(),
                "predictivity": counts.predictivity(), "class_count": counts.class_count.clone(),
                "threshold_examples": thresholds.count.clone(),
                **({"balanced_predictivity": balanced_view(counts), "balanced_score": counts.balanced_score()}
                   if self.balanced else {}),
                **(continuous.results(datamodule.accuracy_label) if continuous is not None else {}),
            }
        return {split: {k: v.cpu() for k, v in tensors.items()} for split, tensors in results.items()}

    def _stream(self, pl_module, datamodule, split: str, indices: list[int], update, finish=None) -> None:
        """Forward the rows ``indices`` of ``split`` with hooks that call ``update(layer, units, batch)``; with
        ``finish``, the whole model runs and ``finish(batch, logits)`` gets each batch's scored-word logits."""
        if not indices:
            return
        lengths = datamodule.lengths(split)
        # Longest first: batches of similar length pad little, and an out-of-memory error shows at once.
        ordered = sorted(indices, key=lambda i: -lengths[i])
        loader = datamodule.analysis_loader(split, ordered, self.batch_size)
        current: dict[str, Any] = {}

        def on_units(layer: int, units: torch.Tensor) -> None:
            update(layer, units, current)

        what = f"thresholds ({split})" if split == THRESHOLD_ROLE else f"predictivity ({EvalSet.of(split).name})"
        with ffn_hooks(pl_module.backbone, on_units, self.part), \
                pass_bar(len(loader), f"Skill neurons: {what}", self._progress, live=self._live) as bar:
            for batch in loader:
                # SIGTERM: stop between batches; the run is left interrupted
                if self._signalled is not None and self._signalled.received_sigterm:
                    raise SIGTERMException
                current.update(move_data_to_device(batch, pl_module.device))
                if finish is None:
                    pl_module.run_to_neurons(current, self.part)
                else:
                    finish(current, pl_module(current))  # (B, C') the logits the prediction is read from
                bar.update(1)

    # ------------------------------------------------------------------ summaries
    def _metrics(self, datamodule, stage: str, layout: str | None) -> dict[str, float]:
        """The scalars of every set; top-n% sets sized as the run's layout says (``sizing_of``)."""
        roles, sizing = [s.split for s in datamodule.eval_sets(stage)], sizing_of(layout)
        clean = self.results[roles[0]]["score"]  # (L, N)
        metrics: dict[str, float] = {}
        tops, overlaps = ([n for n in percents if num_selected(clean.shape[1], n, sizing)]  # P1's int may give 0
                          for percents in (self.top_percents, self.overlap_percents))
        for role in roles:
            score = self.results[role]["score"]
            prefix = EvalSet.of(role).neuron_prefix
            metrics[f"{prefix}/best_predictivity"] = float(score.max())
            class_count = self.results[role]["class_count"]
            metrics[f"{prefix}/majority_baseline"] = int(class_count.max()) / int(class_count.sum())
            balanced = self.results[role].get("balanced_score")
            for n in tops if balanced is not None else ():
                metrics[f"{prefix}/balanced_top{n:g}_mean"] = mean_of_top(balanced, n, sizing)
            for n in tops:
                metrics[f"{prefix}/top{n:g}_mean"] = mean_of_top(score, n, sizing)
            metrics.update({f"{prefix}/{k}": v for k, v in agreement_metrics(self.results[role])[0].items()})
            if role == roles[0]:
                continue
            for n in overlaps:
                metrics[f"{prefix}/overlap@{n:g}"] = overlap_at(clean, score, n, sizing)
                metrics[f"{prefix}/clean_top{n:g}_predictivity"] = mean_of_top(clean, n, sizing, score)
                if balanced is not None:
                    metrics[f"{prefix}/balanced_clean_top{n:g}_predictivity"] = mean_of_top(
                        self.results[roles[0]]["balanced_score"], n, sizing, balanced)
        return metrics

    def _write(self, trainer, pl_module, datamodule, stage: str, prompt_source: str) -> None:
        run_dir = run_dir_of(trainer) or Path(trainer.default_root_dir)  # the summary's (broadcast from rank 0)
        out = run_dir / OUTPUT_DIR
        sets = datamodule.eval_sets(stage)
        first = self.results[sets[0].split]
        layers, positions, units = first["threshold"].shape
        analysed = pl_module.analysed_positions(self.part, self.positions)
        settings = RunSettings.read({**pl_module.hparams, "family": pl_module.family, "task": datamodule.task.name,
                                     "stage": stage, **self.analysis_settings()})
        common = {
            **settings.neuron_metadata(), "label_names": list(datamodule.task.label_names),
            "threshold_split": THRESHOLD_ROLE, "threshold_examples": int(first["threshold_examples"]),
            "max_threshold_samples": self.max_threshold_samples, "threshold_seed": self.threshold_seed,
            "prompt_checkpoint": str(prompt_source), "absolute_positions": analysed.absolute,
            "shape": {"layers": layers, "positions": positions, "units": units},
            "positions": (analysed.description if analysed.absolute is None else
                          f"{self.positions}: absolute positions {position_span(analysed.absolute)}"
                          if self.part == "encoder" else "first decoder step"),
            "multiclass": "one-vs-rest (class, layer, position, unit)" if datamodule.num_classes > 2 else None,
        }
        records = {}
        for eval_set in sets:
            r = self.results[eval_set.split]
            examples = int(r["class_count"].sum())
            file = out / f"{eval_set.file_stem}.safetensors"
            save_neuron_file(file, {k: v for k, v in r.items() if k != "threshold_examples"},
                             {**common, "split": eval_set.split, "examples": examples})
            prefix = f"{eval_set.neuron_prefix}/"
            records[eval_set.name] = {
                "split": eval_set.split, "examples": examples, "class_count": r["class_count"].tolist(),
                "majority_baseline": int(r["class_count"].max()) / examples,
                "file": str(file), **{k[len(prefix):]: v for k, v in self.metrics.items() if k.startswith(prefix)},
                "per_layer_top5_mean": per_layer_top_means(r["score"], 5, sizing_of(common["layout"])),
                **({"agreement_per_layer": agreement} if (agreement := agreement_metrics(r)[1]) else {}),
            }
        columns, rows = top_rows(self.results, sets, self.table_rows)
        atomic_write(out / "top_neurons.csv", lambda f: f.writelines(",".join(map(str, r)) + "\n" for r in [columns, *rows]))
        figure = out / "per_layer_predictivity.png"
        per_layer_figure(self.results, self.metrics, sets, figure, common)
        update_summary(run_dir, skill_neurons={**common, "sets": records, "metrics": self.metrics,
                                               "top_neurons_file": str(out / "top_neurons.csv"),
                                               "figure": str(figure)})
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, columns, rows, figure, out, common)

    def _log_wandb(self, logger: WandbLogger, columns, rows, figure: Path, out: Path, common: dict) -> None:
        import wandb

        run = logger.experiment
        run.summary.update(self.metrics)
        run.log({"skill_neurons/top_neurons": wandb.Table(columns=columns, data=rows),
                 "skill_neurons/per_layer_predictivity": wandb.Image(str(figure))})
        if self.log_artifact:
            # One artifact per configuration: the seeds' runs are its versions, aliased by seed and run id.
            seed, settings = run.config.get("seed_everything"), RunSettings.from_neuron_file(common)
            metadata = {**{k: v for k, v in common.items() if v is not None}, "run_id": run.id, "seed": seed}
            artifact = wandb.Artifact(settings.artifact_name, type="skill-neurons", metadata=metadata)
            for file in sorted(p for p in out.iterdir() if p.is_file()):  # add_dir would print a line of its own
                artifact.add_file(str(file), name=file.name)
            run.log_artifact(artifact, aliases=["latest", f"run-{run.id}", *[f"seed-{seed}"] * (seed is not None)])
