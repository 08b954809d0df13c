"""``skill-neurons sweep --executor local|slurm``: the sweep's trials as submitit jobs (SLURM job arrays, or local
jobs with the same code path), while the sweep's engine, ``state.json`` and resume stay the runner's own.

Who writes what: only the submitting process (the runner) writes ``state.json`` — it stays the one writer, so
no lock is shared between nodes. A job writes only files of its own trial: the trial's run folder
(``summary.json``, which the runner reads), its log ``DIR/logs/<run id>.log`` and submitit's result file in
``DIR/jobs/``. A job runs the trial's command (:class:`TrialJob`) in a child process and returns its exit code.

A preempted, timed-out or lost job ends its trial's attempt as ``interrupted`` and the runner starts the trial
again under a new run id (at most ``--retries`` times, then ``crashed``); submitit's own requeue is off
(:meth:`TrialJob.checkpoint` returns None, ``--no-requeue``) because a requeued job would start the same run
id again, whose folder the CLI refuses.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from skill_neurons.sweep.config import SweepError
from skill_neurons.sweep.processes import visible_gpus

EXECUTORS = ("processes", "local", "slurm")
SUBMITIT_MISSING = ("--executor {kind} needs submitit, which is not installed — install it with: "
                    "pip install 'submitit>=1.5.4,<2' (or pip install -e '.[cluster]'); nothing was submitted")
# SLURM job states after which a trial whose command exited non-zero is started again (its node went away)
REQUEUED_STATES = ("PREEMPTED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "REQUEUED")
# what submitit's signal handler raises in a preempted or timed-out job that it does not requeue
NOT_REQUEUED = "Job not requeued because"
RESULT_GRACE_S = 15.0  # how long an ended job's result file may take to appear (NFS attribute caches)
JOBS_DIR = "jobs"  # submitit's folder inside the sweep directory: pickles, results, the jobs' own logs


def _submitit(kind: str):
    try:
        import submitit
    except ImportError:
        raise SweepError(SUBMITIT_MISSING.format(kind=kind)) from None
    return submitit


def check_executor(kind: str, slurm: dict[str, Any]) -> dict[str, Any]:
    """Check ``--executor`` and its ``--slurm.*`` options before anything is written; return the SLURM
    parameters as submitit takes them (``"1"`` -> ``1``)."""
    if kind not in EXECUTORS:
        raise SweepError(f"unknown --executor {kind!r} — use one of: {', '.join(EXECUTORS)}")
    if slurm and kind != "slurm":
        raise SweepError(f"--slurm.{next(iter(slurm))} applies to --executor slurm only — drop it or add "
                         "--executor slurm")
    if kind == "processes":
        return {}
    submitit = _submitit(kind)
    if kind == "local":
        return {}
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]  # submitit needs both
    if missing:
        raise SweepError(f"--executor slurm needs SLURM's `{'` and `'.join(missing)}` on PATH and there is none "
                         "here — run the command on the cluster's login node (or try it here with --executor "
                         "local); nothing was submitted")
    valid = submitit.SlurmExecutor._valid_parameters() - {  # scalar options; a trial is one task on one node
        "folder", "command", "map_count", "array_parallelism", "setup", "teardown", "srun_args",
        "additional_parameters", "nodes", "ntasks_per_node", "num_gpus", "use_srun", "stderr_to_stdout"}
    unknown = sorted(set(slurm) - valid)
    if unknown:
        raise SweepError(f"unknown SLURM option --slurm.{unknown[0]} — use sbatch options as submitit names them: "
                         f"{', '.join(sorted(valid))}")
    if "time" not in slurm:
        raise SweepError("--executor slurm needs --slurm.time MINUTES (each trial's wall-time limit; submitit's "
                         "default is 5 minutes); nothing was submitted")
    return {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in slurm.items()}


def make_executor(kind: str, directory: Path, parallel: int, slurm: dict[str, Any]):
    """The submitit executor whose jobs write into ``DIR/jobs``: SLURM arrays capped at ``parallel`` running
    jobs (``slurm_array_parallelism``), one GPU per trial unless ``--slurm.gpus_per_task`` says otherwise."""
    submitit = _submitit(kind)
    folder = directory / JOBS_DIR / ("%j" if kind == "slurm" else "")
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        # submitit hides the GPUs from a local job unless it is given some: it gets this machine's visible ones
        # (a trial of --workers K > 1 is then pinned to one of them, as under --executor processes)
        gpus = tuple(visible_gpus())
        executor.update_parameters(timeout_min=60 * 24 * 365, gpus_per_node=len(gpus), visible_gpus=gpus)
        return executor
    executor = submitit.SlurmExecutor(folder=folder)
    params = {"gpus_per_task": 1, "ntasks_per_node": 1, "job_name": f"sweep-{directory.name}", **slurm}
    executor.update_parameters(array_parallelism=parallel, additional_parameters={"no-requeue": True}, **params)
    return executor


class TrialJob:
    """What a job runs: the trial's command with the node's environment plus the trial's variables (the node
    keeps its own ``SLURM_*`` and ``CUDA_VISIBLE_DEVICES``); output appended to the trial's log."""

    def __init__(self, argv: list[str], variables: dict[str, str], cwd: str, log: str, kill_delay: float = 30.0):
        self.argv, self.variables, self.cwd, self.log, self.kill_delay = argv, variables, cwd, log, kill_delay

    def __call__(self) -> int:
        env = dict(os.environ)
        env.pop("WANDB_SERVICE", None)
        env.update(self.variables)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        with open(self.log, "ab") as log:
            job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "?"
            log.write(f"$ {shlex.join(self.argv)}\n# job {job} on {socket.gethostname()}\n".encode())
            log.flush()
            proc = subprocess.Popen(self.argv, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                return proc.wait()
            finally:  # the job ends (cancelled, preempted): the trial's processes end with it
                if proc.poll() is None:
                    _stop_group(proc, self.kill_delay)

    def checkpoint(self, *args, **kwargs) -> None:
        """No requeue by submitit: the runner starts an interrupted trial again under a new run id."""
        return None


def _stop_group(proc: subprocess.Popen, delay: float) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class JobTrial:
    """A submitted trial as the runner sees a process: ``poll()`` (None while the job is queued or runs, then
    the trial's exit code; ``interrupted`` says why when the job ended without one) and ``send(signal)``."""

    pid = None

    def __init__(self, job):
        self.job = job
        self.interrupted: str | None = None  # why the job ended without the trial's exit code
        self.error: str | None = None  # the job function's own error (the command could not start)
        self.state = "PENDING"
        self.missing_since: float | None = None

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    def poll(self) -> int | None:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            done = self.job.done()
            self.state = str(self.job.state)
        except Exception:  # sacct unreachable for a moment: ask again at the next poll
            return None
        if not done:  # PREEMPTED is not "done" to submitit (it waits for a requeue), but --no-requeue ends it
            if self.state.split(" ")[0] != "PREEMPTED":
                return None
            self.interrupted = f"job {self.job_id} was preempted"
            return -1
        if self.state.startswith("CANCELLED"):  # scancel by a person: the trial failed, as after a kill -TERM
            self.error = f"job {self.job_id} was cancelled ({self.state})"
            return 143
        if not self.job.paths.result_pickle.exists():  # not yet visible on NFS, or never written (killed):
            self.missing_since = self.missing_since or time.time()  # submitit's result() would block up to 30 s
            if time.time() - self.missing_since < RESULT_GRACE_S:
                return None
            self.interrupted = f"job {self.job_id} ended without a result ({self.state})"
            return -1
        try:
            code = int(self.job.result())
        except FailedJobError as e:  # an exception in the job (a subclass of UncompletedJobError: first)
            if NOT_REQUEUED in str(e) or self.state.split(" ")[0] in REQUEUED_STATES:  # its time limit or a
                self.interrupted = f"job {self.job_id} was preempted or timed out ({self.state})"  # preemption
                return -1
            self.error = str(e).strip().splitlines()[-1] if str(e).strip() else "failed"
            return 1
        except UncompletedJobError as e:
            self.interrupted = f"job {self.job_id} ended without a result ({self.state}): {str(e).splitlines()[0]}"
            return -1
        if self.state.split(" ")[0] in REQUEUED_STATES and code != 0:
            self.interrupted = f"job {self.job_id} {self.state.lower()}"
        return code

    def send(self, signum: int) -> None:
        """SIGTERM/SIGKILL of the runner: cancel the job (scancel; a local job gets SIGINT)."""
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)

    def wait(self) -> None:
        return None


