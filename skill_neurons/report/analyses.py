"""The paper's skill-neuron analyses as the paper defines them (``--definitions paper``), as plain numpy (no I/O,
no plotting); P1's released code as it runs, bugs included: :mod:`.p1_code` (docs/p1_code.md lists the differences).

P1 = the official code of Ackermann & Ohmer 2024 (``LeonAckermann/Robust-Neurons``); each function names the
P1 function it mirrors. Inputs are per-neuron scores ``(L, N)`` (layers × FFN units): a run's score is already
the max of the predictivity over prompt positions (P1 ``find.py::get_max_seed``). Definitions:

    seed mean        s̄[l,i] = mean over the prompts (seeds) of their scores         get_max_mean
    top-n% size      k = int(count / 100 · n), count = N per layer or L·N model-wide  (P1 everywhere)
                     for ``paper`` runs; ours, ceil(count · n / 100), for the others
                     (``records.neuron_selection.num_selected``; the sizing follows the runs' layout)
    per-layer top    the k units of each layer with the highest score                skill_neurons_across_layer
    model-wide top   the k (count L·N) units of all layers with the highest score
                                                                                     max_skill_neurons_across_model
    overlap@n        |top_l(clean) ∩ top_l(adv)| / k per layer; mean ± s.e.m. over the L layers
                                                                        get_adv_overlap(_per_topn), get_sem
    s.e.m.           sd (ddof 1) / sqrt(count)                                       get_sem
    Spearman         per layer, then the mean over layers                correlation_matrix_across_seed/_layer
    top-n Spearman   per layer, the scores of each side's own top-k units in unit-index order
                                                                 (the ``topn`` branch of the same functions)
    histogram        0.05-wide bins from floor(min/0.05)·0.05 to ceil(max/0.05)·0.05  get_bin_boundaries

Every top-n% set is ``records.neuron_selection``'s, the one the skill-neuron callback and suppression use. Ties
in a ranking: the lower unit (flat) index first (P1's ``np.argsort(x)[::-1]`` leaves ties to the sort
algorithm). Where P1's code has bugs (docs/p1_code.md) we do not follow it here: the Spearman across seeds without
``topn`` stores the p-value (``spearmanr(...)[1]``) — we use ρ; the histogram's combined bins drop the last
edge (``np.arange(min, max, 0.05)``) — we keep every value; ``12`` layers and ``3072`` units are read from the
tensors, not hard-coded.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from records import neuron_selection as selection
from records.neuron_selection import Sizing, num_selected, top_units

P1_N_GRID = (2, 4, 6, 8, 10, 12, 14)  # range(2, topn + 1, 2) with P1's topn = 14
BIN_WIDTH = 0.05  # P1 get_bin_boundaries


def seed_mean(scores: list[np.ndarray]) -> np.ndarray:
    """(L, N) float64 mean over prompts of their (L, N) scores (max over positions first, then this mean)."""
    return np.mean(np.stack([np.asarray(s, dtype=np.float64) for s in scores]), axis=0)


def mean_sem(values) -> tuple[float, float | None]:
    """Mean and standard error of the mean, sd with ddof 1 over sqrt(count) (P1 ``get_sem``); the sem is None
    for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    sem = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(np.mean(values)), sem


def _tensor(score: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(score, dtype=np.float64))


def per_layer_top(score: np.ndarray, percent: float, sizing: Sizing) -> np.ndarray:
    """(L, k) unit indices of each layer's top n% units, best first (P1 ``skill_neurons_across_layer``)."""
    return top_units(_tensor(score), percent, sizing).numpy()


def overlap_per_layer(clean: np.ndarray, adversarial: np.ndarray, percent: float, sizing: Sizing) -> np.ndarray | None:
    """(L,) |top(clean) ∩ top(adv)| / k per layer (P1 ``get_adv_overlap``); None when k = 0."""
    if not num_selected(clean.shape[1], percent, sizing):
        return None
    return selection.overlap_per_layer(_tensor(clean), _tensor(adversarial), percent, sizing).numpy()


def overlap_curve(clean: np.ndarray, adversarial: np.ndarray, sizing: Sizing, grid=P1_N_GRID) -> list[dict]:
    """One row per n: k, mean ± s.e.m. over layers of the per-layer overlap (P1 ``get_adv_overlap_per_topn``)."""
    rows = []
    for n in grid:
        per_layer = overlap_per_layer(clean, adversarial, n, sizing)
        if per_layer is None:
            rows.append({"n": n, "k": 0, "mean": None, "sem": None, "per_layer": None})
            continue
        mean, sem = mean_sem(per_layer)
        rows.append({"n": n, "k": num_selected(clean.shape[1], n, sizing), "mean": mean, "sem": sem,
                     "per_layer": per_layer.tolist()})
    return rows


