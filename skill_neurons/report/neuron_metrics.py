"""Beyond the paper: the continuous neuron metrics beside P1's predictivity (``SkillNeuronCallback(correlations=
True)``), the selectivity of each unit across the tasks of the runs read (LAPE's entropy), and whether tasks whose
skill neurons overlap transfer their prompts better. Definitions with formulas: README, "Continuous neuron metrics".

The arithmetic is in plain functions (:func:`lape_entropy`, :func:`overlap_transfer_pairs`) that the tests hold to
independent computations on constructed inputs; the sections only gather the runs' tensors and draw.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from records.neuron_selection import Sizing, overlap_at, top_percent_mask
from skill_neurons.report.analyses import spearman_rho
from skill_neurons.report.base import SQUARE, TOLERANCE, Context, Section, family_name, markdown_table, slug
from records.figures import MARKERS
from skill_neurons.report.paper import COLOURS, embed, panels
from skill_neurons.report.seed_means import seed_means
from skill_neurons.report.transfer import relative_of

METRICS = ("label_correlation", "margin_correlation", "text_label_correlation", "text_margin_correlation")
NO_METRICS = ("No neuron files with the continuous metrics: set `correlations: true` in the init_args of the "
              "SkillNeuronCallback in the run's config and rerun the analysis (`skill-neurons validate --from_run "
              "RUN`, or fit again).")


# ----------------------------------------------------------------------------- arithmetic
def lape_entropy(probabilities: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """LAPE selectivity of every unit across K tasks from their (L, N) activation probabilities p_k:
    q_k = p_k / Σ_j p_j, H = −Σ_k q_k ln q_k (0 · ln 0 = 0); H = 0 for a unit active in one task only, ln K for
    one equally active in all. Returns H (L, N) and the mask of units defined (active in at least one task)."""
    p = np.stack([np.asarray(x, dtype=np.float64) for x in probabilities])  # (K, L, N)
    total = p.sum(axis=0)  # (L, N)
    defined = total > 0
    q = np.divide(p, total, out=np.zeros_like(p), where=defined[None])
    terms = np.where(q > 0, -q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return terms.sum(axis=0), defined


def overlap_transfer_pairs(scores: dict[str, np.ndarray], relative: dict[tuple[str, str], float], percent: float,
                           sizing: Sizing) -> list[dict]:
    """Every ordered task pair A → B (A ≠ B) with a relative transfer and scores of both: overlap@percent% of the
    two tasks' (L, N) scores (per layer, mean over layers; records.neuron_selection) beside relative(A → B)."""
    rows = []
    for (source, target), value in sorted(relative.items()):
        if source == target or value is None or source not in scores or target not in scores:
            continue
        overlap = overlap_at(torch.as_tensor(scores[source]), torch.as_tensor(scores[target]), percent, sizing)
        rows.append({"source": source, "target": target, "overlap": overlap, "relative": float(value)})
    return rows


# ----------------------------------------------------------------------------- gathering
def metric_means(ctx: Context, tensor: str):
    """Per seed mean (backbone × part × task): the mean over its runs of the clean set's (L, N) ``tensor``, or
    nothing for a configuration whose runs lack it."""
    out = []
    for mean in seed_means(ctx):
        values = [ctx.scores.score(run, ctx.eval_set, tensor) for run in mean.runs]
        if values and all(v is not None for v in values):
            out.append((mean, np.mean([v.numpy().astype(np.float64) for v in values], axis=0), mean.runs))
    return out


def by_backbone(items: list) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for item in items:
        groups[(item[0].backbone, item[0].part)].append(item)
    return groups


