"""``skill-neurons report``: one markdown report, with PNG figures and a JSON twin, over many runs.

    skill-neurons report runs/ --out report/                       # every run below runs/
    skill-neurons report runs/ab12cd34 runs/ef56gh78 --out report/ --percent 10 --wandb
    skill-neurons report my-team/skill-neurons/ab12cd34 --out report/   # W&B runs by path (online only)

Reads the ``summary.json`` of each run (a run directory, a folder searched recursively, or the file itself;
W&B run paths ``entity/project/run_id`` are read through ``wandb.Api`` and converted to the same structure,
see :func:`read_wandb_run`) and the skill-neuron files next to it (``<run>/skill_neurons/<set>.safetensors``),
and writes

* ``DIR/report.md``: the sections below, markdown tables, figures linked as ``figures/<name>.png``;
* ``DIR/report.json``: every number of the tables (accuracies in %, predictivities and overlaps as
  fractions), per section, with the runs each number comes from;
* ``DIR/figures/*.png``: ``WIDE`` (1200 × 600 px) line/bar/box plots, ``SQUARE`` (800 × 800 px) heat maps;
* with ``--wandb``: a W&B run (job type ``report``) with the figures as ``wandb.Image``, the tables as
  ``wandb.Table`` and the report folder as an artifact; offline (``DIR/wandb/offline-run-*``) without
  credentials, as the training CLI does.

Sections (METHOD.md, "Experiments built on it"), each replaced by one line saying why when its runs are
missing, in :data:`report_base.TITLES` order: runs read; accuracy; transfer (:mod:`report_transfer`); the paper's
neuron analyses computed as P1 computes them (:mod:`report_paper`, :mod:`report_spearman`, numbers from
:mod:`report_analyses`, seed means from :mod:`report_seed_means`); suppression (:mod:`report_suppression` and the
per-backbone detail here); class-balanced predictivity (:mod:`report_balance`); our per-seed variants (per-layer
boxes, per-seed overlap checked against ``summary.json``). Before any section, :func:`report_seed_means.check_inputs`
refuses runs of mixed layouts / analysed positions and neuron files of different shapes for one backbone.

Run kinds: a run with a ``suppression`` section is a suppression run; one with ``transfer`` (and no
``suppression``) a transfer run; otherwise its ``stage`` (fit / validate / test). The neuron sections use
one analysis per prompt: runs with a skill-neuron analysis of the clean set ``--eval-set`` (suppression and
transfer runs excluded, their prompts are perturbed or foreign), one per backbone × part × task × seed,
fit runs preferred.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from callbacks.neuron_statistics import mean_over_prompts, mean_predictivity_of, overlap_at, top_percent_mask
from callbacks.run_summary import SUMMARY_FILE
from callbacks.neuron_files import OUTPUT_DIR, set_name
from callbacks.skill_neurons import per_layer_boxplot
from lightning_modules.report_balance import balanced_section
from lightning_modules.report_base import (  # noqa: F401 (WIDE, SQUARE, TITLES: re-exported for callers)
    FAMILY_ORDER,
    OVERLAP_PERCENTS,
    SQUARE,
    TITLES,
    TOLERANCE,
    WIDE,
    Context,
    Figure,
    Inputs,
    ReportError,
    Run,
    Section,
    family_name,
    family_rank,
    fit_accuracies,
    fmt,
    markdown_table,
    mean_sd,
    mean_sem,
    mixed_settings,
    pct,
    seed_label,
    seed_rank,
    slug,
    test_accuracies,
    validate_accuracies,
)
from lightning_modules.report_paper import boxes_section, histogram_section, location_section
from lightning_modules.report_paper import overlap_section as paper_overlap_section
from lightning_modules.report_seed_means import check_inputs, majority_baseline
from lightning_modules.report_spearman import spearman_seeds_section, spearman_tasks_section
from lightning_modules.report_suppression import neuron_source, paper_suppression_section
from lightning_modules.report_transfer import transfer_section

SKIP_DIRS = {"wandb", "checkpoints", OUTPUT_DIR, "__pycache__", "node_modules"}
WANDB_PATH = re.compile(r"^(?:https?://[^/]+/)?([\w.-]+)/([\w.-]+)/(?:runs/)?([\w-]+)/?$")
# ----------------------------------------------------------------------------- runs


def find_summaries(path: Path) -> list[Path]:
    """summary.json files at ``path``: the file itself, a run directory's, or all below a folder (a folder
    holding summary.json is a run: its subfolders are not searched; W&B and checkpoint folders are skipped)."""
    if path.is_file():
        return [path]
    if (path / SUMMARY_FILE).is_file():
        return [path / SUMMARY_FILE]
    found = []
    for folder, subfolders, files in os.walk(path):
        if SUMMARY_FILE in files:
            found.append(Path(folder) / SUMMARY_FILE)
            subfolders[:] = []
            continue
        subfolders[:] = sorted(d for d in subfolders if d not in SKIP_DIRS and not d.startswith("."))
    return found


def read_runs(arguments: list[str], download_dir: Path) -> Inputs:
    """Read every run the arguments name; raise :class:`ReportError` for a path that does not exist (and is
    not a W&B run path) or when no run summary is found at all."""
    runs: list[Run] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for argument in arguments:
        path = Path(argument)
        if not path.exists():
            match = WANDB_PATH.match(argument)
            if match is None or argument.startswith((".", "/", "~")):
                raise ReportError(f"{argument} does not exist — pass run directories (runs/<id>), folders that "
                                  "hold them, summary.json files, or W&B run paths entity/project/run_id")
            runs.append(read_wandb_run("/".join(match.groups()), download_dir))
            continue
        for file in find_summaries(path):
            key = str(file.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                summary = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                invalid.append(f"`{file}`: not valid JSON ({error})")
                continue
            if not isinstance(summary, dict) or not isinstance(summary.get("settings"), dict):
                invalid.append(f"`{file}`: not a run summary (no `settings` section)")
                continue
            runs.append(Run(summary, file.parent, str(file)))
    if not runs:
        also = f"; skipped {len(invalid)} files that are not run summaries: {', '.join(invalid)}" if invalid else ""
        raise ReportError(f"no run summaries (summary.json) found in {' '.join(arguments)}{also} — pass run "
                          "directories (runs/<id>) or folders that hold them")
    return Inputs(runs, invalid, list(arguments))


# ----------------------------------------------------------------------------- W&B runs by path (online only)


def read_wandb_run(path: str, download_dir: Path) -> Run:
    """Read an online W&B run (``entity/project/run_id``) into the structure of a local ``summary.json``.

    Best effort, as W&B keeps less than ``summary.json``: settings from the ``run.*`` config keys, ``best``
    from the ``best/*`` summary keys, the stage's metrics from the other numeric summary keys, labels and
    task type from the built-in task declaration, ``suppression`` / ``transfer`` / ``prompt_source`` from
    config keys with those prefixes, and the neuron files from the run's ``skill-neurons`` artifact
    (downloaded to ``download_dir/<run id>/skill_neurons``). Needs W&B credentials and network."""
    import wandb

    reason = None
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        reason = f"WANDB_MODE={os.environ['WANDB_MODE']}"
    else:
        from lightning_modules.cli import wandb_has_credentials

        if not wandb_has_credentials():
            reason = "no W&B credentials (WANDB_API_KEY or ~/.netrc)"
    if reason is None:
        try:
            api_run = wandb.Api(timeout=30).run(path)
            config, metrics = dict(api_run.config), dict(api_run.summary_metrics or {})
            state, run_id = api_run.state, api_run.id
            artifacts = [a for a in api_run.logged_artifacts() if a.type == "skill-neurons"]
        except Exception as error:  # noqa: BLE001 (network, permissions, unknown run: one message)
            reason = f"{type(error).__name__}: {error}"
    if reason is not None:
        raise ReportError(f"cannot reach W&B to read run {path} — pass local run directories ({reason}; no local "
                          f"path {path!r} exists either)")
    directory = download_dir / run_id
    for artifact in artifacts[-1:]:
        artifact.download(root=str(directory / OUTPUT_DIR))
    summary = summary_from_wandb(run_id, state, config, metrics)
    summary["run_dir"] = str(directory)
    return Run(summary, directory, f"wandb:{path}")


def summary_from_wandb(run_id: str, state: str, config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` structure of a W&B run from its config and summary (see :func:`read_wandb_run`)."""
    keys = ("backbone", "family", "task", "seed", "prompt_length", "learning_rate", "precision", "world_size")
    settings = {k: config.get(f"run.{k}") for k in keys}
    settings["task"] = settings["task"] or config.get("data.task")
    settings["seed"] = settings["seed"] if settings["seed"] is not None else config.get("seed_everything")
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("_")}
    best = {k[len("best/"):]: v for k, v in numbers.items() if k.startswith("best/")}
    stage = "fit" if best else "test" if any(k.startswith("test/") for k in numbers) else "validate"
    data: dict[str, Any] = {"task": settings["task"]}
    try:
        from datamodules.tasks import get_task

        spec = get_task(settings["task"])
        data.update(task_type=spec.type, label_names=list(spec.label_names))
    except Exception:  # noqa: BLE001, S110 (a user's task: labels unknown, so no chance level)
        pass
    summary: dict[str, Any] = {
        "run_id": run_id, "stage": stage, "status": "finished" if state == "finished" else str(state),
        "settings": settings, "config": config, "data": data,
        f"{stage}_metrics": {k: v for k, v in numbers.items() if not k.startswith("best/")},
    }
    if best:
        summary["best"] = best
    for section in ("suppression", "transfer", "prompt_source"):
        values = {k[len(section) + 1:]: v for k, v in config.items() if k.startswith(f"{section}.")}
        if values:
            summary[section] = values
    sets: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, value in numbers.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "skill_neurons":
            sets[parts[1]][parts[2]] = value
    if sets:
        clean = "test" if stage == "test" else "validation"
        for name, values in sets.items():
            values["split"] = name if name == clean else f"adv/{name}"
        summary["skill_neurons"] = {"backbone": settings["backbone"], "family": settings["family"],
                                    "task": settings["task"], "part": config.get("part", "encoder"),
                                    "sets": dict(sets)}
    return summary


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
    if any(r.kind == "validate" for r in ctx.finished):
        section.lines += [("Plain `validate` runs enter only the skill-neuron sections (when they analysed "
                          f"'{ctx.eval_set}' and no fit run analysed the same prompt)."), ""]
    if unfinished:
        section.lines += ["Unfinished runs (status is not `finished`), skipped:", ""]
        section.lines += [f"- {r.describe()}: status `{r.summary.get('status')}`" for r in unfinished] + [""]
    if ctx.inputs.invalid:
        section.lines += ["Files skipped (not run summaries):", ""]
        section.lines += [f"- warning: {line}" for line in ctx.inputs.invalid] + [""]
    rows = [{"run_id": r.run_id, "kind": r.kind, "status": r.summary.get("status"), "backbone": r.backbone,
             "family": r.family, "task": r.task, "seed": r.seed, "source": r.source} for r in ctx.runs]
    section.lines += ["<details><summary>All runs</summary>", ""]
    section.lines += markdown_table(["run", "kind", "status", "backbone", "task", "seed"],
                                    [[f"`{r['run_id']}`", r["kind"], r["status"], r["backbone"], r["task"],
                                      seed_label(r["seed"])] for r in rows])
    section.lines += ["</details>", ""]
    section.tables["runs"] = rows
    section.data.update(read=len(ctx.runs), finished=len(ctx.finished),
                        by_kind={k: {"finished": v[0], "unfinished": v[1]} for k, v in counts.items()},
                        unfinished=[r.run_id for r in unfinished], invalid=list(ctx.inputs.invalid))
    return section


# --- accuracy


def accuracy_rows(ctx: Context, runs: list[Run], read: Callable[[Run], dict[str, float]], clean: str,
                  stage: str, notes: list[str]) -> list[dict[str, Any]]:
    """One row per backbone × task × evaluation set: accuracies in %, mean ± sd over the runs (seeds).
    Groups that mix settings other than the seed get a line in ``notes``."""
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
        for name in [clean, *sorted(n for n in values if n != clean)]:
            if name not in values:
                continue
            numbers = [v for _, v in values[name]]
            mean, sd = mean_sd(numbers)
            rows.append({"stage": stage, "backbone": backbone, "family": family, "task": task,
                         "task_type": ctx.task_types().get(task), "set": name,
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
                          adv["set"] if adv else "—", accuracy_cell(adv)])
    return markdown_table(["backbone", "task (type)", "seeds", "chance", f"clean ({clean})", "adversarial set",
                           "adversarial"], table)


def accuracy_section(ctx: Context) -> Section:
    """Backbone × task accuracy of fit runs' best epoch (and of test runs), clean vs each adversarial set."""
    section = Section("accuracy")
    fits, tests = ctx.of_kind("fit"), ctx.of_kind("test")
    notes: list[str] = []
    rows = accuracy_rows(ctx, fits, fit_accuracies, "validation", "fit", notes)
    test_rows = accuracy_rows(ctx, tests, test_accuracies, "test", "test", notes)
    if not rows and not test_rows:
        return section.leave_out(
            f"No finished fit runs with a best epoch among the {len(ctx.runs)} runs read (the table uses `best` "
            "of summary.json, the epoch with the best clean `val/acc`; runs come from `skill-neurons fit`).")
    section.lines += [("**Formula** (P1 `src/analysis.py::get_results`, `get_mean_std`): accuracy in %, mean ± sd "
                      "over seeds, at each fit run's best epoch (the epoch with the best clean validation accuracy). "
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
    """Grouped bars per backbone × task: clean and adversarial accuracy (± sd), chance marked."""
    fig, axes, figure = ctx.figure("accuracy", "Accuracy (%) at the best epoch, clean vs adversarial, mean ± sd "
                                   "over seeds; black lines: chance", WIDE)
    ax = axes[0][0]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["backbone"], row["task"])].append(row)
    adversarial_colours = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
    labelled = set()
    for x, ((backbone, task), members) in enumerate(groups.items()):
        width = 0.8 / len(members)
        for k, row in enumerate(members):
            colour = "tab:blue" if row["kind"] == "clean" else adversarial_colours[(k - 1) % len(adversarial_colours)]
            label = "clean" if row["kind"] == "clean" else row["set"]
            ax.bar(x - 0.4 + width * (k + 0.5), row["mean"], width * 0.9, yerr=row["sd"] or 0, color=colour,
                   capsize=3, label=None if label in labelled else label)
            labelled.add(label)
        if members[0]["chance"] is not None:
            ax.hlines(members[0]["chance"], x - 0.45, x + 0.45, colors="black", linewidth=1.2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{b}\n{t}" for b, t in groups], fontsize="small")
    ax.set_xlim(-0.6, max(len(groups), 4) - 0.4)  # a few groups do not stretch over the whole width
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy at the best epoch: clean vs adversarial")
    ax.legend(loc="lower right", fontsize="small")
    return ctx.save(fig, figure)


# --- transfer


def suppression_section(ctx: Context) -> Section:
    """Accuracy vs suppression rate, skill vs random units, clean and adversarial, mean ± s.e.m. over seeds."""
    section = Section("suppression")
    runs = ctx.of_kind("suppression")
    if not runs:
        return section.leave_out(
            f"No suppression runs among the {len(ctx.runs)} runs read (runs with a `suppression` section come "
            "from `skill-neurons validate ... --suppression.*`).")
    section.lines += [("Accuracy in % vs the share of units suppressed per layer, the prompt's skill neurons vs "
                      "the same number of random units; mean ± s.e.m. (sample sd / √n) over seeds (prompt seeds "
                      "and, for random units, their seeds). Rate 0 is the unperturbed prompt."), ""]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        info = run.summary["suppression"]
        std = info.get("std") if info.get("perturbation") == "gaussian" else None
        groups[(run.family, run.backbone, run.task, info.get("perturbation", "zero"), std,
                info.get("part", "encoder"), info.get("adversarial_neurons", "clean"), neuron_source(info))].append(run)
    order = ctx.task_order({k[2] for k in groups})
    rows = []
    for key in sorted(groups, key=lambda k: (family_rank(k[0]), k[1], order.index(k[2]), str(k[3:]))):
        family, backbone, task, perturbation, std, part, adversarial_neurons, source = key
        members = groups[key]
        chance = next((r.chance for r in members if r.chance is not None), None)
        points: dict[tuple[str, float, str], list[tuple[Run, float]]] = defaultdict(list)
        for run in members:
            info = run.summary["suppression"]
            for name, value in validate_accuracies(run).items():
                points[(str(info.get("selection")), float(info.get("rate", 0.0)), name)].append((run, pct(value)))
        sets = ["validation", *sorted({k[2] for k in points} - {"validation"})]
        group_rows = []
        for selection, rate, name in sorted(points, key=lambda k: (k[0] != "skill", k[0], k[1], sets.index(k[2]))):
            numbers = [v for _, v in points[(selection, rate, name)]]
            mean, sem = mean_sem(numbers)
            group_rows.append({"backbone": backbone, "family": family, "task": task, "perturbation": perturbation,
                               "std": std, "part": part, "adversarial_neurons": adversarial_neurons,
                               "neuron_source": source,
                               "selection": selection, "rate": rate, "set": name,
                               "kind": "clean" if name == "validation" else "adversarial", "n": len(numbers),
                               "seeds": [r.seed for r, _ in points[(selection, rate, name)]],
                               "runs": [r.run_id for r, _ in points[(selection, rate, name)]],
                               "values": numbers, "mean": mean, "sem": sem, "chance": chance})
        rows += group_rows
        what = f"{perturbation}" + (f" (std {std:g})" if std is not None else "")
        title = (f"{backbone} · {task} · {what} · {part} units · neurons: {source} · adversarial sets suppress the "
                 f"{adversarial_neurons} skill neurons")
        section.lines += [f"### {title}", ""]
        table: dict[tuple[str, float], dict[str, dict]] = defaultdict(dict)
        for row in group_rows:
            table[(row["selection"], row["rate"])][row["set"]] = row
        section.lines += markdown_table(
            ["selection", "rate (% per layer)", "seeds", *[f"{s} (clean)" if s == "validation" else s for s in sets]],
            [[selection, f"{rate:g}", max(r["n"] for r in cells.values()),
              *(fmt(cells[s]["mean"], cells[s]["sem"]) if s in cells else "—" for s in sets)]
             for (selection, rate), cells in table.items()])
        figure = suppression_figure(ctx, key, title, sets, group_rows, chance)
        section.figures.append(figure)
        section.lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]
    section.lines += rate_zero_check(ctx, runs)
    section.tables["suppression"] = [{k: v for k, v in r.items() if k != "values"} for r in rows]
    section.data.update(rows=rows, units="accuracy in %, sem = sample sd / sqrt(n)")
    return section


def rate_zero_check(ctx: Context, runs: list[Run]) -> list[str]:
    """Rate 0 must reproduce the unperturbed accuracy (METHOD.md): compare rate-0 runs with the clean
    ``val/acc`` of their source fit run's best epoch, where that run was read."""
    fits = {r.run_id: r for r in ctx.of_kind("fit")}
    differences = []
    for run in runs:
        source = fits.get(str((run.summary.get("prompt_source") or {}).get("run_id")))
        accuracy = validate_accuracies(run).get("validation")
        if float(run.summary["suppression"].get("rate", -1)) == 0 and source and accuracy is not None:
            reference = fit_accuracies(source).get("validation")
            if reference is not None:
                differences.append(abs(pct(accuracy) - pct(reference)))
    if not differences:
        return []
    return [(f"Rate 0 vs the source fit run's best `val/acc`: largest difference {max(differences):.3g} points over "
            f"{len(differences)} runs (0 expected: rate 0 is the unperturbed prompt)."), ""]


def suppression_figure(ctx: Context, key: tuple, title: str, sets: list[str], rows: list[dict],
                       chance: float | None) -> Figure:
    """One panel per evaluation set: accuracy vs rate, skill (solid) vs random (dashed), ± s.e.m. bands."""
    import numpy as np

    _, backbone, task, perturbation, std, part, adversarial_neurons, source = key
    name = slug("suppression", backbone, task, perturbation, *([std] if std is not None else []), part,
                adversarial_neurons, source)
    fig, axes, figure = ctx.figure(name, f"Suppression: {title}", WIDE, ncols=len(sets))
    styles = {"skill": ("tab:red", "-"), "random": ("tab:grey", "--")}
    for ax, set_ in zip(axes[0], sets):
        for selection in sorted({r["selection"] for r in rows}, key=lambda s: (s != "skill", s)):
            points = sorted((r["rate"], r["mean"], r["sem"] or 0.0) for r in rows
                            if r["set"] == set_ and r["selection"] == selection)
            if not points:
                continue
            rate, mean, sem = (np.array(v, dtype=float) for v in zip(*points))
            colour, line = styles.get(selection, ("tab:blue", ":"))
            ax.plot(rate, mean, line, color=colour, marker="o", label=f"{selection} units")
            ax.fill_between(rate, mean - sem, mean + sem, color=colour, alpha=0.2)
        if chance is not None:
            ax.axhline(chance, color="black", linewidth=0.8, linestyle=":", label="chance")
        ax.set_title("clean (validation)" if set_ == "validation" else f"adversarial: {set_}", fontsize="medium")
        ax.set_xlabel("units suppressed per layer (%)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize="small")
    fig.suptitle(f"{backbone} · {task} · {perturbation}", fontsize="medium")
    return ctx.save(fig, figure)


# --- skill neurons


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
            "read (fit runs get one from SkillNeuronCallback, on in every shipped config; `--eval-set` names the "
            "clean set, e.g. `test` for test runs).")


def per_layer_top(score: torch.Tensor, percent: float) -> list[float]:
    """Per layer: mean score of the layer's top ``percent``% units (as the callback's per_layer_top5_mean)."""
    return [mean_predictivity_of(top_percent_mask(score[i:i + 1], percent), score[i:i + 1])
            for i in range(score.shape[0])]


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
            per_run = [per_layer_top(s, p) for _, s in scored]  # (R, L)
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
        section.figures.append(per_layer_figure(ctx, key, combined))
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


def per_layer_figure(ctx: Context, key: tuple, combined: dict[str, torch.Tensor]) -> Figure:
    """Box plots per layer of the seed-averaged score, clean and each adversarial set side by side."""
    family, backbone, part, task, shape = key
    fig, axes, figure = ctx.figure(slug("per_layer", backbone, part, task),
                                   f"Predictivity per layer, {backbone} · {task} ({part})", WIDE)
    colours = ["tab:blue" if name == ctx.eval_set else ["tab:red", "tab:orange", "tab:purple"][(k - 1) % 3]
               for k, name in enumerate(combined)]
    ax = axes[0][0]
    runs = [r for r in ctx.neuron_runs() if (r.backbone, r.part, r.task) == (backbone, part, task)]
    baselines = {name: b for name in combined
                 if (b := next((majority_baseline(r, name) for r in runs if majority_baseline(r, name)), None))}
    per_layer_boxplot(ax, combined, colours, part, "score (max predictivity over positions), mean over seeds",
                      baselines)
    ax.set_title(f"{backbone} ({family_name(family)}) · {task}: predictivity per layer")
    return ctx.save(fig, figure)


def overlap_section(ctx: Context, runs: list[Run]) -> Section:
    """overlap@n% of clean and adversarial skill neurons and the adversarial predictivity of the clean top n%,
    per run recomputed from the neuron files (summary.json's numbers when the files are missing), mean ± sd
    over seeds."""
    section = Section("overlap")
    p = ctx.percent
    percents = sorted({*OVERLAP_PERCENTS, p})
    per_run, checks = [], []
    for run in runs:
        clean = ctx.scores.score(run, ctx.eval_set)
        for name in ctx.adversarial_sets(run):
            recorded = (run.neurons.get("sets") or {}).get(name, {})
            adversarial = ctx.scores.score(run, name)
            row = {"run_id": run.run_id, "backbone": run.backbone, "family": run.family, "part": run.part,
                   "task": run.task, "seed": run.seed, "set": name}
            if clean is not None and adversarial is not None and clean.shape == adversarial.shape:
                row["from"] = "neuron files"
                for n in percents:
                    row[f"overlap@{n:g}"] = overlap_at(clean, adversarial, n)
                    row[f"clean_top{n:g}_predictivity"] = mean_predictivity_of(top_percent_mask(clean, n), adversarial)
                    for metric in (f"overlap@{n:g}", f"clean_top{n:g}_predictivity"):
                        if recorded.get(metric) is not None and abs(recorded[metric] - row[metric]) > TOLERANCE:
                            checks.append(f"{run.describe()} set {name}: recomputed {metric} = {row[metric]:.6f}, "
                                          f"summary.json says {recorded[metric]:.6f}")
                row[f"clean_top{p:g}_clean_predictivity"] = mean_predictivity_of(top_percent_mask(clean, p), clean)
            else:
                row["from"] = "summary.json"
                for n in percents:
                    for metric in (f"overlap@{n:g}", f"clean_top{n:g}_predictivity"):
                        row[metric] = recorded.get(metric)
                row[f"clean_top{p:g}_clean_predictivity"] = (
                    (run.neurons.get("sets") or {}).get(ctx.eval_set, {}).get(f"top{p:g}_mean"))
            per_run.append(row)
    if not per_run:
        return section.leave_out(no_neuron_runs(ctx) if not runs else
                                 f"No adversarial skill-neuron analysis among the {len(runs)} runs analysed on "
                                 f"'{ctx.eval_set}' (their `skill_neurons` sets have no `adv/...` split; add an "
                                 "adversarial set to the task).")
    metrics = [*(f"overlap@{n:g}" for n in percents), *(f"clean_top{n:g}_predictivity" for n in percents),
               f"clean_top{p:g}_clean_predictivity"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in per_run:
        groups[(row["family"], row["backbone"], row["part"], row["task"], row["set"])].append(row)
    rows = []
    for (family, backbone, part, task, name), members in groups.items():
        row = {"backbone": backbone, "family": family, "part": part, "task": task, "set": name,
               "n": len(members), "seeds": [m["seed"] for m in members], "runs": [m["run_id"] for m in members]}
        for metric in metrics:
            values = [m[metric] for m in members if m.get(metric) is not None]
            row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(values)
        rows.append(row)
    section.lines += [("Ours, per seed (the paper's seed-mean version is the section \"Overlap of clean and "
                       "adversarial skill neurons vs n\"): the numbers each run's SkillNeuronCallback wrote, recomputed "
                       "from its files as a check, with the callback's sizing k = ceil(n/100 · N)."), ""]
    section.lines += [(f"overlap@n% = |top-n% clean ∩ top-n% adversarial| / |top-n%| per layer, mean over layers "
                      f"(1.0: the same neurons; a random pick overlaps n/100 on average). \"adv. pred.\": mean "
                      f"adversarial score of the clean top-{p:g}% neurons; \"clean pred.\": their clean score. "
                      "Mean ± sd over seeds, recomputed from the neuron files."), ""]
    section.lines += markdown_table(
        ["backbone", "part", "task", "adversarial set", "seeds", *(f"overlap@{n:g}%" for n in percents),
         f"adv. pred. of clean top {p:g}%", f"clean pred. of clean top {p:g}%"],
        [[r["backbone"], r["part"], r["task"], r["set"], r["n"],
          *(fmt(r[f"{m}_mean"], r[f"{m}_sd"], digits=3) for m in
            [*(f"overlap@{n:g}" for n in percents), f"clean_top{p:g}_predictivity", f"clean_top{p:g}_clean_predictivity"])]
         for r in rows])
    section.figures.append(overlap_figure(ctx, rows, percents))
    section.lines += [f"![{section.figures[0].caption}](figures/{section.figures[0].path.name})", ""]
    from_summary = [r for r in per_run if r["from"] == "summary.json"]
    if from_summary:
        section.lines += [(f"{len(from_summary)} run/set pairs lack neuron files; their numbers are summary.json's "
                          "(at the callback's percentages only)."), ""]
    if checks:
        section.lines += [f"Check against summary.json: {c}" for c in checks]
    else:
        section.lines += [("Recomputed overlaps and adversarial predictivities match the runs' summary.json where "
                          "it has them.")]
    section.lines += [""]
    section.tables["overlap"] = rows
    section.tables["overlap_runs"] = per_run
    section.data.update(rows=rows, runs=per_run, percents=percents, mismatches=checks)
    return section


def overlap_figure(ctx: Context, rows: list[dict], percents: list[float]) -> Figure:
    """overlap@n% vs n, one line per backbone × task × adversarial set (colour: family), ± sd."""
    fig, axes, figure = ctx.figure("overlap", "overlap@n% of clean and adversarial skill neurons, mean ± sd over "
                                   "seeds (dotted: expected overlap of random picks)", WIDE)
    ax = axes[0][0]
    colours = {"masked_lm": "tab:blue", "seq2seq": "tab:orange"}
    markers = "osD^v<>ph*"
    for k, row in enumerate(rows):
        means = [row[f"overlap@{n:g}_mean"] for n in percents]
        if any(m is None for m in means):
            continue
        sds = [row[f"overlap@{n:g}_sd"] or 0.0 for n in percents]
        ax.errorbar(percents, means, yerr=sds, color=colours.get(row["family"], "tab:green"),
                    marker=markers[k % len(markers)], capsize=3,
                    label=f"{row['backbone']} · {row['task']} · {row['set']}")
    ax.plot(percents, [n / 100 for n in percents], ":", color="grey", label="random (n/100)")
    ax.set_xlabel("n (% of units per layer)")
    ax.set_ylabel("overlap@n%")
    ax.set_ylim(0, 1.05)
    ax.set_title("Clean vs adversarial skill neurons")
    ax.legend(fontsize="x-small", ncol=2)
    return ctx.save(fig, figure)


# ----------------------------------------------------------------------------- the report


def build_sections(ctx: Context) -> list[Section]:
    """Every section; one that fails on unexpected data is left out with the error, never a crash."""
    neuron_runs = ctx.neuron_runs()
    builders = [
        ("runs", lambda: runs_section(ctx)),
        ("accuracy", lambda: accuracy_section(ctx)),
        ("transfer", lambda: transfer_section(ctx)),
        ("paper_boxes", lambda: boxes_section(ctx)),
        ("paper_overlap", lambda: paper_overlap_section(ctx)),
        ("paper_histogram", lambda: histogram_section(ctx)),
        ("paper_location", lambda: location_section(ctx)),
        ("spearman_seeds", lambda: spearman_seeds_section(ctx)),
        ("spearman_tasks", lambda: spearman_tasks_section(ctx)),
        ("paper_suppression", lambda: paper_suppression_section(ctx)),
        ("suppression", lambda: suppression_section(ctx)),
        ("balanced", lambda: balanced_section(ctx)),
        ("per_layer", lambda: per_layer_section(ctx, neuron_runs)),
        ("overlap", lambda: overlap_section(ctx, neuron_runs)),
    ]
    sections = []
    for key, build in builders:
        try:
            sections.append(build())
        except Exception as error:  # noqa: BLE001 (a bug or data nobody foresaw: keep the rest)
            traceback.print_exc(file=sys.stderr)
            sections.append(Section(key).leave_out(
                f"This section could not be computed: {type(error).__name__}: {error} (the traceback is on stderr)."))
    return sections


def render_markdown(ctx: Context, sections: list[Section], command: str) -> str:
    lines = ["# Skill-neuron report", "",
             (f"`{command}` — {time.strftime('%Y-%m-%d %H:%M:%S %z')}; {len(ctx.runs)} runs read, "
             f"{len(ctx.finished)} finished. Clean set '{ctx.eval_set}'. Paper sections: seed means, n = 2, 4, …, 14 "
             f"for overlap and Spearman curves, the model-wide top {ctx.percent:g}% for the histogram, layer location "
             "and balanced sections, as P1 computes them (formula and P1 function under each section). Numbers as "
             "in `report.json`."), ""]
    lines += [f"{i}. [{s.title}](#{re.sub(r'[^a-z0-9 -]', '', s.title.lower()).replace(' ', '-')})"
              + (" — left out" if s.missing else "") for i, s in enumerate(sections, 1)] + [""]
    for section in sections:
        lines += [f"## {section.title}", "", *section.lines, ""]
        embedded = "\n".join(section.lines)
        for figure in section.figures:
            if f"figures/{figure.path.name}" not in embedded:
                lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(ctx: Context, sections: list[Section], out: Path, command: str) -> dict[str, Any]:
    """``out/report.md`` and ``out/report.json``; returns the JSON document."""
    document: dict[str, Any] = {
        "command": command, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "percent": ctx.percent,
        "eval_set": ctx.eval_set, "inputs": ctx.inputs.arguments,
        "units": "accuracies and relative scores in %, predictivities and overlaps as fractions",
        "figure_sizes": {"wide": list(WIDE), "square": list(SQUARE)},
    }
    for section in sections:
        document[section.key] = {
            "title": section.title, "missing": section.missing, **section.data,
            "figures": [{"file": f"figures/{f.path.name}", "caption": f.caption, "width": f.size[0],
                         "height": f.size[1]} for f in section.figures],
        }
    (out / "report.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_markdown(ctx, sections, command))
    return document


def log_to_wandb(out: Path, sections: list[Section], project: str, document: dict[str, Any]) -> dict[str, Any]:
    """A W&B run (job type ``report``) with the figures, the tables and the report folder as an artifact.
    Offline when W&B has no credentials and ``WANDB_MODE`` is unset, as the training CLI does."""
    import wandb

    from lightning_modules.cli import wandb_has_credentials

    mode = None
    if not os.environ.get("WANDB_MODE") and not wandb_has_credentials():
        mode = "offline"
        print(f"skill-neurons report: no W&B credentials found — logging offline in {out}/wandb", file=sys.stderr)
    run = wandb.init(project=project, job_type="report", dir=str(out), mode=mode,
                     config={k: document[k] for k in ("percent", "eval_set", "inputs", "command")})
    try:
        payload: dict[str, Any] = {}
        for section in sections:
            for figure in section.figures:
                payload[f"report/{section.key}/{figure.name}"] = wandb.Image(str(figure.path), caption=figure.caption)
            for name, rows in section.tables.items():
                if rows:
                    payload[f"report/{section.key}/{name}"] = wandb_table(rows)
        run.log(payload)
        run.summary.update({f"report/{s.key}/missing": s.missing or "" for s in sections})
        artifact = wandb.Artifact(f"report-{run.id}", type="report", metadata={"inputs": document["inputs"]})
        artifact.add_file(str(out / "report.md"))
        artifact.add_file(str(out / "report.json"))
        artifact.add_dir(str(out / "figures"), name="figures")
        run.log_artifact(artifact)
        offline = run.settings.mode in ("offline", "dryrun")
        info = {"id": run.id, "project": run.project, "mode": "offline" if offline else "online",
                "dir": str(Path(run.dir).parent), "url": None if offline else run.url}
    finally:
        run.finish()
    return info


def wandb_table(rows: list[dict[str, Any]]):
    """A ``wandb.Table`` of flat dicts: scalars as they are, lists and dicts as JSON text."""
    import wandb

    columns = list(dict.fromkeys(k for row in rows for k in row))
    data = [[row.get(c) if isinstance(row.get(c), (str, int, float, bool, type(None))) else
             json.dumps(row.get(c), default=str) for c in columns] for row in rows]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def make_report(arguments: list[str], out: Path, percent: float = 5.0, eval_set: str = "validation",
                use_wandb: bool = False, project: str = "skill-neurons", command: str = "") -> dict[str, Any]:
    """Read the runs, write ``out/report.md``, ``out/report.json`` and ``out/figures/*.png``; log to W&B
    with ``use_wandb``. Returns the report.json document (with ``wandb`` info when logged)."""
    if not 0 < percent <= 100:
        raise ReportError(f"--percent {percent:g}: give a percentage of units per layer in (0, 100]")
    out.mkdir(parents=True, exist_ok=True)
    inputs = read_runs(arguments, out / "wandb-runs")
    figures_dir = out / "figures"
    figures_dir.mkdir(exist_ok=True)
    for stale in figures_dir.glob("*.png"):  # a report written again into the same folder
        stale.unlink()
    ctx = Context(inputs, figures_dir, float(percent), set_name(eval_set))
    check_inputs(ctx)  # mixed layouts or neuron shapes: one error before any section
    sections = build_sections(ctx)
    document = write_report(ctx, sections, out, command or f"skill-neurons report {' '.join(arguments)} --out {out}")
    if use_wandb:
        document["wandb"] = log_to_wandb(out, sections, project, document)
        (out / "report.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    return document


def main(argv: list[str] | None = None) -> int:
    """``skill-neurons report RUNS... --out DIR``: errors become one message and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="skill-neurons report",
        description="Report over run directories: accuracy (clean vs adversarial), transfer, suppression and "
                    "skill-neuron statistics, as DIR/report.md with PNG figures and DIR/report.json.")
    parser.add_argument("runs", nargs="+", help="run directories (runs/<id>), folders holding them (searched "
                        "recursively for summary.json), or W&B run paths entity/project/run_id (online)")
    parser.add_argument("--out", required=True, help="folder for report.md, report.json and figures/")
    parser.add_argument("--percent", type=float, default=5.0,
                        help="n of the paper sections at one n: the model-wide top n%% units of the histogram, "
                             "layer location and balanced sections (default 5); overlap and Spearman curves use "
                             "P1's n = 2, 4, ..., 14; our per-seed sections use the top n%% per layer")
    parser.add_argument("--eval-set", default="validation",
                        help="the clean evaluation set whose skill-neuron analysis is used (default validation; "
                             "test for runs of `skill-neurons test`)")
    parser.add_argument("--wandb", action="store_true", help="also log the figures and tables to a W&B run "
                        "(job type report; offline without credentials)")
    parser.add_argument("--project", default="skill-neurons", help="W&B project of --wandb (default skill-neurons)")
    args = parser.parse_args(argv)
    command = "skill-neurons report " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        document = make_report(args.runs, Path(args.out), args.percent, args.eval_set, args.wandb, args.project,
                               command)
    except ReportError as error:
        print(f"skill-neurons report: error: {error}", file=sys.stderr, flush=True)
        return 2
    left_out = [document[k]["title"] for k in TITLES if document.get(k, {}).get("missing")]
    print(f"skill-neurons report: wrote {Path(args.out) / 'report.md'} ({len(TITLES) - len(left_out)} of "
          f"{len(TITLES)} sections; left out for lack of runs: {', '.join(left_out) or 'none'})")
    if document.get("wandb"):
        info = document["wandb"]
        print(f"skill-neurons report: W&B run {info['id']} ({info['mode']}) in {info['dir']}"
              + (f"; upload with `wandb sync {info['dir']}`" if info["mode"] == "offline" else f": {info['url']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
