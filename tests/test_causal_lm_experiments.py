"""The experiments for a causal LM: fit, suppression (in a sweep, rate 0 exact), transfer and the report, through
the real CLI on ``tiny-gpt2``; and the report's check of analysed positions with runs that have no analysis of
their own (transfer, suppression) beside fits analysed at a causal LM's positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from records.neuron_files import load_neuron_file, save_neuron_file
from skill_neurons.report.main import main
from tests.helpers import QUICK, ROOT, cli_in_process, run_cli, summary_of
from tests.test_experiments import runs_by
from tests.test_report import fit_run, suppression_run, transfer_run

TASKS = {"marker": "marker_typo", "sst2_sample": "adv_sst2"}
SEEDS = (33, 34)
SMALL = ["--data.max_train_samples=256", "--data.max_eval_samples=120"]


# ---------------------------------------------------------------- the report's check of analysed positions
def as_causal(run_dir: Path, positions: str | None) -> Path:
    """Rewrite a synthetic run of ``tests.test_report`` as a tiny-gpt2 run; a fit's neuron files and summary
    record ``positions`` (a causal LM's per-example choice: no absolute positions)."""
    summary = summary_of(run_dir)
    summary["settings"].update(backbone="tiny-gpt2", family="causal_lm", layout="standard")
    for key in ("prompt_source",):
        if key in summary:
            summary[key]["backbone"] = "tiny-gpt2"
    neurons = summary.get("skill_neurons")
    if neurons:
        recorded = {"backbone": "tiny-gpt2", "family": "causal_lm", "layout": "standard",
                    "analysed_positions": positions, "absolute_positions": None}
        neurons.update(recorded)
        for entry in neurons["sets"].values():
            tensors, meta = load_neuron_file(entry["file"])
            save_neuron_file(Path(entry["file"]), tensors, {**meta, **recorded})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def test_report_takes_transfer_and_suppression_runs_beside_fits_analysed_at_the_last_position(tmp_path):
    for task in ("sst2", "qnli"):
        for seed in SEEDS:
            as_causal(fit_run(tmp_path, "tiny-roberta", task, seed), "last")
    as_causal(transfer_run(tmp_path, "tiny-roberta", "sst2", "qnli", 33), None)
    as_causal(suppression_run(tmp_path, "tiny-roberta", "sst2", 33, 15.0, "skill"), None)
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {r["backbone"] for r in report["accuracy"]["rows"]} == {"tiny-gpt2"}
    assert report["transfer"]["missing"] is None and report["suppression"]["missing"] is None
    assert "GPT-like (decoder-only)" in (out / "report.md").read_text()


def test_report_refuses_fits_analysed_at_different_positions_naming_them(tmp_path, capsys):
    as_causal(fit_run(tmp_path, "tiny-roberta", "sst2", 33), "last")
    as_causal(fit_run(tmp_path, "tiny-roberta", "sst2", 34), "text_mean")
    as_causal(transfer_run(tmp_path, "tiny-roberta", "sst2", "qnli", 33), None)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 2
    error = capsys.readouterr().err
    assert "analysed positions last: `fit-tiny-roberta-sst2-33`" in error
    assert "analysed positions text_mean: `fit-tiny-roberta-sst2-34`" in error
    assert "analysed positions none (no analysis): `transfer-tiny-roberta-sst2-qnli-33`" in error


# ---------------------------------------------------------------- end to end through the CLI
@pytest.mark.subprocess
@pytest.mark.slow
def test_causal_lm_fit_suppression_sweep_transfer_and_report_end_to_end(tmp_path):
    base = ["--config", str(ROOT / "configs/quickstart_gpt2.yaml"), *QUICK, *SMALL]
    for task in TASKS:
        for seed in SEEDS:
            cli_in_process(["fit", *base, f"--data.task={task}", f"--seed_everything={seed}",
                            "--trainer.max_epochs=2", "--runs_dir=runs"], cwd=tmp_path, check=True)
    fits = {(task, seed): runs_by(tmp_path / "runs", task=task, seed=seed) for task in TASKS for seed in SEEDS}
    assert all(len(v) == 1 for v in fits.values()), fits
    fits = {key: value[0] for key, value in fits.items()}
    best = {key: summary_of(run)["best"] for key, run in fits.items()}
    for (task, _), run in fits.items():
        summary = summary_of(run)
        assert summary["settings"]["family"] == "causal_lm" and summary["settings"]["layout"] == "standard"
        assert summary["skill_neurons"]["analysed_positions"] == "last"
        for name in ("validation", TASKS[task]):
            tensors, meta = load_neuron_file(run / "skill_neurons" / f"{name}.safetensors")
            assert tensors["threshold"].shape == (2, 1, 256)  # (L, one position per example, N)
            assert (meta["layout"], meta["analysed_positions"], meta["absolute_positions"]) == ("standard", "last",
                                                                                                  None)

    # ---- the shipped suppression sweep, trimmed: seed-mean skill neurons of marker, rates 0 and 15
    sweep = yaml.safe_load((ROOT / "sweeps" / "suppression.yaml").read_text())
    sweep["parameters"].update({"from_run": {"values": ["runs?task=marker&seed=34"]},
                                "suppression.rate": {"values": [0, 15]}, "suppression.selection": {"values": ["skill"]},
                                "suppression.adversarial_neurons": {"values": ["clean"]}})
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(sweep))
    run_cli(["sweep", "mini.yaml", "--dir", "sweep"], cwd=tmp_path)
    trials = {summary_of(d)["suppression"]["rate"]: summary_of(d) for d in (tmp_path / "sweep" / "runs").iterdir()
              if (d / "summary.json").exists()}
    assert sorted(trials) == [0.0, 15.0]
    for rate, trial in trials.items():
        record, metrics = trial["suppression"], trial["validate_metrics"]
        assert record["neuron_source"] == "seed_mean" and record["units_per_layer"] == (39 if rate else 0)
        assert sorted(Path(p).name for p in record["neurons_from"]) == sorted(fits[("marker", s)].name for s in SEEDS)
        if rate == 0:  # nothing suppressed: exactly the fit run's accuracies at its best epoch
            assert metrics["val/acc"] == best[("marker", 34)]["val/acc"]
            assert metrics["adv/marker_typo/acc"] == best[("marker", 34)]["adv/marker_typo/acc"]
    assert trials[15.0]["validate_metrics"]["val/loss"] != best[("marker", 34)]["val/loss"]

    # ---- transfer: each task's seed-33 prompt on the other task
    for source, target in (("marker", "sst2_sample"), ("sst2_sample", "marker")):
        cli_in_process(["validate", f"--from_run=runs?task={source}&seed=33", *QUICK, *SMALL,
                        f"--data.task={target}", "--runs_dir=transfer"], cwd=tmp_path, check=True)
    transfers = [summary_of(d)["transfer"] for d in (tmp_path / "transfer").iterdir()]
    assert sorted((t["source_task"], t["target_task"]) for t in transfers) == [("marker", "sst2_sample"),
                                                                               ("sst2_sample", "marker")]
    for t in transfers:
        own = best[(t["target_task"], 33)]["val/acc"]
        assert t["reference_accuracy"] == own and t["relative"] == pytest.approx(100 * t["accuracy"] / own)

    # ---- the report over all of them
    cli_in_process(["report", "runs", "transfer", "sweep/runs", "--out", "report"], cwd=tmp_path, check=True)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    markdown = (tmp_path / "report" / "report.md").read_text()
    for key in ("accuracy", "transfer", "suppression", "per_layer", "overlap", "paper_boxes", "paper_overlap",
                "paper_histogram", "paper_location", "spearman_seeds", "spearman_tasks", "paper_suppression"):
        assert report[key]["missing"] is None, (key, report[key]["missing"])
    assert "tiny-gpt2 (GPT-like (decoder-only))" in markdown
    for row in report["accuracy"]["rows"]:
        assert row["family"] == "causal_lm"
        key = "val/acc" if row["set"] == "validation" else f"adv/{row['set']}/acc"
        assert row["mean"] == pytest.approx(sum(100 * best[(row["task"], s)][key] for s in SEEDS) / 2, abs=1e-9)
    matrix = report["transfer"]["backbones"]["tiny-gpt2"]
    for i, source in enumerate(matrix["tasks"]):
        for j, target in enumerate(matrix["tasks"]):
            if i != j:
                t = next(t for t in transfers if (t["source_task"], t["target_task"]) == (source, target))
                assert matrix["relative_matrix"][i][j] == t["relative"]
    for row in report["overlap"]["rows"]:
        expected = [summary_of(fits[(row["task"], s)])["skill_neurons"]["sets"][row["set"]]["overlap@5"]
                    for s in SEEDS]
        assert row["overlap@5_mean"] == pytest.approx(sum(expected) / 2, abs=1e-9)
    paper = [r for r in report["paper_suppression"]["rows"] if r["neuron_source"] == "seed_mean"]
    assert {r["rate"] for r in paper} == {0.0, 15.0}


