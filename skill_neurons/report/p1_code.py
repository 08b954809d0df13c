"""The paper's analyses as P1's released code computes them (``--definitions p1-code``), bugs included.

P1 = ``LeonAckermann/Robust-Neurons``; each function names the P1 function it follows (file ``src/analysis.py``
unless ``find.py``/``utils.py`` is named). ``docs/p1_code.md`` lists every place where this differs from the
paper's text and from :mod:`.analyses` (``--definitions paper``). Inputs are (L, N) float64 seed means (or one
seed's scores) as :mod:`.seed_means` builds them. P1 hard-codes 12 layers, 3072 units and 5 seeds; here they
are read from the inputs, which gives P1's numbers on inputs of the paper's shape.

Rankings use P1's ``np.argsort(x)[::-1]``: numpy's default (unstable) sort, reversed. Among equal scores a
stable sort would put the highest index first; numpy's default sort leaves their order to its algorithm, as
it did for P1.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from scipy import stats

from skill_neurons.report.analyses import P1_N_GRID

P1_RATES = (0, 1, 3, 5, 7, 9, 11, 13, 15)  # get_perturbation_accuracy_runs: the suppression rates it reads
TASK_MATRIX = 11  # get_task_correlation_set / get_matrix_correlation_set: an 11 × 11 matrix, 55 pairs
# get_task_correlation_set: task-type curves as fixed positions in P1's dataset list (no NLI curve)
TYPE_PAIRS = {"ethical_judgment": [(0, 1)], "paraphrase_identification": [(2, 3)],
              "sentiment_analysis": [(7, 8), (7, 9), (8, 9)]}


def p1_score(accuracy: np.ndarray, class_count) -> np.ndarray:
    """(L, N) float64 score as P1 computes it, rebuilt from a neuron file's float32 per-position ``accuracy``
    (L, P, N) (or (C, L, P, N)) and ``class_count``: each accuracy is k/n with n the set's example count, so
    k = round(acc · n) is exact. P1 ``src/utils.py::valid`` (``compute_predictivity``): acc = k / n in float64,
    ``np.where(acc > 1 - acc, acc, 1 - acc)`` (``1 - k/n`` can differ from (n - k)/n in the last bit, which the
    float32 files cannot keep); ``src/find.py::get_max_mean``: max over positions. P1 has no multi-class case
    (``find.py::compute_accuracy`` compares 1[a > b] with the label itself); a (C, L, P, N) file gets the same
    per class (one-vs-rest), then the max over classes, as the project's score. Raises ValueError when the
    stored accuracies are not k/n (then the stored score is used)."""
    stored = np.asarray(accuracy, dtype=np.float32)
    n = int(np.sum(class_count))
    if n <= 0:
        raise ValueError("class_count sums to 0")
    acc = np.rint(stored.astype(np.float64) * n) / n
    if not np.array_equal(acc.astype(np.float32), stored):
        raise ValueError(f"the stored accuracies are not k/{n}")
    score = np.where(acc > 1 - acc, acc, 1 - acc).max(axis=-2)  # (L, N) or (C, L, N)
    return score.max(axis=0) if score.ndim == 3 else score


def p1_descending(values: np.ndarray) -> np.ndarray:
    """Indices of a 1-D array from highest to lowest as P1 sorts: ``np.argsort(values)[::-1]``
    (``find.py::max_skill_neurons_across_model``, ``skill_neurons_across_layer``)."""
    return np.argsort(np.asarray(values, dtype=np.float64))[::-1]


def p1_sem(values) -> float:
    """``get_sem``: sd (ddof 1) / sqrt(count); NaN for one value, as numpy gives."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def overlap(clean: np.ndarray, adversarial: np.ndarray, percent: float) -> np.ndarray:
    """``get_adv_overlap``: ``np.argsort(p, axis=1)[::-1]`` reverses the layers, not the units, so ``[:, :k]``
    keeps each layer's k LOWEST units (rows in reversed layer order); per row |clean ∩ adv| / k."""
    order_clean = np.argsort(clean, axis=1)[::-1]
    order_adv = np.argsort(adversarial, axis=1)[::-1]
    k = int(clean.shape[1] / 100 * percent)
    return np.array([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k if k else float("nan")
                     for a, b in zip(order_clean, order_adv)])


def overlap_curve(clean: np.ndarray, adversarial: np.ndarray) -> list[dict]:
    """``get_adv_overlap_per_topn`` (topn = 14): mean and ``get_sem`` over the rows, n = 2, 4, …, 14."""
    rows = []
    for n in P1_N_GRID:
        per_row = overlap(clean, adversarial, n)
        rows.append({"n": n, "k": int(clean.shape[1] / 100 * n), "mean": float(np.mean(per_row)),
                     "sem": p1_sem(per_row), "per_row": per_row.tolist()})
    return rows


def model_wide(score: np.ndarray) -> np.ndarray:
    """(L·N, 2) [layer, unit] pairs, best first (``find.py::max_skill_neurons_across_model``)."""
    layers, units = np.unravel_index(p1_descending(score.reshape(-1)), score.shape)
    return np.stack([layers, units], axis=1)


def histogram_values(clean: np.ndarray, adversarial: np.ndarray, percent: float) -> np.ndarray:
    """The values P1's histogram counts (``get_predictivities_adversarial_skill_neurons_nonadversarial``, then
    ``get_histplot_distribution(adversarial=True, mode="max_mean")``): the adversarial scores of the clean
    model-wide top k = int(L·N/100·n) units are stored in ``np.zeros((k, 2))``, so each appears twice; the
    2k values are sorted descending and cut again to their top int(2k/100·n)."""
    top = model_wide(clean)[:int(clean.size / 100 * percent)]
    doubled = np.zeros(top.shape)
    for i, (layer, unit) in enumerate(top):
        doubled[i] = adversarial[layer, unit]
    values = np.sort(doubled.flatten())[::-1]
    return values[:int(len(values) / 100 * percent)]


