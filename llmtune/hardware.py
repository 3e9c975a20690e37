"""Questions about the machine, asked in one place: native bf16, the mixed-precision choice, settings this
hardware cannot run, and handing freed memory back. Used by the training loop, `llmtune eval` and `llmtune env`."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from llmtune.errors import LlmtuneError

if TYPE_CHECKING:
    from llmtune.schema import Recipe


def native_bf16() -> str | None:
    """Where bf16 runs at full speed here: a CUDA GPU with bf16, or a CPU with bf16 instructions (AVX512-BF16,
    AMX), which oneDNN uses for bf16 matrix products (~1.7x fp32 on an AVX512-BF16 EPYC). None elsewhere:
    without them bf16 is emulated on a CPU and slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return "CUDA GPU with bf16" if torch.cuda.is_bf16_supported() else None
    try:
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "CPU with bf16 instructions"
    except (AttributeError, RuntimeError):
        pass
    return None


def resolve_mixed_precision(recipe: Recipe) -> str:
    """train.mixed_precision, with `auto` made concrete: bf16 where the hardware runs it natively, else no."""
    mp = recipe.train.mixed_precision
    if mp == "auto":
        return "bf16" if native_bf16() else "no"
    return mp


def check_hardware(recipe: Recipe) -> None:
    """Settings this machine cannot run, said before anything is loaded."""
    import torch

    if recipe.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise LlmtuneError(f"{recipe.source}: train.mixed_precision=fp16 needs a CUDA GPU; on CPU use bf16 or no")


def device_description() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def release_freed_memory() -> None:
    """Hand the heap pages training freed back to the OS before eval adds its own peak on top. Training with
    varying batch shapes (bf16 autocast especially) leaves glibc's heap at 1.3-1.5 GB with under 0.3 GB live;
    eval's allocations then come on top of that. No effect on any number; milliseconds."""
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...)
            pass


@contextlib.contextmanager
def full_precision(model: Any) -> Any:
    """Evaluate without the autocast that Accelerate wraps around forward for mixed precision (put back after).

    The weights are fp32 whatever the precision of training arithmetic, and the numbers of a run's eval must
    not depend on it: under bf16 autocast a young LoRA adapter's small contribution is rounded away where it is
    added to the base layer's bf16 output (eval loss 1.308 in bf16 against 1.266 in fp32 for the same adapter,
    which `llmtune eval` would then report).
    """
    inner = getattr(model, "module", model)  # DDP keeps the wrapped forward on the module inside
    wrapped, original = inner.__dict__.get("forward"), inner.__dict__.get("_original_forward")
    if wrapped is None or original is None:
        yield
        return
    inner.forward = original
    try:
        yield
    finally:
        inner.forward = wrapped
