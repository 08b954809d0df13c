"""`skill-neurons sweep`: W&B sweep files run without a W&B server, crash-safe; the shipped sweep files.

Real-CLI sweeps run the tiny quick-start backbone for a couple of batches. Bayes, hyperband, the SIGKILL
test and the argv test use a small synthetic trial program (``PROGRAM``) that reports like the CLI does:
``$SKILL_NEURONS_RUNS_DIR/$WANDB_RUN_ID/summary.json`` with a per-epoch ``history``, rewritten every epoch.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.helpers import QUICK, ROOT
from tests.test_sweep_names import assert_trials_named_and_recorded

from skill_neurons.sweep import command as sweep_command
from skill_neurons.sweep import config as sweep_config
from skill_neurons.sweep import processes as sweep_processes
from skill_neurons.sweep import runner as sweep_runner
from skill_neurons.sweep import state as sweep_state
from skill_neurons.sweep.config import engine, render_command
from skill_neurons.sweep.runner import SweepRunner
from skill_neurons.sweep.state import Trial

SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sweeps").glob("*.yaml"))
# A trial's budget: two batches, one validation batch, and no skill-neuron analysis at the end (not tested here).
TINY = [*QUICK, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--data.max_train_samples=64", "--data.max_eval_samples=32", "--data.eval_batch_size=32",
        "--trainer.callbacks=[]"]

PROGRAM = r'''
import json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
quality, epochs, nap = float(args.get("quality", 1)), int(args.get("epochs", 3)), float(args.get("nap", 0))
run_id = os.environ["WANDB_RUN_ID"]
run_dir = os.path.join(os.environ["SKILL_NEURONS_RUNS_DIR"], run_id)
os.makedirs(run_dir, exist_ok=True)
def log(event):
    with open(os.environ["CALLS_LOG"], "a") as f:
        f.write(json.dumps({"event": event, "run": run_id, "argv": sys.argv[1:],
                            "env": {k: v for k, v in os.environ.items() if k.startswith(("WANDB_", "CUDA_"))}}) + "\n")
history = []
def write(status):
    summary = {"status": status, "history": history, "summary": {"epochs_done": len(history)}}
    with open(os.path.join(run_dir, ".tmp"), "w") as f:
        json.dump(summary, f)
    os.replace(os.path.join(run_dir, ".tmp"), os.path.join(run_dir, "summary.json"))
log("start")
for epoch in range(epochs):
    time.sleep(nap)
    history.append({"epoch": epoch, "score": quality * (1 - 0.5 ** (epoch + 1))})
    write("running")
write("finished")
log("end")
'''


def synthetic_sweep(tmp_path: Path, name: str = "sweep.yaml", **config) -> Path:
    """A sweep file whose trials run ``PROGRAM`` (default command: ${env} ${interpreter} ${program} ${args})."""
    (tmp_path / "program.py").write_text(PROGRAM)
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"program": "program.py", **config}, sort_keys=False))
    return path


def calls(tmp_path: Path) -> list[dict]:
    log = tmp_path / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def state_of(directory: Path) -> dict:
    return json.loads((directory / "state.json").read_text())


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Run in tmp_path (trials start in the runner's directory), with the synthetic program's call log."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALLS_LOG", str(tmp_path / "calls.log"))
    return tmp_path


def run_sweep(*args: str, cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess: ``python -m skill_neurons.cli sweep ...``."""
    proc = subprocess.run([sys.executable, "-m", "skill_neurons.cli", "sweep", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"skill-neurons sweep {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny_copy(sweep: str, tmp_path: Path, **changes) -> Path:
    """A shipped sweep with absolute config paths and a tiny training budget (inserted before ${args})."""
    config = yaml.safe_load((ROOT / sweep).read_text())
    command = [str(ROOT / c) if c.startswith("configs/") else c for c in config["command"]]
    at = command.index("${args}")
    config["command"] = command[:at] + TINY + command[at:]
    config.update(changes)
    path = tmp_path / Path(sweep).name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ the shipped files
@pytest.mark.parametrize("sweep", SHIPPED)
def test_every_shipped_sweep_validates_and_its_first_configuration_parses(sweep, monkeypatch, capsys):
    from skill_neurons.lightning_cli import SkillNeuronsCLI

    raw = yaml.safe_load((ROOT / sweep).read_text())
    assert engine().schema_violations_from_proposed_config(raw) == []
    config = sweep_config.load_sweep_file(ROOT / sweep) and sweep_config.check_sweep_config(raw)
    first = engine().next_run(config, [])
    argv = render_command(config, {k: v["value"] for k, v in first.config.items()})
    assert argv[:4] == ["/usr/bin/env", "python", "-m", "skill_neurons.cli"]
    subcommand = argv[4]
    assert subcommand in ("fit", "validate", "test", "attack")  # ${args} after it: every DDP rank gets the values
    assert "${args}" in raw["command"] and raw["command"].index("${args}") > raw["command"].index(subcommand)
    if subcommand == "attack":  # not a Lightning stage: its own parser reads every option of the trial
        from skill_neurons.attack.command import build_parser, check_options

        check_options(build_parser().parse_args(argv[5:]))
        return
    if subcommand != "fit":
        return  # evaluation sweeps (--from_run) need trained prompts to parse: tests/test_experiments.py
    monkeypatch.chdir(ROOT)  # relative config paths, as `wandb agent` run from the repository
    monkeypatch.setattr(sys, "argv", ["skill-neurons"])
    with pytest.raises(SystemExit) as exit_:
        SkillNeuronsCLI(args=[*argv[4:], "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["init_args"]["group"] is None  # W&B groups the runs by the sweep
    for key, value in first.config.items():
        if key != "config":
            node = printed
            for part in key.split("."):
                node = node[part] if part in node else node["init_args"][part]
            assert node == pytest.approx(value["value"])


def test_paper_grid_is_p1s_whole_training_grid_of_nine_tasks():
    config = yaml.safe_load((ROOT / "sweeps/paper_grid.yaml").read_text())
    assert config["method"] == "grid"
    files = config["parameters"]["config"]["values"]
    p1_tasks = {"sst2", "imdb", "movie_rationales", "mnli", "qnli", "qqp", "mrpc", "ethics_deontology", "ethics_justice"}
    assert sorted(files) == sorted(f"configs/{family}/{task}.yaml" for family in ("roberta", "t5") for task in p1_tasks)
    assert all((ROOT / f).is_file() and "layout: paper" in (ROOT / f).read_text() for f in files)
    assert config["parameters"]["seed_everything"]["values"] == [33, 34, 35, 36, 37]
    grid = sweep_config.check_sweep_config(config)
    runs = []
    while (run := engine().next_run(grid, runs)) is not None:
        runs.append(run)
    assert len(runs) == 90


def test_search_is_bayes_over_log_lr_and_prompt_length_with_hyperband_on_val_acc():
    config = yaml.safe_load((ROOT / "sweeps/search.yaml").read_text())
    assert config["method"] == "bayes" and config["metric"] == {"name": "val/acc", "goal": "maximize"}
    assert config["parameters"]["model.learning_rate"]["distribution"] == "log_uniform_values"
    assert "model.prompt_length" in config["parameters"] and config["early_terminate"]["type"] == "hyperband"


@pytest.mark.subprocess
def test_import_sweeps_from_the_repository_root_is_the_engine_not_the_yaml_folder():
    proc = subprocess.run([sys.executable, "-c", "import sweeps; print(sweeps.__file__, sweeps.next_run)"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    path = Path(proc.stdout.split()[0])
    assert path.name == "__init__.py" and ROOT / "sweeps" not in path.parents
    assert not (ROOT / "sweeps" / "__init__.py").exists()


# -------------------------------------------------------------------------- rendering, as wandb agent
AWKWARD = {"lr": 1e-05, "small": 0.0001, "big": 100000000.0, "flag": True, "disabled": False,
           "layers": [1, 2.5, "a"], "nothing": None, "name": "a b", "nested": {"x": 1}}


def test_fallback_copy_of_the_agents_rendering_equals_wandbs_own():
    from wandb.sdk.launch.sweeps.utils import (
        create_sweep_command,
        create_sweep_command_args,
    )

    args = {"args": {k: {"value": v} for k, v in AWKWARD.items()}}
    assert sweep_config._create_sweep_command_args(args) == create_sweep_command_args(args)
    os.environ["SWEEP_TEST_VAR"] = "here"
    try:
        command = ["a", "${envvar:SWEEP_TEST_VAR}/x", "${envvar:NOT_SET_ANYWHERE}", "${args}"]
        assert sweep_config._create_sweep_command(list(command)) == create_sweep_command(list(command))
    finally:
        del os.environ["SWEEP_TEST_VAR"]


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_trial_argv_and_environment_are_what_wandb_agent_gives(here, capsys):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    parameters = {k: ({"values": [v]} if isinstance(v, (list, type(None))) else {"value": v})
                  for k, v in AWKWARD.items() if k != "nested"}  # the engine reads a dict value as nesting
    sweep = synthetic_sweep(here, method="grid", parameters=parameters)
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.05"]) == 0
    (start,) = [c for c in calls(here) if c["event"] == "start"]
    # wandb agent: args in the order the engine gives them, each "--key=str(value)"
    expected = create_sweep_command_args({"args": {k: {"value": AWKWARD[k]} for k in sorted(parameters)}})["args"]
    assert start["argv"] == expected
    assert {"--lr=1e-05", "--flag=True", "--disabled=False", "--layers=[1, 2.5, 'a']", "--nothing=None",
            "--name=a b", "--big=100000000.0", "--small=0.0001"} == set(start["argv"])
    state = state_of(here / "d")
    (trial,) = state["trials"]
    env = start["env"]
    assert env["WANDB_RUN_ID"] == trial["attempts"][0]["run_id"]
    assert env["WANDB_RUN_GROUP"] == sweep.stem  # a sweep without `name:` is grouped by its file's stem
    assert env["WANDB_MODE"] == "offline"
    params = yaml.safe_load(Path(env["WANDB_SWEEP_PARAM_PATH"]).read_text())
    assert params["lr"] == {"value": 1e-05} and params["nothing"] == {"value": None}


# ------------------------------------------------------------------------------ real CLI sweeps
@pytest.mark.subprocess
@pytest.mark.slow
def test_quickstart_grid_runs_its_four_trials_with_the_real_cli_and_stops(tmp_path, tiny_backbones):
    sweep = tiny_copy("sweeps/quickstart.yaml", tmp_path)
    proc = run_sweep(str(sweep), "--dir", "grid", "--workers", "2", "--poll", "0.2", cwd=tmp_path)
    state = state_of(tmp_path / "grid")
    trials = state["trials"]
    assert [t["state"] for t in trials] == ["finished"] * 4
    combos = {(t["params"]["model.learning_rate"], t["params"]["seed_everything"]) for t in trials}
    assert combos == set(itertools.product([0.01, 0.003], [33, 34]))
    for t in trials:
        run = tmp_path / "grid" / "runs" / t["attempts"][0]["run_id"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["run_id"] == run.name
        assert summary["config"]["model.learning_rate"] == t["params"]["model.learning_rate"]
        assert summary["config"]["seed_everything"] == t["params"]["seed_everything"]
        assert t["metrics"]["best/val/acc"] == summary["best"]["val/acc"]
        assert len(list((tmp_path / "grid").glob(f"offline-run-*-{run.name}"))) == 1  # linked for leet/sync
        log = run / "trial.log"  # the trial's output, linked into its run folder
        assert log.is_symlink() and log.resolve() == (tmp_path / "grid" / "logs" / f"{run.name}.log").resolve()
        assert log.read_text().startswith("$ ")
    # the offline W&B runs are grouped by the sweep's name
    wandb = str(Path(sys.executable).parent / "wandb")
    one_run = str(next((tmp_path / "grid").glob("offline-run-*")))
    record = subprocess.run([wandb, "leet", "inspect", "--json", one_run], capture_output=True, text=True,
                            timeout=60, check=True)
    run_record = next(json.loads(line)["run"] for line in record.stdout.splitlines() if '"type":"run"' in line)
    assert run_record["run_group"] == state["config"]["name"] == "quickstart"  # W&B has no offline sweeps
    assert_trials_named_and_recorded(tmp_path / "grid", state)  # names differ by learning rate; W&B config, summary
    # the table: one row per trial (its run directory last), the best one starred
    lines = proc.stdout[proc.stdout.index(f"sweep {state['sweep_id']} (grid"):].splitlines()
    assert "4 trials — 4 finished; objective val/acc (maximize)" in lines[0]
    rows = lines[2:6]
    assert [row.split()[-1] for row in rows] == [f"grid/runs/{t['attempts'][-1]['run_id']}" for t in trials]
    assert sum(" * " in row for row in rows) == 1 and lines[6].startswith("* best trial")


@pytest.mark.subprocess
@pytest.mark.slow
def test_random_sweep_with_count_runs_exactly_count_real_trials(tmp_path, tiny_backbones):
    sweep = tiny_copy("sweeps/quickstart.yaml", tmp_path, method="random", parameters={
        "model.learning_rate": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1},
        "seed_everything": {"values": [33, 34, 35]}})
    run_sweep(str(sweep), "--count", "3", "--dir", "random", "--workers", "3", "--poll", "0.2", cwd=tmp_path)
    trials = state_of(tmp_path / "random")["trials"]
    assert len(trials) == 3 and all(t["state"] == "finished" for t in trials)
    assert all(0.001 <= t["params"]["model.learning_rate"] <= 0.1 for t in trials)
    assert len(list((tmp_path / "random" / "runs").iterdir())) == 3
    # the same command again: the sweep is complete, nothing runs
    out = run_sweep(str(sweep), "--count", "3", "--dir", "random", cwd=tmp_path).stdout
    assert "3 trials so far" in out and "started" not in out
    assert len(state_of(tmp_path / "random")["trials"]) == 3


# ------------------------------------------------------------------------------ engine behaviour
@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_bayes_proposes_configurations_from_finished_results(here, capsys):
    import numpy as np

    sweep = synthetic_sweep(here, method="bayes", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"min": 0.0, "max": 4.0}, "epochs": {"value": 1}})
    runner = SweepRunner(sweep, "bayes", count=5, poll=0.02)
    assert runner.run() == 0
    assert [t.state for t in runner.trials] == ["finished"] * 5
    assert all(t.search_info["predicted_value"] is not None for t in runner.trials)
    # what the engine sees of a finished trial: the metric it reported (summary and history)
    first = runner._engine_runs()[0]
    assert first.metric_extremum("score", "maximum") == pytest.approx(runner.trials[0].params["quality"] / 2)

    def next_quality(scores: dict[float, float]) -> float:
        """The engine's next proposal after four finished trials that reported ``scores``."""
        runner.trials = [Trial(number=i + 1, params={"quality": q, "epochs": 1}, state="finished",
                               attempts=[sweep_state.Attempt(run_id=f"r{i}", started=0.0, state="finished")],
                               metrics={"score": s}) for i, (q, s) in enumerate(scores.items())]
        np.random.seed(0)
        return runner._propose().params["quality"]

    # The same four configurations with opposite results: the proposal follows the results.
    assert next_quality({0.5: 0.25, 1.5: 0.75, 2.5: 1.25, 3.5: 1.75}) > 3.5
    assert next_quality({0.5: -0.25, 1.5: -0.75, 2.5: -1.25, 3.5: -1.75}) < 0.5


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_hyperband_stops_a_trial_that_is_clearly_worse(here, capsys):
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2},
                            parameters={"quality": {"values": [1.0, 0.9, 0.1]}, "epochs": {"value": 12},
                                        "nap": {"value": 0.1}})
    runner = SweepRunner(sweep, "hb", poll=0.02)
    assert runner.run() == 0
    good, close, bad = runner.trials
    assert good.state == close.state == "finished" and len(good.history) == len(close.history) == 12
    assert bad.state == "stopped" and 3 <= len(bad.history) < 12 and "STOP" in bad.note
    assert "stopped" in capsys.readouterr().out
    assert [c["event"] for c in calls(here) if "--quality=0.1" in c["argv"]] == ["start"]  # never ended itself


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_workers_pin_one_gpu_each(here, monkeypatch, capsys):
    monkeypatch.setattr(sweep_runner, "visible_gpus", lambda: ["3", "5"])
    sweep = synthetic_sweep(here, method="grid", parameters={"quality": {"values": [1, 2, 3, 4]},
                                                             "nap": {"value": 0.3}})
    assert sweep_command.main([str(sweep), "--dir", "d", "--workers", "2", "--poll", "0.02"]) == 0
    starts = [c for c in calls(here) if c["event"] == "start"]
    assert len(starts) == 4 and {c["env"]["CUDA_VISIBLE_DEVICES"] for c in starts} == {"3", "5"}
    first_two = {c["env"]["CUDA_VISIBLE_DEVICES"] for c in starts[:2]}
    assert first_two == {"3", "5"}  # the two trials running together got different GPUs


# ------------------------------------------------------------------------------ crash safety
@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkilled_runner_resumes_without_repeating_finished_trials(here):
    qualities = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"values": qualities}, "epochs": {"value": 10},
                                        "nap": {"value": 0.1}})
    args = [sys.executable, "-m", "skill_neurons.cli", "sweep", str(sweep), "--dir", "d", "--workers", "2",
            "--poll", "0.05"]
    runner = subprocess.Popen(args, cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, before = time.time() + 120, None
    while time.time() < deadline and runner.poll() is None:
        with_state = (here / "d" / "state.json").exists()
        trials = state_of(here / "d")["trials"] if with_state else []
        states = [t["state"] for t in trials]
        if states.count("finished") >= 2 and "running" in states:
            before = trials
            break
        time.sleep(0.05)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert before is not None, "the sweep ended before it could be killed mid-way"
    sweep_id = state_of(here / "d")["sweep_id"]
    # the runner's death took its running trials with it (SIGTERM from the kernel)
    deadline = time.time() + 10
    while time.time() < deadline and sweep_runner_processes(sweep_id):
        time.sleep(0.1)
    assert not sweep_runner_processes(sweep_id)

    status = run_sweep("--status", "d", cwd=here).stdout
    assert "no runner is working on it; resume with" in status and "pending" in status

    run_sweep(str(sweep), "--dir", "d", "--workers", "2", "--poll", "0.05", cwd=here)
    after = state_of(here / "d")["trials"]
    assert sorted(t["params"]["quality"] for t in after) == qualities  # each combination once ...
    assert all(t["state"] == "finished" for t in after)  # ... and done
    finished_before = {t["attempts"][-1]["run_id"]: t["params"]["quality"] for t in before if t["state"] == "finished"}
    starts = collections.Counter(c["argv"][-1] for c in calls(here) if c["event"] == "start")
    ends = collections.Counter(c["argv"][-1] for c in calls(here) if c["event"] == "end")
    for run_id, quality in finished_before.items():
        assert starts[f"--quality={quality}"] == 1  # finished trials never ran again
        assert next(t for t in after if t["params"]["quality"] == quality)["attempts"][-1]["run_id"] == run_id
    assert all(n == 1 for n in ends.values()) and len(ends) == len(qualities)
    retried = [t for t in after if len(t["attempts"]) > 1]
    assert retried and all(t["attempts"][0]["state"] == "interrupted" for t in retried)


def sweep_runner_processes(sweep_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"{sweep_config.MARKER_ENV}={sweep_id}/".encode() in environ:
                found.append(int(entry.name))
    return [p for p in found if sweep_processes._alive(p)]


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_restart_keeps_a_trial_that_finished_unrecorded_and_retries_an_interrupted_one(here, capsys):
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"values": [0.5, 1.0]}})
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.02"]) == 0
    # As if the runner had died while both were running: trial 1 mid-way, trial 2 after it had finished.
    state = state_of(here / "d")
    for trial in state["trials"]:
        trial["state"], trial["attempts"][-1]["state"] = "running", "running"
    first_run = here / "d" / "runs" / state["trials"][0]["attempts"][0]["run_id"] / "summary.json"
    first_run.write_text(json.dumps({**json.loads(first_run.read_text()), "status": "running"}))
    (here / "d" / "state.json").write_text(json.dumps(state))
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.02"]) == 0
    one, two = (Trial.from_json(t) for t in state_of(here / "d")["trials"])
    assert one.state == "finished" and [a.state for a in one.attempts] == ["interrupted", "finished"]
    assert two.state == "finished" and len(two.attempts) == 1 and two.note == "finished before the runner stopped"
    assert [c["argv"][-1] for c in calls(here) if c["event"] == "start"].count("--quality=1.0") == 1


