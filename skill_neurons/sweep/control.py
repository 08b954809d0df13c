"""What the runner does to trials besides starting them: the dry run of the first configuration, early
termination (hyperband), stopping trials and Ctrl-C. A mixin of :class:`skill_neurons.sweep.runner.SweepRunner`
(its attributes: ``config``, ``trials``, ``running``, ``kill_delay``, ...)."""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import threading
import time
import warnings

from records.summary import summary_path
from skill_neurons.sweep.config import SweepError, engine, plain
from skill_neurons.sweep.processes import Running, is_skill_neurons_stage
from skill_neurons.sweep.state import Trial


class TrialControl:
    """Dry run, early termination, stopping and interruption of the runner's trials."""

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
        running.send(signal.SIGTERM)

    def _escalate(self) -> None:
        for running in self.running.values():
            if running.term_sent and not running.killed and time.time() - running.term_sent > self.kill_delay:
                running.killed = True
                running.send(signal.SIGKILL)

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
            running.send(signal.SIGKILL)
            running.proc.wait()
        for trial in self.trials:
            if trial.state == "running":  # "cancelled", not "interrupted": does not count against --retries
                trial.attempts[-1].state, trial.attempts[-1].ended = "cancelled", time.time()
                trial.state = "pending"
        self._save()
        return 128 + (self.signal_received or signal.SIGINT)
