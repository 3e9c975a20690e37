"""Load a finished run (or a model folder) and predict for new inputs: `llmtune predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError


def run_task(run_dir: Path) -> str:
    """The task of a run folder, from llmtune_info.json, else guessed from the model config."""
    if not run_dir.is_dir():
        raise LlmtuneError(f"{run_dir}: not a folder; expected a run folder written by llmtune finetune")
    info = run_dir / "llmtune_info.json"
    if info.exists():
        try:
            return str(json.loads(info.read_text())["task"])
        except (json.JSONDecodeError, KeyError, TypeError, OSError, UnicodeDecodeError) as e:
            raise LlmtuneError(f"{info}: unreadable run information ({type(e).__name__}); the run folder is damaged") from None
    if (run_dir / "adapter_config.json").exists():
        return "causal_lm"
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise LlmtuneError(f"{run_dir}: not a run or model folder (no llmtune_info.json or config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise LlmtuneError(f"{cfg_path}: not valid JSON ({type(e).__name__}); the model folder is damaged") from None
    archs = " ".join(cfg.get("architectures") or [])
    if "SequenceClassification" in archs:
        return "classification"
    if cfg.get("is_encoder_decoder"):
        return "summarization"
    return "causal_lm"


def run_recipe(run_dir: Path, overrides: list[str]) -> Any:
    """The run's resolved recipe with `section.key=value` overrides (generation settings, mostly)."""
    from llmtune.recipe import load_recipe

    path = run_dir / "recipe.yaml"
    if not path.exists():
        return None
    return load_recipe(path, overrides)


def read_inputs(path: Path, field: str | None) -> list[str]:
    from llmtune.scoring import read_texts

    texts = read_texts(path, field=field)
    return [t if isinstance(t, str) else " ".join(t) for t in texts]


def predict_file(run_dir: Path, input_path: Path, field: str | None = None, pair_field: str | None = None,
                 batch_size: int = 32, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    task = run_task(run_dir)
    texts = read_inputs(input_path, field or ("text" if input_path.suffix in (".jsonl", ".json", ".csv", ".tsv")
                                              else None))
    pairs = read_inputs(input_path, pair_field) if pair_field else None
    recipe = run_recipe(run_dir, list(overrides or []))
    if task == "classification":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from llmtune.tasks.classification import predict

        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(run_dir))
            tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
        except (OSError, ValueError) as e:
            raise LlmtuneError(f"{run_dir}: could not load the model: {str(e).splitlines()[0][:200]}") from None
        max_len = recipe.train.max_seq_length if recipe else 512
        return predict(model, tokenizer, texts, pairs, max_len, batch_size)
    from llmtune import tasks

    module = tasks.get(task)
    if not hasattr(module, "predict_run"):
        raise LlmtuneError(f"{run_dir}: predict is not available for task '{task}'")
    return module.predict_run(run_dir, recipe, texts, batch_size)  # type: ignore[attr-defined]