# ------------------------------------------------------------------------------ bad input
def sweep_error(argv: list[str], capsys) -> str:
    assert sweep_command.main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("method: grid\nparameters: {a: {values: [1, 2]}\n", "is not valid YAML (line 3, column 1)"),
    ("- just\n- a list\n", "must be a mapping with method, metric, parameters and command"),
    ("method: grd\nparameters: {a: {values: [1]}}\ncommand: [x, '${args}']\n",
     "unknown method 'grd' in bad.yaml — use one of: grid, random, bayes"),
    ("method: grid\nparameters: {a: {values: 1}}\ncommand: [x, '${args}']\n", "is not a valid W&B sweep config"),
    ("method: random\nparameters: {a: {values: [1]}}\ncommand: [x, '${args}']\n",
     "a random sweep never ends by itself — give --count N"),
    ("method: bayes\nparameters: {a: {min: 0.0, max: 1.0}}\ncommand: [x, '${args}']\n",
     "bayes search needs a metric — add `metric: {name: val/acc, goal: maximize}`"),
    ("method: grid\nparameters: {a: {values: [1]}}\ncommand: [x, fit]\n",
     "has no ${args}, so trials would not get the parameters"),
    ("method: grid\nparameters: {a: {values: [1]}}\ncommand: [x, fit, --runs_dir=r, '${args}']\n",
     "sets --runs_dir; leave it out"),
])
def test_bad_sweep_files_get_one_clear_message_before_any_trial(here, capsys, text, message):
    (here / "bad.yaml").write_text(text)
    assert message in sweep_error(["bad.yaml", "--dir", "d"], capsys)
    assert not (here / "d" / "runs").exists() or not any((here / "d" / "runs").iterdir())


