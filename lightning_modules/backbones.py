"""Backbones: load a masked LM, an encoder–decoder or a causal (decoder-only) LM by hub name, local path or
offline preset.

Everything goes through ``from_pretrained``. Offline presets need no download:

- ``tiny-roberta`` / ``tiny-t5`` / ``tiny-gpt2`` / ``tiny-llama``: 2 layers, width 64, FFN 256, with a
  tokenizer trained by ``tokenizers`` on text shipped in this package (``tiny-gpt2``: byte-level BPE with
  ``<|endoftext|>`` as GPT-2's; ``tiny-llama``: SentencePiece-style BPE with byte fallback, ``<s>`` added in
  front, grouped-query attention with 2 key/value heads; like their full-size models, neither has a pad token).
  ``tiny-gpt2`` uses ``initializer_range`` 0.2 and ``tiny-llama`` 0.1, for the reason ``tiny-roberta`` uses 0.3
  (measured on the marker task, lr 0.01, 8 prompt vectors, 600 steps, these presets' seeded weights: tiny-gpt2
  val/acc 0.905 with 0.1, 0.9975 with 0.2, and 0.455 after 300 steps with HF's 0.02; tiny-llama 1.0 with 0.1). They are built once (seeded, so every machine builds the same
  weights), saved with ``save_pretrained`` under ``$SKILL_NEURONS_HOME/backbones`` (default
  ``~/.cache/skill-neurons``) and loaded back through ``from_pretrained`` like any local checkpoint.
  ``tiny-roberta`` uses ``initializer_range`` 0.3: with HF's default 0.02 a random tiny RoBERTa ignores
  its input embeddings so much that no prompt can steer it (measured: chance accuracy on the marker task).
- ``random-roberta-base`` / ``random-t5-base``: the exact shapes of ``roberta-base`` and ``t5-base``
  (12 layers, width 768, FFN 3072, their vocabulary sizes) with random weights, for performance work.
  They are built in memory from the config (no weights on disk) and reuse the tiny tokenizers.
"""

from __future__ import annotations

import json
import os
import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    logging as hf_logging, AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM,
    AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer,
    PretrainedConfig, PreTrainedModel, RobertaConfig, RobertaForMaskedLM, RobertaTokenizer, T5Config,
    T5ForConditionalGeneration, T5Tokenizer,
)

from records.errors import UserError

CORPUS = Path(__file__).parent / "assets" / "tokenizer_corpus.txt"
PRESET_VERSION = "v1"
TINY_PRESETS = ("tiny-roberta", "tiny-t5", "tiny-gpt2", "tiny-llama")
RANDOM_PRESETS = ("random-roberta-base", "random-t5-base")
PRESETS = TINY_PRESETS + RANDOM_PRESETS
# Masked LMs whose position ids start after the padding index (HF's create_position_ids_from_*).
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text", "longformer"}


DEFAULT_LENGTH_LIMIT = 2048  # prompt or text positions of a backbone that states no limit


class BackboneError(UserError, ValueError):
    """A backbone that cannot be used; the message names the fix."""


@dataclass
class Backbone:
    """A loaded backbone: the model, its tokenizer, and which prompt-tuning family it belongs to."""

    name: str
    model: PreTrainedModel
    tokenizer: object
    family: str  # "masked_lm", "seq2seq" or "causal_lm"

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config


def home() -> Path:
    return Path(os.environ.get("SKILL_NEURONS_HOME", Path.home() / ".cache" / "skill-neurons"))


def family_of(config: PretrainedConfig) -> str:
    """``seq2seq`` for encoder–decoders (T5, Flan-T5 ...), ``masked_lm`` for anything with an MLM head,
    ``causal_lm`` for the remaining ``AutoModelForCausalLM`` types (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX, OPT ...).
    BERT-like types that have both heads stay masked LMs."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if type(config) in AutoModelForMaskedLM._model_mapping:
        return "masked_lm"
    if type(config) in AutoModelForCausalLM._model_mapping:
        return "causal_lm"
    raise BackboneError(
        f"backbone type {config.model_type!r} is neither a masked LM, an encoder–decoder nor a causal LM; "
        "use e.g. roberta-base, t5-base, gpt2 or a Llama/Qwen2/Mistral checkpoint"
    )


def max_input_length_of(config: PretrainedConfig, tokenizer=None) -> int | None:
    """How many positions (prompt included) the backbone accepts; ``None`` for relative positions (T5)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None or getattr(config, "is_encoder_decoder", False):
        return None
    if config.model_type in PADDING_OFFSET_POSITIONS:
        limit -= config.pad_token_id + 1  # RoBERTa: 514 embeddings, positions start at 2 -> 512
    return limit


