"""Silently wrong input and unclear errors (issue 27, items 6-8, 11, 12): every mistake is one line naming the fix,
before a run folder is claimed; a resume keeps its run's settings; no NaN is trained, loaded or recorded."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import lightning.pytorch  # noqa: F401 (its log handler binds stderr at import: not inside a capsys test)
import pytest
import torch

from tests.helpers import QUICK, ROOT, cli_in_process
from tests.helpers.tiny import marker_task

FAST = ["--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, "--trainer.max_epochs=1",
        "--data.max_train_samples=64", "--data.max_eval_samples=64", "--data.batch_size=16",
        "--trainer.logger=false"]


def one_line_error(argv: list[str], capsys, runs: Path | None = None) -> str:
    """Run the CLI in-process and expect a refusal: exit 2, at most 3 lines on stderr (the error, and for an
    option error the pointer to --help), no traceback, no usage, and no run folder left under ``runs``."""
    from skill_neurons.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Seed set to")]
    assert exit_.value.code == 2, err
    assert len(lines) <= 3 and "Traceback" not in err and "usage:" not in err, err
    errors = [line for line in lines if line.startswith("skill-neurons: error:")]
    assert len(errors) == 1, err
    if runs is not None:
        assert not runs.exists() or list(runs.iterdir()) == [], list(runs.iterdir())
    return err


def strict_json(path: Path) -> dict:
    """``path`` read by a strict JSON reader (``NaN``/``Infinity`` are errors, as in JavaScript or jq)."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_backbones):
    """One finished one-epoch fit run ``R`` (in-process, no W&B)."""
    from skill_neurons.cli import main

    runs = tmp_path_factory.mktemp("inputs") / "runs"
    main(["fit", *FAST, f"--runs_dir={runs}", "--run_id=R"])
    return runs / "R"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 12. option errors: one line, --help, exit 2
@pytest.mark.parametrize("option, expected", [
    (["--model.learnig_rate=0.1"], ["--model.learnig_rate", "did you mean --model.learning_rate?"]),
    (["--data.batch_sise=3"], ["--data.batch_sise", "did you mean --data.batch_size?"]),
    (["--data.batch_size=1.5"], ["--data.batch_size", "1.5"]),
    (["--model.learning_rate=nan"], ["--model.learning_rate=nan"]),
    (["--trainer.callbacks.positions=bogus"], ["positions=bogus", "'prompt'"]),
    (["--config", "/no/such/config.yaml"], ["--config", "/no/such/config.yaml", "does not exist"]),
])
def test_option_errors_are_one_line_with_a_pointer_to_help(option, expected, tmp_path, capsys):
    err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", *option], capsys, tmp_path / "runs")
    for text in expected:
        assert text in err, err
    assert "`skill-neurons fit --help` lists the options" in err
    assert len(err.strip().splitlines()) == 2  # the error and the pointer: no usage (was 84-106 lines)


def test_debug_keeps_the_parsers_full_message(tmp_path, capsys):
    from skill_neurons.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", "--model.learnig_rate=0.1", "--debug"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: skill-neurons") and len(err.splitlines()) > 20


def test_one_line_keeps_the_option_and_the_reason_of_nested_messages():
    from skill_neurons.parse_errors import one_line

    nested = ('Parser key "model":\n  Does not validate against any of the types in typing.Optional[...]:\n'
              '    - Problem with given class_path \'lightning_modules.MaskedLMPromptTuning\':\n'
              '        Parser key "learning_rate":\n          Expected a <class \'float\'>. Got value: x\n'
              "    - Expected a <class 'NoneType'>\n  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
              "  Given value: NestedArg(key='learning_rate', val='x')")
    assert one_line(nested, []) == "--model.learning_rate=x: Expected a <class 'float'>. Got value: x"
    assert one_line("Unrecognized arguments: --data.tsk=sst2", ["--data.task"]) == (
        "unrecognized option --data.tsk=sst2 — did you mean --data.task?")
    assert one_line("Unrecognized arguments: --zzz=1", ["--data.task"]) == "unrecognized option --zzz=1"
    # a near miss of the group is not offered for an unknown option of it
    assert one_line("Unrecognized arguments: --trainer.logger.api_token=K", ["--trainer.logger.help"]) == (
        "unrecognized option --trainer.logger.api_token=K")
    assert one_line("Unrecognized arguments: --mdoel.learning_rate=1", ["--model.learning_rate"]).endswith(
        "did you mean --model.learning_rate?")
    assert one_line("Unrecognized arguments: --data.bs=8", []).endswith("did you mean --data.batch_size?")


