"""Prompt tuning for encoder–decoders (T5, T5 v1.1, Flan-T5 ... any ``AutoModelForSeq2SeqLM``)."""

from __future__ import annotations

import torch

from lightning_modules.prompt_tuning import PromptTuningModule


class Seq2SeqPromptTuning(PromptTuningModule):
    """The prompt goes on the encoder input; the label is the first decoder step's logits restricted to
    the first sub-token of each label word (P1's evaluation). Training uses cross-entropy over the same
    restricted logits, so training and evaluation read the label identically.
    Hooks: those of :class:`PromptTuningModule`.
    """

    family = "seq2seq"

    def label_logits(self, inputs_embeds, attention_mask, batch):
        start = torch.full((inputs_embeds.shape[0], 1), self.backbone.config.decoder_start_token_id,
                           dtype=torch.long, device=inputs_embeds.device)  # (B, 1)
        out = self.backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask, decoder_input_ids=start,
                            use_cache=False)
        return out.logits[:, 0, self.label_token_ids]  # (B, C)

    def encode(self, inputs_embeds, attention_mask):
        self.backbone.get_encoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
