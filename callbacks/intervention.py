"""``NeuronIntervention``: causal tests of skill neurons while evaluating a prompt (README, "Causal tests").

    skill-neurons validate --from_run runs/<id> --intervention.kind=patch --intervention.rate=5
    skill-neurons validate --from_run runs/<id> --intervention.kind=scale --intervention.alpha=2

The units are chosen as suppression chooses them (:class:`callbacks.units.UnitChoice`: top ``rate``% per layer,
or random units of the same size; ``neuron_source``, ``adversarial_neurons``, ``eval_set``, ``seed``).

- ``patch`` (activation patching): on an adversarial set whose rows carry their clean text (``original_<field>``
  columns), every example's clean twin is run first and the selected units' activations at the analysed
  positions are recorded; the adversarial text is then run with those units replaced by the twin's values —
  ``a'[l,t,i] = a_clean[l,t,i]`` for selected ``(l, i)`` and analysed ``t`` (the neuron file's absolute positions;
  a causal LM's ``last`` position: each text's own last position). Each example uses its own twin's values, so
  batching and padding change nothing. Sets without a twin (the clean set) are evaluated unpatched.
- ``scale``: ``a'[l,t,i] = b + α (a[l,t,i] − b)`` for selected units at every position, ``b = 0``
  (``baseline=zero``) or the unit's threshold (``baseline=mean``, suppression's ``mean`` fill); α = 0 is
  suppression's ``zero``/``mean`` bit for bit, α = 1 changes nothing.

Per set the callback counts, over the set's examples (each once, also under DDP): accuracy with the intervention
(``acc``), without it (``acc_unperturbed``) and, when patching, on the clean twins (``acc_clean``), and
``gap_restored = (acc − acc_unperturbed) / (acc_clean − acc_unperturbed)`` (``None`` without a gap). They go to
``summary.json`` → ``intervention`` and the W&B summary (``intervention/<set>/<name>``).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer

from callbacks.run_summary import run_dir_of
from callbacks.units import AdversarialNeurons, NeuronSource, Selection, UnitChoice, threshold_fill
from lightning_modules.contracts import check_at_setup
from lightning_modules.ffn import Part, hook_ffn, remove_hooks
from records.errors import OptionError
from records.neuron_files import SkillNeuronError, load_neuron_file
from records.summary import update_summary

Kind = Literal["patch", "scale"]
Baseline = Literal["zero", "mean"]
KINDS, BASELINES = get_args(Kind), get_args(Baseline)
ALPHA_RANGE = (0.0, 10.0)


class InterventionError(SkillNeuronError):
    """An intervention that cannot be made on this data or model (an unpaired set, positions without a twin)."""


def gap_restored(acc: float, unperturbed: float, clean: float) -> float | None:
    """Share of the clean-vs-adversarial accuracy gap that the intervention closes; ``None`` without a gap."""
    gap = clean - unperturbed
    return None if gap == 0 else (acc - unperturbed) / gap


def patch_rows(units: torch.Tensor, clean: torch.Tensor, at: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """``units`` (B, S, N) with ``units[b, at[b, q], selected] = clean[b, q, :]`` (clean: (B, Q, K) recorded at
    the twin's positions, ``at``: (B, Q) positions in this run, ``selected``: (K,) unit indices)."""
    out = units.clone()
    rows = torch.arange(units.shape[0], device=units.device)[:, None, None]  # (B, 1, 1)
    out[rows, at[:, :, None], selected[None, None, :]] = clean.to(units.dtype)
    return out


class NeuronIntervention(Callback):
    """Patches or scales FFN units during ``validate``/``test`` and records what that does to accuracy.

    Args:
        kind: ``patch`` or ``scale``; ``None`` (the default) switches the callback off.
        rate: percent of units per layer (0–100; 0 patches or scales nothing).
        alpha: the factor of ``scale`` (in [0, 10]); not for ``patch``.
        baseline: what ``scale`` scales the deviation from: ``zero`` (the activation itself) or ``mean``
            (the unit's train-split threshold).
        selection, neurons, eval_set, adversarial_neurons, part, seed, neuron_source: the unit choice, as
            ``--suppression.*`` (:class:`callbacks.units.UnitChoice`).
    """

    def __init__(
        self,
        kind: Kind | None = None,
        rate: float = 5.0,
        alpha: float | None = None,
        baseline: Baseline = "zero",
        selection: Selection = "skill",
        neurons: list[str] | None = None,
        eval_set: str = "validation",
        adversarial_neurons: AdversarialNeurons = "clean",
        part: Part = "encoder",
        seed: int = 0,
        neuron_source: NeuronSource = "own",
    ):
        if kind is not None and kind not in KINDS:
            raise OptionError(f"intervention.kind={kind!r}: use one of {', '.join(KINDS)}")
        if baseline not in BASELINES:
            raise OptionError(f"intervention.baseline={baseline!r}: use one of {', '.join(BASELINES)}")
        if kind == "scale" and alpha is None:
            raise OptionError("intervention.kind=scale needs --intervention.alpha (e.g. 0, 0.5, 1.5, 2, 3)")
        if kind == "patch" and alpha is not None:
            raise OptionError("intervention.alpha applies to kind=scale; patching replaces activations — "
                              "leave it out")
        if alpha is not None and not (math.isfinite(alpha) and ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]):
            raise OptionError(f"intervention.alpha={alpha}: give a factor in [{ALPHA_RANGE[0]:g}, {ALPHA_RANGE[1]:g}]")
        UnitChoice("intervention", rate, selection, None, eval_set, adversarial_neurons, part, seed,
                   neuron_source).check_options()
        self.kind, self.rate, self.alpha, self.baseline = kind, rate, alpha, baseline
        self.selection, self.neurons, self.eval_set = selection, list(neurons) if neurons else None, eval_set
        self.adversarial_neurons, self.part, self.seed = adversarial_neurons, part, seed
        self.neuron_source = neuron_source
        self.units: UnitChoice | None = None
        self.masks: list[torch.Tensor] = []
        self.values: list[tuple | None] = []
        self.sets: list[str] = []
        self.paired: list[bool] = []
        self.positions: list[int] | None = None  # absolute positions patched; None: each text's last position
        self.record: dict = {}
        self.counts: list[dict[int, tuple[int, ...]]] = []  # per loader: row idx -> (correct on, off[, clean])
        self._handles: list = []
        self._loader = 0
        self._mode = "off"  # "off", "record" (the clean twin), "on"
        self._clean: dict[int, torch.Tensor] = {}  # layer -> (B, Q, K) recorded twin values
        self._at: torch.Tensor | None = None  # (B, Q) where this batch's units are patched

    @property
    def active(self) -> bool:
        return self.kind is not None

    @property
    def perturbs_neurons(self) -> bool:
        """True when this run evaluates an intervened model (the skill-neuron analysis then stands aside)."""
        return self.active

    # ------------------------------------------------------------------ set-up
    def check_run(self, trainer: Trainer, pl_module: LightningModule, datamodule, stage: str) -> None:
        """Before the stage starts: the settings against the model and data, the units of every loader, and (patch)
        that the adversarial sets are paired with their clean twins."""
        if not self.active:
            return
        if stage in ("fit", "predict"):
            raise SkillNeuronError(f"intervention applies to evaluation only (validate, test) — use `skill-neurons "
                                   f"validate` (or test) with --ckpt_path, not {stage}, or leave intervention.kind "
                                   "unset")
        sets = datamodule.eval_sets(stage)
        self.sets = [s.name for s in sets]
        self.paired = [index > 0 and "clean_input_ids" in datamodule.datasets[s.split].column_names
                       for index, s in enumerate(sets)]
        if self.kind == "patch":
            self._check_pairs(sets, datamodule)
        self.units = UnitChoice("intervention", self.rate, self.selection, self.neurons, self.eval_set,
                                self.adversarial_neurons, self.part, self.seed, self.neuron_source)
        self.units.choose(trainer, pl_module, datamodule, stage)
        self.masks = self.units.masks
        self.values = [self.units.thresholds(i) if self.kind == "scale" and self.baseline == "mean" else None
                       for i in range(len(self.masks))]
        if self.kind == "patch":
            self.positions = self._patch_positions(self.units.files[0], pl_module)
        baseline = self.baseline if self.kind == "scale" else None
        self.record = {"kind": self.kind, "alpha": self.alpha, "baseline": baseline,
                       **self.units.record, "patched_positions": self.positions if self.kind == "patch" else None}

    def _check_pairs(self, sets, datamodule) -> None:
        unpaired = [s.name for s, paired in zip(sets[1:], self.paired[1:]) if not paired]
        if len(sets) < 2:
            raise InterventionError(f"intervention.kind=patch needs an adversarial set paired with its clean texts; "
                                    f"task {datamodule.task.name!r} evaluates none")
        if unpaired:
            fields = ", ".join(f"original_{f}" for f in datamodule.task.text_fields)
            raise InterventionError(
                f"intervention.kind=patch: adversarial set(s) {', '.join(unpaired)} cannot be paired — each row "
                "needs "
                f"its clean text in a column {fields} (AdvGLUE's dev_ann.json has them, plain dev.json has none)")

    def _patch_positions(self, files: list[str], pl_module) -> list[int] | None:
        _, meta = load_neuron_file(files[0])
        choice = meta.get("analysed_positions")
        if meta.get("absolute_positions"):
            return [int(p) for p in meta["absolute_positions"]]
        if choice == "last" and hasattr(pl_module, "last_positions"):
            return None
        raise InterventionError(f"intervention.kind=patch patches the analysed positions, but {files[0]} analysed "
                                f"{choice!r}, which is no position of the text — use neuron files analysed at "
                                "positions=last (causal LMs) or prompt")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The same checks for a Trainer used without the CLI (the CLI made them before the stage started)."""
        check_at_setup(self, trainer, pl_module, stage)

    # ------------------------------------------------------------------ hooks
    def _where(self, pl_module, batch) -> torch.Tensor:
        """(B, Q) positions of this forward that are patched (or recorded)."""
        if self.positions is not None:
            return torch.tensor(self.positions, device=batch["input_ids"].device).expand(len(batch["labels"]), -1)
        return pl_module.last_positions(pl_module.full_attention_mask(batch))[:, None]

    def _hook(self, layer: int, units: torch.Tensor) -> torch.Tensor | None:
        mask = self.masks[self._loader][layer].to(units.device)  # (N,)
        if self._mode == "off" or not bool(mask.any()):
            return None
        if self.kind == "patch":
            selected = mask.nonzero().squeeze(1)
            rows = torch.arange(units.shape[0], device=units.device)[:, None, None]
            if self._mode == "record":
                self._clean[layer] = units[rows, self._at[:, :, None], selected[None, None, :]].clone()  # (B, Q, K)
                return None
            return patch_rows(units, self._clean[layer], self._at, selected)
        if self.alpha == 1:
            return None
        if self.baseline == "zero":  # α = 0: suppression's `zero` (units · 0) bit for bit
            return units * torch.where(mask, self.alpha, 1.0).to(units.dtype)
        fill = threshold_fill(self.values[self._loader], layer, units)  # (S, N)
        if self.alpha == 0:  # suppression's `mean` bit for bit
            return torch.where(mask, fill, units)
        return torch.where(mask, fill + self.alpha * (units - fill), units)

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active and trainer.state.fn in ("validate", "test"):
            self.counts = [{} for _ in self.masks]
            self._handles = hook_ffn(pl_module.backbone, self._hook, self.part)

    @torch.no_grad()
    def _batch(self, pl_module, batch, loader: int) -> None:
        """Before the step: the batch without (and, patching, its twins and with) the intervention, counted; then
        the hooks are left on for the step itself, which Lightning logs as the set's accuracy."""
        self._loader = loader
        if not self.active or not self._handles:
            return
        labels, rows = batch["labels"], batch["idx"].tolist()
        patch = self.kind == "patch" and self.paired[loader]
        correct = []
        if patch:
            twin = {"input_ids": batch["clean_input_ids"], "attention_mask": batch["clean_attention_mask"],
                    "mask_index": batch["clean_mask_index"], "labels": labels, "idx": batch["idx"]}
            self._mode, self._at = "record", self._where(pl_module, twin)
            clean = pl_module.loss_and_logits(twin)[1].argmax(dim=-1) == labels
        self._mode = "off"
        off = pl_module.loss_and_logits(batch)[1].argmax(dim=-1) == labels
        if patch:
            self._at = self._where(pl_module, batch)
        self._mode = "on" if patch or self.kind == "scale" else "off"
        on = pl_module.loss_and_logits(batch)[1].argmax(dim=-1) == labels
        correct = [on, off, clean] if patch else [on, off]
        for row, values in zip(rows, zip(*(c.tolist() for c in correct))):
            self.counts[loader][row] = tuple(int(v) for v in values)

    def _stop(self) -> None:
        remove_hooks(self._handles)
        self._mode = "off"
        self._clean = {}

    def on_validation_epoch_start(self, trainer, pl_module):
        """Add the hooks (validate only; not the validation epochs of a fit)."""
        self._start(trainer, pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        """Add the hooks."""
        self._start(trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """Count the batch with and without the intervention; leave it on for the step."""
        self._batch(pl_module, batch, dataloader_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """Count the batch with and without the intervention; leave it on for the step."""
        self._batch(pl_module, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        """Remove the hooks and total the counts."""
        self._stop()
        self._total(trainer)

    def on_test_epoch_end(self, trainer, pl_module):
        """Remove the hooks and total the counts."""
        self._stop()
        self._total(trainer)

    def on_exception(self, trainer, pl_module, exception):
        """Never leave hooks behind."""
        self._stop()

    # ------------------------------------------------------------------ record
    def _total(self, trainer: Trainer) -> None:
        """Per set: the accuracies over its rows, each row once (DDP: every process's rows, duplicates dropped)."""
        if not self.active or not self.counts:
            return
        counts = self.counts
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, counts)
            counts = [{k: v for part in gathered for k, v in part[i].items()} for i in range(len(counts))]
        self.record["sets"] = {name: set_accuracies(rows) for name, rows in zip(self.sets, counts) if rows}

    def _finish(self, trainer: Trainer) -> None:
        if not self.active or not trainer.is_global_zero:
            return
        run_dir = run_dir_of(trainer)
        if run_dir:
            update_summary(run_dir, intervention=self.record)
        flat = {f"intervention/{k}": v for k, v in self.record.items() if isinstance(v, (int, float, str))}
        for name, values in self.record.get("sets", {}).items():
            flat.update({f"intervention/{name}/{k}": v for k, v in values.items() if v is not None})
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "summary"):
                experiment.summary.update(flat)

    def on_validation_end(self, trainer, pl_module):
        """Record the settings and accuracies with the run (``summary.json`` → ``intervention``, W&B summary)."""
        if trainer.state.fn == "validate":
            self._finish(trainer)

    def on_test_end(self, trainer, pl_module):
        """Record the settings and accuracies with the run."""
        self._finish(trainer)


def set_accuracies(rows: dict[int, tuple[int, ...]]) -> dict[str, float | int | None]:
    """``rows``: row idx -> (correct with, without[, on the clean twin]) -> the set's accuracies and gap restored."""
    n = len(rows)
    sums = [sum(values[k] for values in rows.values()) for k in range(len(next(iter(rows.values()))))]
    out: dict[str, float | int | None] = {"rows": n, "acc": sums[0] / n, "acc_unperturbed": sums[1] / n}
    if len(sums) > 2:
        out["acc_clean"] = sums[2] / n
        out["gap_restored"] = gap_restored(out["acc"], out["acc_unperturbed"], out["acc_clean"])
    return out
