"""The W&B dashboard and the terminal as users meet them (issue 16): sweep files, run names and job types, the
W&B config and summary read back with W&B's own reader, progress of the analysis passes, a quiet quick-start,
--help, interpolated configs, figure sizes, Spearman against brute force."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import warnings
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from records.settings import artifact_name
from records.wandb_config import PER_RUN_KEYS, clean_config, job_type, run_name
from tests.helpers import ROOT, leet, only_run_dir, run_cli

# The exact lines item 8 of the issue lists; none may appear in a normal run's output.
NOISE = {
    "litlogger tip": "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "anonymous": "wandb: WARNING The anonymous setting has no effect and will be removed in a future version.",
    "git root": "wandb: WARNING git root ",
    "LeafSpec": "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                "treespec.is_leaf()` instead.",
    "LightningCLI args": "To prevent mistakes it is not recommended to provide both args and command line arguments",
}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (no imaging library needed)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


# ------------------------------------------------------------------------------------- sweep files
def test_every_sweep_file_names_the_project_also_those_make_configs_writes():
    sys.path.insert(0, str(ROOT / "configs"))
    try:
        import make_configs
    finally:
        sys.path.pop(0)
    shipped = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert len(shipped) == 8  # attack, evaluate_attacks, paper_grid, quickstart, search, suppression, tiny_pipeline,
    # transfer
    for path in shipped:
        config = yaml.safe_load(path.read_text())
        assert config["project"] == "skill-neurons", path
        assert config["name"] == path.stem, path
    generated = {**make_configs.experiment_sweeps("runs"), "paper_grid": make_configs.paper_grid(),
                 **make_configs.attack_sweeps("runs", "attacks")}
    for name, text in generated.items():
        assert yaml.safe_load(text)["project"] == "skill-neurons", name
        assert text == (ROOT / "sweeps" / f"{name}.yaml").read_text(), f"sweeps/{name}.yaml differs from make_configs"


def test_make_configs_p1_code_writes_the_suppression_runs_of_p1s_curves(tmp_path):
    import inspect

    from callbacks.suppression import NeuronSuppression

    sys.path.insert(0, str(ROOT / "configs"))
    try:
        import make_configs
    finally:
        sys.path.pop(0)
    plain = make_configs.write_experiment_sweeps("grid/runs", tmp_path / "plain")
    assert sorted(p.name for p in plain) == ["suppression.yaml", "transfer.yaml"]
    written = make_configs.write_experiment_sweeps("grid/runs", tmp_path / "p1", p1_code=True)
    names = sorted(p.name for p in written)
    # P1's tasks with adversarial sets (datamodules/tasks.py), each a sweep of its own: eval_set depends on the task
    assert names == ["suppression.yaml", "suppression_p1_mnli.yaml", "suppression_p1_qnli.yaml",
                     "suppression_p1_qqp.yaml", "suppression_p1_random.yaml", "suppression_p1_sst2.yaml", "transfer.yaml"]
    options = set(inspect.signature(NeuronSuppression).parameters)
    for path in written:
        config = yaml.safe_load(path.read_text())
        assert config["project"] == "skill-neurons" and config["name"] == path.stem
        assert {k.split(".", 1)[1] for k in config["parameters"] if k.startswith("suppression.")} <= options
        if not path.stem.startswith("suppression_p1"):
            # the same sweep; its header's make_configs command names the option that wrote it
            assert f"--out {tmp_path / 'p1'} --p1_code`)" in path.read_text().splitlines()[0]
            assert path.read_text().replace(" --p1_code`", "`").replace(str(tmp_path / "p1"), "OUT") == \
                (tmp_path / "plain" / path.name).read_text().replace(str(tmp_path / "plain"), "OUT")
            continue
        parameters = {k: v["values"] for k, v in config["parameters"].items()}
        assert parameters["suppression.rate"] == make_configs.RATES
        assert (parameters["suppression.neuron_source"], parameters["suppression.adversarial_neurons"],
                parameters["suppression.perturbation"]) == (["seed_mean"], ["clean"], ["zero"])
        if path.stem == "suppression_p1_random":
            # a second draw beside suppression.yaml's (default seed 0), over every suppressed task's prompts
            assert parameters["suppression.selection"] == ["random"] and parameters["suppression.seed"] == [1]
            assert len(parameters["from_run"]) == 2 * len(make_configs.PAPER_TASKS) * 5
        else:
            task = path.stem.removeprefix("suppression_p1_")
            assert parameters["suppression.selection"] == ["skill"]
            assert parameters["suppression.eval_set"] == {"mnli": ["adv_mnli", "adv_mnli_mm"]}.get(task, [f"adv_{task}"])
            assert len(parameters["from_run"]) == 2 * 5 and all(f"task={task}&" in r for r in parameters["from_run"])
    tiny = make_configs.write_experiment_sweeps("tiny/fit/runs", tmp_path / "tiny", make_configs.TINY, p1_code=True)
    marker = yaml.safe_load((tmp_path / "tiny" / "suppression_p1_marker.yaml").read_text())
    assert marker["parameters"]["suppression.eval_set"]["values"] == ["marker_typo"] and len(tiny) == 4


def test_sweep_group_grid_size_and_progress_line():
    from skill_neurons.sweep.display import eta_seconds, planned_trials, progress, sweep_group

    config = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    assert sweep_group(config, "sweeps/quickstart.yaml") == "quickstart"
    assert sweep_group({}, "sweeps/search.yaml") == "search"
    assert planned_trials(config, None) == 4 and planned_trials(config, 3) == 3
    assert planned_trials({"method": "bayes", "parameters": {}}, None) is None
    assert progress(1, 4, 5.0, [], workers=1) == "trial 1 of 4 · 5s elapsed"  # no estimate before a trial ended
    # two trials of 60 s and 120 s ended, 2 left, 2 workers: one more round of the mean duration (90 s)
    assert eta_seconds(4, [60.0, 120.0], workers=2) == 90.0
    assert progress(3, 4, 185.0, [60.0, 120.0], workers=2) == "trial 3 of 4 · 3m05s elapsed · about 1m30s left"
    assert progress(5, None, 3725.0, [10.0], workers=1) == "trial 5 · 1h02m elapsed"


# -------------------------------------------------------------------------------- names and config
def test_run_names_and_job_types_say_what_a_run_did():
    assert run_name("fit", "roberta-base", "sst2", 33) == "roberta-base·sst2·s33"
    assert run_name("validate", "roberta-base", "sst2", 33) == "roberta-base·sst2·s33·validate"
    assert run_name("validate", "google/flan-t5-base", "sst2", 34,
                    suppression={"rate": 5, "selection": "skill", "perturbation": "zero"}) == \
        "flan-t5-base·sst2·s34·supp-skill-5%"
    assert run_name("validate", "t5-base", "sst2", 35, suppression={"rate": 1.5, "selection": "random",
                                                                    "perturbation": "noise"}) == \
        "t5-base·sst2·s35·supp-random-1.5%-noise"
    assert run_name("validate", "roberta-base", "qnli", 33, source_task="sst2") == "roberta-base·sst2·s33→qnli"
    assert [job_type("fit"), job_type("validate"), job_type("test"), job_type("validate", 5.0),
            job_type("validate", None, "sst2", "qnli"), job_type("test", None, "sst2", "sst2")] == \
        ["fit", "validate", "test", "suppression", "transfer", "test"]
    assert artifact_name("google/flan-t5-base", "sst2", "paper") == "skill-neurons-flan-t5-base-sst2-paper"
    assert artifact_name("roberta-base", "my task", None, "validate") == \
        "skill-neurons-roberta-base-my_task-standard-validate"


def test_wandb_config_has_no_nulls_no_per_run_paths_and_callbacks_as_keys():
    flat = {"model.learning_rate": 0.01, "data.files": None, "trainer.default_root_dir": "runs/ab",
            "checkpoint.dirpath": "runs/ab/checkpoints", "summary.run_dir": "runs/ab", "trainer.logger.id": "ab",
            "data.task": {"name": "mine", "fields": None},
            "trainer.callbacks": [{"class_path": "callbacks.skill_neurons.SkillNeuronCallback",
                                   "init_args": {"part": "encoder", "max_threshold_samples": None,
                                                 "top_percents": [1, 5]}},
                                  {"class_path": "callbacks.skill_neurons.SkillNeuronCallback"}]}
    assert clean_config(flat) == {
        "model.learning_rate": 0.01, "data.task": {"name": "mine"},
        "trainer.callbacks.SkillNeuronCallback.class_path": "callbacks.skill_neurons.SkillNeuronCallback",
        "trainer.callbacks.SkillNeuronCallback.part": "encoder",
        "trainer.callbacks.SkillNeuronCallback.top_percents": [1, 5],
        "trainer.callbacks.SkillNeuronCallback[1].class_path": "callbacks.skill_neurons.SkillNeuronCallback"}


# ---------------------------------------------------------------------------- --help, omegaconf
def test_help_lists_the_other_commands_and_from_run(capsys):
    from skill_neurons.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "sweep", "report", "import-prompt", "analyse", "wandb-view",
                    "--from_run"):
        assert command in out, command
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "--from_run RUN evaluates the best prompt of fit run RUN" in capsys.readouterr().out


def test_an_interpolated_config_resolves_keys_of_other_files_and_the_command_line(tmp_path, capsys):
    from skill_neurons.cli import main

    extra = tmp_path / "group.yaml"
    extra.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.WandbLogger\n    init_args:\n"
                     "      project: skill-neurons\n      group: ${data.task}-p${model.init_args.prompt_length}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--config", str(extra),
              "--data.task=sst2_sample", "--model.prompt_length=5", "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["init_args"]["group"] == "sst2_sample-p5"


# ------------------------------------------------------------------ progress, duplicate callback
@pytest.mark.parametrize("case", ["forced", "forced into Lightning's rich bar", "no terminal"])
def test_analysis_progress_shows_when_forced_and_not_when_stderr_is_no_terminal(case, tmp_path, monkeypatch,
                                                                                 capfd, tiny_backbones):
    from callbacks.skill_neurons import SkillNeuronCallback
    from tests.helpers.tiny import make, validate

    model, dm = make("masked_lm")
    if case == "no terminal":
        monkeypatch.delenv("SKILL_NEURONS_PROGRESS", raising=False)
        assert not sys.stderr.isatty()
    else:
        monkeypatch.setenv("SKILL_NEURONS_PROGRESS", "1")  # even with stderr a pipe
    # Lightning's bar is rich here (rich is installed): on screen, it takes the analysis' passes as its tasks
    validate(model, dm, tmp_path, SkillNeuronCallback(), enable_progress_bar=case != "forced")
    out, err = capfd.readouterr()
    lines = ["Skill neurons: thresholds (train)", "Skill neurons: predictivity (validation)",
             "Skill neurons: predictivity (typos)"]
    if case == "forced":
        for line in lines:  # each pass ends at 3 of 3 batches: 48 train rows, 37 rows per set, 16 a batch
            assert f"{line}: 100%|██████████| 3/3 [" in err, line
    elif case == "no terminal":
        assert "Skill neurons:" not in out + err
    else:
        for line in lines:
            assert line in out + err and "3/3" in out + err, line


def test_a_second_skill_neuron_callback_warns_once_and_does_not_analyse_again(tmp_path, tiny_backbones):
    from callbacks.skill_neurons import SkillNeuronCallback
    from tests.helpers.tiny import make, validate

    model, dm = make("masked_lm")
    first, second = SkillNeuronCallback(), SkillNeuronCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate(model, dm, tmp_path, first, callbacks=[first, second])
    said = [w for w in caught if "SkillNeuronCallbacks: only the first one runs" in str(w.message)]
    assert len(said) == 1
    assert set(first.results) == {"validation", "adv/typos"} and second.results == {}


# -------------------------------------------------------------------------------------- Spearman
def brute_ranks(values: list[float]) -> list[float]:
    """Rank of each value: 1 + how many are smaller + half of the others equal to it (average rank of a tie)."""
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def brute_spearman(a: list[float], b: list[float]) -> float:
    """Pearson correlation of the brute-force ranks, with plain sums."""
    ra, rb = brute_ranks(a), brute_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def test_spearman_equals_a_brute_force_rank_correlation_with_ties_and_constants():
    from tests.helpers.statistics import spearman
    from skill_neurons.report.analyses import spearman_rho

    rng = np.random.default_rng(0)
    for n, levels in product((2, 7, 40), (3, 1000)):
        a = rng.integers(0, levels, n).astype(float)
        b = a + rng.integers(0, 3, n)
        if len(set(a)) < 2 or len(set(b)) < 2:
            continue
        expected = brute_spearman(list(a), list(b))
        assert spearman_rho(a, b) == pytest.approx(expected, abs=1e-12)
        assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(spearman_rho(np.ones(5), np.arange(5.0))) and math.isnan(spearman_rho(np.ones(1), np.ones(1)))
    with pytest.raises(ValueError, match="constant"):
        spearman(torch.ones(4), torch.arange(4.0))


# -------------------------------------------------------------------------------------- figures
def test_run_figure_size_rule_and_colours_are_one_scheme():
    from records import figures as style

    assert style.run_figure_size(2, 2) == (600, 400)  # the quick-start (2 layers, clean + 1 adversarial)
    assert style.run_figure_size(12, 2) == (1440, 400)  # roberta-base
    assert style.set_colours(["validation", "adv_mnli", "adv_mnli_mm"], "validation") == \
        [style.CLEAN, style.ADVERSARIAL[0], style.ADVERSARIAL[1]]
    assert style.CLEAN == "#0072B2" and style.ADVERSARIAL[0] == "#D55E00"  # Okabe-Ito blue / vermillion


# ------------------------------------------------------------------------ the saved W&B view
def test_wandb_view_panels_name_metrics_and_build_a_report():
    from skill_neurons.wandb_view import adversarial_sets, panels

    assert {"adv_sst2", "adv_qqp", "adv_qnli", "adv_mnli", "marker_typo"} <= set(adversarial_sets())
    grids = panels(["marker_typo"])
    assert set(grids) == {"fit", "suppression", "transfer"}
    metrics = {m for grid in grids.values() for panel in grid for m in panel["metrics"]}
    assert {"best/val/acc", "best/adv/marker_typo/acc", "skill_neurons/marker_typo/overlap@5"} <= metrics
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from skill_neurons.wandb_view import build_report

    report = build_report("someone", sets=["marker_typo"])  # built offline; saving it needs a W&B login
    grids_built = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert [len(g.panels) for g in grids_built] == [len(v) for v in grids.values()]


# --------------------------------------------------------------------- a real quick-start, once
@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, tiny_backbones):
    """One short quick-start through the real CLI, in a git repository with a remote (W&B inspects it), with
    warnings and W&B's messages not silenced (the test session silences both)."""
    work = tmp_path_factory.mktemp("quickstart")
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "remote", "add", "origin", "https://example.com/x.git"], check=True)
    proc = run_cli(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.max_epochs=2",
                    "--data.max_train_samples=256", "--data.max_eval_samples=120"], cwd=work,
                   env={"WANDB_MODE": "", "WANDB_SILENT": "false", "PYTHONWARNINGS": "default"})
    return work, proc, only_run_dir(work / "runs")


