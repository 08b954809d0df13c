"""How ``skill-neurons`` parses and explains itself: the parser mode and the ``--help`` texts. No command code.

Configs are read in jsonargparse's ``omegaconf+`` mode: a value may interpolate any other key of the final,
merged config — from any ``--config`` file or the command line — e.g. ``group: ${data.task}`` or
``name: ${model.init_args.backbone}-${data.task}`` under ``trainer.logger.init_args``. The saved
``config.yaml`` holds the resolved values.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import set_parsing_settings

PARSER_MODE = "omegaconf+"
STAGES = ("fit", "validate", "test", "predict")

DESCRIPTION = """\
Prompt tuning, skill neurons and adversarial robustness.

Lightning stages: fit, validate, test (below; `skill-neurons <stage> --help` lists their options).
Other commands (each with its own --help):
  sweep          run a W&B sweep file without a W&B server (skill-neurons sweep sweeps/quickstart.yaml)
  report         figures and tables over finished runs (skill-neurons report runs/ --out report/)
  import-prompt  turn P1's released prompts into checkpoints (skill-neurons import-prompt Robust-Neurons/)
  analyse        (re)run only the skill-neuron analysis of a fit run (skill-neurons analyse runs/<id>)
  wandb-view     create a W&B report comparing runs clean vs adversarial (needs wandb-workspaces)
validate and test also take --from_run RUN: evaluate that fit run's best prompt with its own config
(RUN is runs/<id>, or ROOT?backbone=...&task=...&seed=... for the matching finished run under ROOT).
Configs may interpolate other keys (${data.task}); see the README, "Common tasks"."""

FROM_RUN = """\
--from_run RUN evaluates the best prompt of fit run RUN with that run's config (it becomes --config
RUN/config.yaml --ckpt_path RUN/checkpoints/best.ckpt, placed first, so the other options override it). RUN is
a run directory (runs/<id>) or ROOT?key=value&... — the finished fit run under ROOT whose settings match
(backbone, task, seed, learning_rate, ...); when several match, add &pick=best (highest best val/acc) or
&pick=latest. Options such as --data.task (transfer) or --suppression.* apply on top; the new run goes under
--runs_dir (default runs/), not beside RUN."""


def parser_kwargs() -> dict[str, Any]:
    """LightningCLI's ``parser_kwargs``: the main parser's and each stage's (a stage parses the config files, so
    each gets the parser mode; validate and test explain ``--from_run``)."""
    # A config file's ${data.task} means the data.task of its own stage (fit, validate ...), not of the root
    # namespace that omegaconf+ resolves in (process-wide jsonargparse setting).
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    stage = {"parser_mode": PARSER_MODE}
    return {"description": DESCRIPTION, **stage, "formatter_class": _formatter(),
            **{name: dict(stage) for name in STAGES},
            **{name: {**stage, "description": f"{name.capitalize()} a prompt.\n\n{FROM_RUN}",
                      "formatter_class": _formatter()} for name in ("validate", "test")}}


def _formatter():
    """jsonargparse's help formatter, keeping the line breaks of the descriptions above."""
    from argparse import RawDescriptionHelpFormatter

    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter, RawDescriptionHelpFormatter):
        pass

    return Formatter
