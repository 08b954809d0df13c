"""Which units of a neuron file are skill neurons, and how two sets of them compare: selections over (L, N)
scores (the max over prompt positions of each unit's predictivity). The one implementation of top-n% sizing and
selection, shared by the skill-neuron callback, suppression and the report (which calls it from numpy).

    skill neurons    top n% of units PER LAYER by score: :func:`top_percent_mask`, :func:`top_units`.
    model-wide top   top n% of all L·N units: :func:`model_wide_top`.
    overlap@n%       |topn(A) ∩ topn(B)| / |topn| per layer, mean over layers: :func:`overlap_at`.
    several prompts  scores averaged after the max over positions: :func:`mean_over_prompts`.

How many units "the top n%" holds (:func:`num_selected`) is a ``sizing``: ``ceil`` (ours) or ``p1`` (P1's
``int``). A run's sizing follows its layout (:func:`sizing_of`): ``paper`` runs reproduce P1's experiments and
size as P1 does, every other run with ours. Ties in a ranking: the lower unit (flat) index first.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

Sizing = Literal["ceil", "p1"]
SIZINGS = get_args(Sizing)


def sizing_of(layout: str | None) -> Sizing:
    """The sizing of a run with this input layout: P1's under ``paper``, ours otherwise (also for old files
    without a layout, which are ``standard``)."""
    return "p1" if layout == "paper" else "ceil"


def num_selected(num_units: int, percent: float, sizing: Sizing = "ceil") -> int:
    """Units in the top ``percent``% of ``num_units`` (per layer: N; model-wide: L·N).

    ``ceil`` (ours): ceil(percent/100 · N), at least 1 if percent > 0; N = 3072: 1% -> 31, 3% -> 93, 15% -> 461.
    A tiny tolerance absorbs float noise, so 15% of 100 units is 15, not 16.
    ``p1``: ``int(N / 100 * percent)`` with P1's float expression (floor; 0 when N·percent < 100); N = 3072:
    1% -> 30, 3% -> 92, 15% -> 460.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    if sizing == "p1":
        # P1 (LeonAckermann/Robust-Neurons): src/utils.py::init_mask, `percent = int(number_neurons/100*topn)` (the
        # units suppressed per layer or model-wide); src/analysis.py::get_adv_overlap, correlation_matrix_across_seed,
        # correlation_matrix_across_layer, get_predictivities_adversarial_skill_neurons_nonadversarial and
        # get_histplot_distribution size their top n% the same way.
        return int(num_units / 100 * percent)
    if sizing != "ceil":
        raise ValueError(f"sizing must be one of {', '.join(SIZINGS)}, got {sizing!r}")
    if percent == 0:
        return 0
    k = math.ceil(percent * num_units / 100 - 1e-9)
    return min(num_units, max(1, k))


def top_units(score: torch.Tensor, percent: float, sizing: Sizing = "ceil") -> torch.Tensor:
    """(L, k) unit indices of each layer's top ``percent``% by score, best first (k = num_selected(N, ...))."""
    if score.ndim != 2:
        raise ValueError(f"score must have shape (L, N), got {tuple(score.shape)}")
    k = num_selected(score.shape[1], percent, sizing)
    return torch.argsort(-score, dim=-1, stable=True)[:, :k]  # (L, k)


def top_percent_mask(score: torch.Tensor, percent: float, sizing: Sizing = "ceil") -> torch.Tensor:
    """(L, N) bool mask of the top ``percent``% units per layer by score (see :func:`num_selected`)."""
    top = top_units(score, percent, sizing)  # (L, k)
    mask = torch.zeros(score.shape, dtype=torch.bool, device=score.device)  # (L, N)
    if top.shape[1]:
        mask.scatter_(1, top, True)
    return mask


def model_wide_top(score: torch.Tensor, percent: float, sizing: Sizing = "ceil") -> torch.Tensor:
    """(k,) flat indices (layer·N + unit) of the top ``percent``% of all L·N units, best first."""
    flat = score.reshape(-1)
    return torch.argsort(-flat, stable=True)[:num_selected(flat.numel(), percent, sizing)]


