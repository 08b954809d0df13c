"""Prompt-tuning LightningModules: one shared base, one subclass per backbone family."""

from lightning_modules.causal_lm import CausalLMPromptTuning
from lightning_modules.masked_lm import MaskedLMPromptTuning
from lightning_modules.prompt_tuning import PromptTuningModule
from lightning_modules.seq2seq import Seq2SeqPromptTuning
from lightning_modules.soft_prompt import SoftPrompt

__all__ = ["CausalLMPromptTuning", "MaskedLMPromptTuning", "PromptTuningModule", "Seq2SeqPromptTuning", "SoftPrompt"]
