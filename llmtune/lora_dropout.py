"""A LoRA down-projection with its adapter's dropout inside: the memory half of a LoRA layer's backward.

PEFT computes `lora_B(lora_A(dropout(x)))`. On a CPU, nn.Dropout saves its float noise and lora_A saves the
dropped input: two copies of x per adapted layer (on CUDA a byte mask and the dropped copy). `DroppedLinear`
is lora_A with the dropout in its own autograd function, which saves x itself (one tensor, whichever layers
share it: q, k and v read the same normed hidden state) and a bool mask, and recomputes the dropped input in
the backward.

The mask comes from 16 random bits per element (`keep_mask`), four to each 64-bit draw of torch's generator,
instead of nn.Dropout's float noise: on a CPU `bernoulli_` draws one float per element, serially (8.5 ms for
4 x 384 tokens x 576 features on 2 cores, against 1.1 ms), and was 19% of a SmolLM2 + LoRA step in bf16 (PEFT's
too). The rate is p to 1/65536 (p = 0.05: 0.0500031), the kept values are scaled by 1 / (1 - that rate), so the
expectation is exact. Seeded runs repeat; their masks are not PEFT's masks (other draws of the same distribution).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A bool mask of x's shape, each element kept with probability 1 - p (p to 1/65536), and the scale
    1 / (1 - p) of that exact rate. Four 16-bit lanes from each full-range 64-bit draw of the default generator
    on x's device, so a seeded run draws the same masks again."""
    n = x.numel()
    drop = round(p * 65536)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(torch.iinfo(torch.int64).min, None)
    keep = words.view(torch.int16)[:n].ge(drop - 32768).view(x.shape)
    return keep, 65536 / (65536 - drop)


class _DroppedLinearFn(torch.autograd.Function):
    """linear(dropout(x, p), weight), saving x and a bool mask for the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x, p)
        # the scale on the rank-wide output instead of the input: one pass over x less
        out = F.linear(x * keep, weight) * scale  # under autocast, in its precision as PEFT's lora_A would be
        ctx.save_for_backward(x, keep, weight)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, keep, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]) * ctx.scale  # rank-wide: the scale costs nothing here
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # as an autocast linear does: the matmul in the output's precision, the gradient cast back to x's
            grad_x = (g @ weight.to(g.dtype)).to(x.dtype).reshape(x.shape) * keep
        if ctx.needs_input_grad[1]:
            dropped = (x * keep).reshape(-1, x.shape[-1]).to(g.dtype)
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
