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
missing:

1. **Runs read**: counts by kind; unfinished runs (listed, skipped) and files that are not run summaries.
2. **Accuracy: clean vs adversarial**: backbone × task from fit runs' best epoch (``best``), mean ± sd
   (sample sd, n − 1) over seeds, chance level ``1/len(label_names)``, means below chance marked ↓.
3. **Prompt transfer between tasks**: relative score ``100 · acc(A→B) / acc(B→B)`` per seed, then
   mean ± sd over seeds; heat map per backbone, tasks ordered by task type, then name (see
   :func:`transfer_section` for where ``acc(B→B)`` comes from).
4. **Suppression of skill neurons**: accuracy vs suppression rate, skill vs random units, clean and each
   adversarial set, mean ± s.e.m. over seeds.
5. **Predictivity per layer**, 6. **Overlap of clean and adversarial skill neurons**,
   7. **Adversarial predictivity of clean skill neurons: RoBERTa vs T5**, 8. **Spearman correlation across
   seeds**, 9. **Spearman correlation across tasks**: recomputed from the neuron files with
   ``callbacks.neuron_statistics`` at ``--percent`` (overlap at 1, 5, 10, 15 and ``--percent``), and checked
   against the numbers the runs wrote into their ``summary.json``.

Run kinds: a run with a ``suppression`` section is a suppression run; one with ``transfer`` (and no
``suppression``) a transfer run; otherwise its ``stage`` (fit / validate / test). The neuron sections use
one analysis per prompt: runs with a skill-neuron analysis of the clean set ``--eval-set`` (suppression and
transfer runs excluded, their prompts are perturbed or foreign), one per backbone × part × task × seed,
fit runs preferred.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from callbacks.neuron_statistics import (
    mean_over_prompts,
    mean_predictivity_of,
    overlap_at,
    spearman_matrix,
    top_percent_mask,
)
from callbacks.run_summary import SUMMARY_FILE
from callbacks.skill_neurons import (
    OUTPUT_DIR,
    SkillNeuronError,
    neuron_file_of,
    per_layer_boxplot,
    set_name,
)

FAMILY_NAMES = {"masked_lm": "RoBERTa-like", "seq2seq": "T5-like", "causal_lm": "GPT-like (decoder-only)"}
FAMILY_ORDER = ("masked_lm", "seq2seq")
TYPE_ORDER = ("sentiment", "nli", "paraphrase", "ethics")  # METHOD.md's task types, in its order
OVERLAP_PERCENTS = (1, 5, 10, 15)  # the n of overlap@n% P1 reports (the callback's default too)
DPI = 100
WIDE = (1200, 600)  # pixels (width, height) of line, bar and box plots
SQUARE = (800, 800)  # pixels of heat maps
SKIP_DIRS = {"wandb", "checkpoints", OUTPUT_DIR, "__pycache__", "node_modules"}
WANDB_PATH = re.compile(r"^(?:https?://[^/]+/)?([\w.-]+)/([\w.-]+)/(?:runs/)?([\w-]+)/?$")
TITLES = {
    "runs": "Runs read",
    "accuracy": "Accuracy: clean vs adversarial",
    "transfer": "Prompt transfer between tasks",
    "suppression": "Suppression of skill neurons",
    "per_layer": "Predictivity per layer",
    "overlap": "Overlap of clean and adversarial skill neurons",
    "adversarial_predictivity": "Adversarial predictivity of clean skill neurons: RoBERTa vs T5",
    "spearman_seeds": "Spearman correlation across seeds",
    "spearman_tasks": "Spearman correlation across tasks",
}
TOLERANCE = 1e-6  # recomputed vs summary.json numbers (both float64 from the same float32 scores)


