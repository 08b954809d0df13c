"""The soft prompt: a small trainable table of ``P`` vectors, separate from the code that splices it in."""

from __future__ import annotations

import torch
from torch import nn

from records.errors import OptionError

INIT_CHOICES = ("random", "vocab", "normal", "text")


def check_prompt_options(length: int, how: str, text: str | None) -> None:
    """Refuse a prompt that cannot be built: fewer than one vector, an unknown initialisation, ``text`` without
    a text."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise OptionError(f"--model.prompt_length={length!r}: give a whole number of at least 1")
    if how not in INIT_CHOICES:
        raise OptionError(f"unknown prompt_init {how!r} (--model.prompt_init): choose one of {', '.join(INIT_CHOICES)}")
    if how == "text" and not (text or "").strip():
        raise OptionError("--model.prompt_init=text needs the text: add --model.prompt_init_text='...' (its tokens "
                          "are repeated to fill the prompt), or choose another --model.prompt_init")


class SoftPrompt(nn.Module):
    """``P`` trainable vectors of width ``H``; ``forward(batch_size)`` returns them as (B, P, H).

    Initialisation (``initialise``):
      - ``random``: normal with the standard deviation of the backbone's word embeddings;
      - ``normal``: normal with standard deviation ``std`` (P1's RoBERTa prompt: the backbone's
        ``initializer_range``, as ``RobertaEmbeddings._init_weights`` in Robust-Neurons' modelling_roberta.py);
      - ``vocab``:  copies of the embeddings of ``P`` token ids sampled from the vocabulary (Lester et al.);
      - ``text``:   the embeddings of a text's tokens, repeated cyclically to fill ``P`` slots.
    Sampling uses the global torch RNG, so ``seed_everything`` makes it reproducible.
    """

    def __init__(self, length: int, dim: int):
        super().__init__()
        check_prompt_options(length, "vocab", None)
        self.weight = nn.Parameter(torch.zeros(length, dim))  # (P, H)

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)  # (B, P, H)

    @torch.no_grad()
    def initialise(self, how: str, embeddings: torch.Tensor, token_ids: list[int] | None = None,
                   exclude_ids: list[int] = (), std: float | None = None) -> None:
        """Fill the prompt from the backbone's word ``embeddings`` (V, H) as described in the class doc."""
        if how == "random":
            self.weight.normal_(0.0, embeddings.float().std().item())
        elif how == "normal":
            if std is None:
                raise ValueError("prompt_init='normal' needs the backbone's initializer_range, which its config "
                                 "lacks — use prompt_init=random or vocab")
            self.weight.normal_(0.0, std)
        elif how == "vocab":
            allowed = torch.ones(embeddings.shape[0], dtype=torch.bool)
            allowed[list(exclude_ids)] = False  # special tokens make poor starting points
            candidates = allowed.nonzero().squeeze(1)
            pick = candidates[torch.randint(len(candidates), (self.length,))]
            self.weight.copy_(embeddings[pick].float())
        elif how == "text":
            if not token_ids:
                check_prompt_options(self.length, how, None)  # no text: names --model.prompt_init_text
            ids = torch.tensor(token_ids).repeat(self.length // len(token_ids) + 1)[: self.length]
            self.weight.copy_(embeddings[ids].float())
        else:
            check_prompt_options(self.length, how, None)  # an unknown choice
