"""The paper's figures of skill neurons vs adversarial data as the paper defines them (P1 ``src/analysis.py`` names;
``--definitions p1-code``: :mod:`.p1_sections`):
overlap vs n, the adversarial predictivity of the clean skill neurons, where the skill neurons sit, and the
predictivity of every neuron per dataset next to the model's accuracy. Numbers: :mod:`.analyses`;
seed means: :mod:`.seed_means`. Each figure groups its datasets by task type."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from records.figures import BACKBONES, CLEAN, GREY, MARKERS, MEDIAN, VERMILLION
from records.neuron_selection import num_selected
from skill_neurons.report.analyses import (
    P1_N_GRID, adversarial_of_clean, histogram_counts, histogram_edges, layer_location, overlap_curve,
)
from skill_neurons.report.base import (
    WIDE, Context, Figure, Section, family_name, fit_accuracies, fmt, markdown_table, pct, slug,
)
from skill_neurons.report.seed_means import MARK, SeedMean, missing_seed_lines, seed_means

COLOURS = list(BACKBONES)  # per backbone (records/figures.py)
# The size of a top-n% set (records.neuron_selection.num_selected), in the formulas under the figures.
SIZE = "int({count} / 100 · n) for `paper` runs as P1, ceil({count} · n / 100) for the others"
NO_MEANS = ("No skill-neuron analyses to average (fit runs get one from SkillNeuronCallback; `--eval_set` names "
            "the clean set).")


def backbone_colours(means: list[SeedMean]) -> dict[str, str]:
    backbones = list(dict.fromkeys(m.backbone for m in means))
    return {b: COLOURS[k % len(COLOURS)] for k, b in enumerate(backbones)}


def backbone_marker(colours: dict[str, str], backbone: str) -> str:
    """A marker per backbone, in the order of :func:`backbone_colours`: lines differ in colour and marker."""
    return MARKERS[list(colours).index(backbone) % len(MARKERS)]


def by_type(ctx: Context, tasks: list[str]) -> dict[str, list[str]]:
    """Tasks grouped by task type, in the report's type order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for task in ctx.task_order(tasks):
        groups[ctx.task_types().get(task) or "other"].append(task)
    return groups


def adversarial_pairs(ctx: Context, means: list[SeedMean]) -> list[tuple[str, str]]:
    """(task, adversarial set) of every dataset with an adversarial analysis, tasks in type order."""
    pairs = {(m.task, name) for m in means for name in m.sets if name != ctx.eval_set}
    order = ctx.task_order({t for t, _ in pairs})
    return sorted(pairs, key=lambda p: (order.index(p[0]), p[1]))


def panels(ctx: Context, name: str, caption: str, count: int):
    """A WIDE figure with ``count`` panels side by side (at most 4 per row)."""
    columns = min(4, max(1, count))
    rows = -(-max(1, count) // columns)
    fig, axes, figure = ctx.figure(name, caption, WIDE, nrows=rows, ncols=columns)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count], figure


def embed(section: Section, figure: Figure) -> None:
    section.figures.append(figure)
    section.lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]


# ----------------------------------------------------------------------------- overlap vs n


