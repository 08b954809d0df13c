"""``records.eval_set``: one name per evaluation set, every spelling of it exactly as runs have always written
it (old runs must still be read), and the readers that turn a metric key or a summary section back into a set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from records.eval_set import EvalSet, Metric, parse_metric, parse_neuron_metric
from records.summary import summary_from_wandb

CLEAN_VAL, CLEAN_TEST, ADV = EvalSet("validation"), EvalSet("test"), EvalSet("adv_sst2")


def test_clean_and_adversarial_sets_have_todays_names():
    assert (CLEAN_VAL.role, CLEAN_VAL.adversarial, CLEAN_VAL.split, CLEAN_VAL.file_stem) == (
        "clean", False, "validation", "validation")
    assert (CLEAN_TEST.role, CLEAN_TEST.split, CLEAN_TEST.file_stem) == ("clean", "test", "test")
    assert (ADV.role, ADV.adversarial, ADV.split, ADV.file_stem) == ("adversarial", True, "adv/adv_sst2", "adv_sst2")
    assert CLEAN_VAL.display == "clean (validation)" and CLEAN_TEST.display == "clean (test)"
    assert ADV.display == "adversarial: adv_sst2"


def test_metric_prefixes_are_the_ones_logged_today():
    assert CLEAN_VAL.metric("val", "acc") == "val/acc" and CLEAN_VAL.metric("val", "loss") == "val/loss"
    assert CLEAN_TEST.metric("test", "acc") == "test/acc"
    assert ADV.metric("val", "acc") == "adv/adv_sst2/acc"
    assert ADV.metric("test", "loss") == "test/adv/adv_sst2/loss"
    assert ADV.metric("predict", "acc") == "predict/adv_sst2/acc"
    assert CLEAN_VAL.metric("predict", "acc") == "predict/validation/acc"
    assert ADV.neuron_metric("overlap@5") == "skill_neurons/adv_sst2/overlap@5"
    assert CLEAN_VAL.neuron_prefix == "skill_neurons/validation"


def test_a_clean_set_has_no_prefix_under_the_other_stage():
    with pytest.raises(ValueError, match="not evaluated"):
        CLEAN_VAL.metric_prefix("test")
    with pytest.raises(ValueError, match="not evaluated"):
        CLEAN_TEST.metric_prefix("val")
    with pytest.raises(ValueError, match="use val, test or predict"):
        ADV.metric_prefix("validate")


# every (set, stage) a run logs: a clean set only under its own stage (see the test above) and predict
ADVERSARIAL = (ADV, EvalSet("marker-typo.v2"), EvalSet("x_test"))
LOGGED = [(CLEAN_VAL, "val"), (CLEAN_TEST, "test"), (CLEAN_VAL, "predict"), (CLEAN_TEST, "predict"),
          *((s, stage) for s in ADVERSARIAL for stage in ("val", "test", "predict"))]


@pytest.mark.parametrize(("eval_set", "stage"), LOGGED)
@pytest.mark.parametrize("metric", ["acc", "loss", "acc_best"])
def test_set_to_metric_key_to_set(eval_set, stage, metric):
    key = eval_set.metric(stage, metric)
    assert parse_metric(key) == Metric(eval_set, stage, metric)
    assert parse_neuron_metric(eval_set.neuron_metric(metric)) == Metric(eval_set, None, metric)


def test_set_to_split_or_name_to_set():
    for eval_set in (CLEAN_VAL, CLEAN_TEST, ADV, EvalSet("marker-typo.v2")):
        assert EvalSet.of(eval_set.split) == EvalSet.of(eval_set.name) == eval_set
    assert EvalSet.clean("test") == CLEAN_TEST
    assert EvalSet.clean("fit") == EvalSet.clean("validate") == EvalSet.clean(None) == CLEAN_VAL


def test_names_that_are_no_evaluation_metric_read_as_none():
    for key in ("train/loss_step", "train/acc", "trainer/global_step", "epoch", "skill_neurons/validation/top5_mean",
                "transfer/relative", "val", "adv/x"):
        assert parse_metric(key) is None, key
    for key in ("skill_neurons/top_neurons", "skill_neurons/per_layer_predictivity", "val/acc",
                "skill_neurons/a/b/c"):
        assert parse_neuron_metric(key) is None, key


def test_summary_sections_name_their_set():
    assert EvalSet.from_section("adv_sst2", {"split": "adv/adv_sst2", "examples": 3}) == ADV
    assert EvalSet.from_section("validation", {"split": "validation"}) == CLEAN_VAL
    assert EvalSet.from_section("typos", {}) == EvalSet("typos")  # a section written without its split
    assert EvalSet.from_section("typos", {"role": "adv/typos"}).adversarial  # predictions record the role
    assert EvalSet.from_section("test", None) == CLEAN_TEST


def test_sets_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ADV.name = "other"  # type: ignore[misc]
    assert len({EvalSet("adv_sst2"), ADV, EvalSet.of("adv/adv_sst2")}) == 1


def test_report_reads_accuracies_per_set_from_old_metric_names():
    from skill_neurons.report.base import Run, fit_accuracies, test_accuracies, validate_accuracies

    run = Run({"best": {"epoch": 3, "val/acc": 0.9, "val/loss": 0.2, "adv/adv_sst2/acc": 0.5, "adv/b.c-d/acc": 0.4,
                        "adv/none/acc": None},
               "test_metrics": {"test/acc": 0.8, "test/adv/adv_sst2/acc": 0.3, "test/adv/adv_sst2/loss": 1.0},
               "validate_metrics": {"adv/adv_sst2/acc": 0.6, "val/acc": 0.7}}, Path("."), "summary.json")
    assert fit_accuracies(run) == {"validation": 0.9, "adv_sst2": 0.5, "b.c-d": 0.4}
    assert test_accuracies(run) == {"test": 0.8, "adv_sst2": 0.3}
    assert list(validate_accuracies(run)) == ["validation", "adv_sst2"]  # the clean set first


def test_summary_from_wandb_names_each_skill_neuron_set_by_its_split():
    metrics = {"val/acc": 0.7, "adv/adv_sst2/acc": 0.5, "skill_neurons/validation/top5_mean": 0.8,
               "skill_neurons/adv_sst2/overlap@5": 0.3, "skill_neurons/adv_sst2/top5_mean": 0.6,
               "skill_neurons/top_neurons": 1}
    summary = summary_from_wandb("r1", "finished", {}, metrics)
    assert summary["skill_neurons"]["sets"] == {
        "validation": {"top5_mean": 0.8, "split": "validation"},
        "adv_sst2": {"overlap@5": 0.3, "top5_mean": 0.6, "split": "adv/adv_sst2"}}
    test = summary_from_wandb("r2", "finished", {}, {"test/acc": 0.7, "skill_neurons/test/top5_mean": 0.8})
    assert test["stage"] == "test" and test["skill_neurons"]["sets"]["test"]["split"] == "test"


def test_wandb_view_names_only_metrics_that_read_back_to_its_sets():
    from skill_neurons.wandb_view import panels

    sets = set()
    for panel in panels(["marker_typo"])["fit"]:
        for key in panel["metrics"]:
            metric = parse_metric(key.removeprefix("best/")) or parse_neuron_metric(key)
            assert metric is not None, key
            sets.add(metric.eval_set)
    assert sets == {CLEAN_VAL, EvalSet("marker_typo")}
