"""The LightningCLI of ``skill-neurons fit|validate|test``: run directories, W&B tracking, resumable fits.

Every run gets ``runs/<run_id>/`` (``--runs_dir``; W&B's run id is ``<run_id>``) holding the resolved
``config.yaml``, ``summary.json``, ``checkpoints/`` and the W&B files. Without W&B credentials the run is
logged offline, never prompting; ``wandb sync`` uploads it later.

A run directory is claimed with an atomic ``mkdir`` before any work: a command on an existing run id is
refused unless it is a ``fit`` resuming a checkpoint of that run. Before the stage starts, the data are read
and every callback checks the run (:func:`lightning_modules.contracts.preflight`), so a user's mistake leaves nothing.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import sys
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.checkpoint import RunCheckpoint, RunConfigFile
from callbacks.model_summary import PromptModelSummary
from callbacks.predictions import PredictionWriter
from callbacks.rng_state import RNGState
from callbacks.run_summary import SMOKE, RunSummary
from callbacks.intervention import NeuronIntervention
from callbacks.suppression import NeuronSuppression
from datamodules.prompt_datamodule import PromptDataModule, check_sizes
from lightning_modules import tracking
from lightning_modules.contracts import preflight
from lightning_modules.prompt_tuning import PromptTuningModule, check_model_options
from records import prompt_artifact
from records.prompt_checkpoint import copy_prompt_only, prompt_of, read_checkpoint
from records.run_identity import run_identity
from records.run_status import status_exit_code
from records.secrets import is_secret, redact, without_secrets
from records.settings import RunSettings
from records.summary import (
    BEST_CHECKPOINT, CHECKPOINT_DIR, flatten, new_run_id, offline_segments, read_summary, run_of_checkpoint,
    update_summary,
)
from skill_neurons.cli_options import DEBUG_ENV, parser_kwargs
from skill_neurons.console import metrics_table, where_line
from skill_neurons.parse_errors import one_line
from skill_neurons.runs import (
    DEFAULT_RUNS_DIR, RUN_ID_ENV, CLIError, check_run_id, launched_rank_is_zero, resume_changes,
)
from skill_neurons.wandb_env import NO_CREDENTIALS, offline_reason

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"


def _class_name(class_path: str | None) -> str:
    return (class_path or "").rsplit(".", 1)[-1]


def hide_group(parser: LightningArgumentParser, key: str) -> None:
    """Leave the options of group ``key`` (``--key``, ``--key.*``) out of ``parser``'s help and usage; they
    still parse."""
    group = parser.groups[key]
    group.description = None
    for action in group._group_actions:
        action.help = argparse.SUPPRESS


class OneLineParser(LightningArgumentParser):
    """LightningCLI's parser whose errors are one line naming the option (with a "did you mean" for a typo of a
    known option, :func:`skill_neurons.parse_errors.one_line`) and one line pointing to ``--help``, exit 2 —
    not ~90 lines of usage first. ``--debug`` (``SKILL_NEURONS_DEBUG=1``) keeps jsonargparse's full message."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        print(f"skill-neurons: error: {one_line(message, known_options(parser))}\n"
              f"skill-neurons: `{prog} --help` lists the options", file=sys.stderr, flush=True)
        self.exit(2)


