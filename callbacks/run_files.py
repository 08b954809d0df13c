"""The run directory and its ``summary.json``: the one owner of their names, reader, writer and searches.

A run is ``runs/<run_id>/`` holding ``config.yaml`` (the resolved LightningCLI config), ``summary.json`` (the
run's own record: W&B offline runs cannot be read back through ``wandb.Api``), ``checkpoints/{best,last}.ckpt``
and ``wandb/``. The :class:`~callbacks.run_summary.RunSummary` callback writes the summary, other callbacks add
sections with :func:`update_summary`; the CLI, the sweep runner and the report read it with
:func:`read_summary`. Relative prompt transfer is defined here once (:func:`relative_score`).

This module is the bottom layer: it imports nothing of Lightning, transformers or the project.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
import string
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypedDict

from callbacks.configuration import differing_keys, label
from callbacks.wandb_config import SETTING_KEYS, task_name
from datamodules.tasks import TaskError, get_task

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
BEST_KEY = "val/acc"  # the metric that picks the best epoch and best.ckpt
FILE_MODE = 0o666  # as open() creates a file: the umask decides (0644 under the usual 022), like every run file
SECRET = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)
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
    transfer: dict[str, Any]
    skill_neurons: dict[str, Any]
    suppression: dict[str, Any]
    sweep: dict[str, Any]  # a sweep trial's sweep (name, id), swept values and varied keys (callbacks.sweep_trial)


# ------------------------------------------------------------------ run ids
def new_run_id() -> str:
    """An 8-character id in W&B's alphabet (lowercase letters and digits)."""
    return "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))


def is_run_id(run_id: str) -> bool:
    """A run id names one folder: letters, digits, ``_ - .``, no path separators, no ``..``."""
    return bool(RUN_ID.fullmatch(run_id)) and ".." not in run_id


# ------------------------------------------------------------------ atomic files
def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new temp file beside ``name`` in ``folder``, created with :data:`FILE_MODE` so that the umask gives
    it the mode of any other new file (``tempfile.mkstemp`` would make it 0600 whatever the umask)."""
    for _ in range(100):
        tmp = str(folder / f".{name}-{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name for {name} in {folder}")


class WriteError(OSError):
    """A run file could not be written (disk full, read-only or forbidden folder). The message names the file
    and the free space; the file's previous version is intact. The CLI prints it as one line, exit code 1."""

    exit_code = 1

    def __init__(self, path: str | Path, err: OSError):
        folder = Path(path).parent
        try:
            free = f"{shutil.disk_usage(folder).free / 1024:,.0f} KiB free on its filesystem"
        except OSError:
            free = "free space unknown"
        reason = err.strerror or str(err)
        fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
               errno.EROFS: "the folder is read-only: choose another --runs_dir / --dir / --out",
               errno.EACCES: "you may not write there: choose another --runs_dir / --dir / --out",
               errno.EPERM: "you may not write there: choose another --runs_dir / --dir / --out"}
        super().__init__(err.errno, f"cannot write {path}: {reason} ({free}) — "
                                    f"{fix.get(err.errno, 'check the folder')}; its previous version is intact")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False, backup: bool = False) -> None:
    """Write ``path`` through a temp file in the same folder, fsync, rename: a reader (or a restart after a
    crash) sees the old file or the new one, never a half-written one. ``write(f)`` fills the file, whose mode
    is that of any new file (0666 less the umask). With ``backup`` the previous version stays as ``<name>.bak``
    (a hard link, replaced atomically). Any ``OSError`` (disk full, read-only folder) becomes a
    :class:`WriteError` naming the file and the free space, with the previous file intact."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = _create_temp(path.parent, path.name)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if backup and path.is_file():
            _keep_backup(path)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err) from err
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def backup_path(path: str | Path) -> Path:
    """Where :func:`atomic_write` (``backup=True``) keeps the previous version of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".bak")


def _keep_backup(path: Path) -> None:
    """``path`` (the version about to be replaced) becomes ``path.bak``, atomically: a hard link, renamed over
    the old backup (a copy where the filesystem has no hard links)."""
    link = path.with_name(f".{path.name}-{secrets.token_hex(6)}.bak")
    try:
        os.link(path, link)
    except OSError:
        shutil.copyfile(path, link)
    os.replace(link, backup_path(path))


def jsonable(value: Any) -> Any:
    """``json.dump``'s fallback: tensors and numpy scalars become numbers or lists, anything else a string."""
    if hasattr(value, "tolist"):  # a 0-d tensor or numpy scalar gives its number
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def strict_json(value: Any, default: Callable[[Any], Any] = jsonable) -> Any:
    """``value`` as strict JSON data: NaN and ±inf (which ``json.dump`` writes as ``NaN``/``Infinity``, invalid
    for strict readers) become ``null``; tensors and other objects go through ``default`` first."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) and k is not None else k:
                strict_json(v, default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, default) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    converted = default(value)
    return str(value) if converted is value else strict_json(converted, default)


def write_json_atomic(path: str | Path, data: Any, indent: int = 1,
                      default: Callable[[Any], Any] = jsonable, backup: bool = False) -> None:
    """``data`` as strict JSON (:func:`strict_json`: no ``NaN``), written atomically (``backup``: keep the previous
    file as ``<name>.bak``)."""
    data = strict_json(data, default)
    atomic_write(path, lambda f: json.dump(data, f, indent=indent, allow_nan=False), backup=backup)


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------ summary.json
def summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUMMARY_FILE


def read_summary(run_dir: str | Path) -> Summary:
    """The run's ``summary.json`` (``{}`` when it has none yet or it cannot be read)."""
    return read_json(summary_path(run_dir))  # type: ignore[return-value]


