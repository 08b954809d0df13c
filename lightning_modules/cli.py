"""``skill-neurons``: a LightningCLI with run directories, W&B tracking and resumable fits.

    skill-neurons fit --config configs/quickstart.yaml
    skill-neurons fit --config configs/roberta/sst2.yaml --model.learning_rate=3e-3 --seed_everything=34
    skill-neurons fit --config configs/roberta/sst2.yaml --ckpt_path runs/<id>/checkpoints/last.ckpt  # resume
    skill-neurons validate --config configs/roberta/sst2.yaml --ckpt_path runs/<id>/checkpoints/best.ckpt

Every run gets ``runs/<run_id>/`` (``--runs_dir``; W&B's run id is ``<run_id>``) holding the resolved
``config.yaml``, ``summary.json``, ``checkpoints/`` and the W&B files. Without W&B credentials the run is
logged offline, never prompting; ``wandb sync`` uploads it later.

A run directory is claimed with an atomic ``mkdir`` before any work: a command on an existing run id is
refused unless it is a ``fit`` resuming a checkpoint of that run. The project's own errors (a bad task,
backbone, data file, checkpoint, option) end the command with one line on stderr and exit code 2;
``--debug`` or ``SKILL_NEURONS_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import json
import netrc
import os
import re
import secrets
import string
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from callbacks.checkpoint import RunCheckpoint
from callbacks.rng_state import RNGState
from callbacks.run_summary import RunSummary, finished_fit_runs, flatten, offline_segments
from callbacks.skill_neurons import SkillNeuronError
from callbacks.suppression import NeuronSuppression
from datamodules import PromptDataModule
from datamodules.prompt_datamodule import check_sizes
from datamodules.tasks import TaskError
from lightning_modules.backbones import BackboneError
from lightning_modules.ffn import FFNLookupError
from lightning_modules import tracking
from lightning_modules.prompt_tuning import PromptTuningModule

RUN_ID_ENV = "SKILL_NEURONS_RUN_ID"
DEBUG_ENV = "SKILL_NEURONS_DEBUG"
WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RANK_ENVS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


class CLIError(ValueError):
    """A mistake in the command line (run id, checkpoint, --from_run); the message names the fix."""


# The project's errors: each is a user's mistake with a message that names the fix; the CLI prints it as one
# line and exits 2 (a traceback only with --debug or SKILL_NEURONS_DEBUG=1).
USER_ERRORS = (CLIError, TaskError, BackboneError, SkillNeuronError, FFNLookupError)


def wandb_has_credentials() -> bool:
    """True if W&B could log in without prompting: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def new_run_id() -> str:
    """An 8-character id in W&B's alphabet (lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def check_run_id(run_id: str, origin: str = "--run_id") -> str:
    """A run id names one folder under ``--runs_dir``: letters, digits, ``_ - .``, no path separators."""
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise CLIError(f"{origin}={run_id!r} is not a run id: use letters, digits, '_', '-' and '.' (no path "
                       "separators, no '..'), at most 128 characters — the run's folder is --runs_dir/<run_id>")
    return run_id


def launched_rank_is_zero() -> bool:
    """False in a process that a launcher (Lightning's DDP launcher, torchrun, SLURM) started as a rank other
    than global rank 0: such a process joins the run rank 0 claimed."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_ENVS)


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint read with ``weights_only=True``; a truncated or foreign file is one clear error
    (never the unpickler's advice to load it with ``weights_only=False``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle that needs code: all the same advice
        kind = "truncated" if isinstance(err, (OSError, EOFError)) or "zip" in str(err).lower() else "corrupt"
        raise CLIError(f"checkpoint {str(path)!r} cannot be read ({kind}: {type(err).__name__}) — it is not a "
                       "complete checkpoint written by skill-neurons; give another --ckpt_path (e.g. "
                       "runs/<id>/checkpoints/last.ckpt or best.ckpt)") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CLIError(f"checkpoint {str(path)!r} holds no state_dict — it is not a Lightning checkpoint; give a "
                       "--ckpt_path written by skill-neurons fit or import-prompt")
    return checkpoint


def _class_name(class_path: str | None) -> str:
    return (class_path or "").rsplit(".", 1)[-1]


class SkillNeuronsCLI(LightningCLI):
    """LightningCLI over the prompt-tuning modules and :class:`PromptDataModule`.

    Adds ``--runs_dir``/``--run_id``, a checkpoint callback (``--checkpoint.*``: best by ``val/acc`` and
    ``last.ckpt`` after every epoch), the RNG state in checkpoints and the run summary; links ``model.backbone`` and ``model.prompt_length`` to the data.
    """

    def __init__(self, args=None, run: bool = True):
        self._claimed: list[Path] = []  # folders this command created for its run (removed if it fails empty)
        self._run_id: str | None = None
        self._run_dir: Path | None = None
        super().__init__(
            PromptTuningModule, PromptDataModule, subclass_mode_model=True, args=args, run=run,
            save_config_kwargs={"overwrite": True},  # run directories are unique; a resume rewrites its own
            trainer_defaults={"logger": {"class_path": WANDB_LOGGER, "init_args": {"project": "skill-neurons"}}},
            parser_kwargs={"description": "Prompt tuning, skill neurons and adversarial robustness."},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--runs_dir", type=str, default="runs", help="folder that holds one folder per run")
        parser.add_argument("--run_id", type=str | None, default=None,
                            help="run id (default: $WANDB_RUN_ID, the resumed checkpoint's run, or a new id)")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.save_last": True,
                             "checkpoint.filename": "best", "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.enable_version_counter": False})
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.add_lightning_class_args(NeuronSuppression, "suppression")
        parser.link_arguments("model.init_args.backbone", "data.backbone")
        parser.link_arguments("model.init_args.prompt_length", "data.prompt_length")
        parser.link_arguments("model.init_args.layout", "data.layout")

    # ------------------------------------------------------------------ run directory, logger, resume
    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before LightningCLI applies its hyper-parameters over the config: a readable
        checkpoint, of the model class the config uses (a checkpoint of another family is refused)."""
        config = self.config.get(self.config.get("subcommand") or "", None)
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if ckpt_path and ckpt_path not in ("best", "last", "hpc", "registry"):
            path = Path(ckpt_path)
            if path.is_dir():
                raise CLIError(f"--ckpt_path {ckpt_path!r} is a directory — give a checkpoint file in it "
                               "(e.g. runs/<id>/checkpoints/last.ckpt)")
            if not path.is_file():
                raise CLIError(f"checkpoint {ckpt_path!r} does not exist — check --ckpt_path")
            self._check_checkpoint_model(config, read_checkpoint(path), ckpt_path)
        super()._parse_ckpt_path()

    @staticmethod
    def _check_checkpoint_model(config, checkpoint: dict, ckpt_path: str) -> None:
        hparams = checkpoint.get("hyper_parameters") or {}
        model = config.get("model") or {}
        wanted, found = _class_name(model.get("class_path")), _class_name(hparams.get("_class_path"))
        backbone = (model.get("init_args") or {}).get("backbone")
        if found and wanted and found != wanted:
            raise CLIError(
                f"checkpoint {ckpt_path!r} holds a prompt of {found} on backbone {hparams.get('backbone')!r}, but "
                f"the config uses {wanted} on {backbone!r} — evaluate it with its own run's config (--from_run "
                "runs/<id>, or --config runs/<id>/config.yaml) or give a checkpoint trained with this config")
        if hparams.get("backbone") and backbone and hparams["backbone"] != backbone:
            print(f"skill-neurons: note: checkpoint {ckpt_path} was trained on backbone {hparams['backbone']!r}; "
                  f"it replaces the config's {backbone!r} (a checkpoint's hyper-parameters override the config)",
                  file=sys.stderr)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        check_sizes(**{k: config.data.get(k) for k in ("batch_size", "eval_batch_size", "max_train_samples",
                                                          "max_eval_samples", "prompt_length", "max_text_length")})
        run_id, runs_dir, origin = self._run_identity(config, ckpt_path)
        os.environ[RUN_ID_ENV] = run_id  # processes started by Lightning's DDP launcher reuse it
        run_dir = Path(runs_dir) / run_id
        suppression = config.get("suppression")
        if suppression is not None and suppression.get("rate") is not None and not suppression.get("neurons"):
            if not ckpt_path or Path(ckpt_path).parent.name != "checkpoints":
                raise CLIError("--suppression.rate needs skill-neuron files: give --suppression.neurons="
                               "[runs/<id>] or a --ckpt_path inside runs/<id>/checkpoints/ (that run's are used)")
            suppression.neurons = [str(Path(ckpt_path).resolve().parent.parent)]
        self._claim(run_dir, run_id, origin, resume=self.subcommand == "fit" and bool(ckpt_path)
                    and Path(ckpt_path).resolve().parent == (run_dir / "checkpoints").resolve())
        config.trainer.default_root_dir = str(run_dir)
        config.checkpoint.dirpath = str(run_dir / "checkpoints")
        config.summary.run_dir = str(run_dir)
        self._run_id, self._run_dir = run_id, run_dir
        for logger in self._logger_configs(config):
            if logger.get("class_path") == WANDB_LOGGER:
                logger.class_path = tracking.CLASS_PATH  # the same logger, with a bounded online start
            if logger.get("class_path") == tracking.CLASS_PATH:
                args = logger.init_args
                args.save_dir, args.id = str(run_dir), run_id
                args["resume"] = "allow"
                if not os.environ.get("WANDB_MODE") and not wandb_has_credentials() and not args.get("offline"):
                    args.offline = True
                    print("skill-neurons: no W&B credentials found — logging offline in "
                          f"{run_dir}/wandb (upload later with `wandb sync {run_dir}/wandb`)", file=sys.stderr)

    def _run_identity(self, config, ckpt_path: str | None) -> tuple[str, str, str]:
        """(run id, runs folder, where the id came from). Global rank 0 never takes an id from
        ``$SKILL_NEURONS_RUN_ID``: the project sets it for the ranks Lightning's launcher starts, and a second
        command in the same process (or shell) must not reuse the first one's run."""
        runs_dir = config.runs_dir
        if config.run_id:
            return check_run_id(config.run_id), runs_dir, "--run_id"
        if self.subcommand == "fit" and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
            # Resuming runs/<id>/checkpoints/last.ckpt continues run <id> in its own folder.
            run_dir = Path(ckpt_path).resolve().parent.parent
            return run_dir.name, str(run_dir.parent), "--ckpt_path"
        if not launched_rank_is_zero() and os.environ.get(RUN_ID_ENV):
            return check_run_id(os.environ[RUN_ID_ENV], RUN_ID_ENV), runs_dir, RUN_ID_ENV
        if os.environ.get("WANDB_RUN_ID"):
            return check_run_id(os.environ["WANDB_RUN_ID"], "WANDB_RUN_ID"), runs_dir, "WANDB_RUN_ID"
        return new_run_id(), runs_dir, "new"

    def _claim(self, run_dir: Path, run_id: str, origin: str, resume: bool) -> None:
        """Create ``run_dir`` atomically (``mkdir``), or refuse an existing one unless this is a resume of it.
        Only global rank 0 claims; the other ranks (and nodes) join the run it claimed."""
        if not launched_rank_is_zero():
            return
        missing = [p for p in (run_dir.parent, *run_dir.parent.parents) if not p.exists()]
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_dir.mkdir()
        except FileExistsError:
            if resume:
                return
            hint = (" (WANDB_RUN_ID is set in this shell: `unset WANDB_RUN_ID` for a new run)"
                    if origin == "WANDB_RUN_ID" else "")
            raise CLIError(
                f"run {run_id!r} already exists in {run_dir}{hint} — leave out --run_id for a new run or choose "
                f"another id; to continue that run: skill-neurons fit --config {run_dir / 'config.yaml'} "
                f"--ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'}") from None
        self._claimed = [run_dir, *missing]

    def _release(self) -> None:
        """After a failure: remove the folders this command created if nothing was written in them."""
        for folder in self._claimed:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
        self._claimed = []

    def instantiate_classes(self) -> None:
        """LightningCLI's instantiation, plus the RNG state callback (resumes continue the same trajectory)."""
        try:
            super().instantiate_classes()
        except BaseException:
            self._release()
            raise
        self.trainer.callbacks.append(RNGState())

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the stage; on failure remove an empty claimed run directory; always close the W&B run."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            self._release()
            self._finish_wandb(exit_code=1)
            raise
        self._finish_wandb(exit_code=0)

    def _finish_wandb(self, exit_code: int) -> None:
        """Close the W&B run this command started, so the next command in the same process starts its own."""
        for logger in getattr(self.trainer, "loggers", []):
            if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
                logger._experiment.finish(exit_code=exit_code)
                logger._experiment = None

    @staticmethod
    def _logger_configs(config) -> list:
        logger = config.trainer.get("logger")
        if logger in (None, True, False):
            return []
        return list(logger) if isinstance(logger, list) else [logger]

    def before_fit(self) -> None:
        self._pass_config()

    def before_validate(self) -> None:
        self._pass_config()

    def before_test(self) -> None:
        self._pass_config()

    def _pass_config(self) -> None:
        """Give the run summary the resolved config with LightningCLI's keys (``model.learning_rate``)."""
        config = self.config[self.subcommand]
        flat = flatten(json.loads(json.dumps(config.as_dict(), default=str)))
        flat.pop("config", None)
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunSummary):
                callback.config, callback.run_id = flat, self._run_id

    def _sync_hint(self) -> None:
        """Print how to upload the run: every offline segment of it (a resumed run has one per command)."""
        segments = offline_segments(self._run_dir / "wandb", self._run_id) if self.trainer.is_global_zero else []
        if segments:
            print(f"skill-neurons: run {self._run_id} is in {self._run_dir}; upload its W&B run with "
                  f"`wandb sync {' '.join(map(str, segments))}` (browse it offline with "
                  f"`wandb leet {self._run_dir}/wandb`)", file=sys.stderr)

    def after_fit(self) -> None:
        self._sync_hint()

    def after_validate(self) -> None:
        self._sync_hint()

    def after_test(self) -> None:
        self._sync_hint()


