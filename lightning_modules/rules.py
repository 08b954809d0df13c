"""What each backbone family allows, decided once: the ``paper`` layout (P1 used masked LMs and T5 only) and the
positions the skill-neuron analysis reads. The model, the DataModule, the callbacks and ``import-prompt`` call
these functions, so a rule gives the same message from every entry point.

Plain Python (no Lightning, no transformers): the command's option checks import it without loading a model.
"""

from __future__ import annotations

from records.errors import OptionError

# P1's layout exists for the two families P1 used; a causal LM reads its label after the template's text.
PAPER_FAMILIES = ("masked_lm", "seq2seq")
FAMILY_NAMES = {"masked_lm": "masked LM", "seq2seq": "encoder–decoder", "causal_lm": "causal LM"}
# The encoder positions each family's analysis can read (a causal LM's prompt comes before the text, so its
# prompt positions cannot depend on the example); the decoder of an encoder–decoder is read at its first step.
POSITION_CHOICES = {"masked_lm": ("prompt", "mask", "prompt+mask"), "seq2seq": ("prompt",),
                    "causal_lm": ("last", "text_mean")}
DECODER_POSITIONS = ("prompt",)


class LayoutError(OptionError):
    """A layout this backbone family or backbone cannot run, or that the model and the data do not share."""


def check_layout(family: str, layout: str, backbone: str, prompt_length: int | None = None,
                 flag: str = "--model.layout") -> None:
    """Refuse ``paper`` for a family P1 never used (causal LMs), and a ``paper`` masked-LM prompt with no
    trainable vector (its slot 0 is the ``<mask>``). ``flag`` is how the command names the layout option."""
    if layout != "paper":
        return
    if family not in PAPER_FAMILIES:
        raise LayoutError(f"layout 'paper' is P1's input for RoBERTa and T5; P1 has no "
                          f"{FAMILY_NAMES.get(family, family)}, so {backbone!r} runs with {flag}=standard only — "
                          f"use {flag}=standard, or a masked LM or T5 backbone for layout 'paper'")
    if family == "masked_lm" and prompt_length is not None and prompt_length < 2:
        raise LayoutError(f"layout 'paper' puts <mask> in prompt slot 0, so prompt_length={prompt_length} leaves no "
                          "trainable vector — use --model.prompt_length=2 or more (P1: 100)")


def position_choices(family: str, part: str = "encoder") -> tuple[str, ...]:
    """The analysed-position choices of ``family``'s ``part``."""
    return DECODER_POSITIONS if part == "decoder" else POSITION_CHOICES.get(family, ("prompt",))


def check_positions(family: str, part: str, choice: str) -> None:
    """Refuse a choice of analysed positions that ``family``'s ``part`` does not have, naming those it has."""
    allowed = position_choices(family, part)
    if choice in allowed:
        return
    decoder = part == "decoder"
    raise OptionError(
        f"positions={choice!r} does not exist for a {family} model"
        + (" analysed at the decoder's first step" if decoder else "") + f" — choose one of {list(allowed)}"
        + (" (T5 has no <mask> position)" if family == "seq2seq" and not decoder else "")
        + (" — a causal LM reads the prompt before the text, so the prompt positions' activations are the same for "
           "every example and their predictivity is constant; analyse where the text is: positions=last (the "
           "position the label is read at) or text_mean" if family == "causal_lm" else ""))
