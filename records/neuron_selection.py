"""Which units of a neuron file are skill neurons, and how two sets of them compare: selections over (L, N)
scores (the max over prompt positions of each unit's predictivity), shared by the skill-neuron callback,
suppression and the report.

    skill neurons    top n% of units PER LAYER by score: :func:`top_percent_mask`.
    overlap@n%       |topn(A) ∩ topn(B)| / |topn| per layer, mean over layers: :func:`overlap_at`.
    several prompts  scores averaged after the max over positions: :func:`mean_over_prompts`.
"""

import math

import torch


def num_selected(num_units, percent):
    """Units per layer picked by top_percent_mask: ceil(percent/100 · N), at least 1 if percent > 0.

    E.g. N = 3072: 1% -> 31, 3% -> 93, 15% -> 461. A tiny tolerance absorbs float noise, so
    15% of 100 units is 15, not 16.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    if percent == 0:
        return 0
    k = math.ceil(percent * num_units / 100 - 1e-9)
    return min(num_units, max(1, k))


def _top_indices(score, k):
    """(L, k) unit indices of the k highest scores per layer; ties -> lower unit index first."""
    return torch.argsort(-score, dim=-1, stable=True)[:, :k]  # (L, k)


def top_percent_mask(score, percent):
    """(L, N) bool mask of the top percent% units per layer by score (see num_selected for the count)."""
    if score.ndim != 2:
        raise ValueError(f"score must have shape (L, N), got {tuple(score.shape)}")
    k = num_selected(score.shape[1], percent)
    mask = torch.zeros(score.shape, dtype=torch.bool, device=score.device)  # (L, N)
    if k:
        mask.scatter_(1, _top_indices(score, k), True)
    return mask


def overlap_at(score_a, score_b, percent):
    """overlap@percent%: per layer |top(A) ∩ top(B)| / |top|, mean over layers (a float in [0, 1])."""
    if score_a.shape != score_b.shape:
        raise ValueError(f"score shapes differ: {tuple(score_a.shape)} vs {tuple(score_b.shape)}")
    k = num_selected(score_a.shape[1], percent)
    if k == 0:
        raise ValueError("overlap_at needs percent > 0 (the top-0% set is empty)")
    both = top_percent_mask(score_a, percent) & top_percent_mask(score_b.to(score_a.device), percent)  # (L, N)
    per_layer = both.sum(dim=1).to(torch.float64) / k  # (L,)
    return per_layer.mean().item()


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
