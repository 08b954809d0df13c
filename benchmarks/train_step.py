"""Benchmark: prompt-tuning training steps of this project's modules vs HF PEFT prompt tuning, same everything.

    python benchmarks/train_step.py                                  # tiny RoBERTa on CPU (seconds)
    python benchmarks/train_step.py --backbone tiny-t5
    python benchmarks/train_step.py --backbone random-roberta-base --batch-size 32 --precision bf16-mixed \
        --attn sdpa --device cuda                                    # P1's shape: 100 prompt + 128 text tokens
    python benchmarks/train_step.py --backbone random-t5-base --batch-size 32 --precision bf16-mixed --device cuda

Both sides train a soft prompt of ``P`` vectors in front of the same frozen backbone (the same weights: PEFT wraps
a copy of our module's backbone, and starts from our prompt), on the same batch tensors, in the same process:

* ``ours``: ``MaskedLMPromptTuning`` / ``Seq2SeqPromptTuning`` with the real training-step math —
  ``loss = module.model_step(batch)[0]``, ``loss.backward()``, the AdamW that ``configure_optimizers`` builds
  (prompt only, lr 1e-3, eps 1e-6, weight decay 0), ``zero_grad(set_to_none=True)``;
* ``peft``: ``peft.get_peft_model(backbone copy, PromptTuningConfig(num_virtual_tokens=P))`` and AdamW with the
  same settings over PEFT's trainable parameters. Masked LM: ``TaskType.FEATURE_EXTRACTION`` (PEFT has no masked-LM
  task type; this one prepends the prompt and returns the MLM model's output), so PEFT's forward computes the MLM
  head over every position and the whole vocabulary, and the loss is the cross-entropy over the verbalizer logits
  at ``<mask>`` — what prompt tuning of a masked LM with PEFT does. T5: ``TaskType.SEQ_2_SEQ_LM`` (PEFT's default
  two transformer submodules: 2P prompt rows, the first P go in front of the encoder input), one decoder step
  from ``decoder_start_token_id`` and the cross-entropy over the label tokens' logits — the same loss as ours.

Batches are built as the project's collator builds them (masked LM: ``<s> <mask> ids... </s>``, ``mask_index`` 1;
T5: ``ids... </s>``), every row ``--text-length`` tokens, random ids, labels random in {0, 1}, two fixed verbalizer
ids. Dropout is off on both sides (the project's default: the frozen backbone runs in eval mode). ``bf16-mixed``
wraps the forward and the loss in ``torch.autocast`` (bf16) as Lightning does; the backward and optimizer run
outside it.

Timing: ``--warmup`` steps of each, then ``--blocks`` timed blocks of ``--steps`` steps, alternating ours / PEFT
(the order flips every block), CUDA synchronised around each block; medians over blocks.
MFU counts model FLOPs as 4 x non-embedding parameters x tokens per step (forward 2, input-gradient backward 2;
the frozen weights need no weight gradients; attention score FLOPs not counted). ``mfu_issue_formula`` applies that
to every non-embedding parameter and all ``B x (P + T)`` tokens; ``mfu`` counts what the model runs: for masked LMs
the same, for T5 the encoder (and the decoder's cross-attention K/V projections) over ``B x (P + T)`` tokens and
the rest of the decoder over its single step per example. The peak is ``--peak-tflops`` or, on a GPU, a small
table of bf16 dense peaks by device name; the script also measures a large bf16 matrix product on the GPU. CPU: MFU
is null. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity) by device-name substring; first match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0, "H100 PCIe bf16 dense"),
    ("H100 NVL", 835.0, "H100 NVL bf16 dense"),
    ("H100", 989.0, "H100 SXM bf16 dense"),
    ("H200", 989.0, "H200 bf16 dense"),
    ("A100", 312.0, "A100 bf16 dense"),
)
FULL_PRESETS = ("random-roberta-base", "random-t5-base")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny-roberta",
                        help="tiny-roberta, tiny-t5 (CPU); random-roberta-base, random-t5-base (GPU); any backbone")
    parser.add_argument("--prompt-length", type=int, default=None, help="P (default: 8 on tiny backbones, else 100)")
    parser.add_argument("--text-length", type=int, default=None,
                        help="text tokens per row, special tokens included (default: 24 on tiny backbones, else 128)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on tiny backbones, else 32")
    parser.add_argument("--precision", default=None, choices=["32", "bf16-mixed"],
                        help="default: bf16-mixed on CUDA, 32 on CPU")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per side (alternating)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 dense peak for MFU (default on a GPU: a table by device name)")
    parser.add_argument("--skip-peft", action="store_true", help="time ours only (PEFT reported as null)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tiny = args.backbone.startswith("tiny-")
    args.prompt_length = args.prompt_length or (8 if tiny else 100)
    args.text_length = args.text_length or (24 if tiny else 128)
    args.batch_size = args.batch_size or (8 if tiny else 32)
    args.precision = args.precision or ("bf16-mixed" if args.device.startswith("cuda") else "32")
    if args.text_length < 3:
        parser.error("--text-length must be at least 3 (<s> <mask> ... </s>)")
    return args


def autocast(args):
    import torch

    if args.precision == "32":
        return nullcontext()
    return torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16)


def sync(args):
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ set-up
def build_ours(args):
    import torch

    from lightning_modules import MaskedLMPromptTuning, Seq2SeqPromptTuning
    from lightning_modules.backbones import family_of, load_tokenizer

    _, config = load_tokenizer(args.backbone)
    family = family_of(config)
    cls = MaskedLMPromptTuning if family == "masked_lm" else Seq2SeqPromptTuning
    torch.manual_seed(args.seed)
    module = cls(backbone=args.backbone, prompt_length=args.prompt_length)
    attn = set_attention(module.backbone, args.attn)
    module = module.to(args.device).train()  # the backbone stays in eval mode (dropout off), as in fit
    vocab = module.backbone.config.vocab_size
    module.label_token_ids = torch.tensor([vocab // 3, 2 * vocab // 3], device=args.device)
    optimizer = module.configure_optimizers()
    return module, optimizer, family, attn


def set_attention(model, wanted: str) -> str:
    """``load_backbone`` takes no ``attn_implementation``, so switch the loaded model; returns what is in use."""
    if getattr(model.config, "_attn_implementation", None) != wanted:
        model.set_attn_implementation(wanted)
    return model.config._attn_implementation


def build_peft(args, module, family):
    """PEFT prompt tuning over a copy of ``module``'s backbone (same weights), starting from the same prompt."""
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model

    backbone = copy.deepcopy(module.backbone).eval()
    task_type = TaskType.FEATURE_EXTRACTION if family == "masked_lm" else TaskType.SEQ_2_SEQ_LM
    config = PromptTuningConfig(task_type=task_type, num_virtual_tokens=args.prompt_length)
    model = get_peft_model(backbone, config).to(args.device).eval()  # eval: dropout off, as ours
    embedding = model.prompt_encoder[model.active_adapter].embedding
    with torch.no_grad():
        embedding.weight[: args.prompt_length].copy_(module.prompt.weight)
    params = [p for p in model.parameters() if p.requires_grad]
    hp = module.hparams
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, eps=hp.adam_eps, weight_decay=hp.weight_decay)
    return model, optimizer, sum(p.numel() for p in params), task_type.value


