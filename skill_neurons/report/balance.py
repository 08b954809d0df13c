"""Class-balanced predictivity (beyond the paper): does the RoBERTa-vs-T5 comparison on adversarial data survive
when the class imbalance of the adversarial sets is taken out?

Raw predictivity ``max(acc, 1 − acc)`` of a unit that never changes equals the set's majority-class share
(AdvGLUE's binary MNLI: 50 of 82 rows), so raw adversarial predictivities are inflated exactly where the paper
compares clean and adversarial data. The balanced predictivity (``SkillNeuronCallback(balanced=True)``) uses
the mean of the per-class agreement rates: a constant unit scores 0.5."""

from __future__ import annotations

import numpy as np

from skill_neurons.report.analyses import adversarial_of_clean
from skill_neurons.report.base import Context, Section, family_name, fmt, markdown_table
from skill_neurons.report.paper import COLOURS, adversarial_pairs, embed, panels
from skill_neurons.report.seed_means import MARK, seed_means


def balanced_section(ctx: Context) -> Section:
    section = Section("balanced")
    means = seed_means(ctx)
    p = ctx.percent
    rows = []
    for task, name in adversarial_pairs(ctx, means):
        for mean in [m for m in means if m.task == task and name in m.sets]:
            if ctx.eval_set not in mean.balanced or name not in mean.balanced:
                continue
            raw = adversarial_of_clean(mean.sets[ctx.eval_set], mean.sets[name], p, mean.sizing)
            balanced = adversarial_of_clean(mean.balanced[ctx.eval_set], mean.balanced[name], p, mean.sizing)
            if not len(raw):
                continue
            rows.append({**mean.row(), "set": name, "percent": p, "k": len(raw), "raw_mean": float(raw.mean()),
                         "balanced_mean": float(balanced.mean()), "majority_baseline": mean.baselines.get(name),
                         "clean_majority_baseline": mean.baselines.get(ctx.eval_set)})
    if not rows:
        return section.leave_out(
            "No neuron files with a class-balanced predictivity: set `balanced: true` in the init_args of the "
            "SkillNeuronCallback in the run's config and rerun the analysis (`skill-neurons validate --from_run "
            "RUN`, or fit again).")
    section.lines += [
        "**Formula** (ours, beyond the paper): balanced accuracy bacc = (agreement rate on class-1 examples + "
        "agreement rate on class-0 examples) / 2 (one-vs-rest for more classes); balanced predictivity = max(bacc, "
        "1 − bacc): 0.5 for a unit that never changes, where the raw predictivity is the majority-class share "
        f"(\"baseline\"). Both columns: the mean adversarial score of the model-wide top {p:g}% clean skill neurons "
        "(seed means; as the histogram section), chosen by the raw and by the balanced clean score respectively.",
        ""]
    section.lines += markdown_table(
        ["backbone", "task", "adversarial set", "baseline (majority share)", "raw", "balanced", "raw − baseline"],
        [[r["backbone"], r["task"] + (MARK if r["missing_seeds"] else ""), r["set"],
          fmt(r["majority_baseline"], digits=3), f"{r['raw_mean']:.3f}", f"{r['balanced_mean']:.3f}",
          fmt(r["raw_mean"] - r["majority_baseline"], digits=3) if r["majority_baseline"] is not None else "—"]
         for r in rows])
    comparisons = []
    for task, name in dict.fromkeys((r["task"], r["set"]) for r in rows):
        members = {r["family"]: r for r in rows if (r["task"], r["set"]) == (task, name)}
        if {"masked_lm", "seq2seq"} <= set(members):
            t5, roberta = members["seq2seq"], members["masked_lm"]
            comparisons.append({"task": task, "set": name, "t5_backbone": t5["backbone"],
                                "roberta_backbone": roberta["backbone"],
                                "raw_difference": t5["raw_mean"] - roberta["raw_mean"],
                                "balanced_difference": t5["balanced_mean"] - roberta["balanced_mean"]})
    if comparisons:
        section.lines += [f"RoBERTa vs T5: {family_name('seq2seq')} minus {family_name('masked_lm')} adversarial "
                          "predictivity of the clean skill neurons, raw and balanced (a sign change means the "
                          "paper's comparison depends on the class shares):", ""]
        section.lines += markdown_table(
            ["task", "adversarial set", "T5 − RoBERTa (raw)", "T5 − RoBERTa (balanced)", "same sign"],
            [[c["task"], c["set"], f"{c['raw_difference']:+.3f}", f"{c['balanced_difference']:+.3f}",
              "yes" if np.sign(c["raw_difference"]) == np.sign(c["balanced_difference"]) else "**no**"]
             for c in comparisons])
    else:
        section.lines += ["Both families are needed for the RoBERTa-vs-T5 comparison; only "
                          f"{', '.join(sorted({family_name(r['family']) for r in rows}))} runs have balanced scores.",
                          ""]
    pairs = list(dict.fromkeys((r["task"], r["set"]) for r in rows))
    fig, axes, figure = panels(ctx, "balanced", f"Adversarial predictivity of the clean top-{p:g}% skill neurons, "
                               "raw vs class-balanced; dashed: majority-class share", len(pairs))
    for ax, (task, name) in zip(axes, pairs):
        members = [r for r in rows if (r["task"], r["set"]) == (task, name)]
        for k, row in enumerate(members):
            colour = COLOURS[k % len(COLOURS)]
            ax.bar([k - 0.2, k + 0.2], [row["raw_mean"], row["balanced_mean"]], 0.38, color=colour,
                   edgecolor="black", hatch=None)
            ax.bar([k + 0.2], [row["balanced_mean"]], 0.38, color="none", edgecolor="black", hatch="//")
            if row["majority_baseline"] is not None:
                ax.hlines(row["majority_baseline"], k - 0.4, k, colors="black", linestyles="--")
            ax.hlines(0.5, k, k + 0.4, colors="black", linestyles=":")
        ax.set_xticks(range(len(members)))
        ax.set_xticklabels([f"{r['backbone']}\nraw | balanced" for r in members], fontsize="small")
        ax.set_ylim(0.4, 1.0)
        ax.set_ylabel("predictivity")
        ax.set_title(f"{task} → {name}", fontsize="medium")
    fig.suptitle("Raw (plain) vs class-balanced (hatched) predictivity; dashed: majority share, dotted: 0.5",
                 fontsize="medium")
    embed(section, ctx.save(fig, figure, "balanced", rows))
    section.tables["balanced"] = rows
    section.tables["balanced_comparison"] = comparisons
    section.data.update(rows=rows, comparisons=comparisons, percent=p)
    return section
