"""``skill-neurons import-peft``: a Hugging Face PEFT prompt-tuning adapter as this project's prompt checkpoint.

    skill-neurons import-peft adapters/sst2-gpt2 --task sst2 --out imported/sst2-gpt2.ckpt
    skill-neurons import-peft my-adapter --task marker --verbalizers no yes --backbone ./gpt2-local --out m.ckpt
    skill-neurons validate --config imported/sst2-gpt2.yaml --ckpt_path imported/sst2-gpt2.ckpt

Reads the folder PEFT's ``save_pretrained`` wrote (:mod:`records.peft_adapter`: only ``PROMPT_TUNING``
adapters of task type ``CAUSAL_LM`` or ``SEQ_2_SEQ_LM``; any ``num_virtual_tokens``) and writes, with
``import-prompt``'s checkpoint writer, a prompt checkpoint of the matching family (the rows PEFT's forward reads,
bit for bit; ``layout`` standard, or ``paper`` for a T5 prompt trained on P1's text format) and beside it a
config (``OUT.yaml``: the model class, backbone, prompt length, layout, ``data.task`` — with ``--verbalizers``
the task's declaration with those words — and the skill-neuron callback), so ``validate``/``test`` (with the
skill-neuron analysis), suppression, attacks and the report run on it.

The backbone is ``--backbone``, else the adapter's ``base_model_name_or_path`` (a tiny preset's folder is
recognised by its ``preset.json``). It must be the adapter's: the family must be its task type's and the
embedding width its ``token_dim``; when ``--backbone`` differs from the recorded base model and the base model's
config can be read, their architectures (model type, vocabulary, width, layers) must be equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datamodules.tasks import TASKS, get_task
from lightning_modules.backbones import BackboneError, family_of, load_tokenizer, preset_of
from lightning_modules.rules import check_layout, position_choices
from records.errors import UserError
from records.files import atomic_write
from records.peft_adapter import WEIGHTS_FILE, read_adapter
from records.prompt_checkpoint import FAMILY_CLASSES, metadata, write_checkpoint
from skill_neurons.import_prompt import module_hyper_parameters

PROG = "skill-neurons import-peft"
LAYOUTS = ("standard", "paper")


class PeftImportError(UserError, ValueError):
    """An adapter that cannot become a prompt checkpoint here; the message names the fix."""


@dataclass
class ImportedAdapter:
    source: Path
    out: Path
    config_file: Path
    backbone: str
    family: str
    prompt_shape: tuple[int, int]
    imported_from: dict = field(default_factory=dict)


def _architecture(config) -> dict:
    width = getattr(config, "embedding_size", None) or config.hidden_size
    return {"model_type": config.model_type, "vocab_size": config.vocab_size, "width": int(width),
            "layers": getattr(config, "num_hidden_layers", None)}


def _read_backbone(name: str, what: str):
    try:
        _, config = load_tokenizer(name)  # the config only, no weights
    except BackboneError as err:
        raise PeftImportError(f"{err} ({what})") from None
    return config


def resolve_backbone(recorded: str | None, given: str | None) -> tuple[str, object]:
    """The backbone to run the prompt on and its config; refuses one that is not the adapter's base model."""
    base = (preset_of(recorded) or recorded) if recorded else None
    if given is None:
        if base is None:
            raise PeftImportError("the adapter records no base_model_name_or_path — pass --backbone NAME (the model "
                                  "it was trained on)")
        return base, _read_backbone(base, "the adapter's base_model_name_or_path; pass --backbone NAME for a local "
                                          "copy of it")
    config = _read_backbone(given, "--backbone")
    if base is not None and base != given:
        try:
            _, base_config = load_tokenizer(base)
        except BackboneError:
            base_config = None  # not readable here (offline hub name): family and width are still checked
        if base_config is not None and _architecture(base_config) != _architecture(config):
            raise PeftImportError(f"the adapter was trained on {recorded!r} ({_architecture(base_config)}) but "
                                  f"--backbone {given!r} is another model ({_architecture(config)}) — a prompt only "
                                  "works on the backbone it was trained on: pass that one (or leave --backbone out)")
    return given, config


def task_declaration(task: str | dict, family: str, verbalizers: list[str] | None) -> str | dict:
    """``data.task`` for the config: the task as given, or with ``verbalizers`` its declaration with those words
    for ``family``; refused (naming ``--verbalizers``) when the task has no words for the family."""
    spec = get_task(task)
    if verbalizers is None:
        spec.words(family)  # refuses a task without words for this family
        return task
    declared = _plain(dataclasses.asdict(spec))
    declared["verbalizers"][family] = list(verbalizers)
    get_task(declared)  # one word per label, none blank: the task's own checks
    return declared


