"""Which runs the report compares: the user's filters, each run's configuration, one configuration per
backbone × task, and the comparable groups (backbone family × input layout × analysed positions).

* **Configuration** (:mod:`records.configuration`): a fit run's is that of its resolved config
  (``summary.json`` → ``config``). A run that evaluates a prompt (suppression, transfer, a plain ``validate``)
  inherits the configuration of the fit run that trained the prompt (``prompt_source.run_id``, read among the
  runs given or from ``prompt_source.run_dir``); when that fit run is nowhere to be found, its own config with
  the evaluation options left out (``suppression.*``, ``data.task`` set to the prompt's task). A run without a
  config (written before configs were recorded, or read from W&B) is described by its ``settings``.
* **Seeds**: runs of one configuration differ only in the seed. Two fit runs of one configuration with the same
  seed are one seed run twice: the latest finished is kept, the other left out with a line saying so (with the
  runs that evaluate its prompt), never averaged as a second seed.
* **One configuration per backbone × task**: every section uses, for each backbone and (prompt) task, one
  configuration: the one named with ``--configuration`` (its id or short label), else the best by the mean over
  its seeds of the best clean validation accuracy. The runs of the other configurations are listed, not used.
* **Comparable groups**: a backbone family's neurons are compared within one input layout and one choice of
  analysed positions; a family whose runs mix them is refused, naming the runs and the filter that selects one.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from records.configuration import configuration_id, configuration_of, differing_keys, label
from records.summary import SUMMARY_FILE
from skill_neurons.report.base import ReportError, Run, family_name, family_rank, fit_accuracies, seed_label, seed_rank

# settings -> LightningCLI keys, for runs without a recorded config
SETTINGS_KEYS = {"backbone": "model.backbone", "task": "data.task", "prompt_length": "model.prompt_length",
                 "learning_rate": "model.learning_rate", "layout": "model.layout", "precision": "trainer.precision"}
EVALUATION_PREFIXES = ("suppression.",)  # options of an evaluation, not of the prompt it evaluates


@dataclass
class Filters:
    """``--backbone`` (a backbone or a family), ``--task``, ``--layout``, ``--positions``: empty keeps all."""

    backbones: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    configurations: list[str] = field(default_factory=list)  # --configuration: ids (or prefixes) or labels

    def keeps(self, run: Run) -> bool:
        layout, positions = run.layout
        return ((not self.backbones or run.backbone in self.backbones or run.family in self.backbones)
                and (not self.tasks or run.task in self.tasks or prompt_task(run) in self.tasks)
                and (not self.layouts or layout in self.layouts)
                and (not self.positions or positions in self.positions))

    def describe(self) -> str:
        parts = [f"--{name} {' '.join(values)}" for name, values in (
            ("backbone", self.backbones), ("task", self.tasks), ("layout", self.layouts),
            ("positions", self.positions)) if values]
        return ", ".join(parts)


def prompt_task(run: Run) -> str:
    """The task the run's prompt was trained on (a transfer run's source task), else the run's task."""
    return str((run.summary.get("prompt_source") or {}).get("task") or run.task)


@dataclass(eq=False)  # one object per configuration: compared and hashed by identity
class Configuration:
    """One configuration of one backbone × task, and the finished runs of it the report read."""

    id: str
    family: str
    backbone: str
    task: str
    settings: dict[str, Any]  # records.configuration.configuration_of of its config
    config: dict[str, Any]  # one of its runs' flat config (for labels)
    runs: list[Run] = field(default_factory=list)
    label: str = ""  # the values of the keys this backbone × task's configurations differ in ("" when alone)
    selected: bool = False
    why: str = ""  # how it was chosen (or why not)

    @property
    def fits(self) -> list[Run]:
        return [r for r in self.runs if r.kind == "fit"]

    @property
    def seeds(self) -> list:
        return sorted({r.seed for r in self.fits} or {r.seed for r in self.runs}, key=seed_rank)

    @property
    def best_validation(self) -> float | None:
        """Mean over its fit runs of the best clean validation accuracy, in %."""
        values = [100 * v for r in self.fits if (v := fit_accuracies(r).get("validation")) is not None]
        return statistics.fmean(values) if values else None

    @property
    def name(self) -> str:
        """``lr3e-3 [ab12cd34]``, or ``[ab12cd34]`` when it is its backbone × task's only configuration."""
        return f"{self.label} [{self.id}]" if self.label else f"[{self.id}]"

    def record(self) -> dict[str, Any]:
        best = self.best_validation
        return {"id": self.id, "label": self.label, "family": self.family, "backbone": self.backbone,
                "task": self.task, "selected": self.selected, "why": self.why, "seeds": self.seeds,
                "best_val_acc_mean": best, "runs": [r.run_id for r in self.runs], "settings": self.settings}


