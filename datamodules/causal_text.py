"""How a causal LM's text becomes tokens: the pad id of a tokenizer without a pad token, the text cut from the
left so that its cue survives, and the label word's tokens as they follow the cue (the leading-space rule).
:class:`datamodules.PromptDataModule` calls these for ``causal_lm`` backbones."""

from __future__ import annotations

from datamodules.task_spec import TaskError, TaskSpec


def pad_id_of(tokenizer) -> int:
    """The id that pads batches: the pad token, else (GPT-2, Llama: no pad token) the end-of-sequence token,
    else 0. Padded positions are masked out of attention and never read, so any id serves."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate


def causal_tokens(tokenizer, texts: list[str], budget: int) -> list[list[int]]:
    """A causal LM's tokens of each text (special tokens included), cut from the left to ``budget``: the end
    of the text is its cue, after which the label is read, so it must survive truncation."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(texts, truncation=True, max_length=budget)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def causal_label_pieces(tokenizer, task: TaskSpec, word: str) -> list[int]:
    """The tokens a causal LM produces for ``word`` right after the task's template: the template's cue
    followed by a space and the word (the leading-space rule: GPT-2 scores ``Ġpositive``, Llama ``▁positive``,
    not the word's form at the start of a text). Raises if the word is unknown or merges with the cue."""
    cue = task.causal_lm_template().format(**{f: "" for f in task.text_fields}).lstrip()
    before = tokenizer(cue, add_special_tokens=False)["input_ids"]
    after = tokenizer(cue + ("" if cue[-1:].isspace() else " ") + word, add_special_tokens=False)["input_ids"]
    if after[:len(before)] != before or len(after) == len(before):
        raise TaskError(f"verbalizer word {word!r} of task {task.name!r} merges with the end of its causal "
                        f"template {cue!r} in {tokenizer.name_or_path!r}'s tokens — end causal_template with a "
                        "cue such as 'Answer:'")
    pieces = after[len(before):]
    if pieces[0] == tokenizer.unk_token_id:
        raise TaskError(f"verbalizer word {word!r} of task {task.name!r} is not in the vocabulary of "
                        f"{tokenizer.name_or_path!r} — choose another word in verbalizers.causal_lm")
    return pieces
