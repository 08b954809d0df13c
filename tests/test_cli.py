"""The real `skill-neurons` CLI in subprocesses: quick-start, run directories, W&B, resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, run_cli, subprocess_env, summary_of

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
SMALL = ["--data.max_train_samples=128", "--data.max_eval_samples=64", "--data.batch_size=32"]


@pytest.fixture
def workdir(tmp_path, tiny_backbones):
    return tmp_path


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_config_parses(config, capsys, monkeypatch):
    from skill_neurons.lightning_cli import SkillNeuronsCLI

    monkeypatch.setattr(sys, "argv", ["skill-neurons"])
    with pytest.raises(SystemExit) as exit_:
        SkillNeuronsCLI(args=["fit", "--config", str(ROOT / config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["class_path"].endswith("WandbLogger")
    if config.count("/") == 2:  # configs/<backbone>/<task>.yaml: P1's setup (src/config/<Task>Prompt<Model>.config)
        family, name = config.split("/")[1], config.split("/")[2][: -len(".yaml")]
        task = {"sst2_p1_rows": "sst2"}.get(name, name)  # sst2 trained on the validation rows, as P1's prompts
        model, data = printed["model"]["init_args"], printed["data"]
        assert data["task"] == task
        assert data["train_split"] == ("validation" if name == "sst2_p1_rows" else "train")
        assert model["prompt_length"] == 100 and model["layout"] == "paper"  # data.layout is linked to it
        assert model["adam_eps"] == 1e-6 and model["weight_decay"] == 0 and model["backbone_dropout"] is True
        assert data["max_text_length"] == 128 and data["eval_batch_size"] == 64
        assert printed["trainer"]["precision"] in ("32-true", "32")
        p1 = {  # (epoch, batch_size, learning_rate) read from P1's config files
            "roberta": {"sst2": (76, 16, 1e-3), "imdb": (72, 16, 1e-3), "mrpc": (72, 8, 1e-3), "qqp": (96, 16, 1e-3)},
            "t5": {"qnli": (100, 16, 1e-2)},
        }
        default = {"roberta": (128, 16, 1e-3), "t5": (200, 16, 5e-3)}[family]
        epochs, batch, lr = p1[family].get(task, default)
        assert (printed["trainer"]["max_epochs"], data["batch_size"], model["learning_rate"]) == (epochs, batch, lr)
        assert model["prompt_init"] == {"roberta": "normal", "t5": "vocab"}[family]
        header = (ROOT / config).read_text()
        if task != "rte":  # every value cites the P1 file it comes from
            p1_name = {"movie_rationales": "movierationales", "ethics_deontology": "ethicsdeontology",
                       "ethics_justice": "ethicsjustice"}.get(task, task.upper())
            assert f"src/config/{p1_name}Prompt{ {'roberta': 'Roberta', 't5': 'T5'}[family]}.config" in header
    assert "configs/roberta/sst2_p1_rows.yaml" in CONFIGS  # the P1-rows variant is shipped and checked here


@pytest.mark.subprocess
def test_quickstart_fit_writes_run_directory_summary_and_offline_wandb_run(workdir):
    secret = "sk-THIS-IS-A-SECRET-0123456789"
    proc = run_cli(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, *SMALL,
                    "--trainer.max_epochs=2", "--model.learning_rate=0.02", "--seed_everything=35"],
                   cwd=workdir, env={"WANDB_MODE": "", "HF_TOKEN": secret, "WANDB_API_KEY_FILE": secret})
    run = only_run_dir(workdir / "runs")
    summary = summary_of(run)
    assert summary["status"] == "finished" and summary["run_id"] == run.name
    assert summary["settings"]["task"] == "marker" and summary["settings"]["seed"] == 35
    assert summary["config"]["model.learning_rate"] == 0.02  # LightningCLI keys, as W&B sweeps use
    for key in ("val/acc", "adv/marker_typo/acc", "val/loss"):
        assert 0.0 <= summary["fit_metrics"][key] <= (1.0 if key.endswith("acc") else 100.0)
        assert key in summary["best"]
    assert summary["best"]["val/acc"] == max(h["val/acc"] for h in summary["history"])
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    assert summary["data"]["splits"]["train"]["rows"] == 128
    assert summary["config"]["data.backbone"] == summary["config"]["model.backbone"] == "tiny-roberta"  # linked
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(summary["checkpoints"]["best"]).is_file()
    # No credentials -> offline automatically, with the sync command printed and recorded.
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["id"] == run.name
    assert "wandb sync" in proc.stderr
    offline = list((run / "wandb").glob(f"offline-run-*-{run.name}"))
    assert len(offline) == 1 and (offline[0] / f"run-{run.name}.wandb").is_file()
    # Secrets from the environment never land in anything the run wrote.
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_wandb_config_uses_cli_keys_and_drops_secret_like_keys():
    from records.secrets import redact
    from records.summary import flatten

    flat = flatten({"model": {"class_path": "x.Y", "init_args": {"learning_rate": 0.1}}, "data": {"task": "sst2"},
                    "trainer": {"logger": {"init_args": {"api_key": "abc", "project": "p"}}}})
    assert flat == {"model.class_path": "x.Y", "model.learning_rate": 0.1, "data.task": "sst2",
                    "trainer.logger.api_key": "abc", "trainer.logger.project": "p"}
    assert "trainer.logger.api_key" not in redact(flat) and "trainer.logger.project" in redact(flat)


@pytest.mark.subprocess
def test_two_runs_in_the_same_folder_do_not_clash(workdir):
    for _ in range(2):
        run_cli(["fit", "--config", str(ROOT / "configs/quickstart_t5.yaml"), *QUICK, *SMALL,
                 "--trainer.max_epochs=1"], cwd=workdir)
    runs = sorted(d for d in (workdir / "runs").iterdir())
    assert len(runs) == 2
    assert all((r / "summary.json").is_file() and (r / "config.yaml").is_file() for r in runs)


@pytest.mark.subprocess
def test_sigkilled_fit_resumes_from_last_checkpoint_in_the_same_run(workdir):
    args = ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, *SMALL, "--trainer.max_epochs=12",
            "--data.max_train_samples=256"]
    proc = subprocess.Popen([sys.executable, "-m", "skill_neurons.cli", *args], cwd=workdir,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list((workdir / "runs").glob("*/checkpoints/last.ckpt")) if (workdir / "runs").exists() else []
        if found:
            last = found[0]
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last is not None, "the fit ended before writing a checkpoint"
    run = last.parent.parent
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert summary_of(run)["status"] == "running"  # it really was interrupted
    assert killed_at < 11

    run_cli([*args, f"--ckpt_path={last}"], cwd=workdir)
    assert only_run_dir(workdir / "runs") == run
    summary = summary_of(run)
    assert summary["status"] == "finished" and summary["epochs_completed"] == 12
    assert summary["global_step"] == 12 * 8  # 256 rows / 32 per batch, no epoch repeated or lost
    epochs = [h["epoch"] for h in summary["history"]]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 11
    wandb_runs = list((run / "wandb").glob(f"offline-run-*-{run.name}"))
    assert len(wandb_runs) == 2  # the same W&B run id, resumed (synced into one run)


def test_validate_with_checkpoint_evaluates_clean_and_adversarial(workdir):
    cli_in_process(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, *SMALL,
                    "--trainer.max_epochs=1"], cwd=workdir, check=True)
    fit_run = only_run_dir(workdir / "runs")
    best = summary_of(fit_run)["checkpoints"]["best"]
    cli_in_process(["validate", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, *SMALL,
                    f"--ckpt_path={best}", "--runs_dir=validated"], cwd=workdir, check=True)
    summary = summary_of(only_run_dir(workdir / "validated"))
    assert summary["ckpt_path"] == best
    fit_best = summary_of(fit_run)["best"]
    assert summary["validate_metrics"]["val/acc"] == pytest.approx(fit_best["val/acc"])
    assert summary["validate_metrics"]["adv/marker_typo/acc"] == pytest.approx(fit_best["adv/marker_typo/acc"])


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_process_cpu_ddp_matches_one_process(workdir):
    """2-process CPU DDP (gloo) gives the metrics of 1 process, and its training step is the same step.

    A step over 2 x 16 examples equals a step over 32 (no shuffling). Only the first step is compared
    exactly: Adam turns float-rounding differences in near-zero gradients into full-size updates, so
    later steps drift apart by design of the optimizer, not of DDP.
    """
    common = [*QUICK, "--config", str(ROOT / "configs/quickstart.yaml"), "--data.max_train_samples=128",
              "--data.max_eval_samples=64", "--data.shuffle=false"]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    run_cli(["fit", *common, "--data.batch_size=32", "--trainer.max_steps=1", "--runs_dir=single"], cwd=workdir)
    proc = run_cli(["fit", *common, "--data.batch_size=16", "--trainer.max_steps=1", "--runs_dir=ddp", *ddp],
                   cwd=workdir, timeout=900, env={"PYTHONWARNINGS": "default"})
    assert "sync_dist" not in proc.stdout + proc.stderr  # Lightning's warning for a metric of one rank only
    single, multi = only_run_dir(workdir / "single"), only_run_dir(workdir / "ddp")
    assert summary_of(multi)["settings"]["world_size"] == 2
    # the epoch's loss is the mean over both processes' 16 examples, as one process's over 32
    assert summary_of(multi)["fit_metrics"]["train/loss_epoch"] == pytest.approx(
        summary_of(single)["fit_metrics"]["train/loss_epoch"], rel=1e-5)
    p1 = torch.load(single / "checkpoints/last.ckpt", weights_only=True)["state_dict"]["prompt.weight"]
    p2 = torch.load(multi / "checkpoints/last.ckpt", weights_only=True)["state_dict"]["prompt.weight"]
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
    # The same checkpoint validated by 1 and by 2 processes: identical accuracies on every set.
    ckpt = str(single / "checkpoints/last.ckpt")
    run_cli(["validate", *common, f"--ckpt_path={ckpt}", "--runs_dir=v1"], cwd=workdir)
    run_cli(["validate", *common, f"--ckpt_path={ckpt}", "--runs_dir=v2", *ddp], cwd=workdir, timeout=900)
    v1, v2 = summary_of(only_run_dir(workdir / "v1")), summary_of(only_run_dir(workdir / "v2"))
    for key in ("val/acc", "adv/marker_typo/acc"):
        assert v2["validate_metrics"][key] == v1["validate_metrics"][key]
    assert v2["settings"]["world_size"] == 2 and 0.0 < v1["validate_metrics"]["val/acc"] < 1.0
    # The skill-neuron analysis ran in both, over the same examples (exact equality of the counts under
    # identical batching is tested in test_skill_neurons.py; here shards pad differently, so float32
    # activations may differ in their last bits).
    s1, s2 = v1["skill_neurons"], v2["skill_neurons"]
    assert s1["threshold_examples"] == s2["threshold_examples"] == 128
    assert s1["sets"]["validation"]["class_count"] == s2["sets"]["validation"]["class_count"]
    for key, value in s1["metrics"].items():
        assert s2["metrics"][key] == pytest.approx(value, abs=1 / 64), key


# ---------------------------------------------------------------- bad input
def test_bad_input_fails_before_any_run_directory_is_written(workdir):
    proc = cli_in_process(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK,
                           "--data.task=sst"], cwd=workdir)
    assert proc.returncode != 0 and "unknown task 'sst' — known tasks: sst2" in proc.stderr
    proc = cli_in_process(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK,
                           "--data.files={train: nope.tsv, validation: nope2.tsv}", "--data.task=sst2",
                           "--data.adversarial=[]"], cwd=workdir)
    assert proc.returncode != 0 and "data file 'nope.tsv' does not exist" in proc.stderr
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def test_nonexistent_config_or_checkpoint_path(workdir):
    proc = cli_in_process(["fit", "--config", "configs/nope.yaml"], cwd=workdir)
    assert proc.returncode != 0 and "nope.yaml" in proc.stderr
    proc = cli_in_process(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--ckpt_path=runs/x/last.ckpt"],
                          cwd=workdir)
    assert proc.returncode != 0 and "checkpoint 'runs/x/last.ckpt' does not exist" in proc.stderr


def test_hub_backbone_offline_through_cli_names_local_path(workdir):
    proc = cli_in_process(["fit", "--config", str(ROOT / "configs/roberta/sst2.yaml")], cwd=workdir)
    assert proc.returncode != 0 and "--model.backbone=/path/to/roberta-base" in proc.stderr
    assert not (workdir / "runs").exists()


def test_from_run_names_what_is_missing(tmp_path, monkeypatch, capsys):
    from skill_neurons.cli import main

    monkeypatch.chdir(tmp_path)
    for argv, message in ((["validate", "--from_run=runs/nope"], "no run directory with a config.yaml there"),
                          (["validate", "--from_run", "runs?task=sst2"],
                           "no finished fit run under 'runs' has settings {'task': 'sst2'}"),
                          (["fit", "--from_run=runs/nope"], "use it with validate, test or predict, not fit")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_from_run_picks_the_matching_fit_run_and_lets_later_options_win(tmp_path):
    from skill_neurons.runs import take_from_run as _take_from_run

    for name, seed, stage in (("a", 33, "fit"), ("b", 34, "fit"), ("c", 34, "validate")):
        run = tmp_path / "runs" / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("{}")
        (run / "checkpoints" / "best.ckpt").write_bytes(b"")
        (run / "summary.json").write_text(json.dumps({"stage": stage, "status": "finished",
                                                      "settings": {"task": "marker", "seed": seed}}))
    rest, head = _take_from_run(["validate", f"--from_run={tmp_path}/runs?task=marker&seed=34", "--data.task=sst2"])
    assert rest == ["validate", "--data.task=sst2"]
    assert head == ["--config", str(tmp_path / "runs/b/config.yaml"),
                    f"--ckpt_path={tmp_path / 'runs/b/checkpoints/best.ckpt'}", "--run_id=null", "--runs_dir=runs"]
