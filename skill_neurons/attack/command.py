"""``skill-neurons attack``: an adversarial set made against a fit run's tuned prompt (README, "Attacks").

    skill-neurons attack --from_run runs/<id> --out adv/deepwordbug.jsonl
    skill-neurons attack --from_run runs/<id> --recipe pruthi --split validation --out adv/pruthi.jsonl
    skill-neurons attack --from_run runs/<id> --recipe noise --match adv/deepwordbug.jsonl --out adv/noise.jsonl

Every user mistake (unknown recipe, a run without a best checkpoint, a split without labels, a budget of 0
words, a transfer run of another task or backbone, an ``--out`` holding another attack) is refused with one line
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from records.summary import BEST_CHECKPOINT, CHECKPOINT_DIR
from skill_neurons.attack import AttackError
from skill_neurons.attack.edits import edit_distance
from skill_neurons.attack.output import AttackFile, read_meta, sha256_of
from skill_neurons.attack.recipes import MODEL_FREE, RECIPES, Constraints, Example
from skill_neurons.runs import best_prompt_run

if TYPE_CHECKING:  # the model side (Lightning, transformers) loads only once an attack runs, not for --help
    from skill_neurons.attack.driver import Attacked
    from skill_neurons.attack.model import PromptModel

PROG = "skill-neurons attack"
DEFAULT_RECIPE = "deepwordbug"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Attack a fit run's tuned prompt (the frozen backbone and the prompt as a black box: the label "
        "probabilities over the verbalizers) and write the adversarial set as jsonl, readable by "
        "--data.extra_adversarial, with a FILE.meta.json sidecar. A killed attack resumes when run again."))
    add = parser.add_argument
    add("--from_run", required=True, help="the fit run: runs/<id>, or ROOT?task=...&seed=... (as validate's)")
    add("--out", required=True, type=Path, help="the jsonl file to write (resumed when it holds this attack)")
    add("--recipe", default=DEFAULT_RECIPE, help=f"{', '.join(RECIPES)} (default {DEFAULT_RECIPE}); noise "
        "queries no model")
    add("--split", default="validation", help="the labelled split to attack (default validation)")
    add("--seed", type=int, default=0, help="randomness of the edits (each example: seed and its row)")
    add("--word_budget", type=float, default=0.15, help="most words changed, a fraction of the text's words "
        "(rounded up; default 0.15, AdvGLUE's)")
    add("--max_edit_distance", type=int, default=1, help="most character edits per word (default 1)")
    add("--min_word_length", type=int, default=2, help="shortest word edited (default 2; pruthi: at least 4)")
    add("--keep", choices=("successful", "all"), default="successful",
        help="rows written: the successful attacks only (default; noise: every perturbed row), or all")
    add("--transfer_runs", nargs="+", default=[], help="other fit runs (seeds) of the same task and backbone: "
        "keep a row only if it also fools --min_fooled of them")
    add("--min_fooled", type=int, default=1, help="with --transfer_runs: how many of them a row must fool")
    add("--match", type=Path, help="noise only: an attack's jsonl; perturb its examples with as many edits per "
        "word as it made")
    add("--max_examples", type=int, help="attack only the first N rows of the split")
    add("--batch_size", type=int, default=64, help="texts per forward (default 64)")
    add("--chunk", type=int, default=32, help="examples attacked together and written at once (default 32)")
    add("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add("--precision", help="the forwards' precision, a --trainer.precision value (32-true, bf16-mixed, 16-mixed, "
        "bf16-true, 16-true, 64-true; default: the run's, as validate --from_run evaluates it)")
    add("--allow_incomplete", action="store_true", help="attack the best prompt of a run that is not finished")
    add("--wandb", choices=("auto", "off"), default="auto", help="log the set as a W&B dataset artifact (auto: "
        "offline without credentials) or not")
    return parser


def check_options(args: argparse.Namespace) -> None:
    if args.recipe not in RECIPES:
        raise AttackError(f"--recipe {args.recipe!r} is not a recipe — use one of {', '.join(RECIPES)}")
    if not 0 < args.word_budget <= 1:
        raise AttackError(f"--word_budget {args.word_budget}: give a fraction of the words in (0, 1], e.g. 0.15 "
                          "(a budget of 0 words changes nothing)")
    for name in ("max_edit_distance", "min_word_length", "batch_size", "chunk", "min_fooled", "max_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AttackError(f"--{name} {value}: give a whole number of at least 1")
    if args.match is not None and args.recipe != "noise":
        raise AttackError("--match is for --recipe noise (it matches the noise to an attack's edits)")
    if args.transfer_runs and args.recipe in MODEL_FREE:
        raise AttackError("--transfer_runs filters model-in-the-loop attacks; noise queries no model — leave it out")
    if args.transfer_runs and args.min_fooled > len(args.transfer_runs):
        raise AttackError(f"--min_fooled {args.min_fooled} is more than the {len(args.transfer_runs)} "
                          "--transfer_runs — give at most that many")
    if args.out.suffix != ".jsonl":
        raise AttackError(f"--out {args.out}: give a .jsonl file (it is read as jsonl by --data.extra_adversarial)")


def raw_label(task, label: int):
    """The label as the task's files spell it, so the written file reads back to the same label id."""
    name = task.label_names[label]
    for raw, mapped in task.label_map.items():
        if mapped == name and task.label_id(raw) == label:
            return raw
    return label