# ---------------------------------------------------------------- 8 + 11. bad values: one line before any work
@pytest.mark.parametrize("option, expected", [
    (["--model.learning_rate=0"], "--model.learning_rate=0.0: give a positive number"),
    (["--model.learning_rate=-0.01"], "--model.learning_rate=-0.01: give a positive number"),
    (["--model.weight_decay=-1"], "--model.weight_decay=-1.0: give a number of at least 0"),
    (["--model.adam_eps=-1e-8"], "--model.adam_eps=-1e-08: give a positive number"),
    (["--data.num_workers=-1"], "--data.num_workers=-1: give a whole number of at least 0"),
    (["--model.prompt_init=text"], "--model.prompt_init=text needs the text: add --model.prompt_init_text"),
    (["--model.prompt_length=100000"], "--model.prompt_length=100000 is more than backbone 'tiny-roberta' takes "
                                       "(256 positions) — use --model.prompt_length=256 or less"),
    (["--config", str(ROOT / "configs/quickstart_t5.yaml"), "--data.max_text_length=100000"],
     "--data.max_text_length=100000 is more than backbone 'tiny-t5' takes (512 positions)"),
    (["--model.backbone=/no/such/backbone_dir"], "backbone directory '/no/such/backbone_dir' does not exist"),
    (["--data.extra_adversarial={a: x.tsv, a: y.tsv}"], "--data.extra_adversarial: duplicate key 'a'"),
])
def test_bad_values_are_refused_in_one_line_naming_the_fix(option, expected, tmp_path, capsys, tiny_backbones):
    err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", *option], capsys, tmp_path / "runs")
    assert expected in err, err


def test_sizes_and_model_options_are_refused_before_the_backbone_loads(tmp_path, capsys, tiny_backbones):
    """The CLI checks the option rules before it builds the model: a bad size is named even when the backbone
    could not be loaded at all (a big hub model would otherwise load for minutes before the one-line error)."""
    for option, expected in (("--data.batch_size=0", "--data.batch_size=0"),
                             ("--model.learning_rate=0", "--model.learning_rate=0.0")):
        err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", option,
                              "--model.backbone=/no/such/backbone_dir"], capsys, tmp_path / "runs")
        assert expected in err and "backbone" not in err, err


def test_model_options_are_checked_without_the_cli():
    from lightning_modules import MaskedLMPromptTuning
    from lightning_modules.soft_prompt import OptionError

    with pytest.raises(OptionError, match="learning_rate=0.0"):
        MaskedLMPromptTuning(backbone="tiny-roberta", learning_rate=0.0)
    with pytest.raises(OptionError, match="adam_eps=inf"):
        MaskedLMPromptTuning(backbone="tiny-roberta", adam_eps=math.inf)


@pytest.mark.parametrize("change, expected", [
    ({"label_names": ["absent", "absent"]}, "label name(s) ['absent'] given more than once"),
    ({"verbalizers": {"masked_lm": ["", "yes"]}}, "masked_lm verbalizer word '' (for label 'absent') is empty"),
])
def test_duplicate_labels_and_empty_verbalizer_words_are_refused(change, expected, tmp_path, capsys,
                                                                  tiny_backbones):
    from datamodules.tasks import TaskError, get_task

    task = {**marker_task(), **change}
    with pytest.raises(TaskError) as error:
        get_task(task)
    assert expected in str(error.value)
    err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", f"--data.task={json.dumps(task)}"],
                         capsys, tmp_path / "runs")
    assert expected in err


