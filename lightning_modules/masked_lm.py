"""Prompt tuning for masked LMs (RoBERTa, BERT, ... any ``AutoModelForMaskedLM``)."""

from __future__ import annotations

import torch

from lightning_modules.prompt_tuning import PromptTuningModule
from lightning_modules.rules import LayoutError


class MaskedLMPromptTuning(PromptTuningModule):
    """The label is read at ``<mask>`` from the masked-LM logits of the scored words.

    ``standard``: the text is ``<s> <mask> ...`` after the prompt; ``paper`` (P1): prompt slot 0 *is* the
    ``<mask>`` (its word embedding, not trained), the prompt slots get zero position embeddings and the
    text is numbered as if there were no prompt (Robust-Neurons ``modelling_roberta.py``:
    ``create_position_ids_from_input_ids`` skips the negative prompt ids, then ``position_embeddings[:, :100]``
    is zeroed). Only the ``<mask>`` position goes through the MLM head. Hooks: those of
    :class:`PromptTuningModule`, and ``train`` keeps the embeddings' dropout off under ``paper`` (P1 comments
    it out).
    """

    family = "masked_lm"

    def check_layout(self, layout: str) -> None:
        if layout != "paper":
            return
        embeddings = getattr(self.backbone.base_model, "embeddings", None)
        kind = getattr(self.backbone.config, "position_embedding_type", "absolute")
        if getattr(embeddings, "position_embeddings", None) is None or kind not in (None, "absolute"):
            raise LayoutError(
                f"layout 'paper' zeroes the prompt slots' absolute position embeddings (P1), but "
                f"{self.hparams.backbone!r} ({self.backbone.config.model_type}) has none — use --model.layout=standard"
            )
        if self.tokenizer.mask_token_id is None:
            raise LayoutError(f"layout 'paper' puts <mask> in prompt slot 0, but {self.hparams.backbone!r} has no "
                              "mask token — use another backbone")

    def _mlm_head(self):
        # RoBERTa/XLM-R/CamemBERT call it lm_head, BERT-like models cls; others use the full model below.
        return getattr(self.backbone, "lm_head", None) or getattr(self.backbone, "cls", None)

    @property
    def _paper(self) -> bool:
        return self.hparams.layout == "paper"

    def prompt_vectors(self, batch_size, dtype):
        prompt = super().prompt_vectors(batch_size, dtype)  # (B, P, H)
        if not self._paper:
            return prompt
        mask_id = torch.tensor([self.tokenizer.mask_token_id], device=prompt.device)
        mask = self.backbone.get_input_embeddings()(mask_id).detach().to(dtype)  # (1, H)
        return torch.cat([mask.expand(batch_size, 1, -1), prompt[:, 1:]], dim=1)  # slot 0 = <mask>

    def embed(self, batch):
        inputs = super().embed(batch)
        if not self._paper:
            return inputs
        embeddings = self.backbone.base_model.embeddings
        pad = getattr(embeddings, "padding_idx", None)
        start = 0 if pad is None else pad + 1  # RoBERTa numbers real tokens from padding_idx + 1
        slot = 0 if pad is None else pad  # the position id the prompt slots (and padding) get
        text_mask = batch["attention_mask"]  # (B, T)
        text_ids = torch.where(text_mask.bool(), start + text_mask.cumsum(dim=1) - 1, slot)  # (B, T)
        prompt_ids = text_ids.new_full((text_ids.shape[0], self.prompt.length), slot)  # (B, P)
        embeds = inputs["inputs_embeds"]
        # The backbone adds position_embeddings(position_ids); subtracting the slot's row first makes the prompt
        # slots' position embedding exactly zero (RoBERTa's padding row already is zero).
        row = embeddings.position_embeddings.weight[slot].to(embeds.dtype)  # (H,)
        inputs["inputs_embeds"] = torch.cat([embeds[:, : self.prompt.length] - row, embeds[:, self.prompt.length:]], dim=1)
        inputs["position_ids"] = torch.cat([prompt_ids, text_ids], dim=1)  # (B, P+T)
        return inputs

    def mask_positions(self, batch) -> torch.Tensor:
        """Where the label is read, (B,): prompt slot 0 under ``paper``, else the text's ``<mask>``."""
        if self._paper:
            return torch.zeros_like(batch["mask_index"])
        return self.prompt.length + batch["mask_index"]

    def label_logits(self, inputs, batch):
        rows = torch.arange(inputs["inputs_embeds"].shape[0], device=inputs["inputs_embeds"].device)
        at = self.mask_positions(batch)  # (B,)
        head = self._mlm_head()
        if head is not None:
            hidden = self.backbone.base_model(**inputs)
            vocab = head(hidden.last_hidden_state[rows, at])  # (B, V)
        else:
            vocab = self.backbone(**inputs).logits[rows, at]
        return vocab[:, self.label_token_ids]  # (B, C)

    def encode(self, inputs):
        self.backbone.base_model(**inputs)

    def neuron_positions(self, part="encoder", choice="prompt"):
        prompt = super().neuron_positions(part, choice)
        if part == "decoder" or choice == "prompt":
            return prompt
        if self._paper:
            return [0] if choice == "mask" else prompt  # the <mask> is prompt slot 0
        if self.mask_index is None:
            raise ValueError("the <mask> position is known once the DataModule is set up (mask_index)")
        mask = self.prompt.length + self.mask_index
        return [mask] if choice == "mask" else [*prompt, mask]

    def train(self, mode: bool = True):
        super().train(mode)
        if self._paper:
            self.backbone.base_model.embeddings.train(False)  # P1: no dropout on the embeddings
        return self
