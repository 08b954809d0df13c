"""Prompt tuning for encoder–decoders (T5, T5 v1.1, Flan-T5 ... any ``AutoModelForSeq2SeqLM``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.prompt_tuning import PromptTuningModule


class Seq2SeqPromptTuning(PromptTuningModule):
    """The prompt goes on the encoder input; the label is the first decoder step's logits restricted to
    the first sub-token of each scored word (P1's evaluation, Robust-Neurons ``PromptT5.py`` ``acc``).

    Training: ``standard`` uses cross-entropy over those restricted logits, so training and evaluation read
    the label identically; ``paper`` uses P1's seq2seq loss, cross-entropy over the whole vocabulary on the
    first ``target_length`` tokens of the label word (teacher forcing; padded target tokens ignored).
    Hooks: those of :class:`PromptTuningModule`.
    """

    family = "seq2seq"

    def _decode(self, inputs, steps: torch.Tensor):
        return self.backbone(**inputs, decoder_input_ids=steps, use_cache=False).logits  # (B, S, V)

    def _start(self, batch_size: int, device) -> torch.Tensor:
        return torch.full((batch_size, 1), self.backbone.config.decoder_start_token_id, dtype=torch.long,
                          device=device)  # (B, 1)

    def label_logits(self, inputs, batch):
        start = self._start(inputs["inputs_embeds"].shape[0], inputs["inputs_embeds"].device)
        return self._decode(inputs, start)[:, 0, self.label_token_ids]  # (B, C)

    def encode(self, inputs):
        self.backbone.get_encoder()(**inputs)

    def loss_and_logits(self, batch):
        if self.hparams.layout != "paper":
            return super().loss_and_logits(batch)
        targets = self.label_target_ids[batch["labels"]]  # (B, S) label-word tokens, -100 padded
        inputs = self.embed(batch)
        start = self._start(targets.shape[0], targets.device)
        # T5's shift-right: the decoder reads [start, t0, ..., t_{S-2}] (ignored targets read as padding).
        previous = targets[:, :-1].masked_fill(targets[:, :-1] < 0, self.backbone.config.pad_token_id)
        logits = self._decode(inputs, torch.cat([start, previous], dim=1)).float()  # (B, S, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return loss, logits[:, 0, self.label_token_ids]  # (B, C) the first step decides the prediction
