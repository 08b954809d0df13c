"""``skill-neurons``: the console entry point — the Lightning stages and the project's tools.

    skill-neurons fit --config configs/quickstart.yaml
    skill-neurons fit --config configs/roberta/sst2.yaml --model.learning_rate=3e-3 --seed_everything=34
    skill-neurons fit --config configs/roberta/sst2.yaml --ckpt_path runs/<id>/checkpoints/last.ckpt  # resume
    skill-neurons validate --from_run runs/<id>              # its best prompt, with its own config
    skill-neurons analyse runs/<id>                          # (re)run only the skill-neuron analysis
    skill-neurons sweep sweeps/quickstart.yaml | report runs/ | import-prompt ... | import-peft ... | export-peft ...

``fit``/``validate``/``test``/``predict`` are the LightningCLI (:mod:`skill_neurons.lightning_cli`); ``sweep``,
``report`` and ``import-prompt`` are tools with ``main(argv) -> exit code`` that never import Lightning unless
they need it; ``skill-neurons --help``, a missing or unknown command and ``analyse --help`` are answered by plain
argparse (:mod:`skill_neurons.cli_options`), so they load no Lightning either. A user's mistake (a
:class:`records.errors.UserError`: a bad task, backbone, data file, checkpoint, option) ends the command with one
line on stderr and exit code 2 (1 for a file that cannot be written); ``--debug`` or
``SKILL_NEURONS_DEBUG=1`` shows the traceback instead. Process-wide settings (warning and log filters,
:mod:`skill_neurons.quiet`) are made here, at the entry point, never on import of a library module.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from records.errors import UserError
from skill_neurons.cli_options import COMMANDS, DEBUG_ENV, HELP_FLAGS, analyse_parser, main_parser, wants_help
from skill_neurons.quiet import quiet_known_noise
from skill_neurons.runs import RUNS_DIR_ENV, analyse_args, fill_attack_fields, take_from_run

# skill-neurons <tool> ...: each module has main(argv) -> exit code.
TOOLS = {"sweep": "skill_neurons.sweep.command", "report": "skill_neurons.report.main",
         "import-prompt": "skill_neurons.import_prompt", "wandb-view": "skill_neurons.wandb_view",
         "export-peft": "skill_neurons.export_peft", "import-peft": "skill_neurons.import_peft",
         "attack": "skill_neurons.attack.command"}
STAGES = ("fit", "validate", "test", "predict")




def user_errors() -> tuple[type[BaseException], ...]:
    """:class:`UserError`, and omegaconf's error for a config's ``${...}`` that names no key or refers back to
    itself (omegaconf+ mode resolves them) once omegaconf is loaded: only a loaded module can have raised it, so
    classifying an error never imports omegaconf or the Lightning side."""
    interpolation = getattr(sys.modules.get("omegaconf.errors"), "InterpolationResolutionError", None)
    return (UserError,) if interpolation is None else (UserError, interpolation)


def main(args: list[str] | None = None) -> None:
    """Console entry point of ``skill-neurons``.

    A trial started by the sweep runner gets ``$SKILL_NEURONS_RUNS_DIR``: it is the default of ``--runs_dir``
    (placed right after the subcommand, so a ``--runs_dir`` given in a config file or on the command line still
    wins). A project error (:func:`user_errors`, also when a library wrapped it) is printed as one line and
    exits 2; ``--debug`` (anywhere) or ``SKILL_NEURONS_DEBUG=1`` re-raises it.
    """
    argv = sys.argv[1:] if args is None else list(args)
    quiet_known_noise()
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    before = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the option parser's errors too (skill_neurons.lightning_cli.OneLineParser)
    try:
        _run(argv, from_console=args is None)
    except Exception as err:
        cause = user_error(err)
        if cause is None or debug:
            raise
        message = describe(cause)
        print(f"skill-neurons: error: {message}  (--debug or {DEBUG_ENV}=1 shows the traceback)",
              file=sys.stderr, flush=True)
        raise SystemExit(getattr(cause, "exit_code", UserError.exit_code)) from None  # a file that cannot be written: 1
    finally:
        if before is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = before


def describe(cause: BaseException) -> str:
    """A project error's message on one line; an interpolation error names the key that holds it."""
    full_key = getattr(cause, "full_key", None)
    if full_key is not None:  # omegaconf: "fit.data.cache_dir" -> data.cache_dir
        key = full_key.split(".", 1)[1] if full_key.split(".", 1)[0] in STAGES else full_key
        reason = str(getattr(cause, "msg", cause)).split("full_key:")[0].replace("'..", "'")
        reason = re.sub(r" \(resolved to '[^']*'\)", "", reason)
        return (f"{key}: {' '.join(reason.split())} — a ${{...}} in a config must name another key of the merged "
                "config (e.g. ${data.task}) and must not refer back to itself")
    return " ".join(str(cause).split())


def user_error(err: BaseException) -> BaseException | None:
    """The project error behind ``err`` (itself, or in its chain of causes: jsonargparse wraps errors raised
    while instantiating a class), or None for anything else."""
    errors = user_errors()
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, errors):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _run(argv: list[str], from_console: bool) -> None:
    if not argv or argv[0] in HELP_FLAGS or not (argv[0].startswith("-") or argv[0] in (*COMMANDS, *STAGES)):
        main_parser().parse_args(argv[:1])  # help (exit 0), or no or an unknown command (exit 2): no Lightning
    if argv[0] in TOOLS:  # commands that are not Lightning stages
        module = importlib.import_module(TOOLS[argv[0]])
        rest = fill_attack_fields(argv[1:]) if argv[0] == "attack" else argv[1:]  # --out 'adv/{task}/{seed}.jsonl'
        raise SystemExit(module.main(rest))
    if argv[0] == "analyse":
        if wants_help(argv[1:]):
            analyse_parser().print_help()
            raise SystemExit(0)
        argv = analyse_args(argv[1:])
    if argv[0] in STAGES and not wants_help(argv[1:]):  # a stage's --help needs no run (nor --from_run's)
        argv, head = take_from_run(argv)
        runs_dir = os.environ.get(RUNS_DIR_ENV)
        if runs_dir:
            head.append(f"--runs_dir={runs_dir}")
        argv = [argv[0], *head, *argv[1:]]
    from skill_neurons.lightning_cli import SkillNeuronsCLI

    if from_console:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [sys.argv[0], *argv]
        SkillNeuronsCLI()
    else:
        SkillNeuronsCLI(args=argv)


if __name__ == "__main__":
    main()