class ReportError(ValueError):
    """Input the report cannot use at all (the message names the fix)."""


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One run's ``summary.json`` (or the same structure built from a W&B run) and where its files are."""

    summary: dict[str, Any]
    directory: Path  # the run directory (neuron files under directory/skill_neurons/)
    source: str  # what was read: a summary.json path or a W&B run path

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.directory.name)

    @property
    def finished(self) -> bool:
        return self.summary.get("status") == "finished"

    @property
    def kind(self) -> str:
        """``suppression``, ``transfer``, or the stage (``fit``, ``validate``, ``test``)."""
        if self.summary.get("suppression"):
            return "suppression"
        if self.summary.get("transfer"):
            return "transfer"
        return str(self.summary.get("stage") or "unknown")

    @property
    def settings(self) -> dict[str, Any]:
        return self.summary.get("settings") or {}

    @property
    def data(self) -> dict[str, Any]:
        return self.summary.get("data") or {}

    @property
    def neurons(self) -> dict[str, Any]:
        return self.summary.get("skill_neurons") or {}

    @property
    def backbone(self) -> str:
        return str(self.settings.get("backbone") or self.neurons.get("backbone") or "unknown backbone")

    @property
    def family(self) -> str:
        family = self.settings.get("family") or self.neurons.get("family")
        if family:
            return str(family)
        return "seq2seq" if "t5" in self.backbone.lower() else "masked_lm"

    @property
    def task(self) -> str:
        return str(self.settings.get("task") or self.data.get("task") or self.neurons.get("task") or "unknown task")

    @property
    def task_type(self) -> str | None:
        return self.data.get("task_type")

    @property
    def seed(self) -> Any:
        """The seed of the prompt: the source prompt's for transfer/suppression runs, else the run's own."""
        source = self.summary.get("prompt_source") or {}
        return source.get("seed", self.settings.get("seed"))

    @property
    def chance(self) -> float | None:
        """Chance accuracy in %: 100 / number of classes (None when the labels are unknown)."""
        labels = self.data.get("label_names") or self.neurons.get("label_names")
        return 100.0 / len(labels) if labels else None

    @property
    def part(self) -> str:
        return str(self.neurons.get("part") or "encoder")

    def describe(self) -> str:
        return f"`{self.run_id}` ({self.kind}, {self.backbone}, {self.task}, seed {self.seed})"


@dataclass
class Inputs:
    """What was read: runs, files that were not run summaries, the arguments."""

    runs: list[Run]
    invalid: list[str]
    arguments: list[str]


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


# ----------------------------------------------------------------------------- numbers and formatting


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1); the sd is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (sample sd / sqrt(n)); None for fewer than two values."""
    mean, sd = mean_sd(values)
    return mean, (sd / math.sqrt(len(values)) if sd is not None else None)


def fmt(mean: float | None, spread: float | None = None, digits: int = 1, mark: str = "") -> str:
    """``85.3 ± 1.2`` (no ± for a single value, — for none)."""
    if mean is None:
        return "—"
    text = f"{mean:.{digits}f}"
    if spread is not None:
        text += f" ± {spread:.{digits}f}"
    return text + mark


def pct(value: Any) -> float | None:
    """A fraction in [0, 1] as a percentage (None stays None)."""
    return None if value is None else 100.0 * float(value)


def seed_label(seed: Any) -> str:
    return "?" if seed is None else str(seed)


def slug(*parts: Any) -> str:
    """A file name from parts: ``google/flan-t5-base``, ``sst2`` -> ``google-flan-t5-base_sst2``."""
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", str(p)).strip("-") for p in parts)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def family_rank(family: str) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def seed_rank(seed: Any) -> tuple:
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


def run_labels(runs: list[Run]) -> list[str]:
    """``seed 33`` per run, with the run id where several runs share a seed (e.g. a learning-rate sweep)."""
    seeds = [r.seed for r in runs]
    return [f"seed {seed_label(r.seed)}" + (f" ({r.run_id})" if seeds.count(r.seed) > 1 else "") for r in runs]


def mixed_settings(runs: list[Run], what: str) -> list[str]:
    """A line per setting (other than the seed) that differs among runs averaged together, or none."""
    lines = []
    for key in ("prompt_length", "learning_rate", "precision"):
        values = sorted({str(r.settings.get(key)) for r in runs})
        if len(values) > 1:
            lines.append(f"Note: {what} averages runs with different {key} ({', '.join(values)}) — pass the runs "
                         "of one setting to compare like with like.")
    return lines


# ----------------------------------------------------------------------------- sections


@dataclass
class Figure:
    """One PNG of the report: ``figures/<name>.png`` of ``size`` pixels."""

    name: str
    caption: str
    path: Path
    size: tuple[int, int]


@dataclass
class Section:
    """A report section: markdown lines, figures, tables (lists of flat dicts, for report.json and W&B)."""

    key: str
    lines: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None  # why the section is left out

    @property
    def title(self) -> str:
        return TITLES[self.key]

    def leave_out(self, reason: str) -> Section:
        self.missing = reason
        self.lines = [reason]
        return self


class NeuronScores:
    """The (L, N) neuron scores of runs' skill-neuron files, read once each.

    Only ``score`` is read: the (L, P, N) tensors of a full grid of runs would not fit in memory."""

    def __init__(self):
        self._cache: dict[str, torch.Tensor | None] = {}
        self.missing: list[str] = []

    def file(self, run: Run, name: str) -> Path | None:
        """The run's file of set ``name``: in its directory, else where its summary.json says."""
        try:
            return neuron_file_of(run.directory, name)
        except SkillNeuronError:
            pass
        recorded = (run.neurons.get("sets") or {}).get(name, {}).get("file")
        for candidate in ([Path(recorded), run.directory / recorded] if recorded else []):
            if candidate.is_file():
                return candidate
        return None

    def score(self, run: Run, name: str) -> torch.Tensor | None:
        """(L, N) float32 score of the run's set ``name``, or None (noted in ``missing``) without a file."""
        key = f"{run.source}::{name}"
        if key not in self._cache:
            path = self.file(run, name)
            score = None
            if path is None:
                self.missing.append(f"{run.describe()}: no neuron file for set '{name}' (looked in "
                                    f"{run.directory / OUTPUT_DIR})")
            else:
                from safetensors import safe_open

                try:
                    with safe_open(str(path), framework="pt") as f:
                        score = f.get_tensor("score").to(torch.float32)  # (L, N)
                except Exception as error:  # noqa: BLE001 (a broken file leaves the run out, with why)
                    self.missing.append(f"{run.describe()}: cannot read {path} ({error})")
            self._cache[key] = score
        return self._cache[key]


