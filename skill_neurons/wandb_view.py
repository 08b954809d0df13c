"""``skill-neurons wandb-view``: a saved W&B report that puts the paper's comparison on the dashboard.

    pip install wandb-workspaces                       # W&B's library for reports and workspaces (optional)
    skill-neurons wandb-view --entity <you or team>    # creates the report in project skill-neurons, prints its URL
    skill-neurons wandb-view --print                   # no W&B needed: the panels as JSON

The report has one panel grid over the ``fit`` runs (``job_type`` = fit), grouped by ``model.backbone`` and
``data.task``: accuracy at the best epoch, clean vs every adversarial set; the per-epoch clean and adversarial
accuracy; and the skill-neuron metrics of the analysis — overlap@n% of clean and adversarial skill neurons, the
adversarial predictivity of the clean top n%, and the top-n% mean per set. A second grid shows the suppression
runs (``job_type`` = suppression) and the transfer runs. Every metric name is one the runs log
(:data:`PANELS`; ``tests/test_dashboard.py`` checks them against a real offline run).

The panels are plain data (:func:`panels`); :func:`build_report` turns them into a ``wandb_workspaces`` report,
which only :func:`main` saves (that needs W&B credentials and network).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from datamodules.tasks import TASKS
from records.eval_set import EvalSet

PROJECT = "skill-neurons"
PERCENTS = (1, 5, 10, 15)
TITLE = "skill-neurons: clean vs adversarial"
INSTALL = "this needs W&B's report library: pip install wandb-workspaces"


def adversarial_sets() -> list[str]:
    """Every built-in adversarial set (AdvGLUE and the quick-start's ``marker_typo``)."""
    return sorted({name for task in TASKS.values() for name in task.adversarial})


def panels(sets: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The report's panels, per grid: ``{"kind": bar|line, "title", "metrics"}`` (bar: summary values)."""
    evaluated = [EvalSet.clean("validate"), *(EvalSet(s) for s in (adversarial_sets() if sets is None else sets))]
    clean, adversarial = evaluated[0], evaluated[1:]
    accuracy = [s.metric("val", "acc") for s in evaluated]  # val/acc, adv/<set>/acc
    return {
        "fit": [
            {"kind": "bar", "title": "Accuracy at the best epoch: clean vs adversarial",
             "metrics": [f"best/{m}" for m in accuracy]},
            {"kind": "line", "title": "Accuracy per epoch: clean vs adversarial", "x": "trainer/global_step",
             "metrics": accuracy},
            {"kind": "bar", "title": "overlap@n% of clean and adversarial skill neurons",
             "metrics": [s.neuron_metric(f"overlap@{n}") for s in adversarial for n in PERCENTS]},
            {"kind": "bar", "title": "Adversarial predictivity of the clean top n% (vs the set's own top n%)",
             "metrics": [s.neuron_metric(f"{what}{n}{tail}") for s in adversarial for n in (1, 5, 10)
                         for what, tail in (("clean_top", "_predictivity"), ("top", "_mean"))]},
            {"kind": "bar", "title": "Skill neurons on clean data: top n% mean and best predictivity",
             "metrics": [clean.neuron_metric("best_predictivity"),
                         *(clean.neuron_metric(f"top{n}_mean") for n in (1, 5, 10))]},
        ],
        "suppression": [
            {"kind": "bar", "title": "Accuracy with neurons suppressed (name: rate and selection)",
             "metrics": accuracy},
        ],
        "transfer": [
            {"kind": "bar", "title": "Relative transfer (100 · acc(A→B) / acc(B→B))",
             "metrics": ["transfer/relative"]},
        ],
    }


def build_report(entity: str, project: str = PROJECT, sets: list[str] | None = None):
    """The ``wandb_workspaces`` report of :func:`panels` (not saved)."""
    try:
        import wandb_workspaces.reports.v2 as wr
        from wandb_workspaces import expr
    except ImportError:
        raise SystemExit(f"skill-neurons wandb-view: {INSTALL}") from None
    blocks: list[Any] = [wr.H1(TITLE), wr.P(
        "Prompt tuning on clean data, evaluated on clean and adversarial sets (AdvGLUE); the skill neurons of each "
        "prompt and how many of them stay predictive on adversarial data. Written by `skill-neurons wandb-view`.")]
    for job, grid in panels(sets).items():
        made = []
        for panel in grid:
            if panel["kind"] == "line":
                made.append(wr.LinePlot(title=panel["title"], x=panel["x"], y=panel["metrics"]))
            else:
                made.append(wr.BarPlot(title=panel["title"], metrics=[wr.SummaryMetric(m) for m in panel["metrics"]]))
        runset = wr.Runset(entity=entity, project=project, name=f"{job} runs", filters=[expr.Metric("JobType") == job],
                           groupby=["config.model.backbone", "config.data.task"] if job == "fit" else [])
        blocks += [wr.H2(f"{job} runs"), wr.PanelGrid(runsets=[runset], panels=made)]
    return wr.Report(entity=entity, project=project, title=TITLE, blocks=blocks,
                     description="The paper's comparison (clean vs adversarial) on the W&B dashboard.")


def main(argv: list[str] | None = None) -> int:
    """Create the report on W&B (``--print``: only print the panels)."""
    parser = argparse.ArgumentParser(prog="skill-neurons wandb-view", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", help="W&B entity (user or team) that owns the project")
    parser.add_argument("--project", default=PROJECT, help=f"W&B project (default {PROJECT})")
    parser.add_argument("--print", action="store_true", help="print the panels as JSON and exit (no W&B needed)")
    args = parser.parse_args(argv)
    if args.print:
        print(json.dumps(panels(), indent=1))
        return 0
    if not args.entity:
        parser.error("give --entity (your W&B user or team), or --print to see the panels")
    report = build_report(args.entity, args.project)
    report.save()
    print(f"skill-neurons wandb-view: saved report {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
