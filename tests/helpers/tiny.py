"""Tiny models on the shipped marker task, built in this process, and a Trainer that validates them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning import Trainer, seed_everything

from callbacks.skill_neurons import SkillNeuronCallback
from datamodules import PromptDataModule
from lightning_modules import MaskedLMPromptTuning, Seq2SeqPromptTuning
from tests.helpers import ROOT

MARKER = ROOT / "datamodules" / "data" / "marker"
P = 4


def marker_task(seq2seq_words=("contradiction", "entailment")) -> dict:
    """The shipped marker files as a user task; for T5 the label words are several sub-tokens long."""
    columns = {"sentence": "sentence", "label": "label"}
    return {
        "name": "marker_words", "text_fields": ["sentence"], "label_names": ["absent", "present"],
        "verbalizers": {"masked_lm": ["no", "yes"], "seq2seq": list(seq2seq_words)},
        "splits": {"train": {"file": str(MARKER / "train.jsonl"), "columns": columns},
                   "validation": {"file": str(MARKER / "validation.jsonl"), "columns": columns}},
        "adversarial": {"typos": {"file": str(MARKER / "adversarial.jsonl"), "columns": columns}},
        # P1's single-sentence formats (layout: paper)
        "paper": {"masked_lm": {"segments": ["{cls}", "{sentence}", "{sep}"], "extra_length": 2},
                  "seq2seq": {"segments": ["{sentence}", "{eos}"]}},
    }


def make(family: str, layout: str = "standard", **dm_kwargs):
    seed_everything(0)
    cls, backbone = {"masked_lm": (MaskedLMPromptTuning, "tiny-roberta"),
                     "seq2seq": (Seq2SeqPromptTuning, "tiny-t5")}[family]
    model = cls(backbone=backbone, prompt_length=P, layout=layout).eval()
    kwargs = dict(task=marker_task(), backbone=backbone, prompt_length=P, max_train_samples=48,
                  max_eval_samples=37, eval_batch_size=16, layout=layout)
    dm = PromptDataModule(**{**kwargs, **dm_kwargs})
    dm.prepare_data()
    dm.setup("fit")
    model.label_token_ids = torch.tensor(dm.label_token_ids)
    model.mask_index = dm.mask_index
    return model, dm


def validate(model, dm, root: Path, callback: SkillNeuronCallback, **trainer_kwargs) -> Trainer:
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(root),
                    callbacks=[callback])
    trainer = Trainer(**{**settings, **trainer_kwargs})
    trainer.validate(model, datamodule=dm)
    return trainer


def brute_force_statistics(train_acts: np.ndarray, eval_acts: np.ndarray, labels: np.ndarray) -> dict:
    threshold = train_acts.astype(np.float64).mean(axis=0).astype(np.float32)  # (L, P, N)
    n = len(labels)
    accuracy = np.zeros(threshold.shape)
    for x in range(n):  # plain loop over examples
        accuracy += (eval_acts[x] > threshold) == bool(labels[x])
    accuracy /= n
    predictivity = np.maximum(accuracy, 1 - accuracy)
    return {"threshold": threshold, "accuracy": accuracy, "predictivity": predictivity,
            "score": predictivity.max(axis=1)}
