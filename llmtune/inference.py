"""Use a finished run (or a model folder): `llmtune predict` on new inputs, and `llmtune merge` of an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune import runs, tasks
from llmtune.errors import LlmtuneError


def predict_file(run_dir: Path, input_path: Path, field: str | None = None, pair_field: str | None = None,
                 batch_size: int = 32, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """One output record per input row, by the run's task (labels, generations...)."""
    from llmtune.inputs import read_rows

    if batch_size < 1:
        raise LlmtuneError(f"--batch-size must be at least 1, got {batch_size}")
    runs.run_task(run_dir)  # a wrong run folder and a bad input file fail before the model loads
    rows = read_rows(input_path)
    run = runs.load_run(run_dir, overrides=list(overrides or []))
    return tasks.get(run.task).predict(run, rows, batch_size, field, pair_field)


def merge_run(run_dir: Path, output: Path, force: bool = False) -> Path:
    """Base + adapter merged into a plain from_pretrained folder (PEFT's merge_and_unload)."""
    from llmtune import lora

    if not lora.is_adapter_dir(run_dir):
        if (run_dir / "config.json").is_file():
            raise LlmtuneError(f"{run_dir}: holds a full model, not a LoRA adapter; there is nothing to merge "
                               "(load it with from_pretrained as it is)")
        raise LlmtuneError(f"{run_dir}: not a LoRA run folder (no {lora.ADAPTER_CONFIG})")
    if output.exists() and output.resolve() == run_dir.resolve():
        raise LlmtuneError(f"{output}: is the run folder itself; choose another --output")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise LlmtuneError(f"{output}: already exists and is not empty; use --force to overwrite it")
    return lora.merge(runs.load_run(run_dir), output)
