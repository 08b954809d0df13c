"""The tuned prompt + frozen backbone of a fit run as a black box: label probabilities for a batch of texts.

The run's own ``config.yaml`` builds the :class:`~datamodules.PromptDataModule` and the prompt-tuning module
(the class its ``model.class_path`` names), and its ``checkpoints/best.ckpt`` gives the prompt — what
``validate --from_run`` evaluates. Texts go through the DataModule's :meth:`encode_texts` (the template,
verbalizer ids, truncation and ``<mask>`` of every split) and its collation, and the probabilities are the
module's ``predict_step``'s (the softmax over the scored words' logits), so the attack sees exactly what
validation and ``predict`` see.
"""

from __future__ import annotations

import importlib
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml

from datamodules.causal_text import pad_id_of
from datamodules.collator import Collator
from datamodules.prompt_datamodule import PromptDataModule
from datamodules.sources import prepare_split
from datamodules.task_spec import TaskError
from records.prompt_checkpoint import prompt_of, read_checkpoint
from records.settings import RunSettings
from records.summary import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, read_summary
from skill_neurons.attack import AttackError
from skill_neurons.attack.output import sha256_of

LINKED = ("backbone", "prompt_length", "layout")  # model options the CLI links to the data
# Lightning's --trainer.precision values the attack's forward reproduces, and the short spellings Lightning accepts
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def precision_name(value) -> str:
    """A ``trainer.precision`` value (or Lightning's short spelling) as one of ``PRECISIONS``."""
    name = PRECISION_ALIASES.get(str(value), str(value))
    if name not in PRECISIONS:
        raise AttackError(f"precision {value!r}: the attack reproduces {', '.join(PRECISIONS)} — give one of them "
                          "with --precision")
    return name


def precision_plugin(name: str, device: torch.device):
    """The Lightning precision plugin validate's Trainer uses for ``name``: the attack applies its
    ``convert_module`` to the model and its ``forward_context`` to every forward."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    if name.endswith("-mixed"):
        if name == "16-mixed" and device.type == "cpu":
            raise AttackError("precision 16-mixed runs on a GPU only (as in Lightning) — give --device cuda, or "
                              "--precision bf16-mixed (or 32-true) on the CPU")
        return MixedPrecision(name, device.type)
    if name in ("bf16-true", "16-true"):
        return HalfPrecision(name)
    return DoublePrecision() if name == "64-true" else Precision()


def _class(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class PromptModel:
    """One fit run's prompt on its frozen backbone (``run``: the run's folder), on ``device``, in ``precision`` (a
    ``trainer.precision`` value; default the run's config's, as ``validate --from_run`` evaluates it)."""

    def __init__(self, run: Path, device: str | None = None, batch_size: int = 64, precision: str | None = None):
        self.run = Path(run)
        self.config = yaml.safe_load((self.run / CONFIG_FILE).read_text()) or {}
        self.summary = read_summary(self.run)
        self.settings = RunSettings.from_summary(self.summary)
        self.checkpoint = self.run / CHECKPOINT_DIR / BEST_CHECKPOINT
        self.checkpoint_sha256 = sha256_of(self.checkpoint)
        self.batch_size = batch_size
        model_cfg = self.config.get("model") or {}
        init_args = dict(model_cfg.get("init_args") or {})
        data_args = {k: v for k, v in (self.config.get("data") or {}).items() if k not in LINKED}
        data_args.update({k: init_args[k] for k in LINKED if k in init_args})
        self.data = PromptDataModule(**data_args)
        self._model_class, self._init_args = model_cfg.get("class_path"), init_args
        self._model = None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        configured = (self.config.get("trainer") or {}).get("precision")
        self.precision = precision_name(precision or configured or "32-true")
        self.plugin = None  # built with the model (noise needs neither)

    # ------------------------------------------------------------------ the task's side (no model needed)
    @property
    def task(self):
        return self.data.task

    @property
    def limit(self) -> int:
        """The most tokens an encoded example can have: one this long may have been truncated."""
        return self.data.text_budget + (self.data.mask_index is not None)

    def rows(self, split: str, limit: int | None) -> list[dict]:
        """The labelled rows of ``split`` (text fields, label id, source row ``idx``), as validation reads them."""
        if split not in self.task.splits:
            raise AttackError(f"--split {split}: task {self.task.name!r} has the splits {list(self.task.splits)} "
                              "— give one of them (one with labels)")
        try:
            rows, _ = prepare_split(self.task, self.task.splits[split], split, self.data.hparams.cache_dir, limit)
        except TaskError as err:
            raise AttackError(f"--split {split}: {err} (an attack needs a split with labels, e.g. "
                              "validation)") from None
        return rows.to_list()

    def encode(self, texts: list[dict[str, str]]) -> list[dict]:
        """``input_ids`` and ``mask_index`` of each candidate text (``{field: text}``), by the run's own
        tokenisation."""
        batch = {f: [t[f] for t in texts] for f in self.task.text_fields}
        encoded = self.data.encode_texts(batch)
        return [{"input_ids": ids, "mask_index": at} for ids, at in zip(encoded["input_ids"], encoded["mask_index"])]

    # ------------------------------------------------------------------ the model
    @property
    def model(self):
        """The prompt-tuning module with the run's best prompt, built on first use (``noise`` never needs it)."""
        if self._model is None:
            plugin = precision_plugin(self.precision, self.device)  # refused before the backbone loads
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = _class(self._model_class)(**self._init_args)
            checkpoint = read_checkpoint(self.checkpoint)
            model.on_load_checkpoint(checkpoint)
            model.load_state_dict(checkpoint["state_dict"], strict=False)
            model.take_verbalizer(self.data)
            self.plugin = plugin
            self._model = plugin.convert_module(model).to(self.device).eval()
        return self._model

    def prompt_of(self, run: Path) -> torch.Tensor:
        """Another run's best prompt, for :meth:`using_prompt`."""
        return prompt_of(read_checkpoint(Path(run) / CHECKPOINT_DIR / BEST_CHECKPOINT), f"run {run}")

    @contextmanager
    def using_prompt(self, prompt: torch.Tensor):
        """The same backbone with another prompt of the same shape (a transfer run's) while inside."""
        weight = self.model.prompt.weight
        saved = weight.detach().clone()
        with torch.no_grad():
            weight.copy_(prompt.to(weight.device, weight.dtype))
        try:
            yield self
        finally:
            with torch.no_grad():
                weight.copy_(saved)

    @torch.inference_mode()
    def probabilities(self, encoded: list[dict], labels: list[int]) -> np.ndarray:
        """The softmax over the scored words of each encoded text (N, C), ``batch_size`` texts per forward."""
        out, model = [], self.model  # built first: its precision plugin comes with it
        for start in range(0, len(encoded), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(encoded)))
            examples = [{**encoded[i], "label": labels[i], "idx": i} for i in chunk]
            batch = {k: v.to(self.device) for k, v in self.collate(examples).items()}
            with self.plugin.forward_context():  # validate's autocast (bf16-mixed ...) or half/double dtype
                out.append(model.predict_step(batch, 0)["probabilities"].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.data.label_token_ids)))

    @property
    def collate(self) -> Collator:
        """Batches as the evaluation loaders build them (the run's padding side and pad id)."""
        return Collator(pad_id_of(self.data.tokenizer), self.data.hparams.padding_side)
