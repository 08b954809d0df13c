"""Batches of encoded examples: padding on the right, or on the left for causal LMs."""

from __future__ import annotations

import torch


class Collator:
    """Pads a list of encoded examples into tensors: input_ids/attention_mask (B, T), the rest (B,).
    ``padding_side="left"`` puts the padding before the text (causal LMs only)."""

    def __init__(self, pad_id: int, padding_side: str = "right"):
        self.pad_id = pad_id
        self.left = padding_side == "left"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(examples), longest), dtype=torch.long)  # (B, T)
        for row, e in enumerate(examples):
            at = slice(longest - len(e["input_ids"]), longest) if self.left else slice(0, len(e["input_ids"]))
            ids[row, at] = torch.tensor(e["input_ids"])
            attention[row, at] = 1
        return {
            "input_ids": ids, "attention_mask": attention,
            "mask_index": torch.tensor([e["mask_index"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples]),
            "idx": torch.tensor([e["idx"] for e in examples]),
        }