def bin_boundaries(values: np.ndarray) -> np.ndarray:
    """``get_bin_boundaries``: ``np.arange(floor(min/0.05)·0.05, ceil(max/0.05)·0.05 + 0.05, 0.05)``."""
    low = np.floor(np.min(values) / 0.05) * 0.05
    high = np.ceil(np.max(values) / 0.05) * 0.05
    return np.arange(low, high + 0.05, 0.05)


def combined_edges(values: list[np.ndarray]) -> np.ndarray:
    """``get_histplot_distribution``'s shared bins of the two backbones: ``np.arange(min, max, 0.05)`` over
    their own boundaries, which drops the last edge (and its bin's values)."""
    own = [bin_boundaries(v) for v in values]
    return np.arange(min(np.min(b) for b in own), max(np.max(b) for b in own), 0.05)


def histogram_counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """What ``ax.hist(values, bins=edges)`` draws ([a, b) bins, the last closed)."""
    return np.histogram(values, bins=edges)[0].astype(int).tolist()


def layer_location(score: np.ndarray, percent: float) -> np.ndarray:
    """``get_histplot_distribution(mode="max_mean_location")``: per layer, how many of the model-wide top
    k = int(L·N/100·n) units (P1's order) it holds."""
    top = model_wide(score)[:int(score.size / 100 * percent)]
    return np.bincount(top[:, 0], minlength=score.shape[0])


def top_in_index_order(score: np.ndarray, percent: float) -> np.ndarray:
    """(L, k) per layer the scores of the layer's top k = int(N/100·n) units in unit-index order
    (``correlation_matrix_across_seed`` / ``_across_layer`` with ``topn``, from ``find.py::skill_neurons_across_layer``)."""
    k = int(score.shape[1] / 100 * percent)
    chosen = [np.sort(p1_descending(row)[:k]) for row in score]
    return np.stack([row[idx] for row, idx in zip(score, chosen)])


def rho(a: np.ndarray, b: np.ndarray, p_value: bool = False) -> float:
    """``spearmanr(a, b)[0]`` (or ``[1]``); NaN for a constant vector, as scipy returns."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # scipy warns on a constant vector
        return float(stats.spearmanr(a, b)[1 if p_value else 0])


def spearman_matrix(scores: list[np.ndarray], percent: float | None = 100.0) -> np.ndarray:
    """(S, S) ``np.mean`` over layers of the per-layer matrices (a NaN layer makes the cell NaN). ``percent``
    None: every unit, and the p-value instead of ρ (``correlation_matrix_across_seed(topn=None)``)."""
    vectors = [np.asarray(s, dtype=np.float64) if percent is None else top_in_index_order(s, percent)
               for s in scores]
    count, layers = len(vectors), vectors[0].shape[0]
    per_layer = np.zeros((layers, count, count))
    for k in range(layers):
        for i in range(count):
            for j in range(i, count):  # ρ and p are symmetric: P1 computes both halves, with the same result
                per_layer[k, i, j] = per_layer[k, j, i] = rho(vectors[i][k], vectors[j][k], percent is None)
    return np.mean(per_layer, axis=0)


def upper_pairs(matrix: np.ndarray, size: int | None = None) -> list[float] | None:
    """``get_correlation_set`` (size 5: 10 seed pairs) and ``get_task_correlation_set("average")`` (size 11:
    55 task pairs): the upper triangle of the leading ``size`` × ``size`` block; None when the matrix is
    smaller (P1 raises IndexError). ``size`` None: the whole matrix."""
    size = matrix.shape[0] if size is None else size
    if matrix.shape[0] < size:
        return None
    return [float(matrix[j, k]) for j in range(size - 1) for k in range(j + 1, size)]


def type_pairs(matrix: np.ndarray, tasks: list[str]) -> dict[str, dict]:
    """``get_task_correlation_set`` per task type: fixed positions of P1's 11-dataset list (a single pair:
    no s.e.m.); empty when the matrix is smaller than 11 × 11."""
    if matrix.shape[0] < TASK_MATRIX:
        return {}
    out = {}
    for kind, pairs in TYPE_PAIRS.items():
        values = [float(matrix[i, j]) for i, j in pairs]
        out[kind] = {"pairs": [[tasks[i], tasks[j]] for i, j in pairs], "mean": float(np.mean(values)),
                     "sem": p1_sem(values) if len(values) > 1 else 0.0}
    return out


def suppressed_units(score: np.ndarray, rate: float) -> np.ndarray:
    """(L, k) units ``utils.py::init_mask`` suppresses per layer (``layer_model_mode="layer"``): the first
    k = int(N/100·rate) of ``find.py::skill_neurons_across_layer``'s order."""
    k = int(score.shape[1] / 100 * rate)
    return np.stack([p1_descending(row)[:k] for row in score])


def units_digest(units: np.ndarray) -> str:
    """sha1 of the sorted (layer, unit) pairs: compares unit sets without listing thousands of them."""
    pairs = sorted((layer, int(u)) for layer, row in enumerate(units) for u in row)
    return hashlib.sha1(repr(pairs).encode()).hexdigest()


def absolute_transfer(accuracies: list[float]) -> int:
    """``get_transferability_matrix_new(relative=False)``: ``int(mean accuracy (fraction) · 100)``, truncated."""
    return int(np.mean(np.array(accuracies)) * 100)
