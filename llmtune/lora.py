"""Decoder-only models with LoRA: load the base (hub, folder, GGUF, alias; 4-bit for QLoRA), wrap it in a PEFT
adapter, load a finished run again, and merge base + adapter into a plain `from_pretrained` folder.

A run folder holds only the adapter and the tokenizer; the base model is found again through the run's
recipe.yaml (the same `model:` section that trained it), else through adapter_config.json's
`base_model_name_or_path` (a hub id, a folder, or for GGUF bases the .gguf file).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.models import ResolvedModel, resolve
from llmtune.schema import LoraArgs, ModelArgs, Recipe

logger = logging.getLogger("llmtune")

ADAPTER_CONFIG = "adapter_config.json"


def check_qlora(lora: LoraArgs) -> None:
    """QLoRA needs bitsandbytes' 4-bit CUDA kernels: fail before any data is tokenized when they cannot run."""
    if not lora.load_in_4bit:
        return
    import torch

    if not torch.cuda.is_available():
        raise LlmtuneError("lora.load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on "
                           "this machine's CPU. Set lora.load_in_4bit=false to train plain LoRA in full precision")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise LlmtuneError("lora.load_in_4bit (QLoRA) needs the bitsandbytes package: pip install 'llmtune[qlora]' "
                           "(or pip install bitsandbytes)") from e


def load_base(args: ModelArgs, lora: LoraArgs | None = None, resolved: ResolvedModel | None = None) -> Any:
    """AutoModelForCausalLM with llmtune's resolution. GGUF weights are dequantized into a plain dense model, so
    LoRA can wrap its Linear layers, it can train, and save_pretrained writes ordinary safetensors."""
    from transformers import AutoModelForCausalLM

    from llmtune.models import load_model

    resolved = resolved or resolve(args)
    kwargs: dict[str, Any] = {}
    if resolved.gguf_file:
        from transformers.utils.quantization_config import GgufConfig

        if lora is not None and lora.load_in_4bit:
            raise LlmtuneError(f"model.name '{args.name}': QLoRA (lora.load_in_4bit) needs a full-precision base "
                               "(a hub id or a folder), not a GGUF file")
        # without this, transformers keeps GGUF blocks packed when a matmul kernel is installed: not trainable
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    elif lora is not None and lora.load_in_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        check_qlora(lora)
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        from accelerate import PartialState

        # each process holds its own quantized copy on its own GPU (4-bit weights cannot be moved afterwards)
        kwargs["device_map"] = {"": PartialState().local_process_index}
        if args.dtype == "auto":
            kwargs["dtype"] = compute
    model = load_model(AutoModelForCausalLM, args, resolved, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and resolved.gguf_file:
        quantizer.remove_quantization_config(model)  # weights are dense already; only the label is left
    return model


def peft_config(lora: LoraArgs, task_type: str) -> Any:
    """LoraConfig for the task's peft.TaskType name (the task module's PEFT_TASK_TYPE)."""
    from peft import LoraConfig, TaskType

    targets: Any = lora.target_modules
    if isinstance(targets, list) and [t.lower() for t in targets] == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(task_type=TaskType[task_type], r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, bias=lora.bias, modules_to_save=lora.modules_to_save)


def wrap(model: Any, recipe: Recipe, task_type: str, resolved: ResolvedModel | None = None) -> Any:
    """A PeftModel whose only trainable weights are the adapters (plus lora.modules_to_save and biases if asked)."""
    from peft import get_peft_model

    if recipe.lora.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # casts norms to fp32 and, with checkpointing, makes the frozen 4-bit inputs carry gradients
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        peft_model = get_peft_model(model, peft_config(recipe.lora, task_type))
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise LlmtuneError(f"lora.target_modules {recipe.lora.target_modules!r}: {str(e).splitlines()[0][:200]} "
                           f"(linear layers of this model: {', '.join(names)}; or use all-linear)") from e
    fuse_dropout(peft_model)
    resolved = resolved or resolve(recipe.model)
    if resolved.gguf_file:
        # name_or_path of a GGUF model is its folder, which from_pretrained cannot read without the file name
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(resolved.path) / resolved.gguf_file)
    return peft_model


