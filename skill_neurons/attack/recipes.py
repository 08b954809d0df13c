"""The attack recipes: what each tries, as generators that ask for model queries and return an :class:`Outcome`.

A recipe is a generator over one example: it yields a :class:`Request` (candidate texts), receives per candidate
the model's label probabilities (``None`` for a candidate whose tokenised text would not fit the run's
``max_text_length``: it is never shown to the model) and finally returns an :class:`Outcome`. The driver
(:mod:`skill_neurons.attack.driver`) answers the requests of many examples with batched forwards, so a recipe
holds no model and no batching logic. Every random choice comes from the example's own ``random.Random`` (seed
and row), so an example is attacked the same way whatever else runs.

- ``deepwordbug`` (Gao et al. 2018, as TextAttack's recipe): word importance by deletion (the drop of the true
  label's probability when the word is left out), then, most important word first, the best of one random
  swap, substitution, deletion and insertion, kept when it lowers the true label's probability, until the
  prediction flips or the word budget is spent.
- ``pruthi`` (Pruthi et al. 2019, as TextAttack's recipe): keyboard typos — swaps, deletions, insertions and
  QWERTY-neighbour substitutions of the *inner* characters of words of 4+ letters, every one of them tried each
  step (greedy search), the best kept, until the prediction flips or the budget is spent.
- ``noise``: no model in the loop — random words edited by random DeepWordBug operations, as many words as the
  budget allows (or, with ``--match``, exactly as many characters per example as an attack file changed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from skill_neurons.attack.edits import (
    LETTERS, Word, delete, delete_word, edit_distance, editable, insert, keyboard_typos, one_edit, random_edit,
    replace_words, swap, words_of,
)

DEEPWORDBUG_EDITS = ("swap", "substitute", "delete", "insert")
PRUTHI_MIN_LENGTH = 4  # Pruthi et al. edit inner characters, so words need at least two of them


@dataclass(frozen=True)
class Constraints:
    """AdvGLUE's constraints on word-level attacks: at most ``word_budget`` of the words changed (rounded up, as
    TextAttack's ``MaxWordsPerturbed``), each at most ``max_edit_distance`` edits from the original, words of at
    least ``min_word_length`` characters, no stopword and no ``protected`` word (the task's verbalizers and
    label names) touched; texts must fit ``max_text_length`` after tokenisation (checked by the driver)."""

    word_budget: float = 0.15
    max_edit_distance: int = 1
    min_word_length: int = 2
    protected: frozenset[str] = frozenset()

    def max_words(self, words: int) -> int:
        return math.ceil(round(self.word_budget * words, 9))

    def to_json(self) -> dict:
        return {"word_budget": self.word_budget, "max_edit_distance": self.max_edit_distance,
                "min_word_length": self.min_word_length, "stopwords": "english (NLTK)",
                "protected_words": sorted(self.protected), "fits_max_text_length": True}


@dataclass
class Example:
    fields: dict[str, str]
    label: int
    idx: int
    rng: random.Random
    match: list[int] | None = None  # noise --match: the edit distance of each word the matched attack changed


@dataclass(frozen=True)
class Request:
    """Candidate texts; ``forward=False`` only asks whether they fit (no model query)."""

    texts: list[dict[str, str]]
    forward: bool = True


@dataclass
class Outcome:
    fields: dict[str, str]
    changes: list[dict] = field(default_factory=list)  # {field, index, original, perturbed}
    success: bool = False
    status: str = "failed"  # succeeded, failed, misclassified (skipped), too_long, no_words


Attack = Generator[Request, list, Outcome]


def _changes(words: dict[tuple[str, int], tuple[Word, str]]) -> list[dict]:
    return [{"field": w.field, "index": w.index, "original": w.core, "perturbed": new}
            for w, new in sorted(words.values(), key=lambda item: (item[0].field, item[0].token))]


def _wrong(probs: np.ndarray, label: int) -> bool:
    return int(np.argmax(probs)) != label


def _start(ex: Example, min_length: int, c: Constraints) -> tuple[list[Word], int]:
    everything = words_of(ex.fields)
    eligible = [w for w in everything if editable(w, c.protected, max(min_length, c.min_word_length))]
    return eligible, c.max_words(len(everything))


def _opening(ex: Example, words: list[Word]):
    """The prompt's probabilities on the unedited text (one query), or the Outcome that ends the attack before any
    edit: the text is too long, the prompt already gets it wrong, or no word may be edited."""
    [base] = yield Request([ex.fields])
    if base is None:
        return Outcome(ex.fields, status="too_long")
    if _wrong(base, ex.label):
        return Outcome(ex.fields, status="misclassified")
    if not words:
        return Outcome(ex.fields, status="no_words")
    return base


def deepwordbug(ex: Example, c: Constraints) -> Attack:
    words, budget = _start(ex, 1, c)
    base = yield from _opening(ex, words)
    if isinstance(base, Outcome):
        return base
    left_out = yield Request([delete_word(ex.fields, w) for w in words])
    drop = [base[ex.label] - (p[ex.label] if p is not None else base[ex.label]) for p in left_out]
    order = sorted(range(len(words)), key=lambda i: (-drop[i], i))
    current, p_true, changed = ex.fields, base[ex.label], {}
    for i in order:
        if len(changed) >= budget:
            break
        w, form = words[i], words[i].core
        for step in range(1, c.max_edit_distance + 1):
            candidates = []
            for kind in DEEPWORDBUG_EDITS:
                at = ex.rng.randrange(len(form) + (kind == "insert"))
                new = one_edit(form, kind, min(at, len(form) - 1) if kind != "insert" else at, ex.rng)
                if new and new not in candidates and edit_distance(w.core, new) == step:
                    candidates.append(new)
            if not candidates:
                break
            texts = [replace_words(current, {(w.field, w.token): new}) for new in candidates]
            probs = yield Request(texts)
            scored = [(p[ex.label], j) for j, p in enumerate(probs) if p is not None]
            if not scored or min(scored)[0] >= p_true:
                break
            best = min(scored)[1]
            form, current, p_true = candidates[best], texts[best], probs[best][ex.label]
            changed[(w.field, w.token)] = (w, form)
            if _wrong(probs[best], ex.label):
                return Outcome(current, _changes(changed), True, "succeeded")
    return Outcome(current, _changes(changed), False, "failed")


def pruthi_candidates(word: str, rng: random.Random) -> list[str]:
    """Every keyboard typo of ``word``'s inner characters: adjacent swaps, deletions, one random-letter insertion
    per gap and all QWERTY-neighbour substitutions (first and last character kept)."""
    inner = range(1, len(word) - 1)
    out = [swap(word, i) for i in inner if i + 1 < len(word) - 1]
    out += [delete(word, i) for i in inner]
    out += [insert(word, i, rng.choice(LETTERS)) for i in range(1, len(word))]
    out += [typo for i in inner for typo in keyboard_typos(word, i)]
    return list(dict.fromkeys(w for w in out if w and w != word))


def pruthi(ex: Example, c: Constraints) -> Attack:
    words, budget = _start(ex, PRUTHI_MIN_LENGTH, c)
    base = yield from _opening(ex, words)
    if isinstance(base, Outcome):
        return base
    current, p_true, changed = ex.fields, base[ex.label], {}
    while True:
        options = []  # (word, new core)
        for w in words:
            key = (w.field, w.token)
            form = changed[key][1] if key in changed else w.core
            if key not in changed and len(changed) >= budget:
                continue
            distance = edit_distance(w.core, form)
            if distance < c.max_edit_distance:
                options += [(w, new) for new in pruthi_candidates(form, ex.rng)
                            if edit_distance(w.core, new) == distance + 1]
        if not options:
            break
        edits = {key: new for key, (_, new) in changed.items()}
        texts = [replace_words(current, {**edits, (w.field, w.token): new}) for w, new in options]
        probs = yield Request(texts)
        scored = [(p[ex.label], j) for j, p in enumerate(probs) if p is not None]
        if not scored or min(scored)[0] >= p_true:
            break
        best = min(scored)[1]
        w, new = options[best]
        changed[(w.field, w.token)] = (w, new)
        current, p_true = texts[best], probs[best][ex.label]
        if _wrong(probs[best], ex.label):
            return Outcome(current, _changes(changed), True, "succeeded")
    return Outcome(current, _changes(changed), False, "failed")


NOISE_TRIES = 20  # draws of random noise tried before an example whose noisy text never fits is given up


def noise(ex: Example, c: Constraints) -> Attack:
    words, budget = _start(ex, 1, c)
    distances = ex.match if ex.match is not None else [c.max_edit_distance] * budget
    if not words or not distances:
        return Outcome(ex.fields, status="no_words")
    for _ in range(NOISE_TRIES):
        chosen = ex.rng.sample(range(len(words)), min(len(distances), len(words)))
        changed = {}
        for i, distance in zip(sorted(chosen), distances):
            w, form = words[i], words[i].core
            for step in range(1, distance + 1):
                for _ in range(NOISE_TRIES):
                    new = random_edit(form, ex.rng, DEEPWORDBUG_EDITS)
                    if new is not None and edit_distance(w.core, new) == step:
                        form = new
                        break
            changed[(w.field, w.token)] = (w, form)
        text = replace_words(ex.fields, {key: new for key, (_, new) in changed.items()})
        [fits] = yield Request([text], forward=False)
        if fits:
            return Outcome(text, _changes(changed), False, "noise")
    return Outcome(ex.fields, status="too_long")


RECIPES = {"deepwordbug": deepwordbug, "pruthi": pruthi, "noise": noise}
MODEL_FREE = ("noise",)
