"""``skill-neurons report --definitions p1-code`` against an independent port of P1's analysis code
(tests/helpers/p1_port.py), on synthetic neuron files of the paper's shape in layers (12; fewer units for
speed) with many equal scores: 5 seeds of 11 tasks on a RoBERTa-like backbone (P1's 11 × 11 task matrix) and of
the three tasks with an adversarial set on a T5-like one; transfer and suppression runs. And the two definitions must differ where P1's code differs from the paper's text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from callbacks.skill_neurons import save_neuron_file
from skill_neurons.report.main import main
from tests.helpers import p1_port

L, N = 12, 64
SEEDS = (33, 34, 35, 36, 37)
BACKBONES = {"tiny-roberta": "masked_lm", "tiny-t5": "seq2seq"}
TASKS = {"ethics_deontology": "ethical_judgment", "ethics_justice": "ethical_judgment", "mrpc": "paraphrase",
         "qqp": "paraphrase", "mnli": "nli", "qnli": "nli", "snli": "nli", "imdb": "sentiment",
         "sst2": "sentiment", "movie_rationales": "sentiment", "tweet_eval": "sentiment"}
ADVERSARIAL = {"sst2": "adv_sst2", "qqp": "adv_qqp", "mnli": "adv_mnli"}
GRID = (2, 4, 6, 8, 10, 12, 14)
pytestmark = pytest.mark.slow  # two reports and P1's loop-style port: about 40 s of CPU


def scores(backbone: str, task: str, seed: int, kind: str) -> np.ndarray:
    """(L, N) float32 scores on a 1/32 grid: many units share a score, and bottom-k differs from top-k."""
    rng = np.random.default_rng([list(BACKBONES).index(backbone), list(TASKS).index(task), seed, kind == "adv"])
    return (np.round((0.5 + 0.45 * rng.random((L, N))) * 32) / 32).astype(np.float32)


def summary(run_id: str, backbone: str, task: str, seed: int, stage: str) -> dict:
    return {"run_id": run_id, "stage": stage, "status": "finished", "finished": "2024-01-01T00:00:00",
            "settings": {"backbone": backbone, "family": BACKBONES[backbone], "task": task, "seed": seed,
                         "prompt_length": 4, "layout": "paper"},
            "data": {"task": task, "task_type": TASKS[task], "label_names": ["no", "yes"]}}


def write(run_dir: Path, content: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(content))


def fit_run(root: Path, backbone: str, task: str, seed: int) -> None:
    run_id = f"fit-{backbone}-{task}-{seed}"
    # P1's input layout: the paper definition then sizes top sets as P1 does (int), so the two definitions
    # differ only where P1's code departs from the paper's text
    meta = {"backbone": backbone, "family": BACKBONES[backbone], "part": "encoder", "task": task, "layout": "paper"}
    sets = {}
    for name, kind in (("validation", "clean"), (ADVERSARIAL.get(task), "adv")):
        if name:
            file = root / run_id / "skill_neurons" / f"{name}.safetensors"
            save_neuron_file(file, {"score": torch.from_numpy(scores(backbone, task, seed, kind)),
                                    "class_count": torch.tensor([40, 40])}, {**meta, "split": name})
            sets[name] = {"split": name if kind == "clean" else f"adv/{name}", "file": str(file),
                          "class_count": [40, 40], "examples": 80}
    content = summary(run_id, backbone, task, seed, "fit")
    content["best"] = {"val/acc": 0.8 + 0.01 * (seed - 33)}
    content["skill_neurons"] = {**meta, "stage": "fit", "sets": sets,
                                "prompt_checkpoint": str(root / run_id / "checkpoints/best.ckpt")}
    write(root / run_id, content)


def transfer_accuracy(source: str, target: str, seed: int) -> float:
    return 0.5 + 0.0137 * (seed - 30) + 0.01 * len(source + target)


def transfer_run(root: Path, source: str, target: str, seed: int) -> None:
    run_id = f"transfer-{source}-{target}-{seed}"
    content = summary(run_id, "tiny-roberta", target, 0, "validate")
    acc = transfer_accuracy(source, target, seed)
    content["prompt_source"] = {"run_id": f"fit-tiny-roberta-{source}-{seed}", "task": source, "seed": seed}
    content["transfer"] = {"source_task": source, "target_task": target, "accuracy": acc, "relative": None}
    content["validate_metrics"] = {"val/acc": acc}
    write(root / run_id, content)


def suppression_run(root: Path, seed: int, rate: float, selection: str) -> None:
    run_id = f"suppress-{seed}-{selection}-{rate:g}"
    content = summary(run_id, "tiny-roberta", "sst2", seed, "validate")
    content["suppression"] = {"rate": rate, "selection": selection, "perturbation": "zero", "part": "encoder",
                              "neuron_source": "seed_mean", "adversarial_neurons": "clean"}
    content["validate_metrics"] = {"val/acc": 0.7, "adv/adv_sst2/acc": 0.4 + 0.01 * seed - rate / 100}
    write(root / run_id, content)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("p1-runs")
    for backbone in BACKBONES:
        for task in tasks_of(backbone):
            for seed in SEEDS:
                fit_run(root, backbone, task, seed)
    for source, target in (("sst2", "imdb"), ("imdb", "sst2")):
        for seed in (33, 34):
            transfer_run(root, source, target, seed)
    for seed in (33, 34, 35):
        for rate in (3, 15):
            for selection in ("skill", "random"):
                suppression_run(root, seed, rate, selection)
    out = {}
    for definitions in ("paper", "p1-code"):
        folder = tmp_path_factory.mktemp(definitions)
        # the paper report only for the adversarial tasks: it is compared with P1's where they differ
        only = [] if definitions == "p1-code" else [a for task in ADVERSARIAL for a in ("--task", task)]
        assert main([str(root), "--out", str(folder), "--definitions", definitions, *only]) == 0
        out[definitions] = (json.loads((folder / "report.json").read_text()), (folder / "report.md").read_text())
    return out


def tasks_of(backbone: str) -> list[str]:
    return list(TASKS) if backbone == "tiny-roberta" else list(ADVERSARIAL)


def seed_mean(backbone: str, task: str, kind: str) -> np.ndarray:  # P1 find.py::get_max_mean
    return np.mean(np.array([scores(backbone, task, s, kind).astype(np.float64) for s in SEEDS]), axis=0)


def same(got, expected) -> bool:
    """Equal bit for bit, NaN equal to NaN (P1 keeps a NaN layer: k = 1 unit per layer has no ρ)."""
    return np.array_equal(np.array(got, dtype=float), np.array(expected, dtype=float), equal_nan=True)


def test_overlap_is_p1s_bottom_k_overlap_exactly(reports):
    rows = reports["p1-code"][0]["paper_overlap"]["rows"]
    for backbone in BACKBONES:
        for task, adversarial in ADVERSARIAL.items():
            expected = p1_port.adv_overlap_per_topn(seed_mean(backbone, task, "clean"), seed_mean(backbone, task, "adv"))
            got = [r for r in rows if (r["backbone"], r["task"], r["set"]) == (backbone, task, adversarial)]
            assert [r["n"] for r in got] == list(GRID)
            assert [(r["mean"], r["sem"]) for r in got] == [(float(m), float(s)) for m, s in expected]


def test_histogram_values_counts_and_edges_are_p1s_exactly(reports):
    rows = reports["p1-code"][0]["paper_histogram"]["rows"]
    for task, adversarial in ADVERSARIAL.items():
        pairs = [(seed_mean(b, task, "clean"), seed_mean(b, task, "adv")) for b in BACKBONES]
        values, edges, counts = p1_port.histogram(pairs, 5)
        for backbone, v, c in zip(BACKBONES, values, counts):
            row = next(r for r in rows if (r["backbone"], r["task"], r["set"]) == (backbone, task, adversarial))
            assert row["edges"] == edges.tolist()  # bit for bit, np.arange's float edges included
            assert row["counts"] == c.tolist()
            assert row["values"] == len(v) == int(2 * int(L * N / 100 * 5) / 100 * 5)
            assert row["mean"] == float(np.mean(v))


def test_layer_location_is_p1s_exactly(reports):
    rows = reports["p1-code"][0]["paper_location"]["rows"]
    for backbone in BACKBONES:
        for task in tasks_of(backbone):
            row = next(r for r in rows if (r["backbone"], r["task"]) == (backbone, task))
            assert row["counts"] == p1_port.location(seed_mean(backbone, task, "clean"), 5).astype(int).tolist()


def test_spearman_averages_across_seeds_and_tasks_are_p1s_exactly(reports):
    document = reports["p1-code"][0]
    for row in document["spearman_seeds"]["p1_rows"][::4]:  # a sample: the port is slow
        preds = [scores(row["backbone"], row["task"], s, "clean").astype(np.float64) for s in SEEDS]
        assert row["mean_p_value"] == float(np.mean(p1_port.correlation_set(p1_port.correlation_matrix(preds))))
        for point in row["curve"]:
            values = p1_port.correlation_set(p1_port.correlation_matrix(preds, point["n"]))
            assert same((point["mean"], point["sem"]), (np.mean(values), p1_port.sem(values)))
    assert len(document["spearman_seeds"]["p1_rows"]) == len(TASKS) + len(ADVERSARIAL)
    task_rows = document["spearman_tasks"]["p1_rows"]
    assert [(r["backbone"], len(r["tasks"])) for r in task_rows] == [("tiny-roberta", 11), ("tiny-t5", 3)]
    assert task_rows[1]["average"] is None  # P1's 55 pairs need 11 tasks (its code raises IndexError)
    for row in task_rows[:1]:
        preds = [seed_mean(row["backbone"], t, "clean") for t in row["tasks"]]
        assert row["average"] == float(np.mean(p1_port.task_average(p1_port.correlation_matrix(preds, 100))))
        for point in row["curve"]:
            values = p1_port.task_average(p1_port.correlation_matrix(preds, point["n"]))
            assert same((point["average"], point["sem"]), (np.mean(values), p1_port.sem(values)))
            at_n = p1_port.correlation_matrix(preds, point["n"])
            sentiment = [at_n[7, 8], at_n[7, 9], at_n[8, 9]]
            assert same([point["types"]["sentiment_analysis"]["mean"], point["types"]["ethical_judgment"]["mean"]],
                        [np.mean(sentiment), at_n[0, 1]])


def test_suppression_unit_sets_are_p1s_init_mask_exactly(reports):
    units = reports["p1-code"][0]["paper_suppression"]["units"]
    checked = 0
    for row in units:
        clean, adv = seed_mean(row["backbone"], row["task"], "clean"), seed_mean(row["backbone"], row["task"], "adv")
        # --adv_nonAdv True: the clean curve suppresses the adversarial neurons and vice versa
        score = adv if row["curve"].startswith("clean") else clean
        pairs = p1_port.suppressed(score, row["rate"])
        assert row["units_p1"] == len(pairs) == L * int(N / 100 * row["rate"])
        assert row["digest_p1"] == hashlib.sha1(repr(sorted((int(a), int(b)) for a, b in pairs)).encode()).hexdigest()
        checked += 1
    assert checked == len(BACKBONES) * len(ADVERSARIAL) * 2 * 2  # backbones × adversarial tasks × curves × rates
    curve = reports["p1-code"][0]["paper_suppression"]["rows"]
    point = next(r for r in curve if (r["selection"], r["rate"]) == ("skill", 15))
    accuracies = [100 * (0.4 + 0.01 * s - 0.15) for s in (33, 34, 35)]
    assert point["mean"] == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert "Not computed" in reports["p1-code"][1]


def test_transfer_absolute_is_p1s_int_truncation(reports):
    info = reports["p1-code"][0]["transfer"]["backbones"]["tiny-roberta"]
    for a, row in zip(info["tasks"], info["absolute_matrix_p1"]):
        for b, value in zip(info["columns"], row):
            if a != b:
                expected = p1_port.transfer_absolute([transfer_accuracy(a, b, s) for s in (33, 34)])
                assert value == expected and isinstance(value, int)


def test_the_two_definitions_differ_where_p1s_code_differs_from_the_paper(reports):
    paper, p1 = reports["paper"][0], reports["p1-code"][0]
    assert (paper["definitions"], p1["definitions"]) == ("paper", "p1-code")
    clean, adv = seed_mean("tiny-roberta", "sst2", "clean"), seed_mean("tiny-roberta", "sst2", "adv")
    for n in GRID:
        k = int(N / 100 * n)
        top = np.mean([len(set(np.argsort(-clean[i], kind="stable")[:k]) & set(np.argsort(-adv[i], kind="stable")[:k]))
                       / k for i in range(L)])
        bottom = p1_port.adv_overlap(clean, adv, n).mean()
        pick = [r for r in (paper, p1) for r in r["paper_overlap"]["rows"]
                if (r["backbone"], r["task"], r["n"]) == ("tiny-roberta", "sst2", n)]
        assert pick[0]["mean"] == pytest.approx(top, abs=1e-12)
        assert pick[1]["mean"] == pytest.approx(bottom, abs=1e-12)
    assert any(a["mean"] != b["mean"] for a, b in zip(paper["paper_overlap"]["rows"], p1["paper_overlap"]["rows"]))
    hist = next(r for r in p1["paper_histogram"]["rows"] if r["task"] == "sst2")
    assert hist["values"] < next(r for r in paper["paper_histogram"]["rows"] if r["task"] == "sst2")["k"]
    # the definitions section names both numbers; the paper report has no such section
    assert "p1_differences" not in paper and p1["p1_differences"]["rows"]
    assert {r["figure"] for r in p1["p1_differences"]["rows"]} >= {"overlap", "histogram", "transfer (absolute)"}
    markdown = reports["p1-code"][1]
    for function in ("get_adv_overlap_per_topn", "get_histplot_distribution", "correlation_matrix_across_layer",
                     "get_transferability_matrix_new", "get_perturbation_accuracy_runs"):
        assert function in markdown


# ------------------------------------------------------------------------------ P1's suppression curves
SUPPRESSION_SEEDS, SUPPRESSION_RATES = (33, 34, 35), (0, 1, 3)
N_EXAMPLES, K_WIN, K_LOSE = 872, 85, 787  # 1 - 85/872 > 787/872 in float64; equal in float32


def accuracy_tensors(stored_score: bool = True) -> dict[str, torch.Tensor]:
    """(2 layers, 2 positions, 100 units) accuracies k/872: unit 0 at 85/872 (P1's predictivity 1 - 85/872) and
    unit 1 at 787/872 tie in float32 but unit 0 is higher in P1's float64; the rest at 1/2."""
    k = torch.full((2, 2, 100), N_EXAMPLES // 2, dtype=torch.int64)
    k[:, 0, 0], k[:, 0, 1] = K_WIN, K_LOSE
    accuracy = (k.double() / N_EXAMPLES).float()
    tensors = {"accuracy": accuracy, "class_count": torch.tensor([436, 436])}
    tensors["score"] = (torch.maximum(k, N_EXAMPLES - k).double() / N_EXAMPLES).float().amax(dim=1)  # as ours
    if not stored_score:
        tensors = {"score": tensors["score"], "class_count": tensors["class_count"]}
    return tensors


def neuron_fit_run(root: Path, backbone: str, seed: int, with_accuracy: bool) -> None:
    run_id = f"fit-{backbone}-sst2-{seed}"
    meta = {"backbone": backbone, "family": BACKBONES[backbone], "part": "encoder", "task": "sst2", "layout": "paper"}
    sets = {}
    for name in ("validation", "adv_sst2"):
        file = root / run_id / "skill_neurons" / f"{name}.safetensors"
        save_neuron_file(file, accuracy_tensors(with_accuracy), {**meta, "split": name})
        sets[name] = {"split": name, "file": str(file), "class_count": [436, 436], "examples": N_EXAMPLES}
    content = summary(run_id, backbone, "sst2", seed, "fit")
    content["best"] = {"val/acc": 0.8}
    content["skill_neurons"] = {**meta, "stage": "fit", "sets": sets}
    write(root / run_id, content)


def curve_accuracy(curve: str, seed: int, rate: float) -> float:
    """A distinct accuracy per curve, prompt and rate (fraction)."""
    offset = {"eval_adv/validation": 0.1, "eval_validation/adv_sst2": 0.2, "random0/validation": 0.3,
              "random1/adv_sst2": 0.4, "eval_validation/validation": 0.05, "eval_adv/adv_sst2": 0.15,
              "random0/adv_sst2": 0.25, "random1/validation": 0.35}[curve]
    return offset + 0.01 * (seed - 30) - rate / 200 + 0.001 * len(curve)


def p1_suppression_run(root: Path, backbone: str, seed: int, rate: float, selection: str, eval_set: str = "validation",
                       draw: int = 0) -> None:
    run_id = f"suppress-{backbone}-{seed}-{selection}-{eval_set}-{draw}-{rate:g}"
    content = summary(run_id, backbone, "sst2", seed, "validate")
    content["suppression"] = {"rate": rate, "selection": selection, "perturbation": "zero", "part": "encoder",
                              "neuron_source": "seed_mean", "adversarial_neurons": "clean", "eval_set": eval_set,
                              "seed": draw}
    tag = f"random{draw}" if selection == "random" else ("eval_adv" if eval_set != "validation" else "eval_validation")
    content["validate_metrics"] = {"val/acc": curve_accuracy(f"{tag}/validation", seed, rate),
                                   "adv/adv_sst2/acc": curve_accuracy(f"{tag}/adv_sst2", seed, rate)}
    write(root / run_id, content)


@pytest.fixture(scope="module")
def p1_suppression_report(tmp_path_factory):
    """tiny-roberta: both eval_sets and two random draws, files with accuracies; tiny-t5: clean neurons and one
    draw only, files without accuracies (P1's float64 cannot be rebuilt)."""
    root = tmp_path_factory.mktemp("p1-suppression-runs")
    for seed in SUPPRESSION_SEEDS:
        neuron_fit_run(root, "tiny-roberta", seed, with_accuracy=True)
        neuron_fit_run(root, "tiny-t5", seed, with_accuracy=False)
        for rate in SUPPRESSION_RATES:
            for backbone in BACKBONES:
                p1_suppression_run(root, backbone, seed, rate, "skill")
                p1_suppression_run(root, backbone, seed, rate, "random")
            p1_suppression_run(root, "tiny-roberta", seed, rate, "skill", eval_set="adv_sst2")
            p1_suppression_run(root, "tiny-roberta", seed, rate, "random", draw=1)
    out = tmp_path_factory.mktemp("p1-suppression")
    assert main([str(root), "--out", str(out), "--definitions", "p1-code"]) == 0
    paper = tmp_path_factory.mktemp("paper-suppression")
    assert main([str(root), "--out", str(paper)]) == 0
    return (json.loads((out / "report.json").read_text()), (out / "report.md").read_text(),
            json.loads((paper / "report.json").read_text()))


def p1_curve(tag: str) -> list[tuple[float, float]]:
    """get_perturbation_accuracy_runs: per rate, np.mean and get_sem over the prompts' accuracies (%)."""
    out = []
    for rate in SUPPRESSION_RATES:
        accuracy = np.array([100 * curve_accuracy(tag, s, rate) for s in SUPPRESSION_SEEDS])
        out.append((float(np.mean(accuracy)), float(p1_port.sem(accuracy))))
    return out


def test_p1_suppression_curves_read_the_runs_p1s_adv_nonadv_mode_reads(p1_suppression_report):
    document, markdown, _ = p1_suppression_report
    rows = document["paper_suppression"]["rows"]

    def curve(backbone, name):
        got = sorted((r["rate"], r["mean"], r["sem"]) for r in rows if (r["backbone"], r["curve"]) == (backbone, name))
        return [(m, s) for _, m, s in got]

    # P1's clean curve: clean data with the adversarial set's neurons (runs with suppression.eval_set=adv_sst2)
    assert curve("tiny-roberta", "clean (adv_sst2 neurons)") == p1_curve("eval_adv/validation")
    assert curve("tiny-roberta", "adv_sst2 (clean neurons)") == p1_curve("eval_validation/adv_sst2")
    # random: the clean curve from the first draw, the adversarial one from the second (P1's separate Adv… file)
    assert curve("tiny-roberta", "clean (random)") == p1_curve("random0/validation")
    assert curve("tiny-roberta", "adv_sst2 (random)") == p1_curve("random1/adv_sst2")
    assert {r["suppression_seed"] for r in rows if r["curve"] == "adv_sst2 (random)" and r["backbone"] == "tiny-roberta"} == {1}
    assert all(r["n"] == len(SUPPRESSION_SEEDS) for r in rows)
    # one draw only (tiny-t5): the adversarial random curve shares it, said so; no eval_set runs: not computed
    assert curve("tiny-t5", "adv_sst2 (random)") == p1_curve("random0/adv_sst2")
    assert curve("tiny-t5", "clean (adv_sst2 neurons)") == []
    assert "tiny-roberta · sst2, random control: clean curve `suppression.seed=0`, adversarial curve " \
           "`suppression.seed=1`." in markdown
    assert "tiny-t5 · sst2, random control: clean curve `suppression.seed=0`, adversarial curve `suppression.seed=0` " \
           "— only one random draw" in markdown
    assert "tiny-t5 · sst2: **Not computed:** P1's clean curve" in markdown
    assert "tiny-roberta · sst2: **Not computed" not in markdown
    assert document["paper_suppression"]["clean_curve_computed"] is True


def test_paper_suppression_keeps_the_p1_only_runs_apart(p1_suppression_report):
    rows = p1_suppression_report[2]["paper_suppression"]["rows"]
    roberta = [r for r in rows if r["backbone"] == "tiny-roberta"]
    # the adversarial set's neurons form their own group; the second random draw is left to p1-code
    assert {r["eval_set"] for r in roberta} == {"validation", "adv_sst2"}
    plain = [r for r in roberta if r["eval_set"] == "validation"]
    assert all(r["n"] == len(SUPPRESSION_SEEDS) for r in plain)
    random_clean = sorted((r["rate"], r["mean"]) for r in plain if (r["selection"], r["set"]) == ("random", "validation"))
    assert [m for _, m in random_clean] == pytest.approx([m for m, _ in p1_curve("random0/validation")], abs=1e-9)


def test_p1_code_ranks_by_p1s_float64_predictivity_rebuilt_from_the_accuracies(p1_suppression_report):
    document, markdown, _ = p1_suppression_report
    tensors = accuracy_tensors()
    acc = np.rint(tensors["accuracy"].numpy().astype(np.float64) * N_EXAMPLES) / N_EXAMPLES  # utils.py::valid
    per_seed = np.where(acc > 1 - acc, acc, 1 - acc).max(axis=1)  # find.py::get_max_mean: max over positions
    mean = np.mean(np.array([per_seed] * len(SUPPRESSION_SEEDS)), axis=0)  # ... then the mean over seeds
    stored = tensors["score"].numpy()
    assert stored[0, 0] == stored[0, 1] and mean[0, 0] > mean[0, 1]  # float32 ties what float64 ranks
    expected = p1_port.suppressed(mean, 1)  # one unit per layer: unit 0, P1's float64 winner
    assert sorted(map(tuple, expected.tolist())) == [(0, 0), (1, 0)]
    row = next(u for u in document["paper_suppression"]["units"]
               if (u["backbone"], u["rate"], u["curve"]) == ("tiny-roberta", 1, "adv_sst2 (clean neurons)"))
    assert row["digest_p1"] == hashlib.sha1(repr(sorted((int(a), int(b)) for a, b in expected)).encode()).hexdigest()
    # tiny-t5's files hold no accuracies: their float32 score stands in, named in report.md
    fallbacks = document["p1_differences"]["float32_fallbacks"]
    assert len(fallbacks) == 2 * len(SUPPRESSION_SEEDS) and all("tiny-t5" in path for path in fallbacks)
    assert "could not be rebuilt; their stored float32 score is used" in markdown
