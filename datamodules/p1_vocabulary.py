"""The guard of ``layout: paper``: a tokenizer with roberta-base's or T5's vocabulary must give P1's vocabulary
ids for the label words, whatever the backbone is called (``roberta-base``, ``FacebookAI/roberta-base``, a local
copy, ``t5-base``, ``google-t5/t5-base``). The vocabulary is recognised by its content (size and the ids of a
few fixed tokens), not by its name, so a renamed copy is checked and a small test tokenizer is not.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.task_spec import TaskError, TaskSpec
from datamodules.tasks import P1_ROBERTA_BASE_IDS, P1_T5_IDS

# roberta-base (and roberta-large, same vocabulary): 50,265 entries; fairseq's dictionary order puts the
# specials first, then "." and "Ġthe"; <mask> last.
ROBERTA_VOCABULARY = (50265, {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, ".": 4, "Ġthe": 5, "<mask>": 50264})
# T5 v1 (t5-small ... t5-11b, one SentencePiece vocabulary): 32,000 pieces + 100 sentinels, <extra_id_0> last;
# "▁" is 3 (P1's PromptT5.py: "entailment" -> [3, 35, 5756, 297]).
T5_VOCABULARY = (32100, {"<pad>": 0, "</s>": 1, "<unk>": 2, "▁": 3, "<extra_id_0>": 32099})
GUARDED = {"masked_lm": ("roberta-base", ROBERTA_VOCABULARY, P1_ROBERTA_BASE_IDS),
           "seq2seq": ("t5-base", T5_VOCABULARY, P1_T5_IDS)}


def has_vocabulary(tokenizer, vocabulary: tuple[int, dict[str, int]]) -> bool:
    """Whether ``tokenizer`` holds this vocabulary: its size and the ids of the fixed tokens."""
    size, fixed = vocabulary
    try:
        if len(tokenizer) != size:
            return False
        return all(tokenizer.convert_tokens_to_ids(token) == i for token, i in fixed.items())
    except (TypeError, AttributeError):  # an object that is no full tokenizer (a test stub)
        return False


def check_p1_ids(backbone: str, tokenizer, task: TaskSpec, family: str, layout: str, ids: list[int]) -> None:
    """``layout: paper`` with roberta-base's or T5's vocabulary must read the vocabulary ids P1 reads
    (``P1_ROBERTA_BASE_IDS``, ``P1_T5_IDS``). A backbone or tokenizer named ``roberta-base`` / ``t5-base`` is
    checked too, whatever its content."""
    if layout != "paper" or family not in GUARDED:
        return
    model, vocabulary, table = GUARDED[family]
    if task.name not in table:
        return
    names = {Path(str(getattr(tokenizer, "name_or_path", "") or "")).name, Path(str(backbone)).name}
    if model not in names and not has_vocabulary(tokenizer, vocabulary):
        return
    labels, extra = table[task.name]
    expected = [*labels, *extra]
    if len(expected) != len(ids) or any(e is not None and e != i for e, i in zip(expected, ids)):
        raise TaskError(
            f"layout 'paper' on {model}'s vocabulary must read P1's vocabulary ids {expected} for task "
            f"{task.name!r} (None: not checked), but this tokenizer gives {ids} for the words "
            f"{list(sum(task.scored_words(family, layout), ()))} — the tokenizer is not {model}'s as P1 used it "
            f"(e.g. it adds a leading space), or the verbalizer was changed; use the original {model} tokenizer "
            "or --model.layout=standard"
        )
