"""One module per task. Each provides the plain functions of `TaskModule`; the loop in train.py calls them.

No implementation inheritance: two tasks that preprocess differently keep two small functions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from llmtune.data import Split
from llmtune.recipe import Recipe

MODULES = {
    "classification": "llmtune.tasks.classification",
    "summarization": "llmtune.tasks.seq2seq",
    "translation": "llmtune.tasks.seq2seq",
    "causal_lm": "llmtune.tasks.causal_lm",
}


@dataclass
class EvalContext:
    """What a task's evaluate() gets: a prepared model and a length-sorted eval loader with an `idx` column."""

    model: Any
    loader: Any
    accelerator: Any
    recipe: Recipe
    tokenizer: Any
    info: dict[str, Any]
    split: Split  # the raw rows, for prediction records


class TaskModule(Protocol):
    #: eval metric (without the eval_ prefix) that picks the best checkpoint, and its direction
    DEFAULT_METRIC: str
    GREATER_IS_BETTER: bool

    def validate(self, recipe: Recipe, split: Split) -> None:
        """Raise LlmtuneError naming the file, column and row of the first bad row."""

    def setup(self, recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> dict[str, Any]:
        """Facts derived from the data that the model and the run folder need (label names...)."""

    def tokenize(self, recipe: Recipe, tokenizer: Any, split: Split, info: dict[str, Any]) -> Any:
        """The split as a datasets.Dataset of model inputs (cached by datasets.map)."""

    def load_model(self, recipe: Recipe, tokenizer: Any, info: dict[str, Any]) -> Any: ...

    def collator(self, recipe: Recipe, tokenizer: Any, model: Any) -> Any: ...

    def evaluate(self, ctx: EvalContext) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics (unprefixed) and one prediction record per eval row, in the split's order."""


def get(task: str) -> TaskModule:
    return importlib.import_module(MODULES[task])  # type: ignore[return-value]