def submit(executor, jobs: list[TrialJob]) -> list[JobTrial]:
    """Submit the jobs as one array (``sbatch --array=0-(n-1)%parallel``); their handles in the same order."""
    if not jobs:
        return []
    try:
        submitted = executor.submit_array(jobs)
    except Exception as e:  # sbatch refused (no such partition, ...): the message is SLURM's
        raise SweepError(f"submitting {len(jobs)} trial(s) failed: {str(e).strip().splitlines()[-1]}") from None
    return [JobTrial(job) for job in submitted]


def attach(kind: str, directory: Path, job_id: str) -> JobTrial | None:
    """The SLURM job of an attempt that an earlier runner submitted (queued, running or ended: the runner
    polls it as its own); None for a local job, which cannot be re-attached (it is killed and started again)."""
    if kind != "slurm":
        return None
    submitit = _submitit(kind)
    job = submitit.SlurmJob(folder=directory / JOBS_DIR / "%j", job_id=job_id)
    return JobTrial(job)  # the runner polls it like a job it submitted itself


def job_states(kind: str | None, directory: Path, job_ids: list[str]) -> dict[str, str]:
    """The scheduler's state of each job (``sacct`` once for all), for ``sweep --status``; ``?`` when unknown."""
    if kind != "slurm" or not job_ids:
        return {}
    try:
        submitit = _submitit(kind)
        jobs = [submitit.SlurmJob(folder=directory / JOBS_DIR / "%j", job_id=j) for j in job_ids]
        return {j.job_id: str(j.state) for j in jobs}
    except Exception:  # no sacct here (status read on another machine)
        return {j: "?" for j in job_ids}
