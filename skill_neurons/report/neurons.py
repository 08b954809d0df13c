"""Skill neurons of the runs read: per-layer predictivity and clean-vs-adversarial overlap."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from records import figures as style
from records.neuron_selection import mean_of_top, mean_over_prompts, num_selected, overlap_at, per_layer_top_means
from records.summary import SUMMARY_FILE
from skill_neurons.report.base import (
    OVERLAP_PERCENTS, TOLERANCE, WIDE, Context, Figure, Run, Section, family_name, fmt, markdown_table, mean_sd, slug,
)
from skill_neurons.report.seed_means import majority_baseline, sizing_of_run


def neuron_groups(ctx: Context, runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs with a clean score grouped by (family, backbone, part, task, score shape), seeds in order."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        score = ctx.scores.score(run, ctx.eval_set)
        if score is not None:
            groups[(run.family, run.backbone, run.part, run.task, tuple(score.shape))].append(run)
    return groups


def no_neuron_runs(ctx: Context) -> str:
    return (f"No finished runs with a skill-neuron analysis of '{ctx.eval_set}' among the {len(ctx.runs)} runs "
            "read (fit runs get one from SkillNeuronCallback, on in every shipped config; `--eval_set` names the "
            "clean set, e.g. `test` for test runs).")


def per_layer_section(ctx: Context, runs: list[Run]) -> Section:
    """Distribution of neuron scores per layer (figure) and the mean score of the top n% per layer (table)."""
    section = Section("per_layer")
    groups = neuron_groups(ctx, runs)
    if not groups:
        return section.leave_out(no_neuron_runs(ctx) if not runs else
                                 f"The neuron files of the {len(runs)} analysed runs are missing: "
                                 + "; ".join(ctx.scores.missing))
    p = ctx.percent
    section.lines += [(f"Mean score (predictivity, max over prompt positions) of each layer's top {p:g}% units, mean "
                      "over seeds (the sd is in report.json). Figures: the per-layer distribution of the score "
                      "averaged over seeds (max over positions first, then mean over prompts)."), ""]
    rows, checks = [], []
    for key, members in groups.items():
        family, backbone, part, task, shape = key
        sets = [ctx.eval_set, *sorted({s for r in members for s in ctx.adversarial_sets(r)})]
        combined = {}
        for name in sets:
            scored = [(r, ctx.scores.score(r, name)) for r in members]
            scored = [(r, s) for r, s in scored if s is not None and tuple(s.shape) == shape]
            if not scored:
                continue
            per_run = [per_layer_top_means(s, p, sizing_of_run(ctx, r)) for r, s in scored]  # (R, L)
            means = [statistics.fmean(col) for col in zip(*per_run)]
            sds = [statistics.stdev(col) if len(col) > 1 else None for col in zip(*per_run)]
            rows.append({"backbone": backbone, "family": family, "part": part, "task": task, "set": name,
                         "n": len(scored), "seeds": [r.seed for r, _ in scored], "runs": [r.run_id for r, _ in scored],
                         "percent": p, "layers": shape[0], "per_layer_mean": means, "per_layer_sd": sds,
                         "per_layer_values": per_run})
            combined[name] = mean_over_prompts([s for _, s in scored])  # (L, N)
            if p == 5:
                for (run, _), values in zip(scored, per_run):
                    recorded = (run.neurons.get("sets") or {}).get(name, {}).get("per_layer_top5_mean")
                    if recorded and any(abs(a - b) > TOLERANCE for a, b in zip(values, recorded)):
                        checks.append(f"{run.describe()} set {name}: recomputed per-layer top-5% means {values} "
                                      f"differ from summary.json's {recorded}")
        section.figures.append(per_layer_figure(ctx, key, combined, [r for r in rows if r["task"] == task and
                                                                    (r["backbone"], r["part"]) == (backbone, part)]))
    layers = max(r["layers"] for r in rows)
    section.lines += markdown_table(
        ["backbone", "part", "task", "set", "seeds", *[f"L{i}" for i in range(layers)]],
        [[r["backbone"], r["part"], r["task"], r["set"], r["n"],
          *(f"{v:.3f}" for v in r["per_layer_mean"]), *([""] * (layers - r["layers"]))] for r in rows])
    section.lines += [f"![{f.caption}](figures/{f.path.name})" for f in section.figures] + [""]
    if checks:
        section.lines += [f"Check against summary.json: {c}" for c in checks]
    elif p == 5:
        section.lines += ["Per-layer top-5% means match the runs' summary.json (`per_layer_top5_mean`)."]
    section.lines += [""] + [f"- missing: {m}" for m in ctx.scores.missing]
    section.tables["per_layer"] = [{k: v for k, v in r.items() if k != "per_layer_values"} for r in rows]
    section.data.update(rows=rows, mismatches=checks)
    return section


def per_layer_figure(ctx: Context, key: tuple, combined: dict[str, torch.Tensor], rows: list[dict]) -> Figure:
    """Box plots per layer of the seed-averaged score, clean and each adversarial set side by side."""
    family, backbone, part, task, shape = key
    fig, axes, figure = ctx.figure(slug("per_layer", backbone, part, task),
                                   f"Predictivity per layer, {backbone} · {task} ({part})", WIDE)
    colours = style.set_colours(list(combined), ctx.eval_set)
    ax = axes[0][0]
    runs = [r for r in ctx.neuron_runs() if (r.backbone, r.part, r.task) == (backbone, part, task)]
    baselines = {name: b for name in combined
                 if (b := next((majority_baseline(r, name) for r in runs if majority_baseline(r, name)), None))}
    style.per_layer_boxplot(ax, combined, colours, part, "score (max predictivity over positions), mean over seeds",
                            baselines)
    ax.set_title(f"{backbone} ({family_name(family)}) · {task}: predictivity per layer, clean vs adversarial")
    return ctx.save(fig, figure, "per_layer", rows)


@dataclass
class OverlapRun:
    """One run × adversarial set: overlap@n% of its clean and adversarial skill neurons and the predictivity of
    its clean top n% for each n, recomputed from the neuron files (``source``: "neuron files") or, when they are
    missing, as its ``summary.json`` recorded them (at the callback's percentages only)."""

    run: Run
    set: str
    source: str
    overlap: dict[float, float | None] = field(default_factory=dict)  # n -> overlap@n%
    adversarial_predictivity: dict[float, float | None] = field(default_factory=dict)  # n -> of the clean top n%
    clean_predictivity: float | None = None  # clean score of the clean top p% (p = the report's percent)

    def metrics(self, p: float) -> dict[str, float | None]:
        """The values by their names in ``summary.json`` and ``report.json``: ``overlap@5``, ``clean_top5_...``."""
        return {**{f"overlap@{n:g}": v for n, v in self.overlap.items()},
                **{f"clean_top{n:g}_predictivity": v for n, v in self.adversarial_predictivity.items()},
                f"clean_top{p:g}_clean_predictivity": self.clean_predictivity}

    def record(self, p: float) -> dict[str, Any]:
        run = self.run
        return {"run_id": run.run_id, "backbone": run.backbone, "family": run.family, "part": run.part,
                "task": run.task, "seed": run.seed, "set": self.set, "from": self.source, **self.metrics(p)}


@dataclass
class OverlapRow:
    """One backbone × part × task × adversarial set: each metric's mean and sd over the seeds' runs."""

    family: str
    backbone: str
    part: str
    task: str
    set: str
    runs: list[OverlapRun]
    stats: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # metric -> (mean, sd)

    def record(self) -> dict[str, Any]:
        out = {"backbone": self.backbone, "family": self.family, "part": self.part, "task": self.task,
               "set": self.set, "n": len(self.runs), "seeds": [r.run.seed for r in self.runs],
               "runs": [r.run.run_id for r in self.runs]}
        for metric, (mean, sd) in self.stats.items():
            out[f"{metric}_mean"], out[f"{metric}_sd"] = mean, sd
        return out


def overlap_of(ctx: Context, run: Run, name: str, percents: list[float], checks: list[str]) -> OverlapRun:
    """``run``'s overlap numbers for adversarial set ``name``; a recomputed number that differs from the one in
    its summary.json adds a line to ``checks``."""
    p = ctx.percent
    recorded = (run.neurons.get("sets") or {}).get(name, {})
    clean, adversarial = ctx.scores.score(run, ctx.eval_set), ctx.scores.score(run, name)
    if clean is None or adversarial is None or clean.shape != adversarial.shape:
        return OverlapRun(
            run, name, SUMMARY_FILE, overlap={n: recorded.get(f"overlap@{n:g}") for n in percents},
            adversarial_predictivity={n: recorded.get(f"clean_top{n:g}_predictivity") for n in percents},
            clean_predictivity=(run.neurons.get("sets") or {}).get(ctx.eval_set, {}).get(f"top{p:g}_mean"))
    sizing = sizing_of_run(ctx, run)  # as the run's callback sized them
    some = {n for n in percents if num_selected(clean.shape[1], n, sizing)}  # P1's int may give no unit: None
    row = OverlapRun(
        run, name, "neuron files",
        overlap={n: overlap_at(clean, adversarial, n, sizing) if n in some else None for n in percents},
        adversarial_predictivity={n: mean_of_top(clean, n, sizing, adversarial) if n in some else None
                                  for n in percents},
        clean_predictivity=mean_of_top(clean, p, sizing) if p in some else None)
    for metric, value in row.metrics(p).items():
        if None not in (value, recorded.get(metric)) and abs(recorded[metric] - value) > TOLERANCE:
            checks.append(f"{run.describe()} set {name}: recomputed {metric} = {value:.6f}, "
                          f"summary.json says {recorded[metric]:.6f}")
    return row


def overlap_section(ctx: Context, runs: list[Run]) -> Section:
    """overlap@n% of clean and adversarial skill neurons and the adversarial predictivity of the clean top n%,
    per run recomputed from the neuron files (summary.json's numbers when the files are missing), mean ± sd
    over seeds."""
    section = Section("overlap")
    p = ctx.percent
    percents = sorted({*OVERLAP_PERCENTS, p})
    checks: list[str] = []
    per_run = [overlap_of(ctx, run, name, percents, checks) for run in runs for name in ctx.adversarial_sets(run)]
    if not per_run:
        return section.leave_out(no_neuron_runs(ctx) if not runs else
                                 f"No adversarial skill-neuron analysis among the {len(runs)} runs analysed on "
                                 f"'{ctx.eval_set}' (their `skill_neurons` sets have no `adv/...` split; add an "
                                 "adversarial set to the task).")
    groups: dict[tuple, list[OverlapRun]] = defaultdict(list)
    for row in per_run:
        groups[(row.run.family, row.run.backbone, row.run.part, row.run.task, row.set)].append(row)
    rows = []
    for key, members in groups.items():
        row = OverlapRow(*key, runs=members)
        for metric in members[0].metrics(p):
            row.stats[metric] = mean_sd([v for m in members if (v := m.metrics(p)[metric]) is not None])
        rows.append(row)
    section.lines += [("Ours, per seed (the paper's seed-mean version is the section \"Overlap of clean and "
                       "adversarial skill neurons vs n\"): the numbers each run's SkillNeuronCallback wrote, recomputed "
                       "from its files as a check, with the callback's sizing: k = ceil(n/100 · N), or P1's "
                       "int(N/100 · n) for `paper` runs."), ""]
    section.lines += [(f"overlap@n% = |top-n% clean ∩ top-n% adversarial| / |top-n%| per layer, mean over layers "
                      f"(1.0: the same neurons; a random pick overlaps n/100 on average). \"adv. pred.\": mean "
                      f"adversarial score of the clean top-{p:g}% neurons; \"clean pred.\": their clean score. "
                      "Mean ± sd over seeds, recomputed from the neuron files."), ""]
    shown = [*(f"overlap@{n:g}" for n in percents), f"clean_top{p:g}_predictivity", f"clean_top{p:g}_clean_predictivity"]
    section.lines += markdown_table(
        ["backbone", "part", "task", "adversarial set", "seeds", *(f"overlap@{n:g}%" for n in percents),
         f"adv. pred. of clean top {p:g}%", f"clean pred. of clean top {p:g}%"],
        [[r.backbone, r.part, r.task, r.set, len(r.runs), *(fmt(*r.stats[m], digits=3) for m in shown)]
         for r in rows])
    section.figures.append(overlap_figure(ctx, rows, percents))
    section.lines += [f"![{section.figures[0].caption}](figures/{section.figures[0].path.name})", ""]
    from_summary = [r for r in per_run if r.source == SUMMARY_FILE]
    if from_summary:
        section.lines += [(f"{len(from_summary)} run/set pairs lack neuron files; their numbers are summary.json's "
                          "(at the callback's percentages only)."), ""]
    if checks:
        section.lines += [f"Check against summary.json: {c}" for c in checks]
    else:
        section.lines += [("Recomputed overlaps and adversarial predictivities match the runs' summary.json where "
                          "it has them.")]
    section.lines += [""]
    records, run_records = [r.record() for r in rows], [r.record(p) for r in per_run]
    section.tables["overlap"] = records
    section.tables["overlap_runs"] = run_records
    section.data.update(rows=records, runs=run_records, percents=percents, mismatches=checks)
    return section


def overlap_figure(ctx: Context, rows: list[OverlapRow], percents: list[float]) -> Figure:
    """overlap@n% vs n, one line per backbone × task × adversarial set (colour: family), ± sd."""
    fig, axes, figure = ctx.figure("overlap", "overlap@n% of clean and adversarial skill neurons, mean ± sd over "
                                   "seeds (dotted: expected overlap of random picks)", WIDE)
    ax = axes[0][0]
    drawn = [row for row in rows if all(row.stats[f"overlap@{n:g}"][0] is not None for n in percents)]
    for k, row in enumerate(drawn):  # every line its own colour and marker
        means = [row.stats[f"overlap@{n:g}"][0] for n in percents]
        sds = [row.stats[f"overlap@{n:g}"][1] or 0.0 for n in percents]
        colour, marker, line = style.series(k)
        ax.errorbar(percents, means, yerr=sds, color=colour, marker=marker, linestyle=line, capsize=3,
                    label=f"{row.backbone} · {row.task} · {row.set}")
    ax.plot(percents, [n / 100 for n in percents], ":", color=style.GREY, label="random (n/100)")
    ax.set_xlabel("n (% of units per layer)")
    ax.set_ylabel("overlap@n%")
    ax.set_ylim(0, 1.05)
    ax.set_title("Clean vs adversarial skill neurons: overlap@n% per backbone · task · adversarial set")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", ncol=1 + len(rows) // 16)
    return ctx.save(fig, figure, "overlap", [r.record() for r in drawn])


# ----------------------------------------------------------------------------- the report


