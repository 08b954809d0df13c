"""The sweep runner: one sweep directory run to completion (the behaviour is described in :mod:`skill_neurons.sweep`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from records.files import atomic_write, read_json
from records.summary import new_run_id, summary_path
from records.sweep_trial import PARAM_PATH_ENV, SWEEP_ID_ENV, SWEEP_NAME_ENV, VARIED_ENV, varied_keys
from skill_neurons.runs import RUN_ID_ENV, RUNS_DIR_ENV
from skill_neurons.sweep import cluster
from skill_neurons.sweep.config import (
    ENGINE_STATES, KILL_DELAY_S, MARKER_ENV, STATE_FILE, SweepError, check_sweep_config, engine, load_sweep_file, plain,
    render_command, save_param_file,
)
from skill_neurons.sweep.control import TrialControl
from skill_neurons.sweep.display import planned_trials, progress_of, sweep_group
from skill_neurons.sweep.processes import (
    LAUNCHER, RunnerLock, Running, is_skill_neurons_stage, kill_marked, visible_gpus,
)
from skill_neurons.sweep.state import Attempt, Trial, format_table, objective_of, read_state, save_state, trial_report


# ---------------------------------------------------------------------------------- the runner
class SweepRunner(TrialControl):
    """Run one sweep directory to completion (see the module docstring for the behaviour).

    ``executor``: ``processes`` starts each trial as a child process; ``local`` and ``slurm`` submit it as a
    submitit job (:mod:`skill_neurons.sweep.cluster`), ``slurm`` with the sbatch parameters ``slurm``."""

    def __init__(self, sweep_file: str | os.PathLike, directory: str | os.PathLike | None = None,
                 count: int | None = None, workers: int = 1, retries: int = 2, poll: float = 1.0,
                 kill_delay: float = KILL_DELAY_S, out=None, executor: str = "processes",
                 slurm: dict[str, Any] | None = None):
        self.executor_kind = executor
        self.slurm = cluster.check_executor(executor, dict(slurm or {}))  # before anything is read or written
        self.sweep_file = Path(sweep_file)
        self.raw_config = load_sweep_file(self.sweep_file)
        self.config = check_sweep_config(self.raw_config, str(self.sweep_file))
        self.dir = Path(directory) if directory else Path("runs") / f"sweep-{self.sweep_file.stem}"
        self.method = self.config["method"]
        self.metric = self.config.get("metric") or {}
        if count is not None and count < 1:
            raise SweepError(f"--count must be at least 1, not {count}")
        self.count = count if count is not None else self.raw_config.get("run_cap")
        if self.count is None and self.method != "grid":
            raise SweepError(f"a {self.method} sweep never ends by itself — give --count N "
                             "(the number of trials in the sweep)")
        if workers < 1:
            raise SweepError(f"--workers must be at least 1, not {workers}")
        self.workers, self.retries, self.poll, self.kill_delay = workers, retries, poll, kill_delay
        self.slots: list[str | None] = [None] * workers
        self.executor, self.to_submit = None, []
        if executor == "slurm" and self.method != "bayes":
            # grid and random do not wait for results: the whole sweep is queued at once, as arrays of which
            # SLURM runs `workers` at a time (slurm_array_parallelism); bayes asks for `workers` at a time
            self.slots = [None] * max(workers, planned_trials(self.raw_config, self.count) or workers)
        if workers > 1 and executor != "slurm":
            gpus = visible_gpus()
            if gpus and workers > len(gpus):
                raise SweepError(f"--workers {workers} asks for one GPU per trial but {len(gpus)} "
                                 f"{'is' if len(gpus) == 1 else 'are'} visible ({', '.join(gpus)}) — use "
                                 f"--workers {len(gpus)} (or fewer)")
            if gpus:
                self.slots = gpus[:workers]
        self.out = out or sys.stdout
        self.state: dict[str, Any] = {}
        self.trials: list[Trial] = []
        self.running: dict[int, Running] = {}
        self.stop_reason: str | None = None
        self.error: str | None = None
        self.exhausted = False
        self.failures_in_a_row = 0
        self.metric_checked = False
        self.signal_received: int | None = None
        self.started, self.group = time.time(), sweep_group(self.raw_config, self.sweep_file)  # W&B group: its name

    # ------------------------------------------------------------------ set-up
    @property
    def sweep_id(self) -> str:
        return self.state["sweep_id"]

    def say(self, message: str) -> None:
        print(f"[sweep {self.state.get('sweep_id', '')}] {message}", file=self.out, flush=True)

    def _open(self) -> None:
        """Create the sweep directory and its state, or load it (and check it is the same sweep)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("runs", "logs", "params"):
            (self.dir / sub).mkdir(exist_ok=True)
        path = self.dir / STATE_FILE
        if path.exists():
            state, note = read_state(path)
            if note:
                print(f"skill-neurons sweep: {note}", file=self.out, flush=True)
            self.trials = [Trial.from_json(t) for t in state.get("trials", [])]
            if self.trials:
                changed = [k for k in ("method", "parameters", "command", "program")
                           if state["config"].get(k) != self.raw_config.get(k)]
                if changed:
                    raise SweepError(
                        f"{self.dir} holds sweep {state['sweep_id']} started from a different sweep file "
                        f"({', '.join(changed)} differ) — give another --dir to start a new sweep, or restore "
                        f"the file ({self.dir / 'sweep.yaml'} is the one it started with)")
            self.state = state
        else:
            self.state = {"version": 1, "sweep_id": new_run_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.state.update(config=self.raw_config, sweep_file=str(self.sweep_file), cwd=os.getcwd(), group=self.group,
                          executor=self.executor_kind)
        sweep_yaml = yaml.safe_dump(self.raw_config, sort_keys=False)
        atomic_write(self.dir / "sweep.yaml", lambda f: f.write(sweep_yaml))
        self._save()

    def _save(self) -> None:
        self.state["trials"] = [dataclasses.asdict(t) for t in self.trials]
        save_state(self.dir / STATE_FILE, plain(self.state))

    def _recover(self) -> None:
        """Trials left running by a runner that died: kill their leftovers, keep finished ones, requeue the rest."""
        for trial in self.trials:
            if trial.state not in ("running", "pending") or not trial.attempts:
                continue
            attempt = trial.attempts[-1]
            if attempt.state != "running":
                continue
            job = cluster.attach(self.executor_kind, self.dir, attempt.job_id) if attempt.job_id else None
            if job is not None:  # a SLURM job outlives its submitter: polled again like the others
                taken = {r.slot for r in self.running.values()}
                slot = next((s for s in range(len(self.slots)) if s not in taken), None)
                if slot is None:  # more jobs still out than this run's --parallel: each keeps a slot
                    self.slots.append(None)
                    slot = len(self.slots) - 1
                self.running[trial.number] = Running(trial, job, slot)
                trial.state = "running"
                self.say(f"trial {trial.number} (run {attempt.run_id}): following its job {attempt.job_id} again")
                continue
            kill_marked(f"{self.sweep_id}/{attempt.run_id}")
            attempt.ended = attempt.ended or time.time()
            self._read_report(trial)
            summary = read_json(summary_path(self.run_dir(attempt.run_id)))
            if summary.get("status") == "finished":
                attempt.state, trial.state = "finished", "finished"
                trial.note = "finished before the runner stopped"
                self.say(f"trial {trial.number} (run {attempt.run_id}) had finished before the runner stopped")
            elif attempt.stop_requested:
                attempt.state, trial.state = "stopped", "stopped"
            else:
                self._requeue(trial, "was interrupted")
            self._link_wandb_runs(trial)
        self._save()

    def _requeue(self, trial: Trial, why: str) -> None:
        """An attempt ended by the runner's death, a preemption or a time limit: start the trial again under a
        new run id, at most ``--retries`` times, then mark it crashed."""
        trial.attempts[-1].state = "interrupted"
        interrupted = sum(a.state == "interrupted" for a in trial.attempts)
        if interrupted > self.retries:
            trial.state, trial.note = "crashed", f"interrupted {interrupted} times (--retries {self.retries}): {why}"
            self.say(f"trial {trial.number} {why}; interrupted {interrupted} times: marked crashed")
        else:
            trial.state = "pending"
            self.say(f"trial {trial.number} (run {trial.run_id}) {why}: it starts again under a new run id")

    # ------------------------------------------------------------------ engine
    def run_dir(self, run_id: str) -> Path:
        return self.dir / "runs" / run_id

    def _engine_runs(self) -> list:
        """The trials as the engine's ``SweepRun`` objects (built by alias: sweeps 0.2 under pydantic 2 ignores
        field names such as ``history=``)."""
        sweeps = engine()
        return [sweeps.SweepRun(
            name=t.run_id or f"trial-{t.number}", state=ENGINE_STATES[t.state],
            config={k: {"value": v} for k, v in t.params.items()},
            summaryMetrics=dict(t.metrics), sampledHistory=list(t.history),
            shouldStop=bool(t.attempts and t.attempts[-1].stop_requested),
        ) for t in self.trials]

    def objective(self, trial: Trial) -> float | None:
        return objective_of(trial, self.metric)

    def _propose(self) -> Trial | None:
        sweeps = engine()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                suggestion = sweeps.next_run(self.config, self._engine_runs())
            except (ValueError, TypeError, KeyError, AssertionError) as e:
                raise SweepError(f"the sweep engine cannot propose a configuration for {self.sweep_file}: {e} — "
                                 "check `parameters:` (grid needs values/value or int_uniform/q_uniform)") from None
        if suggestion is None:
            return None
        params = {k: plain(v["value"]) for k, v in suggestion.config.items()}
        return Trial(number=len(self.trials) + 1, params=params, search_info=plain(suggestion.search_info))

    # ------------------------------------------------------------------ trials
    def trial_env(self, trial: Trial, run_id: str, gpu: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("WANDB_SERVICE", None)  # as the agent: the trial starts its own W&B service
        env.update(self.trial_vars(trial, run_id, gpu))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def trial_vars(self, trial: Trial, run_id: str, gpu: str | None) -> dict[str, str]:
        """The variables a trial gets on top of its machine's environment (a SLURM job keeps its node's)."""
        env = {"WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
        env.update({
            "WANDB_RUN_ID": run_id, RUN_ID_ENV: run_id, "WANDB_RUN_GROUP": self.group,
            PARAM_PATH_ENV: str((self.dir / "params" / f"config-{run_id}.yaml").resolve()),
            SWEEP_NAME_ENV: self.group, SWEEP_ID_ENV: self.sweep_id,
            VARIED_ENV: ",".join(varied_keys(self.raw_config.get("parameters") or {})),
            "WANDB_DIR": str(self.run_dir(run_id).resolve()),
            RUNS_DIR_ENV: str((self.dir / "runs").resolve()), MARKER_ENV: f"{self.sweep_id}/{run_id}",
        })
        for key, var in (("project", "WANDB_PROJECT"), ("entity", "WANDB_ENTITY")):
            if self.config.get(key):
                env[var] = str(self.config[key])
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        return env

    def argv_of(self, trial: Trial, run_id: str) -> list[str]:
        return render_command(self.config, trial.params, (self.dir / "params" / f"config-{run_id}.json").resolve())

    def _launch(self, trial: Trial, slot: int) -> None:
        run_id = new_run_id()
        gpu = self.slots[slot]
        attempt = Attempt(run_id=run_id, started=time.time(), gpu=gpu)
        if trial not in self.trials:
            self.trials.append(trial)
        trial.attempts.append(attempt)
        trial.state, trial.metrics, trial.history = "running", {}, []
        self._save()  # recorded as running before it starts: a restart always knows about it
        argv = self.argv_of(trial, run_id)
        save_param_file(self.dir / "params" / f"config-{run_id}.yaml", trial.params)
        if "${args_json_file}" in [str(c) for c in self.config.get("command") or []]:
            params = json.dumps(trial.params)
            atomic_write(self.dir / "params" / f"config-{run_id}.json", lambda f: f.write(params))
        # The skill-neurons CLI claims its run folder itself (and refuses one that exists); other programs get it.
        self.run_dir(run_id).parent.mkdir(parents=True, exist_ok=True)
        if not is_skill_neurons_stage(argv):
            self.run_dir(run_id).mkdir(exist_ok=True)
        if self.executor_kind != "processes":  # submitted with the others of this round (one array)
            job = cluster.TrialJob(argv, self.trial_vars(trial, run_id, gpu), os.getcwd(),
                                   str((self.dir / "logs" / f"{run_id}.log").resolve()), self.kill_delay)
            self.to_submit.append((trial, job, slot))
            return
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(os.getpid())] if sys.platform == "linux" else []
        with open(self.dir / "logs" / f"{run_id}.log", "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen([*launcher, *argv], env=self.trial_env(trial, run_id, gpu), cwd=os.getcwd(),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as e:
                raise SweepError(f"cannot start the sweep's command {shlex.join(argv)}: {e}") from None
        attempt.pid = proc.pid
        self._save()
        self.running[trial.number] = Running(trial, proc, slot)
        self._said_started(trial, "started", f", GPU {gpu}" if gpu is not None else "")

    def _said_started(self, trial: Trial, verb: str, where: str) -> None:
        params = " ".join(f"{k}={v}" for k, v in trial.params.items())
        again = f" (attempt {len(trial.attempts)})" if len(trial.attempts) > 1 else ""
        self.say(f"{progress_of(trial.number, self.config, self.count, self.started, self.trials, self.workers)}"
                 f": {verb}{again}: run {trial.run_id}, {params}{where}")

    def _submit(self) -> None:
        """Submit the trials launched in this round as one job array; record each one's job id at once."""
        if not self.to_submit:
            return
        if self.executor is None:
            self.executor = cluster.make_executor(self.executor_kind, self.dir, self.workers, self.slurm)
        batch, self.to_submit = self.to_submit, []
        try:
            handles = cluster.submit(self.executor, [job for _, job, _ in batch])
        except SweepError:
            for trial, _, _ in batch:  # nothing was queued: they stay pending for the next run
                trial.attempts.pop()
                trial.state = "pending"
            self._save()
            raise
        for (trial, _, slot), handle in zip(batch, handles):
            trial.attempts[-1].job_id = handle.job_id
            self.running[trial.number] = Running(trial, handle, slot)
        self._save()
        for (trial, _, _), handle in zip(batch, handles):
            self._said_started(trial, "submitted", f", job {handle.job_id}")

    def _read_report(self, trial: Trial) -> None:
        if trial.run_id:
            _, trial.metrics, trial.history = trial_report(self.run_dir(trial.run_id))

    def _link_wandb_runs(self, trial: Trial) -> None:
        """Link each attempt's W&B run folder into DIR (``wandb leet DIR``, ``wandb sync DIR``), and its output
        ``DIR/logs/<run id>.log`` into its run folder as ``trial.log`` (the CLI refuses a run folder that exists
        before it starts, and a job on another node writes the log itself, so it is linked once the trial ended)."""
        for attempt in trial.attempts:
            run_dir = self.run_dir(attempt.run_id)
            log, in_run = self.dir / "logs" / f"{attempt.run_id}.log", run_dir / "trial.log"
            if run_dir.is_dir() and log.exists() and not in_run.exists() and not in_run.is_symlink():
                with contextlib.suppress(OSError):
                    in_run.symlink_to(os.path.relpath(log, run_dir))
            for found in [*run_dir.glob("wandb/offline-run-*"), *run_dir.glob("wandb/run-*"),
                          *run_dir.glob("offline-run-*")]:
                link = self.dir / found.name
                if found.is_dir() and not link.exists() and not link.is_symlink():
                    with contextlib.suppress(OSError):
                        link.symlink_to(os.path.relpath(found, self.dir))

    def _reap(self) -> None:
        for number, running in list(self.running.items()):
            code = running.proc.poll()
            if code is None:
                continue
            del self.running[number]
            trial, attempt = running.trial, running.trial.attempts[-1]
            attempt.exitcode, attempt.ended = code, time.time()
            attempt.job_state = getattr(running.proc, "state", None)
            self._read_report(trial)
            took = f"{attempt.ended - attempt.started:.0f}s"
            objective = self.objective(trial)
            shown = f": {self.metric['name']}={objective:.4g}" if objective is not None else ""
            finished = read_json(summary_path(self.run_dir(attempt.run_id))).get("status") == "finished"
            if getattr(running.proc, "error", None):  # the job could not run the command at all
                self._append_log(attempt.run_id, f"job {attempt.job_id}: {running.proc.error}")
            if getattr(running.proc, "interrupted", None) and not finished and not attempt.stop_requested:
                attempt.exitcode = None
                self._requeue(trial, running.proc.interrupted)
            elif attempt.stop_requested and code != 0:
                attempt.state = trial.state = "stopped"
                self.say(f"trial {trial.number} stopped early by {self.config['early_terminate']['type']} "
                         f"after {len(trial.history)} reports{shown}")
            elif code == 0 and read_json(summary_path(self.run_dir(attempt.run_id))).get("status") == "smoke":
                attempt.state = trial.state = "failed"  # one batch of --trainer.fast_dev_run: no trained prompt
                trial.note = "smoke run (--trainer.fast_dev_run): not a trained trial"
                self.failures_in_a_row += 1
                self.say(f"trial {trial.number} is a smoke run (--trainer.fast_dev_run in the sweep's command): "
                         "not counted — leave fast_dev_run out of the sweep")
            elif code == 0:
                attempt.state = trial.state = "finished"
                self.failures_in_a_row = 0
                self.say(f"trial {trial.number} finished in {took}{shown}")
                self._check_metric(trial)
                self._check_target(trial, objective)
            else:
                attempt.state = trial.state = "failed"
                self.failures_in_a_row += 1
                log = self.dir / "logs" / f"{attempt.run_id}.log"
                text = log.read_text(errors="replace") if log.exists() else "(no output)"
                tail = [line for line in text.splitlines() if line.strip()][-8:]
                self.say(f"trial {trial.number} failed (exit code {code}) after {took}; last lines of {log}:\n    "
                         + "\n    ".join(tail))
                if self.failures_in_a_row >= max(3, self.workers) and not self.stop_reason:
                    self.error = self.stop_reason = (
                        f"{self.failures_in_a_row} trials in a row failed — stopping; see their logs in "
                        f"{self.dir / 'logs'}, fix the cause and run the same command again (failed trials are "
                        "not repeated; use another --dir to repeat them)")
            self._link_wandb_runs(trial)
            self._save()

    def _append_log(self, run_id: str, line: str) -> None:
        with open(self.dir / "logs" / f"{run_id}.log", "a") as log:
            log.write(line.rstrip() + "\n")

    def _check_metric(self, trial: Trial) -> None:
        """After the first finished trial: does anything report the sweep's metric?"""
        if self.metric_checked or not self.metric:
            return
        self.metric_checked = True
        if self.objective(trial) is not None:
            return
        name = self.metric["name"]
        reported = sorted(set(trial.metrics) | {k for h in trial.history for k in h})
        where = summary_path(self.run_dir(trial.run_id))
        said = (f"it reports: {', '.join(reported)}" if reported else
                f"it wrote no metrics ({where} {'has none' if where.exists() else 'does not exist'})")
        self.error = self.stop_reason = (
            f"metric {name!r} (metric.name in {self.sweep_file}) is not reported by trial {trial.number} "
            f"(run {trial.run_id}); {said} — fix metric.name and run the same command again (finished trials "
            "are kept)")
        self.say(f"error: {self.error}")

    def _check_target(self, trial: Trial, objective: float | None) -> None:
        target = self.metric.get("target")
        if target is None or objective is None or self.stop_reason:
            return
        if (objective >= target) if self.metric.get("goal") == "maximize" else (objective <= target):
            self.stop_reason = f"trial {trial.number} reached the metric target {target}"

    def _next_trial(self) -> Trial | None:
        pending = [t for t in self.trials if t.state == "pending"]
        if pending:
            return pending[0]
        if self.exhausted or (self.count is not None and len(self.trials) >= self.count):
            return None
        trial = self._propose()
        if trial is None:
            self.exhausted = True
        return trial

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Run until the sweep is done (or stopped); return the exit code."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with RunnerLock(self.dir), self._signals():
            self._open()
            total = f"{self.count}" if self.count is not None else "the whole grid"
            self.say(f"{self.method} sweep of {self.sweep_file} in {self.dir}: {len(self.trials)} trials so far, "
                     f"running up to {total} with {self.workers} worker(s)"
                     + (f" as {self.executor_kind} jobs" if self.executor_kind != "processes" else ""))
            self._recover()
            finished = [t for t in self.trials if t.state == "finished"]
            dry_run_due = not finished
            if finished:
                self._check_metric(finished[0])  # a metric fixed in the file since the last run is seen here
            while True:
                self._reap()
                if self.signal_received is not None:
                    return self._interrupted()
                self._early_terminate()
                self._escalate()
                free = [s for s in range(len(self.slots)) if s not in {r.slot for r in self.running.values()}]
                while free and not self.stop_reason:
                    trial = self._next_trial()
                    if trial is None:
                        break
                    if dry_run_due:
                        self._dry_run(trial)
                        dry_run_due = False
                    self._launch(trial, free.pop(0))
                self._submit()
                if not self.running and (self.stop_reason or self._done()):
                    break
                time.sleep(self.poll)
            self._save()
        print(self.table(), file=self.out, flush=True)
        if self.error:
            print(f"skill-neurons sweep: error: {self.error}", file=sys.stderr, flush=True)
            return 2
        if self.stop_reason:
            self.say(f"stopped: {self.stop_reason}")
        print(f"skill-neurons sweep: sweep {self.sweep_id} is in {self.dir}; its runs are in {self.dir / 'runs'}",
              file=self.out, flush=True)
        return 1 if any(t.state in ("failed", "crashed") for t in self.trials) else 0

    def _done(self) -> bool:
        if any(t.state == "pending" for t in self.trials):
            return False
        return self.exhausted or (self.count is not None and len(self.trials) >= self.count)

    # ------------------------------------------------------------------ report
    def table(self) -> str:
        return format_table(self.state, self.trials, self.dir, self.objective)


