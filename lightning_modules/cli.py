"""``skill-neurons``: a LightningCLI with run directories, W&B tracking and resumable fits.

    skill-neurons fit --config configs/quickstart.yaml
    skill-neurons fit --config configs/roberta/sst2.yaml --model.learning_rate=3e-3 --seed_everything=34
    skill-neurons fit --config configs/roberta/sst2.yaml --ckpt_path runs/<id>/checkpoints/last.ckpt  # resume
    skill-neurons validate --config configs/roberta/sst2.yaml --ckpt_path runs/<id>/checkpoints/best.ckpt

Every run gets ``runs/<run_id>/`` (``--runs_dir``; W&B's run id is ``<run_id>``) holding the resolved
``config.yaml``, ``summary.json``, ``checkpoints/`` and the W&B files. Without W&B credentials the run is
logged offline, never prompting; ``wandb sync`` uploads it later.
"""

from __future__ import annotations

import importlib
import json
import netrc
import os
import secrets
import string
import sys
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks.run_summary import RunSummary, finished_fit_runs, flatten
from callbacks.suppression import NeuronSuppression
from datamodules import PromptDataModule
from lightning_modules.prompt_tuning import PromptTuningModule

RUN_ID_ENV = "SKILL_NEURONS_RUN_ID"
WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"


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


class SkillNeuronsCLI(LightningCLI):
    """LightningCLI over the prompt-tuning modules and :class:`PromptDataModule`.

    Adds ``--runs_dir``/``--run_id``, a checkpoint callback (``--checkpoint.*``: best by ``val/acc`` and
    ``last.ckpt``) and the run summary; links ``model.backbone`` and ``model.prompt_length`` to the data.
    """

    def __init__(self, args=None, run: bool = True):
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
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.save_last": True,
                             "checkpoint.filename": "best", "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.enable_version_counter": False})
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.add_lightning_class_args(NeuronSuppression, "suppression")
        parser.link_arguments("model.init_args.backbone", "data.backbone")
        parser.link_arguments("model.init_args.prompt_length", "data.prompt_length")

    # ------------------------------------------------------------------ run directory, logger, resume
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("best", "last", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise SystemExit(f"error: checkpoint {ckpt_path!r} does not exist — check --ckpt_path")
        run_id, runs_dir = self._run_identity(config, ckpt_path)
        os.environ[RUN_ID_ENV] = run_id  # processes started by Lightning's DDP launcher reuse it
        run_dir = Path(runs_dir) / run_id
        config.trainer.default_root_dir = str(run_dir)
        config.checkpoint.dirpath = str(run_dir / "checkpoints")
        config.summary.run_dir = str(run_dir)
        suppression = config.get("suppression")
        if suppression is not None and suppression.get("rate") is not None and not suppression.get("neurons"):
            if not ckpt_path or Path(ckpt_path).parent.name != "checkpoints":
                raise SystemExit("error: --suppression.rate needs skill-neuron files: give --suppression.neurons="
                                 "[runs/<id>] or a --ckpt_path inside runs/<id>/checkpoints/ (that run's are used)")
            suppression.neurons = [str(Path(ckpt_path).resolve().parent.parent)]
        self._run_id, self._run_dir = run_id, run_dir
        for logger in self._logger_configs(config):
            if logger.get("class_path") == WANDB_LOGGER:
                args = logger.init_args
                args.save_dir, args.id = str(run_dir), run_id
                args["resume"] = "allow"
                if not os.environ.get("WANDB_MODE") and not wandb_has_credentials() and not args.get("offline"):
                    args.offline = True
                    print("skill-neurons: no W&B credentials found — logging offline in "
                          f"{run_dir}/wandb (upload later with `wandb sync {run_dir}/wandb/offline-run-*`)",
                          file=sys.stderr)

    def _run_identity(self, config, ckpt_path: str | None) -> tuple[str, str]:
        runs_dir = config.runs_dir
        if config.run_id:
            return config.run_id, runs_dir
        if self.subcommand == "fit" and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
            # Resuming runs/<id>/checkpoints/last.ckpt continues run <id> in its own folder.
            run_dir = Path(ckpt_path).resolve().parent.parent
            return run_dir.name, str(run_dir.parent)
        return os.environ.get(RUN_ID_ENV) or os.environ.get("WANDB_RUN_ID") or new_run_id(), runs_dir

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
        wandb_dirs = sorted((self._run_dir / "wandb").glob("offline-run-*")) if self.trainer.is_global_zero else []
        if wandb_dirs:
            print(f"skill-neurons: run {self._run_id} is in {self._run_dir}; upload its W&B run with "
                  f"`wandb sync {wandb_dirs[-1]}` (browse it offline with `wandb leet {self._run_dir}/wandb`)",
                  file=sys.stderr)

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
    or on the command line still wins).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "sweep":
        from lightning_modules.sweep_runner import main as sweep_main

        raise SystemExit(sweep_main(argv[1:]))
    if argv and argv[0] in TOOLS:  # commands that are not Lightning stages
        module = importlib.import_module(TOOLS[argv[0]])
        raise SystemExit(module.main(argv[1:]))
    head: list[str] = []
    if argv and argv[0] in ("fit", "validate", "test", "predict"):
        argv, head = _take_from_run(argv)
        runs_dir = os.environ.get("SKILL_NEURONS_RUNS_DIR")
        if runs_dir:
            head.append(f"--runs_dir={runs_dir}")
        if head:
            args = [argv[0], *head, *argv[1:]]
    SkillNeuronsCLI(args=args)


def find_run(spec: str) -> Path:
    """A fit run directory: ``runs/<id>``, or ``ROOT?key=value&...`` — the latest finished fit run under ROOT
    (searched recursively) whose ``summary.json`` settings match (``backbone``, ``task``, ``seed``, ...)."""
    root, _, query = spec.partition("?")
    if not query:
        run = Path(root)
        if not (run / "config.yaml").is_file():
            raise SystemExit(f"error: --from_run {spec!r}: no run directory with a config.yaml there")
        return run
    wanted = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    matches = [(summary.get("finished", ""), run) for run, summary in finished_fit_runs([root], recursive=True)
               if all(str(summary.get("settings", {}).get(k)) == v for k, v in wanted.items())]
    if not matches:
        raise SystemExit(f"error: --from_run {spec!r}: no finished fit run under {root!r} has settings {wanted} — "
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
        raise SystemExit("error: --from_run evaluates a trained prompt: use it with validate or test, not fit")
    run = find_run(spec)
    best = run / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise SystemExit(f"error: --from_run {spec!r}: {best} does not exist (the run saved no best checkpoint)")
    return rest, ["--config", str(run / "config.yaml"), f"--ckpt_path={best}", "--run_id=null"]


if __name__ == "__main__":
    main()
