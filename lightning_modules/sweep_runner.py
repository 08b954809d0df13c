"""``skill-neurons sweep``: run a W&B sweep config without a W&B server — resumable after any crash.

    skill-neurons sweep sweeps/quickstart.yaml                   # the whole grid, one trial at a time
    skill-neurons sweep sweeps/search.yaml --count 30 --workers 4 --dir runs/search-1
    skill-neurons sweep --status runs/search-1                   # the table of trials

The same YAML works with ``wandb sweep FILE`` + ``wandb agent ID``. Here W&B's own open-source sweep engine
(PyPI ``sweeps``) proposes each configuration (``next_run``: grid, random, bayes) and picks the trials to
stop early (``stop_runs``: hyperband); this runner does what the agent and the server would do:

* A trial is the sweep's ``command`` with ``${args}`` (and ``${program}``, ``${args_json_file}``, ...) rendered
  exactly as ``wandb agent`` renders them (:func:`render_command`), run in the current directory in a process
  group of its own, with ``WANDB_RUN_ID`` (a new id per attempt), ``WANDB_RUN_GROUP`` (the sweep id),
  ``WANDB_SWEEP_PARAM_PATH`` and W&B offline (unless ``WANDB_MODE`` says otherwise). Two differences from
  the agent: ``python`` in the command means the interpreter running this runner (its folder goes first on
  ``PATH``), and ``WANDB_DIR`` is the trial's run directory. Output goes to ``DIR/logs/<run id>.log``.
* A trial reports through ``$SKILL_NEURONS_RUNS_DIR/<run id>/summary.json`` — the file the skill-neurons
  CLI writes (``skill-neurons fit`` uses ``$SKILL_NEURONS_RUNS_DIR`` as its ``--runs_dir``). Metrics are read
  from its ``history`` (one dict per epoch; hyperband reads it while the trial runs, the CLI rewrites it after
  every validation) and from ``fit_metrics`` / ``validate_metrics`` / ``test_metrics`` / ``summary`` and
  ``best`` (as ``best/<key>``). The objective is the best value of ``metric.name`` over all of them. Any
  other program can join a sweep by writing that file.
* ``--workers K`` runs K trials at once; each gets one GPU (``CUDA_VISIBLE_DEVICES``) when there are GPUs.

State and resume: ``DIR/state.json`` (rewritten atomically at every change) holds the sweep id, its config
and every trial with its parameters, attempts, state and metrics. A trial is recorded as running *before* its
process starts. Killed at any moment and started again with the same command, the runner (1) kills what is
left of the trials that were running (found by the marker ``SKILL_NEURONS_SWEEP_TRIAL`` in their
environment; on Linux the trials already got SIGTERM when the runner died), (2) keeps a trial whose
``summary.json`` says ``finished``, (3) starts the others again from scratch under a new run id — at most
``--retries`` times, then the trial is ``crashed`` — and (4) asks the engine for more. Finished, failed and
early-stopped trials are never run again, so a grid ends with each combination done exactly once.
``--count N`` counts every trial in DIR, so the same command finishes the same sweep; one runner per DIR.
Every attempt's offline W&B run is linked into DIR: ``wandb leet DIR`` browses them, ``wandb sync DIR``
uploads them (grouped by the sweep id).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import secrets
import shutil
import shlex
import signal
import string
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

STATE_FILE = "state.json"
RUNS_DIR_ENV = "SKILL_NEURONS_RUNS_DIR"  # where a trial writes <run id>/summary.json
MARKER_ENV = "SKILL_NEURONS_SWEEP_TRIAL"  # "<sweep id>/<run id>" in every trial process's environment
KILL_DELAY_S = 30.0  # SIGTERM -> SIGKILL, as wandb agent's default
DEFAULT_SWEEP_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # wandb agent's default
ARGS_MACROS = ("${args}", "${args_no_equals}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}",
               "${args_json_file}", "${args_append_hydra}", "${args_override_hydra}")
METHODS = ("grid", "random", "bayes")
ENGINE_STATES = {"pending": "running", "running": "running", "finished": "finished", "failed": "failed",
                 "crashed": "crashed", "stopped": "killed"}
ENGINE_MISSING = ("W&B's sweep engine is not installed (PyPI package `sweeps`; this repository's sweeps/ folder "
                  "only holds YAML files) — install it with: pip install 'sweeps>=0.2.0,<0.3'")
SUMMARY_SECTIONS = ("fit_metrics", "validate_metrics", "test_metrics", "summary")


class SweepError(Exception):
    """A mistake in the sweep file, the options or the sweep directory; the message names the fix."""


# ----------------------------------------------------------------------------------------- the engine
def engine():
    """The PyPI ``sweeps`` package (not this repository's ``sweeps/`` folder of YAML files).

    A folder without ``__init__.py`` on ``sys.path`` (the repository root, when run from there) only becomes
    a namespace package if no regular package of that name is found anywhere on the path, so the installed
    engine always wins; getting the namespace package means the engine is missing.
    """
    try:
        with warnings.catch_warnings():  # sweeps 0.2 declares pydantic-v1 style config: harmless warnings
            warnings.simplefilter("ignore")
            import sweeps.run  # fails for the namespace package

            import sweeps
    except ImportError:
        raise SweepError(ENGINE_MISSING) from None
    if not hasattr(sweeps, "next_run") or not hasattr(sweeps, "stop_runs"):
        raise SweepError(ENGINE_MISSING)
    return sweeps


def plain(value: Any) -> Any:
    """numpy scalars/arrays (the engine's samples) -> plain Python, recursively, so they render and save."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


# ------------------------------------------------------------------------ rendering, as wandb agent
def _create_sweep_command_args(command: dict) -> dict[str, Any]:
    """A copy of ``wandb.sdk.launch.sweeps.utils.create_sweep_command_args`` (wandb 0.31), used only if
    that import fails; tests/test_sweeps.py checks that both give the same result."""
    flags, no_hyphens, no_booleans, no_equals, hydra_append, hydra_override = [], [], [], [], [], []
    flags_dict: dict[str, Any] = {}
    for param, config in command["args"].items():
        value = config["value"]
        flag = f"{param}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{param}", str(value)]
        hydra_append.append("+" + flag)
        hydra_override.append("++" + flag)
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + param)
        else:
            no_booleans.append("--" + flag)
        flags_dict[param] = value
    return {"args": flags, "args_no_equals": no_equals, "args_no_hyphens": no_hyphens,
            "args_no_boolean_flags": no_booleans, "args_json": [json.dumps(flags_dict)], "args_dict": flags_dict,
            "args_append_hydra": hydra_append, "args_override_hydra": hydra_override}


