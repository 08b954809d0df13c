"""PEFT prompt-tuning adapters: the one owner of the folder Hugging Face PEFT's ``save_pretrained`` writes and
``PeftModel.from_pretrained(base, DIR)`` reads, for ``PromptTuningConfig`` adapters.

The folder holds ``adapter_config.json`` (``peft_type`` ``PROMPT_TUNING``, ``task_type``, ``num_virtual_tokens``
``P``, ``token_dim`` ``H``, ``num_transformer_submodules``, ``base_model_name_or_path`` ...) and
``adapter_model.safetensors`` with one tensor, ``prompt_embeddings``: (P × num_transformer_submodules, H).
PEFT's prompt-tuning forward (``peft_model.py``, checked against peft 0.21) reads:

- ``CAUSAL_LM``: every row, placed before the input embeddings, the attention mask extended with P ones, no
  position ids of its own (the backbone numbers the positions); so only ``num_transformer_submodules`` 1 is a
  consistent adapter (with 2, PEFT would put 2P rows in front of a mask of P).
- ``SEQ_2_SEQ_LM``: rows 0 … P−1 in front of the encoder's input embeddings. PEFT defaults to
  ``num_transformer_submodules`` 2 for it and stores 2P rows, but its prompt-tuning forward never reads rows
  P … 2P−1 (they would be decoder rows for methods that use them), so they are dropped on reading.

Neither PEFT nor transformers is imported: the files are JSON and safetensors (a dependency of transformers),
so writing and reading need no ``peft`` at run time. Older PEFT versions wrote ``adapter_model.bin`` (a
``torch.save`` of the same dict); it is read with ``weights_only=True`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from records.errors import UserError
from records.files import atomic_write

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"
WEIGHTS_KEY = "prompt_embeddings"
PROMPT_TUNING = "PROMPT_TUNING"
# This project's backbone family <-> PEFT's task type whose prompt-tuning forward equals the family's input.
TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}
FAMILIES = {task_type: family for family, task_type in TASK_TYPES.items()}
SUPPORTED = ("PEFT prompt tuning (PromptTuningConfig, peft_type PROMPT_TUNING) adapters of task type CAUSAL_LM "
             "(causal LMs) or SEQ_2_SEQ_LM (T5)")


class AdapterError(UserError, ValueError):
    """A folder that is not a PEFT prompt-tuning adapter this project can use; the message names the fix."""


@dataclass(frozen=True)
class PeftPrompt:
    """What an adapter holds: the (P, H) float32 prompt PEFT's forward reads, the family, the base model's name as
    the adapter records it, the config as stored and the shape of the stored tensor."""

    prompt: torch.Tensor
    family: str
    base_model: str | None
    config: dict[str, Any] = field(default_factory=dict)
    stored_shape: tuple[int, int] = (0, 0)


def adapter_config(family: str, prompt_length: int, width: int, base_model: str, num_layers: int | None,
                   num_attention_heads: int | None) -> dict[str, Any]:
    """The ``adapter_config.json`` of a prompt (PEFT's ``PromptTuningConfig`` fields). One transformer submodule
    for T5 too: the rows are the encoder's, and PEFT keeps a stored 1 instead of its default 2."""
    return {
        "auto_mapping": None, "base_model_name_or_path": base_model, "inference_mode": True,
        "modules_to_save": None, "num_attention_heads": num_attention_heads, "num_layers": num_layers,
        "num_transformer_submodules": 1, "num_virtual_tokens": prompt_length, "peft_type": PROMPT_TUNING,
        "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "revision": None,
        "task_type": TASK_TYPES[family], "token_dim": width, "tokenizer_kwargs": None, "tokenizer_name_or_path": None,
    }


def write_adapter(out: str | Path, prompt: torch.Tensor, config: dict[str, Any]) -> list[Path]:
    """Write ``config`` and the (P, H) ``prompt`` (float32) into folder ``out``; returns the two files."""
    from safetensors.torch import save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = save({WEIGHTS_KEY: prompt.detach().to(torch.float32).contiguous().cpu()})  # bytes, before any file
    files = [out / WEIGHTS_FILE, out / CONFIG_FILE]
    atomic_write(files[0], lambda f: f.write(weights), binary=True)  # each file whole or not at all
    atomic_write(files[1], lambda f: f.write(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return files


def read_config(folder: str | Path) -> dict[str, Any]:
    """The adapter's config; refuses a folder without one and any adapter that is not prompt tuning."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{folder} holds no {CONFIG_FILE} — give the folder PEFT's save_pretrained wrote "
                           f"({CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{path} cannot be read as JSON ({type(err).__name__}) — write the adapter again with "
                           "PEFT's save_pretrained") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} holds no JSON object — write the adapter again with PEFT's save_pretrained")
    kind = config.get("peft_type")
    if kind != PROMPT_TUNING:
        raise AdapterError(f"{folder} is a {kind} adapter, not prompt tuning — only {SUPPORTED} are supported "
                           "(LoRA changes the backbone's weights, prefix tuning its attention keys and values, "
                           "P-tuning computes its prompt with an encoder: none is a prompt in front of the input)")
    task_type = config.get("task_type")
    if task_type not in FAMILIES:
        raise AdapterError(f"{folder} is a prompt-tuning adapter of task type {task_type}, which has no family here "
                           f"— only {SUPPORTED} are supported (PEFT has no masked-LM task type)")
    length = config.get("num_virtual_tokens")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise AdapterError(f"{path}: num_virtual_tokens={length!r} — it must be a whole number of at least 1")
    submodules = config.get("num_transformer_submodules") or (2 if task_type == "SEQ_2_SEQ_LM" else 1)
    if submodules not in ((1, 2) if task_type == "SEQ_2_SEQ_LM" else (1,)):
        raise AdapterError(f"{path}: num_transformer_submodules={submodules} does not fit task type {task_type} "
                           "(PEFT's prompt tuning uses 1 for CAUSAL_LM, 1 or 2 for SEQ_2_SEQ_LM)")
    return config


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    safetensors, legacy = folder / WEIGHTS_FILE, folder / LEGACY_WEIGHTS_FILE
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors))
        if legacy.is_file():
            state = torch.load(legacy, map_location="cpu", weights_only=True)
            if isinstance(state, dict):
                return state
            raise AdapterError(f"{legacy} holds a {type(state).__name__}, not PEFT's dict of tensors")
    except AdapterError:
        raise
    except Exception as err:  # SafetensorError, UnpicklingError, OSError: a truncated or foreign file
        raise AdapterError(f"the weights in {folder} cannot be read ({type(err).__name__}) — write the adapter again "
                           "with PEFT's save_pretrained") from None
    raise AdapterError(f"{folder} holds no {WEIGHTS_FILE} (nor {LEGACY_WEIGHTS_FILE}) — give the whole folder "
                       "PEFT's save_pretrained wrote")


def read_adapter(folder: str | Path) -> PeftPrompt:
    """The prompt of a PEFT prompt-tuning adapter folder (see the module docstring for which rows are read)."""
    folder = Path(folder)
    config = read_config(folder)
    weights = _read_weights(folder)
    if WEIGHTS_KEY not in weights:
        raise AdapterError(f"{folder}: the weights hold {sorted(weights)} but no {WEIGHTS_KEY} — a prompt-tuning "
                           "adapter saves its prompt under that key")
    stored = weights[WEIGHTS_KEY]
    length, width = config["num_virtual_tokens"], config.get("token_dim")
    if stored.dim() != 2 or stored.shape[0] < length or (width is not None and stored.shape[1] != width):
        raise AdapterError(f"{folder}: {WEIGHTS_KEY} has shape {tuple(stored.shape)}, which does not hold "
                           f"num_virtual_tokens={length} rows of token_dim={width} — the files do not belong together")
    if not stored.is_floating_point() or not torch.isfinite(stored).all():
        raise AdapterError(f"{folder}: {WEIGHTS_KEY} is not a finite floating-point tensor — the adapter was saved "
                           "from a diverged run or is corrupted")
    prompt = stored[:length].to(torch.float32).contiguous()  # (P, H): the rows PEFT's forward reads
    return PeftPrompt(prompt, FAMILIES[config["task_type"]], config.get("base_model_name_or_path"), config,
                      tuple(stored.shape))
