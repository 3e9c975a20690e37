"""hardware.py: the one answer to "is bf16 native here", the mixed-precision choice, and the fp32 eval swap."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune import hardware
from llmtune.errors import LlmtuneError


def _recipe(tmp_path: Path, mp: str):
    from llmtune.recipe import build_recipe

    return build_recipe({"model": {"name": "minilm-l6"}, "data": {"train_file": "x.jsonl"},
                         "train": {"mixed_precision": mp, "output_dir": str(tmp_path)}})


def test_auto_follows_native_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _recipe(tmp_path, "auto")
    monkeypatch.setattr(hardware, "native_bf16", lambda: None)
    assert hardware.resolve_mixed_precision(r) == "no"
    monkeypatch.setattr(hardware, "native_bf16", lambda: "CPU with bf16 instructions")
    assert hardware.resolve_mixed_precision(r) == "bf16"
    assert hardware.resolve_mixed_precision(_recipe(tmp_path, "no")) == "no"


def test_native_bf16_agrees_with_onednn_on_cpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine answers from the GPU")
    expected = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bool(hardware.native_bf16()) == expected


def test_fp16_needs_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("fp16 is fine on CUDA")
    with pytest.raises(LlmtuneError, match="fp16 needs a CUDA GPU"):
        hardware.check_hardware(_recipe(tmp_path, "fp16"))


def test_full_precision_removes_the_autocast_wrapper_and_puts_it_back() -> None:
    import torch

    model = torch.nn.Linear(2, 2)
    original = model.forward
    model._original_forward = original  # what Accelerate leaves on a model it wraps in autocast
    model.forward = lambda *a, **k: "autocast"
    with hardware.full_precision(model):
        assert model.forward == original
    assert model.forward() == "autocast"
    plain = torch.nn.Linear(2, 2)
    with hardware.full_precision(plain):  # nothing wrapped: nothing to do
        assert "forward" not in plain.__dict__
    hardware.release_freed_memory()
    assert hardware.device_description()


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc and THP are Linux's")
def test_cpu_allocator_is_tuned_before_torch_and_can_be_turned_off() -> None:
    """The llmtune command fixes glibc's mmap threshold and leaves torch's blocks on 4 KB pages (huge pages cost
    ~3 ms a fault on VMs whose balloon takes freed 2 MB blocks back); a user's own settings are kept (theirs to
    turn huge pages on), and LLMTUNE_CPU_ALLOCATOR=default leaves glibc alone."""
    import os
    import subprocess
    import sys

    probe = ("import ctypes, os, sys; from llmtune import cli, hardware; sys.argv = ['llmtune', 'env'];\n"
             "try:\n    cli.run()\nexcept SystemExit:\n    pass\n"
             "import torch; print('THP', os.environ.get('THP_MEM_ALLOC_ENABLE')); "
             "print('ALLOC', hardware.tune_cpu_allocator()['allocator'])")

    def run(**env: str) -> str:
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", hardware.OFF_SWITCH)}
        out = subprocess.run([sys.executable, "-c", probe], env={**clean, "COLUMNS": "200", **env},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    tuned = run()
    assert "THP None" in tuned and "ALLOC glibc mmap threshold 2 MiB\n" in tuned
    assert "CPU allocator" in tuned and "glibc mmap threshold 2 MiB" in tuned.split("ALLOC")[0]  # llmtune env says so
    own = run(MALLOC_MMAP_THRESHOLD_="65536", THP_MEM_ALLOC_ENABLE="1")
    assert "THP 1" in own
    assert "ALLOC torch blocks of 2 MB+ on huge pages (THP_MEM_ALLOC_ENABLE=1, yours); glibc malloc as you set it" in own
    off = run(LLMTUNE_CPU_ALLOCATOR="default")
    assert "THP None" in off and "ALLOC glibc and torch defaults (LLMTUNE_CPU_ALLOCATOR=default)" in off