@pytest.mark.slow
def test_a_quickstart_prints_none_of_the_known_noise(quickstart):
    _, proc, _ = quickstart
    output = proc.stdout + proc.stderr
    # controls: W&B's own lines and Lightning's warnings do reach this output
    assert "wandb: Run data is saved locally in" in output  # W&B runs quiet: its start says where, no more
    assert "is smaller than the logging interval" in output
    for what, line in NOISE.items():
        assert line not in output, what
    assert "Skill neurons:" not in output  # the analysis' progress bar: stderr is a pipe here


@pytest.mark.slow
def test_the_offline_wandb_record_has_name_job_type_clean_config_and_both_val_acc(quickstart):
    _, _, run = quickstart
    record = next((run / "wandb").glob("offline-run-*"))
    state = json.loads(leet("--summary", "--json", str(record)))
    config, summary = state["config"], state["summary"]
    assert state["name"] == "tiny-roberta·marker·s33"
    run_record = next(json.loads(line)["run"] for line in leet("--json", str(record)).splitlines()
                      if '"type":"run"' in line)
    assert run_record["job_type"] == "fit"
    assert not [k for k, v in config.items() if v is None]
    assert not PER_RUN_KEYS & set(config) and not [v for v in config.values() if str(run) in str(v)]
    assert config["trainer.callbacks.SkillNeuronCallback.part"] == "encoder"
    assert config["model.learning_rate"] == 0.01 and config["data.task"] == "marker" and "run.task" not in config
    assert set(summary["val/acc"]) == {"max", "last"}
    history = [json.loads(line)["history"]["item"] for line in leet("--json", str(record)).splitlines()
               if '"type":"history"' in line]
    with_val = [h for h in history if "val/acc" in h]
    assert summary["val/acc"]["last"] == with_val[-1]["val/acc"]
    assert summary["val/acc"]["max"] == max(h["val/acc"] for h in with_val)
    best = next(h for h in with_val if h["epoch"] == summary["best/epoch"])
    assert summary["best/step"] == best["trainer/global_step"]  # the chart's step of the best epoch
    assert {"train/loss_step", "train/loss_epoch"} <= {k for h in history for k in h}  # as the README lists
    # the neuron files are a version of the configuration's artifact
    assert b"skill-neurons-tiny-roberta-marker-paper" in next(record.glob("*.wandb")).read_bytes()