def test_missing_sweep_file_and_missing_status_dir(here, capsys):
    assert "sweep file 'nope.yaml' does not exist" in sweep_error(["nope.yaml"], capsys)
    assert "no sweep in nowhere" in sweep_error(["--status", "nowhere"], capsys)


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_parameter_key_the_cli_does_not_accept_is_caught_before_any_trial(tmp_path, tiny_backbones, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tiny_copy("sweeps/quickstart.yaml", tmp_path, parameters={"model.lr": {"values": [0.1, 0.2]},
                                                                      "seed_everything": {"values": [33, 34]}})
    err = sweep_error([str(sweep), "--dir", "d"], capsys)
    assert "the first configuration of" in err and "does not parse, so no trial was started" in err
    assert "unrecognized option --model.lr=0.1 — did you mean --model.learning_rate?" in err
    assert state_of(tmp_path / "d")["trials"] == [] and not any((tmp_path / "d" / "runs").iterdir())


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_metric_that_no_trial_reports_is_named_after_the_first_trial(here, capsys):
    sweep = synthetic_sweep(here, method="grid", metric={"name": "accuracy", "goal": "maximize"},
                            parameters={"quality": {"values": [1, 2, 3]}})
    err = sweep_error([str(sweep), "--dir", "d", "--poll", "0.02"], capsys)
    assert "metric 'accuracy' (metric.name in" in err and "is not reported by trial 1" in err
    assert "it reports: epoch, epochs_done, score — fix metric.name" in err
    assert len(state_of(here / "d")["trials"]) == 1  # no more trials were started
    # fixed in the file, the same command goes on; the finished trial is kept
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"values": [1, 2, 3]}})
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.02"]) == 0
    assert len([c for c in calls(here) if c["event"] == "start"]) == 3