def overlap_per_layer(score_a: torch.Tensor, score_b: torch.Tensor, percent: float,
                      sizing: Sizing = "ceil") -> torch.Tensor:
    """(L,) float64 |top(A) ∩ top(B)| / k per layer, k the size of the top ``percent``% (must be > 0)."""
    if score_a.shape != score_b.shape:
        raise ValueError(f"score shapes differ: {tuple(score_a.shape)} vs {tuple(score_b.shape)}")
    k = num_selected(score_a.shape[1], percent, sizing)
    if k == 0:
        raise ValueError(f"overlap needs a non-empty top set: the top {percent:g}% of {score_a.shape[1]} units "
                         f"({sizing} sizing) is no unit")
    both = top_percent_mask(score_a, percent, sizing) & top_percent_mask(score_b.to(score_a.device), percent, sizing)
    return both.sum(dim=1).to(torch.float64) / k  # (L,)


def overlap_at(score_a: torch.Tensor, score_b: torch.Tensor, percent: float, sizing: Sizing = "ceil") -> float:
    """overlap@percent%: per layer |top(A) ∩ top(B)| / |top|, mean over layers (a float in [0, 1])."""
    return overlap_per_layer(score_a, score_b, percent, sizing).mean().item()


def mean_predictivity_of(mask, score):
    """Mean of score (L, N) over the units selected by mask (L, N), e.g. adversarial predictivity of the
    clean skill neurons: mean_predictivity_of(top_percent_mask(clean, n), adv_score)."""
    if mask.shape != score.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and score {tuple(score.shape)} shapes differ")
    if not bool(mask.any()):
        raise ValueError("mask selects no unit")
    return score[mask.to(score.device)].to(torch.float64).mean().item()


def top_neurons(score_clean, predictivity_clean, k):
    """The k best neurons over all layers: list of (layer, unit, best_position, score), best first.

    score_clean (L, N); predictivity_clean (L, P, N), or (C, L, P, N) which is reduced by max over classes.
    best_position = first prompt position reaching the max predictivity; ties in score -> lower
    (layer, unit) first.
    """
    if predictivity_clean.ndim == 4:
        predictivity_clean = predictivity_clean.amax(dim=0)  # (L, P, N)
    L, N = score_clean.shape
    if predictivity_clean.shape[0] != L or predictivity_clean.shape[2] != N:
        raise ValueError(
            f"predictivity {tuple(predictivity_clean.shape)} does not match score {tuple(score_clean.shape)}"
        )
    k = min(int(k), L * N)
    flat = torch.argsort(-score_clean.reshape(-1), stable=True)[:k]  # (k,) indices into L*N
    best_pos = predictivity_clean.argmax(dim=1).reshape(-1)  # (L*N,) first max over positions
    values = score_clean.reshape(-1)[flat].tolist()
    positions = best_pos.to(flat.device)[flat].tolist()
    return [(i // N, i % N, p, v) for i, p, v in zip(flat.tolist(), positions, values)]


def mean_over_prompts(scores):
    """(L, N) mean of several prompts' (seeds') scores: the max over positions comes first, then this mean."""
    return torch.stack([s.to(torch.float32) for s in scores]).mean(dim=0)  # (S, L, N) -> (L, N)


def mean_of_top(score: torch.Tensor, percent: float, sizing: Sizing = "ceil",
                values: torch.Tensor | None = None) -> float:
    """Mean of ``values`` (default: ``score``) over the top ``percent``% units per layer by ``score``: e.g. the
    adversarial predictivity of the clean skill neurons, ``mean_of_top(clean, n, sizing, adversarial)``."""
    return mean_predictivity_of(top_percent_mask(score, percent, sizing), score if values is None else values)


def per_layer_top_means(score: torch.Tensor, percent: float, sizing: Sizing = "ceil") -> list[float]:
    """Per layer: the mean score of the layer's top ``percent``% units (``summary.json``'s
    ``per_layer_top5_mean``, recomputed by the report); empty when the top set is no unit (``p1``, N·n < 100)."""
    if not num_selected(score.shape[1], percent, sizing):
        return []
    return [mean_of_top(score[i:i + 1], percent, sizing) for i in range(score.shape[0])]
