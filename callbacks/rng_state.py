"""``RNGState``: the random number generators travel with every checkpoint, so a resume continues the same run.

Lightning restores the model, optimizer and loop counters from a checkpoint but not the global generators
(torch CPU and CUDA, numpy, Python's ``random``); after a resume ``seed_everything`` has reset them, so the
next epoch's shuffle repeats the first epoch's order and the trajectory leaves the uninterrupted one. The
training DataLoader draws its shuffle seed (and its iterator's base seed) from the global torch generator
when an epoch starts. A checkpoint written at the end of an epoch (``last.ckpt``, after validation) holds
the generators as they are then; restoring them before the fit loop makes the resumed epochs bit-identical
to the uninterrupted run (``tests/test_reliability.py``). A checkpoint written in the middle of an epoch
restores them too, but Lightning restarts that epoch's data order from a fresh iterator, so such a resume
is not bit-identical.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning import Callback


class RNGState(Callback):
    """Saves the global generators in each checkpoint (``state_dict``) and restores them (``load_state_dict``,
    which Lightning calls when it restores callbacks, before the fit loop starts)."""

    def state_dict(self) -> dict[str, Any]:
        """The generators now: torch (CPU, and every CUDA device), numpy, Python."""
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(_python_state(random.getstate())),
                                 "numpy": _numpy_state(np.random.get_state())}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the generators back as they were when the checkpoint was written."""
        if not state_dict:
            return
        torch.set_rng_state(state_dict["torch"])
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _python_state(state: tuple) -> tuple:
    version, internal, gauss = state
    return version, list(internal), gauss


def _numpy_state(state: tuple) -> list:
    kind, keys, pos, has_gauss, cached = state
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
