"""The per-run outputs of ``SkillNeuronCallback`` that are not statistics: the top-neuron table, the per-layer
figure and the description of the analysed positions (the callback writes them; README, "Skill neurons")."""

from __future__ import annotations

from pathlib import Path

import torch

from records.eval_set import EvalSet
from records.figures import RUN_DPI, per_layer_boxplot, run_figure_size, save_figure, set_colours
from records.neuron_selection import top_neurons


def position_span(positions: list[int]) -> str:
    """``[0, 1, 2, 3]`` -> ``0..3``; ``[0, 1, 2, 9]`` -> ``0..2, 9``."""
    parts, start = [], None
    for k, value in enumerate(positions):
        if start is None:
            start = value
        if k + 1 == len(positions) or positions[k + 1] != value + 1:
            parts.append(f"{start}..{value}" if value != start else f"{value}")
            start = None
    return ", ".join(parts)


def top_rows(results: dict[str, dict[str, torch.Tensor]], sets: list[EvalSet],
             table_rows: int) -> tuple[list[str], list[list]]:
    """The top-neuron table (``top_neurons.csv``, W&B): the clean set's best ``table_rows`` units with their score
    on every set."""
    clean = results[sets[0].split]
    columns = ["rank", "layer", "unit", "best_position", *(f"{s.name}_predictivity" for s in sets)]
    rows = []
    for rank, (layer, unit, position, value) in enumerate(
            top_neurons(clean["score"], clean["predictivity"], table_rows), start=1):
        rows.append([rank, layer, unit, position, round(value, 6),
                     *(round(float(results[s.split]["score"][layer, unit]), 6) for s in sets[1:])])
    return columns, rows


def per_layer_figure(results: dict[str, dict[str, torch.Tensor]], metrics: dict[str, float], sets: list[EvalSet],
                     path: Path, common: dict) -> None:
    """``per_layer_predictivity.png``: the scores of every set per layer, with each set's majority baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = run_figure_size(common["shape"]["layers"], len(sets))
    fig, ax = plt.subplots(figsize=(width / RUN_DPI, height / RUN_DPI), dpi=RUN_DPI)
    scores = {s.name: results[s.split]["score"] for s in sets}
    baselines = {s.name: metrics[s.neuron_metric("majority_baseline")] for s in sets}
    per_layer_boxplot(ax, scores, set_colours(list(scores), sets[0].name), common["part"],
                      "neuron score (max predictivity over positions)", baselines)
    ax.set_title(f"{common['backbone']} · {common['task']}: predictivity per layer")
    fig.tight_layout()
    save_figure(fig, path, RUN_DPI)
