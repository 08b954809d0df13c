"""FSDP check for causal LMs (GPU only: Lightning refuses ``strategy="fsdp"`` with ``accelerator="cpu"``:
"ValueError: The strategy `fsdp` requires a GPU accelerator, but received `accelerator='cpu'`").

    python benchmarks/fsdp_check.py --backbone tiny-llama --devices 1

Fits a prompt in front of a frozen causal LM under ``strategy="fsdp"`` (Lightning's default
``use_orig_params=True``, so the frozen backbone and the trainable prompt can share a flat parameter) and under
the single-device default, from the same seed, and prints one JSON line:

- ``backbone_identical``: the backbone's weights are bit-identical after the FSDP fit;
- ``prompt_trained``: the FSDP prompt moved; ``prompt_max_abs_diff``: FSDP prompt vs single-device prompt;
- ``checkpoint_keys``: the FSDP checkpoint holds ``prompt.weight`` only;
- ``val_acc``: both runs' final ``val/acc``;
- ``analysis``: the skill-neuron analysis (``positions=last``) of the FSDP run vs the single-device run —
  ``max_abs_diff`` of thresholds and accuracies, or the error it raised (the callback calls the backbone outside
  FSDP's forward; with one GPU the shards are the whole parameters).

Exact statistics across several ranks are the all-reduce of ``callbacks/neuron_statistics.py``, tested with
two CPU processes under DDP (``tests/test_skill_neurons.py``); with more than one GPU pass ``--devices N``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import traceback

import torch
from lightning import Trainer, seed_everything

from callbacks.skill_neurons import SkillNeuronCallback, load_neuron_file
from datamodules import PromptDataModule
from lightning_modules import CausalLMPromptTuning


def fit(backbone: str, strategy: str, devices: int, steps: int, root: str, accelerator: str):
    seed_everything(0)
    model = CausalLMPromptTuning(backbone=backbone, prompt_length=8, learning_rate=1e-2)
    before = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    start = model.prompt.weight.detach().cpu().clone()
    data = PromptDataModule(task="marker", backbone=backbone, prompt_length=8, batch_size=32, eval_batch_size=200,
                            max_eval_samples=200, shuffle=False)
    trainer = Trainer(accelerator=accelerator, devices=devices, strategy=strategy, max_steps=steps, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      enable_checkpointing=False, default_root_dir=root, val_check_interval=steps,
                      callbacks=[SkillNeuronCallback(positions="last", on_fit=False)])
    trainer.fit(model, data)
    result = {"val_acc": float(trainer.callback_metrics.get("val/acc", float("nan")))}
    result["backbone_identical"] = all(torch.equal(before[k], v.detach().cpu())
                                       for k, v in model.backbone.state_dict().items())
    result["prompt_trained"] = not torch.equal(start, model.prompt.weight.detach().cpu())
    trainer.save_checkpoint(f"{root}/prompt.ckpt")
    if trainer.is_global_zero:
        result["checkpoint_keys"] = list(torch.load(f"{root}/prompt.ckpt", weights_only=True)["state_dict"])
    try:
        trainer.validate(model, data)
        result["neurons"] = f"{root}/skill_neurons/validation.safetensors"
    except Exception as error:  # noqa: BLE001 - reported in the JSON line
        result["analysis_error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    return model, trainer, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-llama")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strategy", default="fsdp", help="auto rehearses this script on a CPU machine")
    parser.add_argument("--accelerator", default="gpu", help="cpu (with --strategy auto) rehearses this script")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as single_root, tempfile.TemporaryDirectory() as fsdp_root:
        single, _, single_result = fit(args.backbone, "auto", 1, args.steps, single_root, args.accelerator)
        sharded, trainer, fsdp_result = fit(args.backbone, args.strategy, args.devices, args.steps, fsdp_root,
                                            args.accelerator)
        if not trainer.is_global_zero:
            return
        out = {"backbone": args.backbone, "devices": args.devices, "strategy": args.strategy,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "single": single_result, "fsdp": fsdp_result,
               "prompt_max_abs_diff": float((single.prompt.weight.detach().cpu()
                                             - sharded.prompt.weight.detach().cpu()).abs().max())}
        if "neurons" in single_result and "neurons" in fsdp_result:
            a, b = load_neuron_file(single_result["neurons"])[0], load_neuron_file(fsdp_result["neurons"])[0]
            out["analysis"] = {k: float((a[k] - b[k]).abs().max()) for k in ("threshold", "accuracy", "score")}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
