"""Adversarial sets made by ``skill-neurons attack``: where each evaluated adversarial set comes from (the task's own
set such as AdvGLUE's, a generated attack, the no-model noise baseline, another file) and the attacks' table.

An attack writes ``FILE.jsonl`` and its sidecar ``FILE.jsonl.meta.json`` (settings: recipe, backbone, task,
source run; counts: examples attacked, succeeded, words changed, queries). The report finds the sidecars below
the folders it is given (``skill-neurons report tiny`` reads ``tiny/attacks/``) and those of the files the runs
evaluated (``data.extra_adversarial`` in their config).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from datamodules.tasks import TaskError, get_task
from records.eval_set import EvalSet
from skill_neurons.attack.recipes import MODEL_FREE
from skill_neurons.report.base import (
    Context, Run, Section, family_name, family_rank, markdown_table, on_own_task, validate_accuracies,
)

META_SUFFIX = ".meta.json"  # skill-neurons attack's sidecar: FILE.jsonl -> FILE.jsonl.meta.json
SKIPPED = {"wandb", "checkpoints", "skill_neurons", "__pycache__"}
# What an adversarial set is, in the accuracy table's order.
SOURCES = {"clean": "clean", "declared": "the task's own (AdvGLUE)", "generated": "generated (attack)",
           "noise": "noise (no model)", "extra": "other file"}


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("settings"), dict) else None


def find_attacks(ctx: Context) -> dict[Path, dict[str, Any]]:
    """Attack file -> its sidecar, for every sidecar below the report's folders and beside the files the runs
    evaluated (read once, cached)."""
    if "attacks" in ctx.cache:
        return ctx.cache["attacks"]
    found: dict[Path, dict[str, Any]] = {}
    for argument in ctx.inputs.arguments:
        if not Path(argument).is_dir():
            continue
        for folder, subfolders, files in os.walk(argument):
            subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED and not d.startswith("."))
            for name in files:
                if name.endswith(".jsonl" + META_SUFFIX) and (meta := read_sidecar(Path(folder) / name)):
                    found[(Path(folder) / name[:-len(META_SUFFIX)]).resolve()] = meta
    for run in ctx.runs:
        for file in extra_files(run).values():
            path = Path(file)
            if path.resolve() not in found and (meta := read_sidecar(path.with_name(path.name + META_SUFFIX))):
                found[path.resolve()] = meta
    ctx.cache["attacks"] = found
    return found


def extra_files(run: Run) -> dict[str, str]:
    """Set name -> file of the run's ``data.extra_adversarial`` (the flat config records it as
    ``data.extra_adversarial.<name>.file``, or ``...<name>`` for a plain path)."""
    prefix = "data.extra_adversarial."
    files = {}
    for key, value in (run.summary.get("config") or {}).items():
        if key.startswith(prefix) and value:
            name, _, field = key[len(prefix):].partition(".")
            if field in ("", "file") and isinstance(value, str):
                files[name] = value
    return files


def attack_of(ctx: Context, run: Run, name: str) -> dict[str, Any] | None:
    """The sidecar of the attack file the run evaluated as set ``name`` (None: not an attack's file). A relative
    path that does not resolve from here is matched by file name and the prompt's run among the sidecars found."""
    file = extra_files(run).get(name)
    if file is None:
        return None
    attacks = find_attacks(ctx)
    if Path(file).resolve() in attacks:
        return attacks[Path(file).resolve()]
    prompt = (run.summary.get("prompt_source") or {}).get("run_id")
    return next((meta for path, meta in attacks.items()
                 if path.name == Path(file).name and meta["settings"].get("source_run") == prompt), None)


def set_source(ctx: Context, run: Run, name: str) -> str:
    """``clean``, ``declared`` (the task's own set, e.g. AdvGLUE's), ``generated``, ``noise`` or ``extra``."""
    if not EvalSet(name).adversarial:
        return "clean"
    meta = attack_of(ctx, run, name)
    if meta is not None:
        return "noise" if meta["settings"].get("recipe") in MODEL_FREE else "generated"
    if name in extra_files(run):
        return "extra"
    try:
        return "declared" if name in get_task(run.task).adversarial else "extra"
    except TaskError:
        return "extra"


def evaluates_attacks(ctx: Context, run: Run) -> bool:
    """The run evaluated a file made by ``skill-neurons attack`` (an ``evaluate_attacks.yaml`` trial)."""
    return any(attack_of(ctx, run, name) is not None for name in extra_files(run))


class Evaluations:
    """A fit run's accuracies with those of the ``validate`` runs of its prompt (``prompt_source.run_id``) on sets
    the fit did not evaluate — the generated sets of ``evaluate_attacks.yaml`` — and each set's source."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.extra: dict[str, dict[str, tuple[Run, float]]] = defaultdict(dict)
        validates = sorted((r for r in ctx.of_kind("validate", "transfer") if r.kind == "validate" or on_own_task(r)),
                           key=lambda r: str(r.summary.get("finished", "")), reverse=True)
        for run in validates:  # the latest evaluation of a set wins
            prompt = (run.summary.get("prompt_source") or {}).get("run_id")
            for name, value in validate_accuracies(run).items():
                if prompt and EvalSet(name).adversarial:
                    self.extra[str(prompt)].setdefault(name, (run, value))

    def accuracies(self, run: Run, own: dict[str, float]) -> dict[str, float]:
        merged = dict(own)
        for name, (_, value) in self.extra.get(run.run_id, {}).items():
            merged.setdefault(name, value)
        return merged

    def source(self, run: Run, name: str, own: dict[str, float]) -> str:
        evaluated = run if name in own or name not in self.extra.get(run.run_id, {}) else \
            self.extra[run.run_id][name][0]
        return set_source(self.ctx, evaluated, name)


# --- the attacks' table


def attack_rows(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per backbone x recipe, pooled over tasks and seeds; one row per complete attack file)."""
    files = []
    for path, meta in sorted(find_attacks(ctx).items()):
        settings, counts = meta["settings"], meta.get("counts") or {}
        if not meta.get("complete"):
            continue
        files.append({"file": str(path), "backbone": settings.get("backbone"), "task": settings.get("task"),
                      "recipe": settings.get("recipe"), "source_run": settings.get("source_run"),
                      "seed": settings.get("seed"), "examples": counts.get("examples", 0),
                      "attacked": counts.get("attacked", 0), "succeeded": counts.get("succeeded", 0),
                      "rows": counts.get("rows_written", 0), "words_changed": counts.get("words_changed", 0),
                      "queries": counts.get("queries", 0), "noise": counts.get("outcomes", {}).get("noise", 0),
                      "model_free": settings.get("recipe") in MODEL_FREE})
    families = {r.backbone: r.family for r in ctx.runs}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in files:
        groups[(row["backbone"], row["recipe"])].append(row)
    rows = []
    for (backbone, recipe), members in sorted(groups.items(), key=lambda kv: (
            family_rank(families.get(kv[0][0], "")), str(kv[0][0]), kv[0][1] in MODEL_FREE, str(kv[0][1]))):
        attacked, succeeded = sum(m["attacked"] for m in members), sum(m["succeeded"] for m in members)
        changed = sum(m["words_changed"] for m in members)
        model_free = members[0]["model_free"]
        perturbed = sum(m["noise"] for m in members)
        rows.append({"backbone": backbone, "family": families.get(backbone), "recipe": recipe,
                     "files": len(members), "tasks": sorted({str(m["task"]) for m in members}),
                     "examples": sum(m["examples"] for m in members), "attacked": attacked, "succeeded": succeeded,
                     "success_rate": None if model_free or not attacked else succeeded / attacked,
                     "mean_words_changed": (changed / perturbed if perturbed else None) if model_free else
                     (changed / succeeded if succeeded else None),
                     "queries": sum(m["queries"] for m in members)})
    return rows, files


def attacks_section(ctx: Context) -> Section:
    """Attack success rate and mean words changed per backbone (RoBERTa vs T5 vs causal LMs) and recipe."""
    section = Section("attacks")
    rows, files = attack_rows(ctx)
    if not rows:
        return section.leave_out("No finished `skill-neurons attack` files (`FILE.jsonl` with its `FILE.jsonl.meta.json`) "
                                 "below the folders read or named by the runs' `data.extra_adversarial`.")
    section.lines += [("Success rate = examples fooled / examples attacked (the prompt classified them right "
                      "before the attack), pooled over the files of a backbone and recipe (tasks, seeds); mean words "
                      "changed = words changed per successful example (noise: per perturbed example; noise queries "
                      "no model, so it has no success rate). From the files' `.meta.json` counts."), ""]
    section.lines += markdown_table(
        ["backbone", "recipe", "files", "tasks", "attacked", "fooled", "success rate", "mean words changed",
         "queries"],
        [[f"{r['backbone']} ({family_name(r['family']) if r['family'] else '?'})", r["recipe"], r["files"],
          ", ".join(r["tasks"]), r["attacked"], r["succeeded"],
          "—" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f} %",
          "—" if r["mean_words_changed"] is None else f"{r['mean_words_changed']:.2f}", r["queries"]]
         for r in rows])
    section.tables["attacks"] = rows
    section.tables["attack_files"] = files
    section.data.update(rows=rows, files=files)
    return section
