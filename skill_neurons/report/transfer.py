"""Prompt transfer between tasks (P1 ``src/analysis.py::get_transferability_matrix_new``,
``plot_transferability_matrix``): the relative matrix (clean targets) and the absolute matrix whose columns
include each target's adversarial sets. Relative scores follow :mod:`records.summary`, the one
definition ``summary.json`` and W&B use."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from records.transfer import MEAN_OVER_SEEDS, NO_REFERENCE, reference_accuracy, relative_score
from skill_neurons.report.attacks import evaluates_attacks
from skill_neurons.report.base import (
    SQUARE, Context, Run, Section, family_name, family_rank, fit_accuracies, fmt, markdown_table, mean_sd, on_own_task,
    pct, slug, validate_accuracies,
)


def relative_of(run: Run, fits: list[Run]) -> tuple[float | None, float | None, str]:
    """(relative %, acc(B→B) %, how) of a transfer run: the value its summary.json recorded at run time (the
    number W&B got too), else :func:`records.transfer.reference_accuracy` over the fit runs read."""
    info = run.summary.get("transfer") or {}
    if info.get("relative") is not None:
        return float(info["relative"]), pct(info.get("reference_accuracy")), str(info.get("reference") or
                                                                                 "recorded with the run")
    target = info.get("target_task") or run.task
    candidates = [(f.run_id, f.seed, fit_accuracies(f)["validation"]) for f in fits
                  if f.backbone == run.backbone and f.task == target and "validation" in fit_accuracies(f)]
    reference, _, how = reference_accuracy(candidates, run.seed)
    return relative_score(transfer_accuracy(run), pct(reference)), pct(reference), how


def transfer_accuracy(run: Run) -> float | None:
    """A transfer run's clean accuracy in %: ``transfer.accuracy``, else ``validate_metrics['val/acc']``."""
    value = (run.summary.get("transfer") or {}).get("accuracy")
    return pct(value if value is not None else (run.summary.get("validate_metrics") or {}).get("val/acc"))


