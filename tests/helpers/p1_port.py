"""An independent numpy port of P1's analysis functions (``LeonAckermann/Robust-Neurons``, ``src/analysis.py``,
``src/find.py``, ``src/utils.py::init_mask``), written from P1's code in its own loop style, with P1's file
loads replaced by arguments and its hard-coded 12 layers / 3072 units / 5 seeds by the inputs' shape. Nothing
here uses the project's code: the tests compare ``skill-neurons report --definitions p1-code`` against it."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def sem(data):  # get_sem
    return np.std(data, ddof=1) / np.sqrt(len(data))


def across_model(pred):  # find.py::max_skill_neurons_across_model
    flat = pred.flatten()
    order = np.argsort(flat)[::-1]
    layer, neuron = np.unravel_index(order, pred.shape)
    return np.array([[a, b] for a, b in zip(layer, neuron)])


def across_layer(pred):  # find.py::skill_neurons_across_layer
    layers, units = pred.shape
    neuron_indices = np.array([np.argsort(pred[i])[::-1] for i in range(layers)])
    layer_indices = np.array([np.zeros(units) + i for i in range(layers)])
    return np.array([[[int(a), int(b)] for a, b in zip(layer_indices[i], neuron_indices[i])] for i in range(layers)])


def adv_overlap(clean, adv, topn):  # get_adv_overlap
    p = np.argsort(clean, axis=1)[::-1]
    q = np.argsort(adv, axis=1)[::-1]
    percent = int(p.shape[1] / 100 * topn)
    p, q = p[:, :percent], q[:, :percent]
    overlap = np.zeros((clean.shape[0]))
    for i in range(clean.shape[0]):
        overlap[i] = len(set(p[i].tolist()).intersection(set(q[i]))) / q.shape[1]
    return overlap


def adv_overlap_per_topn(clean, adv, topn=14):  # get_adv_overlap_per_topn
    out = []
    for i in range(2, topn + 1, 2):
        overlap = adv_overlap(clean, adv, i)
        out.append([np.mean(overlap), sem(overlap)])
    return out


def adversarial_of_clean(clean, adv, topn):  # get_predictivities_adversarial_skill_neurons_nonadversarial
    skill = across_model(clean)
    percent = int(skill.shape[0] / 100 * topn)
    skill = skill[:percent]
    out = np.zeros(skill.shape)
    for i, neuron in enumerate(skill):
        layer_idx, neuron_idx = neuron
        out[i] = adv[layer_idx, neuron_idx]
    return out


def bin_boundaries(data):  # get_bin_boundaries
    maximum, minimum = np.max(data), np.min(data)
    minimum = np.floor(minimum / 0.05) * 0.05
    maximum = np.ceil(maximum / 0.05) * 0.05
    return np.arange(minimum, maximum + 0.05, 0.05)


def histogram(pairs, topn):
    """get_histplot_distribution(adversarial=True, mode="max_mean", location=False) over the backbones'
    (clean, adv) seed means: (values per backbone, shared edges, counts per backbone as ax.hist draws them)."""
    sorted_list = []
    for clean, adv in pairs:
        values = np.sort(adversarial_of_clean(clean, adv, topn).flatten())[::-1]
        percent = int(len(values) / 100 * topn)
        sorted_list.append(values[:percent])
    bins = [bin_boundaries(s) for s in sorted_list]
    maximum = np.max([np.max(b) for b in bins])
    minimum = np.min([np.min(b) for b in bins])
    edges = np.arange(minimum, maximum, 0.05)
    return sorted_list, edges, [np.histogram(s, bins=edges)[0] for s in sorted_list]


def location(clean, topn):  # get_histplot_distribution(mode="max_mean_location")
    skill = across_model(clean)
    percent = int(len(clean.flatten()) / 100 * topn)
    skill = skill[:percent]
    counts = np.zeros((clean.shape[0]))
    for i in range(clean.shape[0]):
        for neuron in skill:
            if neuron[0] == i:
                counts[i] += 1
    return counts


def top_index_order(preds, topn):
    """The ``topn`` branch of correlation_matrix_across_seed / correlation_matrix_across_layer."""
    layers, units = preds[0].shape
    percent = int(units / 100 * topn)
    skill = np.array([across_layer(p)[:, :percent] for p in preds])
    top = np.zeros((len(preds), layers, percent))
    for i in range(len(preds)):
        for j in range(layers):
            l = 0  # noqa: E741 (P1's name)
            temp = [skill[i, j, m, 1] for m in range(percent)]
            for k in range(units):
                if k in temp:
                    top[i, j, l] = preds[i][j][k]
                    l += 1  # noqa: E741
    return top


def correlation_matrix(preds, topn=None):
    """correlation_matrix_across_seed (topn None: p-values of all units) / _across_layer (topn given)."""
    n, layers = len(preds), preds[0].shape[0]
    vectors = preds if topn is None else top_index_order(preds, topn)
    matrix = np.zeros((layers, n, n))
    for k in range(layers):
        for i in range(n):
            for j in range(n):
                matrix[k][i][j] = spearmanr(vectors[i][k], vectors[j][k])[1 if topn is None else 0]
    return np.mean(matrix, axis=0)


def correlation_set(matrix):  # get_correlation_set (5 seeds: 10 pairs; P1 forgets the return)
    values, i = np.zeros((10)), 0
    for j in range(4):
        for k in range(j + 1, 5):
            values[i] = matrix[j, k]
            i += 1
    return values


def task_average(matrix):  # get_task_correlation_set("average"): 55 pairs of an 11 x 11 matrix
    values, i = np.zeros((55)), 0
    for j in range(10):
        for k in range(j + 1, 11):
            values[i] = matrix[j, k]
            i += 1
    return values


def suppressed(score, topn):  # utils.py::init_mask, layer_model_mode "layer"
    skill = across_layer(score)
    percent = int(skill.shape[1] / 100 * topn)
    return skill[:, :percent].reshape(-1, 2)


def transfer_absolute(accuracies):  # get_transferability_matrix_new(relative=False)
    return int(np.mean(np.array(accuracies)) * 100)