@dataclass
class Context:
    """Everything the sections share."""

    inputs: Inputs
    figures_dir: Path
    percent: float
    eval_set: str
    scores: NeuronScores = field(default_factory=NeuronScores)
    _types: dict[str, str] | None = None

    @property
    def runs(self) -> list[Run]:
        return self.inputs.runs

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]

    def of_kind(self, *kinds: str) -> list[Run]:
        return [r for r in self.finished if r.kind in kinds]

    def task_types(self) -> dict[str, str]:
        """Task -> task type (``data.task_type`` of the runs)."""
        if self._types is not None:
            return self._types
        types = {}
        for run in self.runs:
            if run.task_type:
                types.setdefault(run.task, run.task_type)
            target = (run.summary.get("transfer") or {}).get("target_task")
            if target and run.task_type and run.task == target:
                types.setdefault(target, run.task_type)
        self._types = types
        return types

    def task_order(self, tasks: set[str] | list[str]) -> list[str]:
        """Tasks ordered by task type (METHOD.md's order, then others alphabetically), then name."""
        types = self.task_types()

        def key(task: str) -> tuple:
            kind = types.get(task) or "~unknown"
            return (TYPE_ORDER.index(kind) if kind in TYPE_ORDER else len(TYPE_ORDER), kind, task)

        return sorted(set(tasks), key=key)

    def neuron_runs(self) -> list[Run]:
        """One analysis per prompt (a fit run and a ``validate --ckpt_path`` run of its checkpoint analyse the
        same prompt: fit runs first, then the latest finished) among the finished runs that analysed
        ``eval_set`` (suppression and transfer runs excluded)."""
        chosen: dict[tuple, Run] = {}
        rank = {"fit": 0, "test": 1, "validate": 2}
        candidates = [r for r in self.of_kind("fit", "validate", "test")
                      if self.eval_set in (r.neurons.get("sets") or {})]
        candidates.sort(key=lambda r: str(r.summary.get("finished", "")), reverse=True)  # latest first
        candidates.sort(key=lambda r: rank.get(r.kind, 3))  # stable: fit runs first, latest first among equals
        for run in candidates:
            checkpoint = run.neurons.get("prompt_checkpoint")
            # runs/<id>/checkpoints/best.ckpt: the tail names the prompt whatever the working directory was
            prompt = "/".join(Path(checkpoint).parts[-3:]) if checkpoint and checkpoint.endswith(".ckpt") else run.source
            chosen.setdefault((run.backbone, run.part, run.task, prompt), run)
        order = self.task_order({r.task for r in chosen.values()})
        return sorted(chosen.values(), key=lambda r: (family_rank(r.family), r.backbone, r.part,
                                                      order.index(r.task), seed_rank(r.seed)))

    def adversarial_sets(self, run: Run) -> list[str]:
        """The run's analysed adversarial sets (``adv/...`` splits)."""
        sets = run.neurons.get("sets") or {}
        return sorted(name for name, info in sets.items() if name != self.eval_set and (
            str(info.get("split", "")).startswith("adv/") or name not in ("validation", "test")))

    def figure(self, name: str, caption: str, size: tuple[int, int], nrows: int = 1, ncols: int = 1):
        """A new matplotlib Figure (no pyplot state, Agg canvas) of exactly ``size`` pixels, and its axes."""
        from matplotlib.figure import Figure as MplFigure

        fig = MplFigure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        return fig, axes, Figure(name, caption, self.figures_dir / f"{name}.png", size)

    def save(self, fig, figure: Figure) -> Figure:
        fig.tight_layout()
        fig.savefig(figure.path, dpi=DPI)  # no bbox_inches="tight": the size stays exactly figure.size
        return figure


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


