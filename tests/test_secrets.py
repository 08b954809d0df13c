"""No secret in any run file (issue 27, item 10): keys named like credentials are kept out of ``config.yaml``,
``summary.json``, the W&B config and the command line W&B records (which ``wandb sync`` uploads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import QUICK, ROOT, run_cli, summary_of

KEY = "K3y-0f-the-test-5ecret"


def files_holding(folder: Path, text: str) -> list[str]:
    """Every file under ``folder`` whose bytes contain ``text`` (binary W&B records included)."""
    return [str(p) for p in sorted(folder.rglob("*")) if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.subprocess  # ~15 s: kept in the quick tier
def test_a_key_given_on_the_command_line_is_in_no_file_the_run_writes(tmp_path, tiny_backbones):
    """The real console entry point (W&B reads ``sys.argv`` there), logged offline with W&B's own files."""
    runs = tmp_path / "runs"
    run_cli(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, "--trainer.max_epochs=1",
             "--data.max_train_samples=32", "--data.max_eval_samples=16", f"--runs_dir={runs}", "--run_id=S",
             f"--trainer.logger.init_args.settings={{api_key: {KEY}, init_timeout: 5}}"], cwd=tmp_path)
    run = runs / "S"
    written = [p for p in run.rglob("*") if p.is_file()]
    assert run / "config.yaml" in written and run / "summary.json" in written
    assert any(p.suffix == ".wandb" for p in written)  # W&B's record of the run: config, metadata, metrics
    assert files_holding(tmp_path, KEY) == []
    # The command line is still recorded, with the secret's value replaced.
    assert files_holding(run / "wandb", "trainer.logger.init_args.settings=<redacted>")
    assert "api_key" not in (run / "config.yaml").read_text() and summary_of(run)["status"] == "finished"
    assert "init_timeout: 5" in (run / "config.yaml").read_text()  # the rest of the value is kept


def test_secrets_are_redacted_from_argv_configs_and_nested_values():
    from jsonargparse import Namespace

    from records.secrets import redact, redact_argv
    from skill_neurons.lightning_cli import config_without_secrets

    argv = ["skill-neurons", "fit", "--trainer.logger.init_args.settings={api_key: K}", "--x.auth_token", "K",
            "--model.learning_rate=0.1", "--y", "{password: K}", "--z.secret=K"]
    assert redact_argv(argv) == ["skill-neurons", "fit", "--trainer.logger.init_args.settings=<redacted>",
                                 "--x.auth_token", "<redacted>", "--model.learning_rate=0.1", "--y", "<redacted>",
                                 "--z.secret=<redacted>"]
    flat = {"trainer.logger.settings": {"api_key": "K", "init_timeout": 5}, "a.password": "K", "b": [{"token": 1}],
            "model.learning_rate": 0.1}
    assert redact(flat) == {"trainer.logger.settings": {"init_timeout": 5}, "b": [{}], "model.learning_rate": 0.1}
    config = Namespace(trainer=Namespace(logger=Namespace(init_args=Namespace(
        settings={"api_key": "K", "init_timeout": 5}, api_token="K", project="p"))), seed_everything=1)
    clean = config_without_secrets(config)
    assert clean.as_dict() == {"trainer": {"logger": {"init_args": {"settings": {"init_timeout": 5},
                                                                     "project": "p"}}}, "seed_everything": 1}
    assert config.trainer.logger.init_args.api_token == "K"  # the run itself still gets its credentials
    # a list of classes (trainer.callbacks) holds namespaces: their init_args are cleaned too
    listed = Namespace(trainer=Namespace(callbacks=[
        Namespace(class_path="my.Callback", init_args=Namespace(api_token="K", every=2)),
        Namespace(class_path="my.Other", init_args=Namespace(settings={"password": "K", "n": 1}))]))
    assert config_without_secrets(listed).as_dict() == {"trainer": {"callbacks": [
        {"class_path": "my.Callback", "init_args": {"every": 2}},
        {"class_path": "my.Other", "init_args": {"settings": {"n": 1}}}]}}
    assert listed.trainer.callbacks[0].init_args.api_token == "K"
