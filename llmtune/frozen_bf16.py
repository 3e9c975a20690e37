"""Frozen base weights stored in bf16 under LoRA with bf16 autocast: the same numbers in half the memory.

Under bf16 autocast every matmul casts a frozen fp32 weight to bf16 on each forward, and the cast copy lives until
the backward has used it: a LoRA step holds the fp32 weights and a bf16 copy of each (SmolLM2-135M: 0.43 GB of
fp32 decoder weights and 0.21 GB of copies). A weight whose fp32 values are all bf16 values (a checkpoint published
in bf16, as most decoders are, loaded in fp32) loses nothing stored in bf16: autocast's cast is then the identity,
so training computes what it computed before, bit for bit, and the weight upcast back to fp32 is the loaded weight
again. `BF16FrozenLinear` does that upcast per call where no autocast runs (llmtune's fp32 evaluation, generation),
so those numbers do not change either. Weights that bf16 would round stay fp32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class BF16FrozenLinear(torch.nn.Linear):
    """nn.Linear with a frozen bf16 weight: under autocast the weight is used as it is (autocast would cast it to
    bf16 anyway); without autocast it is upcast to the input's precision for the call, exactly (bf16 -> fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        return F.linear(x, weight, bias)


def _shared(model: Any) -> set[int]:
    """ids of parameters that more than one module holds (tied input and output embeddings)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def exact_in_bf16(weight: torch.Tensor) -> bool:
    """Whether every value of an fp32 tensor is a bf16 value (its low 16 bits are zero): casting loses nothing."""
    return bool((weight.detach().view(torch.int32) & 0xFFFF).eq(0).all())


def store_frozen_bf16(model: Any) -> tuple[int, int]:
    """Store each frozen fp32 nn.Linear weight of `model` whose values bf16 holds exactly in bf16 (as
    `BF16FrozenLinear`). Weights shared with another module (tied embeddings: the lookup would then give bf16) and
    biases stay as they are. Returns (layers converted, frozen linear layers left in fp32 because bf16 would round
    them). Only for a run that trains in bf16 autocast: its matmuls see the same bf16 values either way."""
    shared = _shared(model)
    converted = kept = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        w = module.weight
        if w.requires_grad or w.dtype != torch.float32 or id(w) in shared or w.device.type == "meta":
            continue
        if not exact_in_bf16(w):
            kept += 1
            continue
        module.weight = torch.nn.Parameter(w.detach().to(torch.bfloat16), requires_grad=False)
        module.__class__ = BF16FrozenLinear
        converted += 1
    return converted, kept