@pytest.mark.slow
def test_the_run_figure_has_the_documented_size(quickstart):
    from records.figures import run_figure_size

    _, _, run = quickstart
    assert png_size(run / "skill_neurons" / "per_layer_predictivity.png") == run_figure_size(2, 2) == (600, 400)


@pytest.mark.slow
def test_a_transfer_evaluation_of_the_quickstart_prompt_is_named_and_typed_as_such(quickstart):
    work, _, fit = quickstart
    assert yaml.safe_load((fit / "config.yaml").read_text())["trainer"]["logger"]["init_args"].get("name") is None
    proc = run_cli(["validate", "--from_run", str(fit), "--data.task=sst2_sample", "--data.max_eval_samples=64"],
                   cwd=work, env={"WANDB_MODE": "", "WANDB_SILENT": "false", "PYTHONWARNINGS": "default"})
    for what, line in NOISE.items():  # --from_run once added LightningCLI's args warning
        assert line not in proc.stdout + proc.stderr, what
    run = next(d for d in (work / "runs").iterdir() if d.is_dir() and d != fit)
    record = next((run / "wandb").glob("offline-run-*"))
    run_record = next(json.loads(line)["run"] for line in leet("--json", str(record)).splitlines()
                      if '"type":"run"' in line)
    assert run_record["display_name"] == "tiny-roberta·marker·s33→sst2_sample"
    assert run_record["job_type"] == "transfer"
