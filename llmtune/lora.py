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
from llmtune.recipe import LoraArgs, ModelArgs, Recipe

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


def peft_config(lora: LoraArgs) -> Any:
    from peft import LoraConfig, TaskType

    targets: Any = lora.target_modules
    if isinstance(targets, list) and [t.lower() for t in targets] == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, bias=lora.bias, modules_to_save=lora.modules_to_save)


def wrap(model: Any, recipe: Recipe, resolved: ResolvedModel | None = None) -> Any:
    """A PeftModel whose only trainable weights are the adapters (plus lora.modules_to_save and biases if asked)."""
    from peft import get_peft_model

    if recipe.lora.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # casts norms to fp32 and, with checkpointing, makes the frozen 4-bit inputs carry gradients
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        peft_model = get_peft_model(model, peft_config(recipe.lora))
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise LlmtuneError(f"lora.target_modules {recipe.lora.target_modules!r}: {str(e).splitlines()[0][:200]} "
                           f"(linear layers of this model: {', '.join(names)}; or use all-linear)") from e
    resolved = resolved or resolve(recipe.model)
    if resolved.gguf_file:
        # name_or_path of a GGUF model is its folder, which from_pretrained cannot read without the file name
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(resolved.path) / resolved.gguf_file)
    return peft_model


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ---- finished runs ------------------------------------------------------------------------------------------


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def run_recipe(run_dir: Path) -> Recipe | None:
    from llmtune.recipe import load_recipe

    path = run_dir / "recipe.yaml"
    return load_recipe(path) if path.is_file() else None


def run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "llmtune_info.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


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


def load_run(run_dir: Path) -> tuple[Any, Any, Recipe | None, dict[str, Any]]:
    """(model, tokenizer, recipe or None, llmtune_info) of a run folder: base + adapter for a LoRA run, the saved
    model for a full fine-tune or any from_pretrained folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not run_dir.is_dir():
        raise LlmtuneError(f"{run_dir}: not a folder")
    recipe = run_recipe(run_dir)
    info = run_info(run_dir)
    if is_adapter_dir(run_dir):
        from peft import PeftModel

        args = base_args(run_dir, recipe)
        base = load_base(args)
        model = PeftModel.from_pretrained(base, str(run_dir))
    elif (run_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(run_dir), dtype="auto")
    else:
        raise LlmtuneError(f"{run_dir}: neither a LoRA run (adapter_config.json) nor a model folder (config.json)")
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    except (OSError, ValueError):
        from llmtune.models import load_tokenizer

        tokenizer = load_tokenizer(base_args(run_dir, recipe))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return model, tokenizer, recipe, info


def merge(run_dir: Path, output: Path, force: bool = False) -> Path:
    """Base + adapter with the LoRA products added into the base weights (PEFT's merge_and_unload), written as a
    plain from_pretrained folder: safetensors weights, config, generation config and the run's tokenizer."""
    if not is_adapter_dir(run_dir):
        if (run_dir / "config.json").is_file():
            raise LlmtuneError(f"{run_dir}: holds a full model, not a LoRA adapter; there is nothing to merge "
                               "(load it with from_pretrained as it is)")
        raise LlmtuneError(f"{run_dir}: not a LoRA run folder (no {ADAPTER_CONFIG})")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise LlmtuneError(f"{output}: already exists and is not empty; use --force to overwrite it")
    if output.resolve() == run_dir.resolve():
        raise LlmtuneError(f"{output}: is the run folder itself; choose another --output")
    model, tokenizer, _, _ = load_run(run_dir)
    merged = model.merge_and_unload()
    merged.config.use_cache = True  # training turns the cache off; generation from the merged model wants it
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output), safe_serialization=True)
    tokenizer.save_pretrained(str(output))
    return output
