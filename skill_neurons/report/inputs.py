"""The report's inputs: run folders (their ``summary.json`` and neuron files) and, with ``--wandb``, W&B runs."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from datamodules.tasks import TaskError, get_task
from records.neuron_files import OUTPUT_DIR
from records.run_status import process_gone, status_of
from records.summary import SUMMARY_FILE, summary_from_wandb
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
            if process_gone(summary):  # not still running: killed (its record says so in report.md too)
                print(f"skill-neurons report: run {file.parent} is {status_of(summary)} — skipped as unfinished",
                      file=sys.stderr, flush=True)
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
    try:
        spec = get_task(summary["data"]["task"])
        summary["data"].update(task_type=spec.type, label_names=list(spec.label_names))
    except TaskError:  # a user's task: labels unknown, so no chance level
        pass
    return Run(summary, directory, f"wandb:{path}")


