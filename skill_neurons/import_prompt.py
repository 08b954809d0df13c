"""``skill-neurons import-prompt``: the paper's published prompts as this project's prompt checkpoints.

    skill-neurons import-prompt continuous_prompts/seed_33/SST2PromptRoberta/task_prompt \\
        --backbone roberta-base --out imported/sst2_seed33.ckpt
    skill-neurons import-prompt Robust-Neurons/ --out imported/      # every published prompt
    skill-neurons validate --config configs/roberta/sst2.yaml --ckpt_path imported/roberta/sst2/seed33.ckpt

P1 (``LeonAckermann/Robust-Neurons``) publishes its prompts as
``continuous_prompts/seed_<seed>/<Task>Prompt<Model>/task_prompt`` (``seed_33`` … ``seed_36``, and ``seed_su``
for Su et al.'s prompts — no seed recorded; ``<Model>`` ``Roberta`` or ``T5``), each a ``torch.save`` of one
100 × 768 tensor: the ``model`` entry of the ``<epoch>_task_prompt.pkl`` beside it (Prompt-Transferability's
epoch checkpoint: a dict of that tensor, the AdamW state, ``trained_epoch``, ``global_step``). P1's
``src/utils.py`` (``init_prompt``/``init_model``) loads it and assigns it to the prompt table (RoBERTa:
``roberta.embeddings.prompt_embeddings.weight``; T5: ``prompt_embeddings``/``prompt_tokens``).
Both are pickles. They are read here with ``torch.load(path, map_location="cpu", weights_only=True)`` only,
which rebuilds tensors, parameters and plain containers and refuses anything else — a file that needs
arbitrary code to load is refused with a message, never unpickled.

Accepted contents: a tensor (an ``nn.Parameter`` too) of shape (N, H) or (1, N, H), or a dict whose
top-level values hold exactly one such tensor (``<epoch>_task_prompt.pkl``; P2's ``{"prompt", "pos"}``);
``--key`` picks one when there are several. ``H`` must be the backbone's embedding width (read from its
config, so hub names, local directories and presets all work).

How P1's rows map onto this project's prompt
--------------------------------------------
``--layout paper`` (the default) runs each prompt exactly as P1's forward does (``datamodules/tasks.py``
``TaskSpec.paper`` and ``lightning_modules/masked_lm.py`` follow P1's formatters and models):

- RoBERTa (P1: ``src/formatter/*PromptRobertaFormatter.py``, ``src/models/modelling_roberta.py``
  ``RobertaEmbeddings.forward``): the input ids are ``[-1 … -100] <s> text </s>``; id ``-(k+1)`` looks up row
  ``k``, then sequence position 0 is overwritten with the ``<mask>`` word embedding, the first 100 positions
  get zero position embeddings, the text's position ids start at 2 as without a prompt, and the label is
  read at position 0 over P1's ids (words without a leading space; MNLI over [no, neutral, yes]). All 100
  rows are imported: under ``paper`` the module overwrites slot 0 with ``<mask>`` the same way, so row 0 —
  trained by P1 through the ``.data`` overwrite but never read — is never read here either.
- T5 (P1: ``src/formatter/*PromptT5Formatter.py``, ``src/models/modeling_t5.py`` ``T5Stack.forward``,
  ``PromptT5.py``): ``[-1 … -100]`` then P1's per-task text (``s </s>``; MNLI/QNLI ``hypothesis: … [SEP]
  sentence: premise: …`` without ``</s>``; QQP/MRPC ``s1 <extra_id_0> s2 </s>``); the label is the first
  decoder step restricted to each scored word's first sub-token (MNLI also scores ``neutral``). All rows.

What still differs is listed in the README ("Reproducing the paper"). ``--layout standard`` maps the prompt
onto this project's own input instead (``[prompt] <s> <mask> text </s>``; an approximation of P1's setting):
``--mask_slot drop`` (its default for masked LMs) imports rows 1 … 99, ``keep`` all 100. The evaluation uses
the verbalizer of ``--data.task`` for the layout: the built-in tasks declare P1's words and formats.

Output: a checkpoint ``skill-neurons validate``/``test`` accept with ``--ckpt_path`` — ``state_dict`` with
``prompt.weight`` (float32, (P, H)), ``skill_neurons`` (backbone, family, prompt_shape and ``imported_from``:
source path, sha256, seed, task, P1 folder, layout, mask slot, source rows), ``hyper_parameters`` (the module's
init arguments with ``_class_path``, as a fit checkpoint has them: LightningCLI takes ``backbone``,
``prompt_length`` and ``layout`` from there), ``pytorch-lightning_version``, ``epoch`` 0 and ``global_step`` 0. It holds no
optimizer state, so it cannot resume a ``fit``. Directory mode writes
``OUT_DIR/<model>/<task>/seed<seed>.ckpt`` (``roberta``/``t5``; P1 task names mapped to this project's,
others lower-cased and listed) and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightning_modules.backbones import BackboneError, family_of, load_tokenizer
from lightning_modules.prompt_tuning import PromptTuningModule
from lightning_modules.rules import check_layout
from records.errors import UserError
from records.prompt_checkpoint import FAMILY_CLASSES, metadata, write_checkpoint
from skill_neurons.flags import old_spellings

PROMPT_FILE = "task_prompt"
P1_REPOSITORY = "LeonAckermann/Robust-Neurons"
# P1 task folder name (lower-cased) -> this project's built-in task (datamodules/tasks.py TASKS).
P1_TASKS = {"sst2": "sst2", "imdb": "imdb", "movierationales": "movie_rationales", "qnli": "qnli", "mnli": "mnli",
            "qqp": "qqp", "mrpc": "mrpc", "rte": "rte", "ethicsdeontology": "ethics_deontology",
            "ethicsjustice": "ethics_justice"}
# P1 model suffix -> (family, the backbone P1 used: src/models/PromptRoberta.py, PromptBert.py, PromptT5.py).
P1_MODELS = {"Roberta": ("masked_lm", "roberta-base"), "RobertaLarge": ("masked_lm", "roberta-large"),
             "Bert": ("masked_lm", "bert-base-uncased"), "T5": ("seq2seq", "t5-base"),
             "T5Small": ("seq2seq", "t5-small"), "T5XXL": ("seq2seq", "google/t5-xxl-lm-adapt")}
# Imported without --backbone in directory mode: the two models of the paper.
DEFAULT_BACKBONES = {"Roberta": "roberta-base", "T5": "t5-base"}
MASK_SLOTS = ("drop", "keep")
PROG = "skill-neurons import-prompt"
RENAMED = {"--mask-slot": "--mask_slot"}  # old spelling -> new (kept for one release)
LAYOUTS = ("paper", "standard")
# seed_33 … seed_36, and seed_su: the prompts of Su et al. (Prompt-Transferability) that P1 uses as a fifth.
SEED_DIR = re.compile(r"^seed_?([A-Za-z0-9]+)$|^(\d+)$")


class PromptImportError(UserError, ValueError):
    """A prompt that cannot be imported; the message names the fix."""


@dataclass
class P1Location:
    """What a published prompt's path says: ``…/seed_<seed>/<Task>Prompt<Model>/task_prompt``."""

    folder: str
    p1_task: str
    model: str
    seed_label: str | None  # "33" or "su" (from seed_33, seed_su); None outside a seed folder

    @property
    def seed(self) -> int | None:
        return int(self.seed_label) if self.seed_label and self.seed_label.isdigit() else None

    @property
    def task(self) -> str:
        """This project's task name (``movierationales`` -> ``movie_rationales``), else P1's lower-cased."""
        return P1_TASKS.get(self.p1_task.lower(), self.p1_task.lower())


