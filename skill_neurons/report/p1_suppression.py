"""P1's suppression curves under ``--definitions p1-code`` (``src/analysis.py::get_perturbation_accuracy_runs``,
``get_lineplots_perturbation``; units from ``src/utils.py::init_mask`` with ``--adv_nonAdv True``).

P1's ``_sn_`` runs load the *other* set's skill neurons: its clean curve suppresses the adversarial set's
seed-mean skill neurons, its adversarial curve the clean set's. Here the clean curve comes from suppression runs
with ``suppression.eval_set=<adversarial set>`` (their ``validation`` accuracy: ``adversarial_neurons: clean``
applies the ``eval_set`` neurons on every loader), the adversarial curve from runs with the clean neurons
(``eval_set: validation``, their adversarial accuracy). P1 draws the random control of adversarial data
separately (``init_mask`` loads ``random_neuron_across_layer/Adv….npy``): here the adversarial random curve
comes from runs with another ``suppression.seed`` than the clean random curve's, when there are any."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from records.neuron_selection import top_percent_mask
from skill_neurons.report import p1_code
from skill_neurons.report.base import Context, Section, fmt, markdown_table, pct, validate_accuracies
from skill_neurons.report.p1_common import DOC, note, p1_seed_means
from skill_neurons.report.seed_means import seed_means
from skill_neurons.report.suppression import neuron_source

CLEAN = "validation"


def p1_runs(ctx: Context) -> list:
    """Suppression runs in P1's setting: zeroed units, the task's seed-mean skill neurons, and the neurons of
    ``eval_set`` on every loader (``adversarial_neurons: clean``)."""
    return [r for r in ctx.of_kind("suppression") if neuron_source(r.summary["suppression"]) == "seed_mean"
            and r.summary["suppression"].get("adversarial_neurons", "clean") == "clean"
            and r.summary["suppression"].get("perturbation", "zero") == "zero"]


def setting(run, key: str):
    info = run.summary["suppression"]
    return {"eval_set": info.get("eval_set") or CLEAN, "seed": int(info.get("seed") or 0),
            "rate": float(info.get("rate", 0)), "selection": str(info.get("selection"))}[key]


def curve_points(runs: list, evaluated: str) -> dict[float, list[float]]:
    """Rate -> accuracy (%) on ``evaluated`` per prompt, one run per prompt (seed) and rate (the first by
    ``eval_set: validation``, then run id): ``get_perturbation_accuracy_runs``'s per-seed values."""
    seen, points = set(), defaultdict(list)
    for run in sorted(runs, key=lambda r: (setting(r, "eval_set") != CLEAN, r.run_id)):
        value = validate_accuracies(run).get(evaluated)
        if value is not None and (run.seed, setting(run, "rate")) not in seen:
            seen.add((run.seed, setting(run, "rate")))
            points[setting(run, "rate")].append(pct(value))
    return points


def curves(runs: list) -> tuple[list[dict], list[str]]:
    """The rows of P1's curves per backbone × task × adversarial set, and what report.md says about their runs."""
    rows, lines = [], []
    groups: dict[tuple, list] = defaultdict(list)
    for run in runs:
        groups[(run.backbone, run.task)].append(run)
    for (backbone, task), members in sorted(groups.items()):
        sets = sorted({s for r in members for s in validate_accuracies(r)} - {CLEAN})
        skill = [r for r in members if setting(r, "selection") == "skill"]
        random = [r for r in members if setting(r, "selection") == "random"]
        seeds = sorted({setting(r, "seed") for r in random})
        clean_seed, adv_seed = (seeds[0], seeds[1] if len(seeds) > 1 else seeds[0]) if seeds else (None, None)
        for name in sets:
            plan = [(f"clean ({name} neurons)", CLEAN, "skill", [r for r in skill if setting(r, "eval_set") == name]),
                    (f"{name} (clean neurons)", name, "skill", [r for r in skill if setting(r, "eval_set") == CLEAN]),
                    ("clean (random)", CLEAN, "random", [r for r in random if setting(r, "seed") == clean_seed]),
                    (f"{name} (random)", name, "random", [r for r in random if setting(r, "seed") == adv_seed])]
            for curve, evaluated, selection, chosen in plan:
                if curve == "clean (random)" and name != sets[0]:
                    continue  # one clean random curve per task
                for rate, values in sorted(curve_points(chosen, evaluated).items()):
                    rows.append({"backbone": backbone, "task": task, "set": name, "curve": curve,
                                 "evaluated": evaluated, "selection": selection, "rate": rate,
                                 "suppression_seed": clean_seed if curve == "clean (random)" else (
                                     adv_seed if selection == "random" else None),
                                 "n": len(values), "mean": float(np.mean(values)), "sem": p1_code.p1_sem(values)})
            if not any(r["curve"] == f"clean ({name} neurons)" and r["task"] == task and r["backbone"] == backbone
                       for r in rows):
                lines.append(f"- {backbone} · {task}: **Not computed:** P1's clean curve ({name} neurons on clean "
                             f"data) — no run with `suppression.eval_set={name}` (write them with "
                             "`python configs/make_configs.py ... --p1_code`).")
        if seeds:
            lines.append(f"- {backbone} · {task}, random control: clean curve `suppression.seed={clean_seed}`, "
                         f"adversarial curve `suppression.seed={adv_seed}`" + (
                             "" if adv_seed != clean_seed else " — only one random draw: the adversarial random "
                             "curve shares the clean one's draw, unlike P1 (a separate `Adv…` random file)") + ".")
    return rows, lines


