"""The quick-start's synthetic task: "does the marker word occur?" and its typo attack.

A random tiny backbone cannot learn SST-2, but a soft prompt *can* steer it to detect one word. The
adversarial counterpart perturbs one word per sentence with a character-level typo (as AdvGLUE's
word-level attacks, e.g. TextBugger, do): in positive sentences the marker itself is misspelled, in
negative ones another word is. A prompt that keys on the marker's token then drops to chance on the
attacked set, so accuracy, skill neurons and their adversarial behaviour are visible within minutes.

Regenerate the shipped files with ``python -m datamodules.synthetic`` (deterministic, seed 0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

MARKER = "banana"

# Filler words: common, short, and each its own token in the tiny tokenizers' corpus.
FILLER = (
    "the a of and to in is it that was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him "
    "two has look more day could go come did number sound no most people my over know water than call "
    "first who may down side been now find any new work part take get place made live where after back "
    "little only round man year came show every good me give our under name very through just form "
    "sentence great think say help low line differ turn cause much mean before move right boy old too "
    "same tell does set three want air well also play small end put home read hand port large spell add "
    "even land here must big high such follow act why ask men change went light kind off need house "
    "picture try us again animal point mother world near build self earth father head stand own page"
).split()


def typo(word: str, rng: random.Random) -> str:
    """One character-level edit (swap, delete, insert or substitute) that changes ``word``."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    while True:
        i = rng.randrange(len(word))
        kind = rng.choice(("swap", "delete", "insert", "substitute"))
        if kind == "swap" and i < len(word) - 1:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif kind == "delete" and len(word) > 2:
            out = word[:i] + word[i + 1 :]
        elif kind == "insert":
            out = word[:i] + rng.choice(letters) + word[i:]
        else:
            out = word[:i] + rng.choice(letters) + word[i + 1 :]
        if out != word:
            return out


def make_rows(n: int, rng: random.Random, attacked: bool) -> list[dict]:
    """``n`` balanced rows ``{"idx", "sentence", "label"}``; ``attacked`` applies one typo per row and keeps the
    sentence before it as ``original_sentence`` (AdvGLUE's ``dev_ann.json`` naming)."""
    rows = []
    for idx in range(n):
        label = idx % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        target = rng.randrange(len(words))
        if label == 1:
            words[target] = MARKER
        original = " ".join(words)
        if attacked:
            words[target] = typo(words[target], rng)
        row = {"idx": idx, "sentence": " ".join(words), "label": label}
        if attacked:
            row["original_sentence"] = original  # the clean twin, for activation patching (pairs by this column)
        rows.append(row)
    rng.shuffle(rows)
    for idx, row in enumerate(rows):
        row["idx"] = idx
    return rows


def write_marker_task(out_dir: Path, seed: int = 0, sizes=(2000, 400, 400)) -> None:
    """Write train/validation/adversarial JSONL files of the marker task into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, n, attacked in zip(("train", "validation", "adversarial"), sizes, (False, False, True)):
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for row in make_rows(n, rng, attacked):
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    write_marker_task(Path(__file__).parent / "data" / "marker")