def _create_sweep_command(command: list) -> list:
    """A copy of ``wandb.sdk.launch.sweeps.utils.create_sweep_command``: ``${envvar:NAME}`` -> $NAME."""
    import re

    pattern = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")
    for i, chunk in enumerate(command):
        if pattern.search(str(chunk)):
            for m in list(pattern.finditer(chunk))[::-1]:
                var = os.environ.get(m.group(1), m.group(1))
                command[i] = f"{command[i][: m.start()]}{var}{command[i][m.end():]}"
    return command


def _agent_helpers():
    try:
        from wandb.sdk.launch.sweeps.utils import (
            create_sweep_command,
            create_sweep_command_args,
        )
    except ImportError:
        return _create_sweep_command, _create_sweep_command_args
    return create_sweep_command, create_sweep_command_args


def render_command(config: dict, params: dict[str, Any], args_json_file: str | os.PathLike = "") -> list[str]:
    """The argv ``wandb agent`` would start for ``params`` (``{key: value}``), macros filled in as it does.

    Mirrors ``wandb.wandb_agent.Agent._command_run``: ``${env}`` is ``/usr/bin/env``, ``${interpreter}`` is
    ``python``, ``${program}`` the sweep's program, ``${args}`` is ``--key=value`` with ``str(value)``
    (so ``True``, ``None``, ``[1, 2]``, ``1e-05``), and likewise for the other ``${args_*}`` forms.
    """
    create_sweep_command, create_sweep_command_args = _agent_helpers()
    command = create_sweep_command(list(config.get("command") or DEFAULT_SWEEP_COMMAND))
    sweep_vars: dict[str, Any] = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [config.get("program")]
    sweep_vars["args_json_file"] = [str(args_json_file)]
    if sys.platform != "win32":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def _save_param_file(path: Path, params: dict[str, Any]) -> None:
    """``WANDB_SWEEP_PARAM_PATH``: the trial's parameters in W&B's config-file format (wandb.init reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: {"value": v} for k, v in params.items()}
    try:
        from wandb.sdk.lib.config_util import save_config_file_from_dict
    except ImportError:
        path.write_text("wandb_version: 1\n\n" + yaml.safe_dump(values, sort_keys=False))
        return
    save_config_file_from_dict(str(path), values)


# ------------------------------------------------------------------------------- the sweep file
def load_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sweep YAML; every problem becomes one :class:`SweepError` that names the fix."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file '{path}' does not exist (the shipped ones are in sweeps/)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise SweepError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', None) or e} — fix the file") from None
    if not isinstance(config, dict):
        raise SweepError(f"{path} must be a mapping with method, metric, parameters and command "
                         "(see sweeps/quickstart.yaml)")
    check_sweep_config(config, str(path))
    return config


def check_sweep_config(config: dict[str, Any], name: str = "the sweep config") -> dict[str, Any]:
    """Validate against the engine's JSON schema; return the config with the engine's defaults filled in."""
    sweeps = engine()
    import jsonschema  # a dependency of the engine

    config = {k: v for k, v in config.items() if k != "run_cap"}  # W&B's server knows run_cap; the schema not
    method = config.get("method")
    if method not in METHODS:
        raise SweepError(f"unknown method {method!r} in {name} — use one of: {', '.join(METHODS)}")
    if not isinstance(config.get("parameters"), dict) or not config["parameters"]:
        raise SweepError(f"{name} has no parameters — add `parameters:` with at least one key (e.g. "
                         "model.learning_rate: {values: [0.01, 0.003]})")
    for key, spec in config["parameters"].items():
        if not isinstance(spec, dict):
            raise SweepError(f"parameter {key!r} in {name} must be a mapping such as {{values: [...]}}, "
                             f"{{value: x}} or {{min: a, max: b}}, not {spec!r}")
    try:
        violations = sweeps.schema_violations_from_proposed_config(config)
    except ValueError as e:
        violations = [str(e)]
    if violations:
        raise SweepError(f"{name} is not a valid W&B sweep config:\n  - " + "\n  - ".join(violations))
    if (method == "bayes" or "early_terminate" in config) and not config.get("metric"):
        what = "bayes search" if method == "bayes" else "early termination"
        raise SweepError(f"{what} needs a metric — add `metric: {{name: val/acc, goal: maximize}}` to {name}")
    command = [str(c) for c in config.get("command") or DEFAULT_SWEEP_COMMAND]
    if not any(c in ARGS_MACROS for c in command):
        raise SweepError(f"the command in {name} has no ${{args}}, so trials would not get the parameters — "
                         "put ${args} after the subcommand (… fit --config X ${args})")
    if "${program}" in command and not config.get("program"):
        raise SweepError(f"the command in {name} uses ${{program}} but there is no `program:` — add it")
    if any(c == "--runs_dir" or c.startswith("--runs_dir=") for c in command) or "runs_dir" in config["parameters"]:
        raise SweepError(f"{name} sets --runs_dir; leave it out — `skill-neurons sweep` puts each trial in "
                         "DIR/runs/<run id> (and `wandb agent` in runs/<run id>)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dict(sweeps.SweepConfig(config))
        except (ValueError, TypeError, KeyError, jsonschema.ValidationError) as e:
            raise SweepError(f"{name} is not a valid W&B sweep config: {e}") from None


# ------------------------------------------------------------------------------------ the state
@dataclasses.dataclass
class Attempt:
    """One start of a trial's command (a trial is started again after the runner died while it ran)."""

    run_id: str
    started: float
    state: str = "running"  # running, finished, failed, stopped, interrupted (runner died), cancelled (Ctrl-C)
    ended: float | None = None
    exitcode: int | None = None
    pid: int | None = None
    gpu: str | None = None
    stop_requested: bool = False  # early termination asked it to stop


