"""The run directory and its ``summary.json``: the one owner of their names, reader, writer and searches.

A run is ``runs/<run_id>/`` holding ``config.yaml`` (the resolved LightningCLI config), ``summary.json`` (the
run's own record: W&B offline runs cannot be read back through ``wandb.Api``), ``checkpoints/{best,last}.ckpt``
and ``wandb/``. The :class:`~callbacks.run_summary.RunSummary` callback writes the summary, other callbacks add
sections with :func:`update_summary`; the CLI, the sweep runner and the report read it with
:func:`read_summary`. 
The bottom layer: imports nothing of Lightning, transformers or the project outside ``records``.
"""


from __future__ import annotations

import json
import re
import secrets
import string
from collections import defaultdict
from pathlib import Path
from typing import Any, TypedDict

from records.configuration import differing_keys, label
from records.errors import UserError
from records.eval_set import EvalSet, parse_neuron_metric
from records.files import backup_path, read_json, write_json_atomic
from records.settings import RunSettings

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
BEST_KEY = "val/acc"  # the metric that picks the best epoch and best.ckpt
FILE_MODE = 0o666  # as open() creates a file: the umask decides (0644 under the usual 022), like every run file
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RUN_ID_ALPHABET = string.ascii_lowercase + string.digits  # W&B's run-id alphabet


class Summary(TypedDict, total=False):
    """The sections of ``summary.json`` (every one optional: a run writes them as it goes)."""

    run_id: str
    run_dir: str
    stage: str  # fit | validate | test | predict
    status: str  # running | finished | incomplete | failed | interrupted | smoke (--trainer.fast_dev_run)
    smoke: str | None  # what a smoke run left out
    started: str
    finished: str
    ended: str
    error: str | None
    missing: list[str] | None
    process: dict[str, Any]  # pid, host and start of the process that writes the run (see process_gone)
    settings: dict[str, Any]  # backbone, family, task, seed, prompt_length, layout, learning_rate, ...
    config: dict[str, Any]  # the flat LightningCLI config, secrets removed
    data: dict[str, Any]
    wandb: dict[str, Any]
    best: dict[str, Any]  # the epoch with the best val/acc: epoch, step and its metrics
    history: list[dict[str, Any]]
    settings_history: list[dict[str, Any]]  # a resume's changed settings: from_epoch, at, changed {key: [was, now]}
    fit_metrics: dict[str, float]
    validate_metrics: dict[str, float]
    test_metrics: dict[str, float]
    predict_metrics: dict[str, float]  # predict/<set>/acc
    predictions: dict[str, Any]  # predict's tables: format, columns, and per set its file, rows and accuracy
    epochs_completed: int
    global_step: int
    checkpoints: dict[str, Any]
    ckpt_path: str | None
    prompt_source: dict[str, Any]
    prompt_artifact: dict[str, Any]  # the prompt artifact version an evaluation used: ref, declared, why
    transfer: dict[str, Any]
    skill_neurons: dict[str, Any]
    suppression: dict[str, Any]
    sweep: dict[str, Any]  # a sweep trial's sweep (name, id), swept values and varied keys (records.sweep_trial)


# ------------------------------------------------------------------ run ids
def new_run_id() -> str:
    """An 8-character id in W&B's alphabet (lowercase letters and digits)."""
    return "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))


def is_run_id(run_id: str) -> bool:
    """A run id names one folder: letters, digits, ``_ - .``, no path separators, no ``..``."""
    return bool(RUN_ID.fullmatch(run_id)) and ".." not in run_id



def run_of_checkpoint(path: str | Path) -> Path | None:
    """The run directory of a checkpoint in ``<run>/checkpoints/`` (symbolic links resolved); None for a
    checkpoint anywhere else (an imported prompt, a copy)."""
    resolved = Path(path).resolve()
    return resolved.parent.parent if resolved.parent.name == CHECKPOINT_DIR else None


# ------------------------------------------------------------------ summary.json
def summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUMMARY_FILE


