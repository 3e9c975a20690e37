"""Masked language modelling (BERT's pre-training objective), for domain-adaptive continued pretraining of an encoder.

Data: a text column (`.txt` files: one document or paragraph per line; blank lines are skipped). By default lines
are tokenized with their special tokens, concatenated and cut into blocks of train.max_seq_length as run_mlm.py does
(a long document gives several blocks; the short tail is kept, not dropped); `data.line_by_line: true` keeps each
line as an example (a line longer than a block continues in further examples, none cut off).

Masking as BERT: each non-special token (or, with data.whole_word_mask, each word with all its sub-tokens) is
chosen with data.mlm_probability; a chosen token becomes [MASK] 80% of the time, a random token 10%, stays 10%.
Training batches are masked by the collator with a generator seeded from train.seed and the batch's block ids, so
a resumed run draws the masks an uninterrupted one draws. Eval blocks are masked once, at tokenize time, with
data.eval_mask_seed and their block id, so eval loss and perplexity compare across runs and checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.data import Split, as_text, require_column
from llmtune.errors import LlmtuneError
from llmtune.losses import token_cross_entropy
from llmtune.schema import DataArgs, EvalArgs
from llmtune.tasks import EvalContext, LoadedRun

if TYPE_CHECKING:
    from llmtune.schema import Recipe

logger = logging.getLogger("llmtune")

MODEL_CLASS = "AutoModelForMaskedLM"
PEFT_TASK_TYPE = None  # full fine-tuning only: lora.enabled is refused
LORA_DEFAULT = False
GENERATE_DEFAULT = False
EVAL_BEFORE_TRAINING = True  # the base model's (or the fresh head's) loss on the fixed masks: what training bought
DEFAULT_METRIC = "loss"
GREATER_IS_BETTER = False
TOKEN_LEVEL_LOSS = True  # mean negative log-likelihood of the masked tokens: exp(loss) is the perplexity
DECODER_ONLY = False

MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the chosen tokens; the remaining 10% keep their token
#: logits of at most this many floats at once in eval (rows x length x vocab)
EVAL_LOGITS_BUDGET = 64 * 1024 * 1024
IGNORE = -100


@dataclass
class Data(DataArgs):
    text_column: str = "text"
    line_by_line: bool = False  # true: one example per line (run_mlm's --line_by_line); false: concatenated blocks
    mlm_probability: float = 0.15
    whole_word_mask: bool = False  # mask all sub-tokens of a chosen word together
    eval_mask_seed: int = 0  # the eval split's masks: fixed, whatever train.seed, so eval losses compare


@dataclass
class Eval(EvalArgs):
    predict_top_k: int = 5  # candidates `llmtune predict` lists per [MASK]


OPTIONS: dict[str, type] = {"data": Data, "eval": Eval}


@dataclass
class Info:
    """What predict needs besides the model: the tokenizer's mask token (for messages)."""

    mask_token: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mask_token": self.mask_token}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        return cls(mask_token=d.get("mask_token"))


def check_recipe(recipe: Recipe) -> None:
    d = recipe.data
    if not 0 < d.mlm_probability < 1:
        raise LlmtuneError(f"{recipe.source}: data.mlm_probability must be in (0, 1), got {d.mlm_probability}")
    if recipe.train.max_seq_length < 2:
        raise LlmtuneError(f"{recipe.source}: train.max_seq_length must be at least 2 for masked_lm blocks")
    if recipe.eval.predict_top_k < 1:
        raise LlmtuneError(f"{recipe.source}: eval.predict_top_k must be at least 1, got {recipe.eval.predict_top_k}")


def recognizes(config: dict[str, Any]) -> bool:
    return any(a.endswith("ForMaskedLM") for a in config.get("architectures") or [])


def info_from_config(config: dict[str, Any], where: str) -> Info:
    """A plain model folder (or a base encoder under `llmtune eval --model`): nothing to read from its config."""
    return Info()


# ---- rows -------------------------------------------------------------------------------------------------


