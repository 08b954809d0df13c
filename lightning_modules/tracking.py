"""W&B logging that never hangs and never loses a run: Lightning's ``WandbLogger`` with a bounded online start.

With credentials but no network, ``wandb.init`` waits ``init_timeout`` seconds (W&B's own setting; this
project's default is :data:`INIT_TIMEOUT_S`, ``$WANDB_INIT_TIMEOUT`` wins) and then fails; a malformed key
fails at once. Either way :class:`WandbLogger` starts the run offline instead, says why in one line, and
the run's metrics land in ``<run dir>/wandb/offline-run-*`` for ``wandb sync``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.loggers import wandb as lightning_wandb
from lightning.pytorch.loggers.logger import rank_zero_experiment

INIT_TIMEOUT_S = 30.0
CLASS_PATH = "lightning_modules.tracking.WandbLogger"


def bounded_settings(settings: Any = None) -> Any:
    """W&B ``settings`` with ``init_timeout`` set (unless given there or in ``$WANDB_INIT_TIMEOUT``)."""
    if os.environ.get("WANDB_INIT_TIMEOUT"):
        return settings
    if settings is None:
        return {"init_timeout": INIT_TIMEOUT_S}
    if isinstance(settings, dict):
        return {"init_timeout": INIT_TIMEOUT_S, **settings}
    return settings  # a wandb.Settings object: the caller chose


class WandbLogger(lightning_wandb.WandbLogger):
    """Lightning's ``WandbLogger`` (same arguments) whose online start is bounded by ``init_timeout`` and
    falls back to an offline run, with one line on stderr, when W&B cannot be reached or rejects the key."""

    def __init__(self, *args, **kwargs):
        if not kwargs.get("offline"):
            kwargs["settings"] = bounded_settings(kwargs.get("settings"))
        super().__init__(*args, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self):
        """The W&B run; an online start that fails (no network, bad key) becomes an offline run."""
        import wandb

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
            self._wandb_init.pop("settings", None)
            return super().experiment