class SummaryError(ValueError):
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


def is_secret(key: str) -> bool:
    """A key named like a credential (``api_key``, ``*token*``, ``*secret*``, ``*password*``): its value is
    written to no run file, logged config or recorded command line."""
    return bool(SECRET.search(str(key)))


def without_secrets(value: Any) -> Any:
    """``value`` with every mapping entry whose key :func:`is_secret` removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if not is_secret(k)}
    if isinstance(value, (list, tuple)):
        return [without_secrets(v) for v in value]
    return value


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a flat config without keys that look like secrets (API keys, tokens, passwords), also inside
    values (``trainer.logger.settings: {api_key: ...}``)."""
    return {k: without_secrets(v) for k, v in config.items() if not is_secret(k)}


REDACTED = "<redacted>"


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the value of every secret replaced by :data:`REDACTED`: ``--x.api_key=K``, ``--x.api_key
    K`` and any argument whose text names a secret (``--trainer.logger.init_args.settings={api_key: K}``)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif is_secret(arg):
            option, equals, _ = arg.partition("=")
            if equals and option.startswith("-"):
                out.append(f"{option}={REDACTED}")
            elif arg.startswith("-"):
                out.append(arg)
                hide_next = True  # --x.api_key K
            else:
                out.append(REDACTED)
        else:
            out.append(arg)
    return out


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
    skill-neuron callback log to W&B (``run.*`` config keys, ``best/*`` and ``skill_neurons/<set>/<metric>``
    summary keys): the report reads W&B runs through it (``skill_neurons.report.inputs.read_wandb_run``)."""
    keys = ("backbone", "family", "task", "seed", "prompt_length", "learning_rate", "precision", "world_size")
    settings = {k: config.get(f"run.{k}") for k in keys}  # runs logged before one key per setting had run.*
    for name, key in SETTING_KEYS.items():  # now each setting is its CLI key, and run.* only what none holds
        if settings.get(name) is None and config.get(key) is not None:
            settings[name] = task_name(config[key]) if name == "task" else config[key]
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("_")}
    best = {k[len("best/"):]: v for k, v in numbers.items() if k.startswith("best/")}
    stage = "fit" if best else "test" if any(k.startswith("test/") for k in numbers) else "validate"
    data: dict[str, Any] = {"task": settings["task"]}
    try:
        spec = get_task(settings["task"])
        data.update(task_type=spec.type, label_names=list(spec.label_names))
    except TaskError:  # a user's task: labels unknown, so no chance level
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


class RunSelectorError(ValueError):
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


# ------------------------------------------------------------------ relative transfer
# relative(A→B) = 100 · acc(A→B) / acc(B→B). acc(B→B) (the *reference*) is the best clean validation accuracy
# (best['val/acc']) of the fit run of task B on the same backbone **with the seed of A's prompt** — the same
# number as evaluating B's own prompt on B, which P1 reads from its B→B transfer runs. This is P1's
# get_transferability_matrix_new (src/analysis.py): a ratio per seed; a cell of the matrix is the mean of those
# ratios over seeds. When B has no fit run of that seed, the reference is the mean over B's fit runs and ``how``
# says so. Adversarial targets get no relative score (P1 leaves those cells empty). summary.json, the W&B
# summary and the report all use these two functions.
SAME_SEED = "fit run of B with the prompt's seed (best val/acc)"
MEAN_OVER_SEEDS = "mean over B's fit runs (best val/acc); none has the prompt's seed"
NO_REFERENCE = "no finished fit run of B on this backbone"


def reference_accuracy(candidates: list[tuple[str, Any, float]], seed: Any) -> tuple[float | None, list[str], str]:
    """acc(B→B) from B's fit runs ``candidates`` = [(run id, seed, best val/acc as a fraction)] for a prompt of
    seed ``seed``: (reference or None, the run ids it comes from, how it was found)."""
    same = [c for c in candidates if seed is not None and c[1] == seed]
    chosen = same or candidates
    if not chosen:
        return None, [], NO_REFERENCE
    reference = sum(c[2] for c in chosen) / len(chosen)
    return reference, [str(c[0]) for c in chosen], SAME_SEED if same else MEAN_OVER_SEEDS


def relative_score(accuracy: float | None, reference: float | None) -> float | None:
    """100 · accuracy / reference (both fractions, or both %), None without a positive reference."""
    if accuracy is None or reference is None or reference <= 0:
        return None
    return 100.0 * accuracy / reference


def transfer_record(source: dict[str, Any], target_task: str, backbone: str, accuracy: float,
                    runs_roots: list[Path]) -> dict[str, Any]:
    """Transfer of a prompt from ``source['task']`` (A) to ``target_task`` (B): the accuracy and, when B's own
    fit runs with this backbone are in one of ``runs_roots``, the relative score."""
    own = [summary for _, summary in finished_fit_runs(runs_roots)
           if summary.get("settings", {}).get("task") == target_task
           and summary.get("settings", {}).get("backbone") == backbone
           and (summary.get("best") or {}).get(BEST_KEY) is not None]
    candidates = [(o.get("run_id"), o["settings"].get("seed"), o["best"][BEST_KEY]) for o in own]
    reference, runs, how = reference_accuracy(candidates, source.get("seed"))
    return {
        "source_task": source.get("task"), "target_task": target_task, "accuracy": accuracy,
        "reference_accuracy": reference, "reference_runs": runs, "reference": how,
        "relative": relative_score(accuracy, reference),
    }