def make_batch(args, module, family) -> dict:
    """One batch as the project's collator makes it: every row ``text_length`` tokens, no padding."""
    import torch

    tok, vocab = module.tokenizer, module.backbone.config.vocab_size
    g = torch.Generator().manual_seed(args.seed + 1)
    B, T = args.batch_size, args.text_length
    if family == "masked_lm":
        body = torch.randint(5, vocab, (B, T - 3), generator=g)
        ids = torch.cat([torch.full((B, 1), tok.bos_token_id), torch.full((B, 1), tok.mask_token_id), body,
                         torch.full((B, 1), tok.eos_token_id)], dim=1)
        mask_index = torch.ones(B, dtype=torch.long)
    else:
        body = torch.randint(5, vocab, (B, T - 1), generator=g)
        ids = torch.cat([body, torch.full((B, 1), tok.eos_token_id)], dim=1)
        mask_index = torch.full((B,), -1, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mask_index": mask_index,
             "labels": torch.randint(0, 2, (B,), generator=g), "idx": torch.arange(B)}
    return {k: v.to(args.device) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ steps
def ours_step(args, module, optimizer, batch):
    optimizer.zero_grad(set_to_none=True)
    with autocast(args):
        loss = module.model_step(batch)[0]
    loss.backward()
    optimizer.step()
    return loss


def peft_loss(model, batch, label_ids, family, prompt_length):
    import torch
    import torch.nn.functional as F

    if family == "masked_lm":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])  # logits (B, P+T, V)
        rows = torch.arange(out.logits.shape[0], device=out.logits.device)
        logits = out.logits[rows, prompt_length + batch["mask_index"]][:, label_ids]
    else:
        base = model.get_base_model()
        start = torch.full((batch["input_ids"].shape[0], 1), base.config.decoder_start_token_id,
                           dtype=torch.long, device=batch["input_ids"].device)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=start,
                    use_cache=False)
        logits = out.logits[:, 0, label_ids]
    return F.cross_entropy(logits.float(), batch["labels"])


