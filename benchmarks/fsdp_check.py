"""FSDP check for causal LMs (GPU only: Lightning refuses ``strategy="fsdp"`` with ``accelerator="cpu"``:
"ValueError: The strategy `fsdp` requires a GPU accelerator, but received `accelerator='cpu'`").

    python benchmarks/fsdp_check.py --backbone tiny-llama --devices 1
    python benchmarks/fsdp_check.py --accelerator cpu --strategy auto     # rehearsal on a CPU machine

Fits a prompt in front of a frozen causal LM under ``strategy="fsdp"`` (Lightning's default
``use_orig_params=True``, so the frozen backbone and the trainable prompt can share a flat parameter), and, from
the same seed, under the single-device default; then analyses the FSDP prompt twice (``positions=last``): under
FSDP, and on one device from the FSDP run's checkpoint. Prints one JSON line:

- ``fsdp.backbone_identical``: the backbone's weights are bit-identical after the FSDP fit;
- ``fsdp.prompt_trained``: the FSDP prompt moved (the prompt stays trainable under FSDP);
- ``fsdp.checkpoint_keys``: the FSDP checkpoint holds ``prompt.weight`` only;
- ``analysis``: FSDP analysis vs one-device analysis of the same prompt, max |difference| of ``threshold``,
  ``accuracy`` and ``score`` (or the error either raised);
- ``prompt_max_abs_diff`` and ``*.val_acc``: FSDP training vs single-device training (information only: the
  two optimisations may round differently);
- ``failures``: every check that did not hold; ``ok``: none failed.

The statistics are exact when the thresholds agree to float rounding (``--threshold-tolerance``, default 1e-5,
relative to the largest threshold: a mean summed in another order) and the accuracies and scores, which are
counts of examples over the threshold, are equal. Any failure is printed to stderr as ``fsdp_check: FAILED: ...``
and the exit status is 1, after the JSON line. With more than one GPU pass ``--devices N``: the all-reduce of
``lightning_modules/neuron_statistics.py`` then sums the ranks' counts (exact under DDP: ``tests/test_skill_neurons.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback

import torch
from lightning import Trainer, seed_everything

from callbacks.skill_neurons import SkillNeuronCallback, load_neuron_file
from datamodules import PromptDataModule
from lightning_modules import CausalLMPromptTuning

STATISTICS = ("threshold", "accuracy", "score")


def data(backbone: str) -> PromptDataModule:
    return PromptDataModule(task="marker", backbone=backbone, prompt_length=8, batch_size=32, eval_batch_size=200,
                            max_eval_samples=200, shuffle=False)


def analyse(trainer: Trainer, model: CausalLMPromptTuning, backbone: str, root: str) -> dict:
    """Validate with the skill-neuron analysis; the neuron file's path, or the error it raised."""
    try:
        trainer.validate(model, data(backbone))
        return {"neurons": f"{root}/skill_neurons/validation.safetensors"}
    except Exception as error:  # noqa: BLE001 - reported in the JSON line
        traceback.print_exc()
        return {"analysis_error": f"{type(error).__name__}: {error}"}


def trainer_for(strategy: str, devices: int, steps: int, root: str, accelerator: str) -> Trainer:
    return Trainer(accelerator=accelerator, devices=devices, strategy=strategy, max_steps=steps, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   enable_checkpointing=False, default_root_dir=root, val_check_interval=steps,
                   callbacks=[SkillNeuronCallback(positions="last", on_fit=False)])


