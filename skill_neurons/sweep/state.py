"""The sweep's state: trials and attempts, ``state.json`` (atomic, with a backup), a trial's metrics and the table."""

from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path
from typing import Any

from records.files import read_json, write_json_atomic
from records.run_status import pid_exists, process_gone
from records.summary import read_summary
from skill_neurons.sweep.config import SUMMARY_SECTIONS, SweepError, plain


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
    job_id: str | None = None  # --executor local|slurm: the submitit job (SLURM: <array id>_<index>)
    job_state: str | None = None  # the scheduler's last state of that job (COMPLETED, TIMEOUT, PREEMPTED, ...)


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


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the sweep state atomically, keeping the previous good state as ``state.json.bak``."""
    write_json_atomic(path, state, default=plain, backup="sweep_id" in read_json(path))


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
    summary = read_summary(run_dir)
    metrics: dict[str, float] = {}
    for section in SUMMARY_SECTIONS:
        metrics.update(summary.get(section) or {})
    metrics.update({f"best/{k}": v for k, v in (summary.get("best") or {}).items()})
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    history = [h for h in summary.get("history") or [] if isinstance(h, dict)]
    return summary, metrics, history



def shown_state(trial: Trial, directory: Path) -> str:
    """A trial's state for the table: a ``running`` trial whose process is gone (its runner was killed and has
    not been started again) says so; the runner's next start requeues it."""
    if trial.state != "running" or not trial.run_id or trial.attempts[-1].job_id:
        return trial.state  # a job's processes run elsewhere: its job state says more
    summary = read_summary(directory / "runs" / trial.run_id)
    pid = trial.attempts[-1].pid
    gone = process_gone(summary) if summary.get("process") else pid is not None and not pid_exists(pid)
    return "running (process gone)" if gone else trial.state


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
    with_jobs = any(a.job_id for t in trials for a in t.attempts)  # --executor local|slurm: the job and its state
    header = ["#", "run", "state", *(["job", "job state"] if with_jobs else []), *keys,
              metric.get("name", "objective"), "run directory"]
    rows = []
    for t in trials:
        score = scores[t.number]
        shown = "" if score is None else f"{score:.4g}" + (" *" if t.number == best else "")
        run_dir = str(directory / "runs" / t.run_id) if t.run_id else ""
        last = t.attempts[-1] if t.attempts else None
        job = [last.job_id or "", last.job_state or ""] if last else ["", ""]
        rows.append([str(t.number), t.run_id or "", shown_state(t, directory), *(job if with_jobs else []),
                     *[_short(t.params.get(k, "")) for k in keys], shown,
                     run_dir])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s}"
                       for s in ("finished", "stopped", "failed", "crashed", "running", "pending")
                       if any(t.state == s for t in trials))
    goal = f"; objective {metric['name']} ({metric.get('goal', 'minimize')})" if metric.get("name") else ""
    title = (f"sweep {state.get('sweep_id')} ({config.get('method')}, {state.get('sweep_file')}): "
             f"{len(trials)} trials — {counts or 'none yet'}{goal}")
    group = state.get("group") or state.get("sweep_id")  # a sweep started before groups were named: its id
    where = shlex.quote(str(directory))
    foot = [(("* best trial. " if best is not None else "") + f"Offline W&B runs: browse with `wandb leet "
             f"{where}`, upload with `wandb sync {where}` (group {group}).")] if trials else []
    return "\n".join([title, *lines, *foot])


def _short(value: Any, width: int = 28) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


