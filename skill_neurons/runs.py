"""Which run a command works on: run ids, ranks, ``--from_run`` and ``skill-neurons analyse`` (no Lightning)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from records.configuration import configuration_of, differing_keys
from records.errors import UserError
from records.prompt_artifact import WANDB_RUN_PREFIX, is_folder, parse_artifact_ref, read_record
from records.run_status import process_gone, status_of
from records.summary import (
    BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, LAST_CHECKPOINT, RunSelectorError, find_run, is_run_id, read_summary,
    summary_problem,
)
from skill_neurons import prompt_artifacts

RUN_ID_ENV = "SKILL_NEURONS_RUN_ID"
RUNS_DIR_ENV = "SKILL_NEURONS_RUNS_DIR"  # a sweep trial's default --runs_dir
DEFAULT_RUNS_DIR = "runs"  # --runs_dir when none is given
RANK_ENVS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


class CLIError(UserError, ValueError):
    """A mistake in the command line (run id, checkpoint, --from_run); the message names the fix."""


def check_run_id(run_id: str, origin: str = "--run_id") -> str:
    """A run id names one folder under ``--runs_dir``: letters, digits, ``_ - .``, no path separators."""
    if not is_run_id(run_id):
        raise CLIError(f"{origin}={run_id!r} is not a run id: use letters, digits, '_', '-' and '.' (no path "
                       "separators, no '..'), at most 128 characters — the run's folder is --runs_dir/<run_id>")
    return run_id


def launched_rank_is_zero() -> bool:
    """False in a process that a launcher (Lightning's DDP launcher, torchrun, SLURM) started as a rank other
    than global rank 0: such a process joins the run rank 0 claimed."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_ENVS)


def analyse_args(rest: list[str]) -> list[str]:
    """``skill-neurons analyse runs/<id> [options]``: (re)run only the skill-neuron analysis of a fit run whose
    training is complete — a resume of its ``last.ckpt`` with its own config (the training loop has nothing
    left to do, so only the analysis of the best checkpoint runs, in the same run directory)."""
    if not rest or rest[0].startswith("-"):
        raise CLIError("analyse needs a run directory: skill-neurons analyse runs/<id> [options]")
    run = Path(rest[0])
    config, last = run / CONFIG_FILE, run / CHECKPOINT_DIR / LAST_CHECKPOINT
    for path in (config, last):
        if not path.is_file():
            raise CLIError(f"analyse {rest[0]!r}: {path} does not exist — give the folder of a fit run (runs/<id>)")
    problem = summary_problem(run)
    if problem:
        raise CLIError(f"analyse {rest[0]!r}: {problem}")
    summary = read_summary(run)
    if summary.get("status") == "running" and summary.get("process") and not process_gone(summary):
        raise CLIError(f"analyse {rest[0]!r}: the run is {status_of(summary)} — wait for it to end, or stop it "
                       "(kill -TERM <pid>) and analyse it then")
    if process_gone(summary):
        print(f"skill-neurons: note: run {run.name} is {status_of(summary)}; analysing it from its last "
              "checkpoint", file=sys.stderr, flush=True)
    return ["fit", "--config", str(config), f"--ckpt_path={last}", *rest[1:]]


def find_fit_run(spec: str) -> Path:
    """A fit run directory: ``runs/<id>``, or ``ROOT?key=value&...`` — the finished fit run under ROOT (searched
    recursively) whose ``summary.json`` settings match (``backbone``, ``task``, ``seed``, ...; several matches are
    refused with the candidates unless ``&pick=best|latest``, :func:`records.summary.find_run`)."""
    try:
        run = find_run(spec)
    except RunSelectorError as err:
        raise CLIError(str(err)) from None
    if run is not None:
        return run
    root, _, query = spec.partition("?")
    if not query and read_summary(root).get("status") == "smoke":
        raise CLIError(f"--from_run {spec!r} is a smoke run (--trainer.fast_dev_run: one batch, no best prompt, "
                       "no config.yaml) — evaluate a fit run trained without fast_dev_run")
    if not query:
        raise CLIError(f"--from_run {spec!r}: no run directory with a {CONFIG_FILE} there")
    wanted = {k: v for k, v in (part.split("=", 1) for part in query.split("&") if "=" in part) if k != "pick"}
    raise CLIError(f"--from_run {spec!r}: no finished fit run under {root!r} has settings {wanted} — "
                   "check the folder (e.g. the --dir of the sweep that trained the prompts) and the values")


ALLOW_INCOMPLETE = "--allow_incomplete"
SOURCE_OPTIONS = ("--from_run", "--from_artifact")


def resolve_source(option: str, spec: str) -> Path:
    """The local folder of a ``--from_run``/``--from_artifact`` source: a run directory or selector (``--from_run``
    only), a prompt artifact's folder (either; :mod:`records.prompt_artifact`), or — online, through W&B's API,
    downloaded — a W&B run's prompt (``--from_run wandb:ENTITY/PROJECT/RUN_ID``) or a prompt artifact version
    (``--from_artifact ENTITY/PROJECT/NAME:ALIAS``)."""
    if option == "--from_artifact":
        if is_folder(spec):
            return Path(spec)
        if Path(spec).is_dir():
            raise CLIError(f"--from_artifact {spec!r} is a folder without a prompt artifact's files (config.yaml, "
                           "run.json, checkpoints/best.ckpt) — give a downloaded prompt artifact, runs/<id>/"
                           "prompt_artifact, or a fit run with --from_run runs/<id>")
        return prompt_artifacts.download_artifact(parse_artifact_ref(spec))
    if spec.startswith(WANDB_RUN_PREFIX):
        return prompt_artifacts.download_run_prompt(spec)
    return find_fit_run(spec)


# Options whose value may name the selected fit run's settings as {backbone}, {task}, {seed} or {run_id}, so one
# sweep line serves every prompt of a grid: the attack sweep's --out, the evaluation sweeps' attack files.
PROMPT_FIELD_OPTIONS = ("--out", "--data.extra_adversarial")
PROMPT_FIELDS = ("backbone", "task", "seed", "run_id")


def prompt_fields(run: Path) -> dict[str, str]:
    """``{backbone}``, ``{task}``, ``{seed}``, ``{run_id}`` of a fit run (its summary.json settings)."""
    summary = read_summary(run)
    settings = summary.get("settings") or {}
    return {"backbone": str(settings.get("backbone")), "task": str(settings.get("task")),
            "seed": str(settings.get("seed")), "run_id": str(summary.get("run_id") or run.name)}


def fill_prompt_fields(argv: list[str], run: Path, options: tuple[str, ...] = PROMPT_FIELD_OPTIONS,
                       extra: dict[str, str] | None = None) -> list[str]:
    """``argv`` with ``{backbone}``, ``{task}``, ``{seed}`` and ``{run_id}`` in the values of ``options``
    (``--opt=value``, or ``--opt`` followed by its values up to the next option) replaced by the fit run's:
    ``--out 'adv/{backbone}/{task}/{seed}.jsonl'``. Other braces (a YAML mapping's) are left alone; ``extra``
    adds fields (attack's ``{recipe}``)."""
    extra = extra or {}
    fields = None
    out, in_values = [], False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        in_values = in_values and not arg.startswith("-")
        if in_values or (eq and name in options):
            if any(f"{{{key}}}" in arg for key in (*PROMPT_FIELDS, *extra)):
                fields = fields or {**prompt_fields(run), **extra}
                for key, value in fields.items():
                    arg = arg.replace(f"{{{key}}}", value)
        out.append(arg)
        in_values = in_values or (not eq and arg in options)
    return out


# attack's options whose values may name the attacked run's fields: where it writes, the other seeds' prompts of the
# transfer filter (--transfer_runs 'grid/runs?backbone={backbone}&task={task}&seed=34' ...), the attack noise matches
ATTACK_FIELD_OPTIONS = ("--out", "--transfer_runs", "--match")


def fill_attack_fields(argv: list[str]) -> list[str]:
    """``skill-neurons attack``'s ``ATTACK_FIELD_OPTIONS`` with the fields of its ``--from_run`` filled in
    (:func:`fill_prompt_fields`; ``{recipe}`` too when ``--recipe`` is given; the run is resolved only when a
    value names a field)."""
    def value(option: str) -> str | None:
        return next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option), None) or next(
            (a.split("=", 1)[1] for a in argv if a.startswith(f"{option}=")), None)

    recipe = value("--recipe")
    extra = {"recipe": recipe} if recipe else {}
    spec = value("--from_run")
    if spec is None or not any(f"{{{key}}}" in arg for arg in argv for key in (*PROMPT_FIELDS, *extra)):
        return argv
    return fill_prompt_fields(argv, find_fit_run(spec), ATTACK_FIELD_OPTIONS, extra)