def validate(recipe: Recipe, split: Split) -> None:
    column = recipe.data.text_column
    require_column(split, column, "data.text_column")
    any_text = False
    for i, value in enumerate(split.dataset[column]):
        text = as_text(value)
        if text is None and value is not None:
            kind = "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
            raise LlmtuneError(f"{split.origin}: row {i + 1}: column '{column}' (data.text_column) holds {kind} "
                               f"({str(value)[:40]!r}), expected text")
        any_text = any_text or bool(text and text.strip())
    if not any_text:
        raise LlmtuneError(f"{split.origin}: no text: every row of column '{column}' (data.text_column) is blank")


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    if tokenizer is None:
        return Info()
    if tokenizer.mask_token_id is None:
        raise LlmtuneError(f"model.name '{recipe.model.name}': the tokenizer has no mask token; masked_lm needs an "
                           "encoder trained with one (BERT, RoBERTa, MiniLM...)")
    if recipe.data.whole_word_mask and not getattr(tokenizer, "is_fast", False):
        raise LlmtuneError(f"data.whole_word_mask: needs a fast tokenizer (one that maps sub-tokens to words); "
                           f"model.name '{recipe.model.name}' has only a slow one")
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 100_000 and recipe.train.max_seq_length > limit:
        raise LlmtuneError(f"train.max_seq_length={recipe.train.max_seq_length}: longer than the model's "
                           f"{limit} positions")
    return Info(mask_token=tokenizer.mask_token)


# ---- masking ----------------------------------------------------------------------------------------------


def maskable_ids(tokenizer: Any, vocab_size: int | None = None) -> Any:
    """The ids a 'random token' replacement draws from: the vocabulary less the special tokens."""
    import torch

    n = min(len(tokenizer), vocab_size or len(tokenizer))
    keep = torch.ones(n, dtype=torch.bool)
    keep[[i for i in tokenizer.all_special_ids if i < n]] = False
    return keep.nonzero().squeeze(1)


def mask_tokens(input_ids: Any, special: Any, word_start: Any | None, probability: float, mask_id: int,
                random_ids: Any, generator: Any, at_least_one: str | None = None) -> tuple[Any, Any]:
    """(masked input ids, labels) for a (rows x length) batch. `special` marks positions never chosen (special
    tokens, padding); `word_start` (1 where a word begins) chooses whole words. `at_least_one`: "batch" or "row"
    forces one chosen token where none was (a batch without a target would have a 0/0 loss)."""
    import torch

    special = special.bool()
    u = torch.rand(input_ids.shape, generator=generator)
    if word_start is None:
        starts = torch.ones_like(special)
    else:
        starts = word_start.bool() | special
        starts[:, 0] = True
    pos = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(1).values  # each token's word start
    pick = (u < probability) & starts
    chosen = pick.gather(1, first) & ~special
    if at_least_one is not None:
        rows = [slice(None)] if at_least_one == "batch" else [slice(r, r + 1) for r in range(len(input_ids))]
        for r in rows:
            free = (starts[r] & ~special[r]).flatten().nonzero().squeeze(1)
            if not bool(chosen[r].any()) and len(free):
                pick[r].view(-1)[free[torch.randint(len(free), (1,), generator=generator)]] = True
        chosen = pick.gather(1, first) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    r = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (r < MASK_FRACTION)] = mask_id
    rand_pos = chosen & (r >= MASK_FRACTION) & (r < MASK_FRACTION + RANDOM_FRACTION)
    draws = random_ids[torch.randint(len(random_ids), input_ids.shape, generator=generator)]
    masked[rand_pos] = draws[rand_pos]
    return masked, labels


def _generator(*parts: int) -> Any:
    import torch

    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


# ---- model inputs -----------------------------------------------------------------------------------------


def _lines(batch: dict[str, list[Any]], column: str) -> list[str]:
    return [t for t in (as_text(v) for v in batch[column]) if t and t.strip()]


def _word_starts(enc: Any, i: int) -> list[int]:
    out, prev = [], None
    for w in enc.word_ids(i):
        out.append(1 if w is None or w != prev else 0)
        prev = w
    return out


def _encode_lines(batch: dict[str, list[Any]], tokenizer: Any, column: str, max_length: int, line_by_line: bool,
                  words: bool) -> dict[str, Any]:
    texts = _lines(batch, column)
    kw: dict[str, Any] = {"return_special_tokens_mask": True}
    if line_by_line:  # a long line continues in further examples rather than being cut off
        kw.update(truncation=True, max_length=max_length, return_overflowing_tokens=True)
    enc = tokenizer(texts, **kw)
    out = {"input_ids": enc["input_ids"], "special_tokens_mask": enc["special_tokens_mask"]}
    if words:
        out["word_start"] = [_word_starts(enc, i) for i in range(len(enc["input_ids"]))]
    return out


def _group(batch: dict[str, list[Any]], max_length: int) -> dict[str, Any]:
    """Concatenate every row and cut into blocks of max_length; the last, shorter block is kept."""
    out: dict[str, Any] = {}
    for key, rows in batch.items():
        flat = [x for row in rows for x in row]
        out[key] = [flat[s:s + max_length] for s in range(0, len(flat), max_length)]
    if "word_start" in out:
        for ws in out["word_start"]:
            ws[0] = 1  # a word cut by a block boundary: its pieces in this block are masked as one word
    return out


