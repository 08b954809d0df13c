"""Benchmark: the skill-neuron analysis vs a plain evaluation forward over the same data, and its peak memory.

    python benchmarks/analysis.py                                   # tiny RoBERTa on CPU (a minute)
    python benchmarks/analysis.py --backbone random-roberta-base --prompt-length 100 --text-length 128 \
        --train 67349 --eval 872 --adv 148 --batch-size 256 --precision bf16-mixed --device cuda   # SST-2 sized
    python benchmarks/analysis.py --preset sst2 --batch-size 256 --precision bf16-mixed --device cuda   # the same

The data are synthetic token ids (lengths uniform in [text_length/2, text_length], random labels) put straight
into a ``PromptDataModule``, so both passes use the project's real loaders, collator and modules:

* ``plain``: ``model(batch)`` (verbalizer logits) over train + validation + adversarial, in the order the
  analysis reads them (longest first) — the cost of one evaluation forward of the same examples;
* ``plain_loader_order``: the same, in file order (how Lightning's evaluation loop reads them);
* ``analysis``: ``SkillNeuronCallback.passes`` — threshold pass over train, one pass per evaluation set.

Timings alternate plain / analysis after a warm-up and report medians. Peak memory is measured in separate
child processes at 1x and 10x the data (GPU: peak allocated CUDA memory during the analysis; CPU: the
process's peak resident set). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# Settings a preset fills in (options given explicitly still win). sst2: GLUE SST-2's split sizes (67,349 train,
# 872 validation) and AdvGLUE SST-2's 148 adversarial examples, texts of up to 128 tokens (special tokens included,
# P1's limit), P1's 100-vector prompt, roberta-base's shape with random weights.
PRESETS = {
    "sst2": {"backbone": "random-roberta-base", "prompt_length": 100, "text_length": 128,
             "train": 67349, "eval": 872, "adv": 148},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="sst2: " + ", ".join(f"{k}={v}" for k, v in PRESETS["sst2"].items()))
    parser.add_argument("--backbone", default="tiny-roberta")
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=32, help="longest text in tokens (special tokens included)")
    parser.add_argument("--train", type=int, default=4000, help="train examples (threshold pass)")
    parser.add_argument("--eval", type=int, default=400, help="clean evaluation examples")
    parser.add_argument("--adv", type=int, default=400, help="adversarial examples")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--part", default="encoder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--correlations", action="store_true",
                        help="the analysis with the continuous metrics (SkillNeuronCallback(correlations=True))")
    parser.add_argument("--memory-scales", default="1,10", help="data multiples for the peak-memory children")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--child-scale", type=int, default=None, help=argparse.SUPPRESS)
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    return parser.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build(args, scale: int = 1):
    import datasets
    import torch

    from callbacks.skill_neurons import SkillNeuronCallback
    from datamodules import PromptDataModule
    from lightning_modules import MaskedLMPromptTuning, Seq2SeqPromptTuning
    from lightning_modules.backbones import family_of, load_tokenizer

    tokenizer, config = load_tokenizer(args.backbone)
    family = family_of(config)
    cls = MaskedLMPromptTuning if family == "masked_lm" else Seq2SeqPromptTuning
    torch.manual_seed(0)
    model = cls(backbone=args.backbone, prompt_length=args.prompt_length).eval().to(args.device)
    dm = PromptDataModule(task="marker", backbone=args.backbone, prompt_length=args.prompt_length,
                          eval_batch_size=args.batch_size)
    model.label_token_ids = torch.tensor(dm.label_token_ids, device=args.device)
    generator = torch.Generator().manual_seed(0)
    low, high = 5, min(tokenizer.vocab_size, config.vocab_size) - 1
    sizes = {"train": args.train, "validation": args.eval, f"adv/{next(iter(dm.task.adversarial))}": args.adv}
    for role, n in sizes.items():
        n *= scale
        lengths = torch.randint(max(3, args.text_length // 2), args.text_length + 1, (n,), generator=generator)
        ids, masks = [], []
        for length in lengths.tolist():
            body = torch.randint(low, high, (length - 2,), generator=generator).tolist()
            if family == "masked_lm":
                ids.append([tokenizer.bos_token_id, tokenizer.mask_token_id, *body[:-1], tokenizer.eos_token_id])
                masks.append(1)
            else:
                ids.append([*body, tokenizer.eos_token_id])
                masks.append(-1)
        labels = torch.randint(0, 2, (n,), generator=generator).tolist()
        dm.datasets[role] = datasets.Dataset.from_dict(
            {"input_ids": ids, "mask_index": masks, "label": labels, "idx": list(range(n))})
    callback = SkillNeuronCallback(part=args.part, batch_size=args.batch_size, correlations=args.correlations)
    return model, dm, callback, list(sizes)


def autocast(args):
    import torch

    if args.precision == "32":
        return nullcontext()
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float16
    return torch.autocast(device_type=args.device.split(":")[0], dtype=dtype)


def sync(args):
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_pass(model, dm, roles, batch_size, sorted_order: bool):
    from lightning.fabric.utilities.apply_func import move_data_to_device

    for role in roles:
        n = len(dm.datasets[role])
        if sorted_order:
            lengths = dm.lengths(role)
            order = sorted(range(n), key=lambda i: -lengths[i])
        else:
            order = list(range(n))
        for batch in dm.analysis_loader(role, order, batch_size):
            model(move_data_to_device(batch, model.device))


def timed(fn, args) -> float:
    sync(args)
    start = time.perf_counter()
    fn()
    sync(args)
    return time.perf_counter() - start


def measure_memory(args, scale: int) -> dict:
    """Child process: build at ``scale``x the data, run the analysis once, report its peak memory."""
    import torch

    model, dm, callback, roles = build(args, scale)
    eval_roles = roles[1:]
    with torch.no_grad(), autocast(args):
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            callback.passes(model, dm, eval_roles)
            sync(args)
            peak = torch.cuda.max_memory_allocated()
            return {"scale": scale, "peak_mb": peak / 2**20, "over_model_mb": (peak - base) / 2**20, "kind": "cuda"}
        callback.passes(model, dm, eval_roles)
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    return {"scale": scale, "peak_mb": peak_kb / 1024, "kind": "cpu peak RSS (whole process)"}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child_scale is not None:
        print(json.dumps(measure_memory(args, args.child_scale)))
        return {}
    import torch

    model, dm, callback, roles = build(args)
    eval_roles = roles[1:]
    examples = {role: len(dm.datasets[role]) for role in roles}
    with torch.no_grad(), autocast(args):
        plain_pass(model, dm, roles, args.batch_size, True)  # warm-up
        callback.passes(model, dm, eval_roles)
        plain, plain_file_order, analysis = [], [], []
        for _ in range(args.repeats):
            plain.append(timed(lambda: plain_pass(model, dm, roles, args.batch_size, True), args))
            analysis.append(timed(lambda: callback.passes(model, dm, eval_roles), args))
            plain_file_order.append(timed(lambda: plain_pass(model, dm, roles, args.batch_size, False), args))
    result = {
        "benchmark": "skill_neuron_analysis", "preset": args.preset, "device": _device_name(args.device),
        "backbone": args.backbone,
        "precision": args.precision, "part": args.part, "prompt_length": args.prompt_length,
        "text_length_max": args.text_length, "batch_size": args.batch_size, "examples": examples,
        "plain_s": statistics.median(plain), "plain_loader_order_s": statistics.median(plain_file_order),
        "analysis_s": statistics.median(analysis),
    }
    result["ratio_analysis_over_plain"] = result["analysis_s"] / result["plain_s"]
    result["ratio_analysis_over_plain_loader_order"] = result["analysis_s"] / result["plain_loader_order_s"]
    if not args.no_memory:
        memory = []
        for scale in (int(s) for s in args.memory_scales.split(",")):
            argv_child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                          f"--child-scale={scale}"]
            out = subprocess.run(argv_child, capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
            memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
        result["memory"] = memory
        result["memory_ratio_largest_over_1x"] = memory[-1]["peak_mb"] / memory[0]["peak_mb"]
    print(json.dumps(result))
    return result


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


if __name__ == "__main__":
    main()