def peft_step(args, model, optimizer, batch, label_ids, family):
    optimizer.zero_grad(set_to_none=True)
    with autocast(args):
        loss = peft_loss(model, batch, label_ids, family, args.prompt_length)
    loss.backward()
    optimizer.step()
    return loss


# ------------------------------------------------------------------------------------------------ FLOPs, peak
def flop_counts(model, family: str, tokens: int, batch_size: int) -> dict:
    """Non-embedding parameters (no word/position embeddings, no vocabulary projection) and FLOPs per step."""
    vocab = model.config.vocab_size
    enc_side = dec_side = 0
    for name, p in model.named_parameters():  # tied weights appear once
        if "embed" in name or name.startswith("shared") or (p.dim() >= 1 and p.shape[0] == vocab):
            continue
        cross_kv = ".EncDecAttention.k." in name or ".EncDecAttention.v." in name
        if family == "seq2seq" and name.startswith("decoder.") and not cross_kv:
            dec_side += p.numel()  # runs on the single decoder step of each example
        else:
            enc_side += p.numel()  # runs on every encoder position
    non_embedding = enc_side + dec_side
    return {
        "non_embedding_params": non_embedding,
        "flops_per_step": 4 * (enc_side * tokens + dec_side * batch_size),
        "flops_per_step_issue_formula": 4 * non_embedding * tokens,
    }


def peak_tflops(args) -> tuple[float | None, str | None]:
    if args.peak_tflops is not None:
        return args.peak_tflops, "--peak-tflops"
    if not args.device.startswith("cuda"):
        return None, None
    import torch

    name = torch.cuda.get_device_name(torch.device(args.device))
    for key, value, what in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"table: {what} ({name})"
    return None, f"no table entry for {name!r}: pass --peak-tflops"