@dataclass
class Selection:
    """The configurations of the runs read, the one chosen per backbone × task, and the runs left out."""

    configurations: list[Configuration] = field(default_factory=list)
    of_run: dict[str, Configuration] = field(default_factory=dict)  # run.source -> its configuration
    left_out: dict[str, str] = field(default_factory=dict)  # run.source -> why it is not used
    filtered: list[Run] = field(default_factory=list)  # runs the filters left out
    filters: Filters = field(default_factory=Filters)

    def configuration(self, run: Run) -> Configuration | None:
        return self.of_run.get(run.source)

    def used(self, run: Run) -> bool:
        return run.finished and run.source not in self.left_out

    def note(self, run_ids: list[str], runs: list[Run]) -> str:
        """Which configuration(s) the runs ``run_ids`` are of, for a figure's title."""
        by_id = {r.run_id: r for r in runs}
        found = list(dict.fromkeys(c for i in run_ids if i in by_id and (c := self.configuration(by_id[i]))))
        if not found:
            return ""
        if len(found) == 1:
            c = found[0]
            return f"configuration {c.name} ({c.backbone} · {c.task})"
        labels = {c.label for c in found}
        if len(labels) == 1 and "" not in labels:
            return f"configuration {found[0].label} for each backbone × task ({len(found)} ids in report.json)"
        if len(found) <= 3:
            return "configurations " + "; ".join(f"{c.backbone} · {c.task}: {c.name}" for c in found)
        how = "as chosen" if any("chosen" in c.why for c in found) else "the best by validation accuracy"
        return f"{len(found)} configurations, one per backbone × task ({how}; listed in report.json)"


def run_config(run: Run, fits: dict[str, Run]) -> tuple[dict[str, Any], Run | None]:
    """The flat config that defines the run's configuration, and the fit run it comes from (None: its own)."""
    source = run.summary.get("prompt_source") or {}
    if run.kind != "fit" and source:
        fit = fits.get(str(source.get("run_id")))
        if fit is None and source.get("run_dir") and (Path(source["run_dir"]) / SUMMARY_FILE).is_file():
            try:
                fit = Run(json.loads((Path(source["run_dir"]) / SUMMARY_FILE).read_text()), Path(source["run_dir"]),
                          str(Path(source["run_dir"]) / SUMMARY_FILE))
            except (OSError, json.JSONDecodeError):
                fit = None
        if fit is not None:
            return own_config(fit), fit
        config = {k: v for k, v in own_config(run).items() if not k.startswith(EVALUATION_PREFIXES)}
        config["data.task"] = prompt_task(run)
        return config, None
    return own_config(run), None


def own_config(run: Run) -> dict[str, Any]:
    config = dict(run.summary.get("config") or {})
    if not config:
        config = {key: run.settings[name] for name, key in SETTINGS_KEYS.items() if run.settings.get(name) is not None}
    config.setdefault("model.backbone", run.backbone)
    config.setdefault("data.task", run.task)
    return config


def select(runs: list[Run], filters: Filters) -> tuple[list[Run], Selection]:
    """Apply the filters, then find every finished run's configuration and choose one per backbone × task
    (:class:`Selection`). Returns the runs the filters keep and the selection. Raises :class:`ReportError` when
    the filters keep nothing or ``--configuration`` names no configuration."""
    selection = Selection(filters=filters)
    kept = [r for r in runs if filters.keeps(r)]
    selection.filtered = [r for r in runs if not filters.keeps(r)]
    if not kept:
        raise ReportError(f"the filters ({filters.describe()}) leave none of the {len(runs)} runs read — drop or "
                          "change them")
    finished = [r for r in kept if r.finished]
    fits = {r.run_id: r for r in finished if r.kind == "fit"}
    found: dict[tuple, Configuration] = {}
    for run in finished:
        config, _ = run_config(run, fits)
        key = (run.backbone, prompt_task(run), configuration_id(config))
        if key not in found:
            found[key] = Configuration(key[2], run.family, run.backbone, key[1], configuration_of(config), config)
        found[key].runs.append(run)
        selection.of_run[run.source] = found[key]
    drop_duplicate_seeds(list(found.values()), selection)
    by_cell: dict[tuple[str, str], list[Configuration]] = defaultdict(list)
    for configuration in found.values():
        by_cell[(configuration.backbone, configuration.task)].append(configuration)
    wanted = set(filters.configurations)
    matched: set[str] = set()
    for (backbone, task), options in by_cell.items():
        keys = differing_keys([c.config for c in options]) if len(options) > 1 else []
        for c in options:
            c.label = label(c.config, keys)
        chosen = [c for c in options if any(c.id.startswith(w) or c.label == w for w in wanted)]
        matched |= {w for w in wanted for c in chosen if c.id.startswith(w) or c.label == w}
        ranked = sorted(chosen or options, key=lambda c: (c.best_validation is None, -(c.best_validation or 0),
                                                           -len(c.seeds), c.id))
        best = ranked[0]
        best.selected = True
        if chosen:
            best.why = "chosen with --configuration"
        elif len(options) > 1:
            best.why = (f"the best of {len(options)} by mean best validation accuracy "
                        f"({best.best_validation:.1f}%)" if best.best_validation is not None else
                        f"of {len(options)}, the one with most seeds (no fit runs to rank them by)")
        else:
            best.why = "the only one"
        for c in options:
            if c is not best:
                c.why = f"not used: {backbone} · {task} uses {best.name} ({best.why}); choose with --configuration"
                for run in c.runs:
                    selection.left_out.setdefault(run.source, f"configuration {c.name} not chosen for {backbone} · "
                                                              f"{task} (the report uses {best.name})")
    if wanted - matched:
        listing = "; ".join(f"{c.backbone} · {c.task}: {c.name}" for c in found.values())
        raise ReportError(f"--configuration {' '.join(sorted(wanted - matched))} names no configuration of the runs "
                          f"read — give an id (or its first digits) or a label of: {listing or 'none'}")
    selection.configurations = sorted(found.values(), key=lambda c: (family_rank(c.family), c.backbone, c.task,
                                                                     not c.selected, c.id))
    return kept, selection


