"""scripts/gpu_check.py on a CPU: the dry run builds the check list and every recipe it writes validates; the plain
command says it checked nothing and exits 0; the per-process hook records memory and injects one overflow."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() sets these with setdefault; through monkeypatch they are put back after the test
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def test_dry_run_lists_every_check_and_validates_every_recipe(gpu_check: ModuleType, tmp_path: Path, quiet_env: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    code = gpu_check.main(["--dry-run", "--work-dir", str(work)])
    out = capsys.readouterr().out
    assert code == 0, out
    m = re.search(r"validated (\d+) recipes \((\d+) ok\)", out)
    assert m and m.group(1) == m.group(2), out
    recipes = sorted(p.name for p in (work / "recipes").glob("*.yaml"))
    assert int(m.group(1)) == len(recipes) >= 20, recipes
    for name in ("classification_bf16", "summarization_fp16", "causal_lm_fp16", "mixed_precision_auto",
                 "packing_equals_padding", "resume_after_sigkill", "fsdp_one_process", "gradient_checkpointing_memory",
                 "benchmark_classification", "benchmark_causal_lm", "matmul_peak", "qlora", "deepspeed_zero2"):
        assert re.search(rf"^  {name}\s", out, re.M), name
    # no training happened, and the model folders hold no weights
    assert not (work / "runs").exists()
    assert not list((work / "models").rglob("*.safetensors"))
    # the self-built tokenizer: pad/bos/eos/unk and a chat template on the decoder layout
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "tokenizers" / "dec")
    assert None not in (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_without_cuda_nothing_is_checked(gpu_check: ModuleType, tmp_path: Path, quiet_env: None,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA GPU: nothing checked"
    assert gpu_check.main(["--output", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["meta"]["cuda_available"] is False and report["checks"] == []


def test_hook_records_memory_and_injects_one_overflow(gpu_check: ModuleType, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The sitecustomize every llmtune process runs under, here run in this process: a peak file at exit; with
    GPU_CHECK_INJECT_INF_AT=3 the gradient scaler sees an inf at its 3rd unscale_, skips that step and halves its
    scale (a CPU GradScaler stands in for the CUDA one)."""
    import atexit

    import torch
    from torch.amp.grad_scaler import GradScaler

    for name in ("unscale_", "update"):  # the hook patches these; monkeypatch puts them back
        monkeypatch.setattr(GradScaler, name, getattr(GradScaler, name))
    monkeypatch.setenv("GPU_CHECK_PEAK_DIR", str(tmp_path / "peaks"))
    monkeypatch.setenv("GPU_CHECK_INJECT_INF_AT", "3")
    path = tmp_path / "hook" / "sitecustomize.py"
    path.parent.mkdir()
    path.write_text(gpu_check.SITECUSTOMIZE)
    hook: dict = {"__file__": str(path), "__name__": "gpu_check_hook"}
    exec(compile(gpu_check.SITECUSTOMIZE, str(path), "exec"), hook)
    atexit.unregister(hook["_write"])

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(4):
        scaler.scale(model(torch.ones(2, 4)).sum()).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    hook["_write"]()
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "peaks").glob("*.json")]
    assert record["rss_peak_mb"] > 0 and "cuda_peak_allocated_mb" not in record
    scaler_seen = record["scaler"]
    assert scaler_seen["injected"] and scaler_seen["unscale_calls"] == 4
    assert [after / before for before, after in scaler_seen["updates"]] == [1.0, 1.0, 0.5, 1.0]
