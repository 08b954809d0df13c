"""``NeuronSuppression``: perturb selected FFN neurons while evaluating a prompt (README, "The paper's experiments").

    skill-neurons validate --config configs/roberta/sst2.yaml --ckpt_path runs/<id>/checkpoints/best.ckpt \
        --suppression.rate=5 --suppression.selection=skill --suppression.perturbation=zero

The units come from the skill-neuron files of one or more runs (``neurons``; default: the run the checkpoint
belongs to): the top ``rate``% per layer by score (several runs: by the mean over runs of each run's score),
or, as the control, the same number of random units per layer (``selection=random``; seeded by ``seed``,
the task and the backbone, so the control set is fixed per task + backbone and nested across rates). They are
perturbed at every position of every layer of ``part`` (the same :mod:`lightning_modules.ffn` sites the
analysis reads), during ``validate``/``test`` only:

- ``zero``: set to 0 (P1);
- ``gaussian``: add noise ``N(0, std²)`` (P2's default, std 0.1), one draw per example × unit, broadcast over
  positions; the draw is a hash of (seed, evaluation set, example row, layer, unit), so it does not depend on
  batching, order or the number of processes;
- ``mean``: replace by the unit's threshold (its train-split mean): ``b[l,t,i]`` at each analysed position
  ``t`` (the neuron file's ``absolute_positions``: the prompt slots, the ``<mask>``, ... as the analysis chose),
  and the mean over those positions everywhere else (the threshold exists only at analysed positions). A
  causal LM's positions (``last``, ``text_mean``) are per example and have no absolute positions: its one
  threshold row replaces the unit at every position.

How many units per layer: ``records.neuron_selection.num_selected`` with the sizing of the evaluated model's
layout (``sizing_of``): P1's ``int(N/100 · rate)`` under ``paper`` (P1 ``src/utils.py::init_mask``), ours
``ceil(N · rate/100)`` (at least one unit) otherwise; the random control picks as many.
``rate: 0`` selects no unit and registers no hook: accuracy equals plain validation bit for bit.
``neuron_source``: ``own`` (default) takes the units from ``neurons`` (the run the checkpoint belongs to, unless
given); ``seed_mean`` (P1, ``src/utils.py::init_mask`` loads ``{task}Prompt{model}_mean.npy``) from the mean
score of every finished fit run of the same task, backbone and prompt length beside that run (the task's
prompts, one per seed), so every prompt of a task suppresses the same units.
``adversarial_neurons``: ``clean`` (default; P1's ``--adv_nonAdv``) suppresses the clean set's skill neurons
on the adversarial sets too; ``own`` uses each adversarial set's own skill-neuron file for its loader.
``rate: null`` (the CLI default) switches the callback off.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from lightning import Callback, LightningModule, Trainer

from callbacks.run_summary import run_dir_of
from callbacks.units import (ADVERSARIAL_NEURONS, NEURON_SOURCES, SELECTIONS, AdversarialNeurons, NeuronSource,
                             Selection, UnitChoice, random_units, stable_seed, threshold_fill)
from lightning_modules.contracts import check_at_setup
from lightning_modules.ffn import Part, hook_ffn, remove_hooks
from records.errors import OptionError
from records.neuron_files import SkillNeuronError
from records.neuron_selection import Sizing
from records.summary import update_summary

__all__ = ["NeuronSuppression", "hashed_normal", "random_units", "stable_seed", "SELECTIONS", "NEURON_SOURCES",
           "ADVERSARIAL_NEURONS", "PERTURBATIONS", "Selection", "NeuronSource", "AdversarialNeurons"]

Perturbation = Literal["zero", "gaussian", "mean"]
PERTURBATIONS = get_args(Perturbation)
_MASK32 = 0xFFFFFFFF


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values < 2**32 (products wrap; low bits kept)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def hashed_normal(seed: int, stream: int, rows: torch.Tensor, layer: int, units: torch.Tensor) -> torch.Tensor:
    """(B, K) float64 standard normals, a pure function of (seed, stream, row, layer, unit) (Box–Muller on
    two hashed uniforms): the same example gets the same noise in any batch, order or process."""
    key = _fmix32(torch.full_like(rows, seed & _MASK32) ^ (stream * 0x9E3779B9 & _MASK32))
    key = _fmix32(key ^ (rows & _MASK32))  # (B,)
    key = _fmix32(key ^ (layer * 0x27D4EB2F & _MASK32))
    key = _fmix32(key[:, None] ^ units[None, :].to(key))  # (B, K)
    u1 = (_fmix32(key ^ 0x68E31DA4).double() + 0.5) / 2**32  # (0, 1)
    u2 = (_fmix32(key ^ 0xB5297A4D).double() + 0.5) / 2**32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


class NeuronSuppression(Callback):
    """Perturbs FFN units during ``validate``/``test`` (never while training).

    Hooks: ``setup`` (checks settings, loads the neuron files, fixes the selected units),
    ``on_validation_epoch_start`` / ``on_test_epoch_start`` (adds the FFN hooks),
    ``on_validation_batch_start`` / ``on_test_batch_start`` (which set and rows the batch holds),
    ``on_validation_epoch_end`` / ``on_test_epoch_end`` (removes the hooks), ``on_validation_end`` /
    ``on_test_end`` (records the settings in ``summary.json``).

    Args:
        rate: percent of units per layer (0–100); ``None`` switches suppression off.
        selection: ``skill`` (top ``rate``% by skill-neuron score) or ``random`` (the control).
        perturbation: ``zero``, ``gaussian`` or ``mean``.
        std: standard deviation of the gaussian noise.
        neurons: run directories or skill-neuron files; several are combined (mean over runs of each
            run's score). Default: the run that ``--ckpt_path`` belongs to.
        eval_set: whose skill neurons: ``validation`` (clean, default) or an adversarial set's name.
        adversarial_neurons: ``clean`` (the clean set's neurons on every loader; P1's ``--adv_nonAdv``) or
            ``own`` (each adversarial loader uses that set's own neuron file).
        part: ``encoder`` (default) or ``decoder`` (encoder–decoders).
        seed: seed of the random control and of the gaussian noise.
        neuron_source: ``own`` (the ``neurons`` runs) or ``seed_mean`` (the finished fit runs of their task,
            backbone and prompt length in the folder holding each of them).
    """

    def __init__(
        self,
        rate: float | None = None,
        selection: Selection = "skill",
        perturbation: Perturbation = "zero",
        std: float = 0.1,
        neurons: list[str] | None = None,
        eval_set: str = "validation",
        adversarial_neurons: AdversarialNeurons = "clean",
        part: Part = "encoder",
        seed: int = 0,
        neuron_source: NeuronSource = "own",
    ):
        UnitChoice("suppression", rate, selection, None, eval_set, adversarial_neurons, part, seed,
                   neuron_source).check_options()
        if perturbation not in PERTURBATIONS:
            raise OptionError(f"suppression.perturbation={perturbation!r}: use one of {', '.join(PERTURBATIONS)}")
        if perturbation == "gaussian" and not std > 0:
            raise OptionError(f"suppression.std={std}: the gaussian perturbation needs a positive std")
        self.rate, self.selection, self.perturbation, self.std = rate, selection, perturbation, std
        self.neurons = list(neurons) if neurons else None
        self.eval_set, self.adversarial_neurons, self.part, self.seed = eval_set, adversarial_neurons, part, seed
        self.neuron_source = neuron_source
        self.masks: list[torch.Tensor] = []  # per evaluation loader: (L, N) bool
        self.values: list[tuple | None] = []  # per loader: (L, P, N) thresholds and their positions, for "mean"
        self.record: dict = {}
        self.sizing: Sizing = "ceil"  # of the evaluated model's layout, fixed in check_run
        self._handles: list = []
        self._loader = 0
        self._rows: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return self.rate is not None

    @property
    def perturbs_neurons(self) -> bool:
        """True when this run evaluates a perturbed model (the skill-neuron analysis then stands aside)."""
        return self.active

    # ------------------------------------------------------------------ set-up
    def check_run(self, trainer: Trainer, pl_module: LightningModule, datamodule, stage: str) -> None:
        """Called by the CLI before the stage starts: settings, neuron files and model are checked (and the
        units fixed) before any run file exists. Checks the settings against the model and data and fixes the
        units of every evaluation loader."""
        if not self.active:
            return
        if stage in ("fit", "predict"):
            raise SkillNeuronError(f"suppression perturbs evaluation only (validate, test) — use `skill-neurons "
                                   f"validate` (or test) with --ckpt_path, not {stage}, or leave suppression.rate unset")
        self.units = UnitChoice("suppression", self.rate, self.selection, self.neurons, self.eval_set,
                                self.adversarial_neurons, self.part, self.seed, self.neuron_source)
        self.units.choose(trainer, pl_module, datamodule, stage)
        self.masks, self.sizing = self.units.masks, self.units.sizing
        self.values = [self.units.thresholds(index) if self.perturbation == "mean" else None
                       for index in range(len(self.masks))]
        record = dict(self.units.record)
        self.record = {"rate": record.pop("rate"), "selection": record.pop("selection"),
                       "perturbation": self.perturbation,
                       "std": self.std if self.perturbation == "gaussian" else None, **record}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The same checks for a Trainer used without the CLI (the CLI made them before the stage started)."""
        check_at_setup(self, trainer, pl_module, stage)

    # ------------------------------------------------------------------ hooks
    def _perturb(self, layer: int, units: torch.Tensor) -> torch.Tensor | None:
        mask = self.masks[self._loader][layer].to(units.device)  # (N,)
        if self.perturbation == "zero":
            return units * (~mask).to(units.dtype)
        selected = mask.nonzero().squeeze(1)  # (K,)
        if self.perturbation == "gaussian":
            noise = hashed_normal(self.seed, self._loader, self._rows.cpu(), layer, selected.cpu())  # (B, K)
            out = units.clone()
            out[:, :, selected] += (self.std * noise).to(device=units.device, dtype=units.dtype)[:, None, :]
            return out
        fill = threshold_fill(self.values[self._loader], layer, units)  # (S, N)
        return torch.where(mask, fill, units)  # (B, S, N)

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active and trainer.state.fn in ("validate", "test") and any(bool(m.any()) for m in self.masks):
            self._handles = hook_ffn(pl_module.backbone, self._hook, self.part)

    def _hook(self, layer: int, units: torch.Tensor) -> torch.Tensor | None:
        if not bool(self.masks[self._loader][layer].any()):
            return None
        return self._perturb(layer, units)

    def _batch(self, batch, dataloader_idx: int) -> None:
        self._loader = dataloader_idx
        self._rows = batch["idx"]

    def _stop(self) -> None:
        remove_hooks(self._handles)

    def on_validation_epoch_start(self, trainer, pl_module):
        """Add the hooks (validate only; not the validation epochs of a fit)."""
        self._start(trainer, pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        """Add the hooks."""
        self._start(trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """Remember which evaluation set and rows the batch holds (units and noise depend on them)."""
        self._batch(batch, dataloader_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """Remember which evaluation set and rows the batch holds."""
        self._batch(batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        """Remove the hooks."""
        self._stop()

    def on_test_epoch_end(self, trainer, pl_module):
        """Remove the hooks."""
        self._stop()

    def on_exception(self, trainer, pl_module, exception):
        """Never leave hooks behind."""
        self._stop()

    # ------------------------------------------------------------------ record
    def _finish(self, trainer: Trainer) -> None:
        if not self.active or not trainer.is_global_zero:
            return
        run_dir = run_dir_of(trainer)
        if run_dir:
            update_summary(run_dir, suppression=self.record)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "summary"):
                experiment.summary.update({f"suppression/{k}": v for k, v in self.record.items()
                                           if isinstance(v, (int, float, str))})

    def on_validation_end(self, trainer, pl_module):
        """Record the suppression settings with the run (``summary.json`` → ``suppression``)."""
        if trainer.state.fn == "validate":
            self._finish(trainer)

    def on_test_end(self, trainer, pl_module):
        """Record the suppression settings with the run."""
        self._finish(trainer)