def _accuracies(metrics: dict[str, Any] | None, clean_key: str, clean: str, adversarial: str) -> dict[str, float]:
    """Accuracy (fraction) per set: ``clean`` from ``clean_key``, adversarial sets from keys matching
    ``adversarial`` (a regex whose group 1 is the set's name)."""
    metrics = metrics or {}
    out = {clean: metrics[clean_key]} if metrics.get(clean_key) is not None else {}
    out.update({m.group(1): v for k, v in metrics.items() if v is not None and (m := re.fullmatch(adversarial, k))})
    return out


def fit_accuracies(run: Run) -> dict[str, float]:
    """Accuracy per evaluation set of a fit run's best epoch: ``validation`` and adversarial sets."""
    return _accuracies(run.summary.get("best"), "val/acc", "validation", r"adv/(.+)/acc")


def test_accuracies(run: Run) -> dict[str, float]:
    """Accuracy per set of a test run: ``test`` and adversarial sets."""
    return _accuracies(run.summary.get("test_metrics"), "test/acc", "test", r"test/adv/(.+)/acc")


def validate_accuracies(run: Run) -> dict[str, float]:
    """Accuracy per set of a validate run: ``validation`` and adversarial sets."""
    return _accuracies(run.summary.get("validate_metrics"), "val/acc", "validation", r"adv/(.+)/acc")


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
    section.lines += [("Accuracy in %, mean ± sd (sample sd, n − 1) over seeds, at each fit run's best epoch "
                      "(the epoch with the best clean validation accuracy). Chance = 100 / number of classes; "
                      "↓ marks a mean below chance."), ""]
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


def transfer_accuracy(run: Run) -> float | None:
    """A transfer run's accuracy in %: ``transfer.accuracy``, else its ``validate_metrics['val/acc']``."""
    value = (run.summary.get("transfer") or {}).get("accuracy")
    if value is None:
        value = (run.summary.get("validate_metrics") or {}).get("val/acc")
    return pct(value)


def transfer_reference(diagonal: dict[tuple, list[float]], fitted: dict[tuple, list[float]], target: str,
                       seed: Any) -> tuple[float | None, str]:
    """acc(B→B) in % for a prompt of seed ``seed`` and how it was found; ``diagonal`` and ``fitted`` map
    (task, seed) to the accuracies of B→B transfer runs and of fit runs' best epochs."""
    if diagonal.get((target, seed)):
        return statistics.fmean(diagonal[(target, seed)]), "B→B transfer run, same seed"
    same = [v for (t, _), vs in diagonal.items() if t == target for v in vs]
    if same:
        return statistics.fmean(same), "B→B transfer runs, mean over seeds"
    if fitted.get((target, seed)):
        return statistics.fmean(fitted[(target, seed)]), "fit run of B, same seed (best val/acc)"
    same = [v for (t, _), vs in fitted.items() if t == target for v in vs]
    if same:
        return statistics.fmean(same), "fit runs of B, mean over seeds (best val/acc)"
    return None, "no B→B transfer run and no fit run of B"


