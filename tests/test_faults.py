"""Numerical faults and write failures stop a run with a message and keep the last good checkpoint."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from conftest import tiny_recipe


@pytest.fixture
def nan_bert(tmp_path: Path, tiny_bert: Path) -> Path:
    """The tiny BERT with one NaN in its embeddings: every loss is NaN."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan-bert"
    shutil.copytree(tiny_bert, folder)
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if "word_embeddings" in k)
    weights[key][:] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert torch.isnan(load_file(folder / "model.safetensors")[key]).all()
    return folder


def test_nonfinite_loss_stops_with_the_step(tmp_path: Path, nan_bert: Path, sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    recipe = tiny_recipe(tmp_path / "r.yaml", nan_bert, train, eval_, tmp_path / "out")
    res = cli("finetune", recipe)
    assert res.exit_code == 2
    assert "non-finite loss (nan) at step 1" in res.stderr and "skip_nonfinite" in res.stderr
    assert not (tmp_path / "out" / "COMPLETE").exists()


def test_skip_nonfinite_keeps_going(tmp_path: Path, nan_bert: Path, sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    recipe = tiny_recipe(tmp_path / "r.yaml", nan_bert, train, eval_, tmp_path / "out", train__skip_nonfinite=True)
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["global_step"] == 4


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path: Path, tiny_bert: Path, sentiment_files, cli,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = {"n": 0}

    def flaky(self, output_dir=None, **kw):  # the second checkpoint hits a full disk half-way
        calls["n"] += 1
        if calls["n"] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", flaky)
    train, eval_ = sentiment_files
    out = tmp_path / "out"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out, train__save_steps=2)
    res = cli("finetune", recipe)
    assert res.exit_code == 2
    assert "No space left on device" in res.stderr and "checkpoint-2 is intact" in res.stderr
    assert (out / "checkpoint-2" / "COMPLETE").exists()
    assert not (out / ".tmp-checkpoint-4").exists() and not (out / "checkpoint-4").exists()
    monkeypatch.setattr(Accelerator, "save_state", real)
    res = cli("finetune", recipe)  # free space again: resume from checkpoint-2 and finish
    assert res.exit_code == 0, res.output
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 4


def test_trust_remote_code_defaults_off_and_weights_are_safetensors(tmp_path: Path, tiny_bert: Path,
                                                                     sentiment_files, cli) -> None:
    from llmtune.recipe import load_recipe

    train, eval_ = sentiment_files
    out = tmp_path / "out"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out)
    assert load_recipe(recipe).model.trust_remote_code is False
    assert cli("finetune", recipe).exit_code == 0
    files = [p.name for p in out.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth")) and "optimizer" not in f
                and "scheduler" not in f], files
    assert "model.safetensors" in files


def test_pickled_model_folder_needs_opt_in(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_bert, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    train, eval_ = sentiment_files
    recipe = tiny_recipe(tmp_path / "r.yaml", folder, train, eval_, tmp_path / "out")
    res = cli("finetune", recipe)
    assert res.exit_code == 2 and "pickle" in res.stderr and "model.allow_pickle=true" in res.stderr
    assert cli("finetune", recipe, "model.allow_pickle=true").exit_code == 0
