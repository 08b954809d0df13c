"""Prompt-tuning LightningModules: one shared base, one subclass per backbone family.

The classes are imported on first use (PEP 562), so that the Lightning-free modules of this package (``ffn``,
``backbones``) can be imported without Lightning. ``lightning_modules.MaskedLMPromptTuning`` works as a
``class_path`` as before.
"""

from __future__ import annotations

import importlib

_CLASSES = {"CausalLMPromptTuning": "causal_lm", "MaskedLMPromptTuning": "masked_lm",
            "PromptTuningModule": "prompt_tuning", "Seq2SeqPromptTuning": "seq2seq", "SoftPrompt": "soft_prompt"}
__all__ = sorted(_CLASSES)


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
