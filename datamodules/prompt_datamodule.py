"""One DataModule for every task: train / validation (/ test) loaders plus one loader per adversarial set."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.causal_text import causal_tokens, pad_id_of
from datamodules.collator import Collator
from datamodules.encoding import p1_tokens, verbalizer_token_ids  # noqa: F401 (imported from here too)
from datamodules.eval_sets import check_set_names, predict_sets_of, source_of, task_sets
from datamodules.sources import BIG_SPLIT_ROWS, prepare_split, progress_bars_if
from datamodules.task_spec import Source, TaskError, TaskSpec, as_source
from datamodules.p1_vocabulary import check_p1_ids
from datamodules.tasks import accuracy_label, get_task
from lightning_modules.backbones import check_lengths, family_of, load_tokenizer, max_input_length_of
from lightning_modules.rules import check_layout
from records.errors import OptionError
from records.eval_set import EvalSet


def check_sizes(**sizes: int | None) -> None:
    """Sizes and counts are whole numbers >= 1 (``None`` means "not set" where that is allowed):
    ``batch_size=0`` would otherwise fall back to ``eval_batch_size``, ``max_train_samples=0`` empty the split.
    The DataModule checks them when it is built (the CLI's too: a failure gives the claimed run folder back)."""
    for name, value in sizes.items():
        if value is None and name != "batch_size":
            continue
        least = 0 if name == "num_workers" else 1  # num_workers=0 loads in the main process
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            flag = f"--model.{name}" if name == "prompt_length" else f"--data.{name}"
            raise OptionError(f"{flag}={value!r}: give a whole number of at least {least}"
                              + ("" if name in ("batch_size", "prompt_length", "max_text_length", "num_workers") else
                                 " (or leave it unset for all)" if name.startswith("max_") else " (or leave it unset)"))


class PromptDataModule(LightningDataModule):
    """Tokenised examples of one task for prompt tuning, with the task's adversarial sets.

    Each example becomes ``input_ids``, ``mask_index``, ``label`` and ``idx`` (its row in the source file, so
    analyses can align examples). ``input_ids`` depend on ``layout``:

    - ``standard``: the template's text with the tokenizer's special tokens (pairs in the tokenizer's pair
      form); for masked LMs a ``<mask>`` right after the first special token, ``mask_index`` its position
      among the text tokens. The text is truncated (longest segment first) to ``max_text_length`` tokens, and
      further if ``prompt_length`` plus the text would exceed the backbone's positions.
    - ``standard`` causal LMs: the task's ``causal_lm_template()`` (text fields, then a cue such as
      ``Sentiment:``) as one string with the tokenizer's special tokens (Llama's ``<s>``), cut from the *left*
      to ``max_text_length`` so the cue, after which the label is read, always stays; ``mask_index`` -1.
    - ``paper``: P1's tokens for the task (``TaskSpec.paper``, from its formatters): segments encoded one by
      one, cut at the end to ``max_text_length`` plus P1's extra length; no ``<mask>`` in the text (the
      masked LM reads the label at prompt slot 0), ``mask_index`` -1. Label words use P1's id rule: the
      first sub-token of the word encoded without a leading space.

    The prompt and ``<mask>`` are never truncated.

    Hooks: ``prepare_data`` (downloads), ``setup`` (reads, checks and tokenises the splits a stage needs),
    ``train_dataloader``, ``val_dataloader`` (clean validation first, then each adversarial set),
    ``test_dataloader`` (the task's labelled test split, then each adversarial set), ``predict_dataloader``
    (the ``predict_sets``, whose rows keep their text: ``source_rows``).

    Args:
        task: a built-in task name (``sst2``, ``marker``, ...) or a task declaration (mapping).
        backbone: hub name, local path or preset; linked from ``model.backbone`` by the CLI.
        prompt_length: number of soft-prompt vectors; linked from ``model.prompt_length`` by the CLI.
        layout: ``paper`` (P1's inputs) or ``standard``; linked from ``model.layout`` by the CLI.
        max_text_length: most tokens of the text, special tokens included, not counting prompt or mask
            (``paper``: P1's ``max_len``, to which P1's formats add 0–3 tokens).
        padding_side: where a batch pads its shorter texts: ``right`` (default) or ``left`` (causal LMs only:
            their position ids follow the attention mask, so both give the same activations; masked LMs and T5
            number positions by index and need ``right``). A tokenizer without a pad token (GPT-2, Llama) pads
            with its end-of-sequence id; padded positions are masked either way.
        batch_size: training batch size (per device).
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        adversarial: names of the task's adversarial sets to evaluate (default: all it declares; [] none).
        predict_sets: the evaluation sets ``predict`` writes, by name: ``validation``, ``test`` (tasks with a
            labelled test split) and adversarial set names (default: ``validation`` and every adversarial set).
        files: local files replacing the task's splits, e.g. ``{train: glue/SST-2/train.tsv}``.
        adversarial_files: local files replacing adversarial sets' hub sources (AdvGLUE ``dev.json``).
        extra_adversarial: more adversarial sets, ``{name: {file: ..., columns: {...}}}``.
        max_train_samples: use only the first N training rows (deterministic).
        train_split: the split the optimiser trains on: ``train`` (default), or ``validation`` as P1's released
            RoBERTa SST-2 prompts were (README, "Reproducing the paper"). Thresholds still come from ``train``.
        max_eval_samples: use only the first N rows of each evaluation set.
        shuffle: shuffle the training set every epoch.
        num_workers: DataLoader workers.
        cache_dir: ``datasets`` cache directory (default: ``datasets``' own).
    """

    def __init__(
        self,
        task: str | dict = "marker",
        backbone: str = "tiny-roberta",
        prompt_length: int = 8,
        layout: Literal["paper", "standard"] = "standard",
        max_text_length: int = 128,
        padding_side: Literal["right", "left"] = "right",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        adversarial: list[str] | None = None,
        predict_sets: list[str] | None = None,
        files: dict[str, str] | None = None,
        adversarial_files: dict[str, str] | None = None,
        extra_adversarial: dict[str, Any] | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        train_split: Literal["train", "validation"] = "train",
        shuffle: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        check_sizes(batch_size=batch_size, eval_batch_size=eval_batch_size, max_train_samples=max_train_samples,
                    max_eval_samples=max_eval_samples, prompt_length=prompt_length, max_text_length=max_text_length,
                    num_workers=num_workers)
        self.save_hyperparameters(logger=False)
        self.task = self._resolve_task(get_task(task), files, adversarial, adversarial_files, extra_adversarial)
        self._predict_sets = predict_sets_of(self.task, predict_sets)
        self.datasets: dict[str, datasets.Dataset] = {}
        self.source_rows: dict[str, datasets.Dataset] = {}  # evaluation splits before tokenising (text, label, idx)
        self.split_records: dict[str, dict] = {}
        self._tokenizer = None
        self._family = None
        self._label_token_ids: list[int] | None = None

    @property
    def layout(self) -> str:
        return self.hparams.layout

    # ------------------------------------------------------------------ declarations
    @staticmethod
    def _resolve_task(task: TaskSpec, files, adversarial, adversarial_files, extra_adversarial) -> TaskSpec:
        """Apply the user's file overrides and adversarial selection to a task declaration (cheap, no I/O)."""
        splits = dict(task.splits)
        for role, path in (files or {}).items():
            if role not in ("train", "validation", "test"):
                raise TaskError(f"data.files has unknown split {role!r}; use train, validation or test")
            base = splits.get(role) or splits["train"]
            splits[role] = base.with_file(path)
        adv = dict(task.adversarial)
        for name, spec in (extra_adversarial or {}).items():
            if name in adv:
                raise TaskError(f"data.extra_adversarial names {name!r}, which task {task.name!r} already has as an "
                                "adversarial set — give the extra set another name (or replace the file of that set "
                                "with data.adversarial_files)")
            adv[name] = as_source(spec)
        check_set_names(adv)
        for name, path in (adversarial_files or {}).items():
            if name not in adv:
                raise TaskError(f"data.adversarial_files names {name!r}, but task {task.name!r} has "
                                f"adversarial sets {list(adv)}; add new ones with data.extra_adversarial")
            adv[name] = adv[name].with_file(path)
        if adversarial is not None:
            unknown = [a for a in adversarial if a not in adv]
            if unknown:
                raise TaskError(f"task {task.name!r} has no adversarial set {unknown}; it has {list(adv)} "
                                "(add your own with data.extra_adversarial)")
            adv = {name: adv[name] for name in adversarial}
        for role, source in splits.items():
            if role != "train" and source == splits["train"]:
                raise TaskError(f"task {task.name!r}: the {role} split is the training split; thresholds and "
                                "evaluation must use different data — give a separate file for it")
        return TaskSpec(**{**{f: getattr(task, f) for f in task.__dataclass_fields__},
                           "splits": splits, "adversarial": adv})

    @property
    def num_classes(self) -> int:
        return len(self.task.label_names)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer, config = load_tokenizer(self.hparams.backbone)
            self._family = family_of(config)
            self._max_positions = max_input_length_of(config, self._tokenizer)
            self._config = config
        return self._tokenizer

    @property
    def accuracy_label(self) -> int:
        """The label whose agreement with ``a > b`` a binary task stores as ``accuracy`` (P1's order under
        ``paper``; :func:`~datamodules.tasks.accuracy_label`)."""
        return accuracy_label(self.task.name, self.layout)

    @property
    def family(self) -> str:
        self.tokenizer
        return self._family

    @property
    def label_token_ids(self) -> list[int]:
        """Vocabulary ids the model scores: one per label (label-id order), then the layout's extra words
        (P1's MNLI). ``standard``: the verbalizer word after a space (masked LM) or its first sub-token (T5);
        ``paper``: P1's rule, the first sub-token of the word with no leading space."""
        if self._label_token_ids is None:
            self._label_token_ids = verbalizer_token_ids(self.tokenizer, self.family, self.task, self.layout)
            check_p1_ids(self.hparams.backbone, self.tokenizer, self.task, self.family, self.layout,
                         self._label_token_ids)
        return self._label_token_ids

    @property
    def label_target_ids(self) -> list[list[int]] | None:
        """``paper`` seq2seq only: per label, the first ``target_length`` tokens of its word, padded with -100
        (P1's label-token targets); ``None`` otherwise (the loss is over the scored words' logits)."""
        if self.layout != "paper" or self.family != "seq2seq":
            return None
        length = self.task.paper_format(self.family).target_length
        words, _ = self.task.scored_words(self.family, self.layout)
        targets = []
        for word in words:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"][:length]
            targets.append(ids + [-100] * (length - len(ids)))
        return targets

    @property
    def mask_index(self) -> int | None:
        """Where ``<mask>`` sits among the text tokens (``standard`` masked LMs: right after the first special
        token); ``None`` when the text holds no ``<mask>`` (seq2seq, or ``paper``: the mask is prompt slot 0)."""
        if self.family != "masked_lm" or self.layout == "paper":
            return None
        first = self.tokenizer("x")["input_ids"]
        return 1 if first and first[0] in set(self.tokenizer.all_special_ids) else 0

    @property
    def text_budget(self) -> int:
        """Tokens left for the text (special tokens included) once the prompt and ``<mask>`` are placed."""
        tok = self.tokenizer
        if self.layout == "paper":
            # P1's lengths; RoBERTa's text positions start after the padding index whatever the prompt (the
            # prompt slots get zero position embeddings), so only the text counts against the positions.
            budget = self.hparams.max_text_length + self.task.paper_format(self.family).extra_length
            if self._max_positions is not None and budget > self._max_positions:
                raise TaskError(f"max_text_length={self.hparams.max_text_length} gives {budget} text tokens under "
                                f"layout 'paper', more than the backbone's {self._max_positions} positions — use "
                                f"--data.max_text_length={self._max_positions - (budget - self.hparams.max_text_length)}")
            return budget
        budget = self.hparams.max_text_length
        if self._max_positions is not None:
            mask = 1 if self.family == "masked_lm" else 0
            budget = min(budget, self._max_positions - self.hparams.prompt_length - mask)
        specials = tok.num_special_tokens_to_add(pair=len(self.task.template) == 2 and self.family != "causal_lm")
        if budget - specials < 1:
            raise TaskError(
                f"prompt_length={self.hparams.prompt_length} leaves no room for text: the backbone takes "
                f"{self._max_positions} positions, of which {specials + (self.family == 'masked_lm')} are special "
                f"tokens — use --model.prompt_length={self._max_positions - specials - 2} or less"
            )
        return budget

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self):
        """Download hub splits, then read, check and tokenise what the stage needs (local rank 0).

        The ``skill-neurons`` CLI runs the same loading (and the callbacks' checks) before the stage starts,
        so a bad file or label fails before any run file or W&B run is written.
        """
        trainer = self.trainer
        self.load(trainer.state.fn.value if trainer is not None and trainer.state.fn is not None else "fit")

    def setup(self, stage: str | None = None):
        """Read, check and tokenise the splits that ``stage`` needs (fit: train + eval sets); cached."""
        self.load(stage)

    def load(self, stage: str | None) -> None:
        """Read, check and tokenise the splits ``stage`` needs (cached: a split is loaded once)."""
        if self.hparams.padding_side not in ("right", "left"):
            raise TaskError(f"data.padding_side={self.hparams.padding_side!r}: use right or left")
        if self.hparams.padding_side == "left" and self.family != "causal_lm":
            raise TaskError(f"data.padding_side=left is for causal LMs only: {self.hparams.backbone!r} is a "
                            f"{self.family} model, whose positions are numbered by index — use data.padding_side=right")
        check_layout(self.family, self.layout, self.hparams.backbone, self.hparams.prompt_length)
        self.label_token_ids  # (loads the tokenizer)
        check_lengths(self._config, self.tokenizer, self.hparams.backbone, self.layout,
                      prompt_length=self.hparams.prompt_length, max_text_length=self.hparams.max_text_length)
        self._load_sources(self._sources(stage))

    def require(self, *roles: str) -> None:
        """Load splits beyond the stage's own, by role (e.g. ``"train"`` for the skill-neuron thresholds);
        roles the task does not have are left out (the caller says what that means)."""
        self._load_sources({role: self.task.splits[role] for role in roles if role in self.task.splits})

    def _load_sources(self, sources: dict[str, Source]) -> None:
        for role, source in sources.items():
            if role in self.datasets:
                continue
            limit = self.hparams.max_train_samples if role == "train" else self.hparams.max_eval_samples
            rows, record = prepare_split(self.task, source, role, self.hparams.cache_dir, limit)
            self.datasets[role] = self._encode(rows, record)
            if role != "train":
                self.source_rows[role] = rows
            self.split_records[role] = record

    def _sources(self, stage: str | None) -> dict[str, Source]:
        task = self.task
        wanted: dict[str, Source] = {}
        if stage == "predict":
            return {s.split: source_of(task, s) for s in self._predict_sets}
        if stage in (None, "fit", "analysis"):
            wanted["train"] = task.splits["train"]
        if stage == "test":
            if "test" not in task.splits:
                raise TaskError(f"task {task.name!r} has no labelled test split; use `validate`, or give "
                                "one with --data.files='{test: path/to/test.tsv}'")
        wanted.update({s.split: source_of(task, s) for s in task_sets(task, stage)})
        return wanted

    def train_dataloader(self):
        ds = self.datasets[self.hparams.train_split]
        trainer = self.trainer
        # P1 drops the last partial batch (its released checkpoints record floor(rows / batch) steps per epoch,
        # e.g. 458 for MRPC's 3,668 rows at batch 8); `paper` does too, unless that would leave no batch at all.
        drop_last = self.layout == "paper" and len(ds) >= self.hparams.batch_size
        if not self.hparams.shuffle and trainer is not None and trainer.world_size > 1:
            # Lightning always shuffles the training set under DDP; honour shuffle=False with our own sampler.
            sampler = DistributedSampler(ds, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
            return self._loader(ds, self.hparams.batch_size, sampler=sampler, drop_last=drop_last)
        return self._loader(ds, self.hparams.batch_size, shuffle=self.hparams.shuffle, drop_last=drop_last)

    def val_dataloader(self):
        return [self._loader(self.datasets[s.split]) for s in self.eval_sets("validate")]

    def test_dataloader(self):
        return [self._loader(self.datasets[s.split]) for s in self.eval_sets("test")]

    def predict_dataloader(self):
        return [self._loader(self.datasets[s.split]) for s in self.eval_sets("predict")]

    def eval_sets(self, stage: str) -> list[EvalSet]:
        """The sets ``stage`` evaluates, in loader order: ``test`` (under ``test``) or ``validation``, then each
        adversarial set (``predict``: the ``predict_sets``); ``datasets[s.split]`` holds a loaded set's rows."""
        return list(self._predict_sets) if stage == "predict" else task_sets(self.task, stage)

    def lengths(self, role: str) -> list[int]:
        """Token count of every example of a loaded split (read from Arrow, without decoding rows)."""
        import pyarrow.compute as pc

        column = self.datasets[role].with_format("arrow")[:]["input_ids"]
        return pc.list_value_length(column).to_pylist()

    def analysis_loader(self, role: str, indices: list[int], batch_size: int | None = None) -> DataLoader:
        """Batches of exactly the rows ``indices`` of a loaded split, in that order (no padding rows, no
        shuffling) — the skill-neuron passes shard and order the rows themselves."""
        return self._loader(self.datasets[role], batch_size, sampler=indices)

    def _loader(self, ds: datasets.Dataset, batch_size: int | None = None, shuffle: bool = False,
                sampler=None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            ds, batch_size=batch_size or self.hparams.eval_batch_size or self.hparams.batch_size, shuffle=shuffle,
            sampler=sampler, drop_last=drop_last,
            collate_fn=Collator(pad_id_of(self.tokenizer), self.hparams.padding_side), num_workers=self.hparams.num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.hparams.num_workers > 0,
        )

    # ------------------------------------------------------------------ tokenisation
    def _encode(self, rows: datasets.Dataset, record: dict) -> datasets.Dataset:
        tok, task, family, budget = self.tokenizer, self.task, self.family, self.text_budget
        paper = task.paper_format(family) if self.layout == "paper" else None
        causal = task.causal_lm_template() if family == "causal_lm" and paper is None else None
        originals = [f for f in task.text_fields if f"original_{f}" in rows.column_names]
        key = json.dumps([record["sha256"], tok.name_or_path, len(tok), family, budget, task.template,
                          type(tok).__name__, _vocab_digest(tok)] + ([causal] if causal else [])
                         + ([self.layout, dataclasses.asdict(paper)] if paper else [])
                         + ([{"originals": originals}] if originals else []))
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]

        def encode(batch):
            out = self.encode_texts(batch)
            if originals:  # the clean twin: each attacked field's original text, the others as they are
                clean = {f: [o or t for t, o in zip(batch[f], batch[f"original_{f}"])] if f in originals else batch[f]
                         for f in task.text_fields}
                twin = self.encode_texts(clean)
                out.update(clean_input_ids=twin["input_ids"], clean_mask_index=twin["mask_index"])
            return out

        cache = _cache_file(self.hparams.cache_dir, fingerprint)
        with progress_bars_if(len(rows) >= BIG_SPLIT_ROWS):
            return rows.map(encode, batched=True, new_fingerprint=fingerprint,
                            remove_columns=[*task.text_fields, *(f"original_{f}" for f in originals)],
                            cache_file_name=cache, desc="tokenising")

    def encode_texts(self, batch: dict[str, list[str]]) -> dict[str, list]:
        """``input_ids`` and ``mask_index`` of a batch of texts, ``{field: [text, ...]}`` over the task's text
        fields — how every split is tokenised (see the class docstring), also for texts made on the fly (the
        attack's perturbed texts, :mod:`skill_neurons.attack`)."""
        tok, task, family, budget = self.tokenizer, self.task, self.family, self.text_budget
        mask_id = tok.mask_token_id if family == "masked_lm" else None
        specials = set(tok.all_special_ids)
        paper = task.paper_format(family) if self.layout == "paper" else None
        causal = task.causal_lm_template() if family == "causal_lm" and paper is None else None
        if paper is not None:
            rows = [dict(zip(task.text_fields, values)) for values in zip(*(batch[f] for f in task.text_fields))]
            return {"input_ids": [p1_tokens(tok, paper, row, budget) for row in rows],
                    "mask_index": [-1] * len(rows)}
        if causal is not None:
            texts = [causal.format(**dict(zip(task.text_fields, values)))
                     for values in zip(*(batch[f] for f in task.text_fields))]
            return {"input_ids": causal_tokens(tok, texts, budget), "mask_index": [-1] * len(texts)}
        segments = [[seg.format(**dict(zip(task.text_fields, values))) for seg in task.template]
                    for values in zip(*(batch[f] for f in task.text_fields))]
        first = [s[0] for s in segments]
        second = [s[1] for s in segments] if len(task.template) == 2 else None
        enc = tok(first, second, truncation="longest_first" if second else True, max_length=budget)
        ids, mask_index = [], []
        for seq in enc["input_ids"]:
            if mask_id is not None:
                at = 1 if seq and seq[0] in specials else 0  # right after <s> / [CLS]
                seq = seq[:at] + [mask_id] + seq[at:]
                mask_index.append(at)
            else:
                mask_index.append(-1)
            ids.append(seq)
        return {"input_ids": ids, "mask_index": mask_index}

    def scored_classes(self) -> list[str]:
        """The classes the model scores, in logit order: the label names, then ``extra:<word>`` for each word the
        layout scores that is no label (P1's MNLI)."""
        return [*self.task.label_names, *(f"extra:{w}" for w in self.task.scored_words(self.family, self.layout)[1])]

    def state_for_summary(self) -> dict:
        """What the run's summary records about the data: task, splits (with content hashes), settings."""
        words, extra = self.task.scored_words(self.family, self.layout)
        return {
            "task": self.task.name, "task_type": self.task.type, "label_names": list(self.task.label_names),
            "layout": self.layout, "verbalizer": list(words), "extra_words": list(extra),
            "label_token_ids": self.label_token_ids,
            "accuracy_label": self.task.label_names[self.accuracy_label] if self.num_classes == 2 else None,
            "train_split": self.hparams.train_split, "eval_sets": [s.name for s in self.eval_sets("validate")],
            "splits": self.split_records,
        }


def _vocab_digest(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


def _cache_file(cache_dir: str | None, fingerprint: str) -> str:
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "skill_neurons_tokenised"
    root.mkdir(parents=True, exist_ok=True)
    return str(root / f"{fingerprint}.arrow")
