"""``skill-neurons report`` on synthetic run directories: summary.json files and neuron files written here
(random scores from fixed generators), no training. Every expected number is recomputed in the test from the
summaries or the tensors, independently of the report's code paths."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image

from callbacks.skill_neurons import save_neuron_file
from records.neuron_selection import mean_predictivity_of, overlap_at, top_percent_mask
from skill_neurons.report.base import SQUARE, TITLES, WIDE
from skill_neurons.report.main import main
from tests.helpers.attack_files import synthetic_attack
from tests.helpers.statistics import spearman

L, P, N = 3, 4, 40  # layers, prompt positions, units of the synthetic neuron files
BACKBONES = {"tiny-roberta": "masked_lm", "tiny-t5": "seq2seq"}
TASKS = {"sst2": ("sentiment", "adv_sst2"), "qnli": ("nli", "adv_qnli")}
SEEDS = (33, 34)
OVERLAPS = (1, 5, 10, 15)


# ----------------------------------------------------------------------------- synthetic runs


def neuron_tensors(seed: int) -> dict[str, torch.Tensor]:
    """One set's statistics as the callback writes them: predictivity (L, P, N) in [0.5, 1], score (L, N)."""
    generator = torch.Generator().manual_seed(seed)
    predictivity = 0.5 + 0.5 * torch.rand(L, P, N, generator=generator)  # (L, P, N)
    tensors = {"threshold": torch.randn(L, P, N, generator=generator), "accuracy": predictivity.clone(),
               "predictivity": predictivity, "score": predictivity.amax(dim=1),  # (L, N)
               "class_count": torch.tensor([20, 20])}
    # the continuous metrics (correlations: true): per-unit scores |r| and activation probabilities, (L, N)
    for name in ("label_correlation", "margin_correlation", "text_label_correlation", "text_margin_correlation"):
        tensors[f"{name}_score"] = torch.rand(L, N, generator=generator)
    tensors["activation_probability"] = torch.rand(L, N, generator=generator)
    return tensors


def set_summary(score: torch.Tensor, clean: torch.Tensor | None, file: Path, split: str) -> dict:
    """The callback's per-set numbers for ``skill_neurons.sets`` (computed as it does)."""
    out = {"split": split, "examples": 40, "class_count": [20, 20], "file": str(file),
           "best_predictivity": float(score.max()),
           **{f"top{n}_mean": mean_predictivity_of(top_percent_mask(score, n), score) for n in (1, 5, 10)},
           "per_layer_top5_mean": [mean_predictivity_of(top_percent_mask(score[i:i + 1], 5), score[i:i + 1])
                                   for i in range(L)]}
    if clean is not None:
        for n in OVERLAPS:
            out[f"overlap@{n}"] = overlap_at(clean, score, n)
            out[f"clean_top{n}_predictivity"] = mean_predictivity_of(top_percent_mask(clean, n), score)
    return out


def base_summary(run_id: str, run_dir: Path, backbone: str, task: str, seed: int, stage: str,
                 status: str = "finished") -> dict:
    task_type, adversarial = TASKS[task]
    return {"run_id": run_id, "run_dir": str(run_dir), "stage": stage, "status": status,
            "settings": {"backbone": backbone, "family": BACKBONES[backbone], "task": task, "seed": seed,
                         "prompt_length": P, "learning_rate": 0.01, "precision": "32-true", "world_size": 1},
            "config": {"data.task": task, "seed_everything": seed},
            "data": {"task": task, "task_type": task_type, "label_names": ["negative", "positive"],
                     "eval_sets": ["validation", adversarial], "splits": {}}}


