"""attack.yaml and evaluate_attacks.yaml: ``skill-neurons attack`` on the trained prompts and their validation with
the generated sets (:func:`attack_sweeps`), one set per prompt or, with the transfer filter, one per task x backbone
(:func:`transfer_attack_sweeps`); :func:`attack_files` names them for the sweeps that read them."""

from experiment_sweeps import PAPER, Scale, _flow, _header, command_with, prompt_runs


# Where attack.yaml writes each prompt's set: the attack command fills in the prompt's fields (and --recipe).
ATTACK_FILE = "{attacks}/{{backbone}}/{{task}}/seed{{seed}}/{recipe}.jsonl"
# With the transfer filter (--attack_transfer): one set per task x backbone, evaluated by every seed's prompt.
TRANSFER_FILE = "{attacks}/{{backbone}}/{{task}}/transfer/{recipe}.jsonl"

ATTACK_COMMAND = """\
command:
  - ${{env}}
  - python
  - -m
  - skill_neurons.cli
  - attack
  - ${{args}}
  - --split=validation
{extra}  - --out={out}
"""


def attack_files(attacks: str, scale: Scale, transfer: bool = False) -> str:
    """``--data.extra_adversarial`` naming each recipe's set of the selected prompt (``{backbone}`` ... filled in
    by ``--from_run``): one adversarial source per recipe, named after it; ``transfer``: the task x backbone's
    transfer-filtered sets (``TRANSFER_FILE``), the same for every seed's prompt."""
    where = TRANSFER_FILE if transfer else ATTACK_FILE
    sets = ", ".join(f'{recipe}: {{file: "{where.format(attacks=attacks, recipe=recipe)}"}}'
                     for recipe in scale.attack_recipes)
    return f"--data.extra_adversarial={{{sets}}}"


def _attack_sweep(what: str, name: str, runs: str, root: str, scale: Scale, out: str | None, recipes: tuple,
                  options: str, out_file: str) -> str:
    """A sweep of ``skill-neurons attack`` trials: ``runs`` x ``recipes``, with the fixed ``options`` (YAML list
    lines) and ``--out=out_file``; no metric (an attack writes no run summary)."""
    limit = f"  - --max_examples={scale.attack_max_examples}\n" if scale.attack_max_examples else ""
    return _header(what, name, runs, root, scale, out, metric=False) + f"""\
  recipe:
    values: {_flow(recipes)}
""" + ATTACK_COMMAND.format(extra=limit + options, out=out_file)


def attacked_seeds(scale: Scale) -> tuple:
    return tuple(scale.attack_seeds or scale.seeds)


def check_suppression_covered(scale: Scale, transfer: bool = False) -> None:
    """suppression.yaml reads the generated sets of every prompt it suppresses: each must have been attacked."""
    missing_tasks = set(scale.suppression_tasks) - set(scale.attack_tasks)
    missing_seeds = set() if transfer else set(scale.seeds) - set(attacked_seeds(scale))
    if missing_tasks or missing_seeds:
        raise SystemExit(f"make_configs.py: suppression.yaml would read generated sets that attack.yaml does not make "
                         f"(tasks {sorted(missing_tasks)}, seeds {sorted(missing_seeds)}) — attack every suppressed "
                         "prompt (the scale's attack_tasks and attack_seeds)")


def attack_sweeps(root: str, attacks: str, scale: Scale = PAPER, out: str | None = None,
                  transfer: int | None = None) -> dict[str, str]:
    """``attack.yaml``: ``skill-neurons attack`` on the validation split of every fit run of ``scale.attack_tasks``
    (task x backbone x seed) x recipe, each set written to ``ATTACK_FILE`` under ``attacks``; and
    ``evaluate_attacks.yaml``: ``validate`` of every such prompt with its sets beside the task's own adversarial
    sets (each recipe an adversarial source of its own name), which the report reads. With ``transfer`` (k):
    :func:`transfer_attack_sweeps` instead."""
    if transfer is not None:
        return transfer_attack_sweeps(root, attacks, scale, out, transfer)
    runs = prompt_runs(root, scale, tasks=scale.attack_tasks, seeds=scale.attack_seeds)
    attack = _attack_sweep("Attacks: every trained prompt's validation split attacked by each recipe (skill-neurons "
                           "attack), one set per task x backbone x seed x recipe", "attack", runs, root, scale, out,
                           scale.attack_recipes, f"  - --keep={scale.attack_keep}\n" if scale.attack_keep else "",
                           ATTACK_FILE.format(attacks=attacks, recipe="{recipe}"))
    evaluate = _header("The attacked prompts evaluated on their generated sets beside the task's own adversarial "
                       "sets (run after attack.yaml)", "evaluate_attacks", runs, root, scale, out) + \
        command_with(attack_files(attacks, scale))
    # the tracked files' header names make_configs' command for other prompts: these two need --attacks too
    tracked = "--prompt_runs D/runs --out DIR\n"
    with_attacks = f"--prompt_runs D/runs --out DIR --attacks {attacks}\n"
    return {"attack": attack.replace(tracked, with_attacks),
            "evaluate_attacks": evaluate.replace(tracked, with_attacks)}