def model_wide_top(score: np.ndarray, percent: float, sizing: Sizing) -> np.ndarray:
    """(k,) flat indices (layer·N + unit) of the top n% of all L·N units, best first
    (P1 ``max_skill_neurons_across_model`` then ``[:percent]``)."""
    return selection.model_wide_top(_tensor(score), percent, sizing).numpy()


def layer_location(score: np.ndarray, percent: float, sizing: Sizing) -> np.ndarray:
    """(L,) how many of the model-wide top-n% units sit in each layer (P1 ``get_histplot_distribution`` with
    ``mode="max_mean_location"``)."""
    layers, units = score.shape
    return np.bincount(model_wide_top(score, percent, sizing) // units, minlength=layers)


def adversarial_of_clean(clean: np.ndarray, adversarial: np.ndarray, percent: float, sizing: Sizing) -> np.ndarray:
    """Adversarial scores of the model-wide top-n% clean units, best clean first (P1
    ``get_predictivities_adversarial_skill_neurons_nonadversarial``)."""
    return adversarial.reshape(-1)[model_wide_top(clean, percent, sizing)]


def histogram_edges(*arrays) -> np.ndarray:
    """0.05-wide bin edges covering every value of every array (P1 ``get_bin_boundaries``, one set of bins
    for all, as P1's side-by-side histogram), computed as integer multiples of 0.05."""
    values = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])
    low = math.floor(round(values.min() / BIN_WIDTH, 9))
    high = max(math.ceil(round(values.max() / BIN_WIDTH, 9)), low + 1)
    return np.arange(low, high + 1) * BIN_WIDTH


def histogram_counts(values, edges: np.ndarray) -> list[int]:
    """Counts per bin (``np.histogram``: [a, b) bins, the last one closed)."""
    return np.histogram(np.asarray(values, dtype=np.float64), bins=edges)[0].astype(int).tolist()


def spearman_rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two 1-D vectors (``scipy.stats.spearmanr(a, b)[0]``, ties at their average rank); NaN
    when one is constant or has fewer than two values (where scipy warns and returns NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or (a == a[0]).all() or (b == b[0]).all():
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def top_in_index_order(score: np.ndarray, percent: float, sizing: Sizing) -> np.ndarray:
    """(L, k) per layer the scores of the layer's top-k units, in unit-index order (the vectors P1 correlates
    in the ``topn`` branch of ``correlation_matrix_across_seed`` / ``_across_layer``; n = 100: all units)."""
    top = np.sort(per_layer_top(score, percent, sizing), axis=1)  # (L, k) unit indices, ascending
    return np.take_along_axis(score, top, axis=1)


def per_layer_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Mean over layers of the per-layer Spearman ρ of two (L, k) arrays, and the number of layers where ρ is
    defined (a constant layer has none and is left out of the mean)."""
    rhos = np.array([spearman_rho(x, y) for x, y in zip(a, b)])
    defined = ~np.isnan(rhos)
    return (float(rhos[defined].mean()) if defined.any() else float("nan")), int(defined.sum())


def spearman_matrix(scores: list[np.ndarray], percent: float = 100.0, sizing: Sizing = "ceil") -> np.ndarray:
    """(S, S) per-layer-averaged Spearman ρ between the (L, N) scores (seeds, or the seed means of tasks),
    each reduced to its own top-n% per layer in unit-index order (n = 100: every unit, whatever the sizing)."""
    vectors = [top_in_index_order(np.asarray(s, dtype=np.float64), percent, sizing) for s in scores]
    count = len(vectors)
    matrix = np.eye(count)
    for i in range(count):
        for j in range(i + 1, count):
            matrix[i, j] = matrix[j, i] = per_layer_spearman(vectors[i], vectors[j])[0]
    return matrix


def pair_values(matrix: np.ndarray, pairs: list[tuple[int, int]] | None = None) -> list[float]:
    """The upper-triangle entries (P1 ``get_correlation_set``), or those of ``pairs``."""
    count = matrix.shape[0]
    pairs = pairs if pairs is not None else [(i, j) for i in range(count) for j in range(i + 1, count)]
    return [float(matrix[i, j]) for i, j in pairs]

