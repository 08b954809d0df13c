"""The report's paper analyses (P1 ``src/analysis.py``) against independent numpy/scipy computations written here
from P1's definitions, over synthetic neuron files with planted structure: 5 seeds, four tasks of three types,
RoBERTa-like and T5-like backbones. T5's clean skill neurons stay predictive on adversarial data, RoBERTa's do
not; one task has only 3 of the 5 seeds. Nothing here calls the report's analysis code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from callbacks.skill_neurons import save_neuron_file
from skill_neurons.report.main import main

L, N = 4, 50
SEEDS = (33, 34, 35, 36, 37)
BACKBONES = {"tiny-roberta": "masked_lm", "tiny-t5": "seq2seq"}
TASKS = {"sst2": ("sentiment", "adv_sst2"), "imdb": ("sentiment", None), "qnli": ("nli", "adv_qnli"),
         "qqp": ("paraphrase", "adv_qqp")}
MISSING = {("tiny-t5", "qqp"): (36, 37)}  # seeds without a run
PLANTED = [(3, u) for u in range(6)] + [(2, u) for u in range(3)]  # (layer, unit) of every task's skill neurons
CLASS_COUNTS = {"validation": [40, 40], "adv": [50, 32]}  # AdvGLUE MNLI-like imbalance


def scores(backbone: str, task: str, seed: int) -> dict[str, np.ndarray]:
    """Clean and adversarial (L, N) scores; the planted units are strong on clean data and, for T5 only, on
    adversarial data too."""
    rng = np.random.default_rng([list(BACKBONES).index(backbone), list(TASKS).index(task), seed])
    clean = 0.5 + 0.3 * rng.random((L, N))
    adversarial = 0.5 + 0.3 * rng.random((L, N))
    for layer, unit in PLANTED:
        clean[layer, unit] = 0.9 + 0.09 * rng.random()
        adversarial[layer, unit] = 0.85 + 0.1 * rng.random() if backbone == "tiny-t5" else 0.5 + 0.05 * rng.random()
    return {"clean": clean.astype(np.float32), "adv": adversarial.astype(np.float32),
            "balanced_clean": (clean - 0.05).astype(np.float32), "balanced_adv": (adversarial - 0.08).astype(np.float32)}


def fit_run(root: Path, backbone: str, task: str, seed: int, layout: str | None = None, units: int = N) -> Path:
    task_type, adversarial = TASKS[task]
    run_id = f"fit-{backbone}-{task}-{seed}"
    run_dir = root / run_id
    values = scores(backbone, task, seed)
    meta = {"backbone": backbone, "family": BACKBONES[backbone], "part": "encoder", "task": task,
            **({"layout": layout, "analysed_positions": "prompt"} if layout else {})}
    sets = {}
    for name, kind in (("validation", "clean"), (adversarial, "adv")):
        if name is None:
            continue
        counts = CLASS_COUNTS["validation" if kind == "clean" else "adv"]
        file = run_dir / "skill_neurons" / f"{name}.safetensors"
        score = torch.from_numpy(values[kind][:, :units].copy())
        save_neuron_file(file, {"score": score, "balanced_score": torch.from_numpy(values[f"balanced_{kind}"][:, :units].copy()),
                                "class_count": torch.tensor(counts)}, {**meta, "split": name})
        sets[name] = {"split": name if kind == "clean" else f"adv/{name}", "file": str(file), "class_count": counts,
                      "examples": sum(counts)}
    rng = np.random.default_rng([seed, len(task)])
    best = {"val/acc": 0.8 + 0.1 * rng.random(), **({f"adv/{adversarial}/acc": 0.3 + 0.4 * rng.random()}
                                                    if adversarial else {})}
    summary = {"run_id": run_id, "stage": "fit", "status": "finished", "finished": "2024-01-01T00:00:00",
               "settings": {"backbone": backbone, "family": BACKBONES[backbone], "task": task, "seed": seed,
                            **({"layout": layout} if layout else {})},
               "data": {"task": task, "task_type": task_type, "label_names": ["no", "yes"]}, "best": best,
               "skill_neurons": {**meta, "stage": "fit", "prompt_checkpoint": str(run_dir / "checkpoints/best.ckpt"),
                                 "sets": sets}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def present(backbone: str, task: str) -> list[int]:
    return [s for s in SEEDS if s not in MISSING.get((backbone, task), ())]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper-runs")
    for backbone in BACKBONES:
        for task in TASKS:
            for seed in present(backbone, task):
                fit_run(root, backbone, task, seed)
    out = tmp_path_factory.mktemp("paper-report")
    assert main([str(root), "--out", str(out), "--percent", "5"]) == 0
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), out


def seed_mean(backbone: str, task: str, kind: str) -> np.ndarray:
    """P1 get_max_mean: each seed's score is already the max over positions; mean over the seeds present."""
    return np.mean([scores(backbone, task, s)[kind].astype(np.float64) for s in present(backbone, task)], axis=0)


def descending(values: np.ndarray) -> np.ndarray:
    return np.argsort(-values, kind="stable")


