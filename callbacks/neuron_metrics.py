"""Helpers of ``SkillNeuronCallback``'s passes: which rows a rank reads, and the continuous metrics
(:mod:`lightning_modules.neuron_correlation`) wired to the same streaming passes as the predictivity.

The continuous metrics need the model's logits (the margin target), which exist only after the forward has passed
every layer: :class:`ContinuousMetrics` keeps one batch's analysed units per layer (B × P' × N each, and their
text mean) until the logits arrive, then adds them to float64 sums. No activation outlives its batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_modules.neuron_correlation import (
    CorrelationAccumulator, label_targets, margin_targets, spearman_per_layer,
)
from lightning_modules.neuron_statistics import PredictivityAccumulator, ThresholdAccumulator

# The continuous metrics of a neuron file: name -> what it correlates (README, "Continuous neuron metrics").
CONTINUOUS = {
    "label_correlation": "point-biserial r of the activation at each analysed position with 1[label == c]",
    "margin_correlation": "Pearson r of the activation at each analysed position with the logit margin m_c",
    "text_label_correlation": "point-biserial r of the mean activation over the text tokens with 1[label == c]",
    "text_margin_correlation": "Pearson r of the mean activation over the text tokens with the logit margin m_c",
}


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Every ``world_size``-th index starting at ``rank``: the shards partition ``indices`` exactly."""
    return indices[rank::world_size]


def threshold_indices(num_rows: int, max_samples: int | None, seed: int) -> list[int]:
    """Rows of the train split used for thresholds: all, or a seeded random subset of ``max_samples``
    (random, not the first rows: train files are often sorted by label)."""
    if max_samples is None or max_samples >= num_rows:
        return list(range(num_rows))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(num_rows, generator=generator)[:max_samples].tolist())


def balanced_view(counts: PredictivityAccumulator) -> torch.Tensor:
    """The class-balanced predictivity in the layout of ``predictivity``: (L, P, N) binary, (C, L, P, N) else."""
    balanced = counts.balanced_predictivity_per_class()
    return balanced[1] if counts.num_classes == 2 else balanced


Select = Callable[[torch.Tensor, dict], torch.Tensor]  # one layer's units (B, S, N) -> (B, P', N)


class ContinuousMetrics:
    """The continuous metrics of one evaluation pass: ``record`` in the FFN hook of every layer, ``finish`` once the
    batch's logits (B, C') are known. Targets: C label indicators, then C margins (``neuron_correlation.py``)."""

    def __init__(self, threshold: torch.Tensor, text_threshold: torch.Tensor | None, num_classes: int,
                 select: Select, text_select: Select | None):
        self.num_classes = num_classes
        self.select, self.text_select = select, text_select
        self.at_positions = CorrelationAccumulator(threshold, 2 * num_classes)  # (L, P', N)
        self.text = None if text_threshold is None else CorrelationAccumulator(text_threshold, 2 * num_classes)
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def record(self, layer: int, units: torch.Tensor, batch: dict) -> None:
        """Keep layer ``layer``'s analysed units (B, P', N) and their text mean (B, 1, N) until ``finish``."""
        text = self.text_select(units, batch) if self.text is not None else None
        self.pending[layer] = (self.select(units, batch), text)

    def finish(self, batch: dict, logits: torch.Tensor) -> None:
        """Add the kept units of every layer with the batch's label and margin targets (B, 2C)."""
        labels = batch["labels"].reshape(-1)
        targets = torch.cat([label_targets(labels, self.num_classes), margin_targets(logits, self.num_classes)], 1)
        for layer in sorted(self.pending):
            acts, text = self.pending[layer]
            self.at_positions.update(acts, targets, layer=layer)
            if self.text is not None:
                self.text.update(text, targets, layer=layer)
        self.pending.clear()

    def all_reduce(self, reduce_fn) -> None:
        for accumulator in (self.at_positions, self.text):
            if accumulator is not None:
                accumulator.all_reduce(reduce_fn)

    def results(self, positive: int) -> dict[str, torch.Tensor]:
        """Per metric: (L, P', N) for a binary task (class ``positive``'s r, as ``accuracy``), (C, L, P', N) else;
        text variants (L, N) / (C, L, N); ``<metric>_score`` (L, N) = max over classes and positions of |r|;
        ``activation_probability`` (L, N) at the analysed positions."""
        C = self.num_classes
        out = {"activation_probability": self.at_positions.activation_probability()}
        sources = [("", self.at_positions)] + ([("text_", self.text)] if self.text is not None else [])
        for prefix, accumulator in sources:
            r = accumulator.correlation()  # (2C, L, P', N)
            for name, part in (("label_correlation", r[:C]), ("margin_correlation", r[C:])):
                if prefix:
                    part = part[:, :, 0]  # (C, L, N): one text-mean "position"
                key = prefix + name
                out[key] = part[positive] if C == 2 else part
                out[f"{key}_score"] = part.abs().amax(dim=0) if prefix else part.abs().amax(dim=(0, 2))  # (L, N)
        return out


def threshold_recorders(thresholds: ThresholdAccumulator, text: ThresholdAccumulator | None, select: Select,
                        text_select: Select | None) -> Callable[[int, torch.Tensor, dict], None]:
    """The threshold pass's hook: the analysed units' running mean and, for the continuous metrics, their text
    mean's (the center of the text-mean sums)."""
    def update(layer: int, units: torch.Tensor, batch: dict) -> None:
        thresholds.update(select(units, batch), layer=layer)
        if text is not None:
            text.update(text_select(units, batch), layer=layer)
    return update


def agreement_metrics(result: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, list[float | None]]]:
    """Agreement of each continuous metric's per-unit score with P1's score (max predictivity over positions):
    Spearman ρ per layer; the summary gets its mean over the layers where ρ is defined (``agreement_<metric>``) and
    the best score (``best_<metric>``); names of one part, so W&B's ``skill_neurons/<set>/<name>`` keys parse
    (``records.eval_set.parse_neuron_metric``). Returns (scalars, per-layer ρ lists)."""
    scalars, per_layer = {}, {}
    for name in CONTINUOUS:
        score = result.get(f"{name}_score")
        if score is None:
            continue
        rhos = spearman_per_layer(result["score"], score)
        defined = [r for r in rhos if r is not None]
        per_layer[name] = rhos
        scalars[f"best_{name}"] = float(score.max())
        if defined:
            scalars[f"agreement_{name}"] = sum(defined) / len(defined)
    return scalars, per_layer
