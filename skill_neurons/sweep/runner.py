"""The sweep runner: one sweep directory run to completion (the behaviour is described in :mod:`skill_neurons.sweep`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from records.files import atomic_write, read_json
from records.summary import new_run_id, summary_path
from records.sweep_trial import PARAM_PATH_ENV, SWEEP_ID_ENV, SWEEP_NAME_ENV, VARIED_ENV, varied_keys
from skill_neurons.runs import RUN_ID_ENV, RUNS_DIR_ENV
from skill_neurons.sweep.config import (
    ENGINE_STATES, KILL_DELAY_S, MARKER_ENV, STATE_FILE, SweepError, check_sweep_config, engine, load_sweep_file, plain,
    render_command, save_param_file,
)
from skill_neurons.sweep.display import progress_of, sweep_group
from skill_neurons.sweep.processes import LAUNCHER, RunnerLock, Running, is_skill_neurons_stage, kill_marked, visible_gpus
from skill_neurons.sweep.state import Attempt, Trial, format_table, objective_of, read_state, save_state, trial_report


# ---------------------------------------------------------------------------------- the runner
class SweepRunner:
    """Run one sweep directory to completion (see the module docstring for the behaviour)."""

    def __init__(self, sweep_file: str | os.PathLike, directory: str | os.PathLike | None = None,
                 count: int | None = None, workers: int = 1, retries: int = 2, poll: float = 1.0,
                 kill_delay: float = KILL_DELAY_S, out=None):
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
        if workers > 1:
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
        self.state.update(config=self.raw_config, sweep_file=str(self.sweep_file), cwd=os.getcwd(), group=self.group)
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
                attempt.state = "interrupted"
                interrupted = sum(a.state == "interrupted" for a in trial.attempts)
                if interrupted > self.retries:
                    trial.state, trial.note = "crashed", f"interrupted {interrupted} times (--retries {self.retries})"
                    self.say(f"trial {trial.number} was interrupted {interrupted} times: marked crashed")
                else:
                    trial.state = "pending"
                    self.say(f"trial {trial.number} (run {attempt.run_id}) was interrupted: it starts again "
                             "under a new run id")
            self._link_wandb_runs(trial)
        self._save()

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
        env.update({
            "WANDB_RUN_ID": run_id, RUN_ID_ENV: run_id, "WANDB_RUN_GROUP": self.group,
            PARAM_PATH_ENV: str((self.dir / "params" / f"config-{run_id}.yaml").resolve()),
            SWEEP_NAME_ENV: self.group, SWEEP_ID_ENV: self.sweep_id,
            VARIED_ENV: ",".join(varied_keys(self.raw_config.get("parameters") or {})),
            "WANDB_DIR": str(self.run_dir(run_id).resolve()),
            RUNS_DIR_ENV: str((self.dir / "runs").resolve()), MARKER_ENV: f"{self.sweep_id}/{run_id}",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        })
        env.setdefault("WANDB_MODE", "offline")
        for key, var in (("project", "WANDB_PROJECT"), ("entity", "WANDB_ENTITY")):
            if self.config.get(key):
                env[var] = str(self.config[key])
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        return env

    def argv_of(self, trial: Trial, run_id: str) -> list[str]:
        return render_command(self.config, trial.params, (self.dir / "params" / f"config-{run_id}.json").resolve())

    def _dry_run(self, trial: Trial) -> None:
        """Parse the first configuration with the CLI (``--print_config``) before any trial starts."""
        argv = self.argv_of(trial, "dryrun00")
        if not is_skill_neurons_stage(argv):
            return
        self.say("checking the first configuration with the CLI (--print_config) ...")
        env = self.trial_env(trial, "dryrun00", None)
        try:
            proc = subprocess.run([*argv, "--print_config"], check=False, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SweepError(f"could not run the sweep's command {shlex.join(argv)}: {e}") from None
        if proc.returncode == 0:
            return
        lines = proc.stderr.strip().splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("error:")), max(0, len(lines) - 15))
        detail = "\n    ".join(lines[start:start + 25])
        hint = ""
        if any(v is None for v in trial.params.values()):
            hint = ("\n  note: W&B renders null as `None`, which the CLI reads as the text 'None' — leave such a key "
                    "out of the sweep (its config default applies)")
        raise SweepError(
            f"the first configuration of {self.sweep_file} does not parse, so no trial was started:\n    {detail}\n"
            f"  command: {shlex.join(argv)}\n  fix the keys/values under `parameters:` — they are LightningCLI "
            f"options (model.learning_rate, data.task, seed_everything, ...; see `skill-neurons fit --help`){hint}")

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
        params = " ".join(f"{k}={v}" for k, v in trial.params.items())
        again = f" (attempt {len(trial.attempts)})" if len(trial.attempts) > 1 else ""
        self.say(f"{progress_of(trial.number, self.config, self.count, self.started, self.trials, self.workers)}"
                 f": started{again}: run {run_id}, {params}" + (f", GPU {gpu}" if gpu is not None else ""))

    def _read_report(self, trial: Trial) -> None:
        if trial.run_id:
            _, trial.metrics, trial.history = trial_report(self.run_dir(trial.run_id))

    def _link_wandb_runs(self, trial: Trial) -> None:
        """Link each attempt's W&B run folder into DIR (``wandb leet DIR``, ``wandb sync DIR``)."""
        for attempt in trial.attempts:
            run_dir = self.run_dir(attempt.run_id)
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
            self._read_report(trial)
            took = f"{attempt.ended - attempt.started:.0f}s"
            objective = self.objective(trial)
            shown = f": {self.metric['name']}={objective:.4g}" if objective is not None else ""
            if attempt.stop_requested and code != 0:
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
                tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-8:]
                self.say(f"trial {trial.number} failed (exit code {code}) after {took}; last lines of {log}:\n    "
                         + "\n    ".join(tail))
                if self.failures_in_a_row >= max(3, self.workers) and not self.stop_reason:
                    self.error = self.stop_reason = (
                        f"{self.failures_in_a_row} trials in a row failed — stopping; see their logs in "
                        f"{self.dir / 'logs'}, fix the cause and run the same command again (failed trials are "
                        "not repeated; use another --dir to repeat them)")
            self._link_wandb_runs(trial)
            self._save()

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

    def _early_terminate(self) -> None:
        """Refresh running trials' histories from their summary.json; stop the ones hyperband picks."""
        if "early_terminate" not in self.config or not self.running:
            return
        changed = False
        for running in self.running.values():
            path = summary_path(self.run_dir(running.trial.run_id))
            with contextlib.suppress(OSError):
                mtime = path.stat().st_mtime
                if mtime != running.summary_mtime:
                    running.summary_mtime, changed = mtime, True
                    self._read_report(running.trial)
        if not changed:
            return
        sweeps = engine()
        runs = self._engine_runs()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            to_stop = {run.name for run in sweeps.stop_runs(self.config, runs)}
        by_name = {run.name: run for run in runs}
        for running in self.running.values():
            trial = running.trial
            info = by_name[trial.run_id].early_terminate_info
            if info:
                trial.early_terminate_info = plain(info)
            if trial.run_id in to_stop and not trial.attempts[-1].stop_requested:
                trial.attempts[-1].stop_requested = True
                lines = [line for line in (info or {}).get("lines", []) if f"Run: {trial.run_id} " in line]
                trial.note = lines[-1] if lines else "hyperband"
                self._save()
                self.say(f"trial {trial.number} is worse than the band's threshold: stopping it ({trial.note})")
                self._terminate(running)

    def _terminate(self, running: Running) -> None:
        running.term_sent = time.time()
        with contextlib.suppress(OSError):
            os.killpg(running.proc.pid, signal.SIGTERM)

    def _escalate(self) -> None:
        for running in self.running.values():
            if running.term_sent and not running.killed and time.time() - running.term_sent > self.kill_delay:
                running.killed = True
                with contextlib.suppress(OSError):
                    os.killpg(running.proc.pid, signal.SIGKILL)

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
                     f"running up to {total} with {self.workers} worker(s)")
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
                free = [s for s in range(self.workers) if s not in {r.slot for r in self.running.values()}]
                while free and not self.stop_reason:
                    trial = self._next_trial()
                    if trial is None:
                        break
                    if dry_run_due:
                        self._dry_run(trial)
                        dry_run_due = False
                    self._launch(trial, free.pop(0))
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

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM: stop the running trials (they start again on resume) and exit."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self.signal_received = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _interrupted(self) -> int:
        self.say(f"interrupted: stopping {len(self.running)} running trial(s); run the same command to resume "
                 "(they start again)")
        for running in self.running.values():
            self._terminate(running)
        deadline = time.time() + min(self.kill_delay, 10.0)
        while self.running and time.time() < deadline:
            for number, running in list(self.running.items()):
                if running.proc.poll() is not None:
                    del self.running[number]
            time.sleep(0.1)
        for running in self.running.values():
            with contextlib.suppress(OSError):
                os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait()
        for trial in self.trials:
            if trial.state == "running":  # "cancelled", not "interrupted": does not count against --retries
                trial.attempts[-1].state, trial.attempts[-1].ended = "cancelled", time.time()
                trial.state = "pending"
        self._save()
        return 128 + (self.signal_received or signal.SIGINT)

    # ------------------------------------------------------------------ report
    def table(self) -> str:
        return format_table(self.state, self.trials, self.dir, self.objective)


