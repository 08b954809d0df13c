"""The skill-neuron files: one owner of their format (``runs/<id>/skill_neurons/<set>.safetensors``).

Each file holds one evaluation set's statistics (``threshold``, ``accuracy``, ``predictivity``, ``score``,
``class_count``, optionally the class-balanced tensors and the continuous metrics of ``correlations: true``:
``label_correlation``, ``margin_correlation``, their ``text_`` variants, each with a ``_score``, and
``activation_probability``) and JSON metadata (backbone, family, part, task,
layout, analysed positions, splits, example counts, prompt checkpoint). This module writes, finds, reads and
combines them; the callback, suppression and the report call it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from records.errors import UserError
from records.eval_set import EvalSet
from records.files import atomic_write
from records.neuron_selection import mean_over_prompts
from records.settings import RunSettings

OUTPUT_DIR = "skill_neurons"


class SkillNeuronError(UserError, ValueError):
    """A skill-neuron analysis that cannot give a meaningful answer (the message names the fix)."""


def save_neuron_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """One evaluation set's statistics as safetensors; metadata values are JSON-encoded strings. Written
    atomically, with the mode of the run's other files (``safetensors``' own ``save_file`` makes it 0600)."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={k: json.dumps(v) for k, v in metadata.items()})
    atomic_write(path, lambda f: f.write(data), binary=True)


def load_neuron_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_neuron_file`: (tensors, metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except Exception as err:  # SafetensorError, OSError, JSONDecodeError: a truncated or foreign file
        raise SkillNeuronError(f"skill-neuron file {str(path)!r} cannot be read ({type(err).__name__}: "
                               f"{' '.join(str(err).split())[:200]}) — it is truncated or not written by "
                               "skill-neurons; rerun the run's analysis (skill-neurons analyse runs/<id>)") from None
    return tensors, metadata


def neuron_file_of(run: str | Path, eval_set: str = "validation") -> Path:
    """The skill-neuron file of one evaluation set (its name or split, ``adv_sst2`` or ``adv/adv_sst2``) of a
    run: a run directory (``runs/<id>``) or a file path."""
    path = Path(run)
    if path.is_file():
        return path
    file = path / OUTPUT_DIR / f"{EvalSet.of(eval_set).file_stem}.safetensors"
    if not file.is_file():
        known = sorted(p.stem for p in (path / OUTPUT_DIR).glob("*.safetensors"))
        raise SkillNeuronError(
            f"{file} does not exist — {'the run has sets ' + ', '.join(known) if known else 'the run has no skill-neuron analysis'}"
            " (runs get one at the end of fit with SkillNeuronCallback; choose the set with its name)"
        )
    return file


def combine_neuron_files(runs: list[str | Path], eval_set: str = "validation") -> tuple[torch.Tensor, dict]:
    """Skill-neuron scores of several prompts (seeds) combined in the papers' order: each run's score is
    already the max over prompt positions; the combined score is the mean of those maxima over runs.

    Returns the (L, N) mean score and metadata (runs, files, backbone, task, per-run scores as a list).
    Runs of different backbones or shapes are refused (their neurons are not the same neurons)."""
    if not runs:
        raise SkillNeuronError("no runs given to combine — pass one or more run directories or neuron files")
    scores, metas, files = [], [], []
    for run in runs:
        file = neuron_file_of(run, eval_set)
        tensors, meta = load_neuron_file(file)
        scores.append(tensors["score"])
        metas.append(meta)
        files.append(str(file))
    settings = [RunSettings.from_neuron_file(m) for m in metas]  # older files: their defaults filled in
    for key, what in (("backbone", "backbones"), ("part", "parts"), ("layout", "layouts"),
                      ("positions", "analysed positions")):
        values = {str(getattr(s, key)) for s in settings}
        if len(values) > 1:
            raise SkillNeuronError(f"cannot combine neuron files of different {what} {sorted(values)}: {files}")
    shapes = {tuple(score.shape) for score in scores}
    if len(shapes) > 1:
        raise SkillNeuronError(f"cannot combine neuron files of different shapes {sorted(shapes)}: {files}")
    combined = mean_over_prompts(scores)  # (L, N)
    meta = {"runs": [str(r) for r in runs], "files": files, "backbone": settings[0].backbone,
            "part": settings[0].part, "tasks": sorted({str(m.get("task")) for m in metas}),
            "split": metas[0].get("split"), "combined": "mean over runs of the max over prompt positions"}
    return combined, meta