def p1_location(path: Path) -> P1Location | None:
    """Parse P1's layout from a prompt file's path; ``None`` when the path does not follow it."""
    folder = path.parent.name
    p1_task, sep, model = folder.rpartition("Prompt")
    if not sep or not p1_task or model not in P1_MODELS:
        return None
    seed = SEED_DIR.match(path.parent.parent.name)
    return P1Location(folder, p1_task, model, (seed.group(1) or seed.group(2)) if seed else None)


# ----------------------------------------------------------------------------------------------------
# Reading the published file
# ----------------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_prompt_tensor(path: Path, key: str | None = None) -> tuple[torch.Tensor, str]:
    """The (N, H) float32 prompt stored in ``path`` and a word on where it was (``tensor`` or ``dict[key]``).

    Only ``weights_only=True`` loading: a pickle that needs any other class or function is refused.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only=True raises for anything but tensors & containers
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickle it can parse at all
            reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
            raise PromptImportError(
                f"cannot read {path} as a torch.save file of tensors (weights_only=True: "
                f"{reason.group(1) if reason else 'refused'}) — pass the task_prompt file itself"
            ) from None
        raise PromptImportError(
            f"{path} is a pickle that needs {found.group(1)} to load, so it is refused: only "
            "torch.load(weights_only=True) is used here, and loading it any other way would run whatever code the "
            "pickle names. Published prompts are plain tensors (torch.save(tensor)). If you trust the file, "
            "extract the prompt tensor yourself in a separate Python session, torch.save(tensor) it and import "
            "that file."
        ) from None
    except (RuntimeError, KeyError, EOFError, OSError, ValueError) as err:  # what torch raises on unreadable files
        raise PromptImportError(f"cannot read {path} as a torch.save file ({type(err).__name__}: {err}) — "
                                "pass the task_prompt file itself") from None
    if isinstance(obj, dict):
        candidates = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and _prompt_like(v)}
        if key is not None:
            if key not in obj:
                raise PromptImportError(f"{path} has no key {key!r}; its keys: {', '.join(map(str, obj))}")
            tensor, where = obj[key], f"dict[{key}]"
            if not isinstance(tensor, torch.Tensor):
                raise PromptImportError(f"{path}[{key!r}] is a {type(tensor).__name__}, not a tensor")
        elif len(candidates) == 1:
            (name, tensor), = candidates.items()
            where = f"dict[{name}]"
        else:
            shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in obj.items() if isinstance(v, torch.Tensor))
            raise PromptImportError(
                f"{path} is a dict with {len(candidates)} prompt-shaped tensors ({shapes or 'none'}) — "
                "pick one with --key NAME"
            )
    elif isinstance(obj, torch.Tensor):
        tensor, where = obj, "tensor"
    else:
        raise PromptImportError(f"{path} holds a {type(obj).__name__}, not a prompt tensor (N × width)")
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]  # (1, N, H) as P2 saves it
    if tensor.dim() != 2:
        raise PromptImportError(f"{path}: the prompt has shape {tuple(tensor.shape)}; expected (N, width)")
    if not tensor.is_floating_point():
        raise PromptImportError(f"{path}: the prompt is {tensor.dtype}, expected floating point")
    tensor = tensor.detach().to(torch.float32).contiguous()
    if not torch.isfinite(tensor).all():
        raise PromptImportError(f"{path}: the prompt contains NaN or infinite values")
    return tensor, where


def _prompt_like(tensor: torch.Tensor) -> bool:
    return tensor.dim() == 2 or (tensor.dim() == 3 and tensor.shape[0] == 1)


# ----------------------------------------------------------------------------------------------------
# The backbone and the checkpoint
# ----------------------------------------------------------------------------------------------------


@dataclass
class BackboneInfo:
    """What the checkpoint needs of a backbone: its family and embedding width (from its config alone)."""

    name: str
    family: str
    width: int


def backbone_info(name: str, cache: dict[str, BackboneInfo] | None = None) -> BackboneInfo:
    """Read ``name``'s config (hub name, local directory or preset) without loading its weights."""
    if cache is not None and name in cache:
        return cache[name]
    try:
        _, config = load_tokenizer(name)
        family = family_of(config)
    except BackboneError as err:
        raise PromptImportError(f"{err} (here: --backbone NAME, or MODEL=NAME for a folder)") from None
    # The width of the input embeddings (ELECTRA/ALBERT: embedding_size; T5: d_model via hidden_size).
    width = getattr(config, "embedding_size", None) or config.hidden_size
    info = BackboneInfo(name, family, int(width))
    if cache is not None:
        cache[name] = info
    return info


