"""One look for every figure the project writes — the run's ``per_layer_predictivity.png`` and the report's
figures: the same colour for clean and for adversarial data everywhere, visible medians, labelled chance lines.
Plain matplotlib on an ``Axes`` (no Lightning, no transformers), so the report can use it too.

Colours are the Okabe–Ito palette (Okabe & Ito 2008), distinguishable with every common colour-vision
deficiency: clean data is blue, the first adversarial set vermillion, further adversarial sets orange, reddish
purple and green. Backbone families (figures that compare RoBERTa with T5) get bluish green and reddish purple;
suppression lines are vermillion solid with circles (skill neurons) and blue dashed with squares (random units).
Every line of a figure differs from the others in colour *and* in marker or line style (:func:`series`), so a
figure reads in greyscale too. Accuracy axes (:func:`accuracy_axis`) start at 0, or at chance with the chance
line drawn, and end at 100: a gap of a point looks like one.
"""

from __future__ import annotations

from pathlib import Path

from records.files import atomic_write

BLUE, VERMILLION, ORANGE, PURPLE = "#0072B2", "#D55E00", "#E69F00", "#CC79A7"
GREEN, SKY, GREY, BLACK = "#009E73", "#56B4E9", "#7F7F7F", "#000000"
CLEAN = BLUE
ADVERSARIAL = (VERMILLION, ORANGE, PURPLE, GREEN)
FAMILY = {"masked_lm": GREEN, "seq2seq": PURPLE}
BACKBONES = (GREEN, PURPLE, SKY, ORANGE, BLUE, VERMILLION)  # per backbone, in order of appearance
SELECTION = {"skill": (VERMILLION, "-", "o"), "random": (BLUE, "--", "s")}  # suppression: colour, line, marker
SERIES = (BLUE, VERMILLION, GREEN, ORANGE, PURPLE, SKY, BLACK)  # lines of one figure, in order
MARKERS = ("o", "s", "D", "^", "v", "P", "X")  # with SERIES: colour and marker both differ up to 7 lines
LINES = ("-", "--", "-.", ":")
MEDIAN = {"color": BLACK, "linewidth": 1.8}  # black on every box colour above
CHANCE = {"color": BLACK, "linewidth": 1.0, "linestyle": ":"}
LEGEND_FONT = "medium"

# The run figure (per_layer_predictivity.png): RUN_HEIGHT pixels high, at least RUN_MIN_WIDTH wide and
# RUN_WIDTH_PER_BOX per box (layers x sets) beyond that, at RUN_DPI.
RUN_DPI, RUN_HEIGHT, RUN_MIN_WIDTH, RUN_WIDTH_PER_BOX = 100, 400, 600, 60


def run_figure_size(layers: int, sets: int) -> tuple[int, int]:
    """(width, height) in pixels of ``per_layer_predictivity.png``."""
    return max(RUN_MIN_WIDTH, RUN_WIDTH_PER_BOX * layers * sets), RUN_HEIGHT


def set_colour(index: int, clean: bool) -> str:
    """Colour of an evaluation set: clean blue; the adversarial sets in order (``index`` counts them from 0)."""
    return CLEAN if clean else ADVERSARIAL[index % len(ADVERSARIAL)]


def set_colours(names: list[str], clean_name: str) -> list[str]:
    """Colours of ``names`` (evaluation sets), the clean one blue, the others the adversarial colours in order."""
    adversarial = [n for n in names if n != clean_name]
    return [CLEAN if n == clean_name else set_colour(adversarial.index(n), False) for n in names]


def series(index: int) -> tuple[str, str, str]:
    """(colour, marker, line style) of a figure's ``index``-th line: colours and markers both change from one
    line to the next (over 7 lines the colours repeat, with another line style)."""
    return SERIES[index % len(SERIES)], MARKERS[index % len(MARKERS)], LINES[(index // len(SERIES)) % len(LINES)]


def accuracy_axis(ax, chance: float | None, lowest: float | None = None) -> None:
    """An accuracy axis in %: from chance (its line drawn) when no value (``lowest``: the lowest end of any
    error bar) falls below it, else from 0 (the chance line drawn all the same), to 100 — never a zoom."""
    low = chance if chance is not None and lowest is not None and lowest >= chance else 0.0
    ax.set_ylim(low - 2 if low else 0, 102)
    if chance is not None:
        ax.axhline(chance, **CHANCE, label=f"chance ({chance:g}%)")


def centred_limits(groups: int, at_least: int) -> tuple[float, float]:
    """x-limits for ``groups`` groups of bars at 0, 1, ...: room for ``at_least`` groups, the groups in the middle
    (a single group is not stretched over the whole width, nor pushed to the left)."""
    pad = max(0.0, (at_least - groups) / 2)
    return -0.6 - pad, groups - 0.4 + pad


def chance_line(ax, y: float, label: str = "chance", colour: str = BLACK, margin: float = 0.04) -> None:
    """A dotted horizontal line at ``y``, labelled in the legend, with the y-axis extended by ``margin`` (a
    fraction of the axis span) below and above it, so the line never sits on the axis edge."""
    ax.axhline(y, **{**CHANCE, "color": colour}, label=label)
    low, high = ax.get_ylim()
    pad = margin * (high - low)
    ax.set_ylim(min(low, y - pad), max(high, y + pad))


def per_layer_boxplot(ax, scores: dict, colours: list, part: str, ylabel: str,
                      baselines: dict[str, float] | None = None) -> None:
    """Box plots of (L, N) scores per layer, one box per named set side by side, black medians; a dotted line in
    the set's colour at its majority-class share (the predictivity of a unit that never changes; 0.5 where it is
    not given), labelled "chance" in the legend and off the axis edge."""
    layers = next(iter(scores.values())).shape[0]
    width = 0.8 / max(1, len(scores))
    for k, ((name, score), colour) in enumerate(zip(scores.items(), colours)):
        centres = [layer + (k - (len(scores) - 1) / 2) * width for layer in range(layers)]
        parts = ax.boxplot(list(score.float().numpy()), positions=centres, widths=width * 0.9, patch_artist=True,
                           showfliers=False, manage_ticks=False, medianprops=MEDIAN)
        for box in parts["boxes"]:
            box.set_facecolor(colour)
        ax.plot([], [], color=colour, linewidth=8, label=name)
    lines = {}
    for (name, _), colour in zip(scores.items(), colours):
        lines.setdefault(round((baselines or {}).get(name, 0.5), 4), []).append((name, colour))
    for y, sets in lines.items():
        names = ", ".join(name for name, _ in sets)
        chance_line(ax, y, f"chance ({names}: {y:.2f})" if len(lines) > 1 else f"chance ({y:.2f})",
                    sets[0][1] if len(lines) > 1 else BLACK)
    ax.set_xticks(range(layers))
    ax.set_xlabel(f"{part} layer")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=LEGEND_FONT, frameon=False)


def save_figure(fig, path: str | Path, dpi: int) -> None:
    """Write ``fig`` to ``path`` (format from its suffix) through a temp file in the same folder: a full disk or
    a kill leaves the previous figure, never a truncated one. A pyplot figure is closed afterwards."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi),
                     binary=True)
    finally:
        if fig.canvas.manager is not None:  # made by pyplot (which holds on to it): release it
            import matplotlib.pyplot as plt

            plt.close(fig)

