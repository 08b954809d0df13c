"""``skill-neurons predict``: per-example tables of a trained prompt, whose accuracy is ``validate``'s, in the run
folder and in W&B (offline, read back from the run's own files), for masked LMs (``paper``), T5 and causal LMs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from records.wandb_config import job_type, run_name
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, run_cli, summary_of

# Two epochs on 512 rows at a high learning rate: enough for the tiny backbones to predict both classes (measured:
# tiny-roberta val/acc 0.775), so the tables' accuracy is no constant; 40 rows per evaluation set.
SMALL = ["--trainer.max_epochs=2", "--data.max_train_samples=512", "--data.max_eval_samples=40",
         "--data.batch_size=16", "--data.eval_batch_size=16", "--model.learning_rate=0.03", "--trainer.callbacks=[]"]
MARKER = ROOT / "datamodules" / "data" / "marker"


def fit(work: Path, config: str) -> Path:
    """A short quick-start fit (``SMALL``); its run folder."""
    cli_in_process(["fit", "--config", str(ROOT / "configs" / config), *QUICK, *SMALL, "--runs_dir=fits"],
                   cwd=work, check=True)
    return only_run_dir(work / "fits")


def evaluate(work: Path, stage: str, fit_run: Path, folder: str, *extra: str) -> Path:
    """``skill-neurons <stage> --from_run <fit_run>`` into ``work/<folder>``; the new run's folder."""
    cli_in_process([stage, "--from_run", str(fit_run), *QUICK, f"--runs_dir={folder}", *extra], cwd=work, check=True)
    return only_run_dir(work / folder)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def source_rows(name: str) -> dict[int, dict]:
    file = {"validation": "validation.jsonl", "marker_typo": "adversarial.jsonl"}[name]
    return {row: json.loads(line) for row, line in enumerate((MARKER / file).read_text().splitlines())}


def leet(*args: str) -> str:
    """W&B's own reader of an offline run's ``.wandb`` log."""
    wandb = str(Path(sys.executable).parent / "wandb")
    return subprocess.run([wandb, "leet", "inspect", *args], capture_output=True, text=True, timeout=120,
                          check=True).stdout


def check_tables_against_validate(predicted: Path, validated: Path) -> dict:
    """Every promised table: documented columns, source text and labels, probabilities summing to 1, the
    argmax as prediction, and per set the number of correct rows that ``validate`` counted."""
    summary, metrics = summary_of(predicted), summary_of(validated)["validate_metrics"]
    assert summary["stage"] == "predict" and summary["status"] == "finished" and summary["missing"] is None
    classes = ["absent", "present"]
    for name, key in (("validation", "val/acc"), ("marker_typo", "adv/marker_typo/acc")):
        columns, rows = read_table(predicted / "predictions" / f"{name}.csv")
        assert columns == ["set", "row", "sentence", "label", "prediction", "correct", "prob_absent", "prob_present"]
        assert len(rows) == 40
        source = source_rows(name)
        for row in rows:
            probabilities = [float(row[f"prob_{c}"]) for c in classes]
            assert math.fsum(probabilities) == pytest.approx(1.0, abs=1e-6)
            assert row["prediction"] == classes[max(range(2), key=probabilities.__getitem__)]
            original = source[int(row["row"])]
            assert row["set"] == name and row["sentence"] == original["sentence"]
            assert row["label"] == classes[original["label"]]
            assert row["correct"] == str(int(row["label"] == row["prediction"]))
        if name == "validation":
            assert {r["prediction"] for r in rows} == set(classes)  # a trained prompt: no constant prediction
        correct = sum(int(r["correct"]) for r in rows)
        assert correct == round(metrics[key] * 40)  # the same examples right as validate counted
        assert summary["predict_metrics"][f"predict/{name}/acc"] == correct / 40 == pytest.approx(metrics[key])
        assert summary["predictions"]["sets"][name] == {
            "file": f"predictions/{name}.csv", "role": "validation" if name == "validation" else f"adv/{name}",
            "rows": 40, "of_rows": 40, "correct": correct, "accuracy": correct / 40, "wandb_key": f"predictions/{name}"}
    return summary


@pytest.fixture(scope="module")
def roberta(tmp_path_factory, tiny_backbones):
    """The quick-start (tiny RoBERTa, layout paper) fitted briefly, then validated and predicted by --from_run."""
    work = tmp_path_factory.mktemp("predict-roberta")
    fit_run = fit(work, "quickstart.yaml")
    validated = evaluate(work, "validate", fit_run, "validated")
    return work, fit_run, validated, evaluate(work, "predict", fit_run, "predicted")