def module_hyper_parameters(family: str, backbone: str, prompt_length: int, layout: str = "paper") -> dict:
    """The init arguments of the prompt-tuning module (defaults, with this backbone and length) and
    ``_class_path``, as LightningCLI stores them in a fit checkpoint."""
    params = inspect.signature(PromptTuningModule.__init__).parameters
    hparams = {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}
    hparams.update(backbone=backbone, prompt_length=prompt_length, layout=layout)
    return {"_class_path": FAMILY_CLASSES[family], **hparams}


@dataclass
class Imported:
    """One imported prompt: where it came from and where it went."""

    source: Path
    out: Path
    backbone: str
    prompt_shape: tuple[int, int]
    imported_from: dict = field(default_factory=dict)


def import_prompt(source: Path, out: Path, backbone: str, family: str | None = None, mask_slot: str | None = None,
                  task: str | None = None, seed: int | None = None, key: str | None = None, force: bool = False,
                  cache: dict[str, BackboneInfo] | None = None, layout: str = "paper") -> Imported:
    """Convert one published prompt file into a prompt checkpoint at ``out`` (see the module docstring)."""
    source = Path(source)
    if not source.is_file():
        raise PromptImportError(f"{source} is not a file")
    out = Path(out)
    if out.is_dir():
        raise PromptImportError(f"--out {out} is a directory — a single prompt file becomes one checkpoint: give its "
                                f"file name (e.g. --out {out / source.with_suffix('.ckpt').name})")
    if out.exists() and not force:
        raise PromptImportError(f"{out} exists — pass --force to overwrite it")
    info = backbone_info(backbone, cache)
    where = p1_location(source)
    source_family = family or (P1_MODELS[where.model][0] if where else info.family)
    if source_family not in FAMILY_CLASSES:
        raise PromptImportError(f"unknown family {source_family!r}; choose one of {', '.join(FAMILY_CLASSES)}")
    if source_family != info.family:
        raise PromptImportError(
            f"{source} is a {source_family} prompt but backbone {backbone!r} is a {info.family} model — a prompt "
            "only works on the backbone it was trained with (P1: PromptRoberta -> roberta-base, PromptT5 -> t5-base)"
        )
    if layout not in LAYOUTS:
        raise PromptImportError(f"unknown --layout {layout!r}; choose paper or standard")
    check_layout(source_family, layout, backbone, flag="--layout")
    if mask_slot is None:
        mask_slot = "drop" if source_family == "masked_lm" and layout == "standard" else "keep"
    if mask_slot not in MASK_SLOTS:
        raise PromptImportError(f"unknown --mask_slot {mask_slot!r}; choose drop or keep")
    if mask_slot == "drop" and source_family != "masked_lm":
        raise PromptImportError("T5 prompts have no <mask> slot (P1's T5 input is [100 prompt vectors] text </s>) "
                                "— leave --mask_slot out (or keep) for seq2seq prompts")
    if layout == "paper" and mask_slot == "drop":
        raise PromptImportError("--layout paper keeps every row (slot 0 is overwritten with <mask> at run time, as in "
                                "P1) — leave --mask_slot out, or use --layout standard --mask_slot drop")

    rows, stored_as = load_prompt_tensor(source, key)  # (N, H)
    if rows.shape[1] != info.width:
        raise PromptImportError(
            f"{source}: the prompt is {rows.shape[1]} wide but backbone {backbone!r} embeds tokens in "
            f"{info.width} dimensions — use the backbone the prompt was trained with (P1's prompts are 768 wide: "
            "roberta-base, t5-base)"
        )
    first = 1 if mask_slot == "drop" else 0
    if rows.shape[0] <= first:
        raise PromptImportError(f"{source}: {rows.shape[0]} prompt row(s) leave nothing after dropping the mask slot")
    prompt = rows[first:].clone()  # (P, H)

    imported_from = {
        "source": str(source.resolve()), "sha256": sha256_of(source), "stored_as": stored_as,
        "source_shape": list(rows.shape), "rows": [first, rows.shape[0]], "mask_slot": mask_slot, "layout": layout,
        "source_family": source_family,
        "seed": seed if seed is not None else (where.seed if where else None),
        "task": task or (where.task if where else None),
        "seed_folder": source.parent.parent.name if where and where.seed_label else None,
        "p1_folder": where.folder if where else None, "p1_task": where.p1_task if where else None,
        "p1_model": where.model if where else None, "repository": P1_REPOSITORY if where else None,
    }
    import lightning

    write_checkpoint(out, prompt, module_hyper_parameters(info.family, backbone, prompt.shape[0], layout),
                     metadata(backbone, info.family, layout, tuple(prompt.shape), imported_from=imported_from),
                     lightning.__version__)
    return Imported(source, out, backbone, tuple(prompt.shape), imported_from)


