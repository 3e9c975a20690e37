"""Sentence embeddings: contrastive fine-tuning of an encoder with a pooling layer, saved as a sentence-transformers
folder (modules.json, 1_Pooling/config.json, the transformer files at the root) that plain AutoModel also loads.

Data forms (columns named by data.*_column):
  pairs      anchor, positive              in-batch negatives (MultipleNegativesRankingLoss), optionally symmetric
  triplets   anchor, positive, negative    the same, each row's negative added to every row's candidates
  scored     sentence1, sentence2, score   score / data.score_max in [0, 1]; CoSENT (default) or cosine MSE
A text that occurs twice in a batch is never scored as its own negative: such candidates are masked out.

Eval: scored pairs give Spearman and Pearson correlation (x100) of cosine similarity with the gold score; pairs give
retrieval of each anchor's positive among all of the eval split's positives: recall@1/5/10, MRR@10, NDCG@10.
`main_score` is Spearman or NDCG@10 (as MTEB names it), the metric that picks the best checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmtune.data import Split, as_text, check_text_column, require_column
from llmtune.errors import LlmtuneError
from llmtune.schema import DataArgs
from llmtune.tasks import EvalContext, LoadedRun

if TYPE_CHECKING:
    from llmtune.schema import Recipe

MODEL_CLASS = "AutoModel"
PEFT_TASK_TYPE = None
LORA_DEFAULT = False
GENERATE_DEFAULT = False
EVAL_BEFORE_TRAINING = True  # the untouched encoder's numbers: is fine-tuning worth it
DEFAULT_METRIC = "main_score"
GREATER_IS_BETTER = True
TOKEN_LEVEL_LOSS = False
DECODER_ONLY = False

Pooling = Literal["mean", "cls", "max"]
#: the prefixes of the second and third text's columns in a tokenized row (the first is plain input_ids)
SECOND, THIRD = "b_", "c_"


@dataclass
class Data(DataArgs):
    format: Literal["pairs", "scored"] | None = None  # None: scored when the score column is there
    anchor_column: str = "anchor"
    positive_column: str = "positive"
    negative_column: str = "negative"  # used when the column is there (triplets)
    sentence1_column: str = "sentence1"
    sentence2_column: str = "sentence2"
    score_column: str = "score"
    score_max: float = 1.0  # gold scores are divided by this (STS-B: 5)


@dataclass
class Embedding:
    pooling: Pooling = "mean"
    normalize: bool = True  # unit-length embeddings (a 2_Normalize module in the saved folder)
    loss: Literal["mnrl", "cosent", "cosine_mse"] | None = None  # None: mnrl for pairs, cosent for scored pairs
    scale: float = 20.0  # similarity scale of mnrl (1 / temperature)
    cosent_scale: float = 20.0
    symmetric: bool = False  # mnrl also retrieves each anchor from its positive


OPTIONS: dict[str, type] = {"data": Data, "embedding": Embedding}


@dataclass
class Info:
    format: str = "pairs"
    pooling: str = "mean"
    normalize: bool = True
    triplets: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "pooling": self.pooling, "normalize": self.normalize, "triplets": self.triplets}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        return cls(format=d.get("format", "pairs"), pooling=d.get("pooling", "mean"),
                   normalize=bool(d.get("normalize", True)), triplets=bool(d.get("triplets", False)))


def _opts(recipe: Recipe) -> Embedding:
    return recipe.section("embedding")


def check_recipe(recipe: Recipe) -> None:
    o, d = _opts(recipe), recipe.data
    if d.score_max <= 0:
        raise LlmtuneError(f"{recipe.source}: data.score_max must be > 0, got {d.score_max}")
    for key in ("scale", "cosent_scale"):  # similarity scales: 0 makes every pair alike, a negative one inverts it
        if getattr(o, key) <= 0:
            raise LlmtuneError(f"{recipe.source}: embedding.{key} must be > 0, got {getattr(o, key)}")
    if d.format == "pairs" and o.loss in ("cosent", "cosine_mse"):
        raise LlmtuneError(f"{recipe.source}: embedding.loss={o.loss} needs scored pairs (data.format: scored)")
    if d.format == "scored" and o.loss == "mnrl":
        raise LlmtuneError(f"{recipe.source}: embedding.loss=mnrl trains on (anchor, positive) pairs, not scored "
                           "pairs; use cosent or cosine_mse")


def recognizes(config: dict[str, Any]) -> bool:
    return False  # a bare encoder's config says nothing of pooling; llmtune_info.json or modules.json does


def recognizes_folder(path: Path) -> bool:
    """A folder sentence-transformers saved (its config.json is a bare encoder's; modules.json says the rest)."""
    return (path / "modules.json").is_file()


def info_from_config(config: dict[str, Any], where: str) -> Info:
    """A folder sentence-transformers saved says its pooling in modules.json; a base encoder named by --model gets
    the recipe's (Info's defaults here)."""
    folder = Path(where)
    return st_folder(folder)[1] if recognizes_folder(folder) else Info()


def _format(recipe: Recipe, split: Split) -> str:
    d = recipe.data
    if d.format:
        return d.format
    return "scored" if d.score_column in split.dataset.column_names else "pairs"


def _columns(recipe: Recipe, fmt: str, split: Split) -> list[tuple[str, str]]:
    d = recipe.data
    if fmt == "scored":
        return [(d.sentence1_column, "data.sentence1_column"), (d.sentence2_column, "data.sentence2_column")]
    cols = [(d.anchor_column, "data.anchor_column"), (d.positive_column, "data.positive_column")]
    if d.negative_column in split.dataset.column_names:
        cols.append((d.negative_column, "data.negative_column"))
    return cols


def validate(recipe: Recipe, split: Split) -> None:
    d = recipe.data
    fmt = _format(recipe, split)
    for column, key in _columns(recipe, fmt, split):
        check_text_column(split, column, key)
    if fmt != "scored":
        return
    require_column(split, d.score_column, "data.score_column")
    for i, v in enumerate(split.dataset[d.score_column]):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise LlmtuneError(f"{split.origin}: row {i + 1}: column '{d.score_column}' (data.score_column) holds "
                               f"{v!r}, expected a number")
        if not 0 <= v <= d.score_max:
            raise LlmtuneError(f"{split.origin}: row {i + 1}: score {v} is outside [0, data.score_max={d.score_max}]"
                               "; set data.score_max to the scale's top (STS-B: 5)")


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    o = _opts(recipe)
    train = splits["train"]
    return Info(format=_format(recipe, train), pooling=o.pooling, normalize=o.normalize,
                triplets=_format(recipe, train) == "pairs" and recipe.data.negative_column in train.dataset.column_names)


def _loss_name(recipe: Recipe, info: Info) -> str:
    o = _opts(recipe)
    return o.loss or ("cosent" if info.format == "scored" else "mnrl")


# ---- model inputs -----------------------------------------------------------------------------------------


def text_key(text: str) -> int:
    """A 63-bit id of a text, so a batch can tell two rows that hold the same text."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


def _encode(batch: dict[str, list[Any]], tokenizer: Any, columns: list[str], score: str | None, score_max: float,
            max_length: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix, column in zip(("", SECOND, THIRD), columns, strict=False):
        texts = [as_text(v) or "" for v in batch[column]]
        out[prefix + "input_ids"] = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        out[prefix + "key"] = [text_key(t) for t in texts]
    if score is not None:
        out["score"] = [float(v) / score_max for v in batch[score]]
    return out


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    d = recipe.data
    ds = split.dataset
    fmt = _format(recipe, split)
    columns = [c for c, _ in _columns(recipe, fmt, split)]
    if split.name != "train":
        columns = columns[:2]  # eval scores pairs; a negative column plays no part
    score = d.score_column if fmt == "scored" and d.score_column in ds.column_names else None
    return ds.map(_encode, batched=True, remove_columns=ds.column_names,
                  fn_kwargs={"tokenizer": tokenizer, "columns": columns, "score": score, "score_max": d.score_max,
                             "max_length": recipe.train.max_seq_length}, desc=f"Tokenizing {split.name}")


def pool(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """Token states -> one vector per row, as sentence-transformers' Pooling module computes it."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _st_pooling_config(dim: int, pooling: str) -> dict[str, Any]:
    return {"word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False, "include_prompt": True}


def _make_encoder_class() -> type:
    import torch

    class SentenceEncoder(torch.nn.Module):
        """A transformer and its pooling (and normalisation): forward gives one embedding per row. save_pretrained
        writes the sentence-transformers layout, so the run folder is what SentenceTransformer(path) loads."""

        def __init__(self, transformer: Any, pooling: str, normalize: bool, max_seq_length: int) -> None:
            super().__init__()
            self.transformer = transformer
            self.pooling, self.normalize, self.max_seq_length = pooling, normalize, max_seq_length
            self.objective: tuple[str, float, bool] = ("mnrl", 20.0, False)  # (loss, scale, symmetric)

        @property
        def config(self) -> Any:
            return self.transformer.config

        @property
        def device(self) -> Any:
            return next(self.parameters()).device

        def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
            self.transformer.gradient_checkpointing_enable(**kwargs)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            emb = pool(hidden, attention_mask, self.pooling)
            return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb

        def save_pretrained(self, folder: str, **kwargs: Any) -> None:
            root = Path(folder)
            self.transformer.save_pretrained(folder, **kwargs)
            modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
            if self.normalize:
                modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                                "type": "sentence_transformers.models.Normalize"})
                (root / "2_Normalize").mkdir(exist_ok=True)
            (root / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
            (root / "1_Pooling").mkdir(exist_ok=True)
            (root / "1_Pooling" / "config.json").write_text(json.dumps(
                _st_pooling_config(int(self.config.hidden_size), self.pooling), indent=2) + "\n")
            (root / "sentence_bert_config.json").write_text(json.dumps(
                {"max_seq_length": self.max_seq_length, "do_lower_case": False}, indent=2) + "\n")
            (root / "config_sentence_transformers.json").write_text(json.dumps(
                {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                 "similarity_fn_name": "cosine"}, indent=2) + "\n")

    return SentenceEncoder


_ENCODER: type | None = None


def encoder(transformer: Any, pooling: str, normalize: bool, max_seq_length: int) -> Any:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = _make_encoder_class()
    return _ENCODER(transformer, pooling, normalize, max_seq_length)


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    from transformers import AutoModel

    from llmtune.models import load_model as load

    model = encoder(load(AutoModel, recipe.model), info.pooling, info.normalize, recipe.train.max_seq_length)
    o = _opts(recipe)
    name = _loss_name(recipe, info)
    model.objective = (name, o.cosent_scale if name == "cosent" else o.scale, o.symmetric)
    return model


class Collator:
    """Pads each text column of the rows; every text of a batch goes through one forward (see loss). The batch's
    real tokens are those of all its texts (`n_tokens`, which the loop counts): the attention mask it would fall
    back to is the first column's alone, half of what a pair batch encodes."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {}
        for prefix in ("", SECOND, THIRD):
            if prefix + "input_ids" not in features[0]:
                continue
            rows = [f[prefix + "input_ids"] for f in features]
            width = max(len(r) for r in rows)
            batch[prefix + "input_ids"] = torch.tensor([list(r) + [self.pad_id] * (width - len(r)) for r in rows])
            batch[prefix + "attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            batch[prefix + "key"] = torch.tensor([f[prefix + "key"] for f in features])
        if "score" in features[0]:
            batch["score"] = torch.tensor([f["score"] for f in features], dtype=torch.float32)
        batch["n_tokens"] = sum(batch[p + "attention_mask"].sum(1) for p in ("", SECOND, THIRD)
                                if p + "attention_mask" in batch)
        batch["n_examples"] = torch.ones(len(features), dtype=torch.long)
        if "idx" in features[0]:
            batch["idx"] = torch.tensor([f["idx"] for f in features])
        return batch


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Collator:
    return Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def embed_batch(model: Any, batch: dict[str, Any]) -> list[Any]:
    """Embeddings of each text column of a batch, from one forward over all of them (one collective under DDP)."""
    import torch

    parts = [p for p in ("", SECOND, THIRD) if p + "input_ids" in batch]
    width = max(batch[p + "input_ids"].shape[1] for p in parts)
    pad = torch.nn.functional.pad
    ids = torch.cat([pad(batch[p + "input_ids"], (0, width - batch[p + "input_ids"].shape[1])) for p in parts])
    mask = torch.cat([pad(batch[p + "attention_mask"], (0, width - batch[p + "attention_mask"].shape[1]))
                      for p in parts])
    return list(model(input_ids=ids, attention_mask=mask).float().split(batch["input_ids"].shape[0]))


def mnrl_loss(anchors: Any, candidates: Any, scale: float, anchor_keys: Any | None = None,
              candidate_keys: Any | None = None, symmetric: bool = False) -> Any:
    """MultipleNegativesRankingLoss: cross-entropy of scale * cos(anchor_i, candidate_j) with target j = i; the
    first len(anchors) candidates are the positives, any further ones hard negatives. A candidate j != i holding the
    text of row i's positive is masked out (it would be scored as its own negative). `symmetric` adds the loss of
    retrieving each anchor from its positive (among the batch's anchors)."""
    import torch
    import torch.nn.functional as F

    n = anchors.shape[0]
    a, c = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    logits = scale * a @ c.T
    target = torch.arange(n, device=anchors.device)
    if candidate_keys is not None:
        same = candidate_keys[None, :] == candidate_keys[:n, None]
        same[target, target] = False
        logits = logits.masked_fill(same, float("-inf"))
    loss = F.cross_entropy(logits, target)
    if symmetric:
        back = scale * c[:n] @ a.T
        if anchor_keys is not None:
            same = anchor_keys[None, :] == anchor_keys[:, None]
            same[target, target] = False
            back = back.masked_fill(same, float("-inf"))
        loss = (loss + F.cross_entropy(back, target)) / 2
    return loss


def cosent_loss(a: Any, b: Any, scores: Any, scale: float) -> Any:
    """CoSENT: log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i)))."""
    import torch
    import torch.nn.functional as F

    cos = F.cosine_similarity(a, b, dim=-1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    diff = diff.masked_fill(~(scores[:, None] > scores[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros(1, device=a.device), diff.flatten()]), dim=0)


def loss(model: Any, batch: dict[str, Any]) -> Any:
    """The training objective (the loop's optional hook), as the recipe chose it when the model was built (the
    settings ride on the encoder: `objective`)."""
    import torch
    import torch.nn.functional as F

    name, scale, symmetric = getattr(model, "module", model).objective
    embs = embed_batch(model, batch)
    if name == "mnrl":
        cands = torch.cat(embs[1:])
        keys = torch.cat([batch[p + "key"] for p in (SECOND, THIRD) if p + "key" in batch])
        return mnrl_loss(embs[0], cands, scale, batch["key"], keys, symmetric)
    if name == "cosent":
        return cosent_loss(embs[0], embs[1], batch["score"], scale)
    return F.mse_loss(F.cosine_similarity(embs[0], embs[1], dim=-1), batch["score"])


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    embs = embed_batch(model, {k: v for k, v in batch.items() if k != "score"})
    out = {"a": embs[0], "b": embs[1]}
    if "score" in batch:
        out["score"] = batch["score"]
    return out


# ---- metrics ----------------------------------------------------------------------------------------------


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their average rank (as scipy.stats.rankdata)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(ranks(x), ranks(y))


def retrieval_metrics(query: Any, corpus: Any, relevant: list[int]) -> tuple[dict[str, float], list[int]]:
    """Recall@1/5/10, MRR@10 and NDCG@10 (one relevant document per query) by cosine similarity; and each query's
    1-based rank of its relevant document."""
    import torch.nn.functional as F

    sims = F.normalize(query, dim=-1) @ F.normalize(corpus, dim=-1).T
    gold = sims[range(len(relevant)), relevant]
    rank = ((sims > gold[:, None]).sum(1) + 1).tolist()  # ties count in the query's favour
    n = len(rank)
    out = {f"recall@{k}": sum(r <= k for r in rank) / n for k in (1, 5, 10)}
    out["mrr@10"] = sum(1 / r for r in rank if r <= 10) / n
    out["ndcg@10"] = sum(1 / math.log2(r + 1) for r in rank if r <= 10) / n
    return out, rank


def metric_names(recipe: Recipe, info: Info | None) -> list[str]:
    # the eval split's form decides (scored pairs: correlations; pairs: retrieval), whatever the train split is
    return ["main_score", "spearman", "pearson", "recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"]


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    import torch.nn.functional as F

    if not outputs:
        return {}, []
    d = ctx.recipe.data
    rows = ctx.split.dataset
    if "score" in outputs:
        cos = F.cosine_similarity(outputs["a"], outputs["b"], dim=-1).tolist()
        gold = outputs["score"].tolist()
        sp, pe = 100 * spearman(cos, gold), 100 * pearson(cos, gold)
        metrics = {"spearman": sp, "pearson": pe, "main_score": sp}
        s1, s2 = rows[d.sentence1_column], rows[d.sentence2_column]
        records = [{"sentence1": a, "sentence2": b, "score": g * d.score_max, "cosine": round(c, 6)}
                   for a, b, g, c in zip(s1, s2, gold, cos, strict=True)]
        return metrics, records
    first = rows[d.anchor_column] if d.anchor_column in rows.column_names else rows[d.sentence1_column]
    second = rows[d.positive_column] if d.positive_column in rows.column_names else rows[d.sentence2_column]
    # the corpus: each distinct positive once (a duplicate would split the relevant document in two)
    corpus_of: dict[str, int] = {}
    for text in second:
        corpus_of.setdefault(text, len(corpus_of))
    keep = [second.index(t) for t in corpus_of]
    metrics, rank = retrieval_metrics(outputs["a"], outputs["b"][keep], [corpus_of[t] for t in second])
    metrics["main_score"] = metrics["ndcg@10"]
    records = [{"anchor": a, "positive": p, "rank": r} for a, p, r in zip(first, second, rank, strict=True)]
    return metrics, records


# ---- a finished run -----------------------------------------------------------------------------------------


def st_folder(path: Path) -> tuple[Path, Info, int | None]:
    """(transformer folder, pooling and normalisation, max_seq_length or None) of a folder sentence-transformers
    saved (modules.json naming a Transformer, a Pooling and perhaps a Normalize module; llmtune's embedding runs
    are such folders), or of a plain encoder folder (mean pooling, not normalised)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return path, Info(pooling="mean", normalize=False), None
    try:
        modules = json.loads(modules_file.read_text())
        paths = {str(m["type"]).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise LlmtuneError(f"{modules_file}: unreadable (not sentence-transformers' list of modules)") from None
    unknown = sorted(set(paths) - {"Transformer", "Pooling", "Normalize"})
    if unknown:
        raise LlmtuneError(f"{modules_file}: module(s) {', '.join(unknown)} are not ones llmtune computes "
                           "(Transformer, Pooling, Normalize)")
    transformer, cfg = path / paths.get("Transformer", ""), path / paths.get("Pooling", "1_Pooling") / "config.json"
    pooling = "mean"
    if cfg.is_file():
        pc = json.loads(cfg.read_text())
        # sentence-transformers 6 writes one `pooling_mode` ("cls", "max", "mean"...); earlier versions a bool each
        mode = pc.get("pooling_mode")
        if isinstance(mode, str):
            if mode not in ("mean", "cls", "max"):
                raise LlmtuneError(f"{cfg}: pooling_mode '{mode}' is not one llmtune computes (mean, cls, max)")
            pooling = mode
        else:
            pooling = "cls" if pc.get("pooling_mode_cls_token") else "max" if pc.get("pooling_mode_max_tokens") \
                else "mean"
    sbert = transformer / "sentence_bert_config.json"
    max_len = json.loads(sbert.read_text()).get("max_seq_length") if sbert.is_file() else None
    return transformer, Info(pooling=pooling, normalize="Normalize" in paths), max_len


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    transformer, found, st_max_len = st_folder(path)
    info = info or found
    tokenizer = AutoTokenizer.from_pretrained(str(transformer))
    if recipe is not None:
        max_len = recipe.train.max_seq_length
    else:  # sentence-transformers' own limit: its config's, else the tokenizer's (ST 6 keeps it there)
        max_len = int(st_max_len or min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512))
    return encoder(AutoModel.from_pretrained(str(transformer)), info.pooling, info.normalize, max_len), tokenizer


def encode_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 32) -> Any:
    """Embeddings of texts (rows in input order), batched longest-first."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.zeros(len(texts), int(model.config.hidden_size))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            ids = order[s:s + batch_size]
            enc = tokenizer([texts[i] for i in ids], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(model.device)
            out[ids] = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).float().cpu()
    return out


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """`llmtune predict`: the embedding of each text (and the cosine similarity with --pair-field's text)."""
    import torch.nn.functional as F

    from llmtune.inputs import column

    texts = column(rows, field, ("text", "sentence", "sentence1", "anchor"))
    max_len = run.recipe.train.max_seq_length if run.recipe is not None else int(run.model.max_seq_length)
    embs = encode_texts(run.model, run.tokenizer, texts, max_len, batch_size)
    out = [{"text": t, "embedding": [round(float(x), 7) for x in e]} for t, e in zip(texts, embs, strict=True)]
    if pair_field:
        pairs = column(rows, pair_field, ())
        other = encode_texts(run.model, run.tokenizer, pairs, max_len, batch_size)
        for rec, p, c in zip(out, pairs, F.cosine_similarity(embs, other, dim=-1).tolist(), strict=True):
            rec.update(text_pair=p, cosine=round(c, 6))
    return out

