"""`llmtune validate`: every check `finetune` makes before training, without loading weights or training."""

from __future__ import annotations

from llmtune import data as data_mod
from llmtune import tasks
from llmtune.models import resolve
from llmtune.recipe import Recipe


def check_data(recipe: Recipe) -> list[str]:
    """Resolve the model name, load and validate every split; return one line per check that passed."""
    from llmtune.train import check_hardware

    check_hardware(recipe)
    task = tasks.get(recipe.task)
    resolved = resolve(recipe.model)
    lines = [f"model {recipe.model.name} -> {resolved.path}" + (f" ({resolved.gguf_file})" if resolved.gguf_file else "")]
    splits = data_mod.load_splits(recipe, validate=lambda s: task.validate(recipe, s))
    for split in splits.values():
        lines.append(f"{split.name}: {len(split.dataset):,} rows from {split.origin}")
    tokenizer = None
    if recipe.task != "classification":  # the other tasks derive prompts and prefixes with the tokenizer
        from llmtune.errors import LlmtuneError
        from llmtune.models import load_tokenizer

        try:
            tokenizer = load_tokenizer(recipe.model, resolved)
        except LlmtuneError as e:
            lines.append(f"tokenizer not checked: {e}")
            return lines
    info = task.setup(recipe, splits, tokenizer)
    if "label_names" in info:
        lines.append(f"classes: {', '.join(info['label_names'])}")
    return lines