# ----------------------------------------------------------------------------------------------------
# Directory mode
# ----------------------------------------------------------------------------------------------------


def find_published(root: Path) -> tuple[list[tuple[Path, P1Location]], list[Path]]:
    """Every ``task_prompt`` under ``root`` in P1's layout (sorted), and those that are not."""
    found, other = [], []
    for path in sorted(root.rglob(PROMPT_FILE)):
        where = p1_location(path)
        if where is not None and where.seed_label is not None and path.is_file():
            found.append((path, where))
        elif path.is_file():
            other.append(path)
    return found, other


def parse_backbones(values: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--backbone MODEL=NAME`` pairs (``Roberta=roberta-base``) and bare names."""
    mapped, bare = {}, []
    for value in values:
        model, sep, name = value.partition("=")
        if sep and model in P1_MODELS:
            mapped[model] = name
        elif sep and re.fullmatch(r"[A-Za-z0-9]+", model):
            raise PromptImportError(f"--backbone {value}: unknown P1 model {model!r}; known: {', '.join(P1_MODELS)}")
        else:
            bare.append(value)
    return mapped, bare


def import_directory(root: Path, out_dir: Path, backbones: list[str], mask_slot: str | None = None,
                     key: str | None = None, force: bool = False,
                     layout: str = "paper") -> tuple[list[Imported], list[tuple[str, str]]]:
    """Import every published prompt under ``root`` into ``out_dir/<model>/<task>/seed<seed>.ckpt``.

    ``backbones``: ``MODEL=NAME`` pairs and/or bare names (a bare name serves every P1 model of its family);
    none given: P1's ``Roberta=roberta-base`` and ``T5=t5-base``. Folders of other models are skipped.
    Returns the imports and the skipped folders with the reason.
    """
    found, other = find_published(root)
    if not found:
        raise PromptImportError(f"no {PROMPT_FILE} files in P1's layout (continuous_prompts/seed_<seed>/"
                                f"<Task>Prompt<Model>/{PROMPT_FILE}) under {root}")
    mapped, bare = parse_backbones(backbones) if backbones else (dict(DEFAULT_BACKBONES), [])
    cache: dict[str, BackboneInfo] = {}
    by_family = {}
    for name in bare:
        by_family.setdefault(backbone_info(name, cache).family, name)
    elsewhere = f"not in P1's layout …/seed_<seed>/<Task>Prompt<Model>/{PROMPT_FILE}"
    plan, skipped = [], [(str(path), elsewhere) for path in other]
    for path, where in found:
        backbone = mapped.get(where.model) or by_family.get(P1_MODELS[where.model][0])
        if backbone is None:
            skipped.append((str(path), f"no backbone for P1 model {where.model} (add --backbone {where.model}=NAME)"))
            continue
        target = out_dir / where.model.lower() / where.task / f"seed{where.seed_label}.ckpt"
        plan.append((path, where, backbone, target))
    existing = [str(target) for *_, target in plan if target.exists()]
    if existing and not force:
        raise PromptImportError(f"{len(existing)} output(s) exist, e.g. {existing[0]} — pass --force to overwrite")
    imported = [import_prompt(path, target, backbone, mask_slot=mask_slot, key=key, force=force, cache=cache,
                              layout=layout)
                for path, where, backbone, target in plan]
    return imported, skipped


def _seed_cell(imported_from: dict) -> str:
    if imported_from.get("seed") is not None:
        return str(imported_from["seed"])
    return (imported_from.get("seed_folder") or "-").removeprefix("seed_")


def format_table(imported: list[Imported]) -> str:
    """One row per imported prompt: seed, P1 folder, task, rows kept, backbone, output."""
    header = ("seed", "P1 folder", "task", "rows", "P x H", "backbone", "checkpoint")
    rows = [header] + [
        (_seed_cell(i.imported_from), i.imported_from["p1_folder"] or "-", i.imported_from["task"] or "-",
         "{}..{}".format(i.imported_from["rows"][0], i.imported_from["rows"][1] - 1),
         f"{i.prompt_shape[0]} x {i.prompt_shape[1]}", i.backbone, str(i.out))
        for i in imported
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert P1's published prompts (LeonAckermann/Robust-Neurons continuous_prompts/…/task_prompt) "
                    "into prompt checkpoints for `skill-neurons validate/test --ckpt_path`. Files are read with "
                    "torch.load(weights_only=True) only.",
    )
    parser.add_argument("source", type=Path,
                        help="a task_prompt file, or a folder holding "
                             "continuous_prompts/seed_<seed>/<Task>Prompt<Model>/")
    parser.add_argument("--out", type=Path, required=True,
                        help="checkpoint to write (file mode), or the folder for <model>/<task>/seed<seed>.ckpt "
                             "(folder mode)")
    parser.add_argument("--backbone", action="append", default=[],
                        help="backbone (hub name, local directory or preset) the prompt was trained for; file mode: "
                             "default P1's for a …Prompt<Model> folder (roberta-base, t5-base); folder mode: "
                             "MODEL=NAME pairs (Roberta=roberta-base T5=t5-base, the default) or a name per family")
    parser.add_argument("--family", choices=tuple(FAMILY_CLASSES),
                        help="the family the prompt was trained for (default: from the …Prompt<Model> folder, else "
                             "the backbone's); it must be the backbone's")
    parser.add_argument("--layout", choices=LAYOUTS, default="paper",
                        help="paper (default): run the prompt as P1's forward does, all rows kept; standard: this "
                             "project's own input (an approximation)")
    parser.add_argument("--mask_slot", choices=MASK_SLOTS, default=None,
                        help="--layout standard, masked LMs: drop P1's <mask> slot (row 0; default) or keep all rows")
    parser.add_argument("--task", help="this project's task name to record (default: from the P1 folder name)")
    parser.add_argument("--seed", type=int, help="seed to record (default: from the seed_<seed> folder)")
    parser.add_argument("--key", help="for a dict holding several tensors: the key of the prompt")
    parser.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``skill-neurons import-prompt …``; returns the exit code (0 imported, 2 refused, 1 a file that cannot be
    written)."""
    argv = old_spellings(sys.argv[1:] if argv is None else argv, RENAMED, PROG)
    args = build_parser().parse_args(argv)
    try:
        if args.source.is_dir():
            if args.task or args.seed is not None:
                raise PromptImportError("--task/--seed apply to one file; folder mode reads them from the folder names")
            imported, skipped = import_directory(args.source, args.out, args.backbone, args.mask_slot, args.key,
                                                 args.force, args.layout)
            print(format_table(imported))
            unknown = sorted({i.imported_from["task"] for i in imported
                              if i.imported_from["p1_task"].lower() not in P1_TASKS})
            if unknown:
                print(f"not built-in tasks (kept lower-cased; declare them under data.task to evaluate): "
                      f"{', '.join(unknown)}")
            for path, reason in skipped:
                print(f"skipped {path}: {reason}")
            print(f"imported {len(imported)} prompt(s) into {args.out}")
            return 0
        if not args.source.exists():
            raise PromptImportError(f"{args.source} does not exist")
        if len(args.backbone) > 1:
            raise PromptImportError("give one --backbone for a single file")
        where = p1_location(args.source)
        if args.backbone:
            backbone = args.backbone[0]
        elif where is not None:
            backbone = P1_MODELS[where.model][1]
        else:
            raise PromptImportError(f"{args.source} is not in a …Prompt<Model>/ folder — pass --backbone NAME")
        result = import_prompt(args.source, args.out, backbone, args.family, args.mask_slot, args.task, args.seed,
                               args.key, args.force, layout=args.layout)
    except UserError as err:  # PromptImportError, the family rules' LayoutError, a backbone that cannot load ...
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    p, h = result.prompt_shape
    first, end = result.imported_from["rows"]
    print(f"imported rows {first}..{end - 1} of {result.source} as a {p} x {h} prompt for {result.backbone} "
          f"(layout: {result.imported_from['layout']}, mask slot: {result.imported_from['mask_slot']}) -> {result.out}")
    print(f"evaluate: skill-neurons validate --config <config of the task> --model.prompt_length={p} "
          f"--ckpt_path {result.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
