"""The report's sections on the continuous neuron metrics (skill_neurons/report/neuron_metrics.py): LAPE selectivity,
skill-neuron overlap vs prompt transfer, and the metrics' agreement with P1's predictivity.

References: plain loops over units and tasks, set intersections for the overlap, and scipy's Spearman ρ."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from callbacks.skill_neurons import load_neuron_file
from skill_neurons.report.main import main
from skill_neurons.report.neuron_metrics import METRICS, lape_entropy, overlap_transfer_pairs
from tests import test_report as synthetic


def test_lape_entropy_equals_a_loop_over_units():
    p = np.array([[[0.9, 0.0, 0.2, 0.0], [0.5, 0.3, 0.0, 0.1]],  # task 0 (L=2, N=4)
                  [[0.0, 0.0, 0.2, 0.4], [0.5, 0.1, 0.0, 0.1]],  # task 1
                  [[0.0, 0.0, 0.2, 0.4], [0.5, 0.6, 0.0, 0.0]]])  # task 2
    entropy, defined = lape_entropy(list(p))
    for layer in range(2):
        for unit in range(4):
            column = p[:, layer, unit]
            if column.sum() == 0:
                assert not defined[layer, unit]
                continue
            q = [v / column.sum() for v in column]
            want = -sum(v * math.log(v) for v in q if v > 0)
            assert entropy[layer, unit] == pytest.approx(want, abs=1e-12)
    assert entropy[0, 0] == 0  # active in one task only
    assert entropy[0, 2] == pytest.approx(math.log(3))  # equally active in all three
    assert not defined[0, 1] and not defined[1, 2]


def test_overlap_transfer_pairs_use_each_layers_top_set_and_skip_the_diagonal_and_unknown_tasks():
    rng = np.random.default_rng(0)
    scores = {task: rng.random((3, 20)) for task in ("a", "b", "c")}
    relative = {("a", "b"): 90.0, ("b", "a"): 70.0, ("a", "a"): 100.0, ("a", "c"): 50.0, ("a", "zz"): 10.0}
    rows = overlap_transfer_pairs(scores, relative, 10, "ceil")
    assert [(r["source"], r["target"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "a")]
    for row in rows:
        k = 2  # ceil(20 · 10 / 100)
        per_layer = []
        for layer in range(3):
            top = [set(np.argsort(-scores[t][layer], kind="stable")[:k]) for t in (row["source"], row["target"])]
            per_layer.append(len(top[0] & top[1]) / k)
        assert row["overlap"] == pytest.approx(np.mean(per_layer), abs=1e-12)
        assert row["relative"] == relative[(row["source"], row["target"])]


@pytest.fixture(scope="module")
def metrics_report(tmp_path_factory) -> tuple[Path, dict]:
    """tiny-roberta, three tasks × two seeds with the continuous metrics, transfer between every pair."""
    root = tmp_path_factory.mktemp("metric-runs")
    patch = pytest.MonkeyPatch()
    patch.setitem(synthetic.TASKS, "mrpc", ("paraphrase", "adv_mrpc"))
    try:
        for task in ("sst2", "qnli", "mrpc"):
            for seed in synthetic.SEEDS:
                synthetic.fit_run(root, "tiny-roberta", task, seed)
                for target in ("sst2", "qnli", "mrpc"):
                    synthetic.transfer_run(root, "tiny-roberta", task, target, seed)
        record_agreement(root, "sst2", 33, offset=0.0)  # as the callback records it
        record_agreement(root, "qnli", 34, offset=0.01)  # a summary that disagrees with its neuron file
        out = tmp_path_factory.mktemp("metric-report")
        assert main([str(root / "runs"), "--out", str(out), "--percent", "10"]) == 0
    finally:
        patch.undo()
    return root, json.loads((out / "report.json").read_text())


def record_agreement(root: Path, task: str, seed: int, offset: float) -> None:
    """Write ``agreement_<metric>`` into a fit run's summary.json: scipy's per-layer ρ, averaged, plus ``offset``."""
    run = root / "runs" / f"fit-tiny-roberta-{task}-{seed}"
    tensors = load_neuron_file(run / "skill_neurons" / "validation.safetensors")[0]
    summary = json.loads((run / "summary.json").read_text())
    for metric in METRICS:
        rho = np.mean([stats.spearmanr(tensors["score"][l], tensors[f"{metric}_score"][l]).statistic
                       for l in range(synthetic.L)])
        summary["skill_neurons"]["sets"]["validation"][f"agreement_{metric}"] = float(rho) + offset
    (run / "summary.json").write_text(json.dumps(summary))


def test_agreement_recorded_in_summary_json_is_checked(metrics_report):
    _, report = metrics_report
    mismatches = report["metric_agreement"]["mismatches"]
    assert len(mismatches) == len(METRICS) and all("fit-tiny-roberta-qnli-34" in m for m in mismatches)


def files_of(root: Path, task: str) -> list[dict]:
    return [load_neuron_file(root / "runs" / f"fit-tiny-roberta-{task}-{seed}" / "skill_neurons" /
                             "validation.safetensors")[0] for seed in synthetic.SEEDS]


def test_agreement_section_is_the_per_layer_spearman_of_each_run_averaged(metrics_report):
    root, report = metrics_report
    rows = report["metric_agreement"]["tables"]["metric_agreement"]
    assert {(r["task"], r["metric"]) for r in rows} == {(t, m) for t in ("sst2", "qnli", "mrpc") for m in METRICS}
    for row in rows:
        files = files_of(root, row["task"])
        want = np.mean([[stats.spearmanr(f["score"][l], f[f"{row['metric']}_score"][l]).statistic
                         for l in range(synthetic.L)] for f in files], axis=0)
        np.testing.assert_allclose(row["rho_per_layer"], want, atol=1e-12)


def test_selectivity_section_is_the_entropy_of_the_seed_mean_activation_probabilities(metrics_report):
    root, report = metrics_report
    (row,) = report["selectivity"]["tables"]["selectivity"]
    assert row["K"] == 3 and row["ln_K"] == pytest.approx(math.log(3))
    p = {t: np.mean([f["activation_probability"].double().numpy() for f in files_of(root, t)], axis=0)
         for t in ("sst2", "qnli", "mrpc")}
    values = []
    for layer in range(synthetic.L):
        for unit in range(synthetic.N):
            column = [p[t][layer, unit] for t in p]
            q = [v / sum(column) for v in column]
            values.append(-sum(v * math.log(v) for v in q if v > 0))
    assert row["mean_entropy"] == pytest.approx(np.mean(values), abs=1e-9)


def test_overlap_transfer_section_pairs_every_task_pair_with_its_relative_transfer(metrics_report):
    root, report = metrics_report
    table = report["overlap_transfer"]["tables"]["overlap_transfer"]
    assert len(table) == 6  # 3 · 2 ordered pairs, the diagonal left out
    summaries = {s["run_id"]: s for s in synthetic.summaries(root)}
    pairs = []
    for entry in table:
        pair = entry["pair"]
        relative = np.mean([100 * summaries[f"transfer-tiny-roberta-{pair['source']}-{pair['target']}-{seed}"]
                            ["transfer"]["accuracy"] / summaries[f"fit-tiny-roberta-{pair['target']}-{seed}"]["best"]
                            ["val/acc"] for seed in synthetic.SEEDS])
        assert pair["relative"] == pytest.approx(relative, abs=1e-9)
        score = {t: np.mean([f["score"].double().numpy() for f in files_of(root, t)], axis=0)
                 for t in (pair["source"], pair["target"])}
        k = math.ceil(synthetic.N * 10 / 100)
        overlap = np.mean([len(set(np.argsort(-score[pair["source"]][l], kind="stable")[:k]) &
                               set(np.argsort(-score[pair["target"]][l], kind="stable")[:k])) / k
                           for l in range(synthetic.L)])
        assert pair["overlap"] == pytest.approx(overlap, abs=1e-12)
        pairs.append((overlap, relative))
    rho = stats.spearmanr(*zip(*pairs)).statistic
    assert table[0]["rho"] == pytest.approx(rho, abs=1e-12) and table[0]["n"] == 6
