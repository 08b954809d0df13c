"""How ``skill-neurons`` parses and explains itself: the parser mode and the ``--help`` texts. No command code.

``skill-neurons --help`` and ``skill-neurons analyse --help`` are plain argparse (:func:`main_parser`,
:func:`analyse_parser`): they load no Lightning, transformers or datasets, and jsonargparse only when a stage's
parser is built (:func:`parser_kwargs`).

Configs are read in jsonargparse's ``omegaconf+`` mode: a value may interpolate any other key of the final,
merged config — from any ``--config`` file or the command line — e.g. ``group: ${data.task}`` or
``name: ${model.init_args.backbone}-${data.task}`` under ``trainer.logger.init_args``. The saved
``config.yaml`` holds the resolved values.
"""

from __future__ import annotations

import argparse
from typing import Any

PARSER_MODE = "omegaconf+"
DEBUG_ENV = "SKILL_NEURONS_DEBUG"  # set (or --debug): tracebacks and jsonargparse's full messages instead of one line
STAGES = ("fit", "validate", "test", "predict")
HELP_FLAGS = ("-h", "--help")

# The commands `skill-neurons --help` lists, with one line each (each command's own --help says more).
COMMANDS = {
    "fit": "prompt-tune a backbone, then find skill neurons (fit --config configs/quickstart.yaml)",
    "validate": "evaluate a prompt, clean and adversarial (validate --from_run runs/<id>)",
    "test": "the same on the test split (test --from_run runs/<id>)",
    "predict": "per-example predictions and label probabilities (predict --from_run runs/<id>)",
    "analyse": "(re)run only the skill-neuron analysis of a fit run (analyse runs/<id>)",
    "sweep": "run a W&B sweep file without a W&B server (sweep sweeps/quickstart.yaml)",
    "report": "figures and tables over finished runs (report runs/ --out report/)",
    "import-prompt": "turn P1's released prompts into checkpoints (import-prompt Robust-Neurons/)",
    "export-peft": "a causal-LM or T5 prompt as a PEFT adapter (export-peft runs/<id> --out DIR)",
    "import-peft": "a PEFT prompt-tuning adapter as a checkpoint (import-peft DIR --task T --out F.ckpt)",
    "attack": "an adversarial set made against a fit run's prompt (attack --from_run runs/<id> --out adv.jsonl)",
    "wandb-view": "a W&B report comparing runs clean vs adversarial (needs wandb-workspaces)",
}

DESCRIPTION = """\
Prompt tuning, skill neurons and adversarial robustness.

commands (skill-neurons <command> --help lists a command's options):
""" + "\n".join(f"  {name:<14} {line}" for name, line in COMMANDS.items()) + """
validate and test also take --from_run RUN: evaluate that fit run's best prompt with its own config
(RUN is runs/<id>, or ROOT?backbone=...&task=...&seed=... for the matching finished run under ROOT, or
wandb:ENTITY/PROJECT/RUN_ID), or --from_artifact ENTITY/PROJECT/NAME:ALIAS (or a downloaded artifact's folder).
Flags are spelled with underscores, as LightningCLI's (--run_id, --from_run).
Configs may interpolate other keys (${data.task}); see the README, "Common tasks"."""

ANALYSE = """\
(Re)run only the skill-neuron analysis of a fit run whose training is complete (e.g. one stopped during the
analysis): the run's checkpoints/last.ckpt is resumed with its own config.yaml, in its own folder and W&B run.
The training loop has nothing left to do, so only the analysis of the best checkpoint runs."""

ANALYSE_OPTIONS = """\
Any other option is a fit option, applied over the run's config (skill-neurons fit --help lists them),
e.g. skill-neurons analyse runs/<id> --trainer.accelerator=cpu"""

FROM_RUN = """\
--from_run RUN evaluates the best prompt of fit run RUN with that run's config (it becomes --config
RUN/config.yaml --ckpt_path RUN/checkpoints/best.ckpt, placed first, so the other options override it). RUN is
a run directory (runs/<id>) or ROOT?key=value&... — the finished fit run under ROOT whose settings match
(backbone, task, seed, learning_rate, ...); when several match, add &pick=best (highest best val/acc) or
&pick=latest. Options such as --data.task (transfer), --suppression.* or --intervention.* apply on top; the new run
goes under --runs_dir (default runs/), not beside RUN. A run that is not finished (running, killed, interrupted, failed,
incomplete) is refused, naming its status; --allow_incomplete evaluates its best checkpoint so far anyway (with a
warning). RUN may also be wandb:ENTITY/PROJECT/RUN_ID: the prompt artifact that W&B run logged, downloaded
through W&B's API (online). --from_artifact ENTITY/PROJECT/NAME:ALIAS takes a prompt artifact version (NAME
prompt-<backbone>-<task>-<layout>, ALIAS best, latest, seed-<s>, run-<id> or v<n>) the same way, and
--from_artifact DIR a downloaded artifact's folder or runs/<id>/prompt_artifact (offline); the new run declares
the artifact version it used on W&B (online)."""


def wants_help(argv: list[str]) -> bool:
    """True when ``argv`` (a command's arguments) asks for its help."""
    return any(arg in HELP_FLAGS for arg in argv)


def main_parser() -> argparse.ArgumentParser:
    """``skill-neurons`` itself: its ``--help``, and the error for a missing or unknown command."""
    parser = argparse.ArgumentParser(prog="skill-neurons", usage="skill-neurons [-h] <command> ...",
                                     description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", metavar="<command>", choices=tuple(COMMANDS), help=argparse.SUPPRESS)
    return parser


def analyse_parser() -> argparse.ArgumentParser:
    """``skill-neurons analyse --help`` (the command itself is a ``fit``: :func:`skill_neurons.runs.analyse_args`)."""
    parser = argparse.ArgumentParser(prog="skill-neurons analyse", usage="skill-neurons analyse [-h] RUN [options]",
                                     description=ANALYSE, epilog=ANALYSE_OPTIONS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="the fit run's folder (runs/<id>), holding config.yaml and "
                                                   "checkpoints/last.ckpt")
    return parser


def parser_kwargs() -> dict[str, Any]:
    """LightningCLI's ``parser_kwargs``: the main parser's and each stage's (a stage parses the config files, so
    each gets the parser mode; validate and test explain ``--from_run``)."""
    from jsonargparse import set_parsing_settings  # here, not at the top: the help above needs no jsonargparse

    from skill_neurons.parse_errors import refuse_duplicate_keys

    # A config file's ${data.task} means the data.task of its own stage (fit, validate ...), not of the root
    # namespace that omegaconf+ resolves in (process-wide jsonargparse setting).
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    refuse_duplicate_keys()
    stage = {"parser_mode": PARSER_MODE}
    return {"prog": "skill-neurons", "description": DESCRIPTION, **stage, "formatter_class": _formatter(),
            **{name: dict(stage) for name in STAGES},
            **{name: {**stage, "description": f"{name.capitalize()} a prompt.\n\n{FROM_RUN}",
                      "formatter_class": _formatter()} for name in ("validate", "test")}}


def _formatter():
    """jsonargparse's help formatter, keeping the line breaks of the descriptions above."""
    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    return Formatter
