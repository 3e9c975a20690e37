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
