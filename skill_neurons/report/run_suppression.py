"""Suppression runs as a table and figures: accuracy of the clean and adversarial sets against the rate."""

from __future__ import annotations

from collections import defaultdict

from records import figures as style
from records.eval_set import EvalSet
from skill_neurons.report.base import (
    WIDE, Context, Figure, Run, Section, family_rank, fit_accuracies, fmt, markdown_table, mean_sem, pct, slug,
    validate_accuracies,
)
from skill_neurons.report.suppression import neuron_source


def suppression_section(ctx: Context) -> Section:
    """Accuracy vs suppression rate, skill vs random units, clean and adversarial, mean ± s.e.m. over seeds."""
    section = Section("suppression")
    runs = ctx.of_kind("suppression")
    if not runs:
        return section.leave_out(
            f"No suppression runs among the {len(ctx.runs)} runs read (runs with a `suppression` section come "
            "from `skill-neurons validate ... --suppression.*`).")
    section.lines += [("Accuracy in % vs the share of units suppressed per layer, the prompt's skill neurons vs "
                      "the same number of random units; mean ± s.e.m. (sample sd / √n) over seeds (prompt seeds "
                      "and, for random units, their seeds). Rate 0 is the unperturbed prompt."), ""]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        info = run.summary["suppression"]
        std = info.get("std") if info.get("perturbation") == "gaussian" else None
        groups[(run.family, run.backbone, run.task, info.get("perturbation", "zero"), std,
                info.get("part", "encoder"), info.get("adversarial_neurons", "clean"), neuron_source(info))].append(run)
    order = ctx.task_order({k[2] for k in groups})
    rows = []
    for key in sorted(groups, key=lambda k: (family_rank(k[0]), k[1], order.index(k[2]), str(k[3:]))):
        family, backbone, task, perturbation, std, part, adversarial_neurons, source = key
        members = groups[key]
        chance = next((r.chance for r in members if r.chance is not None), None)
        points: dict[tuple[str, float, str], list[tuple[Run, float]]] = defaultdict(list)
        for run in members:
            info = run.summary["suppression"]
            for name, value in validate_accuracies(run).items():
                points[(str(info.get("selection")), float(info.get("rate", 0.0)), name)].append((run, pct(value)))
        sets = ["validation", *sorted({k[2] for k in points} - {"validation"})]
        group_rows = []
        for selection, rate, name in sorted(points, key=lambda k: (k[0] != "skill", k[0], k[1], sets.index(k[2]))):
            numbers = [v for _, v in points[(selection, rate, name)]]
            mean, sem = mean_sem(numbers)
            group_rows.append({"backbone": backbone, "family": family, "task": task, "perturbation": perturbation,
                               "std": std, "part": part, "adversarial_neurons": adversarial_neurons,
                               "neuron_source": source,
                               "selection": selection, "rate": rate, "set": name,
                               "kind": "clean" if name == "validation" else "adversarial", "n": len(numbers),
                               "seeds": [r.seed for r, _ in points[(selection, rate, name)]],
                               "runs": [r.run_id for r, _ in points[(selection, rate, name)]],
                               "values": numbers, "mean": mean, "sem": sem, "chance": chance})
        rows += group_rows
        what = f"{perturbation}" + (f" (std {std:g})" if std is not None else "")
        title = (f"{backbone} · {task} · {what} · {part} units · neurons: {source} · adversarial sets suppress the "
                 f"{adversarial_neurons} skill neurons")
        section.lines += [f"### {title}", ""]
        table: dict[tuple[str, float], dict[str, dict]] = defaultdict(dict)
        for row in group_rows:
            table[(row["selection"], row["rate"])][row["set"]] = row
        section.lines += markdown_table(
            ["selection", "rate (% per layer)", "seeds", *[f"{s} (clean)" if s == "validation" else s for s in sets]],
            [[selection, f"{rate:g}", max(r["n"] for r in cells.values()),
              *(fmt(cells[s]["mean"], cells[s]["sem"]) if s in cells else "—" for s in sets)]
             for (selection, rate), cells in table.items()])
        figure = suppression_figure(ctx, key, title, sets, group_rows, chance)
        section.figures.append(figure)
        section.lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]
    section.lines += rate_zero_check(ctx, runs)
    section.tables["suppression"] = [{k: v for k, v in r.items() if k != "values"} for r in rows]
    section.data.update(rows=rows, units="accuracy in %, sem = sample sd / sqrt(n)")
    return section


def rate_zero_check(ctx: Context, runs: list[Run]) -> list[str]:
    """Rate 0 must reproduce the unperturbed accuracy: compare rate-0 runs with the clean
    ``val/acc`` of their source fit run's best epoch, where that run was read."""
    fits = {r.run_id: r for r in ctx.of_kind("fit")}
    differences = []
    for run in runs:
        source = fits.get(str((run.summary.get("prompt_source") or {}).get("run_id")))
        accuracy = validate_accuracies(run).get("validation")
        if float(run.summary["suppression"].get("rate", -1)) == 0 and source and accuracy is not None:
            reference = fit_accuracies(source).get("validation")
            if reference is not None:
                differences.append(abs(pct(accuracy) - pct(reference)))
    if not differences:
        return []
    return [(f"Rate 0 vs the source fit run's best `val/acc`: largest difference {max(differences):.3g} points over "
            f"{len(differences)} runs (0 expected: rate 0 is the unperturbed prompt)."), ""]


def suppression_figure(ctx: Context, key: tuple, title: str, sets: list[str], rows: list[dict],
                       chance: float | None) -> Figure:
    """One panel per evaluation set: accuracy vs rate, skill (solid) vs random (dashed), ± s.e.m. bands."""
    import numpy as np

    _, backbone, task, perturbation, std, part, adversarial_neurons, source = key
    name = slug("suppression", backbone, task, perturbation, *([std] if std is not None else []), part,
                adversarial_neurons, source)
    fig, axes, figure = ctx.figure(name, f"Suppression: {title}", WIDE, ncols=len(sets))
    lowest = []  # over every panel: the panels share one accuracy axis
    for ax, set_ in zip(axes[0], sets):
        for k, selection in enumerate(sorted({r["selection"] for r in rows}, key=lambda s: (s != "skill", s))):
            points = sorted((r["rate"], r["mean"], r["sem"] or 0.0) for r in rows
                            if r["set"] == set_ and r["selection"] == selection)
            if not points:
                continue
            rate, mean, sem = (np.array(v, dtype=float) for v in zip(*points))
            colour, line, marker = style.SELECTION.get(selection, style.series(k + 2))
            ax.plot(rate, mean, line, color=colour, marker=marker, label=f"{selection} units")
            ax.fill_between(rate, np.clip(mean - sem, 0, 100), np.clip(mean + sem, 0, 100), color=colour, alpha=0.2)
            lowest.append(float((mean - sem).min()))
        ax.set_title(EvalSet(set_).display, fontsize="medium")
        ax.set_xlabel("units suppressed per layer (%)")
        ax.set_ylabel("accuracy (%)")
    for ax in axes[0]:
        style.accuracy_axis(ax, chance, min(lowest) if lowest else None)
        ax.legend(fontsize="small")
    fig.suptitle(f"Skill vs random units suppressed: {backbone} · {task} · {perturbation}", fontsize="medium")
    return ctx.save(fig, figure, "suppression", rows)


# --- skill neurons