def matched_edits(path: Path, split: str) -> dict[int, list[int]]:
    """``--match``: per example row, the edit distance of each word the attack in ``path`` changed."""
    meta = read_meta(path)
    if not path.is_file() or meta is None:
        raise AttackError(f"--match {path}: no attack file there (with its .meta.json) — give a file written by "
                          "skill-neurons attack")
    if meta["settings"].get("split") != split:
        raise AttackError(f"--match {path} attacked the {meta['settings'].get('split')} split — use that --split")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["idx"]: [edit_distance(c["original"], c["perturbed"]) for c in row["words_changed"]] for row in rows}


def transfer_prompts(model: PromptModel, specs: list[str], allow: bool) -> tuple[list, list[dict]]:
    """The best prompts of the transfer runs; refused unless each has the attacked run's task, backbone, layout and
    prompt shape."""
    prompts, records = [], []
    for spec in specs:
        run = best_prompt_run(spec, allow, option="--transfer_runs")
        other = type(model)(run, str(model.device), model.batch_size, model.precision)
        mine, theirs = model.settings, other.settings
        for name in ("task", "backbone", "layout"):
            if getattr(mine, name) != getattr(theirs, name):
                raise AttackError(f"--transfer_runs {spec}: its {name} is {getattr(theirs, name)!r}, the attacked "
                                  f"run's {getattr(mine, name)!r} — give runs (other seeds) of the same task and "
                                  "backbone")
        if run.resolve() == model.run.resolve():
            raise AttackError(f"--transfer_runs {spec} is the attacked run itself — give the other seeds' runs")
        prompt = model.prompt_of(run)
        if tuple(prompt.shape) != tuple(model.model.prompt.weight.shape):
            raise AttackError(f"--transfer_runs {spec}: its prompt is {tuple(prompt.shape)}, the attacked run's "
                              f"{tuple(model.model.prompt.weight.shape)} — give runs with the same prompt_length")
        prompts.append(prompt)
        records.append({"run": run.name, "checkpoint_sha256": sha256_of(run / CHECKPOINT_DIR / BEST_CHECKPOINT)})
    return prompts, records


def row_of(task, a: Attacked) -> dict:
    """One output row: the task's fields (perturbed), ``original_<field>`` for each perturbed one, the label,
    the source row, the words changed, the forwards spent and whether the attack succeeded."""
    ex, out = a.example, a.outcome
    row = {f: out.fields[f] for f in task.text_fields}
    row.update({f"original_{f}": ex.fields[f] for f in task.text_fields if out.fields[f] != ex.fields[f]})
    row.update(label=raw_label(task, ex.label), idx=ex.idx, words_changed=out.changes, queries=a.queries,
               success=out.success)
    if a.fooled is not None:
        row["transfer_fooled"] = a.fooled
    return row


def kept(a: Attacked, keep: str, noise: bool) -> bool:
    if keep == "all":
        return True
    return bool(a.outcome.changes) if noise else a.outcome.success


def tally(counts: dict, attacked: list[Attacked], written: int) -> None:
    for a in attacked:
        status = a.outcome.status
        counts["examples"] += 1
        counts["outcomes"][status] = counts["outcomes"].get(status, 0) + 1
        counts["attacked"] += status in ("succeeded", "failed")
        counts["succeeded"] += a.outcome.success
        counts["queries"] += a.queries
        counts["words_changed"] += len(a.outcome.changes) if a.outcome.success or status == "noise" else 0
    counts["rows_written"] += written


