"""Signals and statuses (issue 27): SIGTERM at each phase ends with a non-zero exit and a status that says so,
and a run whose process is gone reads as such everywhere (``analyse``, ``--from_run``, ``report``, ``sweep
--status``)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import QUICK, ROOT, cli_in_process, subprocess_env

BASE = ["--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, "--trainer.max_epochs=1",
        "--data.max_train_samples=64", "--data.max_eval_samples=40"]
NEURON_FILES = ["skill_neurons/validation.safetensors", "skill_neurons/marker_typo.safetensors"]

# The child's analysis batches are slowed down (0.3 s each) and each one appends a line to $ANALYSIS_MARKER, so
# the test knows when the analysis runs and how many batches it took after the signal.
SLOW_ANALYSIS = """
import os, sys, time
from datamodules.prompt_datamodule import PromptDataModule
original = PromptDataModule.analysis_loader
class Slow:
    def __init__(self, loader):
        self.loader = loader
    def __len__(self):
        return len(self.loader)
    def __iter__(self):
        for batch in self.loader:
            with open(os.environ["ANALYSIS_MARKER"], "a") as f:
                f.write("batch\\n")
            time.sleep(0.3)
            yield batch
PromptDataModule.analysis_loader = lambda self, *a, **k: Slow(original(self, *a, **k))
from skill_neurons.cli import main
main()
"""


def start(args: list[str], cwd: Path, env: dict | None = None, script: str | None = None) -> subprocess.Popen:
    """``skill-neurons ARGS`` in a child process (or ``script`` run with ARGS as its arguments)."""
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "skill_neurons.cli", *args]
    return subprocess.Popen(command, cwd=cwd, env=subprocess_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 400, what: str = "") -> None:
    """Poll ``condition()`` every 50 ms until it holds; fail if the child ends first or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def summary(run: Path) -> dict:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def one_run(runs: Path) -> Path | None:
    found = sorted(runs.glob("*/summary.json")) if runs.exists() else []
    return found[0].parent if found else None


# ---------------------------------------------------------------- SIGTERM during fit / the analysis / a trial
@pytest.mark.subprocess
def test_sigterm_during_fit_exits_143_and_the_run_is_interrupted(tmp_path):
    runs = tmp_path / "runs"
    proc = start(["fit", *BASE, "--trainer.max_epochs=200", f"--runs_dir={runs}", "--run_id=T"], tmp_path)
    run = runs / "T"
    wait_for(lambda: len(summary(run).get("history") or []) >= 1, proc, what="the first epoch")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]  # Lightning's SIGTERMException is a SystemExit: it exited 0
    record = summary(run)
    assert record["status"] == "interrupted" and record["error"] is None
    assert record["missing"] == NEURON_FILES  # the analysis never ran
    assert record["process"]["pid"] == proc.pid and record["process"]["host"] == socket.gethostname()
    assert 1 <= len(record["history"]) < 200
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] < 199  # whole, loadable
    assert "run T is in" in err.splitlines()[-1]  # the last line still says where the run is
    assert f"run T was interrupted (SIGTERM): `skill-neurons analyse {run}` finishes it" in err


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigterm_during_the_analysis_stops_it_between_batches_and_analyse_completes_it(tmp_path):
    runs, marker = tmp_path / "runs", tmp_path / "analysis.log"
    proc = start(["fit", *BASE, "--data.eval_batch_size=8", f"--runs_dir={runs}", "--run_id=A"], tmp_path,
                 env={"ANALYSIS_MARKER": str(marker)}, script=SLOW_ANALYSIS)
    wait_for(lambda: marker.exists(), proc, what="the analysis")
    proc.send_signal(signal.SIGTERM)
    done_at_signal = len(marker.read_text().splitlines())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    batches = len(marker.read_text().splitlines())
    # 8 threshold + 5 validation + 5 adversarial batches in all; it stopped at the next batch boundary
    assert batches <= done_at_signal + 1 < 18, (done_at_signal, batches)
    run = runs / "A"
    record = summary(run)
    assert record["status"] == "interrupted" and record["missing"] == NEURON_FILES
    assert not list(run.glob("skill_neurons/*.safetensors")) and "skill_neurons" not in record

    finished = cli_in_process(["analyse", str(run), "--data.eval_batch_size=8"], cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    record = summary(run)
    assert record["status"] == "finished" and record["missing"] is None
    assert all((run / path).is_file() for path in NEURON_FILES)
    assert record["skill_neurons"]["sets"]["validation"]["examples"] == 40


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigterm_to_a_sweep_trial_marks_it_failed_with_exit_code_143(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "program": "skill_neurons/cli.py", "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"seed_everything": {"values": [33]}},
        "command": ["${env}", sys.executable, "-m", "skill_neurons.cli", "fit", *BASE, "--trainer.max_epochs=200",
                    "--trainer.logger=false", "${args}"],
    }, sort_keys=False))
    directory = tmp_path / "sweep"
    runner = start(["sweep", str(sweep), "--dir", str(directory)], tmp_path)

    def trial_trained() -> bool:
        state = summary_like(directory / "state.json")
        attempts = [a for t in state.get("trials", []) for a in t.get("attempts", [])]
        return bool(attempts and attempts[-1].get("pid")
                    and summary(directory / "runs" / attempts[-1]["run_id"]).get("history"))

    wait_for(trial_trained, runner, what="the trial's first epoch")
    attempt = summary_like(directory / "state.json")["trials"][0]["attempts"][-1]
    os.kill(attempt["pid"], signal.SIGTERM)  # the trial alone (a scheduler's kill), not the runner
    out, err = runner.communicate(timeout=300)
    trial = summary_like(directory / "state.json")["trials"][0]
    assert trial["state"] == "failed" and trial["attempts"][-1]["exitcode"] == 143, out[-3000:]
    assert "exit code 143" in out
    assert summary(directory / "runs" / attempt["run_id"])["status"] == "interrupted"