def write(run_dir: Path, summary: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def accuracy(*key) -> float:
    """A deterministic accuracy (fraction) per key; RoBERTa's adversarial ones below chance, as in P1."""
    rng = random.Random("/".join(map(str, key)))
    if key[0] == "adv":
        return rng.uniform(0.30, 0.45) if key[1] == "tiny-roberta" else rng.uniform(0.55, 0.70)
    return rng.uniform(0.75, 0.95)


def fit_run(root: Path, backbone: str, task: str, seed: int, status: str = "finished",
            identical_adversarial: bool = False, with_neurons: bool = True) -> Path:
    """A fit run with ``best`` and a skill-neuron analysis of validation + its adversarial set."""
    run_id = f"fit-{backbone}-{task}-{seed}"
    run_dir = root / "runs" / run_id
    adversarial = TASKS[task][1]
    summary = base_summary(run_id, run_dir, backbone, task, seed, "fit", status)
    summary["best"] = {"epoch": 3, "step": 300, "val/acc": accuracy("clean", backbone, task, seed), "val/loss": 0.4,
                       f"adv/{adversarial}/acc": accuracy("adv", backbone, task, seed),
                       f"adv/{adversarial}/loss": 0.9}
    summary["checkpoints"] = {"best": str(run_dir / "checkpoints" / "best.ckpt"), "last": None}
    if with_neurons:
        base = 1000 * list(BACKBONES).index(backbone) + 100 * list(TASKS).index(task) + seed
        clean = neuron_tensors(base)
        adv = clean if identical_adversarial else neuron_tensors(base + 50)
        files = {name: run_dir / "skill_neurons" / f"{name}.safetensors" for name in ("validation", adversarial)}
        meta = {"backbone": backbone, "family": BACKBONES[backbone], "part": "encoder", "task": task}
        save_neuron_file(files["validation"], clean, {**meta, "split": "validation"})
        save_neuron_file(files[adversarial], adv, {**meta, "split": f"adv/{adversarial}"})
        summary["skill_neurons"] = {
            **meta, "stage": "fit", "label_names": ["negative", "positive"],
            "prompt_checkpoint": summary["checkpoints"]["best"],
            "shape": {"layers": L, "positions": P, "units": N},
            "sets": {"validation": set_summary(clean["score"], None, files["validation"], "validation"),
                     adversarial: set_summary(adv["score"], clean["score"], files[adversarial],
                                              f"adv/{adversarial}")}}
    return write(run_dir, summary)


def transfer_run(root: Path, backbone: str, source: str, target: str, seed: int) -> Path:
    run_id = f"transfer-{backbone}-{source}-{target}-{seed}"
    run_dir = root / "runs" / run_id
    summary = base_summary(run_id, run_dir, backbone, target, 0, "validate")
    acc = accuracy("transfer", backbone, source, target, seed)
    summary["prompt_source"] = {"run_id": f"fit-{backbone}-{source}-{seed}", "task": source, "backbone": backbone,
                                "seed": seed, "checkpoint": "best.ckpt"}
    summary["transfer"] = {"source_task": source, "target_task": target, "accuracy": acc,
                           "reference_accuracy": None, "reference_runs": [], "relative": None}
    summary["validate_metrics"] = {"val/acc": acc}
    return write(run_dir, summary)


def suppression_run(root: Path, backbone: str, task: str, seed: int, rate: float, selection: str) -> Path:
    run_id = f"suppress-{backbone}-{task}-{seed}-{selection}-{rate:g}"
    run_dir = root / "runs" / run_id
    adversarial = TASKS[task][1]
    summary = base_summary(run_id, run_dir, backbone, task, seed, "validate")
    summary["suppression"] = {"rate": rate, "selection": selection, "perturbation": "zero", "std": 0.1, "seed": 0,
                              "part": "encoder", "units_per_layer": math.ceil(rate * N / 100),
                              "neurons_from": [], "adversarial_neurons": "clean"}
    summary["prompt_source"] = {"run_id": f"fit-{backbone}-{task}-{seed}", "task": task, "backbone": backbone,
                                "seed": seed, "checkpoint": "best.ckpt"}
    summary["validate_metrics"] = {"val/acc": accuracy("sup", backbone, task, seed, rate, selection),
                                   f"adv/{adversarial}/acc": accuracy("adv", backbone, task, seed, rate, selection)}
    return write(run_dir, summary)


def intervention_run(root: Path, backbone: str, task: str, seed: int, rate: float, selection: str) -> Path:
    """A patching run: per set the accuracies its callback records (``summary.json`` → ``intervention``)."""
    run_id = f"patch-{backbone}-{task}-{seed}-{selection}-{rate:g}"
    run_dir = root / "runs" / run_id
    adversarial = TASKS[task][1]
    summary = base_summary(run_id, run_dir, backbone, task, seed, "validate")
    clean, adv = accuracy("twin", backbone, task, seed), accuracy("adv", backbone, task, seed)
    patched = accuracy("patch", backbone, task, seed, rate, selection)
    summary["intervention"] = {
        "kind": "patch", "alpha": None, "baseline": None, "rate": rate, "selection": selection, "seed": 0,
        "part": "encoder", "units_per_layer": math.ceil(rate * N / 100), "neurons_from": [],
        "adversarial_neurons": "clean", "neuron_source": "own",
        "sets": {"validation": {"rows": 40, "acc": 0.9, "acc_unperturbed": 0.9},
                 adversarial: {"rows": 40, "acc": patched, "acc_unperturbed": adv, "acc_clean": clean,
                               "gap_restored": (patched - adv) / (clean - adv)}}}
    summary["prompt_source"] = {"run_id": f"fit-{backbone}-{task}-{seed}", "task": task, "backbone": backbone,
                                "seed": seed, "checkpoint": "best.ckpt"}
    summary["validate_metrics"] = {"val/acc": 0.9, f"adv/{adversarial}/acc": patched}
    return write(run_dir, summary)


def roberta_fit_runs(root: Path) -> None:
    for task in TASKS:
        for seed in SEEDS:
            fit_run(root, "tiny-roberta", task, seed, identical_adversarial=(task == "sst2" and seed == 33))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """2 backbones × 2 tasks × 2 seeds fit runs; transfer (RoBERTa: all pairs with diagonal, T5: off-diagonal
    only); suppression (RoBERTa sst2, rates 0 and 15, skill and random); attack files; one unfinished run; one
    broken file."""
    root = tmp_path_factory.mktemp("report-runs")
    roberta_fit_runs(root)
    for task in TASKS:
        for seed in SEEDS:
            fit_run(root, "tiny-t5", task, seed)
    fit_run(root, "tiny-roberta", "sst2", 35, status="running")
    for seed in SEEDS:
        for source in TASKS:
            for target in TASKS:
                transfer_run(root, "tiny-roberta", source, target, seed)
                if source != target:
                    transfer_run(root, "tiny-t5", source, target, seed)
        for rate in (0.0, 15.0):
            for selection in ("skill", "random"):
                suppression_run(root, "tiny-roberta", "sst2", seed, rate, selection)
                intervention_run(root, "tiny-t5", "sst2", seed, rate, selection)
    rng = random.Random(0)  # one attack and its noise baseline per backbone: the attacks table has rows
    for backbone in BACKBONES:
        for recipe in ("deepwordbug", "noise"):
            synthetic_attack(root / "runs" / "attacks", backbone, "sst2", 33, recipe, rng)
    broken = root / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "summary.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def full_report(runs_root, tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("report-out")
    assert main([str(runs_root / "runs"), "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def summaries(root: Path) -> list[dict]:
    out = []
    for path in sorted(root.rglob("summary.json")):
        try:
            out.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            pass
    return out


# ----------------------------------------------------------------------------- tests


def test_report_has_every_section_with_data(full_report):
    _, report, markdown = full_report
    for key, title in TITLES.items():
        assert f"## {title}" in markdown
        assert report[key]["title"] == title
        if key != "balanced":  # these neuron files have no balanced scores
            assert report[key]["missing"] is None, (key, report[key]["missing"])
    assert "set `balanced: true` in the init_args of the SkillNeuronCallback" in report["balanced"]["missing"]
    assert "could not be computed" not in markdown
    assert "Check against summary.json" not in markdown  # recomputed numbers agree with the summaries


def test_accuracy_table_is_mean_and_sd_over_seeds_of_the_summaries(runs_root, full_report):
    _, report, markdown = full_report
    rows = {(r["backbone"], r["task"], r["set"]): r for r in report["accuracy"]["rows"]}
    expected: dict[tuple, list[float]] = {}
    for summary in summaries(runs_root):
        if summary["stage"] != "fit" or summary["status"] != "finished":
            continue
        backbone, task = summary["settings"]["backbone"], summary["settings"]["task"]
        for key, value in summary["best"].items():
            if key == "val/acc" or (key.startswith("adv/") and key.endswith("/acc")):
                name = "validation" if key == "val/acc" else key.split("/")[1]
                expected.setdefault((backbone, task, name), []).append(100 * value)
    assert set(rows) == set(expected)  # 2 backbones × 2 tasks × (clean + 1 adversarial set)
    for key, values in expected.items():
        row = rows[key]
        assert row["n"] == 2 and row["seeds"] == [33, 34]  # the unfinished seed-35 run is skipped
        assert row["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert row["sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert row["chance"] == 50.0
        assert row["below_chance"] == (statistics.fmean(values) < 50.0)
        assert f"{row['mean']:.1f} ± {row['sd']:.1f}" in markdown
    assert rows[("tiny-roberta", "sst2", "adv_sst2")]["below_chance"]
    assert f"{rows[('tiny-roberta', 'sst2', 'adv_sst2')]['mean']:.1f} ± " in markdown and " ↓" in markdown
    assert not rows[("tiny-t5", "sst2", "adv_sst2")]["below_chance"]


def test_unfinished_runs_and_invalid_json_are_listed_and_skipped(full_report):
    _, report, markdown = full_report
    assert report["runs"]["unfinished"] == ["fit-tiny-roberta-sst2-35"]
    assert "fit-tiny-roberta-sst2-35" in markdown and "status `running`" in markdown
    assert len(report["runs"]["invalid"]) == 1 and "not valid JSON" in report["runs"]["invalid"][0]
    assert "warning: " in markdown and "broken" in markdown
    assert report["runs"]["by_kind"]["fit"] == {"finished": 8, "unfinished": 1}
    assert report["runs"]["by_kind"]["transfer"]["finished"] == 12
    assert report["runs"]["by_kind"]["suppression"]["finished"] == 8


def test_transfer_is_relative_to_the_fit_run_of_the_target_with_the_same_seed(full_report):
    _, report, _ = full_report
    for backbone in BACKBONES:
        matrix = report["transfer"]["backbones"][backbone]
        assert matrix["tasks"] == ["sst2", "qnli"] and matrix["columns"] == ["sst2", "qnli"]  # sentiment before nli
        for i, source in enumerate(matrix["tasks"]):
            for j, target in enumerate(matrix["tasks"]):
                if backbone == "tiny-t5" and source == target:
                    assert matrix["relative_matrix"][i][j] is None  # T5 has no diagonal transfer runs
                    continue
                # callbacks.relative_transfer: 100 · acc(A→B) / best val/acc of B's fit run with the same seed
                values = [100 * accuracy("transfer", backbone, source, target, s) / accuracy("clean", backbone, target, s)
                          for s in SEEDS]
                assert matrix["relative_matrix"][i][j] == pytest.approx(statistics.fmean(values), rel=1e-12)
                cell = next(c for c in matrix["cells"] if (c["source"], c["target"]) == (source, target))
                assert cell["relative_sd"] == pytest.approx(statistics.stdev(values), rel=1e-9)
                assert cell["reference"] == "fit run of B with the prompt's seed (best val/acc)"
                assert matrix["absolute_matrix"][i][j] == pytest.approx(statistics.fmean(
                    100 * accuracy("transfer", backbone, source, target, s) for s in SEEDS), rel=1e-12)


def test_a_relative_transfer_recorded_by_the_run_is_the_reports_number(tmp_path):
    for seed in SEEDS:
        fit_run(tmp_path, "tiny-roberta", "sst2", seed, with_neurons=False)
    run = transfer_run(tmp_path, "tiny-roberta", "qnli", "sst2", 33)
    summary = json.loads((run / "summary.json").read_text())
    summary["transfer"].update(relative=87.654321, reference_accuracy=0.5, reference="recorded")
    summary["validate_metrics"]["adv/adv_sst2/acc"] = 0.25
    (run / "summary.json").write_text(json.dumps(summary))
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    matrix = json.loads((tmp_path / "out" / "report.json").read_text())["transfer"]["backbones"]["tiny-roberta"]
    assert matrix["relative_matrix"] == [[None, None], [87.654321, None]]
    assert matrix["columns"] == ["sst2", "adv_sst2", "qnli"]  # the adversarial target column of sst2
    assert matrix["absolute_matrix"][1][1] == 25.0


def test_overlap_of_a_run_with_itself_is_exactly_one_and_matches_the_summaries(runs_root, full_report):
    _, report, _ = full_report
    per_run = {(r["run_id"], r["set"]): r for r in report["overlap"]["runs"]}
    assert len(per_run) == 8 and all(r["from"] == "neuron files" for r in per_run.values())
    identical = per_run[("fit-tiny-roberta-sst2-33", "adv_sst2")]
    for n in (*OVERLAPS, 5):
        assert identical[f"overlap@{n}"] == 1.0
    for summary in summaries(runs_root):
        if summary.get("skill_neurons") and summary["status"] == "finished":
            for name, recorded in summary["skill_neurons"]["sets"].items():
                if name == "validation":
                    continue
                row = per_run[(summary["run_id"], name)]
                for n in OVERLAPS:
                    assert row[f"overlap@{n}"] == pytest.approx(recorded[f"overlap@{n}"], abs=1e-12)
                    assert row[f"clean_top{n}_predictivity"] == pytest.approx(
                        recorded[f"clean_top{n}_predictivity"], abs=1e-12)
    rows = {(r["backbone"], r["task"]): r for r in report["overlap"]["rows"]}
    sst2 = [per_run[(f"fit-tiny-roberta-sst2-{s}", "adv_sst2")]["overlap@5"] for s in SEEDS]
    assert rows[("tiny-roberta", "sst2")]["overlap@5_mean"] == pytest.approx(statistics.fmean(sst2), abs=1e-15)
    assert rows[("tiny-roberta", "sst2")]["overlap@5_sd"] == pytest.approx(statistics.stdev(sst2), abs=1e-15)


def test_suppression_curves_are_mean_and_sem_over_seeds(full_report):
    _, report, markdown = full_report
    rows = {(r["selection"], r["rate"], r["set"]): r for r in report["suppression"]["rows"]}
    assert set(rows) == {(s, r, n) for s in ("skill", "random") for r in (0.0, 15.0) for n in ("validation", "adv_sst2")}
    for (selection, rate, name), row in rows.items():
        values = [100 * accuracy("sup" if name == "validation" else "adv", "tiny-roberta", "sst2", s, rate, selection)
                  for s in SEEDS]
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert row["sem"] == pytest.approx(statistics.stdev(values) / math.sqrt(2), abs=1e-12)
    assert "### tiny-roberta · sst2 · zero" in markdown
    assert "Rate 0 vs the source fit run's best `val/acc`: largest difference" in markdown  # suppression at rate 0 must equal plain evaluation


def test_spearman_matrices_have_unit_diagonal_and_match_spearman(full_report):
    _, report, _ = full_report
    seeds = report["spearman_seeds"]["rows"]
    assert len(seeds) == 4  # 2 backbones × 2 tasks, 2 seeds each
    for row in seeds:
        assert [row["matrix"][i][i] for i in range(2)] == [1.0, 1.0]
    roberta_sst2 = next(r for r in seeds if (r["backbone"], r["task"]) == ("tiny-roberta", "sst2"))
    # P1: Spearman per layer, then the mean over layers
    expected = statistics.fmean(spearman(neuron_tensors(33)["score"][i], neuron_tensors(34)["score"][i])
                                for i in range(L))
    assert roberta_sst2["matrix"][0][1] == pytest.approx(expected, abs=1e-12)
    tasks = report["spearman_tasks"]["rows"]
    assert [r["backbone"] for r in tasks] == ["tiny-roberta", "tiny-t5"]
    for row in tasks:
        assert row["tasks"] == ["sst2", "qnli"] and row["matrix"][0][0] == 1.0 and row["matrix"][1][1] == 1.0
    mean_sst2 = (neuron_tensors(33)["score"] + neuron_tensors(34)["score"]) / 2
    mean_qnli = (neuron_tensors(133)["score"] + neuron_tensors(134)["score"]) / 2
    assert tasks[0]["matrix"][0][1] == pytest.approx(
        statistics.fmean(spearman(mean_sst2[i], mean_qnli[i]) for i in range(L)), abs=1e-12)


def test_figures_are_pngs_of_the_stated_size_and_linked_from_the_report(full_report):
    out, report, markdown = full_report
    figures = [f for key in TITLES for f in report[key]["figures"]]
    assert len(figures) == len({f["file"] for f in figures})
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(Path(f["file"]).name for f in figures)
    for figure in figures:
        path = out / figure["file"]
        assert path.stat().st_size > 0
        assert f"]({figure['file']})" in markdown
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (figure["width"], figure["height"])
            assert image.size in (WIDE, SQUARE) or figure["file"] == "figures/accuracy.png"
    sizes = {Path(f["file"]).name: (f["width"], f["height"]) for f in figures}
    # accuracy.png is sized to its 2 backbones x 2 tasks groups (260 + 150 px per group), the others WIDE / SQUARE
    assert sizes["accuracy.png"] == (860, 560) and sizes["transfer_relative_tiny-roberta.png"] == (800, 800)


def test_only_roberta_fit_runs_leave_out_t5_transfer_and_suppression_with_reasons(tmp_path):
    roberta_fit_runs(tmp_path)
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    report, markdown = json.loads((out / "report.json").read_text()), (out / "report.md").read_text()
    assert all(f"## {title}" in markdown for title in TITLES.values())
    assert report["transfer"]["missing"].startswith("No transfer runs among the 4 runs read")
    assert report["suppression"]["missing"].startswith("No suppression runs among the 4 runs read")
    assert report["suppression"]["missing"] in markdown
    assert "No T5-like (seq2seq) fit runs among the 4 runs read" in markdown
    assert {r["family"] for r in report["paper_histogram"]["rows"]} == {"masked_lm"}
    for key in ("accuracy", "per_layer", "overlap", "spearman_seeds", "spearman_tasks"):
        assert report[key]["missing"] is None, key
    assert "could not be computed" not in markdown


def test_runs_without_neuron_analyses_or_best_epoch_leave_sections_out_without_crashing(tmp_path):
    fit_run(tmp_path, "tiny-t5", "qnli", 33, with_neurons=False)
    write(tmp_path / "runs" / "bare", {"run_id": "bare", "stage": "fit", "status": "finished", "settings": {}})
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    report, markdown = json.loads((out / "report.json").read_text()), (out / "report.md").read_text()
    assert report["accuracy"]["missing"] is None and len(report["accuracy"]["rows"]) == 2
    for key in ("per_layer", "overlap"):
        assert "No finished runs with a skill-neuron analysis of 'validation'" in report[key]["missing"]
    for key in ("paper_boxes", "paper_overlap", "paper_histogram", "paper_location", "spearman_seeds",
                "spearman_tasks"):
        assert report[key]["missing"].startswith("No skill-neuron analyses to average"), key
    assert "could not be computed" not in markdown


def test_wandb_offline_logs_the_report_to_an_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    fit_run(tmp_path, "tiny-roberta", "sst2", 33)
    fit_run(tmp_path, "tiny-roberta", "sst2", 34)
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--wandb", "--project", "report-test"]) == 0
    info = json.loads((out / "report.json").read_text())["wandb"]
    assert info["mode"] == "offline" and info["project"] == "report-test"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and Path(info["dir"]) == runs[0]
    records = list(runs[0].glob("run-*.wandb"))
    assert len(records) == 1 and records[0].stat().st_size > 0


def test_a_path_that_does_not_exist_is_one_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere does not exist" in err[0] and err[0].startswith("skill-neurons report: error:")
    assert not (tmp_path / "report" / "report.md").exists()


def test_a_folder_without_run_summaries_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run summaries (summary.json) found" in err[0]


def test_a_wandb_run_path_while_offline_says_to_pass_local_directories(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["my-team/skill-neurons/ab12cd34", "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot reach W&B to read run my-team/skill-neurons/ab12cd34 — pass local run directories" in err[0]


def test_skill_neurons_cli_dispatches_report(tmp_path):
    from skill_neurons.cli import main as cli_main

    fit_run(tmp_path, "tiny-roberta", "sst2", 33)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["report", str(tmp_path / "runs" / "fit-tiny-roberta-sst2-33"), "--out", str(tmp_path / "r"),
                  "--percent", "10"])
    assert exit_info.value.code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["percent"] == 10.0 and report["overlap"]["percents"] == [1, 5, 10, 15]


def test_causal_tests_section_is_the_mean_over_seeds_of_each_runs_gap_restored(runs_root, full_report):
    _, report, markdown = full_report
    rows = {(r["selection"], r["rate"], r["set"], r["measure"]): r for r in report["intervention"]["rows"]}
    for selection in ("skill", "random"):
        for rate in (0.0, 15.0):
            values = [s["intervention"]["sets"]["adv_sst2"] for s in summaries(runs_root)
                      if s.get("intervention") and s["intervention"]["selection"] == selection
                      and s["intervention"]["rate"] == rate]
            assert len(values) == len(SEEDS)
            for measure in ("gap_restored", "acc", "acc_unperturbed", "acc_clean"):
                want = [100 * v[measure] for v in values]
                row = rows[(selection, rate, "adv_sst2", measure)]
                assert row["mean"] == pytest.approx(sum(want) / len(want)) and row["n"] == len(SEEDS)
                assert row["backbone"] == "tiny-t5" and row["seeds"] == sorted(row["seeds"])
    assert "gap restored = (acc_patched − acc_adv) / (acc_clean − acc_adv)" in markdown
    assert any(f["file"].startswith("figures/intervention_tiny-t5_sst2_patch") for f in report["intervention"]["figures"])
