"""One module per task, reached through the `TaskModule` protocol below; the registry `MODULES` names them.

To add a task: write `llmtune/tasks/<name>.py` with the members of `TaskModule` (plain module-level constants and
functions: no base class, no implementation inheritance; two tasks that preprocess differently keep two small
functions), add one line to `MODULES`, add recipes and tests. Nothing outside `tasks/` branches on a task's name:
the training loop (train.py), `llmtune eval`/`predict`/`generate`/`validate` and the run loader (runs.py) only call
what the protocol declares. Read one existing task (classification.py is the shortest) beside this file.

The flow, in the order the loop calls it:

    recipe = recipe.load_recipe(...)       # parsed into the task's OPTIONS classes, then check_recipe(recipe)
    splits = data.load_splits(...)         # validate(recipe, split) on every split
    info = setup(recipe, splits, tokenizer)                # facts from the data: label names, prompt format...
    ds = tokenize(recipe, tokenizer, split, info)          # a datasets.Dataset of model inputs
    model = load_model(recipe, tokenizer, info)            # wrapped in LoRA by the task where it supports it
    ds = with_model(recipe, tokenizer, model, ds, "train", accelerator)   # optional: columns the model computes
    loader = ...collator(recipe, tokenizer, model)...      # the loop owns samplers and loaders (batching.py)
    loss = loss(model, batch)                              # optional hook; default model(**batch).loss;
                                                           # may return (loss, {metric: per-example values})
    outputs = eval_step(model, batch) per eval batch       # the loop gathers, de-duplicates, restores row order
    metrics, records = score(ctx, outputs)                 # unprefixed metrics + one record per eval row
    info.to_json() -> llmtune_info.json                    # and back: Info.from_json, load_trained, predict

This module imports no heavy library and no task module at import time: `get(name)` imports one on demand.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llmtune.data import Split
    from llmtune.schema import Recipe

#: task name -> module. One module may serve several tasks (seq2seq: summarization and translation).
MODULES = {
    "classification": "llmtune.tasks.classification",
    "summarization": "llmtune.tasks.seq2seq",
    "translation": "llmtune.tasks.seq2seq",
    "causal_lm": "llmtune.tasks.causal_lm",
    "token_classification": "llmtune.tasks.token_classification",
    "question_answering": "llmtune.tasks.question_answering",
    "preference": "llmtune.tasks.preference",
    "masked_lm": "llmtune.tasks.masked_lm",
    "embedding": "llmtune.tasks.embedding",
}
TASKS = tuple(MODULES)
#: the task of a recipe that names none
DEFAULT_TASK = "classification"


@dataclass
class EvalContext:
    """What a task's score() gets: the prepared model, the eval loader (length-sorted, with an `idx` column),
    the run's pieces, and the raw rows of the split (for prediction records, in the split's order)."""

    model: Any
    loader: Any
    accelerator: Any
    recipe: Recipe
    tokenizer: Any
    info: Any
    split: Split


@dataclass
class PromptSpec:
    """How a decoder is prompted for this task in zero/few-shot baselines (`llmtune eval --shots`)."""

    input_header: str  # "Text", "Document", "Instruction"...
    output_header: str  # "Label", "Summary", "Response"...
    instruction: str  # the task line that opens the prompt
    metrics: list[str]  # how generated answers are scored when there are no choices


class LoadedRun:
    """A run folder (or a plain model folder) ready for use: what runs.load_run returns. The weights load on
    first use of `model` or `tokenizer`, so a command checks its other inputs before paying for them."""

    def __init__(self, path: Path, task: str, recipe: Recipe | None, info: Any, adapter: bool,
                 load: Callable[[], tuple[Any, Any]]) -> None:
        self.path = path
        self.task = task
        self.recipe = recipe  # the run's resolved recipe.yaml (None for a folder llmtune did not write)
        self.info = info  # the task's Info
        self.adapter = adapter  # a PEFT adapter on a base rebuilt from the recipe (or adapter_config.json)
        self._load = load
        self._parts: tuple[Any, Any] | None = None

    def _loaded(self) -> tuple[Any, Any]:
        if self._parts is None:
            self._parts = self._load()
        return self._parts

    @property
    def model(self) -> Any:
        """The model, in eval mode."""
        return self._loaded()[0]

    @property
    def tokenizer(self) -> Any:
        return self._loaded()[1]


class TaskModule(Protocol):
    """What a task module provides. Constants first, then functions in the order the loop calls them."""

    #: the transformers Auto class the task trains (`AutoModelForTokenClassification`...), for messages and docs
    MODEL_CLASS: str
    #: peft.TaskType name for LoRA adapters ("CAUSAL_LM", "SEQ_CLS"...), or None: `lora.*` is refused
    PEFT_TASK_TYPE: str | None
    #: whether LoRA is on when the recipe leaves `lora.enabled` unset
    LORA_DEFAULT: bool
    #: whether eval generates text when the recipe leaves `eval.generate` unset
    GENERATE_DEFAULT: bool
    #: whether eval runs once before training when `eval.before_training` is unset (the base model's numbers)
    EVAL_BEFORE_TRAINING: bool
    #: eval metric (without `eval_`) that picks the best checkpoint, and its direction
    DEFAULT_METRIC: str
    GREATER_IS_BETTER: bool
    #: the eval loss is a mean token negative log-likelihood (so exp(loss) is a perplexity)
    TOKEN_LEVEL_LOSS: bool
    #: a decoder that continues free text: `llmtune generate` and `--shots` prompting accept it
    DECODER_ONLY: bool
    #: the task's own recipe keys: section name -> dataclass. A shared section ("data", "train", "eval") maps to
    #: a subclass of its class in schema.py (keys stay under that section); any other name adds a section.
    OPTIONS: dict[str, type]

    def check_recipe(self, recipe: Recipe) -> None:
        """Combinations of the task's recipe keys that no single field's type rules out; raise LlmtuneError
        naming the key. Called once the recipe is parsed, before any data or model is read."""

    def recognizes(self, config: dict[str, Any]) -> bool:
        """Whether a model folder's config.json (a folder without llmtune_info.json) is this task's model."""

    def validate(self, recipe: Recipe, split: Split) -> None:
        """Raise LlmtuneError naming the file, column and row of the first bad row of `split`."""

    def setup(self, recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Any:
        """The task's `Info` (a dataclass with to_json()/from_json()): facts derived from the data that the model
        and the run folder need. `tokenizer` is None under `llmtune validate` when it cannot be loaded."""

    def tokenize(self, recipe: Recipe, tokenizer: Any, split: Split, info: Any) -> Any:
        """The split as a datasets.Dataset of model inputs (with `input_ids`; cached by datasets.map). Eval
        splits keep one row per raw row unless score() maps several back (QA windows)."""

    def load_model(self, recipe: Recipe, tokenizer: Any, info: Any) -> Any:
        """The model to train (from recipe.model), wrapped in LoRA when recipe.lora_enabled."""

    def collator(self, recipe: Recipe, tokenizer: Any, model: Any) -> Callable[[list[dict[str, Any]]], Any]:
        """Features -> a batch of tensors. Eval features carry `idx`; the batch must carry it through."""

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """Per-row tensors for one eval batch (its `idx` already removed): first dimension = rows. Tensors of
        two or more dimensions are padded with -100 along dimension 1 to gather them. Return {} when the batch
        has nothing to score (no labels)."""

    def score(self, ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics (unprefixed; the loop adds `eval_`) and one prediction record per eval row, in the split's
        order. `outputs` holds eval_step's tensors of every row once, in row order (empty when there were none).
        May generate (ctx.accelerator shards it); every process must return the same metrics."""

    def metric_names(self, recipe: Recipe, info: Any) -> list[str]:
        """Every metric score() can report for this recipe (unprefixed), known before training: what
        train.metric_for_best_model may name. `info` is setup()'s (None when only the recipe is known)."""

    def load_trained(self, path: Path, recipe: Recipe | None, info: Any) -> tuple[Any, Any]:
        """(model, tokenizer) of a finished run or model folder, for predict/eval/generate/merge."""

    def predict(self, run: LoadedRun, rows: list[dict[str, Any]], batch_size: int,
                field: str | None, pair_field: str | None) -> list[dict[str, Any]]:
        """`llmtune predict`: one output record per input row (rows from inputs.read_rows: a .txt line is
        {"text": line}); `field`/`pair_field` name the input fields when the user gives them."""

    # Optional hooks, read with getattr:
    # - `info_from_config(config, where) -> Info`: the info of a model folder llmtune did not write (runs.load_run);
    #   with `CLASSES_FROM_CONFIG = True` (a head with fixed classes) `llmtune eval --model BASE --recipe R` takes
    #   the info from the model's config too, otherwise from the recipe and data (setup: an embedding's pooling).
    # - `RECOGNIZES_THE_REST = True`: recognizes() claims any folder the other tasks do not (asked last).
    # - `recognizes_folder(path) -> bool`: claims a plain model folder by its files, before any config.json is read
    #   (a sentence-transformers folder's modules.json: its config is a bare encoder's).
    # - `GENERATES = True`: the task's runs generate text (`llmtune generate`, eval.generate), so the recipe's
    #   generation section and eval.generate apply; elsewhere setting them is refused as a key that does nothing.
    # - Prompting (`llmtune eval --shots`), all three or none; a task without them is not prompted (evaluation.py
    #   refuses --shots for it, with one message):
    #   `prompt_spec(recipe) -> PromptSpec`: headers, task line and default metrics for zero/few-shot prompting;
    #   `prompt_fields(recipe, row) -> (input text, target)`: a class name, or the list of reference texts;
    #   `prompt_choices(recipe, splits) -> list[str] | None`: the answers to score by likelihood (class names), or
    #   None: the decoder generates its answer.
    # - `loss(model, batch) -> Tensor | (Tensor, {name: Tensor | float})`: the training objective. Without it the
    #   loop uses model(**batch).loss. Contrastive or preference objectives define it. The optional dict holds
    #   extra training metrics (preference: rewards/accuracies, rewards/margins, logps/chosen..., TRL's names),
    #   each a tensor of per-example values (every value counts once: a mean per example, per pair) or a scalar
    #   (counts once per micro-batch). The loop keeps them on device, averages them over the micro-batches and
    #   processes of a logging window (synchronising only at logging steps), and logs them beside `loss` every
    #   train.logging_steps (log.jsonl, trackers; the first two in the progress bar, so put the ones worth
    #   watching first); a checkpoint keeps the window's partial sums, as the loss's. Return them detached or
    #   not: the loop detaches. The hook gets no recipe: settings it needs ride on the model object (preference
    #   keeps them in a weak dictionary keyed by the model, embedding on an attribute), since eval_step needs
    #   them too and gets no recipe either.
    # - `with_model(recipe, tokenizer, model, ds, split_name, accelerator) -> ds`: the tokenized split ("train",
    #   "eval") with columns that need the starting model, computed once before training (under
    #   main_process_first, before prepare(): the model is the unwrapped one; put it on accelerator.device) and
    #   cached by datasets.map under a fingerprint that covers the split and the weights (preference's
    #   precomputed reference log-probabilities). The collator carries the columns into batches.
    # - `intervals(recipe, records, bootstrap, seed) -> {metric: (low, high)}`: bootstrap intervals for
    #   `llmtune eval --model` from score()'s records. Without it they come from records holding `label` or
    #   `references` (classification, text generation).
    # - `Data.file_reader(suffix)` on the task's Data class: a reader for a file format of its own (CoNLL), or None
    #   to leave the file to the usual parsers (see data.load_file).


