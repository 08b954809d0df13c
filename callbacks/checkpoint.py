"""``RunCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch.

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

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments); with ``save_last`` the last checkpoint is written every epoch.

    Hooks: ``setup`` (remembers the stage), ``load_state_dict`` (restores the fit's bookkeeping in a fit only),
    ``on_train_epoch_end`` / ``on_validation_end`` (Lightning's saves, then ``last.ckpt``).
    """

    _stage: str | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Lightning's set-up; remember whether this run fits (restoring a checkpoint comes after set-up)."""
        super().setup(trainer, pl_module, stage)
        self._stage = stage

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