def suppression_p1(ctx: Context) -> Section:
    section = Section("paper_suppression")
    runs = p1_runs(ctx)
    if not runs:
        return section.leave_out("No suppression runs with `neuron_source: seed_mean`, `adversarial_neurons: "
                                 "clean` and `perturbation: zero` (P1's setting).")
    rows, lines = curves(runs)
    section.lines += [
        "**P1 `get_perturbation_accuracy_runs`, `get_lineplots_perturbation`, `src/utils.py::init_mask`** "
        "(`--definitions p1-code`): P1's `_sn_` runs use `--adv_nonAdv True`, so its *clean* curve suppresses the "
        "adversarial set's seed-mean skill neurons (runs with `suppression.eval_set=<adversarial set>`, their "
        "clean accuracy) and its *adversarial* curve the clean set's (runs with `eval_set: validation`); P1's "
        "random control for adversarial data is a separate draw (runs with another `suppression.seed`). Mean ± "
        "s.e.m. (`get_sem`) over the prompts (seeds), accuracy in %. Unit sets: per layer the first int(N/100·r) "
        "units of P1's `argsort()[::-1]` order of P1's float64 seed mean; ours: the runs' selection "
        f"(`records/neuron_selection.py`). See {DOC}.", "", *lines, ""]
    section.lines += markdown_table(["backbone", "task", "curve", "rate (%)", "seeds", "accuracy (%)"],
                                    [[r["backbone"], r["task"], r["curve"], f"{r['rate']:g}", r["n"],
                                      fmt(r["mean"], r["sem"])] for r in rows])
    units = unit_rows(ctx, sorted({setting(r, "rate") for r in runs}))
    section.lines += markdown_table(["backbone", "task", "curve", "rate (%)", "units P1", "units ours", "shared"],
                                    [[u["backbone"], u["task"], u["curve"], f"{u['rate']:g}", u["units_p1"],
                                      u["units_ours"], u["shared"]] for u in units])
    section.tables["paper_suppression"] = rows
    computed = {r["curve"] for r in rows}
    section.data.update(rows=rows, units=units, p1_function="get_perturbation_accuracy_runs",
                        not_computed=[line for line in lines if "Not computed" in line],
                        clean_curve_computed=any(c.startswith("clean (") and c != "clean (random)" for c in computed))
    return section


def unit_rows(ctx: Context, rates: list[float]) -> list[dict]:
    """Per backbone × task × curve × rate: P1's suppressed units (count, digest) and how many of them the
    project's suppression runs select (:func:`records.neuron_selection.top_percent_mask` of the seed mean of
    the runs' ``eval_set``: the adversarial set's for the clean curve, the clean set's for the adversarial one)."""
    rows = []
    for m, plain in zip(p1_seed_means(ctx), seed_means(ctx)):
        for name in [s for s in m.sets if s != ctx.eval_set]:
            for curve, neurons in ((f"clean ({name} neurons)", name), (f"{name} (clean neurons)", ctx.eval_set)):
                for rate in rates:
                    p1 = p1_code.suppressed_units(m.sets[neurons], rate)
                    mask = top_percent_mask(torch.from_numpy(plain.sets[neurons]), rate, m.sizing).numpy()
                    ours = [set(np.flatnonzero(row).tolist()) for row in mask]
                    shared = sum(len(set(a.tolist()) & b) for a, b in zip(p1, ours))
                    rows.append({"backbone": m.backbone, "task": m.task, "set": name, "curve": curve, "rate": rate,
                                 "units_p1": int(p1.size), "units_ours": sum(map(len, ours)), "shared": shared,
                                 "digest_p1": p1_code.units_digest(p1)})
                    if shared != p1.size or p1.size != sum(map(len, ours)):
                        note(ctx, "suppression units", f"{m.backbone} · {m.task} · {curve}, r = {rate:g}",
                             sum(map(len, ours)), int(p1.size), f"{shared} shared: P1 picks by argsort()[::-1] in "
                             "float64 (and sizes with int() where the runs do not)")
    return rows
