"""Causal tests: intervention runs (``--intervention.*``) as tables and figures — the share of the
clean-vs-adversarial gap that patching the skill neurons restores against n, skill vs random units, and accuracy
under scaling by α."""

from __future__ import annotations

from collections import defaultdict

from records import figures as style
from records.eval_set import EvalSet
from skill_neurons.report.base import (
    WIDE, Context, Figure, Run, Section, family_rank, fmt, markdown_table, mean_sem, pct, slug,
)
from skill_neurons.report.suppression import neuron_source


def _key(run: Run) -> tuple:
    info = run.summary["intervention"]
    return (run.family, run.backbone, run.task, info.get("kind"), info.get("baseline"), info.get("part", "encoder"),
            info.get("adversarial_neurons", "clean"), neuron_source(info))


def _x(info: dict) -> float:
    """The varied setting of a group: the rate (patch) or α (scale)."""
    return float(info.get("rate", 0.0)) if info.get("kind") == "patch" else float(info.get("alpha") or 0.0)


def intervention_section(ctx: Context) -> Section:
    """Per backbone, task and intervention: mean ± s.e.m. over seeds of each set's accuracies and gap restored."""
    section = Section("intervention")
    runs = ctx.of_kind("intervention")
    if not runs:
        return section.leave_out(
            f"No intervention runs among the {len(ctx.runs)} runs read (runs with an `intervention` section come "
            "from `skill-neurons validate ... --intervention.*`).")
    section.lines += [
        ("Patching: each adversarial example is run with the selected units at the analysed positions set to their "
         "values on its clean twin. gap restored = (acc_patched − acc_adv) / (acc_clean − acc_adv), in %, over the "
         "paired examples (acc_clean: the twins, acc_adv: the adversarial texts unpatched). Scaling: "
         "a' = b + α (a − b) for the selected units at every position (b = 0, or the unit's threshold with "
         "baseline mean); accuracy in %. Mean ± s.e.m. (sample sd / √n) over seeds."), ""]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[_key(run)].append(run)
    order = ctx.task_order({k[2] for k in groups})
    rows = []
    for key in sorted(groups, key=lambda k: (family_rank(k[0]), k[1], order.index(k[2]), str(k[3:]))):
        family, backbone, task, kind, baseline, part, adversarial_neurons, source = key
        points: dict[tuple[str, float, str, str], list[tuple[Run, float]]] = defaultdict(list)
        for run in groups[key]:
            info = run.summary["intervention"]
            for name, values in (info.get("sets") or {}).items():
                for measure, value in values.items():
                    if measure != "rows" and value is not None:
                        points[(str(info.get("selection")), _x(info), name, measure)].append((run, pct(value)))
        group_rows = []
        for (selection, x, name, measure), found in sorted(points.items(), key=lambda kv: (kv[0][0] != "skill", kv[0])):
            numbers = [v for _, v in found]
            mean, sem = mean_sem(numbers)
            group_rows.append({"backbone": backbone, "family": family, "task": task, "kind": kind, "baseline": baseline,
                               "part": part, "adversarial_neurons": adversarial_neurons, "neuron_source": source,
                               "selection": selection, "rate" if kind == "patch" else "alpha": x, "set": name,
                               "measure": measure, "n": len(numbers), "seeds": [r.seed for r, _ in found],
                               "runs": [r.run_id for r, _ in found], "mean": mean, "sem": sem})
        rows += group_rows
        what = "patching" if kind == "patch" else f"scaling (baseline {baseline})"
        title = (f"{backbone} · {task} · {what} · {part} units · neurons: {source} · {adversarial_neurons} skill "
                 "neurons")
        section.lines += [f"### {title}", ""]
        measures = (["gap_restored", "acc", "acc_unperturbed", "acc_clean"] if kind == "patch"
                    else ["acc", "acc_unperturbed"])
        sets = sorted({r["set"] for r in group_rows}, key=lambda s: (s != "validation", s))
        xname = "rate" if kind == "patch" else "alpha"
        table = defaultdict(dict)
        for row in group_rows:
            table[(row["selection"], row[xname], row["set"])][row["measure"]] = row
        section.lines += markdown_table(
            ["selection", "rate (% per layer)" if kind == "patch" else "α", "set", "seeds", *measures],
            [[selection, f"{x:g}", name, max(c["n"] for c in cells.values()),
              *(fmt(cells[m]["mean"], cells[m]["sem"]) if m in cells else "—" for m in measures)]
             for (selection, x, name), cells in table.items()])
        measure = "gap_restored" if kind == "patch" else "acc"
        shown = [s for s in sets if any(r["set"] == s and r["measure"] == measure for r in group_rows)]
        if shown:
            figure = intervention_figure(ctx, key, title, shown, [r for r in group_rows if r["measure"] == measure])
            section.figures.append(figure)
            section.lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]
    section.tables["intervention"] = rows
    section.data.update(rows=rows, units="percent; sem = sample sd / sqrt(n)")
    return section


def intervention_figure(ctx: Context, key: tuple, title: str, sets: list[str], rows: list[dict]) -> Figure:
    """One panel per set: gap restored vs rate (patch) or accuracy vs α (scale), skill (solid) vs random (dashed)."""
    import numpy as np

    _, backbone, task, kind, baseline, part, adversarial_neurons, source = key
    name = slug("intervention", backbone, task, kind, *([baseline] if baseline else []), part, adversarial_neurons,
                source)
    fig, axes, figure = ctx.figure(name, f"Causal tests: {title}", WIDE, ncols=len(sets))
    xname = "rate" if kind == "patch" else "alpha"
    for ax, set_ in zip(axes[0], sets):
        for k, selection in enumerate(sorted({r["selection"] for r in rows}, key=lambda s: (s != "skill", s))):
            points = sorted((r[xname], r["mean"], r["sem"] or 0.0) for r in rows
                            if r["set"] == set_ and r["selection"] == selection)
            if not points:
                continue
            x, mean, sem = (np.array(v, dtype=float) for v in zip(*points))
            colour, line, marker = style.SELECTION.get(selection, style.series(k + 2))
            ax.plot(x, mean, line, color=colour, marker=marker, label=f"{selection} units")
            ax.fill_between(x, mean - sem, mean + sem, color=colour, alpha=0.2)
        ax.set_title(EvalSet(set_).display, fontsize="medium")
        ax.set_xlabel("units patched per layer (%)" if kind == "patch" else "α (scale factor)")
        ax.set_ylabel("gap restored (%)" if kind == "patch" else "accuracy (%)")
        if kind == "patch":
            ax.axhline(0, color="grey", linestyle=":", linewidth=1, label="nothing restored")
            ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="whole gap restored")
        ax.legend(fontsize="small")
    fig.suptitle(f"Skill vs random units, {'patched' if kind == 'patch' else 'scaled'}: {backbone} · {task}",
                 fontsize="medium")
    return ctx.save(fig, figure, "intervention", rows)