# skill-neurons <tool> ...: each module has main(argv) -> exit code.
TOOLS = {"report": "lightning_modules.report", "import-prompt": "lightning_modules.prompt_import"}


def main(args: list[str] | None = None) -> None:
    """Console entry point of ``skill-neurons``.

    ``skill-neurons sweep ...`` runs a W&B sweep file without a W&B server (:mod:`lightning_modules.sweep_runner`);
    everything else is the LightningCLI. A trial started by that runner gets ``$SKILL_NEURONS_RUNS_DIR``: it is
    the default of ``--runs_dir`` (placed right after the subcommand, so a ``--runs_dir`` given in a config file
    or on the command line still wins). A project error (:data:`USER_ERRORS`, also when a library wrapped it)
    is printed as one line and exits 2; ``--debug`` (anywhere) or ``SKILL_NEURONS_DEBUG=1`` re-raises it.
    """
    argv = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        _run(argv, from_console=args is None)
    except Exception as err:
        cause = user_error(err)
        if cause is None or debug:
            raise
        message = " ".join(str(cause).split())
        print(f"skill-neurons: error: {message}  (--debug or {DEBUG_ENV}=1 shows the traceback)",
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def user_error(err: BaseException) -> BaseException | None:
    """The project error behind ``err`` (itself, or in its chain of causes: jsonargparse wraps errors raised
    while instantiating a class), or None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, USER_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _run(argv: list[str], from_console: bool) -> None:
    if argv and argv[0] == "sweep":
        from lightning_modules.sweep_runner import main as sweep_main

        raise SystemExit(sweep_main(argv[1:]))
    if argv and argv[0] in TOOLS:  # commands that are not Lightning stages
        module = importlib.import_module(TOOLS[argv[0]])
        raise SystemExit(module.main(argv[1:]))
    if argv and argv[0] == "analyse":
        argv = _analyse_args(argv[1:])
    if argv and argv[0] in ("fit", "validate", "test", "predict"):
        argv, head = _take_from_run(argv)
        runs_dir = os.environ.get("SKILL_NEURONS_RUNS_DIR")
        if runs_dir:
            head.append(f"--runs_dir={runs_dir}")
        argv = [argv[0], *head, *argv[1:]]
    if from_console:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [sys.argv[0], *argv]
        SkillNeuronsCLI()
    else:
        SkillNeuronsCLI(args=argv)


def _analyse_args(rest: list[str]) -> list[str]:
    """``skill-neurons analyse runs/<id> [options]``: (re)run only the skill-neuron analysis of a fit run whose
    training is complete — a resume of its ``last.ckpt`` with its own config (the training loop has nothing
    left to do, so only the analysis of the best checkpoint runs, in the same run directory)."""
    if not rest or rest[0].startswith("-"):
        raise CLIError("analyse needs a run directory: skill-neurons analyse runs/<id> [options]")
    run = Path(rest[0])
    config, last = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    for path in (config, last):
        if not path.is_file():
            raise CLIError(f"analyse {rest[0]!r}: {path} does not exist — give the folder of a fit run (runs/<id>)")
    return ["fit", "--config", str(config), f"--ckpt_path={last}", *rest[1:]]


def find_run(spec: str) -> Path:
    """A fit run directory: ``runs/<id>``, or ``ROOT?key=value&...`` — the latest finished fit run under ROOT
    (searched recursively) whose ``summary.json`` settings match (``backbone``, ``task``, ``seed``, ...)."""
    root, _, query = spec.partition("?")
    if not query:
        run = Path(root)
        if not (run / "config.yaml").is_file():
            raise CLIError(f"--from_run {spec!r}: no run directory with a config.yaml there")
        return run
    wanted = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    matches = [(summary.get("finished", ""), run) for run, summary in finished_fit_runs([root], recursive=True)
               if all(str(summary.get("settings", {}).get(k)) == v for k, v in wanted.items())]
    if not matches:
        raise CLIError(f"--from_run {spec!r}: no finished fit run under {root!r} has settings {wanted} — "
                         "check the folder (e.g. the --dir of the sweep that trained the prompts) and the values")
    return max(matches)[1]


def _take_from_run(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--from_run RUN`` evaluates that fit run's best prompt with its own config: it becomes ``--config
    RUN/config.yaml --ckpt_path RUN/checkpoints/best.ckpt --run_id=null``, placed first, so every other
    option (``--data.task`` for transfer, ``--suppression.*``) overrides it."""
    rest, spec = [], None
    iterator = iter(argv)
    for arg in iterator:
        if arg == "--from_run":
            spec = next(iterator, None)
        elif arg.startswith("--from_run="):
            spec = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if spec is None:
        return argv, []
    if rest[0] == "fit":
        raise CLIError("--from_run evaluates a trained prompt: use it with validate or test, not fit")
    run = find_run(spec)
    best = run / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise CLIError(f"--from_run {spec!r}: {best} does not exist (the run saved no best checkpoint)")
    return rest, ["--config", str(run / "config.yaml"), f"--ckpt_path={best}", "--run_id=null"]


if __name__ == "__main__":
    main()