def test_overlap_per_n_is_p1s_per_layer_overlap_of_seed_means_with_sem_over_layers(report):
    document, _, _ = report
    rows = document["paper_overlap"]["rows"]
    assert sorted({r["n"] for r in rows}) == [2, 4, 6, 8, 10, 12, 14]
    checked = 0
    for backbone in BACKBONES:
        for task, (_, adversarial) in TASKS.items():
            if adversarial is None:
                continue
            clean, adv = seed_mean(backbone, task, "clean"), seed_mean(backbone, task, "adv")
            for n in (2, 4, 6, 8, 10, 12, 14):
                k = int(N / 100 * n)
                overlap = [len(set(descending(clean[l])[:k]) & set(descending(adv[l])[:k])) / k for l in range(L)]
                row = next(r for r in rows if (r["backbone"], r["task"], r["set"], r["n"]) == (backbone, task, adversarial, n))
                assert row["k"] == k
                assert row["mean"] == pytest.approx(np.mean(overlap), abs=1e-12)
                assert row["sem"] == pytest.approx(np.std(overlap, ddof=1) / math.sqrt(L), abs=1e-12)
                checked += 1
    assert checked == 2 * 3 * 7
    # the planted structure shows: T5 keeps its skill neurons on adversarial data, RoBERTa does not
    t5 = next(r for r in rows if (r["backbone"], r["task"], r["n"]) == ("tiny-t5", "sst2", 10))
    roberta = next(r for r in rows if (r["backbone"], r["task"], r["n"]) == ("tiny-roberta", "sst2", 10))
    assert t5["mean"] > 0.3 > roberta["mean"]


def test_histogram_counts_are_model_wide_top_n_clean_units_on_adversarial_seed_means(report):
    document, _, _ = report
    rows = document["paper_histogram"]["rows"]
    for task in ("sst2", "qnli", "qqp"):
        adversarial = TASKS[task][1]
        k = int(L * N / 100 * 5)
        values = {b: seed_mean(b, task, "adv").reshape(-1)[descending(seed_mean(b, task, "clean").reshape(-1))[:k]]
                  for b in BACKBONES}
        everything = np.concatenate(list(values.values()))
        low, high = math.floor(round(everything.min() / 0.05, 9)), math.ceil(round(everything.max() / 0.05, 9))
        edges = np.arange(low, high + 1) * 0.05
        for backbone in BACKBONES:
            row = next(r for r in rows if (r["backbone"], r["task"], r["set"]) == (backbone, task, adversarial))
            assert row["k"] == k == 10
            assert row["edges"] == pytest.approx(edges.tolist())
            assert row["counts"] == np.histogram(values[backbone], bins=edges)[0].tolist()
            assert sum(row["counts"]) == k
            assert row["majority_baseline"] == pytest.approx(50 / 82)
    t5 = next(r for r in rows if (r["backbone"], r["task"]) == ("tiny-t5", "sst2"))
    roberta = next(r for r in rows if (r["backbone"], r["task"]) == ("tiny-roberta", "sst2"))
    assert t5["mean"] > 0.84 and roberta["mean"] < 0.56


