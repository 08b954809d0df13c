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

Sections (README, "The paper's experiments"), each replaced by one line saying why when its runs are
missing, in :data:`skill_neurons.report.base.TITLES` order: runs read; accuracy; the attacks' table (:mod:`.attacks`); transfer (:mod:`.transfer`); the paper's
neuron analyses as the paper defines them (:mod:`.paper`, :mod:`.spearman`, numbers from :mod:`.analyses`, seed
means from :mod:`.seed_means`; ``--definitions p1-code``: as P1's released code computes them, :mod:`.p1_sections`,
docs/p1_code.md); suppression (:mod:`.suppression` and the
per-backbone detail here); class-balanced predictivity (:mod:`.balance`); our per-seed variants (per-layer
boxes, per-seed overlap checked against ``summary.json``). Before any section, :func:`.groups.select` applies
the filters (``--backbone``, ``--task``, ``--layout``, ``--positions``) and chooses one configuration per
backbone × task (``--configuration``, else the best by validation accuracy), and :func:`.seed_means.check_inputs`
refuses a family whose runs mix layouts / analysed positions and neuron files of different shapes for one
backbone. Families are reported side by side, each within its own layout and positions (a line per group in
the runs section).

Run kinds: a run with a ``suppression`` section is a suppression run; one with ``transfer`` (and no
``suppression``) a transfer run; otherwise its ``stage`` (fit / validate / test). The neuron sections use
one analysis per prompt: runs with a skill-neuron analysis of the clean set ``--eval_set`` (suppression and
transfer runs excluded, their prompts are perturbed or foreign), one per backbone × part × task × seed,
fit runs preferred.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from records.eval_set import EvalSet
from records.files import atomic_write
from records.secrets import redact_argv
from records.wandb_config import REPORT_NAME
from skill_neurons.report.accuracy import accuracy_section, runs_section
from skill_neurons.report.attacks import attacks_section
from skill_neurons.report.balance import balanced_section
from skill_neurons.report.base import SQUARE, TITLES, WIDE, Context, Inputs, ReportError, Section
from skill_neurons.report.groups import Filters, select
from skill_neurons.report.inputs import read_runs
from skill_neurons.report.lineage import declare_artifacts, used_artifacts
from skill_neurons.report.neuron_metrics import agreement_section, overlap_transfer_section, selectivity_section
from skill_neurons.report.neurons import overlap_section, per_layer_section
from skill_neurons.report.paper import boxes_section, histogram_section, location_section
from skill_neurons.report.p1_sections import DEFINITIONS, p1_builders
from skill_neurons.report.paper import overlap_section as paper_overlap_section
from skill_neurons.report.intervention import intervention_section
from skill_neurons.report.run_suppression import suppression_section
from skill_neurons.report.seed_means import check_inputs
from skill_neurons.report.spearman import spearman_seeds_section, spearman_tasks_section
from skill_neurons.report.suppression import paper_suppression_section
from skill_neurons.report.transfer import transfer_section
from skill_neurons.wandb_env import NO_CREDENTIALS, offline_reason


