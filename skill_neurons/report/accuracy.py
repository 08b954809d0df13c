"""The runs table and clean vs adversarial accuracy (table and ``accuracy.png``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from records import figures as style
from records.run_status import status_of
from skill_neurons.report.attacks import SOURCES, Evaluations, set_source
from skill_neurons.report.base import (
    FAMILY_ORDER, Context, Figure, Run, Section, family_name, family_rank, fit_accuracies, fmt, markdown_table, mean_sd,
    mixed_settings, pct, seed_label, seed_rank, test_accuracies,
)
from skill_neurons.report.groups import group_lines
from skill_neurons.report.seed_means import layout_of


def runs_section(ctx: Context) -> Section:
    """What was read: counts by kind, unfinished runs, files that are not run summaries."""
    section = Section("runs")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for run in ctx.runs:
        counts[run.kind][0 if run.finished else 1] += 1
    unfinished = [r for r in ctx.runs if not r.finished]
    section.lines += [f"Read {len(ctx.runs)} run summaries from {', '.join(f'`{a}`' for a in ctx.inputs.arguments)}.",
                      ""]
    section.lines += markdown_table(["kind", "finished", "unfinished (skipped)"],
                                    [[k, v[0], v[1]] for k, v in sorted(counts.items())])
    selection = ctx.selection
    groups: list[dict[str, Any]] = []
    if selection is not None:
        lines, groups = group_lines(ctx.runs, selection, lambda run: layout_of(ctx, run))
        ctx.cache["groups"] = groups
        section.lines += [("Compared, per backbone family within its input layout and analysed positions (each "
                           "backbone × task uses one configuration; its seeds are the runs averaged):"), "", *lines, ""]
        if selection.filtered:
            section.lines += [f"Left out by the filters ({selection.filters.describe()}): {len(selection.filtered)} "
                              "runs.", ""]
        left = [r for r in ctx.runs if r.source in selection.left_out]
        if left:
            section.lines += ["Finished runs not used:", ""]
            section.lines += [f"- {r.describe()}: {selection.left_out[r.source]}" for r in left] + [""]
    if any(r.kind == "validate" for r in ctx.finished):
        section.lines += [("Plain `validate` runs enter the skill-neuron sections (when they analysed "
                          f"'{ctx.eval_set}' and no run of the same prompt analysed more sets) and add the sets their "
                          "prompt's fit run did not evaluate to the accuracy table."), ""]
    if unfinished:
        section.lines += ["Unfinished runs (status is not `finished`), skipped:", ""]
        section.lines += [f"- {r.describe()}: status `{status_of(r.summary)}`" for r in unfinished] + [""]
    if ctx.inputs.invalid:
        section.lines += ["Files skipped (not run summaries):", ""]
        section.lines += [f"- warning: {line}" for line in ctx.inputs.invalid] + [""]
    configuration = {r.source: c for r in ctx.runs if selection and (c := selection.configuration(r))}
    rows = [{"run_id": r.run_id, "kind": r.kind, "status": r.summary.get("status"), "backbone": r.backbone,
             "family": r.family, "task": r.task, "seed": r.seed, "source": r.source,
             "configuration": configuration[r.source].id if r.source in configuration else None,
             "configuration_label": configuration[r.source].label if r.source in configuration else None,
             "used": bool(ctx.selection.used(r)) if ctx.selection else r.finished} for r in ctx.runs]
    section.lines += ["<details><summary>All runs</summary>", ""]
    section.lines += markdown_table(["run", "kind", "status", "backbone", "task", "seed", "configuration", "used"],
                                    [[f"`{r['run_id']}`", r["kind"], r["status"], r["backbone"], r["task"],
                                      seed_label(r["seed"]), configuration[s].name if (s := r["source"]) in
                                      configuration else "—", "yes" if r["used"] else "no"] for r in rows])
    section.lines += ["</details>", ""]
    section.tables["runs"] = rows
    section.data.update(read=len(ctx.runs), finished=len([r for r in ctx.runs if r.finished]), used=len(ctx.finished),
                        groups=groups,
                        by_kind={k: {"finished": v[0], "unfinished": v[1]} for k, v in counts.items()},
                        unfinished=[r.run_id for r in unfinished], invalid=list(ctx.inputs.invalid))
    return section


# --- accuracy


def accuracy_rows(ctx: Context, runs: list[Run], read: Callable[[Run], dict[str, float]], clean: str,
                  stage: str, notes: list[str], source: Callable[[Run, str], str] | None = None) -> list[dict[str, Any]]:
    """One row per backbone × task × evaluation set: accuracies in %, mean ± sd over the runs (seeds), and the
    set's ``source`` (:data:`skill_neurons.report.attacks.SOURCES`, read from the first run that has it). Groups
    that mix settings other than the seed get a line in ``notes``."""
    source = source or (lambda run, name: set_source(ctx, run, name))
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.family, run.backbone, run.task)].append(run)
    order = ctx.task_order({k[2] for k in groups})
    rows = []
    for family, backbone, task in sorted(groups, key=lambda k: (family_rank(k[0]), k[1], order.index(k[2]))):
        members = sorted(groups[(family, backbone, task)], key=lambda r: seed_rank(r.seed))
        notes += mixed_settings(members, f"{backbone} · {task} ({stage})")
        values: dict[str, list[tuple[Run, float]]] = defaultdict(list)
        for run in members:
            for name, value in read(run).items():
                values[name].append((run, pct(value)))
        chance = next((r.chance for r in members if r.chance is not None), None)
        order = list(SOURCES)
        for name in [clean, *sorted((n for n in values if n != clean),
                                    key=lambda n: (order.index(source(values[n][0][0], n)), n))]:
            if name not in values:
                continue
            numbers = [v for _, v in values[name]]
            mean, sd = mean_sd(numbers)
            rows.append({"stage": stage, "backbone": backbone, "family": family, "task": task,
                         "task_type": ctx.task_types().get(task), "set": name,
                         "source": "clean" if name == clean else source(values[name][0][0], name),
                         "kind": "clean" if name == clean else "adversarial", "n": len(numbers),
                         "seeds": [r.seed for r, _ in values[name]], "runs": [r.run_id for r, _ in values[name]],
                         "values": numbers, "mean": mean, "sd": sd, "chance": chance,
                         "below_chance": bool(chance is not None and mean < chance)})
    return rows


def accuracy_cell(row: dict[str, Any] | None) -> str:
    """``85.3 ± 1.2``, with `` ↓`` when the mean is below chance."""
    return fmt(row["mean"], row["sd"], mark=" ↓" if row["below_chance"] else "") if row else "—"


def accuracy_markdown(rows: list[dict[str, Any]], clean: str) -> list[str]:
    """| backbone | task | seeds | chance | clean | adversarial set | adversarial | — one line per adv set."""
    table = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["backbone"], row["task"])].append(row)
    for (backbone, task), members in groups.items():
        clean_row = next((r for r in members if r["kind"] == "clean"), None)
        adversarial = [r for r in members if r["kind"] == "adversarial"] or [None]
        first = clean_row or members[0]
        chance = first["chance"]
        for adv in adversarial:
            table.append([f"{backbone} ({family_name(first['family'])})", f"{task} ({first['task_type'] or '?'})",
                          ", ".join(seed_label(s) for s in (clean_row or adv)["seeds"]),
                          fmt(chance) if chance is not None else "?", accuracy_cell(clean_row),
                          adv["set"] if adv else "—", SOURCES.get(adv.get("source"), "—") if adv else "—",
                          accuracy_cell(adv)])
    return markdown_table(["backbone", "task (type)", "seeds", "chance", f"clean ({clean})", "adversarial set",
                           "source", "adversarial"], table)


def accuracy_section(ctx: Context) -> Section:
    """Backbone × task accuracy of fit runs' best epoch (and of test runs), clean vs each adversarial set."""
    section = Section("accuracy")
    fits, tests = ctx.of_kind("fit"), ctx.of_kind("test")
    notes: list[str] = []
    # a fit run's row also holds the sets a validate run of its prompt evaluated (evaluate_attacks.yaml's generated
    # sets beside the fit's clean and AdvGLUE sets)
    evaluations = Evaluations(ctx)
    rows = accuracy_rows(ctx, fits, lambda run: evaluations.accuracies(run, fit_accuracies(run)), "validation", "fit",
                         notes, lambda run, name: evaluations.source(run, name, fit_accuracies(run)))
    test_rows = accuracy_rows(ctx, tests, test_accuracies, "test", "test", notes)
    if not rows and not test_rows:
        return section.leave_out(
            f"No finished fit runs with a best epoch among the {len(ctx.runs)} runs read (the table uses `best` "
            "of summary.json, the epoch with the best clean `val/acc`; runs come from `skill-neurons fit`).")
    section.lines += [("**Formula** (P1 `src/analysis.py::get_results`, `get_mean_std`): accuracy in %, mean ± sd "
                      "over seeds, at each fit run's best epoch (the epoch with the best clean validation accuracy). "
                      "Sets a fit did not evaluate come from `validate` runs of its prompt (e.g. the sets made by "
                      "`skill-neurons attack`); `source` says what each adversarial set is: the task's own (AdvGLUE), "
                      "generated by an attack against the prompt, the no-model noise baseline, or another file. "
                      "Ours: the sample sd (n − 1) where P1's `get_mean_std` uses `np.std` (n); report.json has every "
                      "seed's value. Chance = 100 / number of classes; ↓ marks a mean below chance."), ""]
    if not {r["family"] for r in rows + test_rows} >= set(FAMILY_ORDER):
        present = sorted({r["family"] for r in rows + test_rows}, key=family_rank)
        absent = [f for f in FAMILY_ORDER if f not in present]
        section.lines += [(f"No {', '.join(f'{family_name(f)} ({f})' for f in absent)} fit runs among the "
                          f"{len(ctx.runs)} runs read — the table has {', '.join(map(family_name, present))} "
                          "backbones only."), ""]
    if rows:
        section.lines += accuracy_markdown(rows, "validation")
        section.figures.append(accuracy_figure(ctx, rows))
    else:
        section.lines += ["No finished fit runs with a best epoch (only test runs below).", ""]
    if test_rows:
        section.lines += ["Test split (from `skill-neurons test` runs):", ""]
        section.lines += accuracy_markdown(test_rows, "test")
    section.lines += [*notes, ""] if notes else []
    section.tables["accuracy"] = rows + test_rows
    section.data.update(rows=rows + test_rows, units="accuracy in %, sd = sample standard deviation (n - 1)",
                        notes=notes)
    return section


