"""The benchmark's MFU figures (llmtune/benchmark/mfu.py) and its TRL SFTTrainer peer.

The FLOP count is checked against independent counts (peft's own trainable-parameter count, the weights of a
real model's linear layers) and a hand computation; the peer against the Trainer reference: the same tokens."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_flops_per_token_by_hand() -> None:
    from llmtune.benchmark.mfu import flops_per_token

    shape = {"linear_params": 1000, "adapter_params": 10, "frozen": False, "layers": 2, "hidden": 8}
    # full fine-tuning: 6 N + attention 3 * (4 * layers * hidden * L), L = 5
    assert flops_per_token(shape, 5) == 6 * 1000 + 6 * 10 + 3 * 4 * 2 * 8 * 5
    frozen = {**shape, "frozen": True}
    assert flops_per_token(frozen, 5) == 4 * 1000 + 6 * 10 + 3 * 4 * 2 * 8 * 5
    # DPO's reference forward: 2 N and the attention forward once more
    assert flops_per_token(frozen, 5, reference_forward=True) == flops_per_token(frozen, 5) + 2 * 1000 + 4 * 2 * 8 * 5


def test_model_shape_counts_linear_weights_and_lora_adapters(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from llmtune.benchmark.mfu import model_shape
    from llmtune.benchmark.workloads import build_causal, build_classifier

    folder = build_classifier("tiny-bert", 3, tmp_path / "bert")
    shape = model_shape("classification", folder)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    # every parameter that is neither an embedding table nor a norm belongs to a linear layer
    expected = sum(p.numel() for p in model.parameters() if id(p) not in embeddings | norms)
    assert shape["linear_params"] == expected
    assert (shape["layers"], shape["hidden"], shape["frozen"], shape["adapter_params"]) == (2, 32, False, 0)

    llama = build_causal("tiny-llama", tmp_path / "llama")
    lora = model_shape("causal_lm", llama, {"r": 8, "target_modules": "all-linear"})
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama)
    head = base.config.vocab_size * base.config.hidden_size  # the output layer: tied, but a product all the same
    linear = sum(m.weight.numel() for m in base.modules() if isinstance(m, torch.nn.Linear))
    assert lora["linear_params"] == linear and linear > head
    peft_model = get_peft_model(base, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert lora["adapter_params"] == trainable and lora["frozen"]


def test_run_mfu_follows_from_tokens_and_peak() -> None:
    from llmtune.benchmark.mfu import flops_per_token, run_mfu

    shape = {"linear_params": 10**6, "adapter_params": 0, "frozen": False, "layers": 2, "hidden": 16}
    run = {"tokens_per_second": 500.0, "samples_per_second": 10.0, "precision": "fp32"}
    out = run_mfu(run, {"flops": shape}, {"fp32": 1e11})
    assert out["model_tflops"] == pytest.approx(500 * flops_per_token(shape, 50) / 1e12)
    assert out["mfu"] == pytest.approx(500 * flops_per_token(shape, 50) / 1e11)
    # a bf16 run is divided by the bf16 peak, and without one gets no MFU (never the fp32 peak)
    bf16 = run_mfu({**run, "precision": "bf16"}, {"flops": shape}, {"fp32": 1e11})
    assert "mfu" not in bf16 and bf16["mfu_precision"] == "bf16"
    assert run_mfu(run, {}, {"fp32": 1e11}) == {}


def test_measured_peak_is_a_plausible_rate() -> None:
    from llmtune.benchmark.mfu import measure_peak

    peak = measure_peak(1, "fp32", seconds=0.3)
    assert 1e9 < peak < 1e13  # one CPU thread: between 1 GFLOP/s and 10 TFLOP/s


def test_trl_sft_peer_trains_the_tokens_the_trainer_reference_trains(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from llmtune.benchmark.references import causal_lm, causal_lm_trl
    from llmtune.benchmark.workloads import prepare

    spec = prepare("causal_lm", "tiny", None, tmp_path / "work", 2)  # one epoch: steps x batch rows
    trl = causal_lm_trl(spec, "trl_sft", 42, tmp_path / "trl")
    ref = causal_lm(spec, "ref_tuned", 42, tmp_path / "ref")
    assert trl["global_step"] == ref["global_step"] == spec["hp"]["max_steps"]
    per_sample = [r["train_tokens_per_second"] / r["train_samples_per_second"] for r in (trl, ref)]
    assert per_sample[0] == pytest.approx(per_sample[1], rel=1e-3)
    # same initial weights, rows and seed, batches in another order: the eval loss agrees
    assert trl["quality"]["eval_loss"] == pytest.approx(ref["quality"]["eval_loss"], rel=0.01)
    assert trl["precision"] == ref["precision"] == ("bf16" if spec["autocast"] else "fp32")
