"""Consistency of skill neurons across seeds and across tasks, as P1 measures it (``src/analysis.py``):
Spearman ρ per layer, averaged over layers, for all units and for each side's own top-n% (curves over n)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from skill_neurons.report.analyses import P1_N_GRID, mean_sem, pair_values, spearman_matrix
from skill_neurons.report.base import SQUARE, Context, Section, fmt, markdown_table, seed_label, slug
from skill_neurons.report.paper import NO_MEANS, SIZE, backbone_colours, backbone_marker, by_type, embed, panels
from skill_neurons.report.seed_means import MARK, missing_seed_lines, seed_means

RHO_FORMULA = ("ρ_l = Spearman ρ of the two (layer l) score vectors, averaged over the layers; for the curves "
               "over n each side keeps its own top k = " + SIZE.format(count="N") + " units of the layer, in "
               "unit-index order (the `topn` branch of P1's functions; n = 100 is every unit)")


def heatmap(ctx: Context, name: str, caption: str, labels: list[str], matrix: np.ndarray, title: str, table: str,
            rows: list[dict]):
    """Heat map of a ρ matrix in [-1, 1], values in the cells."""
    fig, axes, figure = ctx.figure(name, caption, SQUARE)
    ax = axes[0][0]
    image = ax.imshow(matrix, cmap="coolwarm", vmin=-1, vmax=1)
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize="small")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize="small")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Spearman ρ (mean over layers)")
    return ctx.save(fig, figure, table, rows)


def spearman_seeds_section(ctx: Context) -> Section:
    """Per backbone × task: the seeds' per-layer-averaged ρ matrix (every unit), and the curve over n of the mean
    ± s.e.m. over seed pairs."""
    section = Section("spearman_seeds")
    means = [m for m in seed_means(ctx) if len(m.runs) > 1]
    if not means:
        return section.leave_out(NO_MEANS if not seed_means(ctx) else "Needs at least two seeds of one backbone "
                                 "and task with a skill-neuron analysis.")
    section.lines += [
        "**Formula** (P1 `correlation_matrix_across_seed`, `plot_matrix_across_seeds`, `get_correlation_per_topn`, "
        f"`get_correlation_set`): the clean scores of two seeds (max over positions); {RHO_FORMULA}. Curves: mean ± "
        "s.e.m. over the seed pairs. P1 stores the p-value instead of ρ for all units (`spearmanr(...)[1]`, a bug "
        "we do not reproduce).", ""]
    section.lines += missing_seed_lines(seed_means(ctx))
    rows, curves = [], []
    for mean in means:
        scores = [ctx.scores.score(r, ctx.eval_set).numpy() for r in mean.runs]
        matrix = spearman_matrix(scores)
        all_pairs = pair_values(matrix)
        rows.append({**mean.row(), "matrix": matrix.tolist(), "mean_rho": float(np.mean(all_pairs)),
                     "min_rho": min(all_pairs), "max_rho": max(all_pairs)})
        for n in P1_N_GRID:
            value, sem = mean_sem(pair_values(spearman_matrix(scores, n, mean.sizing)))
            curves.append({**mean.row(), "n": n, "mean": value, "sem": sem})
    section.lines += markdown_table(
        ["backbone", "task", "seeds", "mean ρ (all units)", "min ρ", "max ρ",
         *(f"n={n}" for n in P1_N_GRID)],
        [[r["backbone"], r["task"] + (MARK if r["missing_seeds"] else ""), ", ".join(map(seed_label, r["seeds"])),
          f"{r['mean_rho']:.3f}", f"{r['min_rho']:.3f}", f"{r['max_rho']:.3f}",
          *(fmt(c["mean"], c["sem"], digits=3) for c in curves
            if (c["backbone"], c["part"], c["task"]) == (r["backbone"], r["part"], r["task"]))] for r in rows])
    for row, mean in zip(rows, means):
        embed(section, heatmap(ctx, slug("spearman_seeds", mean.backbone, mean.part, mean.task),
                               f"Spearman ρ across seeds (per layer, mean over layers), {mean.label}",
                               [ctx.run_label(r) for r in mean.runs], np.array(row["matrix"]),
                               f"{mean.label}: ρ across seeds", "spearman_seeds", [row]))
    colours = backbone_colours(means)
    for kind, tasks in by_type(ctx, list(dict.fromkeys(m.task for m in means))).items():
        fig, axes, figure = panels(ctx, slug("spearman_seeds_curve", kind), f"Spearman ρ across seeds vs top n%, "
                                   f"{kind} (P1 get_correlation_per_topn)", len(tasks))
        for ax, task in zip(axes, tasks):
            for mean in [m for m in means if m.task == task]:
                points = [c for c in curves if (c["backbone"], c["part"], c["task"]) == (mean.backbone, mean.part, task)]
                ax.errorbar([c["n"] for c in points], [c["mean"] for c in points],
                            yerr=[c["sem"] or 0.0 for c in points], color=colours[mean.backbone],
                            marker=backbone_marker(colours, mean.backbone), capsize=3, linewidth=2,
                            label=mean.backbone + mean.mark)
            ax.set_title(task, fontsize="medium")
            ax.set_xlabel("top n% per layer")
            ax.set_xticks(P1_N_GRID)
            ax.set_ylabel("ρ between seeds (mean ± s.e.m.)")
            ax.set_ylim(-1, 1)
            ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
            ax.legend(fontsize="small")
        fig.suptitle(f"Consistency of skill neurons across seeds, per backbone: {kind}", fontsize="medium")
        embed(section, ctx.save(fig, figure, "spearman_seeds_curve", [c for c in curves if c["task"] in tasks]))
    section.tables["spearman_seeds"] = [{k: v for k, v in r.items() if k != "matrix"} for r in rows]
    section.tables["spearman_seeds_curve"] = curves
    section.data.update(rows=rows, curves=curves, n_grid=list(P1_N_GRID))
    return section


def spearman_tasks_section(ctx: Context) -> Section:
    """Per backbone: the tasks' per-layer-averaged ρ matrix of their seed means; curves over n of the mean ±
    s.e.m. over the task pairs within each task type, and over all pairs."""
    section = Section("spearman_tasks")
    groups: dict[tuple, list] = {}
    for mean in seed_means(ctx):
        groups.setdefault((mean.family, mean.backbone, mean.part), []).append(mean)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return section.leave_out(NO_MEANS if not seed_means(ctx) else "Needs skill-neuron analyses of at least two "
                                 "tasks on the same backbone.")
    section.lines += [
        "**Formula** (P1 `correlation_matrix_across_layer(seed=\"mean\")`, `plot_matrix`, "
        f"`get_dataset_correlation_per_topn`, `get_task_correlation_set`): the seed-mean clean scores of two tasks; "
        f"{RHO_FORMULA}. Curves: mean ± s.e.m. over the pairs of tasks of one type (no s.e.m. for a single pair) "
        "and over all pairs (P1's `average`).", ""]
    section.lines += missing_seed_lines(seed_means(ctx))
    rows, curves = [], []
    for (family, backbone, part), members in groups.items():
        tasks = [m.task for m in members]
        scores = [m.sets[ctx.eval_set] for m in members]
        matrix = spearman_matrix(scores)
        rows.append({"backbone": backbone, "family": family, "part": part, "tasks": tasks,
                     "marked": [m.task for m in members if m.missing_seeds], "matrix": matrix.tolist(),
                     "runs": [r.run_id for m in members for r in m.runs],
                     "mean_rho": float(np.mean(pair_values(matrix)))})
        types = {kind: [tasks.index(t) for t in names] for kind, names in by_type(ctx, tasks).items()}
        types = {kind: list(combinations(idx, 2)) for kind, idx in types.items() if len(idx) > 1}
        types["all"] = list(combinations(range(len(tasks)), 2))
        for n in P1_N_GRID:
            at_n = spearman_matrix(scores, n, members[0].sizing)
            for kind, pairs in types.items():
                value, sem = mean_sem(pair_values(at_n, pairs))
                curves.append({"backbone": backbone, "family": family, "part": part, "task_type": kind, "n": n,
                               "pairs": [[tasks[i], tasks[j]] for i, j in pairs], "mean": value, "sem": sem})
        section.lines += [f"### {backbone} ({part})", ""]
        labels = [m.task + m.mark for m in members]
        section.lines += markdown_table([" ", *labels], [[a, *(f"{matrix[i, j]:.3f}" for j in range(len(labels)))]
                                                         for i, a in enumerate(labels)])
        embed(section, heatmap(ctx, slug("spearman_tasks", backbone, part), f"Spearman ρ of the seed-mean scores "
                               f"across tasks (per layer, mean over layers), {backbone}", labels, matrix,
                               f"{backbone}: ρ across tasks", "spearman_tasks", [rows[-1]]))
    kinds = list(dict.fromkeys(c["task_type"] for c in curves))
    colours = backbone_colours([m for members in groups.values() for m in members])
    fig, axes, figure = panels(ctx, "spearman_tasks_curve", "Spearman ρ across tasks vs top n%, per task type and "
                               "over all pairs (P1 get_dataset_correlation_per_topn)", len(kinds))
    for ax, kind in zip(axes, kinds):
        for (family, backbone, part) in groups:
            points = [c for c in curves if (c["backbone"], c["part"], c["task_type"]) == (backbone, part, kind)]
            if points:
                ax.errorbar([c["n"] for c in points], [c["mean"] for c in points],
                            yerr=[c["sem"] or 0.0 for c in points], color=colours[backbone],
                            marker=backbone_marker(colours, backbone), capsize=3, linewidth=2, label=backbone)
        ax.set_title(kind if kind != "all" else "all task pairs", fontsize="medium")
        ax.set_xlabel("top n% per layer")
        ax.set_xticks(P1_N_GRID)
        ax.set_ylabel("ρ between tasks")
        ax.set_ylim(-1, 1)
        ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.legend(fontsize="small")
    fig.suptitle("Consistency of skill neurons across tasks, per backbone", fontsize="medium")
    embed(section, ctx.save(fig, figure, "spearman_tasks_curve", rows))
    section.tables["spearman_tasks"] = [{k: v for k, v in r.items() if k != "matrix"} for r in rows]
    section.tables["spearman_tasks_curve"] = curves
    section.data.update(rows=rows, curves=curves, n_grid=list(P1_N_GRID))
    return section