def _mask_eval(batch: dict[str, list[Any]], indices: list[int], seed: int, probability: float, mask_id: int,
               random_ids: Any) -> dict[str, Any]:
    import torch

    ids_out, labels_out = [], []
    for k, i in enumerate(indices):
        ids = torch.tensor([batch["input_ids"][k]])
        special = torch.tensor([batch["special_tokens_mask"][k]])
        ws = torch.tensor([batch["word_start"][k]]) if "word_start" in batch else None
        masked, labels = mask_tokens(ids, special, ws, probability, mask_id, random_ids, _generator(seed, i),
                                     at_least_one="row")
        ids_out.append(masked[0].tolist())
        labels_out.append(labels[0].tolist())
    return {"input_ids": ids_out, "labels": labels_out}


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    d = recipe.data
    ds = split.dataset
    max_length = recipe.train.max_seq_length
    out = ds.map(_encode_lines, batched=True, remove_columns=ds.column_names,
                 fn_kwargs={"tokenizer": tokenizer, "column": d.text_column, "max_length": max_length,
                            "line_by_line": d.line_by_line, "words": d.whole_word_mask},
                 desc=f"Tokenizing {split.name}")
    if not d.line_by_line:
        # one batch over the whole split: blocks cross line and map-batch boundaries, and only one tail is short
        out = out.map(_group, batched=True, batch_size=None, fn_kwargs={"max_length": max_length},
                      desc=f"Grouping {split.name} into blocks of {max_length}")
    elif len(out) > len(_lines(ds.to_dict(), d.text_column)) and split.name == "train":
        logger.info("%s: lines longer than train.max_seq_length=%d continue in further examples (%d examples)",
                    split.origin, max_length, len(out))
    if split.name == "train":
        return out.add_column("block", list(range(len(out))))
    random_ids = maskable_ids(tokenizer)
    return out.map(_mask_eval, batched=True, with_indices=True,
                   remove_columns=[c for c in out.column_names if c != "input_ids"],
                   fn_kwargs={"seed": d.eval_mask_seed, "probability": d.mlm_probability,
                              "mask_id": tokenizer.mask_token_id, "random_ids": random_ids},
                   desc=f"Masking {split.name} (data.eval_mask_seed={d.eval_mask_seed})")


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    from transformers import AutoModelForMaskedLM

    from llmtune.models import load_model as load

    model, loading = load(AutoModelForMaskedLM, recipe.model, output_loading_info=True)
    missing = [k for k in loading.get("missing_keys", []) if not k.endswith("decoder.weight")]
    if missing:
        head = sorted({k.split(".")[0] for k in missing})
        logger.warning("model.name '%s' has no pretrained masked-LM head: %d weights (%s...) start from random "
                       "values; eval before training shows their loss", recipe.model.name, len(missing),
                       ", ".join(head))
    return model