@dataclasses.dataclass
class Trial:
    """One configuration proposed by the engine; ``state`` is the state of its latest attempt."""

    number: int
    params: dict[str, Any]
    state: str = "pending"  # pending (to be started), running, finished, failed, stopped, crashed
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    search_info: dict[str, Any] | None = None
    early_terminate_info: dict[str, Any] | None = None
    note: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.attempts[-1].run_id if self.attempts else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        data = dict(data)
        data["attempts"] = [Attempt(**a) for a in data.get("attempts", [])]
        return cls(**data)


def new_id() -> str:
    """8 characters in W&B's run-id alphabet."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write a temp file, fsync, rename over ``path``: a reader (or a restart) sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=plain)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the sweep state atomically, keeping the previous good state as ``state.json.bak``."""
    if "sweep_id" in read_json(path):
        shutil.copyfile(path, backup_of(path))
    write_json_atomic(path, state)


def read_state(path: Path) -> tuple[dict[str, Any], str | None]:
    """The sweep state of ``path``, or, when it is unreadable (a disk that filled, an editor), the previous
    one from the backup; with a note saying so. ``({}, None)`` when there is no state at all."""
    state = read_json(path)
    if "sweep_id" in state or not path.exists():
        return state, None
    backup = read_json(backup_of(path))
    if "sweep_id" in backup:
        return backup, (f"{path} is corrupt — using the previous state from {backup_of(path)} (the trials "
                        "recorded since then are started again)")
    raise SweepError(f"{path} is corrupt and has no readable backup ({backup_of(path)}) — move it away and start "
                     "the sweep in another --dir, or restore the file")


