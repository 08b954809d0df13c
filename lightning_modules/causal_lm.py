"""Prompt tuning for decoder-only causal LMs (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX, OPT ... any
``AutoModelForCausalLM``)."""

from __future__ import annotations

import torch

from lightning_modules.prompt_tuning import AnalysedPositions, PromptTuningModule
from lightning_modules.rules import check_positions


class CausalLMPromptTuning(PromptTuningModule):
    """The input is ``[prompt (P vectors)] [text]``, the text being the task's ``causal_lm_template()`` (its
    fields, then a cue such as ``Sentiment:``; Llama's tokenizer adds ``<s>`` in front of it). The label is the
    next-token logits at the last text position, restricted to the first sub-token of each verbalizer word as it
    follows the cue (``Ġpositive``, ``▁positive``: see ``datamodules.prompt_datamodule.causal_label_pieces``).
    Training is cross-entropy over those restricted logits (``layout: standard``; ``paper`` is P1's input for
    RoBERTa and T5 and is refused).

    Position ids follow the attention mask (``cumsum − 1``), so a text gets the same positions and the same
    activations whether the batch pads it on the right or on the left (``data.padding_side``); the last text
    position is found per example from the mask. Only that position goes through the LM head
    (``logits_to_keep``). Hooks: those of :class:`PromptTuningModule`.

    Analysed positions: the prompt comes first and attention is causal, so the prompt positions' FFN units
    never see the text — they are the same for every example and carry no information about it. The analysis
    therefore reads ``last`` (each example's last text position, where the label is read) or ``text_mean``
    (the mean over each example's text positions, special tokens included), never ``prompt``.
    """

    family = "causal_lm"

    # ------------------------------------------------------------------ forward
    def full_attention_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, P+T) 1 at the prompt and the text's real tokens, 0 at padding (on either side of the text)."""
        text = batch["attention_mask"]  # (B, T)
        return torch.cat([text.new_ones(text.shape[0], self.prompt.length), text], dim=1)

    @staticmethod
    def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) the index of each row's last real position (right padding: P + length − 1; left: S − 1)."""
        length = attention_mask.shape[1]
        return length - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)

    def embed(self, batch):
        inputs = super().embed(batch)
        mask = inputs["attention_mask"]  # (B, P+T)
        # Numbered by real tokens only: padding between the prompt and a left-padded text takes no position.
        inputs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, P+T)
        return inputs

    def label_logits(self, inputs, batch):
        last = self.last_positions(inputs["attention_mask"])  # (B,)
        # logits_to_keep (B, 1): the model's own head (final norm, soft-capping ...) at one position per row.
        logits = self.backbone(**inputs, logits_to_keep=last[:, None], use_cache=False).logits  # (B, 1, V)
        return logits[:, 0, self.label_token_ids]  # (B, C)

    def encode(self, inputs):
        self.backbone.base_model(**inputs, use_cache=False)  # the layers (the FFN units) without the head

    # ------------------------------------------------------------------ analysed positions
    def neuron_positions(self, part="encoder", choice="last"):
        raise ValueError(f"positions={choice!r} of a causal LM depend on each example's length and padding, so "
                         "they have no fixed absolute positions — use analysed_positions()")

    def analysed_positions(self, part: str = "encoder", choice: str = "last") -> AnalysedPositions:
        if part != "encoder":
            raise ValueError(f"part={part!r}: a causal LM's one stack of layers is analysed as part='encoder'")
        check_positions(self.family, part, choice)
        if choice == "last":
            def last(units, batch):
                at = self.last_positions(self.full_attention_mask(batch))  # (B,)
                rows = torch.arange(units.shape[0], device=units.device)
                return units[rows, at].unsqueeze(1)  # (B, 1, N)
            return AnalysedPositions("last", 1, None, last,
                                     "last: each example's last text position (where the label is read)")
        return AnalysedPositions("text_mean", 1, None, self.text_mean_units,
                                 "text_mean: the mean over each example's text positions (special tokens included)")