def accuracy_figure(ctx: Context, rows: list[dict[str, Any]]) -> Figure:
    """Grouped bars per backbone × task: clean and adversarial (hatched) accuracy, ± sd clipped to [0, 100],
    chance marked; :func:`accuracy_size` wide."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["backbone"], row["task"])].append(row)
    fig, axes, figure = ctx.figure("accuracy", "Accuracy (%) at the best epoch, clean vs adversarial, mean ± sd "
                                   "over seeds; black lines: chance", accuracy_size(len(groups)))
    ax = axes[0][0]
    labelled = set()
    for x, ((backbone, task), members) in enumerate(groups.items()):
        width = 0.8 / len(members)
        for k, row in enumerate(members):
            colour = style.set_colour(k - 1, row["kind"] == "clean")
            label = "clean" if row["kind"] == "clean" else "adversarial" if k == 1 else f"adversarial ({row['set']})"
            ax.bar(x - 0.4 + width * (k + 0.5), row["mean"], width * 0.9, yerr=clipped_error(row), color=colour,
                   hatch=None if row["kind"] == "clean" else ("//", "\\\\", "xx", "..")[(k - 1) % 4],
                   edgecolor="white", capsize=3 if row["sd"] else 0,
                   label=None if label in labelled else label)  # n = 1: no bar
            labelled.add(label)
        if members[0]["chance"] is not None:
            ax.hlines(members[0]["chance"], x - 0.45, x + 0.45, colors="black", linewidth=1.2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{b}\n{t}" for b, t in groups], fontsize="small")
    ax.set_xlim(*style.centred_limits(len(groups), at_least=2))
    ax.plot([], [], color="black", linewidth=1.2, label="chance")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title("Accuracy at the best epoch per backbone · task: clean vs adversarial")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize="small", frameon=False)
    return ctx.save(fig, figure, "accuracy", rows)


def accuracy_size(groups: int) -> tuple[int, int]:
    """Pixels of ``accuracy.png``: 150 per backbone × task group beside a 260-pixel margin, 560 to 1800 wide."""
    return max(560, min(1800, 260 + 150 * groups)), 560


def clipped_error(row: dict[str, Any]) -> list[list[float]] | None:
    """The ± sd error bar of a row as (down, up) lengths that stay within [0, 100] %."""
    if not row["sd"]:
        return None
    return [[min(row["sd"], row["mean"])], [min(row["sd"], 100.0 - row["mean"])]]


# --- transfer