@pytest.mark.slow
def test_masked_lm_paper_predictions_are_the_validate_accuracy_per_example_table(roberta):
    _, fit_run, validated, predicted = roberta
    summary = check_tables_against_validate(predicted, validated)
    assert summary["settings"]["layout"] == "paper" and summary["settings"]["family"] == "masked_lm"
    assert summary["prompt_source"]["run_id"] == fit_run.name and summary["ckpt_path"].endswith("best.ckpt")
    assert 0.0 < summary["predict_metrics"]["predict/validation/acc"] <= 1.0


@pytest.mark.slow
def test_predictions_go_to_wandb_as_tables_with_the_run_named_and_typed_predict(roberta):
    _, _, _, predicted = roberta
    record = next((predicted / "wandb").glob("offline-run-*"))
    for name in ("validation", "marker_typo"):
        _, rows = read_table(predicted / "predictions" / f"{name}.csv")
        [file] = (record / "files" / "media" / "table" / "predictions").glob(f"{name}_*.table.json")
        table = json.loads(file.read_text())
        assert table["columns"] == ["set", "row", "sentence", "label", "prediction", "correct",
                                    "prob_absent", "prob_present"]
        assert [[str(v) for v in row] for row in table["data"]] == [list(r.values()) for r in rows]
    state = json.loads(leet("--summary", "--json", str(record)))
    assert state["name"] == "tiny-roberta·marker·s33·predict"
    metrics = summary_of(predicted)["predict_metrics"]
    assert state["summary"]["predict/validation/acc"] == metrics["predict/validation/acc"]
    run_record = next(json.loads(line)["run"] for line in leet("--json", str(record)).splitlines()
                      if '"type":"run"' in line)
    assert run_record["job_type"] == "predict"


@pytest.mark.slow
def test_predict_sets_chooses_the_sets_and_their_order(roberta):
    work, fit_run, _, predicted = roberta
    chosen = evaluate(work, "predict", fit_run, "adversarial_only", "--data.predict_sets=[marker_typo]")
    summary = summary_of(chosen)
    assert summary["status"] == "finished" and list(summary["predictions"]["sets"]) == ["marker_typo"]
    assert sorted(p.name for p in (chosen / "predictions").iterdir()) == ["marker_typo.csv"]
    # the same prompt on the same rows: the same table as when every set is predicted
    table = "predictions/marker_typo.csv"
    assert (chosen / table).read_text() == (predicted / table).read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_process_cpu_ddp_predicts_every_row_once_as_one_process_does(roberta):
    """Each rank predicts a shard of every set; rank 0 writes them all, in the source's row order."""
    work, fit_run, _, predicted = roberta
    run_cli(["predict", "--from_run", str(fit_run), *QUICK, "--runs_dir=ddp", "--trainer.strategy=ddp",
             "--trainer.devices=2", "--trainer.accelerator=cpu"], cwd=work, timeout=900)
    ddp = only_run_dir(work / "ddp")
    assert summary_of(ddp)["status"] == "finished" and summary_of(ddp)["settings"]["world_size"] == 2
    assert summary_of(ddp)["predict_metrics"] == summary_of(predicted)["predict_metrics"]
    for name in ("validation", "marker_typo"):
        columns, two = read_table(ddp / "predictions" / f"{name}.csv")
        _, one = read_table(predicted / "predictions" / f"{name}.csv")
        assert len(two) == len(one) == 40
        for a, b in zip(one, two):  # the shards pad their batches differently: probabilities agree to float32 noise
            assert [a[c] for c in columns[:6]] == [b[c] for c in columns[:6]]
            assert [float(a[c]) for c in columns[6:]] == pytest.approx([float(b[c]) for c in columns[6:]], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["quickstart_t5.yaml", "quickstart_gpt2.yaml"])
def test_t5_and_causal_lm_predictions_are_the_validate_accuracy(tmp_path, tiny_backbones, config):
    fit_run = fit(tmp_path, config)
    validated = evaluate(tmp_path, "validate", fit_run, "validated")
    predicted = evaluate(tmp_path, "predict", fit_run, "predicted")
    summary = check_tables_against_validate(predicted, validated)
    family = {"quickstart_t5.yaml": "seq2seq", "quickstart_gpt2.yaml": "causal_lm"}[config]
    assert summary["settings"]["family"] == family