def transfer_section(ctx: Context) -> Section:
    """Relative transfer scores per backbone: ``100 · acc(A→B) / acc(B→B)``.

    For each transfer run A→B with prompt seed s, ``acc(B→B)`` is, in this order: the mean of the B→B
    transfer runs with seed s; the mean of all B→B transfer runs; the best ``val/acc`` of the fit run of B
    with seed s (same backbone); the mean over seeds of the fit runs of B. The relative score is computed
    per run, then averaged over the runs (seeds) of the cell: mean ± sd. A cell A→A whose reference comes
    from A→A transfer runs is 100.0 by construction (exactly)."""
    section = Section("transfer")
    runs = ctx.of_kind("transfer")
    if not runs:
        return section.leave_out(
            f"No transfer runs among the {len(ctx.runs)} runs read (runs with a `transfer` section and no "
            "`suppression` come from the transfer experiment: task A's prompt evaluated on task B with "
            "`skill-neurons validate`).")
    section.lines += [("Relative score = 100 · acc(A→B) / acc(B→B), per seed (the A→B run's prompt seed is "
                      "matched with the B→B run, or the fit run of B, of the same seed when there is one), "
                      "then mean ± sd over seeds. Rows: source task A (the prompt), columns: target task B. "
                      "Tasks are ordered by task type, then name."), ""]
    section.data["backbones"] = {}
    all_cells = []
    by_backbone: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_backbone[run.backbone].append(run)
    fits = ctx.of_kind("fit")
    for backbone in sorted(by_backbone, key=lambda b: (family_rank(by_backbone[b][0].family), b)):
        family = by_backbone[backbone][0].family
        entries = []  # (source, target, seed, accuracy %, run)
        skipped = []
        for run in by_backbone[backbone]:
            info = run.summary["transfer"]
            source = info.get("source_task") or (run.summary.get("prompt_source") or {}).get("task")
            target = info.get("target_task") or run.task
            accuracy = transfer_accuracy(run)
            if source is None or target is None or accuracy is None:
                skipped.append(run.describe())
                continue
            entries.append((str(source), str(target), run.seed, accuracy, run))
        diagonal: dict[tuple, list[float]] = defaultdict(list)
        for source, target, seed, accuracy, _ in entries:
            if source == target:
                diagonal[(target, seed)].append(accuracy)
        fitted: dict[tuple, list[float]] = defaultdict(list)
        for run in fits:
            if run.backbone == backbone and fit_accuracies(run).get("validation") is not None:
                fitted[(run.task, run.seed)].append(pct(fit_accuracies(run)["validation"]))

        tasks = ctx.task_order({e[0] for e in entries} | {e[1] for e in entries})
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for source, target, seed, accuracy, run in entries:
            ref, how = transfer_reference(diagonal, fitted, target, seed)
            if ref is None:
                relative = None
            elif source == target and how.startswith("B→B"):
                relative = 100.0  # by construction: the run is (one of) its own reference
            else:
                relative = 100.0 * (accuracy / ref) if ref > 0 else None
            cell = cells.setdefault((source, target), {"backbone": backbone, "family": family, "source": source,
                                                        "target": target, "seeds": [], "runs": [],
                                                        "accuracy_values": [], "reference_values": [],
                                                        "relative_values": [], "references": []})
            cell["seeds"].append(seed)
            cell["runs"].append(run.run_id)
            cell["accuracy_values"].append(accuracy)
            cell["reference_values"].append(ref)
            cell["relative_values"].append(relative)
            if how not in cell["references"]:
                cell["references"].append(how)
        for cell in cells.values():
            cell["n"] = len(cell["runs"])
            cell["accuracy_mean"], cell["accuracy_sd"] = mean_sd(cell["accuracy_values"])
            relatives = [v for v in cell["relative_values"] if v is not None]
            cell["relative_mean"], cell["relative_sd"] = mean_sd(relatives)
            cell["reference"] = "; ".join(cell.pop("references"))
        matrix = [[cells.get((a, b), {}).get("relative_mean") for b in tasks] for a in tasks]
        accuracy_matrix = [[cells.get((a, b), {}).get("accuracy_mean") for b in tasks] for a in tasks]
        ordered = [cells[(a, b)] for a in tasks for b in tasks if (a, b) in cells]
        all_cells += ordered
        section.data["backbones"][backbone] = {"family": family, "tasks": tasks, "relative_matrix": matrix,
                                               "accuracy_matrix": accuracy_matrix, "cells": ordered,
                                               "skipped": skipped}
        section.lines += [f"### {backbone} ({family_name(family)})", ""]
        section.lines += markdown_table(
            ["source ↓ / target →", *tasks],
            [[a, *(fmt(cells[(a, b)]["relative_mean"], cells[(a, b)]["relative_sd"]) if (a, b) in cells else "—"
                   for b in tasks)] for a in tasks])
        figure = transfer_figure(ctx, backbone, family, tasks, matrix)
        section.figures.append(figure)
        section.lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]
        section.lines += ["Accuracy (%) of the transferred prompts, mean ± sd over seeds:", ""]
        section.lines += markdown_table(
            ["source ↓ / target →", *tasks],
            [[a, *(fmt(cells[(a, b)]["accuracy_mean"], cells[(a, b)]["accuracy_sd"]) if (a, b) in cells else "—"
                   for b in tasks)] for a in tasks])
        references = sorted({(c["target"], c["reference"]) for c in ordered if not c["reference"].startswith("B→B")})
        if references:
            section.lines += ["acc(B→B) not from B→B transfer runs: " +
                              "; ".join(f"{t}: {how}" for t, how in references) + ".", ""]
        if skipped:
            section.lines += [(f"Skipped transfer runs without source task, target task or accuracy: "
                              f"{', '.join(skipped)}."), ""]
    section.tables["transfer"] = [{k: v for k, v in c.items() if not k.endswith("_values")} for c in all_cells]
    return section


