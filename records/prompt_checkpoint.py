"""The prompt checkpoint: the one owner of its keys, its reader and its writer.

A skill-neurons checkpoint is a Lightning checkpoint whose ``state_dict`` holds only the soft prompt
(``prompt.weight``, shape (P, H)): the frozen backbone is reloaded by name. Beside it, ``skill_neurons`` holds
the metadata (backbone, family, layout, prompt shape and, for imported prompts, ``imported_from``), and
``hyper_parameters`` the module's init arguments with ``_class_path`` (one of :data:`FAMILY_CLASSES`), as
LightningCLI stores them. The prompt-tuning module writes it (``on_save_checkpoint``), ``import-prompt`` writes
it from published prompts, the skill-neuron callback reads the best prompt from it, the run summary reads its
metadata, the CLI checks it before a run.

This module is the bottom layer: torch only, no Lightning, no project imports beyond the file helpers.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from records.errors import UserError
from records.files import atomic_write

PROMPT_KEY = "prompt.weight"
METADATA_KEY = "skill_neurons"
BACKBONE_PREFIX = "backbone."  # state_dict keys of the frozen backbone: never saved
# What of a Lightning checkpoint a prompt-only copy keeps: enough for --ckpt_path in validate/test/predict.
PROMPT_ONLY_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name", "hyper_parameters",
                    "datamodule_hparams_name", "datamodule_hyper_parameters", METADATA_KEY)
# The family of a backbone -> the LightningModule that tunes it (``class_path`` in configs and checkpoints).
FAMILY_CLASSES = {"masked_lm": "lightning_modules.MaskedLMPromptTuning",
                  "seq2seq": "lightning_modules.Seq2SeqPromptTuning",
                  "causal_lm": "lightning_modules.CausalLMPromptTuning"}


class CheckpointError(UserError, ValueError):
    """A checkpoint that is not a readable skill-neurons prompt checkpoint; the message names the fix."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``; a truncated or foreign file is one clear error
    (never the unpickler's advice to load it with ``weights_only=False``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle that needs code: all the same advice
        kind = "truncated" if isinstance(err, (OSError, EOFError)) or "zip" in str(err).lower() else "corrupt"
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({kind}: {type(err).__name__}) — it is not "
                              "a complete checkpoint written by skill-neurons; give another --ckpt_path (e.g. "
                              "runs/<id>/checkpoints/last.ckpt or best.ckpt)") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state_dict — it is not a Lightning checkpoint; "
                              "give a --ckpt_path written by skill-neurons fit or import-prompt")
    return checkpoint


def check_finite(prompt: torch.Tensor, source: str = "this checkpoint") -> torch.Tensor:
    """Refuse a prompt with NaN or infinite values: it evaluates to NaN losses and the majority class, and
    every number computed from it (accuracy, skill neurons) would be meaningless."""
    bad = int((~torch.isfinite(prompt)).sum())
    if bad:
        raise CheckpointError(f"{source} holds a soft prompt with {bad} of {prompt.numel()} values NaN or infinite "
                              "— it was saved from a diverged run or corrupted; use another checkpoint (e.g. the "
                              "run's best.ckpt, or retrain with a smaller --model.learning_rate)")
    return prompt


def prompt_of(checkpoint: dict[str, Any], source: str = "this checkpoint") -> torch.Tensor:
    """The (P, H) soft prompt of a checkpoint; refused when missing or not finite (:func:`check_finite`)."""
    state = checkpoint.get("state_dict") or {}
    if PROMPT_KEY not in state:
        raise CheckpointError(f"{source} holds no soft prompt ({PROMPT_KEY}); it was not written by "
                              "skill-neurons")
    return check_finite(state[PROMPT_KEY], source)


def read_prompt(path: str | Path) -> torch.Tensor:
    return prompt_of(read_checkpoint(path), f"checkpoint {str(path)!r}")


def check_prompt_shape(checkpoint: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Refuse a checkpoint without a prompt or with a prompt of another shape than the model's."""
    found = tuple(prompt_of(checkpoint).shape)
    if found != tuple(shape):
        raise CheckpointError(f"checkpoint prompt has shape {found} but this model's is {tuple(shape)} — use the "
                              "checkpoint's prompt_length and backbone")


def metadata(backbone: str, family: str, layout: str, prompt_shape: tuple[int, ...], **extra: Any) -> dict:
    return {"backbone": backbone, "family": family, "layout": layout, "prompt_shape": list(prompt_shape), **extra}


def keep_prompt_only(checkpoint: dict[str, Any], meta: dict[str, Any]) -> None:
    """Drop the frozen backbone from a checkpoint Lightning is saving and add the metadata (in place)."""
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                if not k.startswith(BACKBONE_PREFIX)}
    checkpoint[METADATA_KEY] = meta


def metadata_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint.get(METADATA_KEY) or {}


def write_checkpoint(out: str | Path, prompt: torch.Tensor, hyper_parameters: dict[str, Any],
                     meta: dict[str, Any], lightning_version: str) -> None:
    """Write a prompt checkpoint that ``--ckpt_path`` loads like a fit checkpoint, atomically."""
    checkpoint = {
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning_version,
        "state_dict": {PROMPT_KEY: prompt}, "hparams_name": "kwargs",
        "hyper_parameters": hyper_parameters, METADATA_KEY: meta,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # serialised first: torch's zip writer turns a full disk into a RuntimeError
    torch.save(checkpoint, buffer)
    atomic_write(out, lambda f: f.write(buffer.getbuffer()), binary=True)


def prompt_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A prompt checkpoint without the optimizer, RNG, loop and callback state: the soft prompt and what describes
    it (:data:`PROMPT_ONLY_KEYS`) — what a W&B prompt artifact holds (KBs)."""
    kept = {key: checkpoint[key] for key in PROMPT_ONLY_KEYS if key in checkpoint}
    kept["state_dict"] = {PROMPT_KEY: prompt_of(checkpoint).clone()}
    return kept


def copy_prompt_only(source: str | Path, out: str | Path) -> None:
    """Write :func:`prompt_only` of the checkpoint ``source`` to ``out``, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(prompt_only(read_checkpoint(source)), buffer)
    atomic_write(out, lambda f: f.write(buffer.getbuffer()), binary=True)
