"""Sequence classification: a head on the [CLS] token of an encoder; single sentences or pairs, 2+ classes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import first_token
from llmtune.data import Split, as_text, check_text_column, require_column
from llmtune.errors import LlmtuneError
from llmtune.schema import DataArgs
from llmtune.tasks import EvalContext, LoadedRun, PromptSpec

if TYPE_CHECKING:
    from llmtune.schema import Recipe

MODEL_CLASS = "AutoModelForSequenceClassification"
PEFT_TASK_TYPE = None  # full fine-tuning only: lora.enabled is refused
LORA_DEFAULT = False
GENERATE_DEFAULT = False
EVAL_BEFORE_TRAINING = False
DEFAULT_METRIC = "accuracy"
GREATER_IS_BETTER = True
TOKEN_LEVEL_LOSS = False  # cross-entropy per example, not per token
DECODER_ONLY = False


@dataclass
class Data(DataArgs):
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None


OPTIONS: dict[str, type] = {"data": Data}


@dataclass
class Info:
    """The classes, in the order of the head's outputs (written to llmtune_info.json and config.json's id2label).
    `label_values` (labels inferred from the data: their sorted distinct values) maps raw cells to class ids while
    training; it is not saved: a saved run maps by name."""

    label_names: list[str]
    label_values: list[Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label_names": list(self.label_names)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        return cls(label_names=[str(x) for x in d["label_names"]])


def check_recipe(recipe: Recipe) -> None:
    d = recipe.data
    if d.label_names is not None and len(d.label_names) < 2:
        raise LlmtuneError(f"{recipe.source}: data.label_names needs at least two classes, got {d.label_names} "
                           "(or leave it out to take the classes from the data)")
    if d.label_names is not None and len(set(d.label_names)) != len(d.label_names):
        raise LlmtuneError(f"{recipe.source}: data.label_names has duplicates: {d.label_names}")
    for key in ("text_column", "text_pair_column"):
        if getattr(d, key) == d.label_column:
            raise LlmtuneError(f"{recipe.source}: data.{key} and data.label_column are both '{d.label_column}': the "
                               "model would read its answer")


def recognizes(config: dict[str, Any]) -> bool:
    return "SequenceClassification" in " ".join(config.get("architectures") or [])


def _label_value(value: Any) -> int | str | None:
    """A label cell as int or str; None when it is missing or not a label (NaN, list...)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or not value.is_integer():
            return None
        return int(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _label_id(value: int | str, info: Info) -> int | None:
    names = info.label_names
    values = info.label_values
    if values is not None:  # labels inferred from the data: the sorted distinct values
        return values.index(value) if value in values else None
    if isinstance(value, int):
        return value if 0 <= value < len(names) else None
    return names.index(value) if value in names else None


def validate(recipe: Recipe, split: Split) -> None:
    d = recipe.data
    check_text_column(split, d.text_column, "data.text_column")
    if d.text_pair_column:
        check_text_column(split, d.text_pair_column, "data.text_pair_column")
    if split.name == "test" and d.label_column not in split.dataset.column_names:
        return  # an unlabelled test split can still be predicted
    require_column(split, d.label_column, "data.label_column")
    given = Info(list(d.label_names)) if d.label_names else None
    kinds = set()
    for i, raw in enumerate(split.dataset[d.label_column]):
        value = _label_value(raw)
        if value is None:
            raise LlmtuneError(f"{split.origin}: row {i + 1}: label column '{d.label_column}' holds {raw!r}, "
                               "expected a class name or an integer class id")
        kinds.add(type(value))
        if given and _label_id(value, given) is None:
            raise LlmtuneError(f"{split.origin}: row {i + 1}: label {value!r} is not in data.label_names "
                               f"{d.label_names}" + (" (integer labels are indexes into label_names)"
                                                     if isinstance(value, int) else ""))
    if len(kinds) > 1:
        raise LlmtuneError(f"{split.origin}: column '{d.label_column}' mixes integer and text labels")


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    d = recipe.data
    if d.label_names:
        return Info(list(d.label_names))
    values = sorted({_label_value(v) for v in splits["train"].dataset[d.label_column]}, key=lambda v: (str(type(v)), v))
    if len(values) < 2:
        raise LlmtuneError(f"{splits['train'].origin}: the training data has only one class ({values}); "
                           "classification needs at least two")
    info = Info([str(v) for v in values], values)
    if all(isinstance(v, int) for v in values) and values == list(range(len(values))):
        info.label_values = None  # plain 0..K-1 ids
    for name in ("eval",):
        if name not in splits:
            continue
        for i, raw in enumerate(splits[name].dataset[d.label_column]):
            if _label_id(_label_value(raw), info) is None:  # type: ignore[arg-type]
                raise LlmtuneError(f"{splits[name].origin}: row {i + 1}: label {raw!r} never occurs in the training "
                                   f"data (classes: {info.label_names}); set data.label_names to list every class")
    return info


def _encode(batch: dict[str, list[Any]], tokenizer: Any, text: str, pair: str | None, label: str | None,
            max_length: int, info: Info) -> dict[str, Any]:
    first = [as_text(v) for v in batch[text]]
    second = [as_text(v) for v in batch[pair]] if pair else None
    enc = tokenizer(first, second, truncation=True, max_length=max_length)
    if label is not None:
        enc["labels"] = [_label_id(_label_value(v), info) for v in batch[label]]  # type: ignore[arg-type]
    return enc


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    d = recipe.data
    ds = split.dataset
    label = d.label_column if d.label_column in ds.column_names else None
    return ds.map(
        _encode,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "text": d.text_column, "pair": d.text_pair_column, "label": label,
                   "max_length": recipe.train.max_seq_length, "info": info},
        desc=f"Tokenizing {split.name}",
    )


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    from transformers import AutoModelForSequenceClassification

    from llmtune.models import load_model as load

    names = info.label_names
    model = load(
        AutoModelForSequenceClassification,
        recipe.model,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoder backbones need it to find the last token
    first_token.apply(model)  # the head reads token 0: the last layer computes it alone (same logits, less work)
    return model


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    from transformers import DataCollatorWithPadding

    # dynamic padding per batch; multiples of 8 keep tensor cores busy on GPU and cost little on CPU
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    labels = batch.pop("labels", None)
    logits = model(**batch).logits.float()
    if labels is None:
        labels = torch.full((logits.shape[0],), -1, device=logits.device, dtype=torch.long)
    return {"logits": logits, "labels": labels}


def metric_names(recipe: Recipe, info: Info | None) -> list[str]:
    return ["loss", "accuracy", "f1", "precision", "recall", "f1_micro"]


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    import torch

    from llmtune.metrics import classification_metrics

    logits_t, labels_t = outputs["logits"], outputs["labels"]
    probs = logits_t.softmax(-1)
    preds = probs.argmax(-1)
    names = ctx.info.label_names
    metrics: dict[str, float] = {}
    losses = None
    if bool((labels_t >= 0).all()):
        losses = torch.nn.functional.cross_entropy(logits_t, labels_t, reduction="none")
        metrics["loss"] = float(losses.mean())
        metrics.update(classification_metrics(preds.tolist(), labels_t.tolist()))
    d = ctx.recipe.data
    rows = ctx.split.dataset
    texts = rows[d.text_column]
    pairs = rows[d.text_pair_column] if d.text_pair_column else None
    records = []
    for i in range(len(preds)):
        rec: dict[str, Any] = {"text": as_text(texts[i])}
        if pairs is not None:
            rec["text_pair"] = as_text(pairs[i])
        if labels_t[i] >= 0:
            rec["label"] = names[int(labels_t[i])]
        rec["prediction"] = names[int(preds[i])]
        rec["probabilities"] = {n: round(float(p), 6) for n, p in zip(names, probs[i], strict=True)}
        if losses is not None:  # per-example cross-entropy: llmtune eval's interval of the loss
            rec["loss"] = float(losses[i])
        records.append(rec)
    return metrics, records


# ---- a finished run -----------------------------------------------------------------------------------------


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    first_token.apply(model)
    return model, AutoTokenizer.from_pretrained(str(path))


CLASSES_FROM_CONFIG = True  # a model folder's head fixes the classes (config id2label): info_from_config reads them


def info_from_config(config: dict[str, Any], where: str) -> Info:
    """The classes of a model folder that llmtune did not write, from its config's id2label."""
    id2label = config.get("id2label")
    if not id2label or not recognizes(config):
        raise LlmtuneError(f"{where}: not a fine-tuned classifier (no classification head); for an untuned decoder "
                           "use --shots to prompt it")
    return Info([id2label[str(i)] for i in range(len(id2label))])


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """`llmtune predict`: a label with probabilities per input text (or text pair)."""
    from llmtune.inputs import column

    texts = column(rows, field or "text", ())
    pairs = column(rows, pair_field, ()) if pair_field else None
    max_len = run.recipe.train.max_seq_length if run.recipe is not None else 512
    return predict_texts(run.model, run.tokenizer, texts, pairs, max_len, batch_size)


def predict_texts(model: Any, tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int,
                  batch_size: int = 32) -> list[dict[str, Any]]:
    """Labels with probabilities for new texts, batched longest-first so padding stays small."""
    import torch

    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[dict[str, Any]] = [{} for _ in texts]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            ids = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in ids], [pairs[i] for i in ids] if pairs else None, truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt").to(model.device)
            probs = model(**enc).logits.float().softmax(-1).cpu()
            for row, i in zip(probs, ids, strict=True):
                out[i] = {"text": texts[i], "prediction": names[int(row.argmax())],
                          "probabilities": {n: round(float(p), 6) for n, p in zip(names, row, strict=True)}}
                if pairs:
                    out[i]["text_pair"] = pairs[i]
    return out


# ---- zero/few-shot prompting of a decoder ------------------------------------------------------------------


def label_text(recipe: Recipe, value: Any) -> str:
    """A label cell as the word a decoder is asked to say: integer ids become their data.label_names entry."""
    value = str(value)
    names = recipe.data.label_names
    if names and value.lstrip("-").isdigit() and 0 <= int(value) < len(names):
        return names[int(value)]
    return value


def prompt_choices(recipe: Recipe, splits: dict[str, Split]) -> list[str]:
    d = recipe.data
    labels = list(d.label_names) if d.label_names else sorted(
        {str(v) for s in splits.values() if d.label_column in s.dataset.column_names for v in s.dataset[d.label_column]})
    return [label_text(recipe, lab) for lab in labels]


def prompt_spec(recipe: Recipe) -> PromptSpec:
    return PromptSpec("Text", "Label", "Classify each text as one of: {choices}.", ["accuracy", "f1"])


def prompt_fields(recipe: Recipe, row: dict[str, Any]) -> tuple[str, str]:
    d = recipe.data
    text = as_text(row[d.text_column]) or ""
    if d.text_pair_column:
        text += "\n" + (as_text(row[d.text_pair_column]) or "")
    return text, label_text(recipe, row.get(d.label_column, ""))