def transfer_attack_sweeps(root: str, attacks: str, scale: Scale, out: str | None, k: int) -> dict[str, str]:
    """One set per task x backbone and recipe, as AdvGLUE kept examples that transferred: ``attack.yaml`` attacks
    the first attacked seed's prompt with each model-in-the-loop recipe and keeps a row only when it succeeds and
    also fools at least ``k`` of the other seeds' prompts (``--transfer_runs``, ``--min_fooled``; the successful
    rows only, whatever the scale's ``attack_keep``), written to ``TRANSFER_FILE``; ``attack_noise.yaml`` (run
    after it) perturbs exactly those rows with as many random edits per word (``--match``); ``evaluate_attacks.yaml``
    validates every seed's prompt with the task x backbone's sets."""
    from skill_neurons.attack.recipes import MODEL_FREE

    seeds = attacked_seeds(scale)
    anchor, others = seeds[0], seeds[1:]
    if not 1 <= k <= len(others):
        raise SystemExit(f"make_configs.py: --attack_transfer {k}: a row can fool at most the {len(others)} other "
                         f"seeds' prompts ({', '.join(map(str, others)) or 'none'}) — give k between 1 and "
                         f"{len(others)}" if others else
                         f"make_configs.py: --attack_transfer needs prompts of two seeds or more; the scale attacks "
                         f"seed {anchor} only")
    model = tuple(r for r in scale.attack_recipes if r not in MODEL_FREE)
    free = tuple(r for r in scale.attack_recipes if r in MODEL_FREE)
    if not model:
        raise SystemExit("make_configs.py: --attack_transfer filters model-in-the-loop attacks, and the scale has "
                         f"none ({', '.join(scale.attack_recipes)}) — add one (deepwordbug, pruthi)")
    anchors = prompt_runs(root, scale, tasks=scale.attack_tasks, seeds=(anchor,))
    targets = "".join(f'  - "{root}?backbone={{backbone}}&task={{task}}&seed={seed}"\n' for seed in others)
    transfer_file = TRANSFER_FILE.format(attacks=attacks, recipe="{recipe}")
    sweeps = {"attack": _attack_sweep(
        f"Attacks with the transfer filter: each task x backbone's seed-{anchor} prompt attacked by each "
        f"recipe, a row kept when it also fools {k} of the seeds {', '.join(map(str, others))}' prompts (one set "
        "per task x backbone x recipe)", "attack", anchors, root, scale, out, model,
        f"  - --min_fooled={k}\n  - --transfer_runs\n{targets}", transfer_file)}
    if free:
        sweeps["attack_noise"] = _attack_sweep(
            f"The noise baseline of each transfer-filtered set (run after attack.yaml): the rows of its "
            f"{model[0]} set, as many random edits per word, no model queried", "attack_noise", anchors, root, scale,
            out, free, f"  - --match={TRANSFER_FILE.format(attacks=attacks, recipe=model[0])}\n", transfer_file)
    sweeps["evaluate_attacks"] = _header(
        "Every prompt of the attacked tasks evaluated on its task x backbone's transfer-filtered sets beside the "
        "task's own adversarial sets (run after attack.yaml and attack_noise.yaml)", "evaluate_attacks",
        prompt_runs(root, scale, tasks=scale.attack_tasks, seeds=seeds), root, scale, out) + \
        command_with(attack_files(attacks, scale, transfer=True))
    return sweeps
