"""What ``skill-neurons sweep`` tells the user and W&B about a sweep: its W&B group, and "trial k of N" with the
elapsed time and an estimate of the time left. Plain functions of the sweep config and the trials' times (no
processes, no state files), so the runner only calls them.

W&B cannot attach offline runs to a sweep (a sweep lives on the W&B server, which proposes its runs; ``wandb
sync`` has no sweep option), so the runs of ``skill-neurons sweep`` are grouped by the sweep's ``name`` (the
sweep file's stem when it has none) instead.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any


def sweep_group(config: dict[str, Any], sweep_file: str | Path) -> str:
    """The W&B group of a sweep's runs: its ``name:``, else the sweep file's stem (``sweeps/search.yaml`` ->
    ``search``)."""
    name = config.get("name")
    return str(name) if name else Path(sweep_file).stem


def grid_size(config: dict[str, Any]) -> int | None:
    """Number of configurations of a grid sweep (the product of the ``values`` counts; ``value`` counts 1);
    None for random/bayes or a grid over a distribution the engine discretises itself."""
    if config.get("method") != "grid":
        return None
    total = 1
    for spec in (config.get("parameters") or {}).values():
        if not isinstance(spec, dict):
            return None
        if "values" in spec:
            total *= len(spec["values"])
        elif "value" not in spec:
            return None
    return total


def planned_trials(config: dict[str, Any], count: int | None) -> int | None:
    """N of "trial k of N": ``--count`` (or ``run_cap``) when given, else the grid's size; None if unknown."""
    size = grid_size(config)
    if count is not None:
        return min(count, size) if size is not None else count
    return size


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``3725`` -> ``1h02m``, ``9`` -> ``9s``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(total: int, durations: list[float], workers: int) -> float | None:
    """Time left: the mean duration of the trials that ended × the rounds the trials not yet ended still need
    (``ceil(left / workers)``); None before any trial has ended."""
    if not durations:
        return None
    left = max(0, total - len(durations))
    return sum(durations) / len(durations) * math.ceil(left / max(1, workers))


def progress(number: int, total: int | None, elapsed: float, durations: list[float], workers: int) -> str:
    """``trial 3 of 8 · 4m10s elapsed · about 12m00s left`` (no estimate before a trial has ended, nor without N)."""
    text = f"trial {number}" + (f" of {total}" if total is not None else "") + f" · {duration(elapsed)} elapsed"
    eta = eta_seconds(total, durations, workers) if total is not None else None
    return text + (f" · about {duration(eta)} left" if eta is not None else "")


def progress_of(number: int, config: dict[str, Any], count: int | None, started: float, trials: list,
                workers: int) -> str:
    """:func:`progress` for the runner: N from the sweep config and ``--count``, elapsed since ``started`` (a
    ``time.time()``), the durations of the trials (with ``state`` and ``attempts``, each with
    ``started``/``ended``) whose last attempt ended."""
    done = [t.attempts[-1].ended - t.attempts[-1].started for t in trials
            if t.attempts and t.attempts[-1].ended and t.state in ("finished", "failed", "stopped")]
    return progress(number, planned_trials(config, count), time.time() - started, done, workers)
