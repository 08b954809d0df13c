"""The report's inputs: run folders (their ``summary.json`` and neuron files) and, with ``--wandb``, W&B runs."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from callbacks.neuron_files import OUTPUT_DIR
from callbacks.run_files import SUMMARY_FILE
from skill_neurons.report.base import Inputs, ReportError, Run
from skill_neurons.wandb_env import offline_reason

SKIP_DIRS = {"wandb", "checkpoints", OUTPUT_DIR, "__pycache__", "node_modules"}
WANDB_PATH = re.compile(r"^(?:https?://[^/]+/)?([\w.-]+)/([\w.-]+)/(?:runs/)?([\w-]+)/?$")


def find_summaries(path: Path) -> list[Path]:
    """summary.json files at ``path``: the file itself, a run directory's, or all below a folder (a folder
    holding summary.json is a run: its subfolders are not searched; W&B and checkpoint folders are skipped)."""
    if path.is_file():
        return [path]
    if (path / SUMMARY_FILE).is_file():
        return [path / SUMMARY_FILE]
    found = []
    for folder, subfolders, files in os.walk(path):
        if SUMMARY_FILE in files:
            found.append(Path(folder) / SUMMARY_FILE)
            subfolders[:] = []
            continue
        subfolders[:] = sorted(d for d in subfolders if d not in SKIP_DIRS and not d.startswith("."))
    return found


def read_runs(arguments: list[str], download_dir: Path) -> Inputs:
    """Read every run the arguments name; raise :class:`ReportError` for a path that does not exist (and is
    not a W&B run path) or when no run summary is found at all."""
    runs: list[Run] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for argument in arguments:
        path = Path(argument)
        if not path.exists():
            match = WANDB_PATH.match(argument)
            if match is None or argument.startswith((".", "/", "~")):
                raise ReportError(f"{argument} does not exist — pass run directories (runs/<id>), folders that "
                                  "hold them, summary.json files, or W&B run paths entity/project/run_id")
            runs.append(read_wandb_run("/".join(match.groups()), download_dir))
            continue
        for file in find_summaries(path):
            key = str(file.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                summary = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                invalid.append(f"`{file}`: not valid JSON ({error})")
                continue
            if not isinstance(summary, dict) or not isinstance(summary.get("settings"), dict):
                invalid.append(f"`{file}`: not a run summary (no `settings` section)")
                continue
            runs.append(Run(summary, file.parent, str(file)))
    if not runs:
        also = f"; skipped {len(invalid)} files that are not run summaries: {', '.join(invalid)}" if invalid else ""
        raise ReportError(f"no run summaries (summary.json) found in {' '.join(arguments)}{also} — pass run "
                          "directories (runs/<id>) or folders that hold them")
    return Inputs(runs, invalid, list(arguments))


# ----------------------------------------------------------------------------- W&B runs by path (online only)


def read_wandb_run(path: str, download_dir: Path) -> Run:
    """Read an online W&B run (``entity/project/run_id``) into the structure of a local ``summary.json``.

    Best effort, as W&B keeps less than ``summary.json``: settings from the ``run.*`` config keys, ``best``
    from the ``best/*`` summary keys, the stage's metrics from the other numeric summary keys, labels and
    task type from the built-in task declaration, ``suppression`` / ``transfer`` / ``prompt_source`` from
    config keys with those prefixes, and the neuron files from the run's ``skill-neurons`` artifact
    (downloaded to ``download_dir/<run id>/skill_neurons``). Needs W&B credentials and network."""
    import wandb

    reason = offline_reason(reading=True)
    if reason is None:
        try:
            api_run = wandb.Api(timeout=30).run(path)
            config, metrics = dict(api_run.config), dict(api_run.summary_metrics or {})
            state, run_id = api_run.state, api_run.id
            artifacts = [a for a in api_run.logged_artifacts() if a.type == "skill-neurons"]
        except Exception as error:  # noqa: BLE001 (network, permissions, unknown run: one message)
            reason = f"{type(error).__name__}: {error}"
    if reason is not None:
        raise ReportError(f"cannot reach W&B to read run {path} — pass local run directories ({reason}; no local "
                          f"path {path!r} exists either)")
    directory = download_dir / run_id
    for artifact in artifacts[-1:]:
        artifact.download(root=str(directory / OUTPUT_DIR))
    summary = summary_from_wandb(run_id, state, config, metrics)
    summary["run_dir"] = str(directory)
    return Run(summary, directory, f"wandb:{path}")


def summary_from_wandb(run_id: str, state: str, config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` structure of a W&B run from its config and summary (see :func:`read_wandb_run`)."""
    keys = ("backbone", "family", "task", "seed", "prompt_length", "learning_rate", "precision", "world_size")
    settings = {k: config.get(f"run.{k}") for k in keys}
    settings["task"] = settings["task"] or config.get("data.task")
    settings["seed"] = settings["seed"] if settings["seed"] is not None else config.get("seed_everything")
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("_")}
    best = {k[len("best/"):]: v for k, v in numbers.items() if k.startswith("best/")}
    stage = "fit" if best else "test" if any(k.startswith("test/") for k in numbers) else "validate"
    data: dict[str, Any] = {"task": settings["task"]}
    try:
        from datamodules.tasks import get_task

        spec = get_task(settings["task"])
        data.update(task_type=spec.type, label_names=list(spec.label_names))
    except Exception:  # noqa: BLE001, S110 (a user's task: labels unknown, so no chance level)
        pass
    summary: dict[str, Any] = {
        "run_id": run_id, "stage": stage, "status": "finished" if state == "finished" else str(state),
        "settings": settings, "config": config, "data": data,
        f"{stage}_metrics": {k: v for k, v in numbers.items() if not k.startswith("best/")},
    }
    if best:
        summary["best"] = best
    for section in ("suppression", "transfer", "prompt_source"):
        values = {k[len(section) + 1:]: v for k, v in config.items() if k.startswith(f"{section}.")}
        if values:
            summary[section] = values
    sets: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, value in numbers.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "skill_neurons":
            sets[parts[1]][parts[2]] = value
    if sets:
        clean = "test" if stage == "test" else "validation"
        for name, values in sets.items():
            values["split"] = name if name == clean else f"adv/{name}"
        summary["skill_neurons"] = {"backbone": settings["backbone"], "family": settings["family"],
                                    "task": settings["task"], "part": config.get("part", "encoder"),
                                    "sets": dict(sets)}
    return summary


