"""Figures of neuron scores that the run (``per_layer_predictivity.png``) and the report draw alike (no Lightning)."""

from __future__ import annotations

import torch


def per_layer_boxplot(ax, scores: dict[str, torch.Tensor], colours: list, part: str, ylabel: str,
                      baselines: dict[str, float] | None = None) -> None:
    """Box plots of (L, N) scores per layer, one box per named set side by side; dotted in the set's colour:
    its majority-class share (the predictivity of a unit that never changes), 0.5 where it is not given."""
    layers = next(iter(scores.values())).shape[0]
    width = 0.8 / max(1, len(scores))
    for k, ((name, score), colour) in enumerate(zip(scores.items(), colours)):
        centres = [layer + (k - (len(scores) - 1) / 2) * width for layer in range(layers)]
        parts = ax.boxplot(list(score.float().numpy()), positions=centres, widths=width * 0.9, patch_artist=True,
                           showfliers=False, manage_ticks=False)
        for box in parts["boxes"]:
            box.set_facecolor(colour)
        ax.plot([], [], color=colour, linewidth=8, label=name)
    for (name, _), colour in zip(scores.items(), colours):
        ax.axhline((baselines or {}).get(name, 0.5), color=colour, linewidth=1.0, linestyle=":")
    ax.set_xticks(range(layers))
    ax.set_xlabel(f"{part} layer")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize="small")
