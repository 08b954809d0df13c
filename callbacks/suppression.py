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

import hashlib
import math
from pathlib import Path
from typing import Literal, get_args

import torch
from lightning import Callback, LightningModule, Trainer

from callbacks.run_summary import run_dir_of
from lightning_modules.contracts import check_at_setup
from lightning_modules.ffn import PARTS, Part, ffn_shape, hook_ffn, remove_hooks
from records.errors import OptionError
from records.neuron_files import SkillNeuronError, combine_neuron_files, load_neuron_file
from records.neuron_selection import Sizing, num_selected, sizing_of, top_percent_mask
from records.summary import finished_fit_runs, read_summary, run_of_checkpoint, update_summary

Selection = Literal["skill", "random"]
NeuronSource = Literal["own", "seed_mean"]
Perturbation = Literal["zero", "gaussian", "mean"]
AdversarialNeurons = Literal["clean", "own"]
SELECTIONS, NEURON_SOURCES = get_args(Selection), get_args(NeuronSource)
PERTURBATIONS, ADVERSARIAL_NEURONS = get_args(Perturbation), get_args(AdversarialNeurons)
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


def stable_seed(*parts) -> int:
    """A seed from strings and numbers that is the same in every process and Python run (unlike hash())."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def random_units(num_layers: int, num_units: int, percent: float, seed: int, sizing: Sizing = "ceil") -> torch.Tensor:
    """(L, N) bool: the same number of units per layer as the top-``percent``% selection, at random.
    One permutation per layer, so the sets are nested as ``percent`` grows."""
    k = num_selected(num_units, percent, sizing)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(num_layers, num_units, dtype=torch.bool)
    for layer in range(num_layers):
        mask[layer, torch.randperm(num_units, generator=generator)[:k]] = True
    return mask


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
        if rate is not None and not 0 <= rate <= 100:
            raise OptionError(f"suppression.rate={rate}: give a percentage of units per layer in [0, 100]")
        for name, value, allowed in (("selection", selection, SELECTIONS), ("perturbation", perturbation, PERTURBATIONS),
                                     ("adversarial_neurons", adversarial_neurons, ADVERSARIAL_NEURONS),
                                     ("part", part, PARTS), ("neuron_source", neuron_source, NEURON_SOURCES)):
            if value not in allowed:
                raise OptionError(f"suppression.{name}={value!r}: use one of {', '.join(allowed)}")
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
        layers, units = ffn_shape(pl_module.backbone, self.part)
        sets, self.sizing = datamodule.eval_sets(stage), sizing_of(pl_module.hparams.get("layout"))
        sources = self._sources([Path(n) for n in self.neurons] if self.neurons else [self._checkpoint_run(trainer)])
        clean_score, meta = combine_neuron_files(sources, self.eval_set)
        if tuple(clean_score.shape) != (layers, units):
            raise SkillNeuronError(
                f"the skill-neuron files {meta['files']} have {tuple(clean_score.shape)} (layers, units) but the "
                f"model's {self.part} has ({layers}, {units}) — use neuron files of the same backbone")
        self.masks, self.values = [], []
        for index, evaluated in enumerate(sets):
            score, files = clean_score, meta["files"]
            if index > 0 and self.adversarial_neurons == "own":
                score, own = combine_neuron_files(sources, evaluated.name)
                files = own["files"]
            self.masks.append(self._select(score, pl_module, datamodule))
            self.values.append(self._thresholds(files, pl_module) if self.perturbation == "mean" else None)
        self.record = {
            "rate": float(self.rate), "selection": self.selection, "perturbation": self.perturbation,
            "std": self.std if self.perturbation == "gaussian" else None, "seed": self.seed, "part": self.part,
            "units_per_layer": num_selected(units, self.rate, self.sizing), "sizing": self.sizing,
            "neurons_from": [str(s) for s in sources],
            "eval_set": self.eval_set, "adversarial_neurons": self.adversarial_neurons,
            "neuron_source": self.neuron_source,
            "selected_units": {s.name: int(mask.sum()) for s, mask in zip(sets, self.masks)},
        }

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The same checks for a Trainer used without the CLI (the CLI made them before the stage started)."""
        check_at_setup(self, trainer, pl_module, stage)

    def _checkpoint_run(self, trainer: Trainer) -> Path:
        run = run_of_checkpoint(trainer.ckpt_path) if trainer.ckpt_path else None
        if run is None:
            raise SkillNeuronError("suppression needs skill-neuron files: give --suppression.neurons=[runs/<id>] "
                                   "(or validate a checkpoint from runs/<id>/checkpoints/, whose run is used)")
        return run

    def _sources(self, runs: list[Path]) -> list[Path]:
        """The runs whose neuron files give the units: ``runs`` themselves (``own``), or (``seed_mean``) every
        finished fit run beside each of them with its task, backbone and prompt length."""
        if self.neuron_source == "own":
            return runs
        found = set()
        for run in runs:
            own = read_summary(run).get("settings", {})
            keys = ("task", "backbone", "prompt_length")
            beside = [directory.resolve() for directory, summary in finished_fit_runs([run.parent])
                      if all(summary.get("settings", {}).get(k) == own.get(k) for k in keys)]
            if not beside:
                raise SkillNeuronError(f"suppression.neuron_source=seed_mean: no finished fit run of task "
                                       f"{own.get('task')!r} and backbone {own.get('backbone')!r} in {run.parent} — "
                                       "validate a checkpoint of a finished fit run there, or use neuron_source=own")
            found.update(beside)
        return sorted(found)

    def _select(self, score: torch.Tensor, pl_module, datamodule) -> torch.Tensor:
        if self.selection == "skill":
            return top_percent_mask(score, self.rate, self.sizing)
        seed = stable_seed("random-control", datamodule.task.name, pl_module.hparams.get("backbone"), self.seed)
        return random_units(*score.shape, self.rate, seed, self.sizing)

    def _thresholds(self, files: list[str], pl_module) -> tuple[torch.Tensor, list[int]]:
        """The mean threshold over ``files`` (L, P, N) and the absolute positions its P rows belong to."""
        loaded = [load_neuron_file(f) for f in files]
        thresholds = [tensors["threshold"] for tensors, _ in loaded]
        positions = {tuple(meta.get("absolute_positions") or range(t.shape[1])) for (_, meta), t in zip(loaded, thresholds)}
        if len({tuple(t.shape) for t in thresholds}) != 1 or len(positions) != 1:
            raise SkillNeuronError(f"threshold shapes or analysed positions differ across {files}; 'mean' needs runs "
                                   "of one prompt length analysed at the same positions")
        return torch.stack(thresholds).mean(dim=0), list(positions.pop())  # (L, P, N), P positions

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
        values, at = self.values[self._loader]
        threshold = values[layer].to(device=units.device, dtype=units.dtype)  # (P, N) at positions `at`
        length = units.shape[1]
        fill = threshold.mean(dim=0, keepdim=True).expand(length, -1).clone()  # (S, N)
        inside = [k for k, position in enumerate(at) if position < length]
        fill[[at[k] for k in inside]] = threshold[inside]
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
