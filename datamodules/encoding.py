"""How texts become token ids where the rule is more than the tokenizer: P1's text format of one example
(``layout: paper``) and the token id scored for each label word (verbalizers), per backbone family."""

from __future__ import annotations

from typing import Any

from datamodules.causal_text import causal_label_pieces
from datamodules.task_spec import MARKERS, TaskError, TaskSpec


def p1_tokens(tokenizer, paper, row: dict[str, Any], budget: int) -> list[int]:
    """P1's text tokens of one example (``layout: paper``; see :class:`~datamodules.tasks.PaperFormat`)."""
    fields = {k: str(v).strip() for k, v in row.items()}
    ids: list[int] = []
    for segment in paper.segments:
        if segment in MARKERS:
            ids.append(getattr(tokenizer, MARKERS[segment]))
        else:
            ids.extend(tokenizer.encode(segment.format(**fields), add_special_tokens=False))
    if len(ids) > budget:
        ids = ids[: budget - 1] + ids[-1:] if paper.keeps_last else ids[:budget]
    return ids


def verbalizer_token_ids(tokenizer, family: str, task: TaskSpec, layout: str = "standard") -> list[int]:
    """The token ids scored for each label, then the layout's extra words; raises if a word is not in the
    vocabulary or ids collide."""
    words, extra = task.scored_words(family, layout)
    unk = tokenizer.unk_token_id
    ids = []
    for word in (*words, *extra):
        if layout == "paper":
            # P1 (PromptRoberta.py / PromptT5.py): tokenizer.encode(word, add_special_tokens=False), first id.
            pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not pieces or pieces[0] == unk:
                raise TaskError(f"verbalizer word {word!r} of task {task.name!r} is not in the vocabulary of "
                                f"{tokenizer.name_or_path!r} — choose another word (task paper.{family}.words)")
        elif family == "masked_lm":
            # A masked LM predicts one token at <mask>: the word must be a single token after a space.
            pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            if len(pieces) != 1 or pieces[0] == unk:
                shown = tokenizer.convert_ids_to_tokens(pieces)
                raise TaskError(
                    f"verbalizer word {word!r} of task {task.name!r} is not in the vocabulary of "
                    f"{tokenizer.name_or_path!r} as one token (it becomes {shown}) — choose a word that is, "
                    f"in verbalizers.masked_lm"
                )
        elif family == "causal_lm":
            pieces = causal_label_pieces(tokenizer, task, word)
        else:
            # T5: the label is read from the first decoder step, i.e. the word's first sub-token.
            pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not pieces or pieces[0] == unk:
                raise TaskError(f"verbalizer word {word!r} of task {task.name!r} is not in the vocabulary of "
                                f"{tokenizer.name_or_path!r} — choose another word in verbalizers.seq2seq")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        first = [tokenizer.convert_ids_to_tokens(i) for i in ids]
        raise TaskError(
            f"label words {list((*words, *extra))} of task {task.name!r} share their first sub-token ({first}), so the "
            f"{'next-token logits' if family == 'causal_lm' else 'first decoder step'} cannot tell them apart — "
            f"choose words that start differently (verbalizers.{family})"
        )
    return ids