def _plain(value):
    """Tuples as lists, recursively (YAML writes lists; the task reader takes either)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _task_argument(task: str) -> str | dict:
    """A built-in task's name, or a YAML/JSON file declaring one (``data.task`` as a mapping)."""
    if task in TASKS or not Path(task).is_file():
        return task  # an unknown name is refused by get_task, listing the known ones
    try:
        declared = yaml.safe_load(Path(task).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PeftImportError(f"--task {task}: cannot read it as YAML ({type(err).__name__})") from None
    if not isinstance(declared, dict):
        raise PeftImportError(f"--task {task}: the file must hold one task declaration (a mapping)")
    return declared


def run_config(family: str, backbone: str, prompt_length: int, layout: str, task: str | dict) -> dict:
    """The config ``validate --config`` takes for the imported prompt, with the skill-neuron analysis."""
    positions = position_choices(family)[0]  # causal LM: last (where the label is read); T5: prompt
    return {"model": {"class_path": FAMILY_CLASSES[family],
                      "init_args": {"backbone": backbone, "prompt_length": prompt_length, "layout": layout}},
            "data": {"task": task},
            "trainer": {"callbacks": [{"class_path": "callbacks.skill_neurons.SkillNeuronCallback",
                                       "init_args": {"positions": positions}}]}}


def import_peft(source: str | Path, out: str | Path, task: str, verbalizers: list[str] | None = None,
                backbone: str | None = None, layout: str = "standard", force: bool = False) -> ImportedAdapter:
    """Convert the adapter folder ``source`` into the checkpoint ``out`` and its config ``out.yaml``."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise PeftImportError(f"{source} is not a folder — give the folder PEFT's save_pretrained wrote")
    config_file = out.with_suffix(".yaml")
    if out.is_dir():
        raise PeftImportError(f"--out {out} is a folder — give the checkpoint's file name (e.g. {out / 'prompt.ckpt'})")
    existing = [str(p) for p in (out, config_file) if p.exists()]
    if existing and not force:
        raise PeftImportError(f"{existing[0]} exists — pass --force to overwrite it")
    if layout not in LAYOUTS:
        raise PeftImportError(f"unknown --layout {layout!r}; choose standard or paper")
    adapter = read_adapter(source)
    name, config = resolve_backbone(adapter.base_model, backbone)
    family = family_of(config)
    if family != adapter.family:
        raise PeftImportError(f"the adapter is a {adapter.config['task_type']} prompt ({adapter.family}) but backbone "
                              f"{name!r} is a {family} model — use the backbone it was trained on")
    width = _architecture(config)["width"]
    if adapter.prompt.shape[1] != width:
        raise PeftImportError(f"the adapter's prompt is {adapter.prompt.shape[1]} wide (token_dim) but backbone "
                              f"{name!r} embeds tokens in {width} dimensions — use the backbone it was trained on")
    check_layout(family, layout, name, flag="--layout")
    data_task = task_declaration(_task_argument(task), family, verbalizers)
    weights = source / WEIGHTS_FILE
    imported_from = {
        "source": str(source.resolve()), "format": "peft", "peft_type": adapter.config["peft_type"],
        "task_type": adapter.config["task_type"], "base_model_name_or_path": adapter.base_model,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None,
        "stored_shape": list(adapter.stored_shape), "rows": [0, adapter.prompt.shape[0]], "layout": layout,
        "task": spec_name(data_task), "verbalizers": list(verbalizers) if verbalizers else None,
    }
    prompt = adapter.prompt  # (P, H) float32, the rows PEFT's forward reads
    import lightning

    write_checkpoint(out, prompt, module_hyper_parameters(family, name, prompt.shape[0], layout),
                     metadata(name, family, layout, tuple(prompt.shape), imported_from=imported_from),
                     lightning.__version__)
    text = yaml.safe_dump(run_config(family, name, prompt.shape[0], layout, data_task), sort_keys=False)
    atomic_write(config_file, lambda f: f.write(text))
    return ImportedAdapter(source, out, config_file, name, family, tuple(prompt.shape), imported_from)


def spec_name(task: str | dict) -> str:
    return task if isinstance(task, str) else str(task.get("name"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Turn a Hugging Face PEFT prompt-tuning adapter (PromptTuningConfig, CAUSAL_LM or "
                               "SEQ_2_SEQ_LM) into a prompt checkpoint and a config for validate/test, so its skill "
                               "neurons can be analysed.")
    parser.add_argument("source", type=Path, help="the adapter folder (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--task", required=True,
                        help="the task it was trained on: a built-in task name, or a YAML file declaring one")
    parser.add_argument("--verbalizers", nargs="+", metavar="WORD",
                        help="the label words the adapter was trained to produce, one per label in the task's order "
                             "(default: the task's words for the backbone's family)")
    parser.add_argument("--backbone", help="the base model (default: the adapter's base_model_name_or_path); it must "
                                           "be the model the adapter was trained on")
    parser.add_argument("--layout", choices=LAYOUTS, default="standard",
                        help="standard (default); paper only for a T5 prompt trained on P1's text format")
    parser.add_argument("--out", type=Path, required=True,
                        help="the checkpoint to write; its config goes beside it with the suffix .yaml")
    parser.add_argument("--force", action="store_true", help="overwrite an existing checkpoint and config")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``skill-neurons import-peft DIR --task T --out FILE``; 0 written, 2 refused."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        done = import_peft(args.source, args.out, args.task, args.verbalizers, args.backbone, args.layout, args.force)
    except UserError as err:  # PeftImportError, AdapterError, TaskError, the family rules' LayoutError ...
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    p, h = done.prompt_shape
    print(f"imported the {p} x {h} prompt of {done.source} for {done.backbone} ({done.family}) -> {done.out}")
    print(f"evaluate and analyse: skill-neurons validate --config {done.config_file} --ckpt_path {done.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
