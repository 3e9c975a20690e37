"""Never lose a run: SIGKILL at several moments then resume gives the uninterrupted result; SIGTERM saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_recipe

STEPS = 12


def _recipe(tmp_path: Path, tiny_bert: Path, files: tuple[Path, Path], name: str, **extra: object) -> Path:
    train, eval_ = files
    settings = {"train__max_steps": STEPS, "train__save_steps": 2, "train__eval_steps": 6,
                "train__save_total_limit": 3, "train__per_device_train_batch_size": 2,
                "train__gradient_accumulation_steps": 2, "train__learning_rate": 5e-4, "train__warmup_steps": 2,
                **extra}
    return tiny_recipe(tmp_path / f"{name}.yaml", tiny_bert, train, eval_, tmp_path / name, **settings)


def _start(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "llmtune", "finetune", str(recipe)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 120) -> None:
    folder, pattern = path_glob
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list(folder.glob(pattern)) or proc.poll() is not None:
            return
        time.sleep(0.05)


@pytest.fixture
def reference(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> Path:
    recipe = _recipe(tmp_path, tiny_bert, sentiment_files, "reference")
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    return tmp_path / "reference"


@pytest.mark.parametrize("kill_after", ["checkpoint-2", "checkpoint-6"])
def test_sigkill_then_resume_is_exact(tmp_path: Path, tiny_bert: Path, sentiment_files, reference: Path,
                                      kill_after: str, cli) -> None:
    recipe = _recipe(tmp_path, tiny_bert, sentiment_files, "killed")
    out = tmp_path / "killed"
    proc = _start(recipe)
    _wait_for((out, kill_after), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "COMPLETE").exists(), "the run finished before it could be killed; make it longer"
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    a, b = _weights(reference), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k
    ra = json.loads((reference / "all_results.json").read_text())
    rb = json.loads((out / "all_results.json").read_text())
    for key in ("eval_loss", "eval_accuracy", "global_step"):
        assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
    assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-6)
    # the killed attempt's rows past its checkpoint are gone: each step is logged once, as uninterrupted
    log_a = [json.loads(x) for x in (reference / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]


def test_partial_checkpoint_is_ignored(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    recipe = _recipe(tmp_path, tiny_bert, sentiment_files, "partial", train__max_steps=4)
    out = tmp_path / "partial"
    (out / ".tmp-checkpoint-8").mkdir(parents=True)
    (out / "checkpoint-8").mkdir()  # no COMPLETE marker: what a kill during the rename would leave
    (out / "recipe.yaml").write_text("")
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 4
    assert not (out / ".tmp-checkpoint-8").exists()


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path, tiny_bert: Path, sentiment_files) -> None:
    recipe = _recipe(tmp_path, tiny_bert, sentiment_files, "term", train__max_steps=400, train__save_steps=1000,
                     train__eval_steps=1000)
    out = tmp_path / "term"
    proc = _start(recipe)
    _wait_for((out, "log.jsonl"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Run the same command again to resume" in err
    ckpts = list(out.glob("checkpoint-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").exists()


def test_resume_refuses_changed_data(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    recipe = _recipe(tmp_path, tiny_bert, sentiment_files, "changed", train__max_steps=4)
    out = tmp_path / "changed"
    proc = _start(recipe)
    _wait_for((out, "checkpoint-2"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "COMPLETE").exists():
        pytest.skip("run finished before the kill")
    res = cli("finetune", recipe, "data.max_train_samples=15")
    assert res.exit_code == 2 and "was made with different training data (rows or columns)" in res.stderr
    res = cli("finetune", recipe, "train.learning_rate=1e-3")  # the optimizer state holds the old one
    assert res.exit_code == 2 and "different train.learning_rate or train.weight_decay" in res.stderr
    res = cli("finetune", recipe, "train.eval_steps=3")  # eval cadence may change
    assert res.exit_code == 0, res.output


def test_preference_lora_sigkill_then_resume_is_exact(tmp_path: Path, tiny_llama: Path, cli) -> None:
    """DPO with LoRA (dropout on: the resumed RNG stream counts) killed after checkpoint-2 ends with the adapter,
    eval and log rows of an uninterrupted run; checkpoint-2 holds a partial logging window (logging_steps 3),
    so the resumed step-3 row needs the saved sums of the training metrics too."""
    import yaml
    from safetensors.torch import load_file

    def recipe(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "task": "preference", "model": {"name": str(tiny_llama)},
            "data": {"dataset": "llmtune:preference", "max_train_samples": 16, "max_eval_samples": 8},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "train": {"output_dir": str(tmp_path / name), "max_steps": STEPS, "save_steps": 2, "eval_steps": 6,
                      "save_total_limit": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
                      "per_device_eval_batch_size": 4, "learning_rate": 5e-3, "warmup_steps": 2,
                      "logging_steps": 3, "max_seq_length": 64}}))
        return path

    res = cli("finetune", recipe("reference"))
    assert res.exit_code == 0, res.output
    killed = recipe("killed")
    out = tmp_path / "killed"
    proc = _start(killed)
    _wait_for((out, "checkpoint-2"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "COMPLETE").exists(), "the run finished before it could be killed; make it longer"
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    res = cli("finetune", killed)
    assert res.exit_code == 0, res.output
    a, b = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "reference", out))
    assert a.keys() == b.keys() and a
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (tmp_path / "reference", out))
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "train_loss", "global_step"):
        assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
    log_a, log_b = ([json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
                    for d in (tmp_path / "reference", out))
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]
    for x, y in zip(log_a, log_b, strict=True):
        for k, v in x.items():
            if k not in ("samples_per_second", "learning_rate"):
                assert y[k] == pytest.approx(v, abs=1e-6), (x["step"], k)
    assert "rewards/accuracies" in log_b[1] and log_b[1]["step"] == 3
