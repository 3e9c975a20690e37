"""Model FLOPs utilisation: each run's model FLOPs per second as a share of this machine's measured matmul peak.

The peak is measured, not taken from a data sheet: at the start of `llmtune benchmark` and again after each
measured run (between runs, never during one), square matrix products in each precision the runs use (fp32; bf16
where the CPU or GPU runs it natively), on the threads the runs get, best of a few timed bursts; the highest
reading of the whole benchmark is the peak. That is the most the machine's matmul kernels deliver here, the
ceiling training can approach.

Model FLOPs per trained token follow the model's shape, not the implementation (the same count on both sides,
so the MFU ratio of two sides is their tokens/s ratio):

    6 * N_trained + 4 * N_frozen + 12 * layers * hidden * L

N: the weights of the model's linear layers (every matrix product: attention and MLP projections, heads, a
decoder's output layer over the whole vocabulary even where a side computes it for some positions only; the
embedding lookup is no product). A trained weight costs 2 FLOPs per token forward and 4 backward (gradients of
the input and of the weight); a frozen one (the base under LoRA) 2 forward and 2 backward (the input's gradient
only); LoRA's A and B matrices are trained weights (r * (in + out) each). Attention adds 2 * 2 * hidden * L per
layer and token forward (QK^T and the weighted sum over the L positions an example attends to; no causal halving,
as in the PaLM paper's count) and twice that backward, with L the mean trained tokens per example: per example,
never a packed row's or a padded batch's length. A DPO/IPO step also runs the frozen reference forward once
(2 * N + 4 * layers * hidden * L more per token).
"""

from __future__ import annotations

import time
from typing import Any

# the workloads whose model FLOPs the formula above covers (encoder-decoder summarization, generation and metric
# scoring are left out: their MFU column says "—")
CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "ner": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
    "causal_lm": "AutoModelForCausalLM",
    "causal_lm_long": "AutoModelForCausalLM",
    "preference": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "embedding": "AutoModel",
}


def measure_peak(threads: int, dtype: str = "fp32", device: str = "cpu", seconds: float = 1.0) -> float:
    """FLOP/s of the best of three timed bursts of square matrix products (n=2048 on a CPU, 8192 on a GPU)."""
    import torch

    torch.set_num_threads(threads)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up: kernels chosen, caches and clocks up
        a @ b
    sync()
    best = 0.0
    for _ in range(3):
        count, t0 = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / 3:
                break
        best = max(best, 2 * n**3 * count / elapsed)
    return best


def peaks(threads: int, seconds: float = 1.0) -> dict[str, Any]:
    """The measured peaks this benchmark's MFU figures divide by: {"device", "fp32", "bf16" (where native)}."""
    import torch

    from llmtune.hardware import native_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {"device": device, "threads": threads, "matrix": 8192 if device == "cuda" else 2048}
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 peak is fp32's, not TF32's
    out["fp32"] = measure_peak(threads, "fp32", device, seconds)
    if native_bf16():
        out["bf16"] = measure_peak(threads, "bf16", device, seconds)
    return out


def combine(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """The peak MFU divides by, from readings of `peaks` taken over a benchmark run (at its start and after each
    measured run): the highest of each precision, the ceiling the kernels reached here. A shared VM's matmul
    throughput moves by a quarter between minutes; one reading at the start would move every MFU with it, the
    highest one is the least flattering divisor. The readings' range is kept beside it."""
    out = {k: readings[0][k] for k in ("device", "threads", "matrix")}
    out["readings"] = len(readings)
    for precision in ("fp32", "bf16"):
        values = [r[precision] for r in readings if r.get(precision)]
        if values:
            out[precision] = max(values)
            out[f"{precision}_range"] = [min(values), max(values)]
    return out


def model_shape(workload: str, model_dir: str, lora: dict[str, Any] | None = None,
                num_labels: int | None = None) -> dict[str, Any]:
    """The counts the formula needs, from the model folder's config on the meta device (no weights read):
    linear weights trained and frozen, layers, hidden size."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    if num_labels:
        config.num_labels = num_labels
    cls = getattr(transformers, CLASSES[workload])
    with torch.device("meta"):
        model = cls.from_config(config)
    linear = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            linear += module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
    adapter = 0
    if lora:
        targets = lora.get("target_modules", "all-linear")
        head = getattr(model, "get_output_embeddings", lambda: None)()
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or module is head:
                continue
            if targets == "all-linear" or any(name.endswith(t) for t in targets):
                adapter += lora["r"] * (module.in_features + module.out_features)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 0
    return {"linear_params": linear, "adapter_params": adapter, "frozen": bool(lora), "layers": layers,
            "hidden": hidden}


def flops_per_token(shape: dict[str, Any], mean_length: float, reference_forward: bool = False) -> float:
    """Model FLOPs per trained token (see the module's docstring)."""
    n, layers, hidden = shape["linear_params"], shape["layers"], shape["hidden"]
    attention = 4 * layers * hidden * mean_length  # forward, per token
    flops = (4 if shape["frozen"] else 6) * n + 6 * shape["adapter_params"] + 3 * attention
    if reference_forward:
        flops += 2 * n + attention
    return float(flops)


def run_mfu(run: dict[str, Any], spec: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
    """model TFLOP/s and MFU of one measured run (empty where the workload has no shape or the run no tokens)."""
    shape = spec.get("flops")
    tps, sps = run.get("tokens_per_second"), run.get("samples_per_second")
    if not shape or not tps or not sps:
        return {}
    precision = run.get("precision") or ("bf16" if run.get("mixed_precision") == "bf16" else "fp32")
    mean_length = shape.get("mean_length") or tps / sps  # tokens per example trained
    flops = tps * flops_per_token(shape, mean_length, shape.get("reference_forward", False))
    out = {"model_tflops": flops / 1e12, "mfu_precision": precision}
    if peak.get(precision):
        out["mfu"] = flops / peak[precision]
    return out
