"""Batches of encoded examples: padding on the right, or on the left for causal LMs."""

from __future__ import annotations

import torch


class Collator:
    """Pads a list of encoded examples into tensors: input_ids/attention_mask (B, T), the rest (B,).
    ``padding_side="left"`` puts the padding before the text (causal LMs only). Paired adversarial rows also
    give ``clean_input_ids``/``clean_attention_mask`` (B, T') and ``clean_mask_index`` (B,): their clean twins."""

    def __init__(self, pad_id: int, padding_side: str = "right"):
        self.pad_id = pad_id
        self.left = padding_side == "left"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self._pad(examples, "input_ids")
        batch.update(mask_index=torch.tensor([e["mask_index"] for e in examples]),
                     labels=torch.tensor([e["label"] for e in examples]),
                     idx=torch.tensor([e["idx"] for e in examples]))
        if "clean_input_ids" in examples[0]:  # paired adversarial rows: each row's clean twin, padded on its own
            clean = self._pad(examples, "clean_input_ids")
            batch.update(clean_input_ids=clean["input_ids"], clean_attention_mask=clean["attention_mask"],
                         clean_mask_index=torch.tensor([e["clean_mask_index"] for e in examples]))
        return batch

    def _pad(self, examples: list[dict], key: str) -> dict[str, torch.Tensor]:
        longest = max(len(e[key]) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(examples), longest), dtype=torch.long)  # (B, T)
        for row, e in enumerate(examples):
            at = slice(longest - len(e[key]), longest) if self.left else slice(0, len(e[key]))
            ids[row, at] = torch.tensor(e[key])
            attention[row, at] = 1
        return {"input_ids": ids, "attention_mask": attention}
