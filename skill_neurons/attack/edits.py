"""Character edits of words and the rules of which words an attack may edit (no model, no torch).

A text is split on whitespace into words; a word's *core* is the word without leading and trailing punctuation
(``"banana,"`` → ``banana``), and only cores are edited, so punctuation and spacing stay as they were. Every
edit changes its core by exactly one operation of the optimal-string-alignment distance (:func:`edit_distance`:
insertions, deletions, substitutions and swaps of adjacent characters each cost 1), so a word edited ``d``
times is at most ``d`` away from its original.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# The QWERTY keyboard's letter rows: a key's neighbours are the keys left and right of it and the keys above and
# below it that touch it (rows are offset by half a key), as Pruthi et al.'s keyboard typos use.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard() -> dict[str, str]:
    near: dict[str, set[str]] = {c: set() for row in _ROWS for c in row}
    for r, row in enumerate(_ROWS):
        for i, c in enumerate(row):
            near[c].update(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row))
            for other, offset in ((r - 1, (0, 1)), (r + 1, (-1, 0))):  # the row above sits half a key right
                if 0 <= other < len(_ROWS):
                    near[c].update(_ROWS[other][i + d] for d in offset if 0 <= i + d < len(_ROWS[other]))
    return {c: "".join(sorted(n)) for c, n in near.items()}


KEYBOARD = _keyboard()

# English stopwords (the NLTK list, which TextAttack's and AdvGLUE's constraints also use), lower case.
STOPWORDS = frozenset("""
a about above after again against ain all am an and any are aren aren't as at be because been before being below
between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down during each
few for from further had hadn hadn't has hasn hasn't have haven haven't having he her here hers herself him himself
his how i if in into is isn isn't it it's its itself just ll m ma me mightn mightn't more most mustn mustn't my
myself needn needn't no nor not now o of off on once only or other our ours ourselves out over own re s same shan
shan't she she's should should've shouldn shouldn't so some such t than that that'll the their theirs them
themselves then there these they this those through to too under until up ve very was wasn wasn't we were weren
weren't what when where which while who whom why will with won won't wouldn wouldn't y you you'd you'll you're
you've your yours yourself yourselves
""".split())

_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


@dataclass(frozen=True)
class Word:
    """One whitespace-separated word of a text field: where it is and its editable core."""

    field: str
    index: int  # position among the field's words
    token: int  # position in the field's token list (words and the whitespace between them)
    core: str


def split_text(text: str) -> list[str]:
    """Words and the whitespace between them, in order (``"".join`` gives the text back)."""
    return [part for part in re.split(r"(\s+)", text) if part != ""]


def core_of(word: str) -> tuple[str, str, str]:
    """``(leading punctuation, core, trailing punctuation)`` of a word."""
    lead, core, trail = _CORE.match(word).groups()
    return lead, core, trail


def words_of(fields: dict[str, str]) -> list[Word]:
    """Every word of every text field, in field order."""
    out = []
    for field, text in fields.items():
        index = 0
        for token, part in enumerate(split_text(text)):
            if not part.isspace():
                out.append(Word(field, index, token, core_of(part)[1]))
                index += 1
    return out


def replace_words(fields: dict[str, str], new_cores: dict[tuple[str, int], str]) -> dict[str, str]:
    """The text fields with the cores of some words replaced, ``{(field, token position): new core}``."""
    out = {}
    for field, text in fields.items():
        parts = split_text(text)
        for (f, token), core in new_cores.items():
            if f == field:
                lead, _, trail = core_of(parts[token])
                parts[token] = lead + core + trail
        out[field] = "".join(parts)
    return out


def delete_word(fields: dict[str, str], word: Word) -> dict[str, str]:
    """The text fields with one word (and the whitespace before it) removed: the leave-one-out text."""
    parts = split_text(fields[word.field])
    start = word.token - 1 if word.token > 0 and parts[word.token - 1].isspace() else word.token
    return {**fields, word.field: "".join(parts[:start] + parts[word.token + 1:])}


def editable(word: Word, protected: frozenset[str], min_length: int) -> bool:
    """Whether an attack may edit ``word``: an alphabetic core of at least ``min_length`` characters that is no
    stopword and none of the task's ``protected`` words (verbalizers, label names), compared in lower case."""
    core = word.core
    return (len(core) >= min_length and any(c.isalpha() for c in core) and core.lower() not in STOPWORDS
            and core.lower() not in protected)


def edit_distance(a: str, b: str) -> int:
    """The optimal-string-alignment distance: insertions, deletions, substitutions and adjacent swaps cost 1."""
    d = [[max(i, j) if min(i, j) == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _same_case(letter: str, like: str) -> str:
    return letter.upper() if like.isupper() else letter


def swap(word: str, i: int) -> str | None:
    """Characters ``i`` and ``i + 1`` exchanged (None when they are equal: no change)."""
    if i + 1 >= len(word) or word[i] == word[i + 1]:
        return None
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def delete(word: str, i: int) -> str | None:
    """Character ``i`` removed (None for a one-character word: it would vanish)."""
    return word[:i] + word[i + 1:] if len(word) > 1 else None


def insert(word: str, i: int, letter: str) -> str:
    """``letter`` inserted before character ``i``."""
    return word[:i] + _same_case(letter, word[min(i, len(word) - 1)]) + word[i:]


def substitute(word: str, i: int, letter: str) -> str | None:
    """Character ``i`` replaced by ``letter`` (None when it is that letter already)."""
    new = _same_case(letter, word[i])
    return None if new == word[i] else word[:i] + new + word[i + 1:]


def keyboard_typos(word: str, i: int) -> list[str]:
    """Character ``i`` replaced by each of its QWERTY neighbours (none for a non-letter)."""
    return [w for w in (substitute(word, i, c) for c in KEYBOARD.get(word[i].lower(), "")) if w is not None]


def random_edit(word: str, rng: random.Random, kinds: tuple[str, ...] = ("swap", "delete", "insert", "substitute"),
                positions: range | None = None) -> str | None:
    """One random edit of one of ``kinds`` at a random position of ``positions`` (default: all); None when none
    of them can change the word."""
    positions = positions if positions is not None else range(len(word))
    options = [(kind, i) for kind in kinds for i in positions]
    rng.shuffle(options)
    for kind, i in options:
        new = one_edit(word, kind, i, rng)
        if new is not None and new != word:
            return new
    return None


def one_edit(word: str, kind: str, i: int, rng: random.Random) -> str | None:
    """The edit ``kind`` at position ``i`` (random letters drawn from ``rng``)."""
    if kind == "swap":
        return swap(word, i)
    if kind == "delete":
        return delete(word, i)
    if kind == "insert":
        return insert(word, i, rng.choice(LETTERS))
    if kind == "substitute":
        return substitute(word, i, rng.choice([c for c in LETTERS if c != word[i].lower()]))
    if kind == "keyboard":
        typos = keyboard_typos(word, i)
        return rng.choice(typos) if typos else None
    raise ValueError(kind)
