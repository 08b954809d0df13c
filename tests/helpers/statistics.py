"""Test-only companions of ``lightning_modules/neuron_statistics.py``: the whole-model (B, L, P, N) update, merging
and restoring accumulator states, and Spearman's ρ of score tensors (scipy) as a reference for the report's.
The callback needs none of them: it streams one layer at a time and sums states with ``all_reduce``."""

from __future__ import annotations

import torch
from scipy import stats

from lightning_modules.neuron_statistics import PredictivityAccumulator, ThresholdAccumulator


def update(accumulator, acts, labels=None, keep=None):
    """Feed (B, L, P, N) activations of every layer at once, as the per-layer hooks would: layer by layer
    (``labels`` for a PredictivityAccumulator; ``keep``: optional (B,) bool rows to count)."""
    shape = accumulator.shape
    if acts.ndim != 4 or tuple(acts.shape[1:]) != tuple(shape):
        raise ValueError(f"activations must have shape (B, L, P, N) = (B, {', '.join(map(str, shape))}), "
                         f"got {tuple(acts.shape)}")
    for layer in range(shape[0]):
        if labels is None:
            accumulator.update(acts[:, layer], keep=keep, layer=layer)
        else:
            accumulator.update(acts[:, layer], labels, keep=keep, layer=layer)
    return accumulator


def load_state(accumulator, state):
    """Replace an accumulator's running state by ``state`` (as returned by its ``state()``)."""
    for key, value in accumulator.state().items():
        setattr(accumulator, key, state[key].to(value).clone())
    return accumulator


def merge(accumulator, other):
    """Add another accumulator's (or a state dict's) sums and counts to ``accumulator``."""
    if isinstance(other, PredictivityAccumulator):
        if not torch.equal(other.threshold.to(accumulator.threshold.device), accumulator.threshold):
            raise ValueError("cannot merge PredictivityAccumulators built on different thresholds")
    state = other.state() if isinstance(other, (ThresholdAccumulator, PredictivityAccumulator)) else other
    for key, value in accumulator.state().items():
        if state[key].shape != value.shape:
            raise ValueError(f"cannot merge {key} of shape {tuple(state[key].shape)} into {tuple(value.shape)}")
        value += state[key].to(value)
    return accumulator


def spearman(a, b):
    """Spearman's rho of two score tensors of the same shape (e.g. (L, N) scores of two seeds), flattened
    (``scipy.stats.spearmanr``: ties share their average rank)."""
    if a.shape != b.shape:
        raise ValueError(f"score shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x, y = (t.detach().cpu().to(torch.float64).reshape(-1).numpy() for t in (a, b))
    if (x == x[0]).all() or (y == y[0]).all():
        raise ValueError("Spearman correlation is undefined for a constant score tensor")
    return float(stats.spearmanr(x, y).statistic)


def spearman_matrix(scores):
    """(S, S) float64 matrix of pairwise Spearman correlations of S score tensors (diagonal exactly 1)."""
    count = len(scores)
    out = torch.eye(count, dtype=torch.float64)
    for i in range(count):
        for j in range(i + 1, count):
            out[i, j] = out[j, i] = spearman(scores[i], scores[j])
    return out
