"""Which FFN units an evaluation perturbs: the one unit selection of suppression and intervention.

``NeuronSuppression`` (``--suppression.*``) and ``NeuronIntervention`` (``--intervention.*``) both choose, per
evaluation loader, an (L, N) mask of units: the top ``rate``% per layer by skill-neuron score (``selection=skill``)
or as many random units per layer (``random``: seeded by ``seed``, the task and the backbone, nested across rates);
scores from the ``neurons`` runs (``neuron_source=own``) or from every finished fit run of their task, backbone
and prompt length beside them (``seed_mean``); the clean set's units on every loader (``adversarial_neurons=clean``)
or each adversarial set's own (``own``). :class:`UnitChoice` holds those settings and makes the choice;
:func:`threshold_fill` builds the per-position threshold that suppression's ``mean`` and intervention's
``baseline=mean`` use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from lightning_modules.ffn import PARTS, ffn_shape
from records.errors import OptionError
from records.neuron_files import SkillNeuronError, combine_neuron_files, load_neuron_file
from records.neuron_selection import Sizing, num_selected, sizing_of, top_percent_mask
from records.summary import finished_fit_runs, read_summary, run_of_checkpoint

Selection = Literal["skill", "random"]
NeuronSource = Literal["own", "seed_mean"]
AdversarialNeurons = Literal["clean", "own"]
SELECTIONS, NEURON_SOURCES = get_args(Selection), get_args(NeuronSource)
ADVERSARIAL_NEURONS = get_args(AdversarialNeurons)


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


@dataclass
class UnitChoice:
    """The unit-selection settings of one perturbing callback; ``option`` names its CLI group in messages.

    :meth:`choose` fixes, for every evaluation loader of ``stage``, the (L, N) mask (``masks``) and the neuron
    files it came from (``files``); ``record`` describes the choice for ``summary.json``.
    """

    option: str
    rate: float | None
    selection: str = "skill"
    neurons: list[str] | None = None
    eval_set: str = "validation"
    adversarial_neurons: str = "clean"
    part: str = "encoder"
    seed: int = 0
    neuron_source: str = "own"
    masks: list[torch.Tensor] = field(default_factory=list)
    files: list[list[str]] = field(default_factory=list)
    sizing: Sizing = "ceil"
    record: dict = field(default_factory=dict)

    def check_options(self) -> None:
        """One line per bad option, before any work."""
        if self.rate is not None and not 0 <= self.rate <= 100:
            raise OptionError(f"{self.option}.rate={self.rate}: give a percentage of units per layer in [0, 100]")
        for name, allowed in (("selection", SELECTIONS), ("adversarial_neurons", ADVERSARIAL_NEURONS),
                              ("part", PARTS), ("neuron_source", NEURON_SOURCES)):
            if getattr(self, name) not in allowed:
                raise OptionError(f"{self.option}.{name}={getattr(self, name)!r}: use one of {', '.join(allowed)}")

    def choose(self, trainer, pl_module, datamodule, stage: str) -> None:
        """Load the neuron files and fix the units of every evaluation loader (refusing files of another shape)."""
        layers, units = ffn_shape(pl_module.backbone, self.part)
        sets, self.sizing = datamodule.eval_sets(stage), sizing_of(pl_module.hparams.get("layout"))
        sources = self._sources([Path(n) for n in self.neurons] if self.neurons else [self._checkpoint_run(trainer)])
        clean_score, meta = combine_neuron_files(sources, self.eval_set)
        if tuple(clean_score.shape) != (layers, units):
            raise SkillNeuronError(
                f"the skill-neuron files {meta['files']} have {tuple(clean_score.shape)} (layers, units) but the "
                f"model's {self.part} has ({layers}, {units}) — use neuron files of the same backbone")
        backbone = pl_module.hparams.get("backbone")
        if meta.get("backbone") and backbone and meta["backbone"] != backbone:
            raise SkillNeuronError(
                f"the skill-neuron files {meta['files']} are of backbone {meta['backbone']!r}, the evaluated model is "
                f"{backbone!r} — units of one backbone are no units of another: use neuron files of the same "
                "backbone")
        self.masks, self.files = [], []
        for index, evaluated in enumerate(sets):
            score, files = clean_score, meta["files"]
            if index > 0 and self.adversarial_neurons == "own":
                score, own = combine_neuron_files(sources, evaluated.name)
                files = own["files"]
            self.masks.append(self._select(score, pl_module, datamodule))
            self.files.append(files)
        self.record = {
            "rate": float(self.rate), "selection": self.selection, "seed": self.seed, "part": self.part,
            "units_per_layer": num_selected(units, self.rate, self.sizing), "sizing": self.sizing,
            "neurons_from": [str(s) for s in sources], "eval_set": self.eval_set,
            "adversarial_neurons": self.adversarial_neurons, "neuron_source": self.neuron_source,
            "selected_units": {s.name: int(mask.sum()) for s, mask in zip(sets, self.masks)},
            "neuron_files": {s.name: list(files) for s, files in zip(sets, self.files)},  # whose scores, per set
        }

    def _checkpoint_run(self, trainer) -> Path:
        run = run_of_checkpoint(trainer.ckpt_path) if trainer.ckpt_path else None
        if run is None:
            raise SkillNeuronError(f"{self.option} needs skill-neuron files: give --{self.option}.neurons=[runs/<id>] "
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
                raise SkillNeuronError(f"{self.option}.neuron_source=seed_mean: no finished fit run of task "
                                       f"{own.get('task')!r} and backbone {own.get('backbone')!r} in {run.parent} — "
                                       "validate a checkpoint of a finished fit run there, or use neuron_source=own")
            found.update(beside)
        return sorted(found)

    def _select(self, score: torch.Tensor, pl_module, datamodule) -> torch.Tensor:
        if self.selection == "skill":
            return top_percent_mask(score, self.rate, self.sizing)
        seed = stable_seed("random-control", datamodule.task.name, pl_module.hparams.get("backbone"), self.seed)
        return random_units(*score.shape, self.rate, seed, self.sizing)

    def thresholds(self, loader: int) -> tuple[torch.Tensor, list[int]]:
        """The mean threshold over loader ``loader``'s files (L, P, N) and the absolute positions of its P rows."""
        files = self.files[loader]
        loaded = [load_neuron_file(f) for f in files]
        thresholds = [tensors["threshold"] for tensors, _ in loaded]
        positions = {tuple(meta.get("absolute_positions") or range(t.shape[1]))
                     for (_, meta), t in zip(loaded, thresholds)}
        if len({tuple(t.shape) for t in thresholds}) != 1 or len(positions) != 1:
            raise SkillNeuronError(f"threshold shapes or analysed positions differ across {files}; 'mean' needs runs "
                                   "of one prompt length analysed at the same positions")
        return torch.stack(thresholds).mean(dim=0), list(positions.pop())  # (L, P, N), P positions


def threshold_fill(values: tuple[torch.Tensor, list[int]], layer: int, units: torch.Tensor) -> torch.Tensor:
    """(S, N) per-position thresholds for ``units`` (B, S, N) of ``layer``: ``b[l,t,i]`` at each analysed position
    ``t``, the mean over those positions everywhere else (one row, a causal LM's: that row everywhere)."""
    thresholds, at = values
    threshold = thresholds[layer].to(device=units.device, dtype=units.dtype)  # (P, N) at positions `at`
    length = units.shape[1]
    fill = threshold.mean(dim=0, keepdim=True).expand(length, -1).clone()  # (S, N)
    inside = [k for k, position in enumerate(at) if position < length]
    fill[[at[k] for k in inside]] = threshold[inside]
    return fill