def measured_matmul_tflops(args) -> float | None:
    """bf16 8192^3 matrix products on the GPU (mean of 10 after 3 warm-ups): what the chip does here."""
    if not args.device.startswith("cuda"):
        return None
    import torch

    n = 8192
    a = torch.randn(n, n, device=args.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=args.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(args)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(args)
    seconds = (time.perf_counter() - start) / 10
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds / 1e12


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    args = parse_args(argv)
    import lightning
    import torch
    import transformers

    module, optimizer, family, attn = build_ours(args)
    batch = make_batch(args, module, family)
    sides = {"ours": lambda: ours_step(args, module, optimizer, batch)}
    peft_info, peft_reason, versions = None, None, {
        "torch": torch.__version__, "transformers": transformers.__version__, "lightning": lightning.__version__,
        "peft": None}
    if args.skip_peft:
        peft_reason = "skipped (--skip-peft)"
    else:
        try:
            import peft

            versions["peft"] = peft.__version__
            peft_model, peft_opt, peft_trainable, task_type = build_peft(args, module, family)
            sides["peft"] = lambda: peft_step(args, peft_model, peft_opt, batch, module.label_token_ids, family)
            peft_info = {"task_type": task_type, "trainable_params": peft_trainable,
                         "attn_implementation": peft_model.get_base_model().config._attn_implementation}
        except ImportError as err:
            peft_reason = f"peft not importable: {err}"

    # Same weights, same prompt, same batch: the first losses agree (bf16 rounds differently per head shape).
    first_loss = {name: float(step()) for name, step in sides.items()}
    peak_memory = {}
    for name, step in sides.items():
        if args.device.startswith("cuda"):
            sync(args)
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step()
        sync(args)
        if args.device.startswith("cuda"):
            peak_memory[name] = torch.cuda.max_memory_allocated() / 2**20
    per_step_ms = {name: [] for name in sides}
    order = list(sides)
    for block in range(args.blocks):
        for name in (order if block % 2 == 0 else order[::-1]):
            step = sides[name]
            sync(args)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(args)
            per_step_ms[name].append((time.perf_counter() - start) * 1000 / args.steps)

    tokens = args.batch_size * (args.prompt_length + args.text_length)
    counts = flop_counts(module.backbone, family, tokens, args.batch_size)
    peak, peak_source = peak_tflops(args)
    matmul = measured_matmul_tflops(args)

    def side(name):
        ms = statistics.median(per_step_ms[name])
        tflops = counts["flops_per_step"] / (ms / 1000) / 1e12
        tflops_issue = counts["flops_per_step_issue_formula"] / (ms / 1000) / 1e12
        return {"ms_per_step": ms, "steps_per_s": 1000 / ms, "tokens_per_s": tokens * 1000 / ms,
                "ms_per_step_blocks": per_step_ms[name], "first_loss": first_loss[name],
                "mfu": tflops / peak if peak else None, "mfu_issue_formula": tflops_issue / peak if peak else None,
                "model_tflops_per_s": tflops, "peak_memory_mb": peak_memory.get(name)}

    ours, hp = side("ours"), module.hparams
    result = {
        "benchmark": "prompt_tuning_train_step", "device": _device_name(args.device), "backbone": args.backbone,
        "family": family, "precision": args.precision, "attn_implementation": attn,
        "batch_size": args.batch_size, "prompt_length": args.prompt_length, "text_length": args.text_length,
        "tokens_per_step": tokens, "steps_per_block": args.steps, "blocks": args.blocks, "warmup": args.warmup,
        "optimizer": f"AdamW(prompt only, lr={hp.learning_rate:g}, eps={hp.adam_eps:g}, "
                     f"weight_decay={hp.weight_decay:g})",
        **counts, "peak_tflops": peak, "peak_tflops_source": peak_source, "measured_bf16_matmul_tflops": matmul,
        "ours": ours, "mfu": ours["mfu"], "mfu_issue_formula": ours["mfu_issue_formula"],
        "peft": None, "ratio_steps_per_s_ours_over_peft": None, "versions": versions,
    }
    if "peft" in sides:
        result["peft"] = {**side("peft"), **peft_info}
        # > 1: ours is faster. Equals peft ms/step over ours ms/step.
        result["ratio_steps_per_s_ours_over_peft"] = result["peft"]["ms_per_step"] / ours["ms_per_step"]
        result["first_loss_abs_diff"] = abs(first_loss["ours"] - first_loss["peft"])
    else:
        result["peft_reason"] = peft_reason
    print(json.dumps(result))
    return result


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


if __name__ == "__main__":
    main()