def build_sections(ctx: Context) -> list[Section]:
    """Every section; one that fails on unexpected data is left out with the error, never a crash."""
    neuron_runs = ctx.neuron_runs()
    builders = [
        ("runs", lambda: runs_section(ctx)),
        ("accuracy", lambda: accuracy_section(ctx)),
        ("attacks", lambda: attacks_section(ctx)),
        ("transfer", lambda: transfer_section(ctx)),
        ("paper_boxes", lambda: boxes_section(ctx)),
        ("paper_overlap", lambda: paper_overlap_section(ctx)),
        ("paper_histogram", lambda: histogram_section(ctx)),
        ("paper_location", lambda: location_section(ctx)),
        ("spearman_seeds", lambda: spearman_seeds_section(ctx)),
        ("spearman_tasks", lambda: spearman_tasks_section(ctx)),
        ("paper_suppression", lambda: paper_suppression_section(ctx)),
        ("suppression", lambda: suppression_section(ctx)),
        ("intervention", lambda: intervention_section(ctx)),
        ("balanced", lambda: balanced_section(ctx)),
        ("per_layer", lambda: per_layer_section(ctx, neuron_runs)),
        ("overlap", lambda: overlap_section(ctx, neuron_runs)),
        ("metric_agreement", lambda: agreement_section(ctx)),
        ("selectivity", lambda: selectivity_section(ctx)),
        ("overlap_transfer", lambda: overlap_transfer_section(ctx)),
    ]
    if ctx.cache.get("definitions") == "p1-code":  # P1's released code, bugs included (docs/p1_code.md)
        p1 = p1_builders(ctx)
        builders = [(key, p1.get(key, build)) for key, build in builders] + [("p1_differences", p1["p1_differences"])]
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
             f"{sum(r.finished for r in ctx.runs)} finished, {len(ctx.finished)} used. Clean set '{ctx.eval_set}'. Paper sections: seed means, n = 2, 4, …, 14 "
             f"for overlap and Spearman curves, the model-wide top {ctx.percent:g}% for the histogram, layer location "
             f"and balanced sections. Definitions: `{ctx.cache.get('definitions', 'paper')}` — "
             + ("the paper's text (formula and the P1 function it corresponds to under each section; "
                "`--definitions p1-code` for P1's released code, docs/p1_code.md)"
                if ctx.cache.get("definitions", "paper") == "paper" else
                "P1's released code, bugs included (the P1 function under each section; the last section compares "
                "with the paper's text, docs/p1_code.md)")
             + ". Numbers as in `report.json`."), ""]
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
        "eval_set": ctx.eval_set, "inputs": ctx.inputs.arguments, "definitions": ctx.cache.get("definitions", "paper"),
        "units": "accuracies and relative scores in %, predictivities and overlaps as fractions",
        "figure_sizes": {"wide": list(WIDE), "square": list(SQUARE)},
        "groups": ctx.cache.get("groups", []),
        "configurations": [c.record() for c in ctx.selection.configurations] if ctx.selection else [],
        "left_out": ctx.selection.left_out if ctx.selection else {},
    }
    for section in sections:
        document[section.key] = {
            "title": section.title, "missing": section.missing, **section.data,
            # the rows behind each figure (named by its "table")
            "tables": {name: section.tables.get(name, []) for name in dict.fromkeys(f.table for f in section.figures
                                                                                    if f.table)},
            "figures": [{"file": f"figures/{f.path.name}", "caption": f.caption, "width": f.size[0],
                         "height": f.size[1], "table": f.table, "configuration": f.configuration}
                        for f in section.figures],
        }
    text = json.dumps(document, indent=2, default=str) + "\n"
    atomic_write(out / "report.json", lambda f: f.write(text))
    markdown = render_markdown(ctx, sections, command)
    atomic_write(out / "report.md", lambda f: f.write(markdown))
    return document


def log_to_wandb(out: Path, sections: list[Section], project: str, document: dict[str, Any]) -> dict[str, Any]:
    """A W&B run (job type ``report``) with the figures, the tables and the report folder as an artifact.
    Offline when W&B has no credentials and ``WANDB_MODE`` is unset, as the training CLI does."""
    import wandb

    mode = None
    if offline_reason() == NO_CREDENTIALS:
        mode = "offline"
        print(f"skill-neurons report: no W&B credentials found — logging offline in {out}/wandb", file=sys.stderr)
    run = wandb.init(project=project, job_type="report", name=REPORT_NAME, dir=str(out), mode=mode,
                     config={k: document.get(k) for k in ("percent", "eval_set", "inputs", "command", "artifacts")})
    try:
        payload: dict[str, Any] = {}
        for section in sections:
            for figure in section.figures:
                payload[f"report/{section.key}/{figure.name}"] = wandb.Image(str(figure.path), caption=figure.caption)
            for name, rows in section.tables.items():
                if rows:
                    payload[f"report/{section.key}/{name}"] = wandb_table(rows)
        run.log(payload)
        run.summary.update({f"report/{s.key}/missing": s.missing for s in sections if s.missing})  # no empty values
        artifact = wandb.Artifact(f"report-{run.id}", type="report", metadata={"inputs": document["inputs"]})
        artifact.add_file(str(out / "report.md"))
        artifact.add_file(str(out / "report.json"))
        if (out / "figures").is_dir():
            artifact.add_dir(str(out / "figures"), name="figures")
        run.log_artifact(artifact)
        offline = run.settings.mode in ("offline", "dryrun")
        info = {"id": run.id, "project": run.project, "mode": "offline" if offline else "online",
                "dir": str(Path(run.dir).parent), "url": None if offline else run.url,
                "artifacts": declare_artifacts(run, document.get("artifacts") or [])}  # lineage: neuron files read
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
                use_wandb: bool = False, project: str = "skill-neurons", command: str = "",
                filters: Filters | None = None, definitions: str = "paper") -> dict[str, Any]:
    """Read the runs, keep those the ``filters`` select, choose one configuration per backbone × task (see
    :mod:`skill_neurons.report.groups`), write ``out/report.md``, ``out/report.json`` and ``out/figures/*.png``;
    log to W&B with ``use_wandb``. Returns the report.json document (with ``wandb`` info when logged).
    Input it cannot use raises :class:`ReportError` before anything is written. ``definitions``: ``paper`` (the
    paper's text) or ``p1-code`` (P1's released code, bugs included; docs/p1_code.md)."""
    if definitions not in DEFINITIONS:
        raise ReportError(f"--definitions {definitions}: give one of {', '.join(DEFINITIONS)}")
    if not 0 < percent <= 100:
        raise ReportError(f"--percent {percent:g}: give a percentage of units per layer in (0, 100]")
    inputs = read_runs(arguments, out / "wandb-runs")
    kept, selection = select(inputs.runs, filters or Filters())
    inputs = Inputs(kept, inputs.invalid, inputs.arguments)
    figures_dir = out / "figures"
    ctx = Context(inputs, figures_dir, float(percent), EvalSet.of(eval_set).name, selection=selection)
    ctx.cache["definitions"] = definitions
    check_inputs(ctx, kept)  # mixed layouts within a family or neuron shapes: one error before any section
    out.mkdir(parents=True, exist_ok=True)
    for stale in figures_dir.glob("*.png"):  # a report written again into the same folder
        stale.unlink()
    sections = build_sections(ctx)
    # the runs left out for a broken file are named on the console, not only in report.md
    for skipped in [*inputs.invalid, *ctx.scores.unreadable]:
        print(f"skill-neurons report: warning: skipped {skipped.replace('`', '')}", file=sys.stderr, flush=True)
    document = write_report(ctx, sections, out, command or f"skill-neurons report {' '.join(arguments)} --out {out}")
    if use_wandb:
        document["artifacts"] = used_artifacts(ctx)  # the neuron-file artifact versions it read
        document["wandb"] = log_to_wandb(out, sections, project, document)
        text = json.dumps(document, indent=2, default=str) + "\n"
        atomic_write(out / "report.json", lambda f: f.write(text))
    return document