def fuse_dropout(model: Any) -> int:
    """Give every plain LoRA Linear's adapter the dropout inside its down-projection (`DroppedLinear`), so the
    backward keeps the layer's input (which the q, k and v projections share) and a one-byte mask, instead of PEFT's
    float noise and the dropped copy that lora_A saves, per adapted layer: 8 bytes per input element and layer
    become 1 plus the shared input (SmolLM2 + all-linear LoRA: 0.9 of 1.6 GiB of saved activations at 2 x 400
    tokens were these). The same masks from the same random stream, so the same numbers as PEFT's own forward;
    weights, state-dict keys and saved adapters are unchanged. Returns how many adapters were fused."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    from llmtune.lora_dropout import DroppedLinear

    fused = 0
    for module in model.modules():
        if type(module) is not LoraLinear:
            continue
        for name, drop in list(module.lora_dropout.items()):
            lora_a = module.lora_A[name] if name in module.lora_A else None
            if (not isinstance(drop, torch.nn.Dropout) or not 0 < drop.p < 1 or name in module.lora_variant
                    or type(lora_a) is not torch.nn.Linear or lora_a.bias is not None):
                continue
            lora_a.__class__ = DroppedLinear
            lora_a.dropout_p = float(drop.p)
            module.lora_dropout[name] = torch.nn.Identity()
            fused += 1
    return fused


def check_targets(recipe: Recipe, model_class: str, task_type: str, resolved: ResolvedModel) -> None:
    """`llmtune validate`: lora.target_modules names layers of the model, checked on a skeleton of it built from its
    config on the meta device (no weights read, no memory), with the same error `wrap` gives at training time."""
    if not resolved.is_local or recipe.lora.target_modules in ("all-linear", ["all-linear"]):
        return
    import warnings

    import transformers
    from accelerate import init_empty_weights

    try:
        kw = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
        config = transformers.AutoConfig.from_pretrained(resolved.path, **kw)
        with init_empty_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = getattr(transformers, model_class).from_config(config)
    except Exception:  # noqa: BLE001 - a config the skeleton cannot be built from is loaded (and reported) by finetune
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrap(skeleton, recipe, task_type, resolved)


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ---- finished runs ------------------------------------------------------------------------------------------


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def base_args(run_dir: Path, recipe: Recipe | None) -> ModelArgs:
    """The `model:` section that trained the adapter in `run_dir` (never with 4-bit loading: merge needs full
    precision, and generation works either way)."""
    if recipe is not None:
        return replace(recipe.model)
    try:
        name = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise LlmtuneError(f"{run_dir}/{ADAPTER_CONFIG}: unreadable ({e})") from e
    if not name:
        raise LlmtuneError(f"{run_dir}: the adapter names no base model (no recipe.yaml, and adapter_config.json "
                           "has no base_model_name_or_path)")
    return ModelArgs(name=str(name))


def load_adapter(run_dir: Path, recipe: Recipe | None, load_base_model: Any) -> Any:
    """The adapter of `run_dir` on its base model, rebuilt with `load_base_model(model_args)` (the task's loader)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base_model(base_args(run_dir, recipe)), str(run_dir))


def merge(run: Any, output: Path) -> Path:
    """Base + adapter with the LoRA products added into the base weights (PEFT's merge_and_unload), written as a
    plain from_pretrained folder: safetensors weights, config, generation config and the run's tokenizer.
    `run` is a loaded run (runs.load_run) whose model is an adapter."""
    merged = run.model.merge_and_unload()
    merged.config.use_cache = True  # training turns the cache off; generation from the merged model wants it
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output), safe_serialization=True)
    run.tokenizer.save_pretrained(str(output))
    return output
