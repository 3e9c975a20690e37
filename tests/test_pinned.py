"""Same recipe, same seed, same numbers: one short run per task, pinned before the task-contract refactor.

tests/pinned.json holds, per task, the final eval metrics and, per machine (CPU model, family and model number,
torch version), a sha256 of the final weights. The metrics are compared on every machine (to 1e-5 relative:
another CPU's matmul kernels sum in another order); a weights hash only on the machine that recorded it, where
the arithmetic is bit-identical. `LLMTUNE_PIN_RECORD=1 pytest tests/test_pinned.py` adds this machine's hashes
where the metrics still agree and records anew where they do not: do the latter only for a deliberate change of
numbers, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import NEGATIVE, POSITIVE, write_jsonl

PINNED = Path(__file__).resolve().parent / "pinned.json"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order on every run
    yield
    torch.set_num_threads(before)


def machine() -> str:
    import torch

    # the model name alone is too coarse: "AMD EPYC" is a Zen 3 with AVX2 one day and a Zen 4 with AVX-512 the
    # next, whose kernels sum in another order (the classification weights differed in the last bits)
    cpu = platform.processor() or ""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    if "cpu family" in fields and "model" in fields:
        cpu += f" (family {fields['cpu family']} model {fields['model']})"
    return f"{cpu} | torch {torch.__version__}"


def _recipe(task: str, model: Path, tmp: Path) -> dict[str, Any]:
    train: dict[str, Any] = {"output_dir": str(tmp / "run"), "max_steps": 4, "per_device_train_batch_size": 4,
                             "per_device_eval_batch_size": 4, "logging_steps": 2, "eval_steps": 2, "seed": 7}
    if task == "classification":
        rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
        write_jsonl(tmp / "train.jsonl", rows)
        write_jsonl(tmp / "eval.jsonl", rows[::3])
        return {"task": task, "model": {"name": str(model)},
                "data": {"train_file": str(tmp / "train.jsonl"), "eval_file": str(tmp / "eval.jsonl")},
                "train": {**train, "learning_rate": 1e-3, "max_seq_length": 32}}
    if task == "summarization":
        return {"task": task, "model": {"name": str(model)},
                "data": {"dataset": "llmtune:summarize", "source_column": "document", "target_column": "summary",
                         "max_train_samples": 16, "max_eval_samples": 4},
                "train": {**train, "learning_rate": 3e-2, "max_source_length": 48, "max_target_length": 16},
                "generation": {"max_new_tokens": 6}}
    return {"task": "causal_lm", "model": {"name": str(model)},
            "data": {"dataset": "llmtune:instruct", "max_train_samples": 16, "max_eval_samples": 4,
                     "packing": task == "causal_lm_packed"},
            "lora": {"r": 4, "alpha": 8, "enabled": task != "causal_lm_packed"},
            "train": {**train, "learning_rate": 5e-3, "max_seq_length": 96}}


def _weights_hash(run: Path) -> str:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (run / "adapter_model.safetensors").exists() else "model.safetensors"
    tensors = load_file(str(run / name))
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("task", ["classification", "summarization", "causal_lm", "causal_lm_packed"])
def test_same_recipe_same_numbers(task: str, tmp_path: Path, request: pytest.FixtureRequest, cli) -> None:
    fixture = {"classification": "tiny_bert", "summarization": "tiny_t5"}.get(task, "tiny_llama")
    model = request.getfixturevalue(fixture)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(task, model, tmp_path)), encoding="utf-8")
    res = cli("finetune", path)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    metrics = {k: v for k, v in results.items() if k.startswith(("eval_", "base_eval_")) and isinstance(v, float)}
    digest = _weights_hash(tmp_path / "run")
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    want = pinned.get(task)
    same = want is not None and set(metrics) == set(want["metrics"]) and all(
        metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-7) for k, v in want["metrics"].items())
    if os.environ.get("LLMTUNE_PIN_RECORD"):
        # numbers that still agree keep their first recording and gain this machine's hash; others start anew
        weights = dict(want["weights"]) if same else {}
        pinned[task] = {"metrics": want["metrics"] if same else metrics, "weights": {**weights, machine(): digest}}
        PINNED.write_text(json.dumps(pinned, indent=2, sort_keys=True) + "\n")
        return
    assert want is not None, f"nothing pinned for {task}: LLMTUNE_PIN_RECORD=1"
    assert set(metrics) == set(want["metrics"]), (sorted(metrics), sorted(want["metrics"]))
    for key, value in want["metrics"].items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    if machine() in want["weights"]:  # bit-identical arithmetic where it was recorded
        assert digest == want["weights"][machine()]
