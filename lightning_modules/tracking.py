"""W&B logging that never hangs, never loses a run and does not talk over the project: Lightning's
``WandbLogger`` with a bounded online start and W&B's quiet console.

With credentials but no network, ``wandb.init`` waits ``init_timeout`` seconds (W&B's own setting; this
project's default is :data:`INIT_TIMEOUT_S`, ``$WANDB_INIT_TIMEOUT`` wins) and then fails; a malformed key
fails at once. Either way :class:`WandbLogger` starts the run offline instead, says why in one line, and
the run's metrics land in ``<run dir>/wandb/offline-run-*`` for ``wandb sync``.

W&B runs with ``quiet`` on (unless ``$WANDB_QUIET``/``$WANDB_SILENT`` or the config's ``settings`` say
otherwise): its start still says where the run's data is saved, but its footer (run history, summary, its own
``wandb sync`` line) is left out, so the project's own line — where the run is and how to upload it — is the
last thing a command prints.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.loggers import wandb as lightning_wandb
from lightning.pytorch.loggers.logger import rank_zero_experiment

from records.prompt_artifact import ARTIFACT_TYPE
from records.secrets import redact_argv

INIT_TIMEOUT_S = 30.0
CLASS_PATH = "lightning_modules.tracking.WandbLogger"


QUIET_ENVS = ("WANDB_QUIET", "WANDB_SILENT")
OFFLINE_USE = ("not declared: W&B cannot record artifact use from an offline run (run.use_artifact raises offline); "
               "evaluate online to link the evaluation to the prompt's artifact")  # a user who sets either chooses W&B's console output


def project_settings(settings: Any = None, online: bool = True) -> Any:
    """W&B ``settings`` with this project's defaults under the caller's: ``quiet`` (unless ``$WANDB_QUIET`` or
    ``$WANDB_SILENT`` is set) and, for an online start, ``init_timeout`` (unless ``$WANDB_INIT_TIMEOUT`` is
    set). A ``wandb.Settings`` object is the caller's choice and is returned as it is."""
    if settings is not None and not isinstance(settings, dict):
        return settings
    defaults: dict[str, Any] = {}
    if not any(os.environ.get(name) for name in QUIET_ENVS):
        defaults["quiet"] = True
    if online and not os.environ.get("WANDB_INIT_TIMEOUT"):
        defaults["init_timeout"] = INIT_TIMEOUT_S
    merged = {**defaults, **(settings or {})}
    return merged or None


class WandbLogger(lightning_wandb.WandbLogger):
    """Lightning's ``WandbLogger`` (same arguments) whose online start is bounded by ``init_timeout`` and
    falls back to an offline run, with one line on stderr, when W&B cannot be reached or rejects the key."""

    def __init__(self, *args, **kwargs):
        kwargs["settings"] = project_settings(kwargs.get("settings"), online=not kwargs.get("offline"))
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning passes None, which W&B warns has no effect
            self._wandb_init.pop("anonymous", None)

    def identify(self, name: str, job_type: str) -> None:
        """The run's readable name and job type (``records.run_identity``), unless the config gave
        them; call it before the run starts."""
        self._wandb_init["name"] = self._name = self._wandb_init.get("name") or name
        self._wandb_init["job_type"] = self._wandb_init.get("job_type") or job_type

    @property
    @rank_zero_experiment
    def experiment(self):
        """The W&B run; an online start that fails (no network, bad key) becomes an offline run. W&B records the
        command line (``sys.argv``) in the run, and ``wandb sync`` uploads it: it sees it with secrets redacted
        (:func:`records.secrets.redact_argv`); the process's own ``sys.argv`` (which DDP ranks re-run) is kept."""
        argv = sys.argv
        sys.argv = redact_argv(argv)
        try:
            return self._start()
        finally:
            sys.argv = argv

    def _start(self):
        import wandb

        if self._experiment is None and self._save_dir:
            os.makedirs(self._save_dir, exist_ok=True)  # W&B looks for a git repository there (and warns if missing)
        if self._experiment is not None or self._offline or wandb.run is not None:
            return super().experiment
        try:
            return super().experiment
        except Exception as err:  # CommError (timed out), AuthenticationError (bad key), UsageError ...
            self._experiment = None
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"skill-neurons: W&B could not start online ({type(err).__name__}: {reason}) — logging offline "
                  f"in {self._save_dir or '.'}/wandb; upload later with `wandb sync`", file=sys.stderr, flush=True)
            wandb.teardown()  # the service still holds the run id of the failed start
            self._offline = True
            self._wandb_init["mode"] = "offline"
            settings = self._wandb_init.get("settings")
            if isinstance(settings, dict):  # the rest of the settings (quiet) still hold offline
                self._wandb_init["settings"] = {k: v for k, v in settings.items() if k != "init_timeout"} or None
            return super().experiment

    def log_prompt_artifact(self, name: str, files: dict[str, Any], aliases: list[str],
                            metadata: dict[str, Any]) -> None:
        """Log a trained prompt as a version of the ``model`` artifact ``name`` (:mod:`records.prompt_artifact`):
        ``files`` by their name in the artifact. W&B copies them into its staging folder (KBs), from which an
        offline run's ``wandb sync`` uploads them; Lightning's own ``log_model`` (the whole module, frozen backbone
        included) stays off."""
        import wandb

        artifact = wandb.Artifact(name, type=ARTIFACT_TYPE, metadata=metadata)
        for name_in_artifact, path in files.items():
            artifact.add_file(str(path), name=name_in_artifact)
        self.experiment.log_artifact(artifact, aliases=aliases)

    def use_prompt_artifact(self, ref: str) -> dict[str, Any]:
        """Declare the prompt artifact version ``ref`` as used by this run (:func:`declare_prompt_use`)."""
        return declare_prompt_use(self.experiment, ref)


def declare_prompt_use(run: Any, ref: str) -> dict[str, Any]:
    """Declare the prompt artifact version ``ref`` as used by the W&B ``run`` (``run.use_artifact``: the lineage
    graph links what the run made — an evaluation, an adversarial set — to the fit); W&B refuses it offline, so an
    offline run says so instead. Returns what happened: ``{"ref", "declared", "why"}``."""
    if run.settings.mode in ("offline", "dryrun"):
        return {"ref": ref, "declared": False, "why": OFFLINE_USE}
    try:
        run.use_artifact(ref, type=ARTIFACT_TYPE)
    except Exception as err:  # not on the server (an offline fit not synced yet), another project
        return {"ref": ref, "declared": False, "why": f"{type(err).__name__}: {str(err).strip()[:200]}"}
    return {"ref": ref, "declared": True, "why": None}
