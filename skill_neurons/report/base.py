"""What every section of ``skill-neurons report`` shares: the runs read, the neuron files, the figure canvas,
numbers and markdown formatting. No section lives here; :mod:`skill_neurons.report.main` assembles them."""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from records.errors import UserError
from records.eval_set import EvalSet, parse_metric
from records.figures import save_figure
from records.neuron_files import OUTPUT_DIR, SkillNeuronError, neuron_file_of
from records.settings import RunSettings

FAMILY_NAMES = {"masked_lm": "RoBERTa-like", "seq2seq": "T5-like", "causal_lm": "GPT-like (decoder-only)"}
# The paper's two families, in its order (the accuracy table notes which of them are absent); any other family,
# such as causal_lm, ranks after them.
FAMILY_ORDER = ("masked_lm", "seq2seq")
TYPE_ORDER = ("sentiment", "nli", "paraphrase", "ethics")  # the papers' task types, in their order
OVERLAP_PERCENTS = (1, 5, 10, 15)  # the n of overlap@n% P1 reports (the callback's default too)
DPI = 100
WIDE = (1200, 600)  # pixels (width, height) of line, bar and box plots
SQUARE = (800, 800)  # pixels of heat maps
TITLES = {
    "runs": "Runs read",
    "accuracy": "Accuracy: clean vs adversarial",
    "attacks": "Generated adversarial sets: attack success per backbone",
    "transfer": "Prompt transfer between tasks",
    "paper_boxes": "Neuron predictivity per dataset and model accuracy",
    "paper_overlap": "Overlap of clean and adversarial skill neurons vs n",
    "paper_histogram": "Adversarial predictivity of the clean skill neurons: RoBERTa vs T5",
    "paper_location": "Layer location of the skill neurons",
    "spearman_seeds": "Spearman correlation across seeds",
    "spearman_tasks": "Spearman correlation across tasks",
    "paper_suppression": "Suppression of skill neurons: RoBERTa and T5",
    "suppression": "Suppression runs in detail (ours: per backbone, with the rate-0 check)",
    "intervention": "Causal tests: patching and scaling skill neurons (gap restored vs n, skill vs random)",
    "balanced": "Class-balanced predictivity (beyond the paper)",
    "per_layer": "Predictivity per layer (ours)",
    "overlap": "Overlap per seed, checked against summary.json (ours)",
    "metric_agreement": "Continuous neuron metrics vs P1's predictivity (beyond the paper)",
    "selectivity": "Selectivity of units across tasks (LAPE entropy, beyond the paper)",
    "overlap_transfer": "Skill-neuron overlap vs prompt transfer (beyond the paper)",
}
TOLERANCE = 1e-6  # recomputed vs summary.json numbers (both float64 from the same float32 scores)


class ReportError(UserError, ValueError):
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
        """``suppression``, ``intervention``, ``transfer``, or the stage (``fit``, ``validate``, ``test``)."""
        if self.summary.get("suppression"):
            return "suppression"
        if self.summary.get("intervention"):
            return "intervention"
        if self.summary.get("transfer"):
            return "transfer"
        return str(self.summary.get("stage") or "unknown")

    @property
    def settings(self) -> dict[str, Any]:
        """The ``settings`` section as the run recorded it (:attr:`run_settings` reads it with older files'
        defaults)."""
        return self.summary.get("settings") or {}

    @property
    def run_settings(self) -> RunSettings:
        """The run's settings (:meth:`records.settings.RunSettings.from_summary`)."""
        return RunSettings.from_summary(self.summary)

    @property
    def data(self) -> dict[str, Any]:
        return self.summary.get("data") or {}

    @property
    def neurons(self) -> dict[str, Any]:
        return self.summary.get("skill_neurons") or {}

    @property
    def backbone(self) -> str:
        return str(self.run_settings.backbone or "unknown backbone")

    @property
    def family(self) -> str:
        return str(self.run_settings.family)

    @property
    def task(self) -> str:
        return str(self.run_settings.task or "unknown task")

    @property
    def task_type(self) -> str | None:
        return self.data.get("task_type")

    @property
    def seed(self) -> Any:
        """The seed of the prompt: the source prompt's for transfer/suppression runs, else the run's own."""
        source = self.summary.get("prompt_source") or {}
        return source.get("seed", self.run_settings.seed)

    @property
    def chance(self) -> float | None:
        """Chance accuracy in %: 100 / number of classes (None when the labels are unknown)."""
        labels = self.data.get("label_names") or self.neurons.get("label_names")
        return 100.0 / len(labels) if labels else None

    @property
    def layout(self) -> tuple[str, str]:
        """(input layout, analysed positions) of the run's settings."""
        return self.run_settings.layout, self.run_settings.positions

    @property
    def part(self) -> str:
        return self.run_settings.part

    def describe(self) -> str:
        return f"`{self.run_id}` ({self.kind}, {self.backbone}, {self.task}, seed {self.seed})"