# ----------------------------------------------------------------------------- sections
def agreement_section(ctx: Context) -> Section:
    """Spearman ρ per layer between P1's score and each continuous metric's score, per run, averaged over runs."""
    section = Section("metric_agreement")
    rows, curves, mismatches = [], {}, []
    for mean in seed_means(ctx):
        for metric in METRICS:
            per_run = []
            for run in mean.runs:
                score = ctx.scores.score(run, ctx.eval_set)
                other = ctx.scores.score(run, ctx.eval_set, f"{metric}_score")
                if score is not None and other is not None:
                    per_run.append([spearman_rho(a, b) for a, b in zip(score.numpy(), other.numpy())])
                    recorded = ((run.neurons.get("sets") or {}).get(ctx.eval_set) or {}).get(f"agreement_{metric}")
                    mine = np.nanmean(per_run[-1]) if not np.isnan(per_run[-1]).all() else None
                    if recorded is not None and (mine is None or abs(recorded - mine) > TOLERANCE):
                        mismatches.append(f"{run.describe()} {metric}: summary.json {recorded:.6f}, recomputed "
                                          f"{'—' if mine is None else f'{mine:.6f}'}")
            if not per_run:
                continue
            layers = np.nanmean(np.array(per_run, dtype=np.float64), axis=0)  # (L,) mean over runs
            curves[(mean.backbone, mean.task, metric)] = layers
            rows.append({**mean.row(), "metric": metric, "rho_per_layer": layers.tolist(),
                         "mean_rho": float(np.nanmean(layers)), "runs_used": len(per_run)})
    if not rows:
        return section.leave_out(NO_METRICS)
    section.lines += [
        "**Formula** (ours, beyond the paper): per run and layer l, Spearman ρ between P1's per-unit score (max over "
        "positions of the predictivity) and the metric's per-unit score (max over positions and classes of |r|; the "
        "text variants: max over classes of |r| of the mean over the text tokens); the mean over the prompts (seeds), "
        "then over the layers. The same ρ per run is in its summary.json "
        "(`skill_neurons.sets.<set>.agreement_per_layer`) and W&B summary (`skill_neurons/<set>/agreement_<metric>`, "
        "the mean over layers).", ""]
    section.lines += markdown_table(
        ["backbone", "task", "metric", "ρ, mean over layers", "ρ per layer", "runs"],
        [[r["backbone"], r["task"], r["metric"], f"{r['mean_rho']:.3f}",
          " ".join("—" if np.isnan(v) else f"{v:.2f}" for v in r["rho_per_layer"]), r["runs_used"]] for r in rows])
    if mismatches:
        section.lines += ["Check against summary.json (`agreement_<metric>` recorded by the run): " +
                          "; ".join(mismatches), ""]
    section.data["mismatches"] = mismatches
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    fig, axes, figure = panels(ctx, "metric_agreement", "Spearman ρ per layer between P1's predictivity score and "
                               "each continuous metric (mean over tasks and seeds)", len(backbones))
    for ax, backbone in zip(axes, backbones):
        for k, metric in enumerate(METRICS):
            lines = [v for (b, _, m), v in curves.items() if b == backbone and m == metric]
            if lines:
                ax.plot(np.nanmean(lines, axis=0), color=COLOURS[k % len(COLOURS)], marker=MARKERS[k], label=metric)
        ax.axhline(0, color="black", linestyle=":", linewidth=1)
        ax.set_ylim(-1, 1)
        ax.set_xlabel("layer")
        ax.set_ylabel("Spearman ρ")
        ax.set_title(backbone, fontsize="medium")
        ax.legend(fontsize="small")
    embed(section, ctx.save(fig, figure, "metric_agreement", rows))
    section.tables["metric_agreement"] = rows
    return section


def selectivity_section(ctx: Context) -> Section:
    """LAPE entropy of every unit across the tasks of each backbone; the skill neurons' entropy beside all units'."""
    section = Section("selectivity")
    rows, histograms = [], {}
    for (backbone, part), items in by_backbone(metric_means(ctx, "activation_probability")).items():
        if len(items) < 2:
            continue
        entropy, defined = lape_entropy([p for _, p, _ in items])
        skill = [top_percent_mask(torch.as_tensor(m.sets[ctx.eval_set]), ctx.percent, m.sizing).numpy() & defined
                 for m, _, _ in items if ctx.eval_set in m.sets]
        skill_entropy = [float(entropy[s].mean()) for s in skill if s.any()]
        k = len(items)
        histograms[backbone] = (entropy[defined] / np.log(k), k)
        rows.append({"backbone": backbone, "family": items[0][0].family, "part": part,
                     "tasks": [m.task for m, _, _ in items],
                     "K": k, "ln_K": float(np.log(k)), "units_defined": int(defined.sum()),
                     "units_never_active": int((~defined).sum()), "mean_entropy": float(entropy[defined].mean()),
                     "mean_entropy_per_layer": [float(e[d].mean()) if d.any() else None
                                                for e, d in zip(entropy, defined)],
                     "skill_mean_entropy": float(np.mean(skill_entropy)) if skill_entropy else None,
                     "percent": ctx.percent, "runs": [r.run_id for _, _, runs in items for r in runs]})
    if not rows:
        return section.leave_out(NO_METRICS if not metric_means(ctx, "activation_probability") else
                                 "Needs the activation probabilities of at least two tasks of one backbone.")
    section.lines += [
        "**Formula** (ours, after LAPE, Tang et al. 2024): p_k[l,i] = the share of task k's clean evaluation examples "
        "× analysed positions where the unit's activation is > 0 (mean over the task's prompts); q_k = p_k / Σ_j p_j "
        "over the K tasks of the backbone; H = −Σ_k q_k ln q_k (0 for a unit active in one task only, ln K for one "
        f"equally active in all; units never active are left out). Skill neurons: each task's top {ctx.percent:g}% per "
        "layer by its seed-mean score; their mean H, averaged over the tasks.", ""]
    section.lines += markdown_table(
        ["backbone", "tasks (K)", "ln K", "mean H (all units)", f"mean H (top {ctx.percent:g}% skill neurons)",
         "units never active"],
        [[r["backbone"], f"{', '.join(r['tasks'])} ({r['K']})", f"{r['ln_K']:.3f}", f"{r['mean_entropy']:.3f}",
          "—" if r["skill_mean_entropy"] is None else f"{r['skill_mean_entropy']:.3f}", r["units_never_active"]]
         for r in rows])
    fig, axes, figure = panels(ctx, "selectivity", "Entropy H / ln K of each unit's activation probability across "
                               "tasks (0: one task only, 1: all tasks alike)", len(histograms))
    for k, (ax, (backbone, (values, tasks))) in enumerate(zip(axes, histograms.items())):
        ax.hist(values, bins=np.linspace(0, 1, 21), color=COLOURS[k % len(COLOURS)], edgecolor="black")
        ax.set_xlabel(f"H / ln K (K = {tasks} tasks)")
        ax.set_ylabel("units")
        ax.set_title(backbone, fontsize="medium")
    embed(section, ctx.save(fig, figure, "selectivity", rows))
    section.tables["selectivity"] = rows
    return section