def overlap_section(ctx: Context) -> Section:
    """overlap@n of the seed-mean clean and adversarial skill neurons (per layer), n = 2, 4, …, 14."""
    section = Section("paper_overlap")
    means = seed_means(ctx)
    rows = []
    for mean in means:
        for name, adversarial in mean.sets.items():
            if name == ctx.eval_set:
                continue
            for point in overlap_curve(mean.sets[ctx.eval_set], adversarial, mean.sizing):
                rows.append({**mean.row(), "set": name, "adversarial_seeds": mean.set_seeds[name], **point})
    if not rows:
        return section.leave_out(NO_MEANS if not means else "No adversarial skill-neuron analyses (the runs' "
                                 "`skill_neurons` sets have no `adv/...` split).")
    section.lines += [
        "**Formula** (P1 `src/analysis.py::get_adv_overlap`, `get_adv_overlap_per_topn`, `get_sem`): for n = "
        f"{', '.join(map(str, P1_N_GRID))}, k = {SIZE.format(count='N')} units per layer; "
        "overlap_l = |top_k(s̄_clean,l) ∩ top_k(s̄_adv,l)| / k, with s̄ = the mean over the prompts (seeds) of "
        "each prompt's max over positions "
        "(`src/find.py::get_max_mean`); shown: mean ± s.e.m. (sd with ddof 1 / √L) over the L layers. A random "
        "pick overlaps n/100 on average (dotted).", ""]
    section.lines += missing_seed_lines(means)
    table = defaultdict(dict)
    for row in rows:
        table[(row["backbone"], row["task"], row["set"], bool(row["missing_seeds"]))][row["n"]] = row
    section.lines += markdown_table(
        ["backbone", "task", "adversarial set", *(f"n={n}" for n in P1_N_GRID)],
        [[b, t + (MARK if marked else ""), s, *(fmt(c[n]["mean"], c[n]["sem"], digits=3) if n in c else "—"
                                               for n in P1_N_GRID)]
         for (b, t, s, marked), c in table.items()])
    colours = backbone_colours(means)
    pairs = adversarial_pairs(ctx, means)
    for kind, tasks in by_type(ctx, [t for t, _ in pairs]).items():
        chosen = [p for p in pairs if p[0] in tasks]
        fig, axes, figure = panels(ctx, slug("paper_overlap", kind), f"Overlap of clean and adversarial skill "
                                   f"neurons vs n, {kind} (P1 get_adv_overlap_per_topn)", len(chosen))
        for ax, (task, name) in zip(axes, chosen):
            for mean in [m for m in means if m.task == task]:
                points = [r for r in rows if r["backbone"] == mean.backbone and r["part"] == mean.part
                          and r["task"] == task and r["set"] == name and r["mean"] is not None]
                if points:
                    ax.errorbar([r["n"] for r in points], [r["mean"] for r in points],
                                yerr=[r["sem"] or 0.0 for r in points], color=colours[mean.backbone],
                                marker=backbone_marker(colours, mean.backbone), capsize=3, linewidth=2,
                                label=mean.backbone + mean.mark)
            ax.plot(P1_N_GRID, [n / 100 for n in P1_N_GRID], ":", color="grey", label="random (n/100)")
            ax.set_title(f"{task} vs {name}", fontsize="medium")
            ax.set_xlabel("top n% per layer")
            ax.set_xticks(P1_N_GRID)
            ax.set_ylabel("overlap (mean ± s.e.m. over layers)")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize="small")
        fig.suptitle(f"Overlap of clean and adversarial skill neurons per backbone: {kind}", fontsize="medium")
        embed(section, ctx.save(fig, figure, "paper_overlap", [r for r in rows if r["task"] in tasks]))
    section.tables["paper_overlap"] = [{k: v for k, v in r.items() if k != "per_layer"} for r in rows]
    section.data.update(rows=rows, n_grid=list(P1_N_GRID))
    return section


# ----------------------------------------------------------------------------- histogram and location