def test_more_workers_than_gpus_is_refused(here, monkeypatch, capsys):
    monkeypatch.setattr(sweep_runner, "visible_gpus", lambda: ["0"])
    sweep = synthetic_sweep(here, method="grid", parameters={"quality": {"values": [1, 2]}})
    err = sweep_error([str(sweep), "--dir", "d", "--workers", "2"], capsys)
    assert "--workers 2 asks for one GPU per trial but 1 is visible (0) — use --workers 1" in err
    assert not (here / "d").exists()


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_a_changed_sweep_file_is_refused_for_a_started_sweep(here, capsys):
    sweep = synthetic_sweep(here, method="grid", parameters={"quality": {"values": [1]}})
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.02"]) == 0
    sweep = synthetic_sweep(here, method="grid", parameters={"quality": {"values": [1, 2]}})
    err = sweep_error([str(sweep), "--dir", "d"], capsys)
    assert "started from a different sweep file (parameters differ) — give another --dir" in err


@pytest.mark.subprocess  # trials (or the CLI's dry run) are child processes
def test_a_corrupt_state_file_is_recovered_from_its_backup(here, capsys):
    sweep = synthetic_sweep(here, method="grid", metric={"name": "score", "goal": "maximize"},
                            parameters={"quality": {"values": [0.5, 1.0]}})
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.02"]) == 0
    good = state_of(here / "d")
    backup = json.loads((here / "d" / "state.json.bak").read_text())
    assert backup["sweep_id"] == good["sweep_id"]  # the state before the last write
    (here / "d" / "state.json").write_text('{"sweep_id": "x", "trials": [')  # truncated by a full disk
    capsys.readouterr()
    assert sweep_command.main(["--status", "d"]) == 0
    out = capsys.readouterr().out
    assert "state.json is corrupt — using the previous state from" in out and good["sweep_id"] in out
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.02"]) == 0
    recovered = state_of(here / "d")
    assert recovered["sweep_id"] == good["sweep_id"]
    assert sorted(t["params"]["quality"] for t in recovered["trials"] if t["state"] == "finished") == [0.5, 1.0]


def test_a_corrupt_state_file_without_backup_is_one_clear_error(here, capsys):
    (here / "d").mkdir()
    (here / "d" / "state.json").write_text("not json")
    err = sweep_error(["--status", "d"], capsys)
    assert "state.json is corrupt and has no readable backup" in err and "missing" not in err