def best_prompt_run(spec: str, allow_incomplete: bool = False, option: str = "--from_run") -> Path:
    """The folder of the prompt ``spec`` names (:func:`resolve_source`: a fit run, a prompt artifact's folder, or
    one downloaded from W&B), refused when it holds no best checkpoint or its run is not ``finished`` (unless
    ``allow_incomplete``: then a warning names its status) — the rules of ``--from_run``; ``option`` names the
    option in messages (an option other than ``--from_artifact`` takes what ``--from_run`` takes)."""
    run = resolve_source("--from_artifact" if option == "--from_artifact" else "--from_run", spec)
    best = run / CHECKPOINT_DIR / BEST_CHECKPOINT
    if not best.is_file():
        raise CLIError(f"{option} {spec!r}: {best} does not exist (the run saved no best checkpoint) — give a fit "
                       "run that saved one")
    summary = read_summary(run) or read_record(run)  # a prompt artifact's folder keeps the run's record as run.json
    if summary.get("status") != "finished":
        status = status_of(summary)
        if not allow_incomplete:
            raise CLIError(f"{option} {spec!r}: the run is {status}, not finished — its best prompt may not be "
                           f"final; finish it (skill-neurons analyse {run}, or resume its fit) or add "
                           f"{ALLOW_INCOMPLETE} to evaluate it anyway")
        print(f"skill-neurons: warning: {option} {spec}: the run is {status}, not finished — evaluating its best "
              f"checkpoint so far ({ALLOW_INCOMPLETE})", file=sys.stderr, flush=True)
    return run


