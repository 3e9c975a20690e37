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


# glibc's mallopt parameter, and the size from which llmtune's CPU allocations get pages of their own
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2 * 2**20
OFF_SWITCH = "LLMTUNE_CPU_ALLOCATOR"  # =default: leave glibc and torch's allocator as they are
_allocator: dict[str, str] = {}


def tune_cpu_allocator() -> dict[str, str]:
    """The CPU allocator settings llmtune trains with (Linux, glibc), applied at start, before torch is imported.

    glibc's malloc raises its mmap threshold to the largest block freed so far (up to 32 MiB), so after the first
    step nearly every activation comes from its heap; the heap hands memory back only from its top, and batches of
    varying shapes leave it fragmented: a LoRA run on SmolLM2 (batch 8 of 300-500 tokens) peaked at 14.0 GB resident
    with 6.3 GB live. Here the threshold is fixed at 2 MiB: larger blocks are mapped and returned when freed.
    Measured on a 2-core EPYC, one run each: that LoRA run peaked at 6.7 GB instead of 14.0 at 1.04x the speed,
    MiniLM classification at 0.92x the memory and 1.03x the speed (README, Performance). 2 MiB rather than the
    4 MiB first chosen: on a Zen 4, same spec and seed, -6% to -7% peak memory on the LoRA workloads and -2% on
    classification, speed within the runs' spread. On the 2-core Xeon VM of 2026-12-08 (same spec and seed, the
    llmtune side alone): the long-example LoRA run 165 tokens/s at 5.2 GB, against 160 at 8.3 GB with glibc's
    default.
    torch's huge-page blocks (THP_MEM_ALLOC_ENABLE=1) were part of this until 2026-12-08 and are no longer set: on
    a VM whose balloon driver reports freed 2 MB blocks to the host (virtio_balloon, page_reporting_order 9), every
    huge page freed is taken back by the host and the next one faults in fresh, about 3 ms each; the same Xeon ran
    the two LoRA workloads at 0.54x and 0.63x the speed with them (88.6 against 165 and 168 against 268 tokens/s).
    A setting the user made (MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES, THP_MEM_ALLOC_ENABLE) is kept;
    LLMTUNE_CPU_ALLOCATOR=default turns all of it off. Returns what is in effect, for `llmtune env`."""
    import os
    import sys

    if _allocator:
        return _allocator
    if os.environ.get(OFF_SWITCH, "").lower() in ("default", "0", "off", "no"):
        _allocator["allocator"] = f"glibc and torch defaults ({OFF_SWITCH}={os.environ[OFF_SWITCH]})"
        return _allocator
    if not sys.platform.startswith("linux"):
        _allocator["allocator"] = "the platform's default"
        return _allocator
    notes = []
    if os.environ.get("THP_MEM_ALLOC_ENABLE", "") not in ("", "0"):
        notes.append(f"torch blocks of 2 MB+ on huge pages (THP_MEM_ALLOC_ENABLE={os.environ['THP_MEM_ALLOC_ENABLE']}, "
                     "yours)")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        notes.append("glibc malloc as you set it")
    else:
        try:
            import ctypes

            ok = ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        except (OSError, AttributeError):  # not glibc (musl, ...)
            ok = 0
        notes.append(f"glibc mmap threshold {MMAP_THRESHOLD // 2**20} MiB" if ok else "glibc malloc: default")
    _allocator["allocator"] = "; ".join(notes)
    return _allocator


def cpu_allocator() -> str:
    """What tune_cpu_allocator put in effect in this process (the llmtune command calls it first thing)."""
    return _allocator.get("allocator", "glibc and torch defaults (llmtune tunes them when run as the llmtune "
                                       "command; here it runs as a library)")


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