def length_limit_of(config: PretrainedConfig, tokenizer=None) -> int:
    """The most positions a prompt or a text may take on this backbone: its absolute positions
    (:func:`max_input_length_of`), else the length its tokenizer was made for (T5: 512), else
    :data:`DEFAULT_LENGTH_LIMIT`."""
    limit = max_input_length_of(config, tokenizer)
    if limit is None:
        made_for = getattr(tokenizer, "model_max_length", None)
        limit = made_for if isinstance(made_for, int) and 0 < made_for < 1_000_000 else DEFAULT_LENGTH_LIMIT
    return limit


def check_lengths(config: PretrainedConfig, tokenizer, backbone: str, layout: str, **lengths: int) -> None:
    """Refuse a prompt or text (``prompt_length=``, ``max_text_length=``) longer than the backbone takes
    (:func:`length_limit_of`): it would allocate tens of GB before failing. Where prompt and text share absolute
    positions (``standard`` layout) the DataModule's text budget truncates the text and refuses a long prompt."""
    if max_input_length_of(config, tokenizer) is not None and layout == "standard":
        return
    limit = length_limit_of(config, tokenizer)
    for name, value in lengths.items():
        flag = f"--{'model' if name == 'prompt_length' else 'data'}.{name}"
        if value > limit:
            raise BackboneError(f"{flag}={value} is more than backbone {backbone!r} takes ({limit} positions) — use "
                                f"{flag}={limit} or less")


def load_tokenizer(name: str) -> tuple[object, PretrainedConfig]:
    """The tokenizer and config of a backbone, without its weights (what a DataModule needs)."""
    if name in RANDOM_PRESETS:
        return AutoTokenizer.from_pretrained(build_tiny_preset(_tiny_twin(name))), _random_config(name)
    path = str(build_tiny_preset(name)) if name in TINY_PRESETS else name
    return _from_pretrained(AutoTokenizer.from_pretrained, path), _from_pretrained(AutoConfig.from_pretrained, path)


def load_backbone(name: str) -> Backbone:
    """Load ``name`` — an offline preset, a local directory, or a hub name — with its tokenizer."""
    tokenizer, config = load_tokenizer(name)
    family = family_of(config)
    if name in RANDOM_PRESETS:
        model = (T5ForConditionalGeneration if family == "seq2seq" else RobertaForMaskedLM)(config)
    else:
        path = str(build_tiny_preset(name)) if name in TINY_PRESETS else name
        auto = {"seq2seq": AutoModelForSeq2SeqLM, "causal_lm": AutoModelForCausalLM}.get(family, AutoModelForMaskedLM)
        model = _from_pretrained(auto.from_pretrained, path)
    return Backbone(name, model.eval(), tokenizer, family)


def _tiny_twin(name: str) -> str:
    return {"random-roberta-base": "tiny-roberta", "random-t5-base": "tiny-t5"}[name]


