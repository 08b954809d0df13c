"""Suppression curves as P1 draws them (``src/analysis.py::get_lineplots_perturbation``,
``get_perturbation_accuracy_runs``): per task, accuracy vs the share of units suppressed per layer, skill
neurons (solid) vs random units (dashed), RoBERTa and T5 on one plot, the clean set and each adversarial set
side by side; mean ± s.e.m. over the prompts (seeds)."""

from __future__ import annotations

from collections import defaultdict

from records import figures as style
from records.eval_set import EvalSet
from skill_neurons.report.analyses import mean_sem
from skill_neurons.report.base import Context, Section, fmt, markdown_table, pct, slug, validate_accuracies
from skill_neurons.report.paper import embed, panels


def neuron_source(record: dict) -> str:
    """``seed_mean`` (P1: the task's seed-mean skill neurons), ``own`` (the prompt's own run) or ``given``."""
    return str(record.get("neuron_source") or "own")


def paper_suppression_section(ctx: Context) -> Section:
    section = Section("paper_suppression")
    runs = ctx.of_kind("suppression")
    if not runs:
        return section.leave_out("No suppression runs (`skill-neurons sweep sweeps/suppression.yaml`).")
    section.lines += [
        "**Formula** (P1 `get_perturbation_accuracy_runs`, `get_lineplots_perturbation`, `src/utils.py::init_mask`): "
        "at rate r the top r% units of every layer by the task's seed-mean clean score (`neuron_source: "
        "seed_mean`, P1's `*_mean.npy`) are set to 0 at every position; the control zeroes as many random units "
        "per layer. On adversarial sets `adversarial_neurons: clean` suppresses the clean skill neurons (P1 "
        "`--adv_nonAdv`), `own` the adversarial set's own. Accuracy in %, mean ± s.e.m. (sd ddof 1 / √n) over the "
        "prompts (seeds). Units per layer: `units_per_layer` of each run.", ""]
    # one random draw per curve: the lowest suppression.seed of a task and backbone (a second seed is P1's
    # separate adversarial control, read by --definitions p1-code); runs with another eval_set (whose neurons)
    # form their own group
    first_draw = {}
    for run in runs:
        if run.summary["suppression"].get("selection") == "random":
            key = (run.backbone, run.task)
            first_draw[key] = min(first_draw.get(key, 2**63), int(run.summary["suppression"].get("seed") or 0))
    groups: dict[tuple, list] = defaultdict(list)
    for run in runs:
        info = run.summary["suppression"]
        if info.get("selection") == "random" and int(info.get("seed") or 0) != first_draw[(run.backbone, run.task)]:
            continue
        groups[(run.task, info.get("perturbation", "zero"), info.get("part", "encoder"),
                info.get("adversarial_neurons", "clean"), neuron_source(info), info.get("eval_set") or "validation")
               ].append(run)
    order = ctx.task_order({k[0] for k in groups})
    rows = []
    for key in sorted(groups, key=lambda k: (order.index(k[0]), str(k[1:]))):
        task, perturbation, part, adversarial_neurons, source, neurons_of = key
        points: dict[tuple, list] = defaultdict(list)
        for run in groups[key]:
            info = run.summary["suppression"]
            for name, value in validate_accuracies(run).items():
                points[(run.backbone, run.family, str(info.get("selection")), float(info.get("rate", 0.0)),
                        name)].append((run, pct(value)))
        group_rows = []
        for (backbone, family, selection, rate, name), values in sorted(points.items()):
            mean, sem = mean_sem([v for _, v in values])
            group_rows.append({"task": task, "task_type": ctx.task_types().get(task), "perturbation": perturbation,
                               "part": part, "adversarial_neurons": adversarial_neurons, "neuron_source": source,
                               "eval_set": neurons_of,
                               "backbone": backbone, "family": family, "selection": selection, "rate": rate,
                               "set": name, "n": len(values), "seeds": [r.seed for r, _ in values],
                               "runs": [r.run_id for r, _ in values], "mean": mean, "sem": sem})
        rows += group_rows
        sets = ["validation", *sorted({r["set"] for r in group_rows} - {"validation"})]
        title = (f"{task} · {perturbation} · {part} units · neurons: {source}, adversarial sets: "
                 f"{adversarial_neurons} skill neurons")
        if neurons_of != "validation":
            title += f" · {neurons_of}'s skill neurons on every set"
        section.lines += [f"### {title}", ""]
        section.lines += markdown_table(
            ["backbone", "selection", "rate (%)", "seeds", *sets],
            [[b, sel, f"{rate:g}", max(r["n"] for r in group_rows if (r["backbone"], r["selection"], r["rate"]) ==
                                       (b, sel, rate)),
              *(fmt(*next(((r["mean"], r["sem"]) for r in group_rows if (r["backbone"], r["selection"], r["rate"],
                                                                          r["set"]) == (b, sel, rate, s)),
                          (None, None))) for s in sets)]
             for b, sel, rate in dict.fromkeys((r["backbone"], r["selection"], r["rate"]) for r in group_rows)])
        backbones = list(dict.fromkeys(r["backbone"] for r in group_rows))
        fig, axes, figure = panels(ctx, slug("paper_suppression", task, perturbation, part, source,
                                             adversarial_neurons, *([neurons_of] if neurons_of != "validation" else [])),
                                   f"Suppression, {title}", len(sets))
        chance = next((100.0 / len(labels) for run in groups[key] if (labels := run.data.get("label_names"))), None)
        lowest = []  # over every panel: the panels share one accuracy axis
        for ax, name in zip(axes, sets):
            for k, (backbone, selection) in enumerate((b, s) for b in backbones for s in ("skill", "random")):
                line = sorted((r["rate"], r["mean"], r["sem"] or 0.0) for r in group_rows if
                              (r["backbone"], r["selection"], r["set"]) == (backbone, selection, name))
                if line:
                    colour, marker, _ = style.series(k)
                    if len(backbones) == 1:  # as in the per-backbone figures: skill vermillion, random blue
                        colour, _, marker = style.SELECTION[selection]
                    means = [p[1] for p in line]
                    # the error bar clipped to [0, 100]: (down, up) lengths
                    errors = [[min(p[2], p[1]) for p in line], [min(p[2], 100 - p[1]) for p in line]]
                    ax.errorbar([p[0] for p in line], means, yerr=errors,
                                linestyle=style.SELECTION[selection][1], color=colour, marker=marker, capsize=3,
                                linewidth=2, label=f"{backbone} {selection}")
                    lowest.append(min(m - e for m, e in zip(means, errors[0])))
            ax.set_title(EvalSet(name).display, fontsize="medium")
            ax.set_xlabel("suppression rate (% of units per layer)")
            ax.set_ylabel("accuracy (%)")
        for ax in axes:
            style.accuracy_axis(ax, chance, min(lowest) if lowest else None)
            ax.legend(fontsize="small")
        fig.suptitle(f"Suppression of skill neurons vs random units: {task} ({ctx.task_types().get(task, '?')}), "
                     f"{', '.join(backbones)}", fontsize="medium")
        embed(section, ctx.save(fig, figure, "paper_suppression", group_rows))
    section.tables["paper_suppression"] = [{k: v for k, v in r.items()} for r in rows]
    section.data.update(rows=rows)
    return section
