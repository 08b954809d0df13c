"""A fit's prompt as a W&B ``model`` artifact, and evaluation from it (``--from_artifact``, ``--from_run wandb:``).

The offline path for real: a tiny fit logs its prompt artifact (offline W&B), and its artifact folder, copied as a
download would be, evaluates to the same metrics as ``--from_run runs/<id>``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from records.prompt_artifact import (
    ArtifactRefError, aliases, files_of, is_folder, parse_artifact_ref, parse_wandb_run, read_record, reference,
)
from records.prompt_checkpoint import PROMPT_KEY, prompt_only, read_checkpoint
from records.settings import RunSettings, artifact_name
from records.summary import find_run
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, summary_of, wandb_state
from tests.helpers.wandb_stub import StubServer

SMALL = ["--trainer.max_epochs=2", "--data.max_train_samples=256", "--data.max_eval_samples=40",
         "--data.batch_size=16", "--data.eval_batch_size=16", "--model.learning_rate=0.03", "--trainer.callbacks=[]"]


# ---------------------------------------------------------------- names and references
def test_the_prompt_artifact_is_named_per_configuration_beside_the_neuron_artifact():
    settings = RunSettings.read({"backbone": "google/flan-t5-base", "task": "sst2", "layout": "paper",
                                 "stage": "validate", "seed": 34})
    assert settings.prompt_artifact_name == "prompt-flan-t5-base-sst2-paper"  # one per configuration, any stage
    assert settings.artifact_name == "skill-neurons-flan-t5-base-sst2-paper-validate"
    assert artifact_name("roberta-base", "my task", None, kind="prompt") == "prompt-roberta-base-my_task-standard"
    assert aliases("ab12", 33) == ["best", "run-ab12", "seed-33"] and aliases("ab12", None) == ["best", "run-ab12"]


@pytest.mark.parametrize("spec, path", [("wandb:me/skill-neurons/ab12cd34", "me/skill-neurons/ab12cd34"),
                                        ("wandb:my-team/p.q/x_1", "my-team/p.q/x_1")])
def test_a_wandb_run_path_is_read(spec, path):
    assert parse_wandb_run(spec) == path


@pytest.mark.parametrize("spec", ["wandb:ab12cd34", "wandb:me/ab12cd34", "wandb:me/p/r/x", "wandb:me//r",
                                  "wandb:me/p/r:v1"])
def test_a_malformed_wandb_run_path_is_refused_naming_the_form(spec):
    with pytest.raises(ArtifactRefError, match="wandb:ENTITY/PROJECT/RUN_ID"):
        parse_wandb_run(spec)


def test_artifact_references_get_an_alias_and_malformed_ones_are_refused():
    assert parse_artifact_ref("me/p/prompt-x:seed-33") == "me/p/prompt-x:seed-33"
    assert parse_artifact_ref("me/p/prompt-x:v3") == "me/p/prompt-x:v3"
    assert parse_artifact_ref("me/p/prompt-x") == "me/p/prompt-x:latest"  # W&B's default version
    for spec in ("prompt-x:best", "p/prompt-x:best", "me/p/prompt-x:a:b", "me/p/q/prompt-x", "no/such dir/x"):
        with pytest.raises(ArtifactRefError, match="ENTITY/PROJECT/NAME:ALIAS"):
            parse_artifact_ref(spec)


def test_the_artifact_checkpoint_keeps_the_prompt_and_drops_training_state():
    prompt = torch.randn(4, 8)
    checkpoint = {"epoch": 3, "global_step": 30, "state_dict": {PROMPT_KEY: prompt, "backbone.w": torch.ones(9)},
                  "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4, 8)}}}], "loops": {}, "callbacks": {},
                  "hyper_parameters": {"backbone": "tiny-roberta", "_class_path": "x.Y"}, "skill_neurons": {"a": 1}}
    slim = prompt_only(checkpoint)
    assert set(slim) == {"epoch", "global_step", "state_dict", "hyper_parameters", "skill_neurons"}
    assert list(slim["state_dict"]) == [PROMPT_KEY] and torch.equal(slim["state_dict"][PROMPT_KEY], prompt)


# ---------------------------------------------------------------- the offline path, for real
# The fit takes about 30 s (2-core CPU): every test that uses it is in the slow tier.
@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_backbones):
    """A short tiny-RoBERTa fit (offline W&B); the working folder and the run folder."""
    work = tmp_path_factory.mktemp("artifact")
    cli_in_process(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *QUICK, *SMALL, "--runs_dir=fits"],
                   cwd=work, check=True)
    return work, only_run_dir(work / "fits")


@pytest.mark.slow
def test_a_finished_fit_logs_its_best_prompt_as_a_small_model_artifact(fitted):
    work, run = fitted
    folder = run / "prompt_artifact"
    assert is_folder(folder) and sorted(files_of(folder)) == ["checkpoints/best.ckpt", "config.yaml", "run.json"]
    best, slim = read_checkpoint(run / "checkpoints" / "best.ckpt"), read_checkpoint(folder / "checkpoints/best.ckpt")
    assert torch.equal(slim["state_dict"][PROMPT_KEY], best["state_dict"][PROMPT_KEY])  # bit-identical prompt
    assert list(slim["state_dict"]) == [PROMPT_KEY] and "optimizer_states" not in slim
    assert slim["hyper_parameters"] == best["hyper_parameters"] and slim["epoch"] == best["epoch"]
    size = (folder / "checkpoints/best.ckpt").stat().st_size
    assert size < 20_000 < (run / "checkpoints" / "best.ckpt").stat().st_size  # KBs: no optimizer state
    assert (folder / "config.yaml").read_text() == (run / "config.yaml").read_text()
    summary, record = summary_of(run), read_record(folder)
    assert record["run_id"] == summary["run_id"] == run.name and record["status"] == "finished"
    assert record["settings"] == summary["settings"] and record["best"] == summary["best"]
    name = RunSettings.from_summary(summary).prompt_artifact_name
    assert name == "prompt-tiny-roberta-marker-paper" and record["artifact"] == {"name": name, "type": "model"}
    assert reference(folder) == f"{name}:run-{run.name}"
    # the offline W&B run recorded the artifact (type model, its aliases, its three files) for `wandb sync`
    records = next((run / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
    for needle in (name, "best", f"run-{run.name}", "seed-33", "checkpoints/best.ckpt", "run.json"):
        assert needle.encode() in records, needle
    # the copy is not a second run: a search for the finished fit finds the run itself only
    assert find_run(f"{work / 'fits'}?task=marker&seed=33") == run


@pytest.fixture(scope="module")
def by_run(fitted) -> dict:
    """The summary of ``validate --from_run runs/<id>`` of the fit: the reference every other path must equal."""
    work, run = fitted
    cli_in_process(["validate", "--from_run", str(run), *QUICK, "--runs_dir=from_run"], cwd=work, check=True)
    return summary_of(only_run_dir(work / "from_run"))


@pytest.mark.slow
def test_a_downloaded_artifact_folder_evaluates_as_its_run_does(fitted, by_run, tmp_path):
    work, run = fitted
    download = tmp_path / "artifacts" / "prompt-tiny-roberta-marker-paper:v0"  # as W&B names a download
    shutil.copytree(run / "prompt_artifact", download)
    cli_in_process(["validate", "--from_artifact", str(download), *QUICK, "--runs_dir=from_artifact"], cwd=tmp_path,
                   check=True)
    by_artifact = summary_of(only_run_dir(tmp_path / "from_artifact"))
    metrics = by_run["validate_metrics"]
    assert {"val/acc", "adv/marker_typo/acc"} <= set(metrics) and 0 < metrics["val/acc"] < 1
    assert by_artifact["validate_metrics"] == metrics  # the same prompt and config: the same numbers
    source = by_artifact["prompt_source"]
    assert source["run_id"] == run.name and source["seed"] == 33 and source["task"] == "marker"
    assert source["artifact"] == f"prompt-tiny-roberta-marker-paper:run-{run.name}"
    assert "artifact" not in by_run["prompt_source"]
    used = by_artifact["prompt_artifact"]  # offline: W&B cannot record the use; the run says so
    assert used["ref"] == source["artifact"] and used["declared"] is False and "offline" in used["why"]
    names = [wandb_state(next(folder.glob("*/wandb/offline-run-*")))["name"]
             for folder in (work / "from_run", tmp_path / "from_artifact")]
    assert names == ["tiny-roberta·marker·s33·validate"] * 2  # W&B's record: named after the prompt's seed


@pytest.mark.slow
def test_wandb_references_resolve_through_wandbs_client_against_a_loopback_server(fitted, by_run, tmp_path,
                                                                                   monkeypatch):
    """``--from_artifact ENTITY/PROJECT/NAME:ALIAS`` and ``--from_run wandb:ENTITY/PROJECT/RUN_ID`` through the real
    ``wandb.Api`` (GraphQL, manifest, file downloads, digests checked by W&B) against a stub server on 127.0.0.1
    that serves the fit's logged artifact files and its W&B record (config and summary as W&B read them back)."""
    _, run = fitted
    folder, name = run / "prompt_artifact", "prompt-tiny-roberta-marker-paper"
    logged = wandb_state(next((run / "wandb").glob("offline-run-*")))
    with StubServer(folder, name, run.name, [*aliases(run.name, 33), "latest"], config=logged["config"],
                    summary=logged["summary"]) as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
        for option, spec, runs in (("--from_artifact", f"me/skill-neurons/{name}:seed-33", "by_ref"),
                                   ("--from_run", f"wandb:me/skill-neurons/{run.name}", "by_wandb_run")):
            cli_in_process(["validate", option, spec, *QUICK, f"--runs_dir={runs}"], cwd=tmp_path, check=True)
        refused = {(f"me/skill-neurons/{name}:seed-99", "--from_artifact"): "W&B has no such artifact version",
                   ("wandb:me/skill-neurons/nosuchrun", "--from_run"): "W&B has no such run"}
        for (spec, option), message in refused.items():
            proc = cli_in_process(["validate", option, spec, *QUICK, "--runs_dir=never"], cwd=tmp_path)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert {"graphql ArtifactMembershipByName", "graphql RunOutputArtifacts", "graphql Run",
            "GET /files/checkpoints/best.ckpt"} <= set(server.requests)
    download = tmp_path / "artifacts" / f"{name}:v0"
    for file_name, path in files_of(folder).items():  # W&B's download: the logged files, byte for byte
        assert (download / file_name).read_bytes() == path.read_bytes()
    assert json.loads((download / "wandb_artifact.json").read_text())["artifact"] == f"me/skill-neurons/{name}:v0"
    for runs in ("by_ref", "by_wandb_run"):
        summary = summary_of(only_run_dir(tmp_path / runs))
        assert summary["validate_metrics"] == by_run["validate_metrics"]
        assert summary["prompt_source"]["artifact"] == f"me/skill-neurons/{name}:v0"
        assert summary["prompt_source"]["run_id"] == run.name
        assert summary["prompt_artifact"]["declared"] is False  # these evaluation runs log offline
    assert not (tmp_path / "never").exists()


def test_from_artifact_mistakes_are_one_line_before_any_run(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "ab12cd34"  # a folder without a prompt artifact's files
    run.mkdir(parents=True)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cases = {("--from_artifact", "me/p/prompt-x:best"): "there are no W&B credentials",
             ("--from_run", "wandb:me/p/ab12cd34"): "or --from_run runs/<id>",("--from_artifact", "me/p/x:a:b"): "ENTITY/PROJECT/NAME:ALIAS",
             ("--from_run", "wandb:me/x"): "wandb:ENTITY/PROJECT/RUN_ID",
             ("--from_artifact", str(run / "prompt_artifact"), "--from_run", str(run)): "give one of them",
             ("--from_artifact", str(run)): "a folder without a prompt artifact's files"}
    for args, message in cases.items():
        proc = cli_in_process(["validate", *args, *QUICK, "--runs_dir=never"], cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1
    assert not (tmp_path / "never").exists()
