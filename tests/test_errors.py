"""One error base, each rule decided once: every error a user can cause is a ``UserError``, the CLI prints any of
them as one line, a callback's ``check_run`` runs once per stage, and a family rule says the same thing from
every entry point."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import SimpleNamespace

import pytest
import torch
from lightning import Trainer

from callbacks.skill_neurons import SkillNeuronCallback
from callbacks.suppression import NeuronSuppression
from datamodules import PromptDataModule
from lightning_modules import CausalLMPromptTuning
from lightning_modules.contracts import ChecksRun, ModelData, NeedsData, PromptData, preflight
from lightning_modules.rules import LayoutError, check_layout, check_positions
from records.errors import OptionError, UserError
from records.files import WriteError
from records.summary import RunSelectorError
from tests.helpers import ROOT
from tests.helpers.tiny import marker_task

PACKAGES = ("records", "lightning_modules", "datamodules", "callbacks", "skill_neurons")
# Errors of the project that are no user's mistake (none today): name them here with the reason.
NOT_USER_ERRORS: set[str] = set()


def project_error_classes() -> dict[str, type]:
    """Every exception class defined in the project's packages, by ``module.Class``."""
    found = {}
    for package in PACKAGES:
        path = ROOT / package
        names = [package] + [m.name for m in pkgutil.walk_packages([str(path)], f"{package}.")
                             if not m.name.endswith("__main__")]
        for name in names:
            module = importlib.import_module(name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == name:
                    found[f"{name}.{cls.__name__}"] = cls
    return found


def test_every_error_a_user_can_cause_is_a_user_error():
    classes = project_error_classes()
    expected = {"records.neuron_files.SkillNeuronError", "records.prompt_checkpoint.CheckpointError",
                "records.files.WriteError", "records.summary.SummaryError", "records.summary.RunSelectorError",
                "datamodules.task_spec.TaskError", "lightning_modules.backbones.BackboneError",
                "lightning_modules.ffn.FFNLookupError", "records.errors.OptionError",
                "lightning_modules.rules.LayoutError", "skill_neurons.runs.CLIError",
                "skill_neurons.sweep.config.SweepError", "skill_neurons.report.base.ReportError",
                "skill_neurons.import_prompt.PromptImportError", "records.peft_adapter.AdapterError",
                "skill_neurons.export_peft.ExportError", "skill_neurons.import_peft.PeftImportError"}
    assert expected <= set(classes), sorted(expected - set(classes))
    not_user = [name for name, cls in classes.items()
                if not issubclass(cls, UserError) and name not in NOT_USER_ERRORS and cls is not UserError]
    assert not_user == [], f"error classes that are not a UserError: {not_user}"
    # what callers caught before stays true: a file that cannot be written is an OSError, the rest ValueErrors
    assert issubclass(WriteError, OSError) and WriteError.exit_code == 1
    assert issubclass(LayoutError, OptionError) and issubclass(OptionError, ValueError)
    assert UserError.exit_code == 2


class FromNowhere(UserError):
    """A user's mistake of a module the CLI has never heard of."""


@pytest.mark.parametrize("error, code", [(FromNowhere("the thing is wrong —\n  use the other thing"), 2),
                                         (RunSelectorError("two runs match — add &pick=newest"), 2),
                                         (WriteError("/tmp/x/summary.json", OSError(28, "No space left")), 1)])
def test_the_cli_prints_any_user_error_as_one_line(error, code, monkeypatch, capsys):
    from skill_neurons import cli, wandb_view

    def fails(argv):
        try:
            raise error
        except UserError as cause:  # a library that wraps the error keeps it as the cause
            raise RuntimeError("wrapped") from cause

    monkeypatch.setattr(wandb_view, "main", fails)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["wandb-view", "anything"])
    assert exit_.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skill-neurons: error: ") and " ".join(str(error).split()) in err[0]
    with pytest.raises(RuntimeError, match="wrapped"):  # --debug keeps the traceback
        cli.main(["wandb-view", "anything", "--debug"])


def test_the_cli_never_lets_a_bug_pass_for_a_user_error(monkeypatch):
    from skill_neurons import cli, wandb_view

    monkeypatch.setattr(wandb_view, "main", lambda argv: {}["a bug"])
    with pytest.raises(KeyError):
        cli.main(["wandb-view", "anything"])


# ------------------------------------------------------------------------------------ check_run once per stage
class Counting(SkillNeuronCallback):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.checks: list[str] = []

    def check_run(self, trainer, pl_module, datamodule, stage):
        self.checks.append(stage)
        super().check_run(trainer, pl_module, datamodule, stage)