def test_an_unknown_set_is_one_line_before_any_run_folder(tmp_path, tiny_backbones):
    for option, message in (
            ("--data.predict_sets=[validation, adv_sst2]", "data.predict_sets names ['adv_sst2'], but task 'marker' "
                                                           "has the evaluation sets ['validation', 'marker_typo']"),
            ("--data.predict_sets=[test]", "data.predict_sets names ['test']"),  # marker has no test split
            ("--data.predict_sets=[]", "data.predict_sets=[] names no set")):
        proc = cli_in_process(["predict", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, option],
                              cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("skill-neurons: error:")]
        assert len(errors) == 1 and message in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_suppression_is_refused_in_predict(tmp_path, tiny_backbones):
    proc = cli_in_process(["predict", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK,
                           "--suppression.rate=5", "--suppression.neurons=[runs/x]"], cwd=tmp_path)
    assert proc.returncode == 2 and "suppression perturbs evaluation only (validate, test)" in proc.stderr
    assert "not predict" in proc.stderr


def test_predict_runs_are_named_and_typed_predict():
    assert job_type("predict") == "predict" and job_type("predict", None, "sst2", "qnli") == "predict"
    assert run_name("predict", "roberta-base", "sst2", 33) == "roberta-base·sst2·s33·predict"
    assert run_name("predict", "roberta-base", "qnli", 33, source_task="sst2") == "roberta-base·sst2·s33→qnli·predict"


def test_predict_sets_load_only_the_chosen_sets_with_their_text(tiny_backbones):
    from datamodules import PromptDataModule
    from tests.helpers.tiny import MARKER as TINY_MARKER
    from tests.helpers.tiny import marker_task

    task = marker_task()
    task["splits"]["test"] = {**task["splits"]["validation"], "file": str(TINY_MARKER / "validation.jsonl")}
    dm = PromptDataModule(task=task, backbone="tiny-roberta", prompt_length=4, max_eval_samples=7,
                          predict_sets=["typos", "test"])
    assert [s.split for s in dm.eval_sets("predict")] == ["adv/typos", "test"]
    assert [s.split for s in dm.eval_sets("validate")] == ["validation", "adv/typos"]
    dm.load("predict")
    assert list(dm.datasets) == ["adv/typos", "test"]  # nothing else is read
    assert [len(loader.dataset) for loader in dm.predict_dataloader()] == [7, 7]
    typos = [json.loads(line) for line in (TINY_MARKER / "adversarial.jsonl").read_text().splitlines()[:7]]
    assert list(dm.source_rows["adv/typos"]["sentence"]) == [row["sentence"] for row in typos]
    assert list(dm.source_rows["adv/typos"]["idx"]) == list(dm.datasets["adv/typos"]["idx"]) == list(range(7))
    assert [s.split for s in PromptDataModule(task=task, backbone="tiny-roberta").eval_sets("predict")] == [
        "validation", "adv/typos"]


def test_rows_follow_the_source_order_once_each_and_an_extra_word_is_a_wrong_prediction():
    import datasets
    import torch

    from callbacks.predictions import prediction_rows

    rows = datasets.Dataset.from_dict({"premise": ["p0", "p3", "p7"], "hypothesis": ["h0", "h3", "h7"],
                                       "label": [0, 1, 0], "idx": [0, 3, 7]})
    classes = ["entailment", "contradiction", "extra:yes"]
    # outputs of two shards in another order, row 3 twice (a padded shard)
    outputs = {"idx": torch.tensor([7, 3, 0, 3]), "label": torch.tensor([0, 1, 0, 1]),
               "prediction": torch.tensor([2, 1, 0, 1]),
               "probabilities": torch.tensor([[0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.5, 0.25, 0.25], [0.3, 0.6, 0.1]])}
    table = prediction_rows("mnli_m", rows, ["premise", "hypothesis"], classes, outputs)
    assert [r[:7] for r in table] == [["mnli_m", 0, "p0", "h0", "entailment", "entailment", 1],
                                      ["mnli_m", 3, "p3", "h3", "contradiction", "contradiction", 1],
                                      ["mnli_m", 7, "p7", "h7", "entailment", "extra:yes", 0]]
    assert table[2][7:] == pytest.approx([0.1, 0.2, 0.7])


def test_scored_classes_are_the_labels_then_the_layouts_extra_words(tiny_backbones):
    from datamodules import PromptDataModule

    paper = PromptDataModule(task="mnli", backbone="tiny-roberta", layout="paper")
    assert paper.scored_classes() == ["entailment", "contradiction", "extra:yes"] and len(paper.label_token_ids) == 3
    assert PromptDataModule(task="mnli", backbone="tiny-t5", layout="standard").scored_classes() == \
        ["entailment", "contradiction"]
