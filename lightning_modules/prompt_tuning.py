"""The shared prompt-tuning LightningModule; the backbone families subclass it (masked_lm.py, seq2seq.py,
causal_lm.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.backbones import BackboneError, load_backbone
from lightning_modules.contracts import ModelData
from lightning_modules.rules import LayoutError, check_layout, check_positions, position_choices
from lightning_modules.soft_prompt import OptionError, SoftPrompt, check_prompt_options
from records.eval_set import EvalSet
from records.prompt_checkpoint import FAMILY_CLASSES, check_prompt_shape, keep_prompt_only, metadata

# Intended, so not worth a warning: checkpoints leave the backbone out, and the backbone runs in eval mode.


def check_model_options(prompt_length: int = 8, prompt_init: str = "vocab", prompt_init_text: str | None = None,
                        learning_rate: float = 1e-3, weight_decay: float = 0.0, adam_eps: float = 1e-6,
                        **_: object) -> None:
    """Refuse, before any backbone is loaded, options that cannot train: a learning rate that is not a positive
    number (0 trains nothing), a negative or non-finite weight decay or ``adam_eps``, a prompt that cannot be
    built (:func:`check_prompt_options`). The module calls it first, before it loads the backbone."""
    rules = (("learning_rate", learning_rate, "a positive number (P1: 1e-3 RoBERTa, 5e-3 T5)", lambda v: v > 0),
             ("weight_decay", weight_decay, "a number of at least 0 (P1: 0)", lambda v: v >= 0),
             ("adam_eps", adam_eps, "a positive number (P1: 1e-6)", lambda v: v > 0))
    for name, value, wanted, ok in rules:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise OptionError(f"--model.{name}={value!r}: give {wanted}")
    check_prompt_options(prompt_length, prompt_init, prompt_init_text)


@dataclass(frozen=True)
class AnalysedPositions:
    """Which sequence positions' FFN units the skill-neuron analysis reads, and how to read them.

    ``select(units, batch)`` takes one layer's units (B, S, N) of a forward of ``batch`` (S = prompt + text)
    and returns the analysed ones (B, count, N). ``absolute`` lists the positions when they are the same for
    every example (prompt slots, a fixed ``<mask>``), and is ``None`` when they depend on the example (a causal
    LM's last text position moves with the text's length and the padding); ``description`` then says what is read.
    """

    choice: str
    count: int
    absolute: list[int] | None
    select: Callable[[torch.Tensor, dict], torch.Tensor]
    description: str = ""


class PromptTuningModule(LightningModule):
    """Trains a soft prompt in front of a frozen backbone; the label is read through a verbalizer.

    The input is ``[prompt (P vectors)] [text tokens]``. ``layout`` says how the rest follows:

    - ``paper`` (P1, Robust-Neurons ``src/models/modelling_roberta.py`` / ``PromptRoberta.py`` /
      ``PromptT5.py``): masked LMs put the ``<mask>`` embedding in prompt slot 0 (``P − 1`` vectors are
      used), give the prompt slots zero position embeddings, number the text's positions as if there were
      no prompt, and read the label at slot 0; the text is P1's per-task format. Seq2seq models train with
      cross-entropy on the label word's first ``target_length`` tokens (P1's ``target_len``) and predict
      from the first decoder step restricted to the scored words.
    - ``standard``: masked LMs read the label at a ``<mask>`` after ``<s>`` in the text, prompt positions
      keep the backbone's position embeddings (as P2), so prompt and text together must fit
      ``max_position_embeddings``; every family trains with cross-entropy over the scored words' logits.

    Only ``prompt.weight`` is trained: the backbone has ``requires_grad=False``, is not in the optimizer and
    runs in eval mode (dropout off) unless ``backbone_dropout=True``; its weights are bit-identical after
    ``fit``. Checkpoints hold the prompt and the optimizer state only (a few KB to a few MB); the backbone
    is reloaded from ``backbone`` when a checkpoint is loaded.

    Hooks: ``setup`` (reads the task's verbalizer ids and evaluation sets from the DataModule, builds the
    metrics), ``training_step`` / ``validation_step`` / ``test_step`` (all through ``model_step``),
    ``predict_step`` (per-example probabilities from the same logits),
    ``on_train_start`` / ``on_validation_epoch_end`` (track the best clean accuracy), ``configure_optimizers``
    (AdamW on the prompt), ``on_save_checkpoint`` / ``on_load_checkpoint`` (prompt-only checkpoints),
    ``train`` (keeps the backbone in eval mode).

    Args:
        backbone: hub name (``roberta-base``), local directory, or preset (``tiny-roberta``, ...).
        prompt_length: number of soft-prompt vectors ``P`` (P1: 100).
        layout: ``paper`` (P1's inputs, readout and loss) or ``standard`` (see above).
        prompt_init: ``vocab`` (sampled token embeddings), ``random``, ``normal`` (P1's RoBERTa prompt:
            N(0, the backbone's ``initializer_range``)) or ``text``.
        prompt_init_text: the text for ``prompt_init=text``.
        learning_rate: AdamW learning rate, constant (P1: 1e-3 RoBERTa, 5e-3 T5).
        weight_decay: AdamW weight decay (P1: 0).
        adam_eps: AdamW epsilon (P1: 1e-6).
        backbone_dropout: run the backbone's dropout while training (default off: deterministic backbone).
    """

    family: ClassVar[str] = ""

    def __init__(
        self,
        backbone: str = "tiny-roberta",
        prompt_length: int = 8,
        layout: Literal["paper", "standard"] = "standard",
        prompt_init: Literal["vocab", "random", "normal", "text"] = "vocab",
        prompt_init_text: str | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        adam_eps: float = 1e-6,
        backbone_dropout: bool = False,
    ):
        super().__init__()
        check_model_options(prompt_length, prompt_init, prompt_init_text, learning_rate, weight_decay, adam_eps)
        check_layout(self.family, layout, backbone, prompt_length)
        self.save_hyperparameters(logger=False)
        loaded = load_backbone(backbone)
        if loaded.family != self.family:
            raise BackboneError(
                f"backbone {backbone!r} is a {loaded.family} model, but {type(self).__name__} tunes "
                f"{self.family} models — use --model={FAMILY_CLASSES[loaded.family]} (class_path in a config)"
            )
        self.backbone = loaded.model.requires_grad_(False)
        self.tokenizer = loaded.tokenizer
        self.check_layout(layout)
        embeddings = self.backbone.get_input_embeddings().weight  # (V, H)
        self.prompt = SoftPrompt(prompt_length, embeddings.shape[1])
        text_ids = self.tokenizer(prompt_init_text, add_special_tokens=False)["input_ids"] if prompt_init_text else None
        self.prompt.initialise(prompt_init, embeddings.detach(), text_ids, exclude_ids=self.tokenizer.all_special_ids,
                               std=getattr(self.backbone.config, "initializer_range", None))
        # Checkpoints leave the backbone out, so loading must accept its keys as missing.
        self.strict_loading = False
        self.register_buffer("label_token_ids", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("label_target_ids", torch.zeros(0, dtype=torch.long), persistent=False)
        self.eval_sets: list[EvalSet] = []
        self.mask_index: int | None = None

    def check_layout(self, layout: str) -> None:
        """Refuse a layout this loaded backbone cannot run (the family's own rules are
        :func:`lightning_modules.rules.check_layout`, checked before the backbone is loaded)."""

    # ------------------------------------------------------------------ set-up from the data
    def setup(self, stage: str) -> None:
        """Take the verbalizer ids and the stage's evaluation sets from the DataModule; build one metric per set."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, ModelData):
            raise TypeError(f"{type(self).__name__} needs a PromptDataModule (it provides the task's verbalizer)")
        if datamodule.family != self.family:
            raise BackboneError(f"data.backbone is a {datamodule.family} model, model.backbone a {self.family} one "
                                "— use the same backbone for both (the CLI links them)")
        if datamodule.layout != self.hparams.layout:
            raise LayoutError(f"data.layout is {datamodule.layout!r} but model.layout {self.hparams.layout!r} — "
                              "use the same layout for both (the CLI links them)")
        self.take_verbalizer(datamodule)
        self.eval_sets = list(datamodule.eval_sets(stage))
        # Metrics count every scored word as a class: a prediction of an extra word (P1's MNLI) is simply wrong.
        classes = len(datamodule.label_token_ids)
        self.train_acc = MulticlassAccuracy(num_classes=classes, average="micro")
        self.train_loss = MeanMetric()  # the epoch's mean loss, over every rank's examples
        self.eval_acc = nn.ModuleList(MulticlassAccuracy(num_classes=classes, average="micro") for _ in self.eval_sets)
        self.val_acc_best = MaxMetric()

    def take_verbalizer(self, datamodule: ModelData) -> None:
        """The scored words' ids (and ``paper`` seq2seq targets) and the ``<mask>`` position from the data: all
        a forward needs besides the prompt (also for a model used outside a Trainer, e.g. by the attack)."""
        self.label_token_ids = torch.tensor(datamodule.label_token_ids, device=self.device)
        targets = datamodule.label_target_ids
        self.label_target_ids = torch.tensor(targets if targets is not None else [], dtype=torch.long, device=self.device)
        self.mask_index = datamodule.mask_index

    def metric_prefix(self, stage: str, dataloader_idx: int) -> str:
        """``val``/``test`` for the clean set, ``adv/<set>`` (``test/adv/<set>``) for adversarial ones."""
        return self.eval_sets[dataloader_idx].metric_prefix(stage)

    # ------------------------------------------------------------------ forward
    def prompt_vectors(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """The prompt as the backbone sees it, (B, P, H) (``paper`` masked LMs overwrite slot 0 with ``<mask>``)."""
        return self.prompt(batch_size).to(dtype)

    def embed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The backbone's inputs: ``inputs_embeds`` (B, P+T, H) with the prompt in front of the text's word
        embeddings and ``attention_mask`` (B, P+T); families may add more (``position_ids``)."""
        text = self.backbone.get_input_embeddings()(batch["input_ids"])  # (B, T, H)
        prompt = self.prompt_vectors(text.shape[0], text.dtype)  # (B, P, H)
        ones = batch["attention_mask"].new_ones(text.shape[0], self.prompt.length)  # (B, P)
        return {"inputs_embeds": torch.cat([prompt, text], dim=1),
                "attention_mask": torch.cat([ones, batch["attention_mask"]], dim=1)}

    def label_logits(self, inputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the scored words (B, C) — implemented by each backbone family."""
        raise NotImplementedError

    def encode(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run the backbone's encoder only (no head, no decoder) — implemented by each backbone family."""
        raise NotImplementedError

    def run_to_neurons(self, batch: dict[str, torch.Tensor], part: str = "encoder") -> None:
        """Forward ``batch`` only as far as the FFN units of ``part`` need (hooks in ``ffn.py`` read them):
        the encoder alone for ``encoder``, the whole model (first decoder step) for ``decoder``."""
        inputs = self.embed(batch)
        if part == "decoder":
            self.label_logits(inputs, batch)
        else:
            self.encode(inputs)

    def position_choices(self, part: str = "encoder") -> tuple[str, ...]:
        """The analysed-position choices of this model's ``part`` (:func:`lightning_modules.rules.position_choices`)."""
        return position_choices(self.family, part)

    def neuron_positions(self, part: str = "encoder", choice: str = "prompt") -> list[int]:
        """Absolute sequence positions whose FFN units are analysed.

        Encoder: ``prompt`` = the P prompt slots 0..P−1 (the prompt comes first; under ``paper`` a masked LM's
        slot 0 is its ``<mask>``, as P1 and P2 analyse it); masked LMs add ``mask`` (the ``<mask>`` position
        alone) and ``prompt+mask``. Decoder: its single first step (the decoder never sees the prompt).
        """
        check_positions(self.family, part, choice)
        return [0] if part == "decoder" else list(range(self.prompt.length))

    def analysed_positions(self, part: str = "encoder", choice: str = "prompt") -> AnalysedPositions:
        """The positions the skill-neuron analysis reads (see :class:`AnalysedPositions`): here the fixed
        ``neuron_positions``; families whose positions depend on the example override it (causal LMs)."""
        positions = self.neuron_positions(part, choice)
        # a view, no copy, for the common case of positions 0..P'-1
        index = slice(0, len(positions)) if positions == list(range(len(positions))) else positions
        return AnalysedPositions(choice, len(positions), positions, lambda units, batch: units[:, index])

    def text_mean_units(self, units: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, N) each example's mean of one layer's units (B, P+T, N) over its text tokens: the positions after
        the prompt where the text's attention mask is 1 (special tokens included, padding on either side left out)."""
        text = batch["attention_mask"]  # (B, T) 1 at the text's real tokens
        keep = text.bool().unsqueeze(-1)  # (B, T, 1)
        text_units = units[:, self.prompt.length:]  # (B, T, N), summed in float32 at least (bf16/fp16 upcast)
        total = torch.where(keep, text_units.to(torch.promote_types(text_units.dtype, torch.float32)), 0.0).sum(dim=1)
        return (total / text.sum(dim=1, keepdim=True)).unsqueeze(1)  # (B, 1, N)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the scored words, (B, C)."""
        return self.label_logits(self.embed(batch), batch)

    def loss_and_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss and the scored words' logits (B, C) the prediction is read from (families whose
        loss is not the cross-entropy over those logits override it: ``paper`` seq2seq)."""
        logits = self(batch).float()  # (B, C)
        return F.cross_entropy(logits, batch["labels"]), logits

    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared by all steps: the loss, predictions (argmax of the scored words' logits) and labels."""
        loss, logits = self.loss_and_logits(batch)
        return loss, logits.argmax(dim=-1), batch["labels"]

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        """One optimisation step on the prompt; logs train/loss_step (this rank's batch), train/loss_epoch (the
        epoch's mean over all ranks, a metric object: torchmetrics synchronises it) and train/acc."""
        loss, preds, labels = self.model_step(batch)
        self.train_acc(preds, labels)
        self.train_loss(loss.detach(), weight=len(labels))
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(labels))
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(labels))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def _eval_step(self, stage: str, batch, dataloader_idx: int) -> None:
        loss, preds, labels = self.model_step(batch)
        prefix = self.metric_prefix(stage, dataloader_idx)
        metric = self.eval_acc[dataloader_idx]
        metric(preds, labels)
        self.log(f"{prefix}/loss", loss, on_epoch=True, add_dataloader_idx=False, batch_size=len(labels),
                 sync_dist=True)
        self.log(f"{prefix}/acc", metric, on_epoch=True, add_dataloader_idx=False, batch_size=len(labels),
                 prog_bar=dataloader_idx == 0)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Accuracy and loss on the clean validation set (loader 0) and each adversarial set."""
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Accuracy and loss on the labelled test split (loader 0) and each adversarial set."""
        self._eval_step("test", batch, dataloader_idx)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Per example of one evaluation set (loader ``dataloader_idx`` of ``predict_sets``): its source row
        ``idx``, gold ``label``, ``prediction`` (as ``model_step`` predicts it) and ``probabilities`` (B, C), the
        softmax over the scored words' logits."""
        _, logits = self.loss_and_logits(batch)  # (B, C)
        return {"idx": batch["idx"], "label": batch["labels"], "prediction": logits.argmax(dim=-1),
                "probabilities": logits.softmax(dim=-1)}

    def on_train_start(self) -> None:
        """Forget the sanity check's accuracy so the best value reflects training epochs only."""
        self.val_acc_best.reset()

    def on_validation_epoch_end(self) -> None:
        """Track the best clean validation accuracy of a fit so far (``val/acc_best``; not logged outside fit,
        where there is no "so far")."""
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        self.val_acc_best(self.eval_acc[0].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def configure_optimizers(self):
        """AdamW over the prompt only (as P1's released checkpoints record: eps 1e-6, weight decay 0, constant learning rate)."""
        return torch.optim.AdamW(self.prompt.parameters(), lr=self.hparams.learning_rate,
                                 eps=self.hparams.adam_eps, weight_decay=self.hparams.weight_decay)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop training at the first non-finite loss (before it poisons the prompt), naming the step and the
        learning rate: a NaN prompt would train on, evaluate to the majority class and be saved as best."""
        if not torch.isfinite(loss).all():
            rate = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else None
            raise OptionError(f"the training loss became {loss.item()} at step {self.trainer.global_step} (epoch "
                              f"{self.trainer.current_epoch}, learning rate {rate:g}) — the prompt diverged; train "
                              f"again with a smaller --model.learning_rate (e.g. {rate / 10:g})")

    def train(self, mode: bool = True):
        """Switch train/eval mode; the frozen backbone stays in eval mode unless ``backbone_dropout``."""
        super().train(mode)
        self.backbone.train(mode and self.hparams.backbone_dropout)
        return self

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the prompt in the checkpoint's state_dict (the backbone is reloaded by name)."""
        keep_prompt_only(checkpoint, metadata(self.hparams.backbone, self.family, self.hparams.layout,
                                              tuple(self.prompt.weight.shape)))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse checkpoints without a prompt or with a prompt of another shape, with a clear message."""
        check_prompt_shape(checkpoint, tuple(self.prompt.weight.shape))