class Collator:
    """Pads; training batches (no `labels`) are masked here with a generator seeded from train.seed and the
    batch's block ids: the masks are a function of the batch, so a resumed run draws the same ones (the loop
    replays the same batches) and each epoch's new batches get new masks. Eval batches come masked."""

    def __init__(self, tokenizer: Any, probability: float, seed: int, vocab_size: int | None) -> None:
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mask_id = tokenizer.mask_token_id
        self.probability = probability
        self.seed = seed
        self.random_ids = maskable_ids(tokenizer, vocab_size)

    @staticmethod
    def _pad(rows: list[list[int]], value: int, width: int) -> Any:
        import torch

        return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = self._pad([f["input_ids"] for f in features], self.pad_id, width)
        attention = self._pad([[1] * len(f["input_ids"]) for f in features], 0, width)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": attention}
        if "labels" in features[0]:
            batch["labels"] = self._pad([f["labels"] for f in features], IGNORE, width)
        else:
            special = self._pad([f["special_tokens_mask"] for f in features], 1, width)
            ws = self._pad([f["word_start"] for f in features], 1, width) if "word_start" in features[0] else None
            gen = _generator(self.seed, *(int(f["block"]) for f in features))
            batch["input_ids"], batch["labels"] = mask_tokens(ids, special, ws, self.probability, self.mask_id,
                                                              self.random_ids, gen, at_least_one="batch")
        if "idx" in features[0]:
            batch["idx"] = torch.tensor([f["idx"] for f in features])
        return batch


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Collator:
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return Collator(tokenizer, recipe.data.mlm_probability, recipe.train.seed, vocab)


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    labels = batch.pop("labels", None)
    if labels is None:
        return {}
    rows, width = labels.shape
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 30_000)
    step = max(1, EVAL_LOGITS_BUDGET // max(1, width * vocab))
    sums, counts, correct, preds = [], [], [], []
    for r in range(0, rows, step):
        logits = model(**{k: v[r:r + step] for k, v in batch.items()}).logits.float()
        target = labels[r:r + step]
        keep = target != IGNORE
        ce = token_cross_entropy(logits, target.clamp(min=0))
        top = logits.argmax(-1)
        sums.append((ce * keep).to(torch.float64).sum(-1))
        counts.append(keep.sum(-1))
        correct.append(((top == target) & keep).sum(-1))
        preds.append(torch.where(keep, top, torch.full_like(top, IGNORE)))
    return {"loss_sum": torch.cat(sums), "loss_count": torch.cat(counts), "correct": torch.cat(correct),
            "pred": torch.cat(preds), "labels": labels, "input_ids": batch["input_ids"]}


def metric_names(recipe: Recipe, info: Any) -> list[str]:
    return ["loss", "perplexity", "accuracy", "masked_tokens"]


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    if not outputs:
        return {}, []
    n = int(outputs["loss_count"].sum())
    loss = float(outputs["loss_sum"].sum() / max(n, 1))
    metrics = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"),
               "accuracy": float(outputs["correct"].sum()) / max(n, 1), "masked_tokens": float(n)}
    tok = ctx.tokenizer
    records = []
    for i in range(len(outputs["loss_count"])):
        ids = [t for t in outputs["input_ids"][i].tolist() if t >= 0 and t != tok.pad_token_id]
        keep = outputs["labels"][i] != IGNORE
        count = int(outputs["loss_count"][i])
        records.append({
            "block": i, "text": tok.decode(ids), "masked_tokens": count,
            "loss": float(outputs["loss_sum"][i]) / count if count else None,
            "targets": tok.convert_ids_to_tokens(outputs["labels"][i][keep].tolist()),
            "predictions": tok.convert_ids_to_tokens(outputs["pred"][i][keep].tolist())})
    return metrics, records


# ---- a finished run -----------------------------------------------------------------------------------------


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    return AutoModelForMaskedLM.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """`llmtune predict`: for each [MASK] of each input text, the top-k tokens with their probabilities and the
    text with that token filled in (as the fill-mask pipeline reports them)."""
    import torch

    from llmtune.inputs import column

    if pair_field:
        raise LlmtuneError("--pair-field: masked_lm fills the [MASK] slots of one text per row; there is no pair")
    texts = column(rows, field or "text", ())
    recipe = run.recipe
    max_len = recipe.train.max_seq_length if recipe is not None else 512
    top_k = getattr(recipe.eval, "predict_top_k", 5) if recipe is not None else 5
    model, tok = run.model, run.tokenizer
    mask_id = tok.mask_token_id
    encoded = []
    for row, text in zip(rows, texts, strict=True):
        ids = tok(text, truncation=False)["input_ids"]
        where = row.get("_where", "input row")
        if mask_id not in ids:
            raise LlmtuneError(f"{where}: no {tok.mask_token} in the text; mark each word to fill with "
                               f"{tok.mask_token}")
        if len(ids) > max_len:
            raise LlmtuneError(f"{where}: {len(ids)} tokens, longer than train.max_seq_length={max_len}")
        encoded.append(ids)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out: list[dict[str, Any]] = [{} for _ in encoded]
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in part)
            pad = tok.pad_token_id or 0
            ids = torch.tensor([encoded[i] + [pad] * (width - len(encoded[i])) for i in part])
            att = torch.tensor([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in part])
            probs = model(input_ids=ids.to(model.device), attention_mask=att.to(model.device)).logits.float()
            probs = probs.softmax(-1).cpu()
            for b, i in enumerate(part):
                slots = []
                for pos in [j for j, t in enumerate(encoded[i]) if t == mask_id]:
                    p, cand = probs[b, pos].topk(top_k)
                    slots.append({"position": pos, "candidates": [
                        {"token": tok.convert_ids_to_tokens(int(c)), "token_id": int(c), "score": round(float(q), 6),
                         "sequence": tok.decode([int(c) if j == pos else t for j, t in enumerate(encoded[i])],
                                                skip_special_tokens=True)}
                        for q, c in zip(p, cand, strict=True)]})
                out[i] = {"text": texts[i], "masks": slots}
    return out