def transfer_figure(ctx: Context, backbone: str, family: str, tasks: list[str], matrix: list[list]) -> Figure:
    """Heat map of relative transfer scores (rows: source, columns: target), task-type groups separated."""
    import numpy as np

    fig, axes, figure = ctx.figure(slug("transfer", backbone), f"Relative transfer score (%), {backbone}",
                                   SQUARE)
    ax = axes[0][0]
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=min(0.0, np.nanmin(values)),
                      vmax=max(100.0, np.nanmax(values)))
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize="small",
                        color="white" if values[i, j] < 60 else "black")
    types = ctx.task_types()
    for k in range(1, len(tasks)):
        if types.get(tasks[k]) != types.get(tasks[k - 1]):
            ax.axhline(k - 0.5, color="white", linewidth=2)
            ax.axvline(k - 0.5, color="white", linewidth=2)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n({types.get(t, '?')})" for t in tasks], rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(len(tasks)))
    ax.set_yticklabels([f"{t} ({types.get(t, '?')})" for t in tasks], fontsize="small")
    ax.set_xlabel("target task B (evaluated on)")
    ax.set_ylabel("source task A (prompt from)")
    ax.set_title(f"{backbone} ({family_name(family)}): 100 · acc(A→B) / acc(B→B)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="relative score (%)")
    return ctx.save(fig, figure)


# --- suppression


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
                info.get("part", "encoder"), info.get("adversarial_neurons", "clean"))].append(run)
    order = ctx.task_order({k[2] for k in groups})
    rows = []
    for key in sorted(groups, key=lambda k: (family_rank(k[0]), k[1], order.index(k[2]), str(k[3:]))):
        family, backbone, task, perturbation, std, part, adversarial_neurons = key
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
                               "selection": selection, "rate": rate, "set": name,
                               "kind": "clean" if name == "validation" else "adversarial", "n": len(numbers),
                               "seeds": [r.seed for r, _ in points[(selection, rate, name)]],
                               "runs": [r.run_id for r, _ in points[(selection, rate, name)]],
                               "values": numbers, "mean": mean, "sem": sem, "chance": chance})
        rows += group_rows
        what = f"{perturbation}" + (f" (std {std:g})" if std is not None else "")
        title = f"{backbone} · {task} · {what} · {part} units · adversarial sets suppress the {adversarial_neurons} skill neurons"
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

    _, backbone, task, perturbation, std, part, adversarial_neurons = key
    name = slug("suppression", backbone, task, perturbation, *([std] if std is not None else []), part,
                adversarial_neurons)
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
    per_layer_boxplot(ax, combined, colours, part, "score (max predictivity over positions), mean over seeds")
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


def adversarial_predictivity_section(ctx: Context, runs: list[Run]) -> Section:
    """Histogram of the adversarial score of the clean top-n% neurons, pooled per family (RoBERTa vs T5)."""
    section = Section("adversarial_predictivity")
    p = ctx.percent
    pooled: dict[str, dict[str, Any]] = {}
    for run in runs:
        clean = ctx.scores.score(run, ctx.eval_set)
        if clean is None:
            continue
        mask = top_percent_mask(clean, p)  # (L, N) the clean skill neurons
        for name in ctx.adversarial_sets(run):
            adversarial = ctx.scores.score(run, name)
            if adversarial is None or adversarial.shape != clean.shape:
                continue
            entry = pooled.setdefault(run.family, {"adversarial": [], "clean": [], "backbones": set(), "runs": set(),
                                                   "pairs": 0})
            entry["adversarial"].append(adversarial[mask])  # (L·k,)
            entry["clean"].append(clean[mask])
            entry["backbones"].add(run.backbone)
            entry["runs"].add(run.run_id)
            entry["pairs"] += 1
    if not pooled:
        return section.leave_out(no_neuron_runs(ctx) if not runs else
                                 f"No adversarial neuron files among the {len(runs)} runs analysed on "
                                 f"'{ctx.eval_set}' (needs `skill_neurons/<adversarial set>.safetensors`).")
    rows, values = [], {}
    for family in sorted(pooled, key=family_rank):
        entry = pooled[family]
        adversarial = torch.cat(entry["adversarial"]).to(torch.float64)
        clean = torch.cat(entry["clean"]).to(torch.float64)
        values[family] = adversarial.numpy()
        rows.append({"family": family, "family_name": family_name(family), "backbones": sorted(entry["backbones"]),
                     "runs": len(entry["runs"]), "run_set_pairs": entry["pairs"], "percent": p,
                     "neurons": int(adversarial.numel()), "mean": float(adversarial.mean()),
                     "sd": float(adversarial.std()) if adversarial.numel() > 1 else None,
                     "median": float(adversarial.median()), "clean_mean": float(clean.mean())})
    section.lines += [(f"Adversarial score of the clean top-{p:g}% neurons (per layer) of every run and adversarial "
                      "set, pooled per model family. Mean ± sd over neurons."), ""]
    absent = [f for f in FAMILY_ORDER if f not in pooled]
    if absent:
        section.lines += [(f"No {', '.join(f'{family_name(f)} ({f})' for f in absent)} runs with an adversarial "
                          f"skill-neuron analysis among the {len(ctx.runs)} runs read — the comparison shows "
                          f"{', '.join(family_name(f) for f in pooled)} backbones only."), ""]
    section.lines += markdown_table(
        ["family", "backbones", "runs", "neurons", "adversarial predictivity", "median", "clean predictivity"],
        [[r["family_name"], ", ".join(r["backbones"]), r["runs"], r["neurons"], fmt(r["mean"], r["sd"], digits=3),
          f"{r['median']:.3f}", f"{r['clean_mean']:.3f}"] for r in rows])
    section.figures.append(histogram_figure(ctx, values, p))
    section.lines += [f"![{section.figures[0].caption}](figures/{section.figures[0].path.name})", ""]
    section.tables["adversarial_predictivity"] = rows
    section.data.update(rows=rows)
    return section


