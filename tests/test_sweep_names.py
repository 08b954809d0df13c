"""Sweep trials are told apart: a trial's W&B name shows the values its sweep varies that the name does not show
yet (``tiny-roberta·marker·s33·lr3e-3``), and its W&B config and ``summary.json`` name the sweep and those values —
under ``skill-neurons sweep`` and ``wandb agent`` alike (both give the trial ``WANDB_SWEEP_PARAM_PATH``)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import yaml

from skill_neurons.sweep import config as sweep_config
from skill_neurons.sweep.runner import SweepRunner
from skill_neurons.sweep.state import Trial
from tests.helpers import ROOT


def assert_trials_named_and_recorded(grid: Path, state: dict) -> None:
    """For the real-CLI run of ``sweeps/quickstart.yaml`` in ``grid`` (tests/test_sweeps.py): every trial's
    offline W&B run is named by its learning rate (seed, backbone and task are in every name already), and its
    W&B config and summary.json name the sweep and the values it gave."""
    wandb = str(Path(sys.executable).parent / "wandb")
    names = set()
    for t in state["trials"]:
        lr, seed = t["params"]["model.learning_rate"], t["params"]["seed_everything"]
        run_id = t["attempts"][-1]["run_id"]
        link = next(grid.glob(f"offline-run-*-{run_id}"))
        records = [json.loads(line) for line in subprocess.run(
            [wandb, "leet", "inspect", "--json", str(link)], capture_output=True, text=True, timeout=60,
            check=True).stdout.splitlines()]
        record = next(r["run"] for r in records if r["type"] == "run")
        # W&B's own config at the start (the param file's values) and each later update (changed keys only)
        config = {k: v for r in records if r["type"] in ("run", "config")
                  for k, v in (r.get("run") or r)["config"]["update"].items()}
        assert record["display_name"] == f"tiny-roberta·marker·s{seed}·lr{'0.01' if lr == 0.01 else '3e-3'}"
        names.add(record["display_name"])
        assert config["sweep.name"] == "quickstart" and config["sweep.id"] == state["sweep_id"]
        assert config["sweep.parameters"] == ["model.learning_rate", "seed_everything"]
        assert config["model.learning_rate"] == lr and config["seed_everything"] == seed
        summary = json.loads((grid / "runs" / run_id / "summary.json").read_text())
        assert summary["sweep"] == {"name": "quickstart", "id": state["sweep_id"],
                                    "varied": ["model.learning_rate", "seed_everything"],
                                    "parameters": {"model.learning_rate": lr, "seed_everything": seed}}
    assert len(names) == 4


def quickstart_config(lr: float, seed: int) -> dict:
    """configs/quickstart.yaml as the CLI resolves it for one trial (nested, as run_identity gets it)."""
    config = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    config["model"]["init_args"]["learning_rate"], config["seed_everything"] = lr, seed
    return config


def test_trials_are_named_by_the_swept_values_that_differ(tmp_path):
    from records.run_identity import run_identity
    from records.sweep_trial import sweep_trial

    runner = SweepRunner(ROOT / "sweeps/quickstart.yaml", tmp_path / "d")
    runner.state = {"sweep_id": "sw123456"}
    names, trials = {}, {}
    for lr, seed in itertools.product([0.01, 0.003], [33, 34]):
        trial = Trial(number=len(names) + 1, params={"model.learning_rate": lr, "seed_everything": seed})
        run_id = f"run{len(names)}"
        sweep_config.save_param_file(tmp_path / "d" / "params" / f"config-{run_id}.yaml", trial.params)
        trials[(lr, seed)] = sweep_trial(runner.trial_env(trial, run_id, None))  # what the trial process reads
        names[(lr, seed)] = run_identity(quickstart_config(lr, seed), "fit", trials[(lr, seed)])[0]
    assert names == {(0.01, 33): "tiny-roberta·marker·s33·lr0.01", (0.01, 34): "tiny-roberta·marker·s34·lr0.01",
                     (0.003, 33): "tiny-roberta·marker·s33·lr3e-3", (0.003, 34): "tiny-roberta·marker·s34·lr3e-3"}
    trial = trials[(0.003, 34)]
    assert trial.to_summary() == {"name": "quickstart", "id": "sw123456",
                                  "varied": ["model.learning_rate", "seed_everything"],
                                  "parameters": {"model.learning_rate": 0.003, "seed_everything": 34}}
    assert trial.wandb_config() == {"sweep.name": "quickstart", "sweep.id": "sw123456",
                                    "sweep.parameters": ["model.learning_rate", "seed_everything"]}
    # outside a sweep the name is the plain one
    assert run_identity(quickstart_config(0.003, 34), "fit", None)[0] == "tiny-roberta·marker·s34"


def test_a_wandb_agent_trial_is_named_from_its_param_file_alone(tmp_path):
    """``wandb agent`` writes the param file and WANDB_SWEEP_ID only: every swept key counts as varied."""
    from records.run_identity import run_identity
    from records.sweep_trial import sweep_trial

    path = tmp_path / "config-x.yaml"
    sweep_config.save_param_file(path, {"model.learning_rate": 0.003, "model.prompt_length": 16,
                                        "seed_everything": 33})
    trial = sweep_trial({"WANDB_SWEEP_PARAM_PATH": str(path), "WANDB_SWEEP_ID": "abc123"})
    assert (trial.name, trial.id) == ("abc123", "abc123")
    config = quickstart_config(0.003, 33)
    config["model"]["init_args"]["prompt_length"] = 16
    assert run_identity(config, "fit", trial)[0] == "tiny-roberta·marker·s33·lr3e-3-p16"
    assert sweep_trial({}) is None


def test_varied_keys_leave_out_fixed_values_and_suppression_names_show_what_they_add():
    from records.run_identity import run_identity
    from records.sweep_trial import SweepTrial, varied_keys

    parameters = {"from_run": {"values": ["a", "b"]}, "suppression.rate": {"values": [0, 5, 15]},
                  "suppression.perturbation": {"values": ["zero"]}, "suppression.adversarial_neurons":
                  {"values": ["clean", "own"]}, "model.learning_rate": {"min": 0.001, "max": 0.1},
                  "data.task": {"value": "marker"}}
    keys = varied_keys(parameters)
    assert keys == ["from_run", "suppression.rate", "suppression.adversarial_neurons", "model.learning_rate"]
    trial = SweepTrial("s", "s", {}, tuple(k for k in keys if k != "model.learning_rate"))
    config = quickstart_config(0.01, 33)
    config["suppression"] = {"rate": 5.0, "selection": "skill", "adversarial_neurons": "own"}
    # the rate is in the name already; from_run is not a setting (the prompt's backbone, task and seed are shown)
    assert run_identity(config, "validate", trial)[0] == "tiny-roberta·marker·s33·adv-own·supp-skill-5%"