def objective_of(trial: Trial, metric: dict[str, Any]) -> float | None:
    """Best value of ``metric["name"]`` over the trial's history and final metrics (as the engine takes it)."""
    name = metric.get("name")
    if not name:
        return None
    values = [h[name] for h in trial.history if name in h] + ([trial.metrics[name]] if name in trial.metrics else [])
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not values:
        return None
    return max(values) if metric.get("goal") == "maximize" else min(values)


def trial_report(run_dir: Path) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
    """(summary.json, its flat numeric metrics, its per-epoch history) of a trial's run directory."""
    summary = read_json(run_dir / "summary.json")
    metrics: dict[str, float] = {}
    for section in SUMMARY_SECTIONS:
        metrics.update(summary.get(section) or {})
    metrics.update({f"best/{k}": v for k, v in (summary.get("best") or {}).items()})
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    history = [h for h in summary.get("history") or [] if isinstance(h, dict)]
    return summary, metrics, history


# -------------------------------------------------------------------------------- processes
# Started between the runner and the trial's command: asks Linux to SIGTERM the trial when the runner dies
# (kill -9 included), then becomes the command (exec: same pid, the command's own argv).
_LAUNCHER = """\
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
    return any(a in ("lightning_modules.cli", "skill-neurons") or a.endswith("lightning_modules/cli.py")
               or Path(a).name == "skill-neurons" for a in argv)


class _Lock:
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
class _Running:
    trial: Trial
    proc: subprocess.Popen
    slot: int
    term_sent: float | None = None
    killed: bool = False
    summary_mtime: float = 0.0


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
        self.running: dict[int, _Running] = {}
        self.stop_reason: str | None = None
        self.error: str | None = None
        self.exhausted = False
        self.failures_in_a_row = 0
        self.metric_checked = False
        self.signal_received: int | None = None

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
            self.state = {"version": 1, "sweep_id": new_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.state.update(config=self.raw_config, sweep_file=str(self.sweep_file), cwd=os.getcwd())
        (self.dir / "sweep.yaml").write_text(yaml.safe_dump(self.raw_config, sort_keys=False))
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
            summary = read_json(self.run_dir(attempt.run_id) / "summary.json")
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
            "WANDB_RUN_ID": run_id, "SKILL_NEURONS_RUN_ID": run_id, "WANDB_RUN_GROUP": self.sweep_id,
            "WANDB_SWEEP_PARAM_PATH": str((self.dir / "params" / f"config-{run_id}.yaml").resolve()),
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
        if not is_skill_neurons_cli(argv):
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
        run_id = new_id()
        gpu = self.slots[slot]
        attempt = Attempt(run_id=run_id, started=time.time(), gpu=gpu)
        if trial not in self.trials:
            self.trials.append(trial)
        trial.attempts.append(attempt)
        trial.state, trial.metrics, trial.history = "running", {}, []
        self._save()  # recorded as running before it starts: a restart always knows about it
        argv = self.argv_of(trial, run_id)
        _save_param_file(self.dir / "params" / f"config-{run_id}.yaml", trial.params)
        if "${args_json_file}" in [str(c) for c in self.config.get("command") or []]:
            (self.dir / "params" / f"config-{run_id}.json").write_text(json.dumps(trial.params))
        # The skill-neurons CLI claims its run folder itself (and refuses one that exists); other programs get it.
        self.run_dir(run_id).parent.mkdir(parents=True, exist_ok=True)
        if not is_skill_neurons_cli(argv):
            self.run_dir(run_id).mkdir(exist_ok=True)
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid())] if sys.platform == "linux" else []
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
        self.running[trial.number] = _Running(trial, proc, slot)
        params = " ".join(f"{k}={v}" for k, v in trial.params.items())
        again = f" (attempt {len(trial.attempts)})" if len(trial.attempts) > 1 else ""
        self.say(f"trial {trial.number}{again} started: run {run_id}, {params}"
                 + (f", GPU {gpu}" if gpu is not None else ""))

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
        where = self.run_dir(trial.run_id) / "summary.json"
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
            path = self.run_dir(running.trial.run_id) / "summary.json"
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

    def _terminate(self, running: _Running) -> None:
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
        with _Lock(self.dir), self._signals():
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


def format_table(state: dict[str, Any], trials: list[Trial], directory: Path, objective) -> str:
    """Trials as rows: number, run id, state, parameters, objective (best one marked ``*``), run directory."""
    config = state.get("config", {})
    metric = config.get("metric") or {}
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    scores = {t.number: objective(t) for t in trials}
    finished = [t for t in trials if scores[t.number] is not None and t.state in ("finished", "stopped")]
    best = None
    if finished:
        pick = max if metric.get("goal") == "maximize" else min
        best = pick(finished, key=lambda t: scores[t.number]).number
    header = ["#", "run", "state", *keys, metric.get("name", "objective"), "run directory"]
    rows = []
    for t in trials:
        score = scores[t.number]
        shown = "" if score is None else f"{score:.4g}" + (" *" if t.number == best else "")
        run_dir = str(directory / "runs" / t.run_id) if t.run_id else ""
        rows.append([str(t.number), t.run_id or "", t.state, *[_short(t.params.get(k, "")) for k in keys], shown,
                     run_dir])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s}"
                       for s in ("finished", "stopped", "failed", "crashed", "running", "pending")
                       if any(t.state == s for t in trials))
    goal = f"; objective {metric['name']} ({metric.get('goal', 'minimize')})" if metric.get("name") else ""
    title = (f"sweep {state.get('sweep_id')} ({config.get('method')}, {state.get('sweep_file')}): "
             f"{len(trials)} trials — {counts or 'none yet'}{goal}")
    foot = [(("* best trial. " if best is not None else "") + f"Offline W&B runs: browse with `wandb leet "
             f"{directory}`, upload with `wandb sync {directory}` (group {state.get('sweep_id')}).")] if trials else []
    return "\n".join([title, *lines, *foot])


def _short(value: Any, width: int = 28) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_status(directory: Path, out=None) -> int:
    out = out or sys.stdout
    state, note = read_state(directory / STATE_FILE)
    if "sweep_id" not in state:
        raise SweepError(f"no sweep in {directory} ({directory / STATE_FILE} is missing) — give the --dir of a sweep")
    if note:
        print(note, file=out)
    trials = [Trial.from_json(t) for t in state.get("trials", [])]
    metric = (state.get("config") or {}).get("metric") or {}
    holder = _Lock.holder(directory)

    if holder is None:
        for trial in trials:  # what a restart would do with them
            if trial.state == "running":
                trial.state = "pending"
    print(format_table(state, trials, directory, lambda t: objective_of(t, metric)), file=out)
    if holder is not None:
        print(f"a runner (pid {holder}) is working on this sweep", file=out)
    elif any(t.state == "pending" for t in trials):
        print(f"no runner is working on it; resume with `skill-neurons sweep {state.get('sweep_file')} "
              f"--dir {directory}` (run from {state.get('cwd')})", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``skill-neurons sweep``: parse the options, run or show a sweep; errors become one message, exit 2."""
    parser = argparse.ArgumentParser(
        prog="skill-neurons sweep",
        description="Run a W&B sweep config with no W&B server (W&B's open-source sweep engine, W&B offline); "
                    "killed and started again with the same command, it resumes.")
    parser.add_argument("sweep_file", nargs="?", help="a W&B sweep YAML, e.g. sweeps/quickstart.yaml")
    parser.add_argument("--count", type=int, help="stop when the sweep has N trials (all runs of this DIR count; "
                        "required for random and bayes, default for grid: the whole grid)")
    parser.add_argument("--workers", type=int, default=1, help="trials at once; one GPU each when there are GPUs")
    parser.add_argument("--dir", help="sweep directory (default: runs/sweep-<file name>)")
    parser.add_argument("--retries", type=int, default=2,
                        help="how often a trial interrupted by the runner's death starts again (default 2)")
    parser.add_argument("--status", metavar="DIR", help="print the table of trials of the sweep in DIR and exit")
    parser.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--kill-delay", type=float, default=KILL_DELAY_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.status:
            return print_status(Path(args.status))
        if not args.sweep_file:
            parser.error("give a sweep file (e.g. sweeps/quickstart.yaml) or --status DIR")
        runner = SweepRunner(args.sweep_file, args.dir, count=args.count, workers=args.workers,
                             retries=args.retries, poll=args.poll, kill_delay=args.kill_delay)
        return runner.run()
    except SweepError as e:
        print(f"skill-neurons sweep: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