@contextlib.contextmanager
def local_files_quietly():
    """No progress bars of transformers while it reads or writes local files (instant for these backbones); the
    bars stay on everywhere else, so a hub download shows its progress."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def looks_like_path(name: str) -> bool:
    """A backbone written as a path, never a hub name (``org/name``): absolute, ``./``, ``../``, ``~``, or with
    more than one ``/``."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _from_pretrained(loader, name: str):
    try:
        with local_files_quietly() if Path(name).is_dir() else contextlib.nullcontext():
            return loader(name)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if Path(name).exists():
            raise BackboneError(f"cannot load backbone from local path {name!r}: {err}") from None
        if looks_like_path(name):
            raise BackboneError(f"backbone directory {name!r} does not exist — check the path (a folder saved with "
                                f"save_pretrained), or give a hub name or an offline preset: {', '.join(PRESETS)}"
                                ) from None
        hint = (
            f"HF_HUB_OFFLINE is set and {name!r} is not in the local Hugging Face cache. "
            if offline
            else f"{name!r} is neither a local directory nor a model on the hub ({type(err).__name__}). "
        )
        raise BackboneError(
            f"cannot load backbone {name!r}: {hint}Pass a local directory saved with save_pretrained "
            f"(--model.backbone=/path/to/{Path(name).name}), download it first with network access, "
            f"or use an offline preset: {', '.join(PRESETS)}"
        ) from None


# ----------------------------------------------------------------------------------------------------
# Offline presets
# ----------------------------------------------------------------------------------------------------


def _random_config(name: str) -> PretrainedConfig:
    """roberta-base / t5-base shapes (values of their published configs), random weights."""
    if name == "random-roberta-base":
        return RobertaConfig(
            vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
            pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
    return T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )


def preset_of(path: str | Path) -> str | None:
    """The preset a folder was built as (its ``preset.json``, written by :func:`build_tiny_preset`), else ``None``:
    files that record a backbone by path (PEFT's ``base_model_name_or_path``) name a preset this way."""
    try:
        name = json.loads((Path(path) / "preset.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        return None
    return name if name in TINY_PRESETS else None


def build_tiny_preset(name: str) -> Path:
    """Build (once) and return the directory of a tiny preset, saved with ``save_pretrained``."""
    target = home() / "backbones" / f"{name}-{PRESET_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        text = CORPUS.read_text().splitlines()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, tokenizer = _TINY_BUILDERS[name](text)
        with local_files_quietly():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / "preset.json").write_text(json.dumps({"preset": name, "version": PRESET_VERSION}))
        try:
            tmp.rename(target)  # atomic: concurrent builders (DDP ranks) race harmlessly
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tiny_roberta(text: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=3000, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    model_json = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tokenizer = RobertaTokenizer(vocab=model_json["vocab"], merges=merges, model_max_length=256)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=258, type_vocab_size=1, initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return RobertaForMaskedLM(config), tokenizer


def _tiny_t5(text: list[str]):
    from tokenizers import SentencePieceUnigramTokenizer

    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(text, vocab_size=3000, special_tokens=["<pad>", "</s>", "<unk>"],
                                unk_token="<unk>", show_progress=False)
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
        num_heads=4, feed_forward_proj="relu", decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return T5ForConditionalGeneration(config), tokenizer


def _bpe_model(trainer, text: list[str], special_tokens: list[str]) -> tuple[dict, list[tuple[str, str]]]:
    """Train a ``tokenizers`` BPE on ``text``: (vocab, merges) in the form HF's tokenizer classes take."""
    trainer.train_from_iterator(text, vocab_size=3000, min_frequency=2, special_tokens=special_tokens,
                                show_progress=False)
    model_json = json.loads(trainer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    return model_json["vocab"], merges


def _tiny_gpt2(text: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    vocab, merges = _bpe_model(ByteLevelBPETokenizer(), text, ["<|endoftext|>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=256)  # no pad token, as GPT-2
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_inner=256, n_positions=256,
        initializer_range=0.2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config), tokenizer


def _tiny_llama(text: list[str]):
    from tokenizers import SentencePieceBPETokenizer

    # Llama's tokenizers fall back to byte tokens <0x00>..<0xFF> for characters outside the vocabulary.
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    vocab, merges = _bpe_model(SentencePieceBPETokenizer(replacement="\u2581", add_prefix_space=True), text,
                               ["<unk>", "<s>", "</s>", *byte_tokens])
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, model_max_length=256, add_bos_token=True,
                               add_eos_token=False)  # no pad token, as Llama
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config), tokenizer


_TINY_BUILDERS = {"tiny-roberta": _tiny_roberta, "tiny-t5": _tiny_t5, "tiny-gpt2": _tiny_gpt2,
                  "tiny-llama": _tiny_llama}