def test_interpolation_of_a_missing_key_or_a_cycle_is_one_line(tmp_path, capsys):
    missing, cycle = tmp_path / "missing.yaml", tmp_path / "cycle.yaml"
    missing.write_text("data:\n  cache_dir: ${nosuch.key}\n")
    cycle.write_text("runs_dir: ${data.cache_dir}\ndata:\n  cache_dir: ${runs_dir}\n")
    err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", "--config", str(missing)], capsys)
    assert "data.cache_dir: Interpolation key 'nosuch.key' not found" in err
    err = one_line_error(["fit", *FAST, "--config", str(cycle)], capsys)
    assert "Recursive interpolation detected" in err and "must not refer back to itself" in err


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("trainer:\n  max_epochs: 1\n  max_epochs: 2\n")
    err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", "--config", str(config)], capsys)
    assert "duplicate key 'max_epochs'" in err and "line 3" in err


def test_runs_dir_that_is_a_file_or_read_only_is_one_line(tmp_path, capsys, monkeypatch, tiny_backbones):
    a_file = tmp_path / "runs.txt"
    a_file.write_text("not a folder")
    err = one_line_error(["fit", *FAST, f"--runs_dir={a_file}"], capsys)
    assert f"--runs_dir '{a_file}' is a file, not a folder" in err
    # A read-only filesystem (tests may run as root, which ignores permission bits): mkdir fails with EROFS.
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'ro'}"], capsys)
    assert f"cannot create the run folder {tmp_path / 'ro'}" in err and "(Read-only file system)" in err


