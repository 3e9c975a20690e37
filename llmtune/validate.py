"""`llmtune validate`: every check `finetune` makes before training, without loading weights or training."""

from __future__ import annotations

from pathlib import Path

from llmtune import data as data_mod
from llmtune import hardware, runs, tasks
from llmtune.errors import LlmtuneError
from llmtune.models import check_positions, load_tokenizer, resolve
from llmtune.recipe import Recipe


def check_data(recipe: Recipe) -> list[str]:
    """Resolve the model name, load and validate every split, run the task's setup; one line per check passed."""
    hardware.check_hardware(recipe)
    runs.refuse_special_output(recipe.train.output_dir, recipe.source)
    if recipe.train.output_dir:
        out = Path(recipe.train.output_dir)
        runs.check_output_dir(out, recipe.train.overwrite_output_dir,
                              resume=recipe.train.resume_from_checkpoint not in (False, "false") and bool(runs.checkpoints(out)))
        if recipe.train.resume_from_checkpoint not in ("auto", False, "false"):  # a named checkpoint must be one
            from llmtune.train import _resolve_resume

            _resolve_resume(recipe, out)
    task = tasks.get(recipe.task)
    resolved = resolve(recipe.model)
    check_positions(recipe.train.max_seq_length, resolved)
    if recipe.lora_enabled:
        from llmtune import lora

        lora.check_targets(recipe, task.MODEL_CLASS, task.PEFT_TASK_TYPE, resolved)
    lines = [f"model {recipe.model.name} -> {resolved.path}" + (f" ({resolved.gguf_file})" if resolved.gguf_file else "")]
    splits = data_mod.load_splits(recipe, validate=lambda s: task.validate(recipe, s))
    for split in splits.values():
        lines.append(f"{split.name}: {len(split.dataset):,} rows from {split.origin}")
    try:  # the tasks derive prompts, prefixes and label tokens with the tokenizer
        tokenizer = load_tokenizer(recipe.model, resolved)
    except LlmtuneError as e:
        if resolved.is_local:
            raise
        lines.append(f"tokenizer not checked: {e}")
        tokenizer = None
    info = task.setup(recipe, splits, tokenizer)
    tasks.check_best_metric(recipe, info)
    names = getattr(info, "label_names", None)
    if names:
        lines.append(f"classes: {', '.join(names)}")
    return lines
