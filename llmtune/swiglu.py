"""The gated MLP of Llama-family decoders, `down(silu(gate(x)) * up(x))`, keeping less for its backward.

Autograd keeps three tensors of the intermediate width per layer and token for `silu(g) * u`: g (for silu's
backward), silu(g) and u (for the product's). `_SiluMulFn` keeps g and u and recomputes silu(g) in the backward:
one intermediate-width tensor less per layer (SmolLM2: 1,536 values per token and layer, 30 layers; a sixth of
what a LoRA step keeps). The forward runs the same operations, and the backward the same kernels on the same
values (silu_backward, products), so losses and gradients are bit for bit those of the model's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

# the decoders whose MLP forward is exactly `down_proj(act_fn(gate_proj(x)) * up_proj(x))` (transformers 5.x)
GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "OlmoMLP", "Olmo2MLP", "GraniteMLP", "CohereMLP")


class _SiluMulFn(torch.autograd.Function):
    """silu(g) * u, saving g and u only."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, u)
        return F.silu(g) * u

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        g, u = ctx.saved_tensors
        grad_g = grad_u = None
        if ctx.needs_input_grad[0]:
            grad_g = torch.ops.aten.silu_backward(grad * u, g)
        if ctx.needs_input_grad[1]:
            grad_u = grad * F.silu(g)
        return grad_g, grad_u


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (g.requires_grad or u.requires_grad):
        return _SiluMulFn.apply(g, u)
    return F.silu(g) * u


def _forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _is_silu(act: Any) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"


def fuse(model: Any) -> int:
    """Give every gated SiLU MLP of a known decoder family the forward above; returns how many were changed.
    Weights, state-dict keys and saved models are unchanged (only the instance's forward is)."""
    fused = 0
    for module in model.modules():
        if type(module).__name__ not in GATED_MLPS or not _is_silu(getattr(module, "act_fn", None)):
            continue
        if not all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")):
            continue
        module.forward = types.MethodType(_forward, module)
        fused += 1
    return fused