def get(task: str) -> TaskModule:
    """The module of `task` (imported on first use). The recipe parser has checked the name already."""
    return importlib.import_module(MODULES[task])  # type: ignore[return-value]


def default_loss(model: Any, batch: dict[str, Any]) -> Any:
    return model(**batch).loss


def loss_fn(task: TaskModule) -> Callable[[Any, dict[str, Any]], Any]:
    return getattr(task, "loss", default_loss)


def check_best_metric(recipe: Recipe, info: Any) -> None:
    """train.metric_for_best_model names a metric this task's eval reports (with a "did you mean")."""
    import difflib

    from llmtune.errors import LlmtuneError

    wanted = recipe.train.metric_for_best_model
    if wanted is None:
        return
    names = get(recipe.task).metric_names(recipe, info)
    bare = wanted[len("eval_"):] if wanted.startswith("eval_") else wanted  # a Trainer user's spelling works too
    if bare in names:
        return
    close = difflib.get_close_matches(bare, names, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise LlmtuneError(f"train.metric_for_best_model: {recipe.task}'s eval reports no '{wanted}'{hint}; it reports "
                       f"{', '.join(names)}")


def recognize_folder(path: Path) -> str | None:
    """The task that claims a plain model folder by its files (the optional `recognizes_folder` hook), if any."""
    return next((name for name in TASKS if getattr(get(name), "recognizes_folder", lambda p: False)(path)), None)


def recognize(config: dict[str, Any]) -> str | None:
    """The task whose model a config.json describes: the first in registry order that recognizes it, a task that
    takes whatever no other claims (`RECOGNIZES_THE_REST = True`: causal_lm, any decoder) asked last. Asked in
    plain registry order, causal_lm claimed BertForMaskedLM folders before masked_lm was asked."""
    order = sorted(TASKS, key=lambda name: bool(getattr(get(name), "RECOGNIZES_THE_REST", False)))
    for name in order:
        if get(name).recognizes(config):
            return name
    return None