def test_import_prompt_out_an_existing_folder_is_one_line(tmp_path, capsys, tiny_backbones):
    from skill_neurons.import_prompt import main

    source = tmp_path / "prompt.pt"
    torch.save(torch.randn(8, 64), source)
    (tmp_path / "out").mkdir()
    assert main([str(source), "--backbone", "tiny-roberta", "--out", str(tmp_path / "out"), "--force"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"--out {tmp_path / 'out'} is a directory" in err and "--out " + str(tmp_path / "out" / "prompt.ckpt") in err


# ---------------------------------------------------------------- 7. non-finite prompts and losses
def test_a_non_finite_prompt_is_refused_on_load_and_by_import(finished_run, tmp_path, capsys):
    checkpoint = torch.load(finished_run / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["state_dict"]["prompt.weight"][0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    bad = tmp_path / "nan.ckpt"
    torch.save(checkpoint, bad)
    err = one_line_error(["validate", *FAST, f"--runs_dir={tmp_path / 'runs'}", f"--ckpt_path={bad}"], capsys,
                         tmp_path / "runs")
    assert f"checkpoint '{bad}' holds a soft prompt with 3 of" in err and "NaN or infinite" in err

    from skill_neurons.import_prompt import main

    source = tmp_path / "prompt.pt"
    torch.save(torch.full((8, 64), math.nan), source)
    assert main([str(source), "--backbone", "tiny-roberta", "--out", str(tmp_path / "p.ckpt")]) == 2
    assert "the prompt contains NaN or infinite values" in capsys.readouterr().err  # import's own check
    assert not (tmp_path / "p.ckpt").exists()


def test_training_stops_at_a_non_finite_loss_naming_step_and_learning_rate(tmp_path, capsys, tiny_backbones):
    """A learning rate of 1e30 makes the prompt overflow after one step: the run stops at once (it trained on
    with NaN and was recorded ``finished``), ``failed`` with the reason, and its summary is strict JSON."""
    err = one_line_error(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", "--run_id=D",
                          "--model.learning_rate=1e30"], capsys)
    assert "the training loss became nan at step 1 (epoch 0, learning rate 1e+30)" in err, err
    assert "--model.learning_rate (e.g. 1e+29)" in err
    summary = strict_json(tmp_path / "runs" / "D" / "summary.json")
    assert summary["status"] == "failed" and "the training loss became nan" in summary["error"]


def test_summary_json_is_strict_json(tmp_path):
    from records.summary import read_summary, update_summary

    update_summary(tmp_path, fit_metrics={"val/loss": math.nan, "val/acc": 0.5, "x": torch.tensor(math.inf)},
                   history=[{"epoch": 0, "val/loss": float("-inf")}])
    assert strict_json(tmp_path / "summary.json") == read_summary(tmp_path) == {
        "fit_metrics": {"val/loss": None, "val/acc": 0.5, "x": None}, "history": [{"epoch": 0, "val/loss": None}]}


# ---------------------------------------------------------------- 6. a resume keeps its run's settings
def test_a_resume_with_other_settings_is_refused_and_lists_them(finished_run, capsys):
    before = snapshot(finished_run)
    last = finished_run / "checkpoints" / "last.ckpt"
    err = one_line_error(["fit", *FAST, f"--ckpt_path={last}", "--data.max_train_samples=32",
                          "--model.learning_rate=0.5"], capsys)
    assert f"resumes run 'R' with other settings (data.max_train_samples: 64 -> 32; model.learning_rate: " \
           "0.01 -> 0.5)" in err, err
    assert f"resume with --config {finished_run / 'config.yaml'}" in err
    assert snapshot(finished_run) == before


def test_more_epochs_on_resume_are_recorded_in_the_settings_history(finished_run, tmp_path):
    import shutil

    run = tmp_path / "runs" / "R"
    shutil.copytree(finished_run, run)
    cli_in_process(["fit", *FAST, "--trainer.max_epochs=2", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
                   cwd=ROOT, check=True)
    summary = strict_json(run / "summary.json")
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    assert [h["changed"] for h in summary["settings_history"]] == [{"trainer.max_epochs": [1, 2]}]
    assert summary["settings_history"][0]["from_epoch"] == 1
    assert summary["config"]["trainer.max_epochs"] == 2


def test_resume_changes_allow_only_the_resumable_keys(tmp_path):
    from records.summary import update_summary
    from skill_neurons.runs import CLIError, resume_changes

    saved = {"model.learning_rate": 0.01, "trainer.max_epochs": 1, "seed_everything": 33, "trainer.devices": 1,
             "trainer.logger.group": "a", "data.num_workers": 0}
    update_summary(tmp_path, config=saved)
    same = dict(saved, seed_everything=34, **{"trainer.logger.group": "b", "data.num_workers": 2})
    assert resume_changes(tmp_path, same, "last.ckpt") == {}
    assert resume_changes(tmp_path, dict(saved, **{"trainer.max_epochs": 5, "trainer.devices": 2}), "x") == {
        "trainer.devices": [1, 2], "trainer.max_epochs": [1, 5]}
    with pytest.raises(CLIError, match=r"model.learning_rate: 0.01 -> 0.1\)"):
        resume_changes(tmp_path, dict(saved, **{"model.learning_rate": 0.1}), "x")


# ---------------------------------------------------------------- 12. report names skipped runs on the console
def test_report_names_the_runs_it_skips_on_the_console(finished_run, tmp_path, capsys):
    import shutil

    from skill_neurons.report.main import main

    good, half = tmp_path / "runs" / "R", tmp_path / "runs" / "H"
    shutil.copytree(finished_run, good)
    half.mkdir()
    (half / "summary.json").write_text(finished_run.joinpath("summary.json").read_text()[:200])
    neuron_file = next((good / "skill_neurons").glob("*.safetensors"))
    neuron_file.write_bytes(neuron_file.read_bytes()[:100])
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("skill-neurons report: warning: skipped")]
    assert any(str(half / "summary.json") in w and "not valid JSON" in w for w in warnings), err
    assert any(f"cannot read {neuron_file}" in w for w in warnings), err