def transfer_cells(ctx: Context) -> dict[str, dict[tuple[str, str], float]]:
    """Per backbone: relative transfer (A, B) -> mean over seeds of 100 · acc(A→B) / acc(B→B) (the transfer
    section's cells, from :func:`skill_neurons.report.transfer.relative_of`)."""
    fits = ctx.of_kind("fit")
    values: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in ctx.of_kind("transfer"):
        info = run.summary.get("transfer") or {}
        source = info.get("source_task") or (run.summary.get("prompt_source") or {}).get("task")
        target = info.get("target_task") or run.task
        relative = relative_of(run, fits)[0]
        if source is not None and relative is not None:
            values[run.backbone][(source, target)].append(relative)
    return {b: {pair: float(np.mean(v)) for pair, v in cells.items()} for b, cells in values.items()}


def overlap_transfer_section(ctx: Context) -> Section:
    """Per backbone, every task pair: the overlap of their skill neurons vs the relative prompt transfer."""
    section = Section("overlap_transfer")
    cells, means = transfer_cells(ctx), seed_means(ctx)
    groups = []
    for backbone, relative in cells.items():
        members = [m for m in means if m.backbone == backbone and m.part == "encoder" and ctx.eval_set in m.sets]
        if not members:
            continue
        pairs = overlap_transfer_pairs({m.task: m.sets[ctx.eval_set] for m in members}, relative, ctx.percent,
                                       members[0].sizing)
        if pairs:
            rho = spearman_rho([p["overlap"] for p in pairs], [p["relative"] for p in pairs])
            groups.append({"backbone": backbone, "family": members[0].family, "pairs": pairs, "n": len(pairs),
                           "rho": None if np.isnan(rho) else rho, "percent": ctx.percent,
                           "runs": [r.run_id for m in members for r in m.runs]})
    if not groups:
        return section.leave_out("Needs transfer runs (task A's prompt on task B) and the skill-neuron analyses of "
                                 "both tasks' prompts on the same backbone.")
    section.lines += [
        f"**Formula**: overlap@{ctx.percent:g}% of tasks A and B = |top(A) ∩ top(B)| / |top| per layer, mean over "
        "layers, from each task's seed-mean clean score (encoder units); relative transfer = 100 · acc(A→B) / "
        "acc(B→B), the mean over seeds (as the transfer section). Every ordered pair A ≠ B with both; Spearman's ρ "
        "over the pairs of one backbone (— with fewer than two distinct values).", ""]
    section.lines += markdown_table(
        ["backbone", "pairs", "Spearman ρ (overlap, relative transfer)"],
        [[g["backbone"], g["n"], "—" if g["rho"] is None else f"{g['rho']:.3f}"] for g in groups])
    for k, group in enumerate(groups):
        fig, axes, figure = ctx.figure(slug("overlap_transfer", group["backbone"]), f"Skill-neuron overlap vs "
                                       f"relative transfer, {group['backbone']}", SQUARE)
        ax = axes[0][0]
        x, y = [p["overlap"] for p in group["pairs"]], [p["relative"] for p in group["pairs"]]
        ax.scatter(x, y, color=COLOURS[k % len(COLOURS)], marker=MARKERS[k % len(MARKERS)], edgecolor="black")
        for p in group["pairs"]:
            ax.annotate(f"{p['source']}→{p['target']}", (p["overlap"], p["relative"]), fontsize="x-small")
        ax.set_xlabel(f"overlap@{ctx.percent:g}% of the two tasks' skill neurons")
        ax.set_ylabel("relative transfer (%)")
        rho = "—" if group["rho"] is None else f"{group['rho']:.2f}"
        ax.set_title(f"{group['backbone']} ({family_name(group['family'])}): Spearman ρ = {rho}, {group['n']} pairs")
        embed(section, ctx.save(fig, figure, "overlap_transfer", [group]))
    section.tables["overlap_transfer"] = [{**{k: v for k, v in g.items() if k != "pairs"}, "pair": p}
                                          for g in groups for p in g["pairs"]]
    return section
