"""Tasks declared as data, and the one DataModule that reads them.

``datamodules.tasks`` imports neither Lightning nor ``datasets``; ``PromptDataModule`` is loaded on first use
(PEP 562), so ``from datamodules.tasks import get_task`` stays light.
"""

from __future__ import annotations

import importlib

from datamodules.tasks import TASKS, Source, TaskError, TaskSpec, get_task

__all__ = ["PromptDataModule", "Source", "TASKS", "TaskError", "TaskSpec", "get_task"]


def __getattr__(name: str):
    if name != "PromptDataModule":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module("datamodules.prompt_datamodule").PromptDataModule