def summary_like(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_ctrl_c_exits_130_and_incomplete_exits_3():
    from records.run_status import status_exit_code

    assert [status_exit_code(s) for s in ("finished", "smoke", None, "incomplete", "failed", "running")] == \
        [0, 0, 0, 3, 1, 1]
    assert status_exit_code("interrupted", sigterm=True) == 143 and status_exit_code("interrupted") == 130


# ---------------------------------------------------------------- a run whose process is gone
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_run(folder: Path, status: str, pid: int, host: str | None = None) -> Path:
    """A fit run folder as a killed (or live) process leaves it: config, checkpoints, a summary."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("seed_everything: 33\n")
    for name in ("best.ckpt", "last.ckpt"):
        (folder / "checkpoints" / name).write_bytes(b"checkpoint")
    record = {"run_id": folder.name, "stage": "fit", "status": status,
              "process": {"pid": pid, "host": host or socket.gethostname(), "start": None},
              "settings": {"backbone": "tiny-roberta", "task": "marker", "seed": 33}}
    (folder / "summary.json").write_text(json.dumps(record))
    return folder


def test_a_running_run_whose_pid_is_gone_reads_as_dead_and_a_live_one_as_running(tmp_path):
    from records.run_status import process_gone, status_of
    from records.summary import read_summary

    dead = read_summary(fake_run(tmp_path / "dead", "running", dead_pid()))
    live = read_summary(fake_run(tmp_path / "live", "running", os.getpid()))
    other_host = read_summary(fake_run(tmp_path / "far", "running", dead_pid(), host="another-host"))
    assert process_gone(dead) and not process_gone(live) and not process_gone(other_host)
    assert status_of(dead).startswith("running, but its process is gone (pid")
    assert status_of(live) == f"running (pid {os.getpid()} on {socket.gethostname()})"


def test_analyse_refuses_a_live_run_and_notes_a_dead_one(tmp_path, capsys):
    from skill_neurons.runs import CLIError, analyse_args

    live = fake_run(tmp_path / "live", "running", os.getpid())
    with pytest.raises(CLIError, match=r"the run is running \(pid \d+ on .*\) — wait for it"):
        analyse_args([str(live)])
    dead = fake_run(tmp_path / "dead", "running", dead_pid())
    assert analyse_args([str(dead)])[:2] == ["fit", "--config"]
    assert "run dead is running, but its process is gone" in capsys.readouterr().err


@pytest.mark.parametrize("status", ["running", "interrupted", "failed", "incomplete"])
def test_from_run_on_an_unfinished_run_is_refused_naming_its_status_unless_allowed(status, tmp_path, capsys):
    from skill_neurons.runs import CLIError, take_from_run

    run = fake_run(tmp_path / "r", status, dead_pid())
    shown = "running, but its process is gone" if status == "running" else status
    with pytest.raises(CLIError, match=f"the run is {shown}.*--allow_incomplete"):
        take_from_run(["validate", "--from_run", str(run)])
    rest, head = take_from_run(["validate", "--from_run", str(run), "--allow_incomplete"])
    assert rest == ["validate"] and head[1] == str(run / "config.yaml")  # the flag is not passed on
    assert f"warning: --from_run {run}: the run is {shown}" in capsys.readouterr().err


def test_validate_from_run_of_a_dead_run_is_one_line_with_exit_code_2(tmp_path):
    run = fake_run(tmp_path / "r", "running", dead_pid())
    proc = cli_in_process(["validate", "--from_run", str(run)], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "its process is gone" in lines[0], proc.stderr


def test_report_says_on_the_console_which_run_is_dead(tmp_path):
    from skill_neurons.report.inputs import read_runs

    fake_run(tmp_path / "runs" / "dead", "running", dead_pid())
    fake_run(tmp_path / "runs" / "live", "running", os.getpid())
    proc = cli_in_process(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")], cwd=tmp_path)
    assert f"run {tmp_path / 'runs' / 'dead'} is running, but its process is gone" in proc.stderr
    assert "live is" not in proc.stderr  # a live run is not called dead
    report = (tmp_path / "report" / "report.md").read_text()
    assert "status `running, but its process is gone" in report and "status `running (pid" in report
    assert len(read_runs([str(tmp_path / "runs")], tmp_path).runs) == 2


def test_sweep_status_shows_a_trial_whose_process_is_gone(tmp_path):
    from skill_neurons.sweep.state import Attempt, Trial, format_table

    directory = tmp_path / "sweep"
    fake_run(directory / "runs" / "t1", "running", dead_pid())
    fake_run(directory / "runs" / "t2", "running", os.getpid())
    trials = [Trial(1, {"lr": 0.1}, "running", [Attempt("t1", 0.0, pid=dead_pid())]),
              Trial(2, {"lr": 0.2}, "running", [Attempt("t2", 0.0, pid=os.getpid())])]
    table = format_table({"config": {}}, trials, directory, lambda t: None).splitlines()
    assert "running (process gone)" in table[2] and "process gone" not in table[3]  # under a title and header


def test_a_fit_records_its_pid_and_host(tmp_path):
    proc = cli_in_process(["fit", *BASE, "--trainer.logger=false", f"--runs_dir={tmp_path}", "--run_id=P"],
                          cwd=tmp_path, check=True)
    process = summary(tmp_path / "P")["process"]
    assert process["pid"] == os.getpid() and process["host"] == socket.gethostname()
    assert isinstance(process["start"], int)  # /proc's start time: a reused pid is not taken for the run
    assert proc.returncode == 0


# ---------------------------------------------------------------- the printed commands are shell-quoted
def test_printed_wandb_commands_are_shell_quoted(tmp_path):
    from skill_neurons.console import where_line
    from skill_neurons.sweep.state import Attempt, Trial, format_table

    run_dir = tmp_path / "my runs" / "x"
    segment = run_dir / "wandb" / "offline-run-1-x"
    line = where_line("x", run_dir, [segment])
    sync = line.split("`")[1]
    leet = line.split("`")[3]
    assert shlex.split(sync) == ["wandb", "sync", str(segment)]
    assert shlex.split(leet) == ["wandb", "leet", f"{run_dir}/wandb"]
    foot = format_table({"config": {}}, [Trial(1, {}, "finished", [Attempt("x", 0.0)])], tmp_path / "my sweep",
                        lambda t: None).splitlines()[-1]
    assert shlex.split(foot.split("`")[1]) == ["wandb", "leet", str(tmp_path / "my sweep")]
    assert shlex.split(foot.split("`")[3]) == ["wandb", "sync", str(tmp_path / "my sweep")]