def fit(backbone: str, strategy: str, devices: int, steps: int, root: str, accelerator: str):
    seed_everything(0)
    model = CausalLMPromptTuning(backbone=backbone, prompt_length=8, learning_rate=1e-2)
    before = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    start = model.prompt.weight.detach().cpu().clone()
    trainer = trainer_for(strategy, devices, steps, root, accelerator)
    trainer.fit(model, data(backbone))
    result = {"val_acc": float(trainer.callback_metrics.get("val/acc", float("nan")))}
    result["backbone_identical"] = all(torch.equal(before[k], v.detach().cpu())
                                       for k, v in model.backbone.state_dict().items())
    result["prompt_trained"] = not torch.equal(start, model.prompt.weight.detach().cpu())
    trainer.save_checkpoint(f"{root}/prompt.ckpt")
    if trainer.is_global_zero:
        result["checkpoint_keys"] = list(torch.load(f"{root}/prompt.ckpt", weights_only=True)["state_dict"])
    return model, trainer, result


def compare(first: dict, second: dict, tolerance: float) -> tuple[dict, list[str]]:
    """Max |difference| of the two analyses' statistics, and what is not exact."""
    if "neurons" not in first or "neurons" not in second:
        errors = [r["analysis_error"] for r in (first, second) if "analysis_error" in r]
        return {"errors": errors}, [f"the skill-neuron analysis failed: {'; '.join(errors)}"]
    a, b = load_neuron_file(first["neurons"])[0], load_neuron_file(second["neurons"])[0]
    diffs = {k: float((a[k].double() - b[k].double()).abs().max()) for k in STATISTICS}
    failures = []
    scale = max(float(a["threshold"].abs().max()), 1.0)
    if diffs["threshold"] > tolerance * scale:
        failures.append(f"thresholds differ by {diffs['threshold']:.3g} (> {tolerance:g} x {scale:.3g})")
    failures += [f"{k} differs by {diffs[k]:.3g} (counts of examples must be equal)"
                 for k in ("accuracy", "score") if diffs[k] != 0.0]
    return diffs, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-llama")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strategy", default="fsdp", help="auto rehearses this script on a CPU machine")
    parser.add_argument("--accelerator", default="gpu", help="cpu (with --strategy auto) rehearses this script")
    parser.add_argument("--threshold-tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as single_root, tempfile.TemporaryDirectory() as fsdp_root, \
            tempfile.TemporaryDirectory() as reference_root:
        single, _, single_result = fit(args.backbone, "auto", 1, args.steps, single_root, args.accelerator)
        sharded, trainer, fsdp_result = fit(args.backbone, args.strategy, args.devices, args.steps, fsdp_root,
                                            args.accelerator)
        fsdp_result.update(analyse(trainer, sharded, args.backbone, fsdp_root))
        if not trainer.is_global_zero:
            return 0
        # the same (FSDP-trained) prompt, analysed on one device from the FSDP run's checkpoint
        reference = CausalLMPromptTuning.load_from_checkpoint(f"{fsdp_root}/prompt.ckpt", map_location="cpu")
        one_device = analyse(trainer_for("auto", 1, args.steps, reference_root, args.accelerator), reference,
                             args.backbone, reference_root)
        analysis, failures = compare(fsdp_result, one_device, args.threshold_tolerance)
        if not fsdp_result["backbone_identical"]:
            failures.append("the frozen backbone changed under FSDP")
        if not fsdp_result["prompt_trained"]:
            failures.append("the prompt did not train under FSDP")
        if fsdp_result.get("checkpoint_keys") != ["prompt.weight"]:
            failures.append(f"the FSDP checkpoint holds {fsdp_result.get('checkpoint_keys')}, not the prompt only")
        if not torch.equal(reference.prompt.weight.detach().cpu(), sharded.prompt.weight.detach().cpu()):
            failures.append("the FSDP checkpoint's prompt is not the trained prompt")
        out = {"backbone": args.backbone, "devices": args.devices, "strategy": args.strategy,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "single": single_result, "fsdp": fsdp_result, "analysis": analysis,
               "prompt_max_abs_diff": float((single.prompt.weight.detach().cpu()
                                             - sharded.prompt.weight.detach().cpu()).abs().max()),
               "failures": failures, "ok": not failures}
        print(json.dumps(out))
        for failure in failures:
            print(f"fsdp_check: FAILED: {failure}", file=sys.stderr)
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
