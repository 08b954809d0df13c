"""The paper's experiments end to end through the real CLI on the tiny offline backbone (the transfer runs, whose
offline W&B record logs are read, and the sweep's trials in child processes; the other commands through the
console script's entry point in this process, to spare a Python start each):
two tasks x two seeds -> suppression (rates 0 and 15%, skill and random) -> transfer -> the shipped suppression
sweep (seed-mean neurons, clean and own adversarial neurons; trimmed) -> report with every paper figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import QUICK, ROOT, cli_in_process, run_cli, summary_of

TASKS = {"marker": "marker_typo", "sst2_sample": "adv_sst2"}
SEEDS = (33, 34)
SMALL = ["--data.max_train_samples=256", "--data.max_eval_samples=120"]


def wandb_summary_value(run_dir: Path, key: str):
    """The last value of ``key`` in the offline W&B run's record log (a SummaryItem: field 1 the key, field 16
    ``value_json``)."""
    records = next((run_dir / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
    name = key.encode()
    matches = list(re.finditer(re.escape(bytes([0x0A, len(name)]) + name + b"\x82\x01"), records))
    assert matches, f"{key} is not in the W&B summary of {run_dir}"
    start = matches[-1].end()  # a one-byte length (< 128), then the JSON text
    return json.loads(records[start + 1:start + 1 + records[start]])


def runs_by(root: Path, **settings) -> list[Path]:
    out = []
    for file in sorted(root.glob("*/summary.json")):
        summary = json.loads(file.read_text())
        if all(summary.get("settings", {}).get(k) == v for k, v in settings.items()):
            out.append(file.parent)
    return out


@pytest.mark.subprocess
@pytest.mark.slow
def test_fit_suppress_transfer_and_report_end_to_end(tmp_path):
    base = ["--config", str(ROOT / "configs/quickstart.yaml"), *QUICK]
    for task in TASKS:
        for seed in SEEDS:
            cli_in_process(["fit", *base, *SMALL, f"--data.task={task}", f"--seed_everything={seed}",
                            "--trainer.max_epochs=2", "--runs_dir=runs"], cwd=tmp_path, check=True)
    fits = {(task, seed): runs_by(tmp_path / "runs", task=task, seed=seed) for task in TASKS for seed in SEEDS}
    assert all(len(v) == 1 for v in fits.values()), fits
    fits = {key: value[0] for key, value in fits.items()}

    # ---- suppression: rate 0 is plain validation; 15% of skill or random units per layer
    for run in fits.values():
        for extra in (["--suppression.rate=0"], ["--suppression.rate=15"],
                      ["--suppression.rate=15", "--suppression.selection=random"]):
            cli_in_process(["validate", f"--from_run={run}", *QUICK, *SMALL, *extra, "--runs_dir=suppression",
                            "--trainer.logger=false"], cwd=tmp_path, check=True)
    suppressed = [summary_of(d) for d in (tmp_path / "suppression").iterdir()]
    assert len(suppressed) == 12
    for summary in suppressed:
        record, metrics = summary["suppression"], summary["validate_metrics"]
        fit = summary_of(Path(summary["prompt_source"]["run_dir"]))
        adv = TASKS[summary["settings"]["task"]]
        # quickstart.yaml is layout paper: P1's int(256/100 · 15) = 38 units per layer (ceil would give 39)
        assert record["units_per_layer"] == (38 if record["rate"] == 15 else 0) and record["sizing"] == "p1"
        if record["rate"] == 0:
            assert metrics["val/acc"] == fit["best"]["val/acc"]
            assert metrics[f"adv/{adv}/acc"] == fit["best"][f"adv/{adv}/acc"]
        assert "skill_neurons" not in summary and "transfer" not in summary

    # ---- transfer: each task's seed-33 prompt on both tasks (the diagonal too)
    for source in TASKS:
        for target in TASKS:
            run_cli(["validate", f"--from_run=runs?task={source}&seed=33", *QUICK, *SMALL, f"--data.task={target}",
                     "--runs_dir=transfer"], cwd=tmp_path)  # a process of its own: its W&B record log is read below
    transfers = [summary_of(d)["transfer"] for d in (tmp_path / "transfer").iterdir()]
    assert sorted((t["source_task"], t["target_task"]) for t in transfers) == sorted(
        (a, b) for a in TASKS for b in TASKS)
    for t in transfers:
        own = summary_of(fits[(t["target_task"], 33)])["best"]["val/acc"]
        assert t["reference_accuracy"] == own and t["relative"] == pytest.approx(100 * t["accuracy"] / own)
        if t["source_task"] == t["target_task"]:
            assert t["accuracy"] == own

    # ---- the shipped suppression sweep (trimmed to one prompt, rates 0 and 15) runs as the paper does: the task's
    # seed-mean skill neurons (both fit runs), on the adversarial set once the clean and once its own neurons
    import yaml

    sweep = yaml.safe_load((ROOT / "sweeps" / "suppression.yaml").read_text())
    assert sweep["parameters"]["suppression.neuron_source"] == {"values": ["seed_mean"]}
    assert sweep["parameters"]["suppression.adversarial_neurons"] == {"values": ["clean", "own"]}
    sweep["parameters"].update({"from_run": {"values": ["runs?task=marker&seed=34"]},
                                "suppression.rate": {"values": [0, 15]}, "suppression.selection": {"values": ["skill"]}})
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(sweep))
    run_cli(["sweep", "mini.yaml", "--dir", "sweep"], cwd=tmp_path)
    trials = [summary_of(d) for d in (tmp_path / "sweep" / "runs").iterdir() if (d / "summary.json").exists()]
    assert sorted((t["suppression"]["rate"], t["suppression"]["adversarial_neurons"]) for t in trials) == [
        (0.0, "clean"), (0.0, "own"), (15.0, "clean"), (15.0, "own")]
    best = {key: summary_of(run)["best"] for key, run in fits.items()}
    for trial in trials:
        record = trial["suppression"]
        assert record["neuron_source"] == "seed_mean"
        assert sorted(Path(p).name for p in record["neurons_from"]) == sorted(fits[("marker", s)].name for s in SEEDS)
        if record["rate"] == 0:
            assert trial["validate_metrics"]["val/acc"] == best[("marker", 34)]["val/acc"]
    clean_15, own_15 = (next(t for t in trials if (t["suppression"]["rate"], t["suppression"]["adversarial_neurons"])
                             == (15.0, kind)) for kind in ("clean", "own"))
    assert clean_15["validate_metrics"]["val/acc"] == own_15["validate_metrics"]["val/acc"]  # same clean units

    # ---- the report: every section, numbers as in the summaries, real figures
    cli_in_process(["report", "runs", "suppression", "transfer", "sweep/runs", "--out", "report"], cwd=tmp_path,
                   check=True)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    markdown = (tmp_path / "report" / "report.md").read_text()
    for key in ("accuracy", "transfer", "suppression", "per_layer", "overlap", "paper_boxes", "paper_overlap",
                "paper_histogram", "paper_location", "spearman_seeds", "spearman_tasks", "paper_suppression"):
        assert report[key]["missing"] is None, (key, report[key]["missing"])
        assert f"## {report[key]['title']}" in markdown
    for row in report["accuracy"]["rows"]:
        key = "val/acc" if row["set"] == "validation" else f"adv/{row['set']}/acc"
        expected = [100 * best[(row["task"], seed)][key] for seed in SEEDS]
        assert row["mean"] == pytest.approx(sum(expected) / 2, abs=1e-9) and row["chance"] == 50.0
    # one relative-transfer definition: summary.json, the W&B summary and report.json give the same number
    matrix = report["transfer"]["backbones"]["tiny-roberta"]
    for run in (tmp_path / "transfer").iterdir():
        recorded = summary_of(run)["transfer"]
        cell = next(c for c in matrix["cells"] if run.name in c["runs"] and c["kind"] == "clean")
        assert cell["relative_values"][cell["runs"].index(run.name)] == recorded["relative"]
        assert wandb_summary_value(run, "transfer/relative") == recorded["relative"]
        assert recorded["relative"] == pytest.approx(100 * recorded["accuracy"] / recorded["reference_accuracy"])
    for i, source in enumerate(matrix["tasks"]):
        for j, target in enumerate(matrix["tasks"]):
            t = next(t for t in transfers if (t["source_task"], t["target_task"]) == (source, target))
            assert matrix["relative_matrix"][i][j] == t["relative"]  # one seed per cell
        assert matrix["relative_matrix"][i][i] == 100.0
    assert matrix["columns"] == [c for t in matrix["tasks"] for c in (t, TASKS[t])]  # adversarial targets too
    paper = [r for r in report["paper_suppression"]["rows"] if r["neuron_source"] == "seed_mean"]
    assert {(r["adversarial_neurons"], r["set"]) for r in paper} >= {("clean", "marker_typo"), ("own", "marker_typo")}
    for row in report["suppression"]["rows"]:
        if row["rate"] == 0 and row["set"] == "validation" and row["neuron_source"] == "own":  # both seeds' runs
            expected = [100 * best[(row["task"], seed)]["val/acc"] for seed in SEEDS]
            assert row["mean"] == pytest.approx(sum(expected) / 2, abs=1e-9)
    for row in report["overlap"]["rows"]:
        expected = [summary_of(fits[(row["task"], seed)])["skill_neurons"]["sets"][row["set"]]["overlap@5"]
                    for seed in SEEDS]
        assert row["overlap@5_mean"] == pytest.approx(sum(expected) / 2, abs=1e-9)
    from PIL import Image

    figures = list((tmp_path / "report" / "figures").glob("*.png"))
    names = {f.stem for f in figures}
    assert {"transfer_absolute_tiny-roberta", "transfer_relative_tiny-roberta", "paper-boxes_tiny-roberta",
            "spearman_tasks_curve"} <= names
    assert any(n.startswith("paper-suppression_marker") and "seed-mean" in n for n in names)
    for prefix in ("paper-overlap_", "paper-histogram_", "paper-location_", "spearman-seeds-curve_"):
        assert any(n.startswith(prefix) for n in names), prefix
    for figure in figures:
        assert f"figures/{figure.name}" in markdown
        with Image.open(figure) as image:
            image.load()  # decodes every pixel: a truncated file fails here
            assert image.format == "PNG" and figure.stat().st_size > 0
            # accuracy.png is sized to its backbone x task groups (260 + 150 px each, at least 560 x 560)
            assert image.size in ((1200, 600), (800, 800)) or (figure.name, image.size) == ("accuracy.png", (560, 560))
