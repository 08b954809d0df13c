"""A trial's processes: the launcher that dies with the runner, killing by marker, GPUs, the one-runner lock."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from skill_neurons.sweep.config import MARKER_ENV, SweepError
from skill_neurons.sweep.state import Trial

# -------------------------------------------------------------------------------- processes
# Started between the runner and the trial's command: asks Linux to SIGTERM the trial when the runner dies
# (kill -9 included), then becomes the command (exec: same pid, the command's own argv).
LAUNCHER = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)  # the runner died before prctl took effect
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    sys.exit(f"cannot start {sys.argv[2]!r}: {e}")
"""


def kill_marked(marker: str, timeout: float = 10.0) -> int:
    """SIGKILL every process whose environment carries ``MARKER_ENV=marker``; wait until they are gone."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return 0
    needle = f"{MARKER_ENV}={marker}".encode()
    victims = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)
                victims.append(int(entry.name))
    deadline = time.time() + timeout
    while victims and time.time() < deadline:
        victims = [p for p in victims if _alive(p)]
        time.sleep(0.05)
    return len(victims)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def visible_gpus() -> list[str]:
    """The GPU ids a trial can be pinned to (entries of ``CUDA_VISIBLE_DEVICES`` when that is set)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except (ImportError, RuntimeError):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def is_skill_neurons_cli(argv: list[str]) -> bool:
    return any(a in ("skill_neurons.cli", "skill-neurons") or a.endswith("skill_neurons/cli.py")
               or Path(a).name == "skill-neurons" for a in argv)


def is_skill_neurons_stage(argv: list[str]) -> bool:
    """A skill-neurons Lightning stage (fit, validate, test, predict): it parses ``--print_config`` and claims its
    run folder itself; a tool such as ``skill-neurons attack`` does neither."""
    return is_skill_neurons_cli(argv) and any(a in ("fit", "validate", "test", "predict") for a in argv)


class RunnerLock:
    """One runner per sweep directory (``fcntl.flock`` on ``DIR/.lock``; released when the process dies)."""

    def __init__(self, directory: Path):
        self.path = directory / ".lock"
        self.fd: int | None = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise SweepError(f"another runner (pid {holder}) is working on {self.path.parent} — wait for it, "
                             f"or look with `skill-neurons sweep --status {self.path.parent}`") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)

    @staticmethod
    def holder(directory: Path) -> int | None:
        """The pid of the runner working on ``directory``, or None."""
        path = directory / ".lock"
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None


@dataclasses.dataclass
class Running:
    """A started trial: its process (its own process group), or its submitit job
    (:class:`skill_neurons.sweep.cluster.JobTrial`, which polls and takes signals alike)."""

    trial: Trial
    proc: Any  # subprocess.Popen or cluster.JobTrial
    slot: int
    term_sent: float | None = None
    killed: bool = False
    summary_mtime: float = 0.0

    def send(self, signum: int) -> None:
        """Signal the trial's process group (a job: cancel it)."""
        if isinstance(self.proc, subprocess.Popen):
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signum)
        else:
            self.proc.send(signum)