class Deprecated(argparse.Action):
    """An old spelling of an option (``--eval-set``): works as the new one, with one line on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"skill-neurons report: {option_string} is deprecated, use {self.metavar} (the old spelling goes in "
              "the next release)", file=sys.stderr)
        setattr(namespace, self.dest, values)


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
    parser.add_argument("--eval_set", default="validation",
                        help="the clean evaluation set whose skill-neuron analysis is used (default validation; "
                             "test for runs of `skill-neurons test`)")
    parser.add_argument("--eval-set", dest="eval_set", action=Deprecated, metavar="--eval_set",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    pick = parser.add_argument_group(
        "which runs", "Filters (repeat an option for several values) and the configuration each backbone × task uses "
        "(default: the best by mean best validation accuracy over its seeds)")
    pick.add_argument("--backbone", action="append", default=[], help="keep runs of this backbone (tiny-roberta) "
                      "or family (masked_lm, seq2seq, causal_lm)")
    pick.add_argument("--task", action="append", default=[], help="keep runs of this task (a transfer run: its "
                      "source or target task)")
    pick.add_argument("--layout", action="append", default=[], help="keep runs of this input layout (standard, "
                      "paper, ...): needed when one family's runs mix layouts")
    pick.add_argument("--positions", action="append", default=[], help="keep runs analysed at these positions "
                      "(prompt, last, text_mean, ...): needed when one family's runs mix them")
    pick.add_argument("--configuration", action="append", default=[], help="use this configuration where a "
                      "backbone × task has several: its id (or first digits) or short label (lr3e-3), as report.md "
                      "lists them")
    parser.add_argument("--definitions", choices=DEFINITIONS, default="paper",
                        help="paper (default): the paper's definitions; p1-code: the paper's figures as P1's released "
                             "analysis code computes them, bugs included, with both numbers side by side where they "
                             "differ (docs/p1_code.md)")
    parser.add_argument("--wandb", action="store_true", help="also log the figures and tables to a W&B run "
                        "(job type report; offline without credentials)")
    parser.add_argument("--project", default="skill-neurons", help="W&B project of --wandb (default skill-neurons)")
    args = parser.parse_args(argv)
    command = "skill-neurons report " + " ".join(redact_argv(sys.argv[1:] if argv is None else argv))
    try:
        filters = Filters(args.backbone, args.task, args.layout, args.positions, args.configuration)
        document = make_report(args.runs, Path(args.out), args.percent, args.eval_set, args.wandb, args.project,
                               command, filters, args.definitions)
    except ReportError as error:
        print(f"skill-neurons report: error: {error}", file=sys.stderr, flush=True)
        return 2
    left_out = [document[k]["title"] for k in TITLES if document.get(k, {}).get("missing")]
    print(f"skill-neurons report: wrote {Path(args.out) / 'report.md'} ({len(TITLES) - len(left_out)} of "
          f"{len(TITLES)} sections; left out for lack of runs: {', '.join(left_out) or 'none'})")
    if document.get("wandb"):
        info = document["wandb"]
        print(f"skill-neurons report: W&B run {info['id']} ({info['mode']}) in {info['dir']}"
              + (f"; upload with `wandb sync {shlex.quote(str(info['dir']))}`" if info["mode"] == "offline" else f": {info['url']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
