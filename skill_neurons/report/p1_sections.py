"""The report's sections under ``--definitions p1-code``: the paper's figures as P1's released code computes
them (numbers from :mod:`.p1_code`), and a ``definitions`` section with the ``paper`` number beside each one
that differs and why (``docs/p1_code.md`` has the full list). Sections keep the keys of their ``paper``
counterparts, so report.json is read the same way under both definitions."""

from __future__ import annotations

import numpy as np

from skill_neurons.report import analyses, p1_code
from skill_neurons.report.base import Context, Section, fmt, markdown_table, validate_accuracies
from skill_neurons.report.p1_common import (DOC, differences, fallbacks, note, number, p1_run_score, p1_seed_means,
                                            score_lines, sized)
from skill_neurons.report.p1_suppression import suppression_p1
from skill_neurons.report.paper import NO_MEANS, adversarial_pairs, backbone_colours, embed, panels
from skill_neurons.report.seed_means import seed_means
from skill_neurons.report.spearman import spearman_seeds_section, spearman_tasks_section
from skill_neurons.report.transfer import transfer_accuracy, transfer_section

DEFINITIONS = ("paper", "p1-code")


def overlap_section(ctx: Context) -> Section:
    """``get_adv_overlap_per_topn``: each layer's k lowest units (P1's ``[::-1]`` reverses the layers)."""
    section = Section("paper_overlap")
    means = p1_seed_means(ctx)  # float64 as P1; the paper numbers beside them from seed_means (float32 files)
    rows = [{**m.row(), "set": name, **point} for m in means for name in m.sets if name != ctx.eval_set
            for point in p1_code.overlap_curve(m.sets[ctx.eval_set], m.sets[name])]
    if not rows:
        return section.leave_out(NO_MEANS if not means else "No adversarial skill-neuron analyses.")
    section.lines += [
        "**P1 `src/analysis.py::get_adv_overlap`, `get_adv_overlap_per_topn`, `get_sem`** (`--definitions p1-code`): "
        "`np.argsort(p, axis=1)[::-1]` reverses the layers, so `[:, :k]` keeps each layer's k = int(N/100·n) "
        "*lowest*-scoring units; overlap = |clean ∩ adv| / k per layer, mean ± s.e.m. over layers. The paper's "
        f"top-k overlap is under `--definitions paper` (see {DOC}).", ""]
    for m, plain in zip(means, seed_means(ctx)):
        for name in [s for s in m.sets if s != ctx.eval_set]:
            paper = analyses.overlap_curve(plain.sets[ctx.eval_set], plain.sets[name], m.sizing)
            ours = [r for r in rows if (r["backbone"], r["part"], r["task"], r["set"]) == (m.backbone, m.part, m.task, name)]
            for a, b in zip(paper, ours):
                note(ctx, "overlap", f"{m.backbone} · {m.task} vs {name}, n = {b['n']}", a["mean"], b["mean"],
                     sized(m, "P1 overlaps the k lowest units of each layer (bottom-k), the paper describes the top k"))
    section.lines += markdown_table(
        ["backbone", "task", "adversarial set", *(f"n={n}" for n in analyses.P1_N_GRID)],
        [[b, t, s, *(fmt(r["mean"], r["sem"], digits=3) for r in rows
                     if (r["backbone"], r["task"], r["set"]) == (b, t, s))]
         for b, t, s in dict.fromkeys((r["backbone"], r["task"], r["set"]) for r in rows)])
    pairs = adversarial_pairs(ctx, means)
    colours = backbone_colours(means)
    fig, axes, figure = panels(ctx, "paper_overlap_p1", "Overlap vs n as P1's get_adv_overlap_per_topn computes it "
                               "(bottom-k units)", len(pairs))
    for ax, (task, name) in zip(axes, pairs):
        for backbone in colours:
            line = [r for r in rows if (r["backbone"], r["task"], r["set"]) == (backbone, task, name)]
            if line:
                ax.errorbar([r["n"] for r in line], [r["mean"] for r in line], yerr=[r["sem"] for r in line],
                            color=colours[backbone], capsize=3, linewidth=2, label=backbone)
        ax.set_title(f"{task} vs {name}", fontsize="medium")
        ax.set_xlabel("n (% per layer)")
        ax.set_ylabel("overlap (P1 code)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize="small")
    embed(section, ctx.save(fig, figure, "paper_overlap", rows))
    section.tables["paper_overlap"] = [{k: v for k, v in r.items() if k != "per_row"} for r in rows]
    section.data.update(rows=rows, n_grid=list(analyses.P1_N_GRID), p1_function="get_adv_overlap_per_topn")
    return section


def histogram_section(ctx: Context) -> Section:
    """``get_histplot_distribution(adversarial=True, mode="max_mean")`` with P1's duplicated values, second cut
    and ``np.arange`` bins shared by the backbones of a dataset."""
    section = Section("paper_histogram")
    means, p = p1_seed_means(ctx), ctx.percent
    plain = {id(m): s for m, s in zip(means, seed_means(ctx))}  # the paper numbers' (float32 files) seed means
    rows = []
    for task, name in adversarial_pairs(ctx, means):
        members = [m for m in means if m.task == task and name in m.sets]
        values = [p1_code.histogram_values(m.sets[ctx.eval_set], m.sets[name], p) for m in members]
        kept = [(m, v) for m, v in zip(members, values) if len(v)]
        if not kept:
            continue
        edges = p1_code.combined_edges([v for _, v in kept])
        for m, v in kept:
            paper = analyses.adversarial_of_clean(plain[id(m)].sets[ctx.eval_set], plain[id(m)].sets[name], p,
                                                  m.sizing)
            rows.append({**m.row(), "set": name, "percent": p, "values": len(v), "edges": edges.tolist(),
                         "counts": p1_code.histogram_counts(v, edges), "mean": float(v.mean())})
            label = f"{m.backbone} · {task} → {name}"
            note(ctx, "histogram", f"{label}: values counted", len(paper), len(v),
                 sized(m, "P1 stores each value twice (np.zeros((k, 2))) and cuts the top n% again"))
            note(ctx, "histogram", f"{label}: mean adversarial score", float(paper.mean()), float(v.mean()),
                 "the second cut keeps only the highest adversarial values")
    if not rows:
        return section.leave_out(NO_MEANS if not means else "No adversarial skill-neuron analyses (or k = 0).")
    section.lines += [
        "**P1 `get_predictivities_adversarial_skill_neurons_nonadversarial`, `get_histplot_distribution` (mode "
        "`max_mean`), `get_bin_boundaries`** (`--definitions p1-code`): the adversarial scores of the clean "
        f"model-wide top k = int(L·N/100·{p:g}) units, each stored twice, sorted and cut again to the top "
        "int(2k/100·n); bins `np.arange(min, max, 0.05)` over both backbones' `get_bin_boundaries` (edges "
        f"~1e-16 off multiples of 0.05, the last edge dropped). See {DOC}.", ""]
    section.lines += markdown_table(["backbone", "task", "adversarial set", "values", "mean", "counts per bin"],
                                    [[r["backbone"], r["task"], r["set"], r["values"], f"{r['mean']:.3f}",
                                      " ".join(map(str, r["counts"]))] for r in rows])
    pairs = list(dict.fromkeys((r["task"], r["set"]) for r in rows))
    colours = backbone_colours(means)
    fig, axes, figure = panels(ctx, "paper_histogram_p1", "Adversarial score of the clean skill neurons as P1's "
                               "get_histplot_distribution counts it", len(pairs))
    for ax, (task, name) in zip(axes, pairs):
        members = [r for r in rows if (r["task"], r["set"]) == (task, name)]
        edges = np.array(members[0]["edges"])
        width = 0.05 / (len(members) + 1)
        for k, r in enumerate(members):
            ax.bar(edges[:-1] + width * (k + 0.5), r["counts"], width, align="edge", color=colours[r["backbone"]],
                   label=r["backbone"])
        ax.set_title(f"{task} → {name}", fontsize="medium")
        ax.set_xlabel("adversarial predictivity")
        ax.set_ylabel("values (P1 code)")
        ax.legend(fontsize="small")
    return _finish(section, ctx, fig, figure, rows, p)


def _finish(section: Section, ctx: Context, fig, figure: str, rows: list[dict], percent: float) -> Section:
    """Save a ``get_histplot_distribution`` figure under the section's name, with its rows as the table."""
    embed(section, ctx.save(fig, figure, section.key, rows))
    section.tables[section.key] = rows
    section.data.update(rows=rows, percent=percent, p1_function="get_histplot_distribution")
    return section


def location_section(ctx: Context) -> Section:
    """``get_histplot_distribution(location=True, mode="max_mean_location")`` in P1's tie order."""
    section = Section("paper_location")
    means, p = p1_seed_means(ctx), ctx.percent
    if not means:
        return section.leave_out(NO_MEANS)
    rows = []
    for m, plain in zip(means, seed_means(ctx)):
        clean = m.sets[ctx.eval_set]
        counts = p1_code.layer_location(clean, p).tolist()
        rows.append({**m.row(), "percent": p, "k": int(clean.size / 100 * p), "counts": counts})
        paper = analyses.layer_location(plain.sets[ctx.eval_set], p, m.sizing).tolist()
        if paper != counts:
            note(ctx, "layer location", f"{m.backbone} · {m.task}: units per layer", " ".join(map(str, paper)),
                 " ".join(map(str, counts)), sized(m, "equal scores at the cut: P1's argsort()[::-1] vs lowest index first"))
    section.lines += [
        "**P1 `get_histplot_distribution(location=True)`, mode `max_mean_location`** (`--definitions p1-code`): "
        f"per layer, how many of the model-wide top k = int(L·N/100·{p:g}) units (P1's `argsort()[::-1]` order) "
        "it holds.", ""]
    layers = max(len(r["counts"]) for r in rows)
    section.lines += markdown_table(["backbone", "task", "k", *(f"L{i}" for i in range(layers))],
                                    [[r["backbone"], r["task"], r["k"], *r["counts"]] for r in rows])
    colours = backbone_colours(means)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes, figure = panels(ctx, "paper_location_p1", "Layer of the skill neurons as P1's "
                               "get_histplot_distribution(location=True) counts it", len(tasks))
    for ax, task in zip(axes, tasks):
        members = [r for r in rows if r["task"] == task]
        for k, r in enumerate(members):
            ax.bar(np.arange(len(r["counts"])) - 0.4 + 0.8 / len(members) * (k + 0.5), r["counts"],
                   0.8 / len(members), color=colours[r["backbone"]], label=r["backbone"])
        ax.set_title(task, fontsize="medium")
        ax.set_xlabel("layer")
        ax.legend(fontsize="small")
    return _finish(section, ctx, fig, figure, rows, p)


def spearman_seeds_p1(ctx: Context) -> Section:
    """The paper section (its figures), with P1's numbers beside: ``correlation_matrix_across_seed``, the
    p-value matrix of all units, and ``get_correlation_set``'s pairs (which P1 forgets to return)."""
    section = spearman_seeds_section(ctx)
    if section.missing:
        return section
    p1_rows = []
    for m in [m for m in p1_seed_means(ctx) if len(m.runs) > 1]:
        scores = [p1_run_score(ctx, r, ctx.eval_set) for r in m.runs]  # float64 as P1's per-seed .npy
        p_values = p1_code.upper_pairs(p1_code.spearman_matrix(scores, None))
        curve = []
        for n in analyses.P1_N_GRID:
            pairs = p1_code.upper_pairs(p1_code.spearman_matrix(scores, n))
            curve.append({"n": n, "mean": float(np.mean(pairs)), "sem": p1_code.p1_sem(pairs)})
        p1_rows.append({**m.row(), "mean_p_value": float(np.mean(p_values)), "curve": curve})
        paper = next(r for r in section.data["rows"] if (r["backbone"], r["task"]) == (m.backbone, m.task))
        note(ctx, "Spearman across seeds", f"{m.backbone} · {m.task}: all-unit matrix, mean over pairs",
             paper["mean_rho"], float(np.mean(p_values)), "P1 stores spearmanr(...)[1], the p-value, not ρ")
    _p1_lines(section, "`correlation_matrix_across_seed`, `plot_matrix_across_seeds`, `get_correlation_per_topn`, "
              "`get_correlation_set`: the all-unit matrix holds p-values (`spearmanr(...)[1]`); a layer whose ρ is "
              "undefined makes the mean over layers NaN; `get_correlation_set` has no `return`, so P1's curve "
              "script stops with a TypeError — the curve below is what it computes before that (10 pairs of 5 "
              "seeds)", ["backbone", "task", "mean p-value (all units)", *(f"n={n}" for n in analyses.P1_N_GRID)],
              [[r["backbone"], r["task"], number(r["mean_p_value"]), *(fmt(c["mean"], c["sem"], digits=3)
                                                                        for c in r["curve"])] for r in p1_rows])
    section.data.update(p1_rows=p1_rows, p1_function="correlation_matrix_across_seed")
    return section


def spearman_tasks_p1(ctx: Context) -> Section:
    """The paper section, with P1's numbers beside: ``correlation_matrix_across_layer`` (NaN layers kept) and
    ``get_task_correlation_set``'s fixed 11 × 11 layout (55 pairs; fixed positions per task type)."""
    section = spearman_tasks_section(ctx)
    if section.missing:
        return section
    p1_rows = []
    for row in section.data["rows"]:
        members = [m for m in p1_seed_means(ctx) if (m.backbone, m.part) == (row["backbone"], row["part"])]
        scores = [m.sets[ctx.eval_set] for m in members]
        matrix = p1_code.spearman_matrix(scores, 100)
        curve = []
        for n in analyses.P1_N_GRID:
            at_n = p1_code.spearman_matrix(scores, n)
            pairs = p1_code.upper_pairs(at_n, p1_code.TASK_MATRIX)
            curve.append({"n": n, "average": None if pairs is None else float(np.mean(pairs)),
                          "sem": None if pairs is None else p1_code.p1_sem(pairs),
                          "types": p1_code.type_pairs(at_n, row["tasks"])})
        all_pairs = p1_code.upper_pairs(matrix, p1_code.TASK_MATRIX)
        p1_rows.append({"backbone": row["backbone"], "part": row["part"], "tasks": row["tasks"],
                        "matrix": matrix.tolist(), "average": None if all_pairs is None else float(np.mean(all_pairs)),
                        "curve": curve})
        note(ctx, "Spearman across tasks", f"{row['backbone']}: mean over task pairs (all units)", row["mean_rho"],
             p1_rows[-1]["average"], f"P1 averages the 55 pairs of an 11 × 11 matrix ({len(row['tasks'])} tasks "
             "here: none when fewer than 11) and keeps NaN layers")
    _p1_lines(section, "`correlation_matrix_across_layer(seed=\"mean\")`, `get_dataset_correlation_per_topn`, "
              "`get_task_correlation_set`: `average` is the mean ± s.e.m. of the 55 pairs of the leading 11 × 11 "
              "block (P1 raises IndexError with fewer than 11 tasks: shown as —); task types are fixed positions "
              "of P1's dataset list ([0,1], [2,3], [7,8,9]; no NLI curve)",
              ["backbone", "tasks", "average (all units)", *(f"n={n}" for n in analyses.P1_N_GRID)],
              [[r["backbone"], len(r["tasks"]), number(r["average"]),
                *(fmt(c["average"], c["sem"], digits=3) if c["average"] is not None else "—" for c in r["curve"])]
               for r in p1_rows])
    section.data.update(p1_rows=p1_rows, p1_function="correlation_matrix_across_layer")
    return section


def _p1_lines(section: Section, text: str, columns: list[str], rows: list[list]) -> None:
    section.lines += ["### As P1's code computes it (`--definitions p1-code`)", "",
                      "The tables and figures above use the paper's definitions (`--definitions paper`); P1's "
                      f"numbers are these. **P1 {text}.** See {DOC}.", ""]
    section.lines += markdown_table(columns, rows)


def transfer_p1(ctx: Context) -> Section:
    """The paper section (relative matrix: ``get_transferability_matrix_new`` averages per-seed ratios, as
    ours), with P1's absolute matrix: ``int(mean accuracy · 100)``."""
    section = transfer_section(ctx)
    if section.missing:
        return section
    runs = {r.run_id: r for r in ctx.of_kind("transfer")}
    for backbone, info in section.data["backbones"].items():
        cells = {}
        for cell in info["cells"]:
            values = []
            for run_id in cell["runs"]:
                run = runs[run_id]
                value = (transfer_accuracy(run) / 100 if cell["kind"] == "clean"
                         else validate_accuracies(run).get(cell["target"]))
                if value is not None:
                    values.append(value)
            if values:
                cells[(cell["source"], cell["target"])] = p1_code.absolute_transfer(values)
                note(ctx, "transfer (absolute)", f"{backbone} · {cell['source']} → {cell['target']}",
                     cell["accuracy_mean"], cells[(cell["source"], cell["target"])], "P1 truncates with int()")
        info["absolute_matrix_p1"] = [[cells.get((a, b)) for b in info["columns"]] for a in info["tasks"]]
        _p1_lines(section, f"`get_transferability_matrix_new(relative=False)`, {backbone}: absolute cells "
                  "`int(mean accuracy · 100)`, truncated (the relative matrix above is P1's `relative=True`: a mean "
                  "of per-seed ratios, not truncated)", ["source ↓ / target →", *info["columns"]],
                  [[a, *("—" if v is None else v for v in row)] for a, row in zip(info["tasks"],
                                                                                  info["absolute_matrix_p1"])])
    section.data["p1_function"] = "get_transferability_matrix_new"
    return section


class DefinitionsSection(Section):
    """A section outside the ``paper`` report's list (its title is its own, not in ``TITLES``)."""

    @property
    def title(self) -> str:
        return "Definitions: the paper's text vs P1's released code"


def definitions_section(ctx: Context) -> Section:
    section = DefinitionsSection("p1_differences")
    rows = differences(ctx)
    section.lines += [
        f"This report uses `--definitions p1-code`: the figures above follow P1's released code, bugs included. "
        f"Each row shows a number that differs from `--definitions paper` (the paper's text), both side by side, "
        f"and why; {DOC} lists every difference. Numbers equal under both definitions are not listed.", ""]
    section.lines += score_lines(ctx)
    shown = [r for r in rows if r["paper"] != r["p1_code"]]
    section.lines += markdown_table(["figure", "quantity", "paper", "p1-code", "why"],
                                    [[r["figure"], r["quantity"], number(r["paper"]), number(r["p1_code"]), r["why"]]
                                     for r in shown]) if shown else ["No number differs on these runs.", ""]
    section.tables["definitions"] = shown
    section.data.update(rows=shown, float32_fallbacks=dict(fallbacks(ctx)))
    return section


def p1_builders(ctx: Context) -> dict:
    """Section key -> builder under ``--definitions p1-code`` (the others are the same under both)."""
    return {"transfer": lambda: transfer_p1(ctx), "paper_overlap": lambda: overlap_section(ctx),
            "paper_histogram": lambda: histogram_section(ctx), "paper_location": lambda: location_section(ctx),
            "spearman_seeds": lambda: spearman_seeds_p1(ctx), "spearman_tasks": lambda: spearman_tasks_p1(ctx),
            "paper_suppression": lambda: suppression_p1(ctx), "p1_differences": lambda: definitions_section(ctx)}
