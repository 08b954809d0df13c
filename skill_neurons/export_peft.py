"""``skill-neurons export-peft``: a trained prompt as a Hugging Face PEFT prompt-tuning adapter.

    skill-neurons export-peft runs/<id> --out adapters/sst2-gpt2      # the run's best prompt
    skill-neurons export-peft imported/t5/sst2/seed33.ckpt --out adapters/sst2-t5
    # then, in Python: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<backbone>), "adapters/...")

Writes ``adapter_config.json`` + ``adapter_model.safetensors`` (:mod:`records.peft_adapter`; no ``peft`` needed)
for the families whose input PEFT's prompt-tuning forward reproduces: causal LMs (``CAUSAL_LM``: the P vectors
before the text's input embeddings) and T5 (``SEQ_2_SEQ_LM``: before the encoder's). Masked LMs are refused:
PEFT has no masked-LM task type (it cannot read the label at ``<mask>`` through a verbalizer), and under
``paper`` the ``<mask>`` in prompt slot 0 and the zeroed prompt position embeddings are not PEFT's input.
A T5 ``paper`` prompt is exported (the forward is the same) but reads P1's per-task text format, which the
adapter cannot record: feed PEFT that text.

Where PEFT's forward equals ours (checked against peft 0.21's source and measured in ``tests/test_peft.py``): the
same vectors go before the same input embeddings with the attention mask extended by P ones; T5 numbers nothing
(relative attention), so any padding gives the same logits. PEFT drops position ids for prompt tuning, so a causal
LM numbers every position by index: on right-padded or unpadded batches that is our ``cumsum − 1`` of the mask at
every real token, and the logits are equal; on left-padded batches the text's positions in PEFT start after the
padding, ours do not, and the logits differ.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from lightning_modules.backbones import BackboneError, load_tokenizer
from records.errors import UserError
from records.peft_adapter import CONFIG_FILE, TASK_TYPES, WEIGHTS_FILE, adapter_config, write_adapter
from records.prompt_checkpoint import metadata_of, prompt_of, read_checkpoint
from records.summary import BEST_CHECKPOINT, CHECKPOINT_DIR

PROG = "skill-neurons export-peft"
REFUSED = {
    "masked_lm": "PEFT has no masked-LM task type: its prompt tuning cannot read the label at <mask> through a "
                 "verbalizer, and under layout paper our input puts <mask> in prompt slot 0 and gives the prompt "
                 "zero position embeddings, which PEFT's forward does not do — only causal-LM and T5 prompts can be "
                 "exported",
}


class ExportError(UserError, ValueError):
    """A prompt that cannot be exported as a PEFT adapter; the message names the fix."""


@dataclass
class Exported:
    checkpoint: Path
    out: Path
    backbone: str
    family: str
    layout: str
    prompt_shape: tuple[int, int]


def checkpoint_of(run: Path) -> Path:
    """A checkpoint file itself, or a fit run folder's ``checkpoints/best.ckpt``."""
    if run.is_file():
        return run
    best = run / CHECKPOINT_DIR / BEST_CHECKPOINT
    if run.is_dir() and best.is_file():
        return best
    raise ExportError(f"{run} is neither a prompt checkpoint nor a fit run folder with {CHECKPOINT_DIR}/"
                      f"{BEST_CHECKPOINT} — give runs/<id> or a .ckpt file")


def export_peft(run: str | Path, out: str | Path, force: bool = False) -> Exported:
    """Write the prompt of ``run`` (a fit run folder or a checkpoint) as a PEFT adapter folder ``out``."""
    path, out = checkpoint_of(Path(run)), Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file — give a folder for {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not force and any((out / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE)):
        raise ExportError(f"{out} already holds an adapter — pass --force to overwrite it, or choose another --out")
    checkpoint = read_checkpoint(path)
    prompt = prompt_of(checkpoint, f"checkpoint {str(path)!r}")  # (P, H), refused when missing or not finite
    meta, hparams = metadata_of(checkpoint), checkpoint.get("hyper_parameters") or {}
    backbone, family = meta.get("backbone") or hparams.get("backbone"), meta.get("family")
    layout = meta.get("layout") or hparams.get("layout") or "standard"
    if not backbone or not family:
        raise ExportError(f"checkpoint {str(path)!r} records no backbone or family (skill_neurons metadata) — export "
                          "a checkpoint written by skill-neurons fit or import-prompt")
    if family in REFUSED:
        raise ExportError(f"{path}: a {family} prompt (layout {layout}) cannot be a PEFT adapter — {REFUSED[family]}")
    if family not in TASK_TYPES:
        raise ExportError(f"{path}: family {family!r} has no PEFT task type; only causal-LM and T5 prompts export")
    try:
        _, config = load_tokenizer(backbone)  # the config only: no weights are loaded
    except BackboneError as err:
        raise ExportError(f"{err} (the backbone the checkpoint records: it sets the adapter's shape)") from None
    width = int(getattr(config, "embedding_size", None) or config.hidden_size)
    if prompt.shape[1] != width:
        raise ExportError(f"{path}: the prompt is {prompt.shape[1]} wide but backbone {backbone!r} embeds tokens in "
                          f"{width} dimensions — the checkpoint does not belong to the backbone it records")
    settings = adapter_config(family, prompt.shape[0], width, backbone, getattr(config, "num_hidden_layers", None),
                              getattr(config, "num_attention_heads", None))
    write_adapter(out, prompt, settings)
    return Exported(path, out, backbone, family, layout, tuple(prompt.shape))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write a trained prompt as a Hugging Face PEFT prompt-tuning adapter "
                               "(adapter_config.json + adapter_model.safetensors) that PeftModel.from_pretrained "
                               "loads; causal LMs and T5 only (PEFT cannot express a masked LM's verbalizer).")
    parser.add_argument("run", type=Path, help="a fit run folder (runs/<id>: its best prompt) or a prompt checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the adapter folder to write")
    parser.add_argument("--force", action="store_true", help="overwrite an adapter already in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``skill-neurons export-peft RUN --out DIR``; 0 written, 2 refused."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        done = export_peft(args.run, args.out, args.force)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    p, h = done.prompt_shape
    print(f"exported the {p} x {h} prompt of {done.checkpoint} ({done.family}, {done.backbone}, layout {done.layout}) "
          f"as a PEFT {TASK_TYPES[done.family]} prompt-tuning adapter -> {done.out}")
    if done.family == "causal_lm":
        print("note: PEFT's forward drops position ids, so it gives this prompt's logits on right-padded or unpadded "
              "batches; left padding shifts the text's positions there (here they follow the attention mask)")
    if done.layout == "paper":
        print("note: a layout-paper T5 prompt reads P1's per-task text format: give PEFT that text")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
