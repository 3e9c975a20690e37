"""A LoRA down-projection with its adapter's dropout inside: the memory half of a LoRA layer's backward.

PEFT computes `lora_B(lora_A(dropout(x)))`. On a CPU, nn.Dropout saves its float noise and lora_A saves the
dropped input: two copies of x per adapted layer (on CUDA a byte mask and the dropped copy). `DroppedLinear`
is lora_A with the dropout in its own autograd function, which saves x itself (one tensor, whichever layers
share it: q, k and v read the same normed hidden state) and a bool mask, and recomputes the dropped input in
the backward. The noise is drawn exactly as nn.Dropout draws it on a CPU, so a seeded run gives PEFT's numbers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _DroppedLinearFn(torch.autograd.Function):
    """linear(dropout(x, p), weight), saving x and a bool mask for the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        # nn.Dropout's CPU path: float noise from bernoulli_(1 - p), divided by 1 - p, times the input
        noise = torch.empty_like(x).bernoulli_(1 - p)
        noise.div_(1 - p)
        out = F.linear(x * noise, weight)  # under autocast, in its precision as PEFT's lora_A would be
        ctx.save_for_backward(x, noise.ne(0), weight)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, keep, weight = ctx.saved_tensors
        noise = keep.to(x.dtype).div_(1 - ctx.p)  # the forward's noise, bit for bit
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # as an autocast linear does: the matmul in the output's precision, the gradient cast back to x's
            grad_x = (g @ weight.to(g.dtype)).to(x.dtype).reshape(x.shape) * noise
        if ctx.needs_input_grad[1]:
            dropped = (x * noise).reshape(-1, x.shape[-1]).to(g.dtype)
            grad_w = (g.t() @ dropped).to(weight.dtype)
        return grad_x, grad_w, None


class DroppedLinear(torch.nn.Linear):
    """lora_A (no bias) with its adapter's dropout inside; eval mode and no-grad run dropout + linear as PEFT."""

    dropout_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_p > 0 and torch.is_grad_enabled():
            return _DroppedLinearFn.apply(x, self.weight, self.dropout_p)
        return super().forward(F.dropout(x, self.dropout_p, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout_p}"
