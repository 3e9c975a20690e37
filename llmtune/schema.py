"""The typed recipe: the sections every task shares (model/data/train/lora/generation/eval) as dataclasses.

A task adds its own keys by subclassing a section's dataclass in its module (`class Data(DataArgs)`: the keys
stay under `data:` in a recipe) or by naming a section of its own; `recipe.py` parses a recipe into the classes the
recipe's task declares. This module imports nothing of llmtune's but the task registry (itself free of
imports), so task modules can use it without a circle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from llmtune.tasks import DEFAULT_TASK


@dataclass
class ModelArgs:
    name: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gguf_file: str | None = None
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    allow_pickle: bool = False  # load pytorch_model.bin (pickle can run code) from a folder without safetensors


@dataclass
class DataArgs:
    """Where the rows come from. Which columns hold what is the task's: see its `Data` class."""

    # hub datasets (or `llmtune:NAME` for a dataset bundled with llmtune)
    dataset: str | None = None
    config: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    test_split: str | None = None
    # local files: csv, tsv, json, jsonl, parquet, txt (one example per line; .gz allowed)
    train_file: str | None = None
    eval_file: str | None = None
    test_file: str | None = None
    val_size: float = 0.1
    # subsampling (first N rows, so runs are comparable)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_test_samples: int | None = None


@dataclass
class TrainArgs:
    output_dir: str | None = None
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "linear"
    max_seq_length: int = 128
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"  # auto: bf16 where the hardware runs it natively
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    seed: int = 42
    logging_steps: int = 10
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int | None = 2
    metric_for_best_model: str | None = None
    load_best_model_at_end: bool = False
    report_to: Literal["none", "tensorboard", "mlflow"] = "none"
    overwrite_output_dir: bool = False
    resume_from_checkpoint: str | bool = "auto"
    skip_nonfinite: bool = False
    dataloader_num_workers: int = 0


@dataclass
class LoraArgs:
    enabled: bool | None = None  # None: the task decides (causal_lm trains adapters by default)
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    load_in_4bit: bool = False


@dataclass
class GenerationArgs:
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass
class EvalArgs:
    generate: bool | None = None  # None: the task decides (seq2seq tasks generate in eval)
    before_training: bool | None = None  # evaluate the base model first (None: the task decides; causal_lm does)
    metrics: list[str] | None = None
    bootstrap: int = 1000


#: the sections every recipe has, and the class each is parsed into unless the task declares a subclass
SECTIONS: dict[str, type] = {
    "model": ModelArgs,
    "data": DataArgs,
    "train": TrainArgs,
    "lora": LoraArgs,
    "generation": GenerationArgs,
    "eval": EvalArgs,
}


@dataclass
class Recipe:
    task: str = DEFAULT_TASK
    description: str | None = None
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    #: sections a task adds of its own (`preference:` ...), by name
    extra: dict[str, Any] = field(default_factory=dict)
    # not recipe keys: where it came from (for messages), and the task's defaults for the `None` switches
    source: str = field(default="<recipe>", repr=False, compare=False)
    lora_default: bool = field(default=False, repr=False, compare=False)
    generate_default: bool = field(default=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("extra", "source", "lora_default", "generate_default")}
        out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in d.items()}
        for name, section in self.extra.items():
            out[name] = dataclasses.asdict(section)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self, *sections: str) -> str:
        d = self.to_dict()
        payload = {s: d[s] for s in sections} if sections else d
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def section(self, name: str) -> Any:
        """A section the task declared of its own (see `OPTIONS` in tasks/__init__.py)."""
        return self.extra[name]

    @property
    def lora_enabled(self) -> bool:
        return self.lora_default if self.lora.enabled is None else self.lora.enabled

    @property
    def generate_in_eval(self) -> bool:
        return self.generate_default if self.eval.generate is None else self.eval.generate
