"""Prompts from W&B: ``--from_run wandb:ENTITY/PROJECT/RUN_ID`` and ``--from_artifact ENTITY/PROJECT/NAME:ALIAS``.

Each is resolved through W&B's public API (``wandb.Api``, online: credentials and network) to a version of a
prompt artifact (:mod:`records.prompt_artifact`), downloaded into W&B's artifact folder (``./artifacts/…``,
``$WANDB_ARTIFACT_DIR``) and evaluated from there like a run folder. The download is marked with the version's
qualified name, so the evaluation run declares it (``run.use_artifact``) and the dashboard's lineage graph links
the two runs. Every failure is one line naming the fix (:class:`records.prompt_artifact.ArtifactRefError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from records.prompt_artifact import (
    ARTIFACT_TYPE, ArtifactRefError, is_folder, note_source, parse_artifact_ref, parse_wandb_run,
)
from records.summary import summary_from_wandb
from skill_neurons.wandb_env import NO_CREDENTIALS, wandb_has_credentials

API_TIMEOUT_S = 30  # seconds per API request
OFFLINE_WAY = ("or evaluate offline: --from_artifact DIR (a downloaded artifact, or runs/<id>/prompt_artifact) or "
               "--from_run runs/<id>")


def api() -> Any:
    """``wandb.Api``; without credentials one line saying how to give them (or how to evaluate offline)."""
    if not wandb_has_credentials():  # W&B would prompt for a key in a terminal
        raise ArtifactRefError(f"reading a prompt from W&B needs its API, and there are {NO_CREDENTIALS} — log in "
                               f"(WANDB_API_KEY or `wandb login`), {OFFLINE_WAY}")
    import wandb

    try:
        return wandb.Api(timeout=API_TIMEOUT_S)
    except Exception as err:  # AuthenticationError: a key the server refuses; no network
        raise ArtifactRefError(f"W&B's API cannot be used ({type(err).__name__}: {_first_line(err)}) — check the "
                               f"key and the network, {OFFLINE_WAY}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def download(artifact: Any, source: str, run_path: str | None = None) -> Path:
    """Download a prompt artifact version and mark the folder with its qualified name; refuse an artifact that
    is not a skill-neurons prompt."""
    if artifact.type != ARTIFACT_TYPE:
        raise ArtifactRefError(f"{source}: {artifact.qualified_name} is a {artifact.type!r} artifact, not a prompt "
                               f"({ARTIFACT_TYPE!r}, named prompt-<backbone>-<task>-<layout>)")
    try:
        folder = Path(artifact.download())
    except Exception as err:
        raise ArtifactRefError(f"{source}: downloading {artifact.qualified_name} failed ({type(err).__name__}: "
                               f"{_first_line(err)}) — check the network and try again") from None
    if not is_folder(folder):
        raise ArtifactRefError(f"{source}: {artifact.qualified_name} holds no skill-neurons prompt (config.yaml, "
                               "run.json and checkpoints/best.ckpt) — give a prompt-… artifact that a fit logged")
    # the version itself (``…:v3``), not the alias it was asked by: an alias moves to later versions
    note_source(folder, f"{artifact.entity}/{artifact.project}/{artifact.name.split(':')[0]}:{artifact.version}",
                run_path)
    return folder


def download_artifact(ref: str) -> Path:
    """``--from_artifact ENTITY/PROJECT/NAME:ALIAS``: that version of the prompt artifact, downloaded."""
    ref = parse_artifact_ref(ref)
    try:
        artifact = api().artifact(ref)
    except ArtifactRefError:
        raise
    except Exception as err:  # CommError: no such artifact, project or alias; no network
        raise ArtifactRefError(f"--from_artifact {ref!r}: W&B has no such artifact version ({type(err).__name__}: "
                               f"{_first_line(err)}) — check the name and alias on the project's Artifacts tab "
                               "(aliases: best, latest, seed-<s>, run-<id>, v<n>)") from None
    return download(artifact, f"--from_artifact {ref}")


def download_run_prompt(spec: str) -> Path:
    """``--from_run wandb:ENTITY/PROJECT/RUN_ID``: the prompt artifact version that W&B run logged last (its
    best prompt), downloaded. A run that is not a fit, or logged no prompt, is refused."""
    path = parse_wandb_run(spec)
    try:
        run = api().run(path)
        summary = summary_from_wandb(run.id, run.state, dict(run.config), dict(run.summary))
        logged = [a for a in run.logged_artifacts() if a.type == ARTIFACT_TYPE]
    except ArtifactRefError:
        raise
    except Exception as err:
        raise ArtifactRefError(f"--from_run {spec!r}: W&B has no such run ({type(err).__name__}: "
                               f"{_first_line(err)}) — check ENTITY/PROJECT/RUN_ID on the run's W&B page") from None
    if summary["stage"] != "fit":
        raise ArtifactRefError(f"--from_run {spec!r} is a {summary['stage']} run — give the W&B run of the fit that "
                               "trained the prompt (its prompt_source names it)")
    if not logged:
        raise ArtifactRefError(f"--from_run {spec!r}: the run logged no prompt artifact (fits log one when they "
                               f"finish; its W&B state is {run.state!r}) — evaluate its local folder with --from_run "
                               "runs/<id>")
    latest = max(logged, key=lambda artifact: int(str(artifact.version).lstrip("v") or 0))  # a resume logs again
    return download(latest, f"--from_run {spec}", path)