def read_summary(run_dir: str | Path) -> Summary:
    """The run's ``summary.json`` (``{}`` when it has none yet or it cannot be read)."""
    return read_json(summary_path(run_dir))  # type: ignore[return-value]


class SummaryError(UserError, ValueError):
    """A ``summary.json`` that exists but does not parse: the run's record, never overwritten."""


def summary_problem(run_dir: str | Path) -> str | None:
    """Why ``run_dir/summary.json`` may not be updated (it exists but is not a JSON object: truncated by a full
    disk, edited), as one line naming the way out; None when it is missing or readable."""
    path = summary_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        data = err
    if isinstance(data, dict):
        return None
    why = f"{type(data).__name__}: {data}" if isinstance(data, BaseException) else "not a JSON object"
    backup = backup_path(path)
    restore = (f"restore the previous version with `cp {backup} {path}`" if read_json(backup)
               else "restore it or move it away")
    return (f"{path} does not parse ({' '.join(why.split())[:120]}) — it is the run's record and is left as it "
            f"is: {restore}, then run the command again")


def update_summary(run_dir: str | Path, /, **sections: Any) -> Summary:
    """Merge ``sections`` into ``run_dir/summary.json`` atomically, keeping the previous version as
    ``summary.json.bak``. A summary that exists but does not parse is never overwritten (:class:`SummaryError`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    problem = summary_problem(run_dir)
    if problem:
        raise SummaryError(problem)
    summary = read_summary(run_dir)
    summary.update(sections)  # type: ignore[typeddict-item]
    write_json_atomic(summary_path(run_dir), summary, indent=2, backup=True)  # strict JSON: NaN becomes null
    return summary


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"init_args": {"lr": 1}}}`` -> ``{"model.lr": 1}`` (LightningCLI's command-line keys)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "init_args":
                out.update(flatten(value, prefix))
                continue
            out.update(flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    if isinstance(tree, (list, tuple)) and any(isinstance(x, dict) for x in tree):
        out[prefix[:-1]] = json.loads(json.dumps(tree, default=str))
        return out
    out[prefix[:-1]] = tree if isinstance(tree, (str, int, float, bool, type(None), list)) else str(tree)
    return out


def offline_segments(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """Every offline W&B directory of run ``run_id`` (one per command: a resumed run has several), oldest first;
    ``wandb sync`` takes them all and uploads them into the one W&B run."""
    return sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}"))


def summary_from_wandb(run_id: str, state: str, config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` structure of a W&B run, from the config and summary that :class:`RunSummary` and the
    skill-neuron callback log to W&B (the settings as :meth:`RunSettings.from_wandb_config` reads them,
    ``best/*`` and ``skill_neurons/<set>/<metric>`` summary keys): the report reads W&B runs through it
    (``skill_neurons.report.inputs.read_wandb_run``)."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("_")}
    best = {k[len("best/"):]: v for k, v in numbers.items() if k.startswith("best/")}
    stage = "fit" if best else "test" if any(k.startswith("test/") for k in numbers) else "validate"
    settings = RunSettings.from_wandb_config(config, stage=stage)  # stage: for runs logged before run.stage
    stage = settings.stage or stage
    summary: dict[str, Any] = {
        "run_id": run_id, "stage": stage, "status": "finished" if state == "finished" else str(state),
        "settings": settings.to_json(), "config": config,
        "data": {"task": settings.task},  # the reader adds what the task declares (labels, type)
        f"{stage}_metrics": {k: v for k, v in numbers.items() if not k.startswith("best/")},
    }
    if best:
        summary["best"] = best
    for section in ("suppression", "transfer", "prompt_source"):
        values = {k[len(section) + 1:]: v for k, v in config.items() if k.startswith(f"{section}.")}
        if values:
            summary[section] = values
    sets = _neuron_sets(numbers)
    if sets:
        summary["skill_neurons"] = {**settings.neuron_metadata(), "sets": sets}
    return summary


def _neuron_sets(numbers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``skill_neurons/<set>/<metric>`` summary values by set, each with the split it was analysed on."""
    sets: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, value in numbers.items():
        if metric := parse_neuron_metric(key):
            sets[metric.eval_set.name][metric.name] = value
    for name, values in sets.items():
        values["split"] = EvalSet(name).split
    return dict(sets)