def histogram_figure(ctx: Context, values: dict[str, Any], percent: float) -> Figure:
    """Overlaid density histograms of the adversarial predictivity of clean skill neurons, per family."""
    import numpy as np

    fig, axes, figure = ctx.figure("adversarial_predictivity", f"Adversarial predictivity of the clean top-{percent:g}% "
                                   "neurons, RoBERTa-like vs T5-like", WIDE)
    ax = axes[0][0]
    bins = np.linspace(0.5, 1.0, 26)
    colours = {"masked_lm": "tab:blue", "seq2seq": "tab:orange"}
    for family, data in values.items():
        colour = colours.get(family, "tab:green")
        ax.hist(np.clip(data, 0.5, 1.0), bins=bins, density=True, alpha=0.5, color=colour,
                label=f"{family_name(family)} (n = {len(data)})")
        ax.axvline(float(np.mean(data)), color=colour, linestyle="--")
    ax.set_xlabel("adversarial predictivity (score on the adversarial set)")
    ax.set_ylabel("density")
    ax.set_title(f"Clean top-{percent:g}% skill neurons on adversarial data (dashed: means)")
    ax.legend()
    return ctx.save(fig, figure)


def spearman_figure(ctx: Context, name: str, caption: str, labels: list[str], matrix: torch.Tensor,
                    title: str) -> Figure:
    """Heat map of a Spearman matrix in [-1, 1], values written in the cells."""
    fig, axes, figure = ctx.figure(name, caption, SQUARE)
    ax = axes[0][0]
    image = ax.imshow(matrix.numpy(), cmap="coolwarm", vmin=-1, vmax=1)
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{float(matrix[i, j]):.2f}", ha="center", va="center", fontsize="small")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize="small")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Spearman ρ")
    return ctx.save(fig, figure)


def off_diagonal(matrix: torch.Tensor) -> list[float]:
    count = matrix.shape[0]
    return [float(matrix[i, j]) for i in range(count) for j in range(count) if i != j]


def spearman_seeds_section(ctx: Context, runs: list[Run]) -> Section:
    """Spearman correlation of the clean scores of different seeds, per backbone × task."""
    section = Section("spearman_seeds")
    groups = {k: v for k, v in neuron_groups(ctx, runs).items() if len(v) > 1}
    if not groups:
        return section.leave_out(no_neuron_runs(ctx) if not runs else
                                 "Needs at least two seeds of the same backbone and task with a skill-neuron analysis "
                                 f"of '{ctx.eval_set}' (and neuron files of the same shape); none among the "
                                 f"{len(runs)} analysed runs.")
    rows, problems = [], []
    for (family, backbone, part, task, shape), members in groups.items():
        scores = [ctx.scores.score(r, ctx.eval_set) for r in members]
        labels = run_labels(members)
        try:
            matrix = spearman_matrix(scores)  # (S, S)
        except ValueError as error:
            problems.append(f"{backbone} · {task}: {error}")
            continue
        others = off_diagonal(matrix)
        figure = spearman_figure(ctx, slug("spearman_seeds", backbone, part, task),
                                 f"Spearman ρ of clean scores across seeds, {backbone} · {task}", labels, matrix,
                                 f"{backbone} · {task}: Spearman ρ across seeds")
        section.figures.append(figure)
        rows.append({"backbone": backbone, "family": family, "part": part, "task": task, "n": len(members),
                     "seeds": [r.seed for r in members], "runs": [r.run_id for r in members], "labels": labels,
                     "matrix": matrix.tolist(), "mean_rho": statistics.fmean(others), "min_rho": min(others),
                     "max_rho": max(others)})
    if not rows:
        return section.leave_out("Spearman correlation across seeds is undefined here: " + "; ".join(problems))
    section.lines += [(f"Spearman ρ between the clean ('{ctx.eval_set}') neuron scores (layers × units, flattened) "
                      "of different seeds; mean, min and max over the pairs. Full matrices in the figures and "
                      "report.json."), ""]
    section.lines += markdown_table(
        ["backbone", "part", "task", "seeds", "mean ρ", "min ρ", "max ρ"],
        [[r["backbone"], r["part"], r["task"], ", ".join(seed_label(s) for s in r["seeds"]),
          f"{r['mean_rho']:.3f}", f"{r['min_rho']:.3f}", f"{r['max_rho']:.3f}"] for r in rows])
    section.lines += [f"![{f.caption}](figures/{f.path.name})" for f in section.figures] + [""]
    section.lines += [f"Left out: {p}" for p in problems]
    section.tables["spearman_seeds"] = [{k: v for k, v in r.items() if k != "matrix"} for r in rows]
    section.data.update(rows=rows)
    return section


