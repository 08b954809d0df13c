"""Tasks declared as data, and the one DataModule that reads them."""

from datamodules.prompt_datamodule import PromptDataModule
from datamodules.tasks import TASKS, Source, TaskError, TaskSpec, get_task

__all__ = ["PromptDataModule", "Source", "TASKS", "TaskError", "TaskSpec", "get_task"]
