"""The project's error base: every mistake a user can make (a bad option, task, backbone, file, checkpoint, run
selector) is a :class:`UserError`, raised before work starts, with one line that names the fix.

The ``skill-neurons`` command catches this one class and prints the message as one line (exit code
``exit_code``); anything else is a bug and keeps its traceback. Each module keeps its own subclass (``TaskError``,
``BackboneError``, ``CheckpointError`` ...) so callers can tell the kinds apart.
"""

from __future__ import annotations


class UserError(Exception):
    """A user's mistake, with a one-line message that names the fix; the CLI exits with ``exit_code``."""

    exit_code = 2


class OptionError(UserError, ValueError):
    """An option (of the prompt, its training, the data sizes, a callback) that cannot give a meaningful run;
    the message names the fix."""
