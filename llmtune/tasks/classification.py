"""Sequence classification: a head on the [CLS] token of an encoder; single sentences or pairs, 2+ classes."""

from __future__ import annotations

import math
from typing import Any

from llmtune.data import Split, as_text, check_text_column, require_column
from llmtune.errors import LlmtuneError
from llmtune.recipe import Recipe
from llmtune.tasks import EvalContext

DEFAULT_METRIC = "accuracy"
GREATER_IS_BETTER = True


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


def _label_id(value: int | str, info: dict[str, Any]) -> int | None:
    names: list[str] = info["label_names"]
    values: list[Any] | None = info.get("label_values")
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
    given = {"label_names": d.label_names} if d.label_names else None
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


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> dict[str, Any]:
    d = recipe.data
    if d.label_names:
        if len(set(d.label_names)) != len(d.label_names):
            raise LlmtuneError(f"{recipe.source}: data.label_names has duplicates: {d.label_names}")
        return {"label_names": list(d.label_names)}
    values = sorted({_label_value(v) for v in splits["train"].dataset[d.label_column]}, key=lambda v: (str(type(v)), v))
    if len(values) < 2:
        raise LlmtuneError(f"{splits['train'].origin}: the training data has only one class ({values}); "
                           "classification needs at least two")
    info: dict[str, Any] = {"label_names": [str(v) for v in values], "label_values": values}
    if all(isinstance(v, int) for v in values) and values == list(range(len(values))):
        info.pop("label_values")  # plain 0..K-1 ids
    for name in ("eval",):
        if name not in splits:
            continue
        for i, raw in enumerate(splits[name].dataset[d.label_column]):
            if _label_id(_label_value(raw), info) is None:  # type: ignore[arg-type]
                raise LlmtuneError(f"{splits[name].origin}: row {i + 1}: label {raw!r} never occurs in the training "
                                   f"data (classes: {info['label_names']}); set data.label_names to list every class")
    return info


def _encode(batch: dict[str, list[Any]], tokenizer: Any, text: str, pair: str | None, label: str | None,
            max_length: int, info: dict[str, Any]) -> dict[str, Any]:
    first = [as_text(v) for v in batch[text]]
    second = [as_text(v) for v in batch[pair]] if pair else None
    enc = tokenizer(first, second, truncation=True, max_length=max_length)
    if label is not None:
        enc["labels"] = [_label_id(_label_value(v), info) for v in batch[label]]  # type: ignore[arg-type]
    return enc


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: dict[str, Any]) -> Any:
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


def load_model(recipe: Recipe, tokenizer: Any, info: dict[str, Any]) -> Any:
    from transformers import AutoModelForSequenceClassification

    from llmtune.models import load_model as load

    names = info["label_names"]
    model = load(
        AutoModelForSequenceClassification,
        recipe.model,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoder backbones need it to find the last token
    return model


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    from transformers import DataCollatorWithPadding

    # dynamic padding per batch; multiples of 8 keep tensor cores busy on GPU and cost little on CPU
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


def evaluate(ctx: EvalContext) -> tuple[dict[str, float], list[dict[str, Any]]]:
    import torch

    from llmtune.metrics import classification_metrics

    acc = ctx.accelerator
    model = ctx.model
    model.eval()
    idxs, logits_all, labels_all = [], [], []
    with torch.no_grad():
        for batch in ctx.loader:
            idx = batch.pop("idx")
            labels = batch.pop("labels", None)
            logits = model(**batch).logits.float()
            if labels is None:
                labels = torch.full((logits.shape[0],), -1, device=logits.device, dtype=torch.long)
            idx, logits, labels = acc.gather_for_metrics((idx, logits, labels))
            idxs.append(idx.cpu())
            logits_all.append(logits.cpu())
            labels_all.append(labels.cpu())
    model.train()
    idx_t = torch.cat(idxs)
    # sort by row and keep each row once, whatever padding the last batch got across processes
    order = idx_t.argsort(stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = idx_t[order][1:] != idx_t[order][:-1]
    order = order[keep]
    logits_t = torch.cat(logits_all)[order]
    labels_t = torch.cat(labels_all)[order]
    probs = logits_t.softmax(-1)
    preds = probs.argmax(-1)
    names = ctx.info["label_names"]
    metrics: dict[str, float] = {}
    if bool((labels_t >= 0).all()):
        metrics["loss"] = float(torch.nn.functional.cross_entropy(logits_t, labels_t))
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
        records.append(rec)
    return metrics, records


def predict(model: Any, tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int,
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
