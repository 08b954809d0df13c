"""Is a run still going? The process that writes a run directory, as ``summary.json`` records it (``process``: pid,
host, start time), whether that process is gone (a ``running`` run killed by SIGKILL or a lost node), the run's
status in words, and the exit code a command ends with for each status. Plain functions (no Lightning), used by
the run summary, ``analyse``, ``--from_run``, the report and the sweep runner."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from records.summary import Summary


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux ``/proc``), None where unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_record() -> dict[str, Any]:
    """This process as ``summary.json`` records it (``process``): pid, host and start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_ticks(os.getpid())}


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_gone(summary: Summary) -> bool:
    """True when ``summary`` says ``running`` but the process that wrote it no longer exists: a run on this
    host whose pid is gone (or now belongs to a process started at another time). A run of another host, or
    one without a recorded process, is never declared gone."""
    process = summary.get("process") or {}
    pid = process.get("pid")
    if summary.get("status") != "running" or not isinstance(pid, int) or process.get("host") != socket.gethostname():
        return False
    if not pid_exists(pid):
        return True
    start = _start_ticks(pid)
    return process.get("start") is not None and start is not None and start != process["start"]


EXIT_INCOMPLETE, EXIT_CTRL_C, EXIT_SIGTERM = 3, 130, 143  # 128 + the signal, as a shell reports a killed command


def status_exit_code(status: str | None, sigterm: bool = False) -> int:
    """The exit code of a command whose run ended with ``status``: 0 for ``finished`` and ``smoke`` (and an
    evaluation without a run), 143 / 130 for a run ``interrupted`` by SIGTERM / Ctrl-C, 3 for ``incomplete``
    (``missing`` lists what it lacks), 1 otherwise (``failed``, or still ``running``)."""
    if status in (None, "finished", "smoke"):
        return 0
    if status == "interrupted":
        return EXIT_SIGTERM if sigterm else EXIT_CTRL_C
    return EXIT_INCOMPLETE if status == "incomplete" else 1


def status_of(summary: Summary) -> str:
    """The run's status in words: ``finished``, ..., ``running (pid 12 on host)`` or, for a run whose process
    is gone, ``running, but its process is gone (pid 12 on host: killed or crashed)``."""
    status = str(summary.get("status") or "unknown (no readable summary.json)")
    process = summary.get("process") or {}
    if status != "running" or not process.get("pid"):
        return status
    where = f"pid {process['pid']} on {process.get('host')}"
    if process_gone(summary):
        return f"running, but its process is gone ({where}: killed or crashed)"
    return f"running ({where})"
