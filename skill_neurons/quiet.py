"""Noise a normal run should not print, filtered here because its cause lies in a library (each entry says why).
The entry point installs these filters (``skill_neurons.cli.main``): process-wide settings are never made on
import of a library module.

Fixed at their cause elsewhere: W&B's "The anonymous setting has no effect" (Lightning passed ``anonymous=None``;
``tracking.WandbLogger`` no longer passes it) and "git root runs/<id> does not exist" (W&B started before the run
folder existed; ``tracking.WandbLogger`` creates it first).
"""

from __future__ import annotations

import logging
import warnings

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
# torch 2.10+ deprecates LeafSpec, which lightning.pytorch.utilities._pytree (2.6) still builds at every step.
LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# skill-neurons passes the command line to LightningCLI as `args` (after rewriting --from_run and the sweep's
# --runs_dir); LightningCLI warns when sys.argv also holds arguments, which are the same ones.
CLI_ARGS = r"LightningCLI's args parameter is intended to run from within Python"
# A fit that resumes its own run (``--ckpt_path runs/<id>/checkpoints/last.ckpt``, ``analyse``) writes into its own
# checkpoint folder; Lightning warns whenever that folder is not empty. A new run never meets a non-empty folder
# (its run directory is claimed with an atomic mkdir), so the warning only ever says "this is a resume".
CHECKPOINT_DIR_NOT_EMPTY = r"Checkpoint directory .* exists and is not empty"
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropLitloggerTip(logging.Filter):
    """Lightning advertises its own cloud logger at every Trainer start, also to runs that log to W&B."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LITLOGGER_TIP)


def quiet_known_noise() -> None:
    """Install the filters (idempotent). Also Lightning's notes that are expected here: a checkpoint holds only
    the prompt, and the frozen backbone is in eval mode on purpose."""
    warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in the checkpoint")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=LEAFSPEC, category=FutureWarning)
    warnings.filterwarnings("ignore", message=CLI_ARGS)
    warnings.filterwarnings("ignore", message=CHECKPOINT_DIR_NOT_EMPTY)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitloggerTip) for f in logger.filters):
            logger.addFilter(_DropLitloggerTip())
