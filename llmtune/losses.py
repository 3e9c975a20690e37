"""Per-token cross-entropy for the tasks' evaluation loops."""

from __future__ import annotations

from typing import Any


def token_cross_entropy(logits: Any, target: Any, ignore_index: int = -100) -> Any:
    """cross_entropy of (rows, length, classes) logits against (rows, length) targets, reduction none: the same
    values as `F.cross_entropy(logits.transpose(1, 2), target)`, computed on the (rows * length, classes) view.
    The transposed layout puts the class dimension out of the innermost place, and PyTorch's CPU kernel for it is
    about 5x slower (2.1 s against 0.43 s for 4 x 300 tokens over a 49k vocabulary on 2 cores)."""
    import torch.nn.functional as F

    rows, length = target.shape
    return F.cross_entropy(logits.reshape(rows * length, -1), target.reshape(-1), ignore_index=ignore_index,
                           reduction="none").view(rows, length)
