"""A fit run's trained prompt as a W&B ``model`` artifact: its folder, name, aliases and the references naming it.

The artifact holds what evaluating the prompt needs and nothing else (KBs): the run's ``config.yaml``,
``run.json`` (the run's record: id, status, settings, best epoch, W&B run, and the artifact's own name) and
``checkpoints/best.ckpt`` — the best epoch's checkpoint with the soft prompt, the module's hyper-parameters and the
prompt metadata only: no optimizer or RNG state, never the frozen backbone (it is reloaded by name).

The folder is laid out like a run folder, so a downloaded artifact (``wandb artifact get``, ``Artifact.download``)
or the copy a fit keeps in ``runs/<id>/prompt_artifact/`` is evaluated the way a run is (``--from_artifact DIR``,
``--from_run DIR``). Its record is ``run.json``, not ``summary.json``: the searches for finished fit runs
(``--from_run 'ROOT?task=…'``, seed means, the report) must not take the copy for a second run of the same seed.

The bottom layer, and light: no torch (``skill-neurons --help`` reads the references through
:mod:`skill_neurons.runs`), no W&B (the references are plain strings). The checkpoint itself is written by
:func:`records.prompt_checkpoint.copy_prompt_only` into :func:`checkpoint_path`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from records.errors import UserError
from records.files import atomic_write, read_json, write_json_atomic
from records.summary import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, read_summary

ARTIFACT_TYPE = "model"  # W&B's type for trained models: the dashboard lists these under "Models"
FOLDER = "prompt_artifact"  # runs/<id>/prompt_artifact/: the artifact's files, kept with the run
RECORD_FILE = "run.json"
SOURCE_FILE = "wandb_artifact.json"  # written beside a download: the artifact version it is (for use_artifact)
RECORD_SECTIONS = ("run_id", "stage", "status", "started", "finished", "settings", "data", "best", "wandb", "config")
WANDB_RUN_PREFIX = "wandb:"
DEFAULT_ALIAS = "latest"  # W&B's own default when a reference names no version
_PART = r"[^/:\s]+"
WANDB_RUN = re.compile(rf"({_PART})/({_PART})/({_PART})")
ARTIFACT_REF = re.compile(rf"({_PART})/({_PART})/({_PART})(?::([^/:\s]+))?")


class ArtifactRefError(UserError, ValueError):
    """A ``--from_run wandb:…`` / ``--from_artifact …`` that names no W&B run, artifact or artifact folder."""


def aliases(run_id: str, seed: int | None) -> list[str]:
    """The aliases of a run's prompt version: ``best`` (the best epoch's prompt), ``run-<id>``, ``seed-<s>``."""
    return ["best", f"run-{run_id}", *([f"seed-{seed}"] if seed is not None else [])]


def checkpoint_path(folder: str | Path) -> Path:
    """The prompt checkpoint of an artifact folder (``checkpoints/best.ckpt``, as in a run folder)."""
    return Path(folder) / CHECKPOINT_DIR / BEST_CHECKPOINT


def write_folder(run_dir: str | Path, name: str) -> Path:
    """Write the artifact's ``config.yaml`` (the run's) and ``run.json`` (its record, naming artifact ``name``) for
    the fit run ``run_dir`` into ``run_dir/prompt_artifact/``, atomically; the folder. Its checkpoint is
    :func:`records.prompt_checkpoint.copy_prompt_only` of the run's ``best.ckpt`` into :func:`checkpoint_path`."""
    run_dir = Path(run_dir)
    out = run_dir / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    config = (run_dir / CONFIG_FILE).read_text()
    atomic_write(out / CONFIG_FILE, lambda f: f.write(config))
    summary = read_summary(run_dir)
    record = {key: summary[key] for key in RECORD_SECTIONS if key in summary}
    write_json_atomic(out / RECORD_FILE, {**record, "artifact": {"name": name, "type": ARTIFACT_TYPE}}, indent=2)
    return out


def files_of(folder: str | Path) -> dict[str, Path]:
    """The artifact's files by their name in the artifact (``checkpoints/best.ckpt``, ``config.yaml``, ``run.json``)."""
    folder = Path(folder)
    names = (f"{CHECKPOINT_DIR}/{BEST_CHECKPOINT}", CONFIG_FILE, RECORD_FILE)
    return {name: folder / name for name in names}


def is_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a prompt artifact's files (a download, or ``runs/<id>/prompt_artifact``)."""
    return all(file.is_file() for file in files_of(path).values())


def read_record(folder: str | Path) -> dict[str, Any]:
    """The fit run an artifact folder holds the prompt of (``run.json``; ``{}`` when it has none)."""
    return read_json(Path(folder) / RECORD_FILE)


def note_source(folder: str | Path, qualified_name: str, run_path: str | None = None) -> None:
    """Remember beside a download which artifact version it is (``entity/project/name:v3``)."""
    write_json_atomic(Path(folder) / SOURCE_FILE, {"artifact": qualified_name, "run": run_path}, indent=2)


def reference(folder: str | Path) -> str | None:
    """The W&B reference of the artifact version in ``folder``: the downloaded version's qualified name, else
    ``<name>:run-<id>`` (the version the run logged, in the project the evaluating run logs to); None when
    ``folder`` is no artifact folder."""
    folder = Path(folder)
    downloaded = read_json(folder / SOURCE_FILE).get("artifact")
    if downloaded:
        return str(downloaded)
    record = read_record(folder)
    name = (record.get("artifact") or {}).get("name")
    return f"{name}:run-{record['run_id']}" if name and record.get("run_id") else None


def parse_wandb_run(spec: str) -> str:
    """``wandb:ENTITY/PROJECT/RUN_ID`` -> ``ENTITY/PROJECT/RUN_ID`` (refused with the form when malformed)."""
    path = spec[len(WANDB_RUN_PREFIX):] if spec.startswith(WANDB_RUN_PREFIX) else spec
    if not WANDB_RUN.fullmatch(path):
        raise ArtifactRefError(f"--from_run {spec!r} is not a W&B run: write wandb:ENTITY/PROJECT/RUN_ID (the run's "
                               "path on its W&B page, e.g. wandb:my-team/skill-neurons/ab12cd34)")
    return path


def parse_artifact_ref(spec: str) -> str:
    """``ENTITY/PROJECT/NAME[:ALIAS]`` -> ``ENTITY/PROJECT/NAME:ALIAS`` (``latest`` when no alias or version is
    given, as W&B does); refused with the form when malformed."""
    match = ARTIFACT_REF.fullmatch(spec)
    if not match:
        raise ArtifactRefError(f"--from_artifact {spec!r} is neither a prompt artifact folder nor a W&B artifact: "
                               "write ENTITY/PROJECT/NAME:ALIAS (e.g. my-team/skill-neurons/"
                               "prompt-roberta-base-sst2-paper:seed-33) or give a downloaded artifact's folder")
    entity, project, name, alias = match.groups()
    return f"{entity}/{project}/{name}:{alias or DEFAULT_ALIAS}"