def spearman_tasks_section(ctx: Context, runs: list[Run]) -> Section:
    """Spearman correlation across tasks of the seed-averaged clean scores (``mean_over_prompts``), per
    backbone; only scores of identical shape (same backbone and part) are compared."""
    section = Section("spearman_tasks")
    by_backbone: dict[tuple, dict[str, list[torch.Tensor]]] = defaultdict(dict)
    for (family, backbone, part, task, shape), members in neuron_groups(ctx, runs).items():
        by_backbone[(family, backbone, part, shape)][task] = [ctx.scores.score(r, ctx.eval_set) for r in members]
    by_backbone = {k: v for k, v in by_backbone.items() if len(v) > 1}
    if not by_backbone:
        return section.leave_out(no_neuron_runs(ctx) if not runs else
                                 "Needs skill-neuron analyses of at least two tasks on the same backbone (and part); "
                                 f"none among the {len(runs)} analysed runs.")
    section.lines += [(f"Spearman ρ between tasks of the clean ('{ctx.eval_set}') neuron scores averaged over seeds "
                      "(max over positions, then mean over prompts). Tasks ordered by type, then name."), ""]
    rows, problems = [], []
    for (family, backbone, part, shape), tasks in sorted(by_backbone.items(), key=lambda kv: (family_rank(kv[0][0]),
                                                                                              kv[0][1], kv[0][2])):
        names = ctx.task_order(tasks)
        combined = [mean_over_prompts(tasks[t]) for t in names]  # each (L, N)
        try:
            matrix = spearman_matrix(combined)  # (T, T)
        except ValueError as error:
            problems.append(f"{backbone}: {error}")
            continue
        rows.append({"backbone": backbone, "family": family, "part": part, "tasks": names,
                     "seeds": {t: len(tasks[t]) for t in names}, "matrix": matrix.tolist(),
                     "mean_rho": statistics.fmean(off_diagonal(matrix))})
        section.lines += [f"### {backbone} ({family_name(family)}, {part})", ""]
        section.lines += markdown_table([" ", *names], [[a, *(f"{float(matrix[i, j]):.3f}" for j in range(len(names)))]
                                                       for i, a in enumerate(names)])
        figure = spearman_figure(ctx, slug("spearman_tasks", backbone, part),
                                 f"Spearman ρ of seed-averaged scores across tasks, {backbone}", names, matrix,
                                 f"{backbone}: Spearman ρ across tasks")
        section.figures.append(figure)
        section.lines += [f"![{figure.caption}](figures/{figure.path.name})", ""]
    if not rows:
        return section.leave_out("Spearman correlation across tasks is undefined here: " + "; ".join(problems))
    section.lines += [f"Left out: {p}" for p in problems]
    section.tables["spearman_tasks"] = [{k: v for k, v in r.items() if k != "matrix"} for r in rows]
    section.data.update(rows=rows)
    return section


# ----------------------------------------------------------------------------- the report


def build_sections(ctx: Context) -> list[Section]:
    """Every section; one that fails on unexpected data is left out with the error, never a crash."""
    neuron_runs = ctx.neuron_runs()
    builders = [
        ("runs", lambda: runs_section(ctx)),
        ("accuracy", lambda: accuracy_section(ctx)),
        ("transfer", lambda: transfer_section(ctx)),
        ("suppression", lambda: suppression_section(ctx)),
        ("per_layer", lambda: per_layer_section(ctx, neuron_runs)),
        ("overlap", lambda: overlap_section(ctx, neuron_runs)),
        ("adversarial_predictivity", lambda: adversarial_predictivity_section(ctx, neuron_runs)),
        ("spearman_seeds", lambda: spearman_seeds_section(ctx, neuron_runs)),
        ("spearman_tasks", lambda: spearman_tasks_section(ctx, neuron_runs)),
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
             f"{len(ctx.finished)} finished. Skill neurons: top {ctx.percent:g}% of units per layer on "
             f"'{ctx.eval_set}'. Numbers as in `report.json`."), ""]
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
                        help="skill neurons = top n%% of units per layer (default 5); overlap is also shown "
                             "at 1, 5, 10, 15")
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