def histogram_section(ctx: Context) -> Section:
    """Histogram of the seed-mean adversarial score of the model-wide top-n% clean units, backbones side by side,
    one panel per dataset."""
    section = Section("paper_histogram")
    means = seed_means(ctx)
    p = ctx.percent
    pairs = adversarial_pairs(ctx, means)
    if not pairs:
        return section.leave_out(NO_MEANS if not means else "No adversarial skill-neuron analyses.")
    section.lines += [
        f"**Formula** (P1 `get_predictivities_adversarial_skill_neurons_nonadversarial`, `get_histplot_distribution`, "
        f"`get_bin_boundaries`): the clean skill neurons are the model-wide top n = {p:g}% of all L·N units by the "
        f"seed-mean clean score, k = {SIZE.format(count='L·N')}; the histogram counts their seed-mean "
        "adversarial scores in 0.05-wide bins from floor(min/0.05)·0.05 to ceil(max/0.05)·0.05 (one set of bins "
        "per dataset; P1's "
        "combined bins drop the last edge, ours keep every neuron). Dashed: the adversarial set's "
        "majority-class share, the score of a unit that never changes (P1 draws none).", ""]
    section.lines += missing_seed_lines(means)
    colours = backbone_colours(means)
    rows = []
    for task, name in pairs:
        members = [m for m in means if m.task == task and name in m.sets]
        values = {m.backbone: adversarial_of_clean(m.sets[ctx.eval_set], m.sets[name], p, m.sizing) for m in members}
        values = {b: v for b, v in values.items() if len(v)}
        if not values:
            continue
        edges = histogram_edges(*values.values())
        for mean in members:
            if mean.backbone in values:
                v = values[mean.backbone]
                rows.append({**mean.row(), "set": name, "percent": p, "k": len(v), "edges": edges.tolist(),
                             "counts": histogram_counts(v, edges), "mean": float(v.mean()),
                             "majority_baseline": mean.baselines.get(name)})
    if not rows:
        return section.leave_out(f"Top {p:g}% of the units is no unit at all (P1's k = int(L·N/100·n) = 0 for "
                                 "`paper` runs).")
    section.lines += markdown_table(
        ["backbone", "task", "adversarial set", "k", "mean adversarial score", "majority baseline", "counts per bin"],
        [[r["backbone"], r["task"] + (MARK if r["missing_seeds"] else ""), r["set"], r["k"], f"{r['mean']:.3f}",
          fmt(r["majority_baseline"], digits=3), " ".join(map(str, r["counts"]))] for r in rows])
    for kind, tasks in by_type(ctx, [t for t, _ in pairs]).items():
        chosen = [pair for pair in pairs if pair[0] in tasks and any((r["task"], r["set"]) == pair for r in rows)]
        if not chosen:
            continue
        fig, axes, figure = panels(ctx, slug("paper_histogram", kind), f"Adversarial score of the clean top-{p:g}% "
                                   f"skill neurons (model-wide), {kind}", len(chosen))
        for ax, (task, name) in zip(axes, chosen):
            members = [r for r in rows if r["task"] == task and r["set"] == name]
            edges = np.array(members[0]["edges"])
            width = (edges[1] - edges[0]) / (len(members) + 1)
            for k, row in enumerate(members):
                ax.bar(edges[:-1] + width * (k + 0.5), row["counts"], width, align="edge", log=True,
                       color=colours[row["backbone"]], edgecolor="black", linewidth=0.6,
                       label=row["backbone"] + (MARK if row["missing_seeds"] else ""))
                if row["majority_baseline"] is not None:
                    ax.axvline(row["majority_baseline"], color=colours[row["backbone"]], linestyle="--")
            ax.set_title(f"{task} → {name}", fontsize="medium")
            ax.set_xlabel("adversarial predictivity")
            ax.set_ylabel("number of neurons (log)")
            ax.legend(fontsize="small")
        fig.suptitle(f"Clean skill neurons on adversarial data, per backbone: {kind}", fontsize="medium")
        embed(section, ctx.save(fig, figure, "paper_histogram", [r for r in rows if r["task"] in tasks]))
    section.tables["paper_histogram"] = rows
    section.data.update(rows=rows, percent=p)
    return section


def location_section(ctx: Context) -> Section:
    """Per layer, how many of the model-wide top-n% clean units (seed mean) it holds, backbones side by side."""
    section = Section("paper_location")
    means = seed_means(ctx)
    if not means:
        return section.leave_out(NO_MEANS)
    p = ctx.percent
    rows = []
    for mean in means:
        clean = mean.sets[ctx.eval_set]
        rows.append({**mean.row(), "percent": p, "k": num_selected(clean.size, p, mean.sizing),
                     "counts": layer_location(clean, p, mean.sizing).tolist()})
    section.lines += [
        "**Formula** (P1 `get_histplot_distribution(..., location=True)`, mode `max_mean_location`): the clean "
        f"skill neurons are the model-wide top n = {p:g}% units by seed-mean clean score, "
        f"k = {SIZE.format(count='L·N')}; count per layer how many of them it holds.", ""]
    section.lines += missing_seed_lines(means)
    layers = max(len(r["counts"]) for r in rows)
    section.lines += markdown_table(["backbone", "task", "k", *(f"L{i}" for i in range(layers))],
                                    [[r["backbone"], r["task"] + (MARK if r["missing_seeds"] else ""), r["k"],
                                      *r["counts"], *([""] * (layers - len(r["counts"])))] for r in rows])
    colours = backbone_colours(means)
    for kind, tasks in by_type(ctx, [m.task for m in means]).items():
        fig, axes, figure = panels(ctx, slug("paper_location", kind), f"Layer of the top-{p:g}% skill neurons "
                                   f"(model-wide), {kind}", len(tasks))
        for ax, task in zip(axes, tasks):
            members = [r for r in rows if r["task"] == task]
            width = 0.8 / len(members)
            for k, row in enumerate(members):
                x = np.arange(len(row["counts"]))
                ax.bar(x - 0.4 + width * (k + 0.5), row["counts"], width, color=colours[row["backbone"]],
                       label=row["backbone"] + (MARK if row["missing_seeds"] else ""))
            ax.set_title(task, fontsize="medium")
            ax.set_xlabel("layer")
            ax.set_ylabel("skill neurons")
            ax.legend(fontsize="small")
        fig.suptitle(f"Where the skill neurons sit, per backbone: {kind}", fontsize="medium")
        embed(section, ctx.save(fig, figure, "paper_location", [r for r in rows if r["task"] in tasks]))
    section.tables["paper_location"] = rows
    section.data.update(rows=rows, percent=p)
    return section