def test_layer_location_counts_the_model_wide_top_n_per_layer(report):
    document, _, _ = report
    for row in document["paper_location"]["rows"]:
        clean = seed_mean(row["backbone"], row["task"], "clean")
        top = descending(clean.reshape(-1))[:int(L * N / 100 * 5)]
        assert row["counts"] == np.bincount(top // N, minlength=L).tolist()
        # the 9 planted units are 9 of the top 10; the tenth is the best unplanted unit, in any layer
        assert row["counts"][3] >= 6 and row["counts"][2] >= 3 and sum(row["counts"]) == 10


def test_spearman_is_per_layer_rho_averaged_over_layers_across_seeds_and_tasks(report):
    document, _, _ = report
    for row in document["spearman_seeds"]["rows"]:
        seeds = row["seeds"]
        per_seed = [scores(row["backbone"], row["task"], s)["clean"] for s in seeds]
        for i in range(len(seeds)):
            for j in range(len(seeds)):
                expected = 1.0 if i == j else np.mean([spearmanr(per_seed[i][l], per_seed[j][l])[0] for l in range(L)])
                assert row["matrix"][i][j] == pytest.approx(expected, abs=1e-12)
    # the curve over n: each seed keeps its own top-k units per layer, in unit-index order (P1's topn branch)
    curve = next(c for c in document["spearman_seeds"]["curves"]
                 if (c["backbone"], c["task"], c["n"]) == ("tiny-roberta", "sst2", 14))
    k = int(N / 100 * 14)
    own = [np.stack([s[l][np.sort(descending(s[l])[:k])] for l in range(L)])
           for s in (scores("tiny-roberta", "sst2", seed)["clean"] for seed in SEEDS)]
    pairs = [np.mean([spearmanr(own[i][l], own[j][l])[0] for l in range(L)]) for i in range(5) for j in range(i + 1, 5)]
    assert curve["mean"] == pytest.approx(np.mean(pairs), abs=1e-12)
    assert curve["sem"] == pytest.approx(np.std(pairs, ddof=1) / math.sqrt(10), abs=1e-12)
    for row in document["spearman_tasks"]["rows"]:
        means = [seed_mean(row["backbone"], t, "clean") for t in row["tasks"]]
        for i in range(len(means)):
            for j in range(i + 1, len(means)):
                expected = np.mean([spearmanr(means[i][l], means[j][l])[0] for l in range(L)])
                assert row["matrix"][i][j] == pytest.approx(expected, abs=1e-12)
    sentiment = [c for c in document["spearman_tasks"]["curves"] if c["task_type"] == "sentiment"]
    assert {tuple(c["pairs"][0]) for c in sentiment} == {("imdb", "sst2")} and all(c["sem"] is None for c in sentiment)
    assert len(next(c for c in document["spearman_tasks"]["curves"] if c["task_type"] == "all")["pairs"]) == 6


def test_missing_seeds_are_named_averaged_over_those_present_and_marked(report):
    document, markdown, _ = report
    row = next(r for r in document["paper_location"]["rows"] if (r["backbone"], r["task"]) == ("tiny-t5", "qqp"))
    assert row["seeds"] == [33, 34, 35] and row["missing_seeds"] == [36, 37]
    assert "tiny-t5 · qqp: seed mean over 3 of 5 seeds (missing 36, 37) †" in markdown
    assert "qqp †" in markdown
    box = next(r for r in document["paper_boxes"]["rows"] if (r["backbone"], r["task"], r["set"]) == ("tiny-t5", "qqp", "validation"))
    assert box["mean"] == pytest.approx(seed_mean("tiny-t5", "qqp", "clean").mean(), abs=1e-9)


def test_balanced_section_compares_roberta_and_t5_raw_and_balanced(report):
    document, markdown, _ = report
    rows = document["balanced"]["rows"]
    for row in rows:
        k = int(L * N / 100 * 5)
        raw = seed_mean(row["backbone"], row["task"], "adv").reshape(-1)[
            descending(seed_mean(row["backbone"], row["task"], "clean").reshape(-1))[:k]]
        balanced = seed_mean(row["backbone"], row["task"], "balanced_adv").reshape(-1)[
            descending(seed_mean(row["backbone"], row["task"], "balanced_clean").reshape(-1))[:k]]
        assert row["raw_mean"] == pytest.approx(raw.mean()) and row["balanced_mean"] == pytest.approx(balanced.mean())
    comparison = next(c for c in document["balanced"]["comparisons"] if c["task"] == "sst2")
    t5 = next(r for r in rows if (r["backbone"], r["task"]) == ("tiny-t5", "sst2"))
    roberta = next(r for r in rows if (r["backbone"], r["task"]) == ("tiny-roberta", "sst2"))
    assert comparison["raw_difference"] == pytest.approx(t5["raw_mean"] - roberta["raw_mean"])
    assert "T5 − RoBERTa (balanced)" in markdown


def test_every_paper_figure_is_a_png_grouped_by_task_type(report):
    document, markdown, out = report
    names = {p.stem for p in (out / "figures").glob("*.png")}
    for kind in ("sentiment", "nli", "paraphrase"):
        assert {f"paper-overlap_{kind}", f"paper-histogram_{kind}", f"paper-location_{kind}",
                f"spearman-seeds-curve_{kind}"} <= names
    assert {"paper-boxes_tiny-roberta", "paper-boxes_tiny-t5", "spearman-tasks_tiny-t5_encoder",
            "spearman_tasks_curve", "balanced"} <= names
    for key in ("paper_boxes", "paper_overlap", "paper_histogram", "paper_location", "spearman_seeds",
                "spearman_tasks", "balanced"):
        assert document[key]["missing"] is None, key
        assert "**Formula**" in markdown
    for figure in (out / "figures").glob("*.png"):
        assert f"figures/{figure.name}" in markdown
        with Image.open(figure) as image:  # accuracy.png is sized to its groups
            assert image.size in ((1200, 600), (800, 800)) or figure.name == "accuracy.png"


def test_runs_of_different_layouts_are_refused_naming_the_runs(tmp_path, capsys):
    fit_run(tmp_path / "runs", "tiny-roberta", "sst2", 33, layout="paper")
    fit_run(tmp_path / "runs", "tiny-roberta", "sst2", 34)  # older run: standard layout
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "layout paper, analysed positions prompt: `fit-tiny-roberta-sst2-33`" in error
    assert "layout standard, analysed positions prompt: `fit-tiny-roberta-sst2-34`" in error
    assert not (tmp_path / "out" / "report.md").exists()


def test_neuron_files_of_different_shapes_for_one_backbone_are_refused_naming_the_files(tmp_path, capsys):
    fit_run(tmp_path / "runs", "tiny-roberta", "sst2", 33)
    fit_run(tmp_path / "runs", "tiny-roberta", "sst2", 34, units=40)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "different shapes" in error and f"[{L}, 40]" in error and f"[{L}, {N}]" in error
    assert "fit-tiny-roberta-sst2-34/skill_neurons/validation.safetensors" in error
