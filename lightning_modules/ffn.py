"""Where a backbone's feed-forward ("skill") neurons live — answered here and nowhere else.

A neuron is one unit of the FFN hidden layer: the value after the nonlinearity, i.e. the *input of the FFN
down-projection* (README, "Skill neurons"). :func:`ffn_sites` finds, for every layer of the encoder (the
decoder of an encoder–decoder with ``part="decoder"``; a decoder-only causal LM's one stack of layers, which
reads the prompt, is its ``encoder`` part), the module that carries those units and whether they are its output
or its input:

==========================  ==========================================  =========
family                      module                                      units are
==========================  ==========================================  =========
BERT, RoBERTa, XLM-R,       ``encoder.layer[i].intermediate``           output
ELECTRA, DeBERTa(-v2) ...   (dense + activation)
T5, T5 v1.1, Flan-T5, mT5   ``block[i].layer[-1].DenseReluDense.wo``     input
                            (gated or not: ``wo``'s input is the
                            activated hidden layer)
BART, mBART, Pegasus ...    ``layers[i].fc2``                            input
DistilBERT                  ``transformer.layer[i].ffn.lin2``            input
GPT-2                       ``h[i].mlp.c_proj`` (a ``Conv1D``, weight    input
                            (in, out), not an ``nn.Linear``)
Llama, Mistral, Qwen2,      ``layers[i].mlp.down_proj`` (gated: its      input
Gemma ... (gated MLPs)      input is ``act(gate_proj x) * up_proj x``)
GPT-NeoX, Pythia            ``layers[i].mlp.dense_4h_to_h``              input
OPT                         ``decoder.layers[i].fc2`` (the BART rule;    input
                            OPT flattens its FFN input to (B·S, H))
==========================  ==========================================  =========

:func:`hook_ffn` always hands the units over as (B, S, N): a layer that flattens its FFN input to (B·S, N)
(OPT) is given back its batch and sequence shape, read from the layer's own input.

The skill-neuron recorder (``callbacks/skill_neurons.py``) and the suppression of neurons both go through
:func:`ffn_sites` and :func:`hook_ffn`; supporting another architecture means adding one rule to
``_UNIT_RULES`` (and a test), nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.pytorch_utils import Conv1D

from records.errors import UserError

Part = Literal["encoder", "decoder"]
PARTS = get_args(Part)


class FFNLookupError(UserError, ValueError):
    """The backbone has no FFN of the requested part, or none this module knows how to find."""


@dataclass(frozen=True)
class FFNSite:
    """One layer's FFN units: ``module``'s output (``where="output"``) or input (``"input"``), width ``units``;
    ``block`` is the whole layer (its input gives the (B, S) shape of units that arrive flattened)."""

    layer: int
    module: nn.Module
    where: Literal["input", "output"]
    units: int
    block: nn.Module | None = None


def _intermediate(layer: nn.Module):
    module = getattr(layer, "intermediate", None)
    dense = getattr(module, "dense", None)
    if module is not None and isinstance(dense, nn.Linear):
        return module, "output", dense.out_features
    return None


def _t5_wo(layer: nn.Module):
    for sub in getattr(layer, "layer", []):
        ff = getattr(sub, "DenseReluDense", None)
        if ff is not None and isinstance(getattr(ff, "wo", None), nn.Linear):
            return ff.wo, "input", ff.wo.in_features
    return None


def _fc2(layer: nn.Module):
    fc2 = getattr(layer, "fc2", None)
    return (fc2, "input", fc2.in_features) if isinstance(fc2, nn.Linear) else None


def _lin2(layer: nn.Module):
    lin2 = getattr(getattr(layer, "ffn", None), "lin2", None)
    return (lin2, "input", lin2.in_features) if isinstance(lin2, nn.Linear) else None


def _gpt2_c_proj(layer: nn.Module):
    # GPT-2's Conv1D computes x @ weight with weight (in, out): its input width is weight.shape[0]. (The
    # attention's c_proj is layer.attn.c_proj; only the MLP's is the FFN down-projection.)
    c_proj = getattr(getattr(layer, "mlp", None), "c_proj", None)
    return (c_proj, "input", c_proj.weight.shape[0]) if isinstance(c_proj, Conv1D) else None


def _down_proj(layer: nn.Module):
    down = getattr(getattr(layer, "mlp", None), "down_proj", None)
    return (down, "input", down.in_features) if isinstance(down, nn.Linear) else None


def _dense_4h_to_h(layer: nn.Module):
    dense = getattr(getattr(layer, "mlp", None), "dense_4h_to_h", None)
    return (dense, "input", dense.in_features) if isinstance(dense, nn.Linear) else None


# Tried in order on each layer; the first rule that matches gives the module carrying the units.
_UNIT_RULES: tuple[Callable[[nn.Module], tuple | None], ...] = (_intermediate, _t5_wo, _fc2, _lin2, _gpt2_c_proj,
                                                                  _down_proj, _dense_4h_to_h)


def is_encoder_decoder(backbone: nn.Module) -> bool:
    return bool(getattr(getattr(backbone, "config", None), "is_encoder_decoder", False))


def is_decoder_only(backbone: nn.Module) -> bool:
    """A causal LM without an encoder (GPT-2, Llama, OPT ...): not an encoder–decoder, and it can generate."""
    can_generate = getattr(backbone, "can_generate", None)
    return not is_encoder_decoder(backbone) and callable(can_generate) and bool(can_generate())


def _stack(backbone: nn.Module, part: str) -> nn.Module:
    """The module holding the layer list of ``part``."""
    if part not in PARTS:
        raise FFNLookupError(f"unknown part {part!r}; use 'encoder' or 'decoder'")
    name = getattr(getattr(backbone, "config", None), "model_type", type(backbone).__name__)
    if is_encoder_decoder(backbone):
        return backbone.get_encoder() if part == "encoder" else backbone.get_decoder()
    if part == "decoder":
        if is_decoder_only(backbone):
            raise FFNLookupError(
                f"{name} is decoder-only: its one stack of layers reads the prompt and the text and is analysed "
                "as part='encoder' (the default) — use that"
            )
        raise FFNLookupError(
            f"{name} is encoder-only: it has no decoder neurons — analyse part='encoder' (the default)"
        )
    base = getattr(backbone, "base_model", backbone)
    for attr in ("encoder", "transformer", "decoder"):  # decoder: OPT's OPTModel.decoder holds the layers
        if hasattr(base, attr):
            return getattr(base, attr)
    if is_decoder_only(backbone):
        return base  # GPT-2's h, Llama's and GPT-NeoX's layers sit on the base model itself
    raise FFNLookupError(f"cannot find the encoder of {name}; add a rule to lightning_modules/ffn.py")


def _layers(stack: nn.Module) -> nn.ModuleList:
    for attr in ("layer", "block", "layers", "h"):
        layers = getattr(stack, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    raise FFNLookupError(f"cannot find the layer list of {type(stack).__name__}; add a rule to lightning_modules/ffn.py")


def ffn_sites(backbone: nn.Module, part: str = "encoder") -> list[FFNSite]:
    """The FFN units of every layer of ``part`` (``encoder``, or ``decoder`` for encoder–decoders), in order."""
    sites = []
    for index, layer in enumerate(_layers(_stack(backbone, part))):
        found = next((hit for rule in _UNIT_RULES if (hit := rule(layer)) is not None), None)
        if found is None:
            raise FFNLookupError(
                f"layer {index} of {type(layer).__name__} has no FFN this project recognises; add a rule to "
                "_UNIT_RULES in lightning_modules/ffn.py"
            )
        sites.append(FFNSite(index, *found, block=layer))
    return sites


def ffn_shape(backbone: nn.Module, part: str = "encoder") -> tuple[int, int]:
    """(layers, units per layer) of ``part``; layers of different widths are refused."""
    sites = ffn_sites(backbone, part)
    widths = {site.units for site in sites}
    if len(widths) != 1:
        raise FFNLookupError(f"FFN widths differ across layers ({sorted(widths)}); skill neurons need one width")
    return len(sites), widths.pop()


# fn(layer, units) -> None (only reads) or a tensor that replaces the units; units: (B, S, N).
UnitFn = Callable[[int, torch.Tensor], torch.Tensor | None]


def hook_ffn(backbone: nn.Module, fn: UnitFn, part: str = "encoder") -> list[RemovableHandle]:
    """Call ``fn(layer, units)`` on every layer's FFN units (B, S, N) during forward passes.

    If ``fn`` returns a tensor, it replaces the units (suppression); ``None`` leaves them as they are
    (recording). Returns the hook handles; remove them with :func:`remove_hooks` (or use :func:`ffn_hooks`).
    """
    handles = []
    for site in ffn_sites(backbone, part):
        if site.where == "output":
            def after(module, args, output, layer=site.layer):
                return fn(layer, output)
            handles.append(site.module.register_forward_hook(after))
        else:
            shape: dict[str, torch.Size] = {}

            def remember(module, args, kwargs, shape=shape):
                hidden = args[0] if args else kwargs.get("hidden_states")
                shape["leading"] = hidden.shape[:-1] if isinstance(hidden, torch.Tensor) else None

            def before(module, args, layer=site.layer, shape=shape):
                units = args[0]
                flat = units.ndim == 2  # (B·S, N): OPT flattens the batch and sequence dimensions
                if flat:
                    if not shape.get("leading"):
                        raise FFNLookupError(f"layer {layer}'s FFN units arrive flattened {tuple(units.shape)} and "
                                             "the layer's input shape is unknown; add a rule to lightning_modules/ffn.py")
                    units = units.view(*shape["leading"], units.shape[-1])  # (B, S, N)
                replaced = fn(layer, units)
                if replaced is None:
                    return None
                return (replaced.reshape(args[0].shape) if flat else replaced, *args[1:])
            if site.block is not None:
                handles.append(site.block.register_forward_pre_hook(remember, with_kwargs=True))
            handles.append(site.module.register_forward_pre_hook(before))
    return handles


def remove_hooks(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class ffn_hooks:
    """Context manager: ``with ffn_hooks(backbone, fn): ...`` — the hooks exist only inside the block."""

    def __init__(self, backbone: nn.Module, fn: UnitFn, part: str = "encoder"):
        self.backbone, self.fn, self.part = backbone, fn, part
        self.handles: list[RemovableHandle] = []

    def __enter__(self):
        self.handles = hook_ffn(self.backbone, self.fn, self.part)
        return self

    def __exit__(self, *exc):
        remove_hooks(self.handles)
        return False
