"""What a Lightning stage prints when it ends: the evaluation's metrics and, last, where the run is.

Lightning's own result table (``verbose``) is a rich table sized to the terminal — 80 columns when the output
is a file or a pipe — so names such as ``skill_neurons/marker_typo/clean_top10_predictivity`` were cut. The
stages print :func:`metrics_table` instead: plain text, one metric a line, full names. The last line of every
command is :func:`where_line`, printed after W&B has finished its run (so no W&B output follows it).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from records.eval_set import parse_metric


def _number(value: Any) -> float | None:
    if hasattr(value, "numel") and value.numel() != 1:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def metrics_table(metrics: dict[str, Any], stage: str) -> str:
    """The metrics a ``stage`` logged as ``name  value`` lines, names never shortened: the clean set's first
    (``val/acc``), then each adversarial set's (``adv/<set>/acc``), each sorted by name; '' without any."""
    numbers = {name: _number(value) for name, value in metrics.items() if name != "epoch"}
    numbers = {name: value for name, value in numbers.items() if value is not None}
    if not numbers:
        return ""
    width = max(len(name) for name in numbers)
    lines = [f"{stage} metrics:"]
    for name in sorted(numbers, key=lambda n: (bool((metric := parse_metric(n)) and metric.eval_set.adversarial), n)):
        value = numbers[name]
        shown = f"{value:.4f}" if math.isfinite(value) and value != int(value) else f"{value:g}"
        lines.append(f"  {name.ljust(width)}  {shown}")
    return "\n".join(lines)


def where_line(run_id: str, run_dir: Path, segments: list[Path], url: str | None = None,
               smoke: str | None = None) -> str:
    """The command's last line: where the run is and how to upload its W&B run — every offline segment
    (``segments``: a resumed run, e.g. after ``analyse``, has one per command; ``wandb sync`` takes them all) —
    or its W&B page (``url``) when it ran online. ``smoke`` says why the run is a smoke run, if it is one."""
    line = f"skill-neurons: {'smoke run' if smoke else 'run'} {run_id} is in {run_dir}"
    if smoke:
        line += f" ({smoke})"
    if segments:
        line += (f"; upload its W&B run with `{shlex.join(['wandb', 'sync', *map(str, segments)])}` (browse it "
                 f"offline with `wandb leet {shlex.quote(f'{run_dir}/wandb')}`)")
    elif url:
        line += f"; W&B run: {url}"
    return line