def known_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--option`` of ``parser``, with ``--model.<argument>`` for the prompt-tuning modules' arguments
    (given by ``class_path``, they are no options of the parser itself)."""
    options = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    model = [f"--model.{name}" for name in inspect.signature(PromptTuningModule.__init__).parameters
             if name != "self"]
    return options + model


def flat_config(config) -> dict:
    """A stage's resolved config as flat LightningCLI keys (``model.learning_rate``), secrets removed — what
    ``summary.json`` records and a resume is compared with."""
    flat = flatten(json.loads(json.dumps(config.as_dict(), default=str)))
    flat.pop("config", None)
    return redact(flat)


def config_without_secrets(config):
    """A copy of a LightningCLI config (``Namespace``) without any key named like a credential
    (:func:`records.secrets.is_secret`), at any depth: what ``config.yaml`` may hold."""
    config = config.clone()
    for key, value in list(config.items(branches=False)):
        if any(is_secret(part) for part in key.split(".")):
            del config[key]
        elif isinstance(value, list):  # e.g. trainer.callbacks: a list of class_path/init_args namespaces
            config[key] = [config_without_secrets(v) if isinstance(v, Namespace) else without_secrets(v)
                           for v in value]
        elif isinstance(value, dict):
            config[key] = without_secrets(value)
    return config


class SecretFreeConfig(RunConfigFile):
    """The run's ``config.yaml`` (written atomically) without secrets: a run reused through it (a resume,
    ``--from_run``) takes credentials from the environment (``WANDB_API_KEY``, ``wandb login``) again."""

    def __init__(self, parser, config, *args, **kwargs):
        super().__init__(parser, config_without_secrets(config), *args, **kwargs)


class SkillNeuronsCLI(LightningCLI):
    """LightningCLI over the prompt-tuning modules and :class:`PromptDataModule`.

    Adds ``--runs_dir``/``--run_id``, a checkpoint callback (``--checkpoint.*``: best by ``val/acc`` and
    ``last.ckpt`` after every epoch), the RNG state in checkpoints and the run summary; links ``model.backbone`` and
    ``model.prompt_length`` to the data. ``--suppression.*`` (validate/test only) is left out of ``fit --help``.
    """

    def __init__(self, args=None, run: bool = True):
        self._claimed: list[Path] = []  # folders this command created for its run (removed if it fails empty)
        self._run_id: str | None = None
        self._run_dir: Path | None = None
        self._resume_changes: dict[str, list] = {}  # settings a resume changes (skill_neurons.runs.resume_changes)
        super().__init__(
            PromptTuningModule, PromptDataModule, subclass_mode_model=True, args=args, run=run,
            save_config_kwargs={"overwrite": True},  # run directories are unique; a resume rewrites its own
            trainer_defaults={"logger": {"class_path": WANDB_LOGGER, "init_args": {"project": "skill-neurons"}}},
            parser_kwargs=parser_kwargs(), parser_class=OneLineParser,
            save_config_callback=SecretFreeConfig,  # config.yaml written atomically, without secrets
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--runs_dir", type=str, default=DEFAULT_RUNS_DIR,
                            help="folder that holds one folder per run")
        parser.add_argument("--run_id", type=str | None, default=None,
                            help="run id (default: $WANDB_RUN_ID, the resumed checkpoint's run, or a new id)")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.save_last": True,
                             "checkpoint.filename": "best", "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.enable_version_counter": False})
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.add_lightning_class_args(NeuronSuppression, "suppression")
        parser.add_lightning_class_args(NeuronIntervention, "intervention")
        parser.link_arguments("model.init_args.backbone", "data.backbone")
        parser.link_arguments("model.init_args.prompt_length", "data.prompt_length")
        parser.link_arguments("model.init_args.layout", "data.layout")

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        """LightningCLI's parsers, with ``--suppression.*`` left out of ``fit --help``: suppression perturbs
        validate/test only, and a fit refuses it. The fit parser still reads the options, so a fit run's own
        ``config.yaml`` (which holds ``suppression:``) resumes and feeds ``--from_run``."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            hide_group(self._subcommand_parsers["fit"], "suppression")
            hide_group(self._subcommand_parsers["fit"], "intervention")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        """LightningCLI's stage parser; ``validate``/``test`` default to ``--verbose=false``: the stage prints
        its metrics itself, with full names (:func:`skill_neurons.console.metrics_table`)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "verbose" in self._subcommand_method_arguments.get(subcommand, {}):
            parser.set_defaults({"verbose": False})
        return parser

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
            checkpoint = read_checkpoint(path)
            prompt_of(checkpoint, f"checkpoint {ckpt_path!r}")  # present and finite
            self._check_checkpoint_model(config, checkpoint, ckpt_path)
            run_dir = run_of_checkpoint(path)
            if (self.config.get("subcommand") == "fit" and run_dir is not None
                    and config.get("run_id") in (None, run_dir.name)):
                # before the checkpoint's hyper-parameters replace the config's: compare what the user asked for
                self._resume_changes = resume_changes(run_dir, flat_config(config), ckpt_path)
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
        # the option rules, before any work (the model would load its backbone before the DataModule checks its
        # sizes): the same functions the model and the DataModule call when they are built without the CLI
        check_sizes(**{k: config.data.get(k) for k in ("batch_size", "eval_batch_size", "max_train_samples",
                                                          "max_eval_samples", "prompt_length", "max_text_length",
                                                          "num_workers")})
        check_model_options(**(config.model.get("init_args") or {}))
        suppression = config.get("suppression")
        if self.subcommand == "fit" and suppression is not None and suppression.get("rate") is not None:
            raise CLIError("--suppression.* applies to validate and test (it perturbs the evaluation of a trained "
                           "prompt), not fit — use skill-neurons validate --from_run runs/<id> "
                           "--suppression.rate=...")
        intervention = config.get("intervention")
        intervening = intervention is not None and intervention.get("kind") is not None
        if self.subcommand == "fit" and intervening:
            raise CLIError("--intervention.* applies to validate and test (it patches or scales the neurons of a "
                           "trained prompt), not fit — use skill-neurons validate --from_run runs/<id> "
                           "--intervention.kind=patch")
        if intervening and suppression is not None and suppression.get("rate") is not None:
            raise CLIError("--intervention.* and --suppression.* each perturb the neurons: give one of them per run")
        run_id, runs_dir, origin = self._run_identity(config, ckpt_path)
        os.environ[RUN_ID_ENV] = run_id  # processes started by Lightning's DDP launcher reuse it
        run_dir = Path(runs_dir) / run_id
        if suppression is not None and suppression.get("rate") is not None and not suppression.get("neurons"):
            source = run_of_checkpoint(ckpt_path) if ckpt_path else None
            if source is None:
                raise CLIError("--suppression.rate needs skill-neuron files: give --suppression.neurons="
                               "[runs/<id>] or a --ckpt_path inside runs/<id>/checkpoints/ (that run's are used)")
            suppression.neurons = [str(source)]
        if intervening and not intervention.get("neurons"):
            source = run_of_checkpoint(ckpt_path) if ckpt_path else None
            if source is None:
                raise CLIError("--intervention.kind needs skill-neuron files: give --intervention.neurons="
                               "[runs/<id>] or a --ckpt_path inside runs/<id>/checkpoints/ (that run's are used)")
            intervention.neurons = [str(source)]
        self._claim(run_dir, run_id, origin, resume=self.subcommand == "fit" and bool(ckpt_path)
                    and run_of_checkpoint(ckpt_path) == run_dir.resolve())
        config.trainer.default_root_dir = str(run_dir)
        config.checkpoint.dirpath = str(run_dir / CHECKPOINT_DIR)
        config.summary.run_dir = str(run_dir)
        self._run_id, self._run_dir = run_id, run_dir
        for logger in self._logger_configs(config):
            if logger.get("class_path") == WANDB_LOGGER:
                logger.class_path = tracking.CLASS_PATH  # the same logger, with a bounded online start
            if logger.get("class_path") == tracking.CLASS_PATH:
                args = logger.init_args
                # absolute: the W&B service writes the run's .wandb log and may run in another folder (an earlier
                # command of this process started it)
                args.save_dir, args.id = str(run_dir.absolute()), run_id
                args["resume"] = "allow"
                if offline_reason() == NO_CREDENTIALS and not args.get("offline"):
                    args.offline = True
                    print(f"skill-neurons: no W&B credentials found — logging offline in {run_dir}/wandb "
                          "(the last line says how to upload it)", file=sys.stderr)

    def _run_identity(self, config, ckpt_path: str | None) -> tuple[str, str, str]:
        """(run id, runs folder, where the id came from). Global rank 0 never takes an id from
        ``$SKILL_NEURONS_RUN_ID``: the project sets it for the ranks Lightning's launcher starts, and a second
        command in the same process (or shell) must not reuse the first one's run."""
        runs_dir = config.runs_dir
        if config.run_id:
            return check_run_id(config.run_id), runs_dir, "--run_id"
        run_dir = run_of_checkpoint(ckpt_path) if self.subcommand == "fit" and ckpt_path else None
        if run_dir is not None:  # resuming runs/<id>/checkpoints/last.ckpt continues run <id> in its own folder
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
        if run_dir.parent.exists() and not run_dir.parent.is_dir():
            raise CLIError(f"--runs_dir {str(run_dir.parent)!r} is a file, not a folder — give a folder for the runs "
                           "(it is created if missing), e.g. --runs_dir=runs")
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
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
        except OSError as err:  # read-only, no permission, a file in the way
            raise CLIError(f"cannot create the run folder {run_dir} ({err.strerror or type(err).__name__}) — give a "
                           "--runs_dir you can write to") from None
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
        """LightningCLI's instantiation, plus the RNG state callback (resumes continue the same trajectory) and,
        for ``predict``, the callback that writes the prediction tables."""
        try:
            super().instantiate_classes()
        except BaseException:
            self._release()
            raise
        self.trainer.callbacks.append(RNGState())
        if self.subcommand == "predict" and not any(isinstance(cb, PredictionWriter) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())
        config = self.config[self.subcommand] if self.subcommand else self.config
        for logger in self.trainer.loggers:  # not in config.yaml: a reused config (--from_run) gets its own
            if isinstance(logger, tracking.WandbLogger):
                logger.identify(*run_identity(config.as_dict(), self.subcommand or "fit"))

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        """LightningCLI's trainer, with :class:`PromptModelSummary` as its model summary (no always-zero FLOPs)
        unless the config turns the summary off or names a summary callback of its own."""
        own = [c for c in config.get("callbacks") or [] if isinstance(c, ModelSummary)]
        if config.get("enable_model_summary") is not False and not own:
            # Lightning adds its default summary only when enabled (and says it skips it when one is given)
            config = {**config, "enable_model_summary": False}
            callbacks = [*callbacks, PromptModelSummary()]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the stage; on failure remove an empty claimed run directory; always close the W&B run; then
        say where the run is (the last line the command prints). A run that did not finish exits non-zero
        (:func:`records.run_status.status_exit_code`): 143 after SIGTERM (Lightning's ``SIGTERMException`` is a
        ``SystemExit`` without a code: it exited 0), 130 after Ctrl-C, 3 when ``incomplete``."""
        try:
            super()._run_subcommand(subcommand)
        except (SIGTERMException, SystemExit) as stop:
            self._release()
            self._finish_wandb(exit_code=1)
            status = read_summary(self._run_dir).get("status") if self._run_dir else None
            sigterm = isinstance(stop, SIGTERMException)
            if sigterm or status == "interrupted":
                if subcommand == "fit" and self._run_dir is not None and self.trainer.is_global_zero:
                    print(f"skill-neurons: run {self._run_id} was interrupted ({'SIGTERM' if sigterm else 'Ctrl-C'}): "
                          f"`skill-neurons analyse {shlex.quote(str(self._run_dir))}` finishes it (resuming its "
                          "training first if it was not complete)", file=sys.stderr, flush=True)
                self._print_where()
                raise SystemExit(status_exit_code("interrupted", sigterm=sigterm)) from None
            raise
        except BaseException:
            self._release()
            self._finish_wandb(exit_code=1)
            raise
        self._track_prompt(subcommand)
        self._finish_wandb(exit_code=0)
        self._print_where()
        # Global rank 0 writes the summary and owns the exit code; another rank that got here ended well (it may
        # read the summary before rank 0 has written its final status; srun and torchrun fail on any rank's code)
        rank_zero = getattr(self.trainer, "is_global_zero", True)
        code = status_exit_code(read_summary(self._run_dir).get("status")) if self._run_dir and rank_zero else 0
        if code:
            raise SystemExit(code)

    def _track_prompt(self, subcommand: str) -> None:
        """The prompt on W&B (global rank 0, the project's W&B logger): a finished fit logs its best prompt as a
        version of its configuration's ``model`` artifact (:mod:`records.prompt_artifact`), keeping the files in
        ``runs/<id>/prompt_artifact/``; an evaluation of a prompt artifact's folder declares that version as used
        (``summary.json`` → ``prompt_artifact`` says whether W&B recorded it)."""
        loggers = [lg for lg in getattr(self.trainer, "loggers", []) if isinstance(lg, tracking.WandbLogger)]
        if not loggers or self._run_dir is None or not self.trainer.is_global_zero:
            return
        summary = read_summary(self._run_dir)
        if subcommand == "fit":
            if summary.get("status") != "finished" or not (self._run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT).is_file():
                return
            settings, best = RunSettings.from_summary(summary), summary.get("best") or {}
            name = settings.prompt_artifact_name
            metadata = {**{k: v for k, v in settings.to_json().items() if v is not None}, "run_id": self._run_id,
                        "best_epoch": best.get("epoch"), "best_val_acc": best.get("val/acc")}
            try:
                folder = prompt_artifact.write_folder(self._run_dir, name)
                best_ckpt = self._run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT
                copy_prompt_only(best_ckpt, prompt_artifact.checkpoint_path(folder))
                loggers[0].log_prompt_artifact(name, prompt_artifact.files_of(folder),
                                               prompt_artifact.aliases(self._run_id, settings.seed), metadata)
            except Exception as err:  # the run itself is complete: say what is missing, keep its status
                print(f"skill-neurons: warning: the prompt artifact {name} was not logged ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:200]}) — the run's best.ckpt is complete; evaluate it with "
                      f"--from_run {self._run_dir}", file=sys.stderr, flush=True)
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        source = run_of_checkpoint(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
        ref = prompt_artifact.reference(source) if source and prompt_artifact.is_folder(source) else None
        if ref:
            update_summary(self._run_dir, prompt_artifact=loggers[0].use_prompt_artifact(ref))

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

    def before_predict(self) -> None:
        self._pass_config()

    def _pass_config(self) -> None:
        """Give the run summary the resolved config with LightningCLI's keys (``model.learning_rate``)."""
        flat = flat_config(self.config[self.subcommand])
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunSummary):
                callback.describe_run(self._run_id, flat, self._resume_changes)
        preflight(self.trainer, self.model, self.datamodule, self.subcommand)

    def _print_where(self) -> None:
        """The command's last line (global rank 0): where the run is and how to upload every offline segment
        of its W&B run (a resumed run has one per command), or its W&B page."""
        if self._run_dir is None or not self.trainer.is_global_zero:
            return
        summary = read_summary(self._run_dir)
        segments = offline_segments(self._run_dir / "wandb", self._run_id)
        url = (summary.get("wandb") or {}).get("url")
        smoke = SMOKE if summary.get("status") == "smoke" else None
        print(where_line(self._run_id, self._run_dir, segments, url, smoke), file=sys.stderr, flush=True)

    def _print_metrics(self, stage: str) -> None:
        """The evaluation's metrics with their full names (in place of Lightning's table, see ``verbose``)."""
        config = self.config[self.subcommand]
        if self.trainer.is_global_zero and not config.get("verbose"):
            table = metrics_table(dict(self.trainer.logged_metrics), stage)
            if table:
                print(table, flush=True)

    def after_validate(self) -> None:
        self._print_metrics("validate")

    def after_test(self) -> None:
        self._print_metrics("test")
