"""`skill-neurons sweep --executor local|slurm` (trials as submitit jobs) and a simulated 2-node DDP run.

SLURM itself is not here: `sbatch` and `sacct` are small fake programs on PATH that keep the submission scripts
submitit writes and report every job as preempted, so the scripts' options and the runner's requeue are real.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, subprocess_env, summary_of
from tests.test_sweeps import calls, here, run_sweep, state_of, sweep_runner_processes, synthetic_sweep, tiny_copy

from records.neuron_files import load_neuron_file
from skill_neurons.sweep import command as sweep_command

__all__ = ["here"]  # the fixture, imported for the tests below

FAKE_SBATCH = """\
import os, pathlib, sys
folder = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
job = 4000 + len(list(folder.glob("*.sh")))
(folder / f"{job}.sh").write_text(pathlib.Path(sys.argv[-1]).read_text())
print(f"Submitted batch job {job}")
"""
FAKE_SRUN = """\
print("slurm 24.05.0")
"""
FAKE_SACCT = """\
import os, pathlib, re, sys
folder = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
print("JobID|State|NodeList")
for job in [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]:
    array = re.search(r"--array=0-(\\d+)", (folder / f"{job}.sh").read_text())
    for index in range(int(array.group(1)) + 1 if array else 1):
        print(f"{job}_{index}|PREEMPTED|node{index}" if array else f"{job}|PREEMPTED|node")
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sbatch` (keeps each script as <job id>.sh, prints the job id), `sacct` (every job PREEMPTED) and `srun`
    (only its --version, which submitit asks)."""
    bin_dir, jobs = tmp_path / "fake-bin", tmp_path / "fake-jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("sacct", FAKE_SACCT), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{text}")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    return jobs


# ------------------------------------------------------------------------------ --executor slurm
@pytest.mark.subprocess  # sbatch/sacct are child processes
def test_slurm_arrays_carry_the_options_and_preempted_trials_are_requeued_then_crashed(here, fake_slurm, capsys):
    qualities = [0.1, 0.2, 0.3]
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"values": qualities}})
    code = sweep_command.main([str(sweep), "--dir", "d", "--executor", "slurm", "--parallel", "2", "--retries", "1",
                               "--slurm.partition", "gpu-test", "--slurm.gpus_per_task=1", "--slurm.time", "90",
                               "--slurm.cpus_per_task", "4", "--poll", "0.2"])
    assert code == 1  # every trial crashed
    scripts = {int(p.stem): p.read_text() for p in fake_slurm.glob("*.sh")}
    assert sorted(scripts) == [4000, 4001]  # the grid as one array, then its requeue as a second one
    for text in scripts.values():
        flags = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, re.M))
        assert flags["partition"] == "gpu-test" and flags["gpus-per-task"] == "1" and flags["time"] == "90"
        assert flags["cpus-per-task"] == "4" and "no-requeue" in flags
        assert flags["array"] == f"0-{len(qualities) - 1}%2"  # the whole grid, 2 running at once
    trials = state_of(here / "d")["trials"]
    assert sorted(t["params"]["quality"] for t in trials) == qualities
    for t in trials:  # preempted, started again under a new run id, preempted again: crashed (--retries 1)
        assert t["state"] == "crashed" and [a["state"] for a in t["attempts"]] == ["interrupted", "interrupted"]
        assert [a["job_id"].split("_")[0] for a in t["attempts"]] == ["4000", "4001"]
        assert len({a["run_id"] for a in t["attempts"]}) == 2 and "preempted" in t["note"]
    assert calls(here) == []  # nothing ran here: the trials only ran (would run) in the jobs

    status = run_sweep("--status", "d", cwd=here).stdout
    header = status.splitlines()[1]
    assert header.split()[3:5] == ["job", "job"]  # "job  job state"
    for t in trials:
        assert re.search(rf"\b{t['attempts'][-1]['job_id']}\s+PREEMPTED\b", status)

    # As if the submitter had died while trial 1's second job was out: the next start follows that job (by its id),
    # finds it preempted and submits the trial once more (--retries 2 allows it), alone.
    state = state_of(here / "d")
    one = state["trials"][0]
    one["state"], one["attempts"][-1]["state"] = "running", "running"
    (here / "d" / "state.json").write_text(json.dumps(state))
    argv = [str(sweep), "--dir", "d", "--executor", "slurm", "--retries", "2", "--slurm.time", "90", "--poll", "0.2"]
    assert sweep_command.main(argv) == 1
    assert f"following its job {one['attempts'][-1]['job_id']} again" in capsys.readouterr().out
    one = state_of(here / "d")["trials"][0]
    assert [a["job_id"] for a in one["attempts"]] == ["4000_0", "4001_0", "4002"] and one["state"] == "crashed"
    assert sorted(int(p.stem) for p in fake_slurm.glob("*.sh")) == [4000, 4001, 4002]


def one_line_error(argv: list[str], capsys) -> str:
    assert sweep_command.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_executor_input_is_one_line_and_nothing_is_submitted(here, fake_slurm, monkeypatch, capsys):
    sweep = synthetic_sweep(here, method="grid", parameters={"quality": {"values": [1, 2]}})
    base = [str(sweep), "--dir", "d", "--executor", "slurm", "--slurm.time", "60"]
    assert "--slurm.time MINUTES" in one_line_error(base[:-2], capsys)
    assert "--slurm.partitoin" in one_line_error([*base, "--slurm.partitoin", "gpu"], capsys)
    assert "--executor slurm" in one_line_error([str(sweep), "--slurm.partition", "gpu"], capsys)
    only_srun = here / "only-srun"
    only_srun.mkdir()
    (only_srun / "srun").symlink_to(here / "fake-bin" / "srun")
    with monkeypatch.context() as m:  # no sbatch on PATH
        m.setenv("PATH", str(only_srun))
        assert "needs SLURM's `sbatch` on PATH" in one_line_error(base, capsys)
    with monkeypatch.context() as m:  # submitit not installed
        m.setitem(sys.modules, "submitit", None)
        for executor in ("slurm", "local"):
            assert "pip install 'submitit" in one_line_error([*base[:4], executor], capsys)
    assert not (here / "d").exists() and not list(fake_slurm.iterdir())


# ------------------------------------------------------------------------------ --executor local
@pytest.mark.subprocess
@pytest.mark.slow
def test_local_executor_runs_the_quickstart_grid_once(tmp_path, tiny_backbones):
    sweep = tiny_copy("sweeps/quickstart.yaml", tmp_path)  # W&B off: the processes executor's test covers it
    sweep.write_text(sweep.read_text().replace("- --trainer.logger.init_args.group=null", "- --trainer.logger=false"))
    run_sweep(str(sweep), "--dir", "grid", "--executor", "local", "--parallel", "2", "--poll", "0.2", cwd=tmp_path)
    trials = state_of(tmp_path / "grid")["trials"]
    combos = sorted((t["params"]["model.learning_rate"], t["params"]["seed_everything"]) for t in trials)
    assert combos == sorted(itertools.product([0.01, 0.003], [33, 34]))  # each combination once
    assert all(t["state"] == "finished" and len(t["attempts"]) == 1 for t in trials)
    runs = sorted(p.name for p in (tmp_path / "grid" / "runs").iterdir())
    assert runs == sorted(t["attempts"][0]["run_id"] for t in trials)  # one run folder per trial, no other
    for t in trials:
        summary = json.loads((tmp_path / "grid" / "runs" / t["attempts"][0]["run_id"] / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert summary["config"]["model.learning_rate"] == t["params"]["model.learning_rate"]
        assert t["metrics"]["best/val/acc"] == summary["best"]["val/acc"]
        assert (tmp_path / "grid" / "logs" / f"{t['attempts'][0]['run_id']}.log").stat().st_size > 0
        in_run = tmp_path / "grid" / "runs" / t["attempts"][0]["run_id"] / "trial.log"  # the job's log, in its run
        assert in_run.read_bytes() == (tmp_path / "grid" / "logs" / f"{t['attempts'][0]['run_id']}.log").read_bytes()
    job_ids = [t["attempts"][0]["job_id"] for t in trials]
    assert all(job_ids) and len(set(job_ids)) == 4
    assert all(list((tmp_path / "grid" / "jobs").glob(f"{j}_*result.pkl")) for j in job_ids)


def mid_way(directory: Path, trial: dict) -> bool:
    """A submitted trial whose command has reported some epochs and has many left."""
    if trial["state"] != "running" or not trial["attempts"][-1]["job_id"]:
        return False
    summary = directory / "runs" / trial["attempts"][-1]["run_id"] / "summary.json"
    try:
        history = json.loads(summary.read_text())["history"]
    except (OSError, ValueError, KeyError):
        return False
    return 0 < len(history) < 12


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent ids)."""
    children = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        found += children[todo[-1]]
        todo = todo[:-1] + children[todo[-1]]
    return found


@pytest.mark.subprocess
@pytest.mark.slow
def test_killed_local_sweep_resumes_without_repeating_finished_trials(here):
    qualities = [0.1, 0.2, 0.3, 0.4, 0.5]
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"values": qualities}, "epochs": {"value": 20},
                                        "nap": {"value": 0.1}})
    args = [sys.executable, "-m", "skill_neurons.cli", "sweep", str(sweep), "--dir", "d", "--executor", "local",
            "--parallel", "2", "--poll", "0.05"]
    runner = subprocess.Popen(args, cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, before = time.time() + 120, None
    while time.time() < deadline and runner.poll() is None:
        trials = state_of(here / "d")["trials"] if (here / "d" / "state.json").exists() else []
        states = [t["state"] for t in trials]
        if states.count("finished") >= 2 and any(mid_way(here / "d", t) for t in trials):
            before = trials
            break
        time.sleep(0.05)
    victims = [runner.pid, *descendants(runner.pid)]  # the submitter, submitit's local jobs, their trials
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    runner.wait()
    assert before is not None, "the sweep ended before it could be killed mid-way"
    sweep_id = state_of(here / "d")["sweep_id"]
    deadline = time.time() + 10
    while time.time() < deadline and sweep_runner_processes(sweep_id):
        time.sleep(0.1)
    assert not sweep_runner_processes(sweep_id)

    run_sweep(str(sweep), "--dir", "d", "--executor", "local", "--parallel", "2", "--poll", "0.05", cwd=here)
    after = state_of(here / "d")["trials"]
    assert sorted(t["params"]["quality"] for t in after) == qualities and all(t["state"] == "finished" for t in after)
    starts = collections.Counter(c["argv"][-1] for c in calls(here) if c["event"] == "start")
    ends = collections.Counter(c["argv"][-1] for c in calls(here) if c["event"] == "end")
    for t in before:
        if t["state"] == "finished":  # never ran again, and kept its run
            assert starts[f"--quality={t['params']['quality']}"] == 1
            kept = next(a for a in after if a["params"] == t["params"])
            assert kept["attempts"][-1]["run_id"] == t["attempts"][-1]["run_id"]
    assert sorted(ends) == sorted(f"--quality={q}" for q in qualities) and set(ends.values()) == {1}
    retried = [t for t in after if len(t["attempts"]) > 1]
    assert retried and all(t["attempts"][0]["state"] == "interrupted" for t in retried)


# ------------------------------------------------------------------------------ multi-node DDP
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_simulated_nodes_analyse_every_example_once_into_one_run(tmp_path, tiny_backbones):
    """2 nodes x 1 process (gloo on CPU), started as a scheduler starts them: two CLI processes that know their
    node by the variables Lightning's default environment reads (MASTER_ADDR/MASTER_PORT, NODE_RANK,
    LOCAL_RANK) and share one WANDB_RUN_ID. The skill-neuron analysis equals one process's, cell by cell, and
    one run folder with one W&B run is written."""
    # one example per forward pass: the same float32 activations whatever the shard (see test_skill_neurons.py)
    common = ["validate", *QUICK, "--config", str(ROOT / "configs/quickstart.yaml"), "--data.max_train_samples=47",
              "--data.max_eval_samples=37", "--trainer.callbacks=[{class_path: callbacks.skill_neurons."
              "SkillNeuronCallback, init_args: {batch_size: 1}}]"]
    cli_in_process([*common, "--runs_dir=one", "--trainer.logger=false"], cwd=tmp_path, check=True)
    port, nodes = free_port(), []
    for node in (0, 1):
        env = subprocess_env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
                              "LOCAL_RANK": "0", "WANDB_RUN_ID": "twonodes"})
        for key in [k for k in env if k.startswith(("SLURM_", "TORCHELASTIC_", "GROUP_RANK", "WORLD_SIZE"))]:
            del env[key]
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "skill_neurons.cli", *common, "--runs_dir=two", "--trainer.num_nodes=2",
             "--trainer.devices=1", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    one, two = only_run_dir(tmp_path / "one"), only_run_dir(tmp_path / "two")  # one run folder each
    assert two.name == "twonodes" and summary_of(two)["settings"]["world_size"] == 2
    assert len(list(two.glob("wandb/offline-run-*"))) == 1  # one W&B run, written by global rank 0
    for name in ("validation", "marker_typo"):
        a, meta_a = load_neuron_file(one / "skill_neurons" / f"{name}.safetensors")
        b, meta_b = load_neuron_file(two / "skill_neurons" / f"{name}.safetensors")
        assert meta_a["examples"] == meta_b["examples"] == 37 and meta_b["threshold_examples"] == 47
        assert sorted(a) == sorted(b)
        for key in a:
            if key == "threshold":  # a float64 mean whose summation order follows the shards
                torch.testing.assert_close(a[key], b[key], rtol=1.2e-7, atol=1e-30)
            else:
                assert torch.equal(a[key], b[key]), key


class FakeJob:
    """A submitit job as JobTrial sees it: done(), state, its result file, result()."""

    def __init__(self, tmp: Path, done: bool, state: str, outcome):
        self.job_id, self._done, self.state, self.outcome = "7_0", done, state, outcome
        self.paths = type("Paths", (), {"result_pickle": tmp / "result.pkl"})()
        if outcome is not None:
            self.paths.result_pickle.write_bytes(b"x")

    def done(self) -> bool:
        return self._done

    def result(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("done, state, outcome, expected", [
    (False, "RUNNING", None, (None, None, None)),
    (False, "PREEMPTED", None, (-1, "preempted", None)),  # submitit waits for a requeue that --no-requeue forbids
    (True, "COMPLETED", 0, (0, None, None)),
    (True, "COMPLETED", 2, (2, None, None)),  # the trial's own failure: its exit code
    (True, "TIMEOUT", 143, (143, "timeout", None)),  # killed at its time limit: started again
    (True, "NODE_FAIL", "uncompleted", (-1, "without a result", None)),
    (True, "FAILED", "failed", (1, None, "boom")),  # the job function itself failed: the command did not start
    (True, "RUNNING", "not-requeued", (-1, "timed out", None)),  # its time limit (USR2) or a preemption
    (True, "CANCELLED by 1000", None, (143, None, "cancelled")),  # scancel by a person: failed, not requeued
])
def test_a_jobs_end_is_read_as_the_trials_exit_code_or_an_interruption(tmp_path, done, state, outcome, expected):
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from skill_neurons.sweep.cluster import JobTrial

    not_requeued = FailedJobError("trace\nUncompletedJobError: Job not requeued because: timed-out and not "
                                  "checkpointable.")  # as submitit raises it in the job (core/job_environment.py)
    outcome = {"uncompleted": UncompletedJobError("no result"), "failed": FailedJobError("trace\nboom"),
               "not-requeued": not_requeued}.get(outcome, outcome)
    handle = JobTrial(FakeJob(tmp_path, done, state, outcome))
    code = handle.poll()
    want_code, want_interrupted, want_error = expected
    assert code == want_code
    assert (handle.interrupted is None) == (want_interrupted is None)
    assert want_interrupted is None or want_interrupted in handle.interrupted
    assert (handle.error is None) == (want_error is None) and (want_error is None or want_error in handle.error)


def test_an_ended_job_without_a_result_file_waits_for_it_then_counts_as_interrupted(tmp_path, monkeypatch):
    from skill_neurons.sweep import cluster

    handle = cluster.JobTrial(FakeJob(tmp_path, True, "FAILED", None))
    assert handle.poll() is None and handle.interrupted is None  # the file may still appear (NFS caches)
    monkeypatch.setattr(cluster, "RESULT_GRACE_S", 0.0)
    assert handle.poll() == -1 and "without a result" in handle.interrupted


@pytest.mark.subprocess  # local jobs are child processes
def test_a_local_job_at_its_time_limit_is_requeued_then_crashed(here, monkeypatch, capsys):
    """submitit's real time-limit path (USR2 before the limit, as SLURM's --signal): the job is not requeued by
    submitit, the runner starts the trial again under a new run id (--retries 1), then marks it crashed."""
    from skill_neurons.sweep import cluster

    make = cluster.make_executor

    def short_limit(*args, **kwargs):
        executor = make(*args, **kwargs)
        executor.update_parameters(timeout_min=1, signal_delay_s=57)  # USR2 after 3 s
        return executor

    monkeypatch.setattr(cluster, "make_executor", short_limit)
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"value": 1}, "epochs": {"value": 300}, "nap": {"value": 0.1}})
    assert sweep_command.main([str(sweep), "--dir", "d", "--executor", "local", "--retries", "1", "--poll", "0.1"]) == 1
    (trial,) = state_of(here / "d")["trials"]
    assert trial["state"] == "crashed" and [a["state"] for a in trial["attempts"]] == ["interrupted"] * 2
    assert "timed out" in trial["note"]
    assert [c["event"] for c in calls(here)] == ["start", "start"]  # two attempts, neither reached its end
