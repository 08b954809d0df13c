"""``RunCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch, written atomically.

Lightning (2.6) writes ``last.ckpt`` only when it also writes a top-k checkpoint, i.e. with
``monitor=val/acc, save_top_k=1`` only in epochs that improve the best accuracy. A run killed after an epoch
that did not improve then resumes from an older epoch and trains that epoch again (another trajectory, and
``last.ckpt`` is not the last state). Here ``last.ckpt`` is written at every point where a checkpoint may be
written (each epoch's end), whether or not the best one changed.

An evaluation (``validate``/``test`` of a checkpoint) saves nothing, so it does not take over the bookkeeping
of the fit that wrote the checkpoint (best score, paths): Lightning would warn that the folder changed
(``The dirpath has changed from …``) on every ``validate --from_run``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn

from records.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written through a temp file in the checkpoint's own folder,
    fsynced and renamed (:func:`~records.files.atomic_write`). Lightning's own writer goes through
    fsspec, which writes to the system temp folder and then *moves* the file: across filesystems that is a copy
    over the old ``last.ckpt``, so a kill or a full disk during it destroyed the previous good checkpoint. A
    failed write raises :class:`~records.files.WriteError` and leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialised first: torch's zip writer turns a full disk into a RuntimeError
        torch.save(checkpoint, buffer)
        atomic_write(path, lambda f: f.write(buffer.getbuffer()), binary=True)


class RunConfigFile(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` of the run, written atomically (rank 0) like every other run file."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a broadcast: every rank asks
        if trainer.is_global_zero:
            path = Path(log_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            try:  # None values kept, as Lightning's writer does (jsonargparse >= 4.49 calls the option skip_unset)
                text = self.parser.dump(self.config, skip_unset=False)
            except TypeError:
                text = self.parser.dump(self.config, skip_none=False)
            atomic_write(path, lambda f: f.write(text))
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments); with ``save_last`` the last checkpoint is written every epoch.

    Hooks: ``setup`` (remembers the stage), ``load_state_dict`` (restores the fit's bookkeeping in a fit only),
    ``on_train_epoch_end`` / ``on_validation_end`` (Lightning's saves, then ``last.ckpt``).
    """

    _stage: str | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Lightning's set-up; remember whether this run fits (restoring a checkpoint comes after set-up); write
        checkpoints atomically (:class:`AtomicCheckpointIO`) unless the strategy has a writer of its own."""
        super().setup(trainer, pl_module, stage)
        self._stage = stage
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def load_state_dict(self, state_dict: dict) -> None:
        """A fit (a resume) restores the checkpoint's bookkeeping; an evaluation leaves it: it saves nothing."""
        if self._stage in (None, "fit"):
            super().load_state_dict(state_dict)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_step_written = trainer.global_step

    def _last_is_behind(self, trainer) -> bool:
        return (bool(self.save_last) and getattr(self, "_last_step_written", None) != trainer.global_step
                and not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Lightning's saves, then ``last.ckpt`` if they did not write it (when saving at the epoch's end)."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer) and self._last_is_behind(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        """Lightning's saves, then ``last.ckpt`` if they did not write it (when saving after validation)."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer) and self._last_is_behind(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