# ---------------------------------------------------------------- bad input through the CLI
COLLIDING_TASK = {"name": "banana", "type": "synthetic", "text_fields": ["sentence"],
                  "label_names": ["absent", "present"], "verbalizers": {"causal_lm": ["banana", "bananaz"]},
                  "splits": {"train": {"file": str(ROOT / "datamodules/data/marker/train.jsonl")},
                             "validation": {"file": str(ROOT / "datamodules/data/marker/validation.jsonl")}}}
PROMPT_POSITIONS = {"trainer": {"callbacks": [{"class_path": "callbacks.skill_neurons.SkillNeuronCallback",
                                               "init_args": {"positions": "prompt"}}]}}


@pytest.mark.parametrize("override, message", [
    ({"data": {"task": COLLIDING_TASK}},
     "label words ['banana', 'bananaz'] of task 'banana' share their first sub-token (['Ġbanana', 'Ġbanana']), so "
     "the next-token logits cannot tell them apart — choose words that start differently (verbalizers.causal_lm)"),
    (PROMPT_POSITIONS, "a causal LM reads the prompt before the text, so the prompt positions' activations are the "
                       "same for every example and their predictivity is constant; analyse where the text is: "
                       "positions=last"),
    ({"model": {"init_args": {"layout": "paper"}}}, "P1 has no causal LM, so 'tiny-gpt2' runs with "
                                                    "--model.layout=standard"),
], ids=["colliding-verbalizers", "prompt-positions", "layout-paper"])
def test_bad_causal_input_is_one_line_before_anything_is_written(tmp_path, override, message):
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    proc = cli_in_process(["fit", "--config", str(ROOT / "configs/quickstart_gpt2.yaml"), "--config", "override.yaml",
                           *QUICK, "--runs_dir=runs"], cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("skill-neurons: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["override.yaml"]  # no run folder, no W&B run
