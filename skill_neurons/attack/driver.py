"""Runs the recipes of a chunk of examples in lock-step, answering their requests with batched forwards.

Each round gathers the pending :class:`~skill_neurons.attack.recipes.Request` of every example of the chunk,
tokenises all their candidates at once (a candidate that reaches the run's token limit is answered ``None`` and
never shown to the model), runs the fitting ones through the model ``batch_size`` at a time, and hands each
example its answers. Chunks are fixed slices of the split, so a resumed attack forms the same batches as an
uninterrupted one and gets the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skill_neurons.attack.model import PromptModel
from skill_neurons.attack.recipes import Attack, Constraints, Example, Outcome


@dataclass
class Attacked:
    example: Example
    outcome: Outcome
    queries: int  # forwards of the attacked prompt for this example
    fooled: int | None = None  # transfer prompts the perturbed text fools (None: no transfer filter)


def attack_chunk(examples: list[Example], recipe, constraints: Constraints, model: PromptModel) -> list[Attacked]:
    """Every example of ``examples`` attacked by ``recipe``; its outcome and how many forwards it cost."""
    runs: list[Attack] = [recipe(ex, constraints) for ex in examples]
    outcomes: list[Outcome | None] = [None] * len(examples)
    queries = [0] * len(examples)
    pending = {}
    for i in range(len(runs)):
        _advance(runs, i, None, pending, outcomes)
    while pending:
        current, pending = pending, {}
        flat = [(i, text) for i, request in current.items() for text in request.texts]
        encoded = model.encode([text for _, text in flat]) if flat else []
        fits = [len(e["input_ids"]) < model.limit for e in encoded]
        wanted = [k for k, (i, _) in enumerate(flat) if fits[k] and current[i].forward]
        probs = model.probabilities([encoded[k] for k in wanted], [examples[flat[k][0]].label for k in wanted]) \
            if wanted else []
        answer_of: dict[int, np.ndarray] = dict(zip(wanted, probs))
        answers: dict[int, list] = {i: [] for i in current}
        for k, (i, _) in enumerate(flat):
            if current[i].forward:
                answers[i].append(answer_of.get(k))
                queries[i] += k in answer_of
            else:
                answers[i].append(fits[k])
        for i in current:
            _advance(runs, i, answers[i], pending, outcomes)
    return [Attacked(ex, out, q) for ex, out, q in zip(examples, outcomes, queries)]


def _advance(runs: list[Attack], i: int, answer, pending: dict, outcomes: list) -> None:
    try:
        pending[i] = runs[i].send(answer)
    except StopIteration as stop:
        outcomes[i] = stop.value


def count_fooled(attacked: list[Attacked], model: PromptModel, prompts: list) -> None:
    """Set ``fooled`` of every perturbed example: how many of the transfer ``prompts`` (same backbone and task as
    ``model``'s) misclassify its perturbed text."""
    changed = [a for a in attacked if a.outcome.changes]
    for a in attacked:
        a.fooled = 0
    if not changed:
        return
    encoded = model.encode([a.outcome.fields for a in changed])
    labels = [a.example.label for a in changed]
    for prompt in prompts:
        with model.using_prompt(prompt):
            predictions = model.probabilities(encoded, labels).argmax(axis=1)
        for a, predicted in zip(changed, predictions):
            a.fooled += int(predicted != a.example.label)