# ----------------------------------------------------------------------------- predictivity per dataset


def boxes_section(ctx: Context) -> Section:
    """Per backbone: boxes of the seed-mean score of every neuron per dataset (clean and adversarial), the
    model's accuracy as bars behind them, each set's majority-class share marked."""
    section = Section("paper_boxes")
    means = seed_means(ctx)
    if not means:
        return section.leave_out(NO_MEANS)
    section.lines += [
        "**Formula** (P1 `get_boxplot_barplot_neuron_model`, mode `predictivity`): one box per dataset of the "
        "seed-mean score s̄ of all L·N units; bars: the model's accuracy on that dataset, mean over the seeds' fit "
        "runs (best epoch). Black ticks: the dataset's majority-class share (the score of a constant unit).", ""]
    section.lines += missing_seed_lines(means)
    rows = []
    for mean in means:
        accuracies = defaultdict(list)
        for run in mean.runs:
            for name, value in fit_accuracies(run).items():
                accuracies[name].append(pct(value))
        for name, score in mean.sets.items():
            values = score.reshape(-1)
            quartiles = np.quantile(values, [0, 0.25, 0.5, 0.75, 1]).tolist()
            accuracy = accuracies.get(name)
            rows.append({**mean.row(), "set": name, "kind": "clean" if name == ctx.eval_set else "adversarial",
                         "set_seeds": mean.set_seeds[name], "quartiles": quartiles, "mean": float(values.mean()),
                         "accuracy": float(np.mean(accuracy)) if accuracy else None,
                         "majority_baseline": mean.baselines.get(name)})
    section.lines += markdown_table(
        ["backbone", "task", "set", "median score", "quartiles (q1, q3)", "accuracy (%)", "majority baseline"],
        [[r["backbone"], r["task"] + (MARK if r["missing_seeds"] else ""), r["set"], f"{r['quartiles'][2]:.3f}",
          f"{r['quartiles'][1]:.3f}, {r['quartiles'][3]:.3f}", fmt(r["accuracy"]), fmt(r["majority_baseline"], digits=3)]
         for r in rows])
    for backbone in dict.fromkeys(m.backbone for m in means):
        members = [m for m in means if m.backbone == backbone]
        datasets = [(m, name) for m in members for name in m.sets]
        fig, axes, figure = ctx.figure(slug("paper_boxes", backbone), f"Neuron predictivity per dataset and model "
                                       f"accuracy, {backbone}", WIDE)
        ax = axes[0][0]
        bars = ax.twinx()
        bars.set_zorder(ax.get_zorder() - 1)
        ax.patch.set_visible(False)
        found = [next(r for r in rows if r["backbone"] == backbone and r["part"] == m.part and r["task"] == m.task
                      and r["set"] == name) for m, name in datasets]
        boxes = ax.boxplot([m.sets[name].reshape(-1) for m, name in datasets], positions=range(len(datasets)),
                           widths=0.6, showfliers=False, patch_artist=True, medianprops=MEDIAN)["boxes"]
        for box, (_, name) in zip(boxes, datasets):
            box.set(facecolor=CLEAN if name == ctx.eval_set else VERMILLION, alpha=0.8)
        bars.bar(range(len(datasets)), [r["accuracy"] or 0.0 for r in found], 0.8, color=GREY, alpha=0.25,
                 edgecolor="black", label="model accuracy (%)")
        for x, row in enumerate(found):
            if row["majority_baseline"] is not None:
                ax.hlines(row["majority_baseline"], x - 0.4, x + 0.4, colors="black", linewidth=2, linestyle=":",
                          label="chance (majority share)" if x == 0 else None)
        ax.set_xticks(range(len(datasets)))
        ax.set_xticklabels([f"{m.task}{m.mark}" if name == ctx.eval_set else f"{name}\n(adv)" for m, name in datasets],
                           rotation=30, ha="right", fontsize="small")
        ax.set_ylim(0.4, 1.0)
        ax.set_ylabel("neuron score s̄ (seed mean)")
        bars.set_ylim(0, 100)
        bars.set_ylabel("model accuracy (%)")
        handles = [h for a in (ax, bars) for h in a.get_legend_handles_labels()[0]]
        bars.legend(handles=handles, loc="lower right", fontsize="small")
        ax.set_title(f"{backbone} ({family_name(members[0].family)}): neuron predictivity per dataset, clean vs "
                     "adversarial")
        embed(section, ctx.save(fig, figure, "paper_boxes", found))
    section.tables["paper_boxes"] = rows
    section.data.update(rows=rows)
    return section
