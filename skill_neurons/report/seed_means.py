"""The seed means the paper's analyses start from, and the input checks that must pass before any of them.

P1 analyses one (L, N) score per task and backbone: the mean over its prompts (seeds) of each prompt's max
over positions (``src/find.py::get_max_mean``, files ``{dataset}Prompt{model}_mean.npy``; adversarial sets
``Adv{dataset}Prompt{model}_mean.npy``). :func:`seed_means` builds these from the runs' neuron files. A task
with fewer seeds than its backbone's other tasks is averaged over the seeds present and marked (``†``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from records.neuron_selection import Sizing, sizing_of
from records.settings import RunSettings
from skill_neurons.report.base import Context, ReportError, Run, family_rank, seed_label, seed_rank
from skill_neurons.report.groups import check_layouts

MARK = " †"  # a seed mean over fewer seeds than the backbone's other tasks


@dataclass
class SeedMean:
    """One backbone × part × task: the seed-mean (L, N) score of the clean set and of each adversarial set."""

    family: str
    backbone: str
    part: str
    task: str
    task_type: str | None
    runs: list[Run]
    expected_seeds: list
    sets: dict[str, np.ndarray] = field(default_factory=dict)  # set name -> (L, N) float64 seed mean
    set_seeds: dict[str, list] = field(default_factory=dict)  # set name -> seeds behind that mean
    balanced: dict[str, np.ndarray] = field(default_factory=dict)  # the same for balanced_score (if stored)
    baselines: dict[str, float] = field(default_factory=dict)  # set name -> majority-class share
    sizing: Sizing = "ceil"  # of the top-n% sets: the runs' layout's (records.neuron_selection.sizing_of)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def missing_seeds(self) -> list:
        return [s for s in self.expected_seeds if s not in self.seeds]

    @property
    def mark(self) -> str:
        return MARK if self.missing_seeds else ""

    @property
    def label(self) -> str:
        return f"{self.backbone} · {self.task}{self.mark}"

    def row(self) -> dict:
        """The identifying columns of a report.json row."""
        return {"backbone": self.backbone, "family": self.family, "part": self.part, "task": self.task,
                "task_type": self.task_type, "seeds": self.seeds, "missing_seeds": self.missing_seeds,
                "runs": [r.run_id for r in self.runs]}


def majority_baseline(run: Run, name: str) -> float | None:
    """The majority-class share of a set: the raw predictivity of a unit that never changes."""
    info = (run.neurons.get("sets") or {}).get(name) or {}
    if info.get("majority_baseline") is not None:
        return float(info["majority_baseline"])
    counts = info.get("class_count")
    return max(counts) / sum(counts) if counts and sum(counts) else None


def seed_means(ctx: Context) -> list[SeedMean]:
    """Every backbone × part × task of the neuron runs, with its seed means (computed once per report)."""
    if "seed_means" in ctx.cache:
        return ctx.cache["seed_means"]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in ctx.neuron_runs():
        if ctx.scores.score(run, ctx.eval_set) is not None:
            groups[(run.family, run.backbone, run.part, run.task)].append(run)
    expected: dict[tuple, set] = defaultdict(set)
    for (_, backbone, part, _), members in groups.items():
        expected[(backbone, part)].update(r.seed for r in members)
    means = []
    order = ctx.task_order({key[3] for key in groups})
    for key in sorted(groups, key=lambda k: (family_rank(k[0]), k[1], k[2], order.index(k[3]))):
        family, backbone, part, task = key
        members = sorted(groups[key], key=lambda r: seed_rank(r.seed))
        mean = SeedMean(family, backbone, part, task, ctx.task_types().get(task), members,
                        sorted(expected[(backbone, part)], key=seed_rank), sizing=sizing_of_run(ctx, members[0]))
        names = [ctx.eval_set, *sorted({s for r in members for s in ctx.adversarial_sets(r)})]
        for name in names:
            scored = [(r, ctx.scores.score(r, name)) for r in members]
            scored = [(r, s) for r, s in scored if s is not None]
            if not scored:
                continue
            mean.sets[name] = np.mean([s.numpy().astype(np.float64) for _, s in scored], axis=0)
            mean.set_seeds[name] = [r.seed for r, _ in scored]
            balanced = [ctx.scores.score(r, name, "balanced_score") for r, _ in scored]
            if all(b is not None for b in balanced):
                mean.balanced[name] = np.mean([b.numpy().astype(np.float64) for b in balanced], axis=0)
            baselines = [b for r, _ in scored if (b := majority_baseline(r, name)) is not None]
            if baselines:
                mean.baselines[name] = float(np.mean(baselines))
        means.append(mean)
    ctx.cache["seed_means"] = means
    return means


def missing_seed_lines(means: list[SeedMean]) -> list[str]:
    """One line per seed mean over fewer seeds than its backbone's other tasks."""
    lines = [f"- {m.backbone} · {m.task}: seed mean over {len(m.seeds)} of {len(m.expected_seeds)} seeds "
             f"(missing {', '.join(seed_label(s) for s in m.missing_seeds)}){MARK}"
             for m in means if m.missing_seeds]
    if lines:
        lines = ["Seed means over the seeds present (marked † in tables and figures):", "", *lines, ""]
    return lines


def layout_of(ctx: Context, run: Run) -> tuple[str, str | None]:
    """(input layout, analysed positions) of a run as its neuron files record them (its summary's for older
    files); positions None for a run without an analysis of its own (transfer, suppression)."""
    layout: tuple[str, str | None] = run.layout
    sets = (run.neurons.get("sets") or {}) if run.kind in ("fit", "validate", "test") else {}
    for name in sets:
        meta = ctx.scores.metadata(run, name)
        if meta.get("layout") or meta.get("analysed_positions"):  # else a file older than both: the summary's
            file = RunSettings.from_neuron_file(meta)
            layout = (file.layout, file.positions)
    if not sets:
        layout = (layout[0], None)  # no analysis of its own (transfer, suppression): only its layout counts
    return layout


def sizing_of_run(ctx: Context, run: Run) -> Sizing:
    """The sizing of a run's top-n% sets, as its skill-neuron callback used it: P1's under layout ``paper``."""
    return sizing_of(layout_of(ctx, run)[0])


def check_inputs(ctx: Context, runs: list[Run]) -> None:
    """Refuse, before any section is computed, runs that cannot be analysed together: a backbone family whose
    ``runs`` (the finished runs the filters keep) mix input layouts or analysed positions, and neuron files of
    different shapes for the same backbone and part."""
    check_layouts([r for r in runs if r.finished], lambda run: layout_of(ctx, run))
    neuron_runs = ctx.neuron_runs()
    shapes: dict[tuple[str, str], dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for run in neuron_runs:
        for name in run.neurons.get("sets") or {}:
            score = ctx.scores.score(run, name)
            if score is not None:
                shapes[(run.backbone, run.part)][tuple(score.shape)].append(str(ctx.scores.path(run, name)))
    for (backbone, part), found in shapes.items():
        if len(found) > 1:
            listing = "; ".join(f"{list(shape)}: {', '.join(files)}" for shape, files in sorted(found.items()))
            raise ReportError(f"neuron files of {backbone} ({part}) have different shapes (layers, units) — "
                              f"{listing} — they cannot be the same neurons: pass the runs of one model only")