def main(argv: list[str] | None = None) -> int:
    """``skill-neurons attack …``; returns the exit code (0: the set is complete)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check_options(args)
    from skill_neurons.attack.driver import attack_chunk, count_fooled
    from skill_neurons.attack.model import PromptModel
    from skill_neurons.attack.tracking import log_dataset

    run = best_prompt_run(args.from_run, args.allow_incomplete)
    model = PromptModel(run, args.device, args.batch_size, args.precision)
    noise = args.recipe in MODEL_FREE
    task = model.task
    scored, extra = task.scored_words(model.data.family, model.data.layout)
    protected = frozenset(w.lower() for words in (*task.verbalizers.values(), scored, extra, task.label_names)
                          for w in words)
    constraints = Constraints(args.word_budget, args.max_edit_distance, args.min_word_length, protected)
    rows = model.rows(args.split, args.max_examples or model.data.hparams.max_eval_samples)
    match = matched_edits(args.match, args.split) if args.match is not None else None
    if match is not None:
        rows = [r for r in rows if r["idx"] in match]
    prompts, transfer = transfer_prompts(model, args.transfer_runs, args.allow_incomplete)
    if not noise:
        model.model  # a backbone that cannot load fails here, before anything is written
    settings = {"recipe": args.recipe, "seed": args.seed, "source_run": run.name,
                "checkpoint_sha256": model.checkpoint_sha256, "task": task.name, "backbone": model.settings.backbone,
                "split": args.split, "rows": len(rows), "constraints": constraints.to_json(), "keep": args.keep,
                "transfer_runs": transfer, "min_fooled": args.min_fooled if transfer else None,
                "match": sha256_of(args.match) if args.match else None, "batch_size": args.batch_size,
                "precision": model.precision,
                "chunk": args.chunk}
    file = AttackFile(args.out, settings)
    earlier = file.check()
    if earlier is not None and earlier.get("complete"):
        print(f"{args.out} is complete ({earlier['counts']['rows_written']} rows); nothing to do")
        return 0
    fresh = {"source_run_dir": str(run), "progress": {"examples_done": 0, "bytes": 0},
             "counts": {"examples": 0, "attacked": 0, "succeeded": 0, "rows_written": 0, "queries": 0,
                        "words_changed": 0, "outcomes": {}}, "seconds": 0.0}
    meta = file.start(earlier, fresh)
    counts, seconds = json.loads(json.dumps(meta["counts"])), float(meta["seconds"])
    done = meta["progress"]["examples_done"]
    recipe = RECIPES[args.recipe]
    bar = progress_bar(len(rows), done, args.recipe)
    for start in range(done, len(rows), args.chunk):
        began = time.perf_counter()
        examples = [Example({f: r[f] for f in task.text_fields}, r["label"], r["idx"],
                            random.Random(f"{args.seed}:{r['idx']}"), match.get(r["idx"]) if match else None)
                    for r in rows[start:start + args.chunk]]
        attacked = attack_chunk(examples, recipe, constraints, model)
        if prompts:
            count_fooled(attacked, model, prompts)
            for a in attacked:
                a.outcome.success = a.outcome.success and a.fooled >= args.min_fooled
        written = [row_of(task, a) for a in attacked if kept(a, args.keep, noise)]
        seconds += time.perf_counter() - began
        tally(counts, attacked, len(written))
        file.meta.update(counts=counts, seconds=seconds)
        file.append(written, {"examples_done": start + len(examples)})
        bar.update(len(examples))
        bar.set_postfix(success=f"{counts['succeeded']}/{max(counts['attacked'], 1)}", refresh=False)
    bar.close()
    summary = finish_summary(counts, seconds, noise)
    file.finish(summary)
    print(f"{args.out}: {counts['rows_written']} rows; {summary['success_rate']:.1%} of {counts['attacked']} "
          f"attacked examples fooled; {counts['queries']} queries ({summary['queries_per_second']:.1f}/s)"
          if not noise else f"{args.out}: {counts['rows_written']} noisy rows (no model queries)")
    if args.wandb != "off":
        file.finish({"wandb": log_dataset(args.out, file.meta, model)})  # the artifact, and the prompt it links to
    return 0


def finish_summary(counts: dict, seconds: float, noise: bool) -> dict:
    attacked = counts["attacked"]
    return {"success_rate": counts["succeeded"] / attacked if attacked else (math.nan if not noise else None),
            "mean_words_changed": (counts["words_changed"] / max(counts["succeeded"], 1)) if not noise else
            counts["words_changed"] / max(counts["outcomes"].get("noise", 0), 1),
            "queries_per_second": counts["queries"] / seconds if seconds else 0.0}


def progress_bar(total: int, done: int, recipe: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=f"attack ({recipe})", unit="example", disable=None, file=sys.stderr)