# ------------------------------------------------------------------ finding runs
def summary_files(root: str | Path, recursive: bool = False) -> list[Path]:
    """The ``summary.json`` files of the runs directly under ``root`` (or anywhere below it)."""
    return sorted(Path(root).rglob(SUMMARY_FILE) if recursive else Path(root).glob(f"*/{SUMMARY_FILE}"))


def finished_fit_runs(roots: list[str | Path], recursive: bool = False) -> list[tuple[Path, Summary]]:
    """(run directory, summary) of every finished ``fit`` run directly under ``roots`` (or anywhere below them
    with ``recursive``); unreadable summaries are skipped."""
    found = {}
    for root in roots:
        for file in summary_files(root, recursive):
            summary = read_json(file)
            if summary.get("stage") == "fit" and summary.get("status") == "finished":
                found[file.parent.resolve()] = (file.parent, summary)
    return [found[key] for key in sorted(found)]


PICKS = ("latest", "best")  # ``&pick=`` of a ``--from_run`` selector: which of several matching runs


class RunSelectorError(UserError, ValueError):
    """A ``ROOT?key=value&...`` selector that matches several runs (and says no ``pick``), or a bad ``pick``; the
    message lists the candidates and names the fix."""


def _candidate(run: Path, summary: Summary, keys: list[str]) -> str:
    """``ab12cd34 (lr3e-3, best val/acc 0.68)``: a run id, its settings that differ among the candidates and
    its best clean validation accuracy."""
    best = (summary.get("best") or {}).get(BEST_KEY)
    details = [label(summary.get("config") or {}, keys), f"best {BEST_KEY} {best:.4g}" if best is not None else
               f"no best {BEST_KEY}"]
    return f"{summary.get('run_id') or run.name} ({', '.join(d for d in details if d)})"


def find_run(spec: str) -> Path | None:
    """A fit run directory: ``runs/<id>`` (any folder with a ``config.yaml``), or ``ROOT?key=value&...`` — the
    finished fit run under ROOT (searched recursively) whose ``summary.json`` settings match (``backbone``,
    ``task``, ``seed``, ...). None when nothing matches. When several match, ``&pick=best`` takes the one with
    the highest best ``val/acc``, ``&pick=latest`` the one that finished last; without ``pick``
    :class:`RunSelectorError` lists them (id, the settings they differ in, best ``val/acc``)."""
    root, _, query = spec.partition("?")
    if not query:
        return Path(root) if (Path(root) / CONFIG_FILE).is_file() else None
    wanted = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    pick = wanted.pop("pick", None)
    if pick is not None and pick not in PICKS:
        raise RunSelectorError(f"--from_run {spec!r}: pick={pick!r} is not one of {', '.join(PICKS)} — use "
                               "&pick=best (highest best val/acc) or &pick=latest (finished last)")
    matches = [(run, summary) for run, summary in finished_fit_runs([root], recursive=True)
               if all(str(summary.get("settings", {}).get(k)) == v for k, v in wanted.items())]
    if not matches:
        return None
    if pick == "best":
        return max(matches, key=lambda m: ((m[1].get("best") or {}).get(BEST_KEY, float("-inf")),
                                           m[1].get("finished", "")))[0]
    if pick == "latest" or len(matches) == 1:
        return max(matches, key=lambda m: (m[1].get("finished", ""), str(m[0])))[0]
    keys = differing_keys([summary.get("config") or {} for _, summary in matches])
    candidates = "; ".join(_candidate(run, summary, keys) for run, summary in matches)
    differ = f"they differ in {', '.join(keys)}" if keys else "they have the same settings"
    raise RunSelectorError(
        f"--from_run {spec!r} matches {len(matches)} finished fit runs ({differ}): {candidates} — give a setting "
        "that tells them apart, a run directory, or add &pick=best (highest best val/acc) or &pick=latest")
