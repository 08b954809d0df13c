"""A progress bar for the skill-neuron analysis passes (the train-split threshold pass and each evaluation pass),
in the style of Lightning's ``TQDMProgressBar``: one line per pass on stderr, ``batches done/total``, rate and
time left.

Shown when the run shows Lightning's progress bar (``trainer.enable_progress_bar``, on by default) and stderr is
a terminal, on global rank 0 only: a log file or a CI job gets no carriage-return noise. ``SKILL_NEURONS_PROGRESS=1``
forces it on (also into a file or a pipe), ``SKILL_NEURONS_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

PROGRESS_ENV = "SKILL_NEURONS_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def progress_enabled(has_progress_bar: bool, stream: IO | None = None) -> bool:
    """Whether the analysis shows progress: forced by ``$SKILL_NEURONS_PROGRESS``, else when the run shows a
    progress bar and ``stream`` (stderr) is a terminal."""
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in _ON:
        return True
    if forced in _OFF:
        return False
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(has_progress_bar and isatty is not None and isatty())


def pass_bar(total: int, description: str, enabled: bool, stream: IO | None = None, live: Any = None) -> Any:
    """A bar over ``total`` batches: a task of ``live`` — the ``rich.progress.Progress`` of Lightning's
    ``RichProgressBar`` while it is on screen (it redirects stderr then, and a bar of our own would vanish into
    it) — or a ``tqdm`` bar on ``stream`` (stderr); disabled: a no-op with the same interface."""
    if enabled and live is not None:
        return _RichTask(live, total, description)
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="batch", disable=not enabled, leave=True, dynamic_ncols=True,
                file=stream if stream is not None else sys.stderr)


class _RichTask:
    """One task of a live ``rich.progress.Progress``, used like a ``tqdm`` bar (``with``, ``update``)."""

    def __init__(self, progress: Any, total: int, description: str):
        self.progress, self.task = progress, progress.add_task(description, total=total)

    def __enter__(self) -> _RichTask:
        return self

    def __exit__(self, *exc) -> None:
        self.progress.refresh()

    def update(self, n: int = 1) -> None:
        self.progress.update(self.task, advance=n)