def test_check_run_runs_once_per_stage_with_and_without_the_cli_preflight(tmp_path, tiny_backbones):
    from lightning_modules import MaskedLMPromptTuning

    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=4)
    dm = PromptDataModule(task=marker_task(), backbone="tiny-roberta", prompt_length=4, max_train_samples=16,
                          max_eval_samples=16)
    callback = Counting()
    callback.analyse = lambda *args, **kwargs: {}  # checked, not analysed: the count is the point
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                      callbacks=[callback], limit_val_batches=1)
    trainer.validate(model, datamodule=dm, verbose=False)  # no CLI: setup checks
    assert callback.checks == ["validate"]
    preflight(trainer, model, dm, "validate")  # the CLI: preflight checks, setup does not again
    trainer.validate(model, datamodule=dm, verbose=False)
    assert callback.checks == ["validate", "validate"]
    trainer.validate(model, datamodule=dm, verbose=False)  # a preflight counts for the stage after it only
    assert callback.checks == ["validate", "validate", "validate"]


def test_protocols_say_what_the_callbacks_and_the_model_use(tiny_backbones):
    dm = PromptDataModule(task=marker_task(), backbone="tiny-roberta", prompt_length=4)
    assert isinstance(dm, PromptData) and isinstance(dm, ModelData)
    assert not isinstance(SimpleNamespace(label_token_ids=[1, 2]), ModelData)  # no probing by one attribute
    suppression = NeuronSuppression()
    assert isinstance(suppression, ChecksRun) and not isinstance(suppression, NeedsData)
    assert not hasattr(suppression, "data_roles")  # it needs no split beyond the stage's own
    assert isinstance(SkillNeuronCallback(), NeedsData)


# ------------------------------------------------------------------------------------ one rule, one message
def message(call) -> tuple[type, str]:
    with pytest.raises(UserError) as error:
        call()
    return type(error.value), str(error.value)


def test_paper_is_refused_for_causal_lms_with_one_message_from_every_entry_point(tmp_path):
    from skill_neurons.import_prompt import import_prompt

    rule = message(lambda: check_layout("causal_lm", "paper", "tiny-gpt2"))
    assert rule[0] is LayoutError and "P1 has no causal LM, so 'tiny-gpt2' runs with --model.layout=standard" in rule[1]
    model = message(lambda: CausalLMPromptTuning(backbone="tiny-gpt2", layout="paper"))
    data = message(lambda: PromptDataModule(task="marker", backbone="tiny-gpt2", layout="paper").prepare_data())
    assert model == data == rule
    # import-prompt names its own option (--layout) in the same sentence
    torch.save(torch.zeros(4, 64), tmp_path / "prompt.pt")
    imported = message(lambda: import_prompt(tmp_path / "prompt.pt", tmp_path / "out.ckpt", "tiny-gpt2",
                                             layout="paper"))
    assert imported == message(lambda: check_layout("causal_lm", "paper", "tiny-gpt2", flag="--layout"))
    assert imported[1] == rule[1].replace("--model.layout", "--layout")


def test_the_masked_lm_paper_rule_is_checked_before_the_backbone_loads(monkeypatch):
    import lightning_modules.prompt_tuning as prompt_tuning
    from lightning_modules import MaskedLMPromptTuning

    monkeypatch.setattr(prompt_tuning, "load_backbone", lambda name: pytest.fail("loaded the backbone"))
    kind, text = message(lambda: MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=1, layout="paper"))
    assert (kind, text) == message(lambda: check_layout("masked_lm", "paper", "tiny-roberta", prompt_length=1))
    check_layout("seq2seq", "paper", "tiny-t5", prompt_length=1)  # T5 has no <mask> slot: one vector is enough


@pytest.mark.parametrize("family, backbone, part, choice", [("causal_lm", "tiny-gpt2", "encoder", "prompt"),
                                                            ("seq2seq", "tiny-t5", "encoder", "mask"),
                                                            ("seq2seq", "tiny-t5", "decoder", "mask")])
def test_analysed_positions_are_refused_with_one_message_from_every_entry_point(family, backbone, part, choice,
                                                                               tiny_backbones):
    from lightning_modules import Seq2SeqPromptTuning

    rule = message(lambda: check_positions(family, part, choice))
    assert rule[0] is OptionError and f"positions={choice!r} does not exist for a {family} model" in rule[1]
    model = (CausalLMPromptTuning if family == "causal_lm" else Seq2SeqPromptTuning)(backbone=backbone, prompt_length=4)
    assert message(lambda: model.analysed_positions(part, choice)) == rule
    trainer = SimpleNamespace(callbacks=[])
    assert message(lambda: SkillNeuronCallback(part=part, positions=choice).check_run(trainer, model, None,
                                                                                        "validate")) == rule
