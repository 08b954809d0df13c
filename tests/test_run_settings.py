"""One ``RunSettings`` per run: what ``summary.json`` records equals what the run logged to W&B (real tiny fits,
their offline W&B config read back by W&B's own reader), older files' defaults, and where a prompt came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from records.neuron_files import SkillNeuronError, combine_neuron_files, save_neuron_file
from records.prompt_checkpoint import write_checkpoint
from records.run_identity import prompt_provenance
from records.settings import OLDER_FILES, RunSettings
from records.summary import run_of_checkpoint, summary_from_wandb, update_summary
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, summary_of, wandb_state

SMALL = ["--trainer.max_epochs=1", "--data.max_train_samples=32", "--data.max_eval_samples=32"]
# config file -> what its run is (the three kinds the round trip must hold for)
RUNS = {"quickstart": {"family": "masked_lm", "layout": "paper", "positions": "prompt"},
        "quickstart_t5": {"family": "seq2seq", "layout": "standard", "positions": "prompt"},
        "quickstart_gpt2": {"family": "causal_lm", "layout": "standard", "positions": "last"}}


@pytest.fixture(scope="module")
def fits(tmp_path_factory, tiny_backbones) -> dict[str, Path]:
    """One real one-epoch fit per config, logged to offline W&B: its run directory."""
    from lightning_modules.backbones import build_tiny_preset

    build_tiny_preset("tiny-gpt2")
    work = tmp_path_factory.mktemp("settings")
    runs = {}
    for name in RUNS:
        cli_in_process(["fit", "--config", str(ROOT / f"configs/{name}.yaml"), *QUICK, *SMALL,
                        f"--runs_dir=runs_{name}"], cwd=work, check=True)
        runs[name] = only_run_dir(work / f"runs_{name}")
    return runs


def logged(run: Path) -> tuple[dict, dict, Path]:
    """(config, summary) the run logged to W&B, as W&B reads its offline record back, and the record."""
    record = next((run / "wandb").glob("offline-run-*"))
    state = wandb_state(record)
    return state["config"], state["summary"], record


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_the_settings_logged_to_wandb_are_the_settings_in_summary_json(fits, name):
    config, _, _ = logged(fits[name])
    from_summary = RunSettings.from_summary(summary_of(fits[name]))
    assert RunSettings.from_wandb_config(config) == from_summary
    expected = {"backbone": config["model.backbone"], "task": "marker", "seed": 33, "stage": "fit", **RUNS[name]}
    assert {key: getattr(from_summary, key) for key in expected} == expected
    assert summary_of(fits[name])["settings"] == from_summary.to_json()  # written once, by RunSettings


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_read_back_from_wandb_keeps_its_layout_positions_and_artifact_name(fits, name):
    from skill_neurons.report.base import Run

    config, metrics, record = logged(fits[name])
    summary = summary_from_wandb("x", "finished", config, metrics)
    settings = RunSettings.from_summary(summary)
    assert settings == RunSettings.from_summary(summary_of(fits[name]))
    run = Run(summary, fits[name], "wandb")
    assert run.layout == (RUNS[name]["layout"], RUNS[name]["positions"]) and run.family == RUNS[name]["family"]
    assert run.run_settings.artifact_name.endswith(f"-marker-{RUNS[name]['layout']}")
    # the name the report declares is the name the skill-neuron callback logged its files under
    assert run.run_settings.artifact_name.encode() in next(record.glob("*.wandb")).read_bytes()


def test_a_summary_written_before_the_settings_existed_gets_the_older_files_defaults():
    old = {"stage": "fit", "settings": {"backbone": "google/t5-base-lm-adapt", "task": "sst2", "seed": 1,
                                        "precision": 32}}
    settings = RunSettings.from_summary(old)
    assert (settings.layout, settings.positions, settings.part) == ("standard", "prompt", "encoder") == (
        OLDER_FILES["layout"], OLDER_FILES["positions"], OLDER_FILES["part"])
    assert settings.family == "seq2seq" and settings.stage == "fit" and settings.precision == "32-true"
    assert RunSettings.from_summary({"settings": {"backbone": "roberta-base"}}).family == "masked_lm"
    # a setting recorded only in an older place: the skill-neuron section, the data section, the config
    older = {"settings": {"backbone": "roberta-base"}, "skill_neurons": {"analysed_positions": "mask"},
             "data": {"layout": "paper", "task": "qnli"}, "config": {"model.learning_rate": 0.3}}
    settings = RunSettings.from_summary(older)
    assert (settings.layout, settings.positions, settings.task, settings.learning_rate) == (
        "paper", "mask", "qnli", 0.3)
    assert settings.artifact_name == "skill-neurons-roberta-base-qnli-paper"


def test_to_json_and_from_summary_round_trip():
    settings = RunSettings(backbone="gpt2", family="causal_lm", task="sst2", seed=7, prompt_length=100,
                           layout="standard", positions="text_mean", part="encoder", stage="validate",
                           learning_rate=3e-3, precision="bf16-mixed", world_size=2)
    written = json.loads(json.dumps(settings.to_json()))
    assert set(written) == set(RunSettings.names())
    assert RunSettings.from_summary({"settings": written}) == settings
    assert RunSettings.from_neuron_file(settings.neuron_metadata()) == RunSettings(
        backbone="gpt2", family="causal_lm", task="sst2", positions="text_mean", stage="validate")
    assert settings.artifact_name == "skill-neurons-gpt2-sst2-standard-validate"


def test_a_config_logged_before_one_key_per_setting_is_read_from_its_run_keys():
    config = {"run.backbone": "roberta-base", "run.family": "masked_lm", "run.task": {"name": "sst2"},
              "run.seed": 3, "run.prompt_length": 100, "run.layout": "paper", "run.learning_rate": 0.01,
              "run.precision": "32-true", "run.world_size": 1}
    settings = RunSettings.from_wandb_config(config, stage="test")
    assert (settings.layout, settings.task, settings.seed, settings.stage) == ("paper", "sst2", 3, "test")
    # a callback list as logged before lists of classes were spelled out
    listed = {**config, "trainer.callbacks": [{"class_path": "callbacks.skill_neurons.SkillNeuronCallback",
                                               "init_args": {"part": "decoder", "positions": "prompt"}}]}
    assert RunSettings.from_wandb_config(listed).part == "decoder"


def test_run_of_checkpoint_is_the_run_directory_only_inside_checkpoints(tmp_path):
    run = tmp_path / "runs" / "ab12cd34"
    (run / "checkpoints").mkdir(parents=True)
    assert run_of_checkpoint(run / "checkpoints" / "best.ckpt") == run.resolve()
    assert run_of_checkpoint(tmp_path / "runs" / ".." / "runs" / run.name / "checkpoints" / "x.ckpt") == run.resolve()
    assert run_of_checkpoint(tmp_path / "imported" / "best.ckpt") is None
    assert run_of_checkpoint(run / "best.ckpt") is None
    link = tmp_path / "prompt.ckpt"
    link.symlink_to(run / "checkpoints" / "best.ckpt")  # a link to a run's checkpoint belongs to that run
    assert run_of_checkpoint(link) == run.resolve()


def test_prompt_provenance_reads_the_run_or_the_import_record(tmp_path):
    prompt = torch.zeros(4, 8)
    run = tmp_path / "runs" / "ab12cd34"
    write_checkpoint(run / "checkpoints" / "best.ckpt", prompt, {"backbone": "tiny-roberta"},
                     {"backbone": "tiny-roberta"}, "2.0")
    update_summary(run, run_id="ab12cd34", settings={"backbone": "tiny-roberta", "task": "marker", "seed": 35})
    source = prompt_provenance(run / "checkpoints" / "best.ckpt")
    assert (source["run_id"], source["run_dir"], source["task"], source["seed"]) == (
        "ab12cd34", str(run.resolve()), "marker", 35)
    imported = tmp_path / "imported.ckpt"
    write_checkpoint(imported, prompt, {"backbone": "tiny-roberta"},
                     {"backbone": "tiny-roberta", "imported_from": {"task": "sst2", "seed": 2}}, "2.0")
    source = prompt_provenance(imported)
    assert (source["run_id"], source["run_dir"], source["task"], source["seed"], source["backbone"]) == (
        None, None, "sst2", 2, "tiny-roberta")


def test_combining_neuron_files_applies_the_older_files_defaults(tmp_path):
    score = {"score": torch.rand(2, 3)}
    common = {"backbone": "tiny-roberta", "part": "encoder", "task": "marker"}
    save_neuron_file(tmp_path / "old.safetensors", score, common)  # before layout and positions were recorded
    save_neuron_file(tmp_path / "standard.safetensors", score, {**common, "layout": "standard",
                                                                "analysed_positions": "prompt"})
    save_neuron_file(tmp_path / "paper.safetensors", score, {**common, "layout": "paper",
                                                             "analysed_positions": "prompt"})
    combined, meta = combine_neuron_files([tmp_path / "old.safetensors", tmp_path / "standard.safetensors"])
    assert combined.shape == (2, 3) and meta["part"] == "encoder"
    with pytest.raises(SkillNeuronError, match=r"different layouts \['paper', 'standard'\]"):
        combine_neuron_files([tmp_path / "old.safetensors", tmp_path / "paper.safetensors"])