@dataclass
class Inputs:
    """What was read: runs, files that were not run summaries, the arguments."""

    runs: list[Run]
    invalid: list[str]
    arguments: list[str]


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


def mixed_settings(runs: list[Run], what: str) -> list[str]:
    """A line per setting (other than the seed) that differs among runs averaged together, or none."""
    lines = []
    for key in ("prompt_length", "learning_rate", "precision"):
        values = sorted({str(getattr(r.run_settings, key)) for r in runs})
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
    table: str | None = None  # the section table (report.json) the figure draws
    configuration: str = ""  # which configuration(s) its runs are of, as its title says


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
    """The (L, N) neuron scores of runs' skill-neuron files, read once each, and the files' metadata.

    Only ``score`` (and ``balanced_score`` when asked) is read: the (L, P, N) tensors of a full grid of runs
    would not fit in memory."""

    def __init__(self):
        self._cache: dict[str, torch.Tensor | None] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self.paths: dict[str, Path] = {}
        self.missing: list[str] = []
        self.unreadable: list[str] = []  # the entries of ``missing`` for a file that exists but cannot be read

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

    def score(self, run: Run, name: str, tensor: str = "score") -> torch.Tensor | None:
        """(L, N) float32 ``tensor`` (``score`` or ``balanced_score``) of the run's set ``name``, or None
        (a missing file is noted in ``missing``; a file without that tensor is not)."""
        key = f"{run.source}::{name}::{tensor}"
        if key not in self._cache:
            path = self.file(run, name)
            score = None
            if path is None:
                if tensor == "score":
                    self.missing.append(f"{run.describe()}: no neuron file for set '{name}' (looked in "
                                        f"{run.directory / OUTPUT_DIR})")
            else:
                from safetensors import safe_open

                try:
                    with safe_open(str(path), framework="pt") as f:
                        self.paths[f"{run.source}::{name}"] = path
                        self._meta[f"{run.source}::{name}"] = {k: json.loads(v) for k, v in
                                                               (f.metadata() or {}).items()}
                        if tensor in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                            score = f.get_tensor(tensor).to(torch.float32)  # (L, N)
                except Exception as error:  # noqa: BLE001 (a broken file leaves the run out, with why)
                    self.missing.append(f"{run.describe()}: cannot read {path} ({error})")
                    self.unreadable.append(self.missing[-1])
            self._cache[key] = score
        return self._cache[key]

    def metadata(self, run: Run, name: str) -> dict[str, Any]:
        """The metadata of the run's file of set ``name`` (empty without a file)."""
        self.score(run, name)
        return self._meta.get(f"{run.source}::{name}", {})

    def path(self, run: Run, name: str) -> Path | None:
        self.score(run, name)
        return self.paths.get(f"{run.source}::{name}")