def transfer_section(ctx: Context) -> Section:
    section = Section("transfer")
    # an evaluation of the prompt's generated sets on its own task is no transfer trial (its sets are in the accuracy
    # section); it would repeat the prompt's seed on the diagonal
    runs = [r for r in ctx.of_kind("transfer") if not (on_own_task(r) and evaluates_attacks(ctx, r))]
    if not runs:
        return section.leave_out(
            f"No transfer runs among the {len(ctx.runs)} runs read (runs with a `transfer` section and no "
            "`suppression` come from the transfer experiment: task A's prompt evaluated on task B with "
            "`skill-neurons validate`).")
    section.lines += [
        "**Formula** (P1 `get_transferability_matrix_new`; defined once in `records/transfer.py`): "
        "relative(A→B) = 100 · acc(A→B) / acc(B→B) per seed, acc(B→B) = the best clean val/acc of B's fit run "
        "with the prompt's seed (the mean over B's fit runs when that seed has none); a cell is the mean ± sd "
        "over seeds. The same number is in each transfer run's summary.json (`transfer.relative`) and W&B summary "
        "(`transfer/relative`). Absolute: acc(A→B) in %, mean over seeds, with the adversarial sets of each target "
        "as extra columns (P1 leaves their relative cells empty). Rows: source A; tasks ordered by type.", ""]
    fits = ctx.of_kind("fit")
    by_backbone: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_backbone[run.backbone].append(run)
    section.data["backbones"] = {}
    all_cells = []
    for backbone in sorted(by_backbone, key=lambda b: (family_rank(by_backbone[b][0].family), b)):
        family = by_backbone[backbone][0].family
        cells: dict[tuple[str, str], dict] = {}
        skipped = []
        for run in by_backbone[backbone]:
            info = run.summary["transfer"]
            source = info.get("source_task") or (run.summary.get("prompt_source") or {}).get("task")
            target = info.get("target_task") or run.task
            accuracies = {name: pct(v) for name, v in validate_accuracies(run).items()}
            accuracies["validation"] = transfer_accuracy(run)
            if source is None or accuracies["validation"] is None:
                skipped.append(run.describe())
                continue
            relative, reference, how = relative_of(run, fits)
            for name, value in accuracies.items():
                column = target if name == "validation" else name
                cell = cells.setdefault((source, column), {
                    "backbone": backbone, "family": family, "source": source, "target": column,
                    "target_task": target, "kind": "clean" if name == "validation" else "adversarial",
                    "seeds": [], "runs": [], "accuracy_values": [], "relative_values": [],
                    "reference_values": [], "references": []})
                cell["seeds"].append(run.seed)
                cell["runs"].append(run.run_id)
                cell["accuracy_values"].append(value)
                if name == "validation":
                    cell["relative_values"].append(relative)
                    cell["reference_values"].append(reference)
                    if how not in cell["references"]:
                        cell["references"].append(how)
        for cell in cells.values():
            cell["n"] = len(cell["runs"])
            cell["accuracy_mean"], cell["accuracy_sd"] = mean_sd([v for v in cell["accuracy_values"] if v is not None])
            cell["relative_mean"], cell["relative_sd"] = mean_sd([v for v in cell["relative_values"] if v is not None])
            cell["reference"] = "; ".join(cell.pop("references"))
        tasks = ctx.task_order({c["source"] for c in cells.values()} | {c["target_task"] for c in cells.values()})
        columns = []
        for task in tasks:
            columns.append(task)
            columns += sorted({c["target"] for c in cells.values() if c["target_task"] == task and c["kind"] ==
                               "adversarial"})
        column_task = {c["target"]: c["target_task"] for c in cells.values()}
        relative = [[cells.get((a, b), {}).get("relative_mean") for b in tasks] for a in tasks]
        absolute = [[cells.get((a, b), {}).get("accuracy_mean") for b in columns] for a in tasks]
        ordered = [cells[(a, b)] for a in tasks for b in columns if (a, b) in cells]
        all_cells += ordered
        section.data["backbones"][backbone] = {"family": family, "tasks": tasks, "relative_matrix": relative,
                                               "columns": columns, "absolute_matrix": absolute, "cells": ordered,
                                               "skipped": skipped}
        section.lines += [f"### {backbone} ({family_name(family)})", "", "Relative score (%):", ""]
        section.lines += markdown_table(["source ↓ / target →", *tasks], [
            [a, *(fmt(cells[(a, b)]["relative_mean"], cells[(a, b)]["relative_sd"]) if (a, b) in cells else "—"
                  for b in tasks)] for a in tasks])
        section.lines += ["Absolute accuracy (%), adversarial targets included:", ""]
        section.lines += markdown_table(["source ↓ / target →", *columns], [
            [a, *(fmt(cells[(a, b)]["accuracy_mean"], cells[(a, b)]["accuracy_sd"]) if (a, b) in cells else "—"
                  for b in columns)] for a in tasks])
        for name, matrix, cols, what in (("relative", relative, tasks, "100 · acc(A→B) / acc(B→B)"),
                                         ("absolute", absolute, columns, "acc(A→B) in %")):
            figure = transfer_figure(ctx, backbone, family, name, tasks, cols, matrix, what, column_task, ordered)
            section.figures.append(figure)
            section.lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]
        fallbacks = sorted({(c["target"], c["reference"]) for c in ordered if c["kind"] == "clean"
                            and any(how in c["reference"] for how in (MEAN_OVER_SEEDS, NO_REFERENCE))})
        if fallbacks:
            section.lines += ["acc(B→B) not from the same seed: " + "; ".join(f"{t}: {h}" for t, h in fallbacks), ""]
        if skipped:
            section.lines += [f"Skipped transfer runs without source task or accuracy: {', '.join(skipped)}.", ""]
    section.tables["transfer"] = [{k: v for k, v in c.items() if not k.endswith("_values")} for c in all_cells]
    return section


def transfer_figure(ctx: Context, backbone: str, family: str, name: str, rows: list[str], columns: list[str],
                    matrix: list[list], what: str, column_task: dict[str, str], cells: list[dict]):
    """Heat map (rows: source, columns: target), task-type groups separated by white lines."""
    fig, axes, figure = ctx.figure(slug("transfer", name, backbone), f"Transfer ({name}), {backbone}: {what}",
                                   SQUARE)
    ax = axes[0][0]
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0,
                      vmax=max(100.0, float(np.nanmax(values)) if np.isfinite(values).any() else 100.0))
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize="small",
                        color="white" if values[i, j] < 60 else "black")
    types = ctx.task_types()
    kind = {c: types.get(column_task.get(c, c)) for c in [*rows, *columns]}
    for k in range(1, len(columns)):
        if kind.get(columns[k]) != kind.get(columns[k - 1]):
            ax.axvline(k - 0.5, color="white", linewidth=2)
    for k in range(1, len(rows)):
        if kind.get(rows[k]) != kind.get(rows[k - 1]):
            ax.axhline(k - 0.5, color="white", linewidth=2)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([c if c in rows else f"{c} (adv)" for c in columns], rotation=45, ha="right",
                       fontsize="small")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{t} ({types.get(t, '?')})" for t in rows], fontsize="small")
    ax.set_xlabel("target (evaluated on)")
    ax.set_ylabel("source task A (prompt from)")
    ax.set_title(f"{backbone} ({family_name(family)}): {what}, prompt of task A on task B")
    fig.colorbar(image, ax=ax, shrink=0.8, label="%")
    return ctx.save(fig, figure, "transfer", cells)