def drop_duplicate_seeds(configurations: list[Configuration], selection: Selection) -> None:
    """Two fit runs of one configuration with one seed: keep the latest finished, leave out the other (and the
    runs that evaluate its prompt)."""
    dropped: dict[str, Run] = {}
    for configuration in configurations:
        by_seed: dict[Any, list[Run]] = defaultdict(list)
        for run in configuration.fits:
            by_seed[run.seed].append(run)
        for seed, runs in by_seed.items():
            runs.sort(key=lambda r: str(r.summary.get("finished") or ""), reverse=True)
            for run in runs[1:]:
                dropped[run.run_id] = runs[0]
                selection.left_out[run.source] = (f"seed {seed_label(seed)} twice in configuration {configuration.id}: "
                                                  f"kept the latest finished `{runs[0].run_id}`")
    for configuration in configurations:
        for run in configuration.runs:
            source = str((run.summary.get("prompt_source") or {}).get("run_id"))
            if run.kind != "fit" and source in dropped:
                selection.left_out[run.source] = (f"evaluates the prompt of `{source}`, a repeated seed left out "
                                                  f"(kept `{dropped[source].run_id}`)")


# ----------------------------------------------------------------------------- layouts per family


def check_layouts(runs: list[Run], layout_of) -> None:
    """Refuse a family whose runs mix input layouts or analysed positions. ``layout_of(run)`` gives (layout,
    analysed positions or None for a run without an analysis of its own)."""
    families: dict[str, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        families[run.family][layout_of(run)].append(f"`{run.run_id}`")
    for family, layouts in sorted(families.items(), key=lambda item: family_rank(item[0])):
        if len({a for a, _ in layouts}) > 1 or len({b for _, b in layouts if b is not None}) > 1:
            groups = "; ".join(f"layout {a}, analysed positions {b or 'none (no analysis)'}: "
                               f"{', '.join(sorted(set(ids)))}"
                               for (a, b), ids in sorted(layouts.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")))
            options = sorted({a for a, _ in layouts})
            positions = sorted({b for _, b in layouts if b is not None})
            how = (f"--layout {' or '.join(options)}" if len(options) > 1 else
                   f"--positions {' or '.join(positions)}")
            raise ReportError(f"the {family_name(family)} runs mix input layouts or analysed positions ({groups}) — "
                              f"their neurons are not comparable in one figure: select one with {how} (other "
                              "families are reported beside it)")


def group_lines(runs: list[Run], selection: Selection, layout_of) -> tuple[list[str], list[dict[str, Any]]]:
    """One line per comparable group (a family with its layout and analysed positions): what was compared."""
    by_family: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if selection.used(run):
            by_family[run.family].append(run)
    lines, records = [], []
    for family in sorted(by_family, key=family_rank):
        members = by_family[family]
        layouts = sorted({layout_of(r)[0] for r in members})
        positions = sorted({p for r in members if (p := layout_of(r)[1]) is not None})
        parts = sorted({str(r.neurons.get("part")) for r in members if r.neurons.get("part")})
        configurations = [c for c in selection.configurations if c.selected and c.family == family]
        kinds = defaultdict(int)
        for run in members:
            kinds[run.kind] += 1
        record = {"family": family, "layout": layouts, "analysed_positions": positions, "parts": parts,
                  "backbones": sorted({r.backbone for r in members}),
                  "tasks": sorted({prompt_task(r) for r in members}),
                  "configurations": [{"backbone": c.backbone, "task": c.task, "id": c.id, "label": c.label,
                                      "seeds": c.seeds, "why": c.why} for c in configurations],
                  "runs": [r.run_id for r in members], "kinds": dict(kinds)}
        records.append(record)
        described = "; ".join(f"{c.backbone} · {c.task}: {c.name}, seeds {', '.join(map(seed_label, c.seeds))} "
                              f"({c.why})" for c in configurations)
        lines.append(f"- **{family_name(family)}** ({family}), layout {', '.join(layouts)}, analysed positions "
                     f"{', '.join(positions) or 'none (no analysis)'}{', part ' + ', '.join(parts) if parts else ''}: "
                     f"backbones {', '.join(record['backbones'])}; tasks {', '.join(record['tasks'])}; "
                     f"configurations — {described}; {len(members)} runs "
                     f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}).")
    return lines, records
