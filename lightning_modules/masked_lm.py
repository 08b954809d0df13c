"""Prompt tuning for masked LMs (RoBERTa, BERT, ... any ``AutoModelForMaskedLM``)."""

from __future__ import annotations

import torch

from lightning_modules.prompt_tuning import PromptTuningModule


class MaskedLMPromptTuning(PromptTuningModule):
    """The label is read at ``<mask>`` from the masked-LM logits of the verbalizer words.

    Only the ``<mask>`` position goes through the MLM head (the encoder's other outputs are not projected
    onto the vocabulary), which is what the loss needs. Hooks: those of :class:`PromptTuningModule`.
    """

    family = "masked_lm"

    def _mlm_head(self):
        # RoBERTa/XLM-R/CamemBERT call it lm_head, BERT-like models cls; others use the full model below.
        return getattr(self.backbone, "lm_head", None) or getattr(self.backbone, "cls", None)

    def label_logits(self, inputs_embeds, attention_mask, batch):
        rows = torch.arange(inputs_embeds.shape[0], device=inputs_embeds.device)
        at = self.prompt.length + batch["mask_index"]  # (B,) <mask> position after the prompt
        head = self._mlm_head()
        if head is not None:
            hidden = self.backbone.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
            vocab = head(hidden.last_hidden_state[rows, at])  # (B, V)
        else:
            vocab = self.backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits[rows, at]
        return vocab[:, self.label_token_ids]  # (B, C)

    def encode(self, inputs_embeds, attention_mask):
        self.backbone.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
