"""``PromptModelSummary``: Lightning's model summary at the start of ``fit``, without its FLOPs column.

Lightning (2.6) adds a ``FLOPs`` column and a ``Total FLOPs`` line to its summary; it counts them only over a
forward of the module's ``example_input_array``, which a prompt-tuning module has none of (its input is a
tokenised batch of the task), so both always read 0. This summary prints the same table and totals without
them, as plain text (no terminal width to cut it).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

NOT_COUNTED = ("FLOPs",)  # columns that are always 0 without an example input


def summary_text(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                 model_size: float, total_training_modes: dict[str, int]) -> str:
    """The table (one row per top-level module: name, type, parameters, train/eval mode) and its totals."""
    columns = [(name, [v.strip() for v in values]) for name, values in summary_data if name not in NOT_COUNTED]
    widths = [max(len(name), *(len(v) for v in values)) if values else len(name) for name, values in columns]
    rows = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths))]
    rows.append("-" * len(rows[0]))
    for i in range(len(columns[0][1]) if columns else 0):
        rows.append(" | ".join(values[i].ljust(w) for (_, values), w in zip(columns, widths)))
    trainable, frozen, total = (get_human_readable_count(int(n)).strip() for n in
                                (trainable_parameters, total_parameters - trainable_parameters, total_parameters))
    rows += [
        f"Trainable params: {trainable} · non-trainable: {frozen} · total: {total} "
        f"({get_formatted_model_size(model_size)} MB)",
        f"Modules in train mode: {total_training_modes.get('train', 0)} · in eval mode: "
        f"{total_training_modes.get('eval', 0)}",
    ]
    return "\n".join(line.rstrip() for line in rows)


class PromptModelSummary(ModelSummary):
    """``ModelSummary`` (same arguments: ``max_depth``) whose table has no FLOPs column and no FLOPs total."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        """Print the summary (called by Lightning on global rank 0 at the start of ``fit``)."""
        print(summary_text(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes))
