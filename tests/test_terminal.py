"""What a user reads and compares (issue 20, items 10, 11, 14, 15): the terminal output of a quick-start, its
evaluation and its analysis; smoke runs (``--trainer.fast_dev_run``); the file mode of every run file; the W&B
config, tags and the report run's record."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from callbacks.model_summary import summary_text
from records.wandb_config import REPORT_NAME, applies, run_config, run_tags
from skill_neurons.console import metrics_table, where_line
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, subprocess_env, summary_of, wandb_state

TINY = ["--trainer.max_epochs=1", "--data.max_train_samples=64", "--data.max_eval_samples=40"]
# What item 10 of the issue saw after the project's own last line, or in its place; none may be printed.
NOISE = {
    "dirpath warning": "The dirpath has changed",
    "best outside fit": "val/acc_best",
    "unsynchronised epoch loss": "sync_dist",
    "W&B footer": "wandb: Run history",
    "W&B summary": "wandb: Run summary",
    "W&B sync line": "You can sync this run to the cloud",
    "W&B log folder": "Find logs at",
    "artifact directory": "Adding directory to artifact",
    "FLOPs column": "FLOPs",
    "a name cut by rich": "…",
    "summary callback note": "Trainer already configured with model summary callbacks",
    "resume warning": "exists and is not empty",
}


# ------------------------------------------------------------------------------ the pure parts
def test_the_wandb_config_has_one_key_per_setting_and_only_what_applies_to_the_job():
    flat = {"seed_everything": 33, "model.backbone": "tiny-roberta", "data.backbone": "tiny-roberta",
            "model.prompt_length": 8, "data.prompt_length": 8, "model.layout": "paper", "data.layout": "paper",
            "data.task": "marker", "model.learning_rate": 0.01, "trainer.precision": None, "runs_dir": "runs",
            "checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.filename": "best",
            "checkpoint.save_last": True, "checkpoint.dirpath": "runs/a/checkpoints", "ckpt_path": "runs/x/best.ckpt",
            "suppression.selection": "skill", "suppression.perturbation": "zero", "suppression.rate": None,
            "trainer.logger.project": "skill-neurons", "trainer.logger.tags": ["quickstart"],
            "trainer.logger.prefix": "", "data.files": {}, "verbose": False}
    settings = {"backbone": "tiny-roberta", "family": "masked_lm", "task": "marker", "seed": 33, "prompt_length": 8,
                "layout": "paper", "learning_rate": 0.01, "precision": "32-true", "world_size": 1}
    fit = run_config(flat, "fit", settings)
    assert fit == {"seed_everything": 33, "model.backbone": "tiny-roberta", "model.prompt_length": 8,
                   "model.layout": "paper", "data.task": "marker", "model.learning_rate": 0.01,
                   "checkpoint.monitor": "val/acc", "checkpoint.mode": "max",
                   "run.family": "masked_lm", "run.precision": "32-true", "run.world_size": 1}
    validate = run_config(flat, "validate", settings)
    assert not [k for k in validate if k.startswith(("checkpoint.", "suppression."))]
    assert validate["ckpt_path"] == "runs/x/best.ckpt"  # which prompt was evaluated
    suppression = run_config({**flat, "suppression.rate": 5.0}, "validate", settings)
    assert {k: v for k, v in suppression.items() if k.startswith("suppression.")} == {
        "suppression.selection": "skill", "suppression.perturbation": "zero", "suppression.rate": 5.0}
    # a user's task (a mapping) is one key too, and a precision given on the command line replaces run.precision
    mine = run_config({**flat, "data.task": {"name": "mine", "fields": None}, "trainer.precision": "bf16-mixed"},
                      "fit", {**settings, "task": "mine"})
    assert mine["data.task"] == {"name": "mine"} and "run.task" not in mine
    assert mine["trainer.precision"] == "bf16-mixed" and "run.precision" not in mine
    for config in (fit, validate, suppression, mine):
        assert not [k for k, v in config.items() if v in (None, "", [], {})]
    assert applies("checkpoint.monitor", "fit", False) and not applies("checkpoint.monitor", "test", False)
    assert applies("ckpt_path", "validate", False) and not applies("ckpt_path", "fit", False)


def test_every_run_gets_plain_tags_after_the_ones_its_config_gives():
    settings = {"backbone": "google/flan-t5-base", "task": "sst2", "seed": 34, "layout": "standard"}
    assert run_tags(settings, ["quickstart", "sst2"]) == [
        "quickstart", "sst2", "backbone:flan-t5-base", "task:sst2", "seed:34", "layout:standard"]
    assert run_tags({"backbone": "roberta-base", "task": {"name": "mine"}, "seed": 0, "layout": None}) == [
        "backbone:roberta-base", "task:mine", "seed:0"]
    assert run_tags(settings, ["seed:34"]).count("seed:34") == 1  # a resumed run keeps its tags once


def test_evaluation_metrics_are_printed_with_full_names_clean_set_first():
    long = "adv/adversarial_set_with_a_long_name/acc"
    table = metrics_table({"val/acc": 0.525, long: 0.6, "val/loss": 1.63191, "epoch": 0}, "validate")
    assert table.splitlines() == ["validate metrics:", f"  val/acc{' ' * (len(long) - 7)}  0.5250",
                                  f"  val/loss{' ' * (len(long) - 8)}  1.6319", f"  {long}  0.6000"]
    assert metrics_table({}, "test") == ""


def test_the_last_line_names_the_run_and_every_offline_segment_or_its_page():
    run = Path("runs/ab")
    segments = [run / "wandb/offline-run-1-ab", run / "wandb/offline-run-2-ab"]
    line = where_line("ab", run, segments)
    assert line.startswith("skill-neurons: run ab is in runs/ab; upload its W&B run with `wandb sync ")
    assert f"`wandb sync {segments[0]} {segments[1]}`" in line and line.count("wandb sync") == 1
    assert where_line("ab", run, [], "https://wandb.ai/x/y/runs/ab").endswith("W&B run: https://wandb.ai/x/y/runs/ab")
    assert where_line("ab", run, [], None, "why").startswith("skill-neurons: smoke run ab is in runs/ab (why)")


def test_the_model_summary_has_no_flops_column():
    data = [(" ", ["0", "1"]), ("Name", ["backbone", "prompt"]), ("Type", ["RobertaForMaskedLM", "SoftPrompt"]),
            ("Params", ["315 K", "512  "]), ("Mode", ["eval", "train"]), ("FLOPs", ["0", "0"])]
    text = summary_text(data, 316_000, 512, 1.266, {"train": 6, "eval": 50})
    assert "FLOPs" not in text
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "Name" and lines[2].split("|")[1].strip() == "backbone"
    assert "Trainable params: 512 · non-trainable: 315 K · total: 316 K" in text


def test_wandb_is_quiet_unless_the_user_chose(monkeypatch):
    from lightning_modules.tracking import INIT_TIMEOUT_S, project_settings

    for name in ("WANDB_QUIET", "WANDB_SILENT", "WANDB_INIT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert project_settings(None) == {"quiet": True, "init_timeout": INIT_TIMEOUT_S}
    assert project_settings(None, online=False) == {"quiet": True}
    assert project_settings({"quiet": False}, online=False) == {"quiet": False}  # the config's settings win
    monkeypatch.setenv("WANDB_QUIET", "false")
    assert project_settings(None, online=False) is None


# ------------------------------------------------------------------------------ smoke runs (item 11)
def test_a_fast_dev_run_is_a_smoke_run_never_a_finished_fit(tmp_path, tiny_backbones):
    from records.summary import find_run, finished_fit_runs
    from skill_neurons.report.main import main as report

    proc = cli_in_process(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, *TINY,
                           "--trainer.fast_dev_run=true"], cwd=tmp_path, check=True)
    run = only_run_dir(tmp_path / "runs")
    summary = summary_of(run)
    assert summary["status"] == "smoke" and "fast_dev_run" in summary["smoke"]
    assert not summary.get("best") and not summary.get("history")  # one batch is no epoch to choose
    assert proc.stderr.strip().splitlines()[-1].startswith(f"skill-neurons: smoke run {run.name} is in ")
    assert finished_fit_runs([tmp_path / "runs"]) == [] and find_run(f"{tmp_path / 'runs'}?task=marker") is None
    refused = cli_in_process(["validate", "--from_run", str(run)], cwd=tmp_path)
    assert refused.returncode == 2 and "is a smoke run (--trainer.fast_dev_run" in refused.stderr
    out = tmp_path / "report"
    assert report([str(tmp_path / "runs"), "--out", str(out)]) == 0
    document = json.loads((out / "report.json").read_text())
    assert document["runs"]["finished"] == 0 and document["runs"]["unfinished"] == [run.name]  # skipped, named
    assert "status `smoke`" in (out / "report.md").read_text()


# A sweep trial that is a smoke run: what the CLI leaves for a fit under --trainer.fast_dev_run (a program stands in
# for it, as the sweep tests' synthetic trials do)
SMOKE_TRIAL = r'''
import json, os
run_dir = os.path.join(os.environ["SKILL_NEURONS_RUNS_DIR"], os.environ["WANDB_RUN_ID"])
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump({"stage": "fit", "status": "smoke", "fit_metrics": {"val/acc": 0.5}}, f)
'''


@pytest.mark.subprocess  # the trials are child processes
def test_a_sweep_trial_that_is_a_smoke_run_is_not_counted_as_finished(tmp_path, monkeypatch, capsys):
    from skill_neurons.sweep import command as sweep_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "trial.py").write_text(SMOKE_TRIAL)
    (tmp_path / "sweep.yaml").write_text(json.dumps({
        "program": "trial.py", "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"x": {"values": [1, 2]}}}))
    sweep_command.main(["sweep.yaml", "--dir", "d", "--poll", "0.02"])
    trials = json.loads((tmp_path / "d" / "state.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["failed", "failed"]
    assert all("smoke run (--trainer.fast_dev_run)" in t["note"] for t in trials)
    assert capsys.readouterr().out.count("is a smoke run (--trainer.fast_dev_run in the sweep's command)") == 2


# ------------------------------------------------------------------------------ the report run (item 15)
def test_the_report_run_has_a_name_and_no_empty_summary_values(tmp_path, monkeypatch):
    from skill_neurons.report.main import main as report
    from tests.test_report import fit_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    fit_run(tmp_path, "tiny-roberta", "sst2", 33)
    fit_run(tmp_path, "tiny-roberta", "sst2", 34)
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--wandb"]) == 0
    state = wandb_state(next((tmp_path / "r" / "wandb").glob("offline-run-*")))
    assert state["name"] == REPORT_NAME
    missing = {k: v for k, v in state["summary"].items() if k.endswith("/missing")}
    assert missing and all(isinstance(v, str) and v for v in missing.values())  # only sections left out
    assert "report/transfer/missing" in missing and "report/accuracy/missing" not in missing


# ------------------------------------------------------------------------------ the real console script
def console(args: list[str], cwd: Path) -> str:
    """``skill-neurons ARGS`` through the installed console script, as a user runs it: stdout and stderr
    interleaved as on a terminal, Python's own warning filters and W&B's messages (the test session silences
    both), no W&B credentials, umask 002."""
    env = subprocess_env({"WANDB_MODE": ""})
    for name in ("WANDB_SILENT", "PYTHONWARNINGS"):
        env.pop(name, None)
    script = Path(sys.executable).parent / "skill-neurons"
    proc = subprocess.run([str(script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900, preexec_fn=lambda: os.umask(0o002))
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def assert_quiet_and_last(output: str, run: Path) -> str:
    """No item-10 noise; the project's line is the last one; returns that line."""
    for what, text in NOISE.items():
        assert text not in output, (what, output[-3000:])
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"skill-neurons: run {run.name} is in "), output[-3000:]
    assert sum("wandb sync" in line for line in output.splitlines()) == 1  # one sync line: the last
    return last


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_quickstart_its_evaluation_and_analysis_end_with_the_project_line_and_print_no_noise(tmp_path,
                                                                                                tiny_backbones):
    fit_out = console(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *TINY], tmp_path)
    fit = only_run_dir(tmp_path / "runs")
    assert_quiet_and_last(fit_out, fit)
    assert "wandb: Run data is saved locally in" in fit_out  # control: W&B's own start still reaches the output
    assert "Trainable params: 512" in fit_out  # the model summary, without its FLOPs

    val_out = console(["validate", "--from_run", str(fit)], tmp_path)
    evaluation = next(d for d in (tmp_path / "runs").iterdir() if d != fit)
    assert_quiet_and_last(val_out, evaluation)
    validated = summary_of(evaluation)["validate_metrics"]
    for name in ("val/acc", "val/loss", "adv/marker_typo/acc", "adv/marker_typo/loss"):
        assert f"  {name} " in val_out and name in validated  # full names, one line each

    analyse_out = console(["analyse", str(fit)], tmp_path)
    last = assert_quiet_and_last(analyse_out, fit)
    segments = sorted((fit / "wandb").glob(f"offline-run-*-{fit.name}"))
    assert len(segments) == 2 and f"`wandb sync {segments[0]} {segments[1]}`" in last  # both, and only here

    # item 14: every file the three commands wrote has the mode of any new file under the umask (0664 under 002),
    # W&B's files too — except W&B's capture of the console (files/output.log), which wandb-core creates 0644
    # whatever the umask
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "runs").rglob("*")
             if path.is_file() and path.parts[-2:] != ("files", "output.log")}
    assert any(p.suffix == ".safetensors" for p in modes) and any(p.suffix == ".wandb" for p in modes)
    assert {oct(m) for m in modes.values()} == {oct(0o664)}, {str(p): oct(m) for p, m in modes.items() if m != 0o664}

    # item 15: what the fit's W&B run holds
    state = wandb_state(next((fit / "wandb").glob("offline-run-*")))
    config = state["config"]
    assert {"backbone:tiny-roberta", "task:marker", "seed:33", "layout:paper", "quickstart"} <= set(state["tags"])
    assert config["model.backbone"] == "tiny-roberta" and "data.backbone" not in config
    assert not [k for k in config if k.startswith(("run.backbone", "run.task", "run.seed", "suppression."))]
    assert sorted(k for k in config if k.startswith("checkpoint.")) == ["checkpoint.mode", "checkpoint.monitor"]
    assert not [k for k, v in config.items() if v in (None, "", [], {})]