def take_from_run(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--from_run RUN`` evaluates that fit run's best prompt with its own config: it becomes ``--config
    RUN/config.yaml --ckpt_path RUN/checkpoints/best.ckpt --run_id=null --runs_dir=runs``, placed first, so every
    other option (``--data.task`` for transfer, ``--suppression.*``, ``--runs_dir``) overrides it. The derived run
    goes under the ``--runs_dir`` this command is given (default ``runs``), never beside the source run: the
    source's config names the folder it was written to (a sweep's ``DIR/runs``), which is not this run's.
    ``{backbone}``, ``{task}``, ``{seed}`` and ``{run_id}`` in ``--data.extra_adversarial`` become the run's
    (:func:`fill_prompt_fields`: its attack files, in a sweep over many prompts). A run
    that is not ``finished`` (still running, killed, interrupted, failed, incomplete) is refused, naming its
    status, unless ``--allow_incomplete`` is given (then a warning names it). ``--from_artifact`` (a prompt
    artifact's folder, or ``ENTITY/PROJECT/NAME:ALIAS``) and ``--from_run wandb:ENTITY/PROJECT/RUN_ID`` take the
    config and prompt of a logged prompt artifact the same way (:func:`resolve_source`)."""
    rest, sources, allow = [], {}, False
    iterator = iter(argv)
    for arg in iterator:
        if arg in SOURCE_OPTIONS:
            sources[arg] = next(iterator, None)
        elif arg.split("=", 1)[0] in SOURCE_OPTIONS:
            sources[arg.split("=", 1)[0]] = arg.split("=", 1)[1]
        elif arg in (ALLOW_INCOMPLETE, f"{ALLOW_INCOMPLETE}=true"):
            allow = True
        else:
            rest.append(arg)
    if not sources:
        if allow:
            raise CLIError(f"{ALLOW_INCOMPLETE} goes with --from_run runs/<id> (it lets an unfinished run's best "
                           "prompt be evaluated)")
        return argv, []
    if len(sources) > 1:
        raise CLIError("--from_run and --from_artifact both name a prompt: give one of them")
    (option, spec), = sources.items()
    if spec is None:
        raise CLIError(f"{option} needs a value: {option} runs/<id>, or see `skill-neurons validate --help`")
    if rest[0] == "fit":
        raise CLIError(f"{option} evaluates a trained prompt: use it with validate, test or predict, not fit")
    run = best_prompt_run(spec, allow, option)
    best = run / CHECKPOINT_DIR / BEST_CHECKPOINT
    rest = fill_prompt_fields(rest, run, ("--data.extra_adversarial",))
    return rest, ["--config", str(run / CONFIG_FILE), f"--ckpt_path={best}", "--run_id=null",
                  f"--runs_dir={DEFAULT_RUNS_DIR}"]


# What a resume may change: how long it trains, and where it runs. Everything else of the run's configuration
# (records.configuration: learning rate, data sizes, prompt, task, analysis options ...) would make the record
# describe a run that never happened — epochs 0-2 on 640 rows, the rest on 64 — so it is refused.
RESUMABLE_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.accelerator",
                  "trainer.devices", "trainer.num_nodes", "trainer.strategy")


def resume_changes(run_dir: Path, config: dict[str, Any], ckpt_path: str) -> dict[str, list]:
    """The settings a resume of ``run_dir`` changes, ``{key: [was, now]}``, from the run's recorded config
    (``summary.json`` → ``config``) and this command's flat config; refuses (:class:`CLIError`, listing every
    difference) when one of them is not in :data:`RESUMABLE_KEYS`. Presentation keys, paths and the seed
    (:func:`records.configuration.configuration_of`) are not compared. ``{}`` when the run recorded no config."""
    saved = read_summary(run_dir).get("config")
    if not saved:
        return {}
    was, now = configuration_of(saved), configuration_of(config)
    changes = {key: [was.get(key), now.get(key)] for key in differing_keys([saved, config])}
    refused = [key for key in changes if key not in RESUMABLE_KEYS]
    if refused:
        listed = "; ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        raise CLIError(f"--ckpt_path {ckpt_path} resumes run {run_dir.name!r} with other settings ({listed}) — a "
                       f"resume continues the run as it was configured: resume with --config {run_dir / CONFIG_FILE} "
                       f"(only {', '.join(RESUMABLE_KEYS)} may change), or start a new run without --ckpt_path")
    return changes