@dataclass
class Context:
    """Everything the sections share."""

    inputs: Inputs
    figures_dir: Path
    percent: float
    eval_set: str
    selection: Any = None  # skill_neurons.report.groups.Selection: configurations, runs left out
    scores: NeuronScores = field(default_factory=NeuronScores)
    cache: dict[str, Any] = field(default_factory=dict)  # shared results of several sections
    _types: dict[str, str] | None = None

    @property
    def runs(self) -> list[Run]:
        return self.inputs.runs

    @property
    def finished(self) -> list[Run]:
        """The finished runs the sections use: of the configuration chosen for their backbone × task, no
        repeated seed (see :mod:`skill_neurons.report.groups`)."""
        return [r for r in self.runs if r.finished and (self.selection is None or self.selection.used(r))]

    def run_label(self, run: Run) -> str:
        """``lr3e-3 · seed 33``: the run's configuration (its label, else its id) and seed."""
        configuration = self.selection.configuration(run) if self.selection is not None else None
        name = (configuration.label or configuration.id) if configuration is not None else ""
        return f"{name} · seed {seed_label(run.seed)}" if name else f"seed {seed_label(run.seed)}"

    def configuration_note(self, rows: list[dict[str, Any]]) -> str:
        """Which configuration(s) the runs of table ``rows`` (keys ``runs`` or ``run_id``) are of."""
        if self.selection is None:
            return ""
        ids = [i for row in rows for i in (row.get("runs") or [row.get("run_id")]) if i]
        return self.selection.note(list(dict.fromkeys(ids)), self.runs)

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
        """Tasks ordered by task type (TYPE_ORDER, then others alphabetically), then name."""
        types = self.task_types()

        def key(task: str) -> tuple:
            kind = types.get(task) or "~unknown"
            return (TYPE_ORDER.index(kind) if kind in TYPE_ORDER else len(TYPE_ORDER), kind, task)

        return sorted(set(tasks), key=key)

    def neuron_runs(self) -> list[Run]:
        """One analysis per prompt (a fit run and a ``validate --ckpt_path`` run of its checkpoint analyse the
        same prompt: the one that analysed the most sets, then fit runs, then the latest finished) among the
        finished runs that analysed ``eval_set`` (suppression runs and transfers to another task excluded; a
        ``validate --from_run`` on the prompt's own task, recorded as a transfer to itself, is a candidate)."""
        chosen: dict[tuple, Run] = {}
        rank = {"fit": 0, "test": 1, "validate": 2}
        candidates = [r for r in self.of_kind("fit", "validate", "test", "transfer")
                      if self.eval_set in (r.neurons.get("sets") or {}) and (r.kind != "transfer" or on_own_task(r))]
        candidates.sort(key=lambda r: str(r.summary.get("finished", "")), reverse=True)  # latest first
        candidates.sort(key=lambda r: rank.get(r.kind, 3))  # stable: fit runs first, latest first among equals
        # a validate run of the prompt that analysed more sets (the generated sets of evaluate_attacks.yaml beside
        # the fit's) goes first: its clean analysis is the fit's, recomputed from the same checkpoint
        candidates.sort(key=lambda r: -len(r.neurons.get("sets") or {}))
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
        return sorted(name for name, info in sets.items()
                      if name != self.eval_set and EvalSet.from_section(name, info).adversarial)

    def figure(self, name: str, caption: str, size: tuple[int, int], nrows: int = 1, ncols: int = 1):
        """A new matplotlib Figure (no pyplot state, Agg canvas) of exactly ``size`` pixels, and its axes."""
        from matplotlib.figure import Figure as MplFigure

        fig = MplFigure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        return fig, axes, Figure(name, caption, self.figures_dir / f"{name}.png", size)

    def save(self, fig, figure: Figure, table: str | None = None, rows: list[dict[str, Any]] | None = None) -> Figure:
        """Write the figure; ``table`` names the section table behind it (report.json) and ``rows`` (those of
        its rows it draws) say which configuration(s) it shows: a line under the title says which."""
        figure.table = table
        figure.configuration = self.configuration_note(rows or [])
        if figure.configuration:
            title = fig._suptitle.get_text() if fig._suptitle is not None else ""
            fig.suptitle("\n".join(t for t in (title, figure.configuration) if t), fontsize="medium")
        fig.tight_layout()
        figure.path.parent.mkdir(parents=True, exist_ok=True)  # the folder appears with its first figure
        save_figure(fig, figure.path, DPI)  # no bbox_inches="tight": the size stays exactly figure.size
        return figure


def on_own_task(run: Run) -> bool:
    """A ``validate``/``test`` of a fit run's prompt on the prompt's own task (``--from_run``: its summary has a
    ``transfer`` record from the task to itself), not a transfer to another task."""
    transfer = run.summary.get("transfer") or {}
    return bool(transfer) and transfer.get("source_task") == transfer.get("target_task")


# ----------------------------------------------------------------------------- accuracies of a run

def _accuracies(metrics: dict[str, Any] | None, stage: str) -> dict[str, float]:
    """Accuracy (fraction) per set of the metrics logged under ``stage`` (``val``, ``test``): the clean set
    first, then the adversarial sets."""
    found = [(m.eval_set, v) for k, v in (metrics or {}).items()
             if v is not None and (m := parse_metric(k)) and m.stage == stage and m.name == "acc"]
    return {s.name: v for s, v in sorted(found, key=lambda item: item[0].adversarial)}


def fit_accuracies(run: Run) -> dict[str, float]:
    """Accuracy per evaluation set of a fit run's best epoch: ``validation`` and adversarial sets."""
    return _accuracies(run.summary.get("best"), "val")


def test_accuracies(run: Run) -> dict[str, float]:
    """Accuracy per set of a test run: ``test`` and adversarial sets."""
    return _accuracies(run.summary.get("test_metrics"), "test")


def validate_accuracies(run: Run) -> dict[str, float]:
    """Accuracy per set of a validate run: ``validation`` and adversarial sets."""
    return _accuracies(run.summary.get("validate_metrics"), "val")
