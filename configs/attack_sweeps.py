"""attack.yaml and evaluate_attacks.yaml: ``skill-neurons attack`` on the trained prompts and their validation with
the generated sets (:func:`attack_sweeps`)."""

from experiment_sweeps import PAPER, SWEEP_COMMAND, Scale, _flow, _header, prompt_runs


# Where attack.yaml writes each prompt's set: the attack command fills in the prompt's fields (and --recipe).
ATTACK_FILE = "{attacks}/{{backbone}}/{{task}}/seed{{seed}}/{recipe}.jsonl"

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


def attack_files(attacks: str, scale: Scale) -> str:
    """``--data.extra_adversarial`` naming each recipe's set of the selected prompt (``{backbone}`` ... filled in
    by ``--from_run``): one adversarial source per recipe, named after it."""
    sets = ", ".join(f'{recipe}: {{file: "{ATTACK_FILE.format(attacks=attacks, recipe=recipe)}"}}'
                     for recipe in scale.attack_recipes)
    return f"--data.extra_adversarial={{{sets}}}"


def attack_sweeps(root: str, attacks: str, scale: Scale = PAPER, out: str | None = None) -> dict[str, str]:
    """``attack.yaml``: ``skill-neurons attack`` on the validation split of every fit run of ``scale.attack_tasks``
    (task x backbone x seed) x recipe, each set written to ``ATTACK_FILE`` under ``attacks``; and
    ``evaluate_attacks.yaml``: ``validate`` of every such prompt with its sets beside the task's own adversarial
    sets (each recipe an adversarial source of its own name), which the report reads."""
    runs = prompt_runs(root, scale, tasks=scale.attack_tasks, seeds=scale.attack_seeds)
    limit = f"  - --max_examples={scale.attack_max_examples}\n" if scale.attack_max_examples else ""
    limit += f"  - --keep={scale.attack_keep}\n" if scale.attack_keep else ""
    attack = _header("Attacks: every trained prompt's validation split attacked by each recipe (skill-neurons "
                     "attack), one set per task x backbone x seed x recipe", "attack", runs, root, scale, out,
                     metric=False) + f"""\
  recipe:
    values: {_flow(scale.attack_recipes)}
""" + ATTACK_COMMAND.format(extra=limit, out=ATTACK_FILE.format(attacks=attacks, recipe="{recipe}"))
    evaluate = _header("The attacked prompts evaluated on their generated sets beside the task's own adversarial "
                       "sets (run after attack.yaml)", "evaluate_attacks", runs, root, scale, out) + \
        SWEEP_COMMAND.replace("  - --trainer.logger.init_args.group=null\n", "  - --trainer.logger.init_args.group=null\n"
                              f"  - '{attack_files(attacks, scale)}'\n")
    # the tracked files' header names make_configs' command for other prompts: these two need --attacks too
    tracked = "--prompt_runs D/runs --out DIR\n"
    with_attacks = f"--prompt_runs D/runs --out DIR --attacks {attacks}\n"
    return {"attack": attack.replace(tracked, with_attacks),
            "evaluate_attacks": evaluate.replace(tracked, with_attacks)}
