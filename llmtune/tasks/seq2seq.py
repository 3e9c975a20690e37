"""Summarization and translation with any encoder-decoder (`AutoModelForSeq2SeqLM`: T5, BART, mT5, Marian...).

Training is teacher-forced: labels are the target's token ids, padded with -100 so padding never counts in the
loss, and the model builds `decoder_input_ids` by shifting the labels right (DataCollatorForSeq2Seq asks it to).
Evaluation is generate-then-score: eval loss on the labels, then batched, length-sorted generation of every eval
row (each exactly once across processes) scored against all of its references.

A target cell may be a string or a list of reference strings: training uses the first, scoring uses them all.

evaluate() returns (the loop adds `eval_`): `loss` (token-weighted mean cross-entropy of the first references),
`rouge1`, `rouge2`, `rougeL`, `rougeLsum` (summarization) or `bleu`, `chrf` (translation), or whatever
`eval.metrics` names, and `gen_len`, the mean length of the generated texts in tokens. Metric signatures
(sacreBLEU's own for bleu/chrf) do not depend on the predictions, so setup() computes them: they are logged and
written to the run's llmtune_info.json under `metric_signatures` (evaluate() returns floats only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.data import Split, as_text, references_of, require_column
from llmtune.errors import LlmtuneError
from llmtune.losses import token_cross_entropy
from llmtune.schema import DataArgs, TrainArgs
from llmtune.tasks import EvalContext, LoadedRun, PromptSpec

if TYPE_CHECKING:
    from llmtune.schema import Recipe

logger = logging.getLogger("llmtune")

MODEL_CLASS = "AutoModelForSeq2SeqLM"
PEFT_TASK_TYPE = None  # full fine-tuning only
LORA_DEFAULT = False
GENERATE_DEFAULT = True  # generate-then-score: the metrics users report are on generated text
GENERATES = True  # its runs generate text: the generation section and eval.generate apply
EVAL_BEFORE_TRAINING = False
# The loop's default for picking the best checkpoint. One module serves two tasks whose main metrics differ
# (rougeL, bleu), and eval loss exists for both; set train.metric_for_best_model=rougeL (or bleu) to use those.
DEFAULT_METRIC = "loss"
GREATER_IS_BETTER = False
TOKEN_LEVEL_LOSS = True
DECODER_ONLY = False


@dataclass
class Data(DataArgs):
    source_column: str | None = None
    target_column: str | None = None
    source_prefix: str | None = None
    source_lang: str | None = None
    target_lang: str | None = None


@dataclass
class Train(TrainArgs):
    max_source_length: int = 512
    max_target_length: int = 128


OPTIONS: dict[str, type] = {"data": Data, "train": Train}


@dataclass
class Info:
    """Which cells hold source and target (`*_key`: a column of {lang: text} dicts), the prefix, the label
    tokens to drop, and the metrics with their signatures (written to llmtune_info.json)."""

    source_column: str | None = None
    source_key: str | None = None
    target_column: str | None = None
    target_key: str | None = None
    source_prefix: str = ""
    model_type: str | None = None
    label_drop_leading: list[int] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    metric_signatures: dict[str, str] = field(default_factory=dict)
    source_lang: str | None = None
    target_lang: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        # unknown keys (`task`, keys of a later version) are skipped; missing ones take their defaults
        info = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        info.source_prefix = info.source_prefix or ""
        return info


def check_recipe(recipe: Recipe) -> None:
    d, t, s = recipe.data, recipe.train, recipe.source
    for key in ("max_source_length", "max_target_length"):
        if getattr(t, key) < 1:
            raise LlmtuneError(f"{s}: train.{key} must be at least 1, got {getattr(t, key)}")
    if recipe.task == "translation" and d.source_column is None and not (d.source_lang and d.target_lang):
        raise LlmtuneError(f"{s}: translation needs data.source_lang and data.target_lang (or "
                           "data.source_column/target_column)")


def recognizes(config: dict[str, Any]) -> bool:
    return bool(config.get("is_encoder_decoder"))

DEFAULT_METRICS = {"summarization": ["rouge"], "translation": ["bleu", "chrf"]}
TEXT_METRICS = ("rouge", "bleu", "chrf", "ter", "exact_match")
# column pairs that summarization datasets commonly use, tried when data.source_column/target_column are unset
SUMMARIZATION_COLUMNS = [("document", "summary"), ("article", "highlights"), ("text", "summary"),
                         ("dialogue", "summary"), ("source", "target")]
# model types pretrained with T5's multi-task prefixes ("summarize: ", "translate English to German: ")
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")
# the first 3 of MiniLM's 6 layers decode: about as good as all 6 on the bundled data, for less per step
BERT2BERT_DECODER_LAYERS = 3
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "ro": "Romanian", "es": "Spanish", "it": "Italian",
             "nl": "Dutch", "pt": "Portuguese", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "cs": "Czech",
             "fi": "Finnish", "tr": "Turkish", "et": "Estonian", "lv": "Latvian", "hi": "Hindi"}


# ---- which cells hold the source and the target ---------------------------------------------------


def _fields(recipe: Recipe, columns: list[str], split: Split | None = None) -> dict[str, str | None]:
    """Source and target columns; `*_key` is set when a column holds {lang: text} dicts (hub translation sets)."""
    d = recipe.data
    if d.source_column or d.target_column:
        return {"source_column": d.source_column, "source_key": None,
                "target_column": d.target_column, "target_key": None}
    if recipe.task == "translation":
        if "translation" in columns:  # wmt16, opus_books...: one column of {"en": ..., "de": ...}
            return {"source_column": "translation", "source_key": d.source_lang,
                    "target_column": "translation", "target_key": d.target_lang}
        return {"source_column": d.source_lang, "source_key": None, "target_column": d.target_lang, "target_key": None}
    for src, tgt in SUMMARIZATION_COLUMNS:
        if src in columns and (tgt in columns or (split is not None and split.name == "test")):
            return {"source_column": src, "source_key": None, "target_column": tgt, "target_key": None}
    where = f" (columns in {split.origin}: {', '.join(columns)})" if split is not None else ""
    raise LlmtuneError(f"data.source_column and data.target_column are not set and the data has none of the usual "
                       f"pairs ({', '.join('/'.join(p) for p in SUMMARIZATION_COLUMNS)}){where}")


def _cell(value: Any, key: str | None) -> Any:
    return value.get(key) if key is not None and isinstance(value, dict) else value


def source_text(value: Any, key: str | None = None) -> str | None:
    """A source cell as text: a string, or a list of strings (sentences) joined with spaces."""
    return as_text(_cell(value, key))


def references(value: Any, key: str | None = None) -> list[str]:
    """A target cell as its list of references (one string, or a list of strings)."""
    return references_of(_cell(value, key))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    kind = "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
    return f"{kind} ({str(value)[:60]!r})"


def _holds(value: Any, key: str | None) -> str:
    """What a cell holds, for an error: a translation pair without the language asked for names the ones it has."""
    if key is not None and isinstance(value, dict) and value.get(key) is None:
        have = [k for k, v in value.items() if v is not None]
        return f"no '{key}' text (it has: {', '.join(have) or 'nothing'})"
    return _describe(_cell(value, key))


def validate(recipe: Recipe, split: Split) -> None:
    names = split.dataset.column_names
    f = _fields(recipe, names, split)
    src, tgt = f["source_column"], f["target_column"]
    src_key = "data.source_column" if recipe.data.source_column or recipe.task != "translation" else "data.source_lang"
    tgt_key = "data.target_column" if recipe.data.target_column or recipe.task != "translation" else "data.target_lang"
    require_column(split, src, src_key)
    for i, value in enumerate(split.dataset[src]):
        text = source_text(value, f["source_key"])
        if text is None:
            raise LlmtuneError(f"{split.origin}: row {i + 1}: source column '{src}' ({src_key}) holds "
                               f"{_holds(value, f['source_key'])}, expected text or a list of texts")
        if not text.strip():
            raise LlmtuneError(f"{split.origin}: row {i + 1}: source column '{src}' ({src_key}) is an empty text")
    if split.name == "test" and (tgt is None or tgt not in names):
        return  # an unlabelled test split can still be predicted
    require_column(split, tgt, tgt_key)
    for i, value in enumerate(split.dataset[tgt]):
        cell = _cell(value, f["target_key"])
        refs = references(value, f["target_key"])
        ok = isinstance(cell, str) or (isinstance(cell, list) and len(refs) == len(cell))
        if not ok or not refs:
            raise LlmtuneError(f"{split.origin}: row {i + 1}: target column '{tgt}' ({tgt_key}) holds "
                               f"{_holds(value, f['target_key'])}, expected a text or a list of reference texts")
        for r in refs:
            if not r.strip():
                raise LlmtuneError(f"{split.origin}: row {i + 1}: target column '{tgt}' ({tgt_key}) has an empty "
                                   "reference text")


# ---- setup: prefix, metrics, signatures ----------------------------------------------------------


def model_config(recipe: Recipe) -> dict[str, Any]:
    """The model's config.json as a dict, without loading weights (empty when it cannot be read)."""
    from llmtune.models import read_config, resolve

    resolved = resolve(recipe.model)
    if resolved.is_local:
        return read_config(resolved.path)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(resolved.path, trust_remote_code=recipe.model.trust_remote_code).to_dict()
    except Exception:  # an unreachable hub id fails with a clear message when the model loads
        return {}


def _is_seq2seq_type(model_type: str) -> bool:
    """Whether transformers has an AutoModelForSeq2SeqLM class for this model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES


def decoder_start(configured: int | None, tokenizer: Any) -> int | None:
    """The model's decoder start token; encoders turned into decoders (BERT) have none: use BOS, else CLS, else PAD."""
    if configured is not None:
        return configured
    return next((t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id)
                 if t is not None), None)


def source_prefix(recipe: Recipe, kind: str | None) -> str:
    """data.source_prefix; for T5-family models with none given, T5's own task prefix (with a warning)."""
    d = recipe.data
    if d.source_prefix is not None:
        return d.source_prefix
    if kind not in T5_FAMILY:
        return ""
    if recipe.task == "summarization":
        prefix = "summarize: "
    else:
        src, tgt = (LANGUAGES.get(x or "", x or "?") for x in (d.source_lang, d.target_lang))
        prefix = f"translate {src} to {tgt}: "
    logger.warning("data.source_prefix is not set; using %r, the prefix %s models were pretrained with "
                   "(set data.source_prefix=\"\" for none)", prefix, kind)
    return prefix


def eval_metrics(recipe: Recipe) -> list[str]:
    names = recipe.eval.metrics or DEFAULT_METRICS[recipe.task]
    for name in names:
        if name not in TEXT_METRICS:
            import difflib

            close = difflib.get_close_matches(name, TEXT_METRICS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise LlmtuneError(f"eval.metrics: '{name}' is not a metric for {recipe.task}{hint}; "
                               f"choose from {', '.join(TEXT_METRICS)}")
    return list(names)


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    from llmtune import metrics as metrics_mod

    eval_split = splits["eval"]
    f = _fields(recipe, eval_split.dataset.column_names, eval_split)
    cfg = model_config(recipe)
    kind = cfg.get("model_type")
    from llmtune.models import BERT2BERT_ALIAS

    if cfg and kind and not cfg.get("is_encoder_decoder") and recipe.model.name != BERT2BERT_ALIAS \
            and not _is_seq2seq_type(kind):
        raise LlmtuneError(f"{recipe.source}: model.name {recipe.model.name} is a {kind or 'decoder-only'} model "
                           f"without a decoder over an encoder; {recipe.task} needs an encoder-decoder (T5, BART, "
                           "Marian...), or use task causal_lm for a decoder")
    names = eval_metrics(recipe)
    refs = [references(v, f["target_key"]) for v in eval_split.dataset[f["target_column"]]]
    signatures = {name: metrics_mod.signature(name, refs) for name in names}
    for name, sig in signatures.items():
        logger.info("%s signature: %s", name, sig)
    drop = leading_ids_to_drop(decoder_start(cfg.get("decoder_start_token_id"), tokenizer), tokenizer) \
        if tokenizer is not None else []
    return Info(**f, source_prefix=source_prefix(recipe, kind), model_type=kind, label_drop_leading=drop,
                metrics=names, metric_signatures=signatures, source_lang=recipe.data.source_lang,
                target_lang=recipe.data.target_lang)


# ---- tokenize, model, collator --------------------------------------------------------------------


def _encode(batch: dict[str, list[Any]], tokenizer: Any, source_column: str, source_key: str | None,
            target_column: str | None, target_key: str | None, prefix: str, max_source_length: int,
            max_target_length: int, drop_leading: list[int]) -> dict[str, Any]:
    sources = [prefix + (source_text(v, source_key) or "") for v in batch[source_column]]
    # no token_type_ids: BERT-style tokenizers return them and T5 has no such input
    enc = tokenizer(sources, max_length=max_source_length, truncation=True, return_token_type_ids=False)
    if target_column is not None:
        first = [references(v, target_key)[0] for v in batch[target_column]]  # train on the first reference
        # text_target: tokenizers with a separate target vocabulary (Marian) switch to it
        labels = tokenizer(text_target=first, max_length=max_target_length, truncation=True,
                           return_token_type_ids=False)["input_ids"]
        labels = [x[1:] if len(x) > 1 and x[0] in drop_leading else x for x in labels]
        enc["labels"] = labels
    return enc


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    ds = split.dataset
    target = info.target_column if info.target_column in ds.column_names else None
    return ds.map(
        _encode,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "source_column": info.source_column, "source_key": info.source_key,
                   "target_column": target, "target_key": info.target_key, "prefix": info.source_prefix,
                   "max_source_length": recipe.train.max_source_length,
                   "max_target_length": recipe.train.max_target_length,
                   "drop_leading": info.label_drop_leading},
        desc=f"Tokenizing {split.name}",
    )


def leading_ids_to_drop(start: int | None, tokenizer: Any) -> list[int]:
    """Tokens that must not open a label sequence.

    BERT-style tokenizers open every text with [CLS] (and have no BOS). As a label it teaches the model nothing
    (it is always first), and when it is also the decoder start (BERT2BERT) the model learns "after [CLS] comes
    [CLS]" and generates nothing else. BART's <s> is a real BOS and stays, as BART was pretrained with it.
    """
    drop = [start] if start is not None else []
    if tokenizer.bos_token_id is None and tokenizer.cls_token_id is not None:
        drop.append(tokenizer.cls_token_id)
    return sorted(set(drop))


def fix_special_tokens(model: Any, tokenizer: Any) -> None:
    """Fill in the decoder start, pad and end tokens that encoder-decoders built from encoders lack.

    An EncoderDecoderModel warm-started from BERT has none of them; without a decoder start token it cannot shift
    labels right, and without an end token generation never stops before max_new_tokens.
    """
    cfg, gen = model.config, model.generation_config
    pad = tokenizer.pad_token_id
    start = decoder_start(getattr(cfg, "decoder_start_token_id", None), tokenizer)
    eos = next((t for t in (gen.eos_token_id, getattr(cfg, "eos_token_id", None), tokenizer.eos_token_id,
                            tokenizer.sep_token_id) if t is not None), None)
    # EncoderDecoderConfig has none of these attributes until they are set
    for obj, key, value in ((cfg, "pad_token_id", pad), (cfg, "decoder_start_token_id", start), (cfg, "eos_token_id", eos),
                            (gen, "pad_token_id", pad), (gen, "decoder_start_token_id", start), (gen, "eos_token_id", eos)):
        if getattr(obj, key, None) is None:
            setattr(obj, key, value)


def bert2bert(path: str, decoder_layers: int = BERT2BERT_DECODER_LAYERS) -> Any:
    """An EncoderDecoderModel warm-started from one BERT checkpoint (Rothe et al., 2020).

    The encoder is the whole checkpoint, frozen; the decoder is its first `decoder_layers` layers run causally, plus
    cross-attention and an LM head tied to the decoder's word embeddings. Each cross-attention starts as a copy of
    its layer's self-attention: randomly initialised, it takes hundreds of steps before the decoder looks at the
    source at all, and a short run learns one summary for every input.
    """
    from transformers import EncoderDecoderModel

    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path, decoder_num_hidden_layers=decoder_layers)
    for layer in model.decoder.bert.encoder.layer:
        layer.crossattention.load_state_dict(layer.attention.state_dict())
    # MiniLM is a sentence-embedding model: its encodings are worth keeping as they are. Frozen, 244 examples
    # teach the decoder more (eval loss 5.96 vs 6.21 after the same steps) and each step costs a third less.
    for p in model.encoder.parameters():
        p.requires_grad = False
    return model


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    from transformers import AutoModelForSeq2SeqLM

    from llmtune.models import BERT2BERT_ALIAS, resolve
    from llmtune.models import load_model as load

    resolved = resolve(recipe.model)
    if resolved.alias == BERT2BERT_ALIAS:
        model = bert2bert(resolved.path)
    else:
        model = load(AutoModelForSeq2SeqLM, recipe.model, resolved)
    fix_special_tokens(model, tokenizer)
    return model


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    from transformers import DataCollatorForSeq2Seq

    # model=: the collator asks the model to shift the labels into decoder_input_ids (its own start token)
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)


# ---- evaluation ----------------------------------------------------------------------------------


def score_texts(names: list[str], predictions: list[str], refs: list[list[str]]) -> dict[str, float]:
    from llmtune import metrics as metrics_mod

    out: dict[str, float] = {}
    for name in names:
        out.update(metrics_mod.compute(name, predictions, refs))
    return out


def generated_length(tokenizer: Any, texts: list[str]) -> float:
    """Mean length of the generated texts in tokens (special tokens excluded)."""
    if not texts:
        return 0.0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(len(x) for x in ids) / len(ids)


# rows of logits turned into log-probabilities at a time when scoring eval labels: a full eval batch's log-softmax
# (32 rows x 64 labels x 30k vocabulary: 250 MB in fp32) would double the memory the logits already take
LOSS_ROWS = 4


def _label_nll(logits: Any, labels: Any) -> Any:
    """Per-row summed cross-entropy of `labels` (-100 ignored), a few rows at a time.

    Each row's value is the same whatever the chunk: log-softmax and the sum over positions stay within the row.
    """
    import torch

    return torch.cat([token_cross_entropy(logits[s:s + LOSS_ROWS].float(), labels[s:s + LOSS_ROWS]).sum(1)
                      for s in range(0, labels.shape[0], LOSS_ROWS)])


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Per-row summed label cross-entropy and label counts (nothing for rows without targets)."""
    labels = batch.get("labels")
    if labels is None:
        return {}
    if "decoder_input_ids" in batch:
        # the collator shifted the labels into decoder_input_ids; passed labels, the model would also compute its
        # own loss (another full-vocabulary log-softmax of the whole batch) for nothing
        del batch["labels"]
    # no cache: nothing is decoded after this forward, and the cache would hold every layer's keys and values
    logits = model(**batch, use_cache=False).logits
    nll = _label_nll(logits, labels)
    del logits  # before the next batch's forward, not after it
    return {"nll": nll.double(), "ntok": (labels != -100).sum(1)}


def metric_names(recipe: Recipe, info: Info | None) -> list[str]:
    from llmtune.metrics import output_names

    names = ["loss"]
    if recipe.generate_in_eval:
        names += [k for m in (info.metrics if info is not None else DEFAULT_METRICS[recipe.task]) for k in output_names(m)]
        names.append("gen_len")
    return names


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from llmtune.generate import generate_texts

    recipe, info = ctx.recipe, ctx.info
    rows = ctx.split.dataset
    sources = [source_text(v, info.source_key) or "" for v in rows[info.source_column]]
    refs = [references(v, info.target_key) for v in rows[info.target_column]]
    metrics: dict[str, float] = {}
    if "nll" in outputs:
        # token-weighted mean cross-entropy over all eval labels (each row once, however many processes)
        metrics["loss"] = float(outputs["nll"].sum()) / max(int(outputs["ntok"].sum()), 1)
    records: list[dict[str, Any]] = [{"source": s, "references": r} for s, r in zip(sources, refs, strict=True)]
    if "nll" in outputs and len(outputs["nll"]) == len(records):
        # per-row mean and token count: llmtune eval's interval of the token-weighted loss
        for rec, nll, ntok in zip(records, outputs["nll"].tolist(), outputs["ntok"].tolist(), strict=True):
            if ntok > 0:
                rec.update(loss=nll / ntok, n_tokens=int(ntok))
    if not recipe.generate_in_eval:
        return metrics, records
    prefix = info.source_prefix
    predictions = generate_texts(ctx.accelerator.unwrap_model(ctx.model), ctx.tokenizer, [prefix + s for s in sources],
                                 recipe.generation, batch_size=recipe.train.per_device_eval_batch_size,
                                 max_input_length=recipe.train.max_source_length, accelerator=ctx.accelerator)
    # every process holds all predictions (gathered), so every process computes the same metrics: the loop's
    # best-checkpoint bookkeeping must agree across processes
    metrics.update(score_texts(info.metrics, predictions, refs))
    metrics["gen_len"] = generated_length(ctx.tokenizer, predictions)
    for rec, pred in zip(records, predictions, strict=True):
        rec["prediction"] = pred
    return metrics, records


# ---- predict -------------------------------------------------------------------------------------


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(path))
    fix_special_tokens(model, tokenizer)
    return model, tokenizer


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """Generate for new sources with the run's prefix and generation settings (`--set generation.KEY=VALUE`)."""
    from llmtune.generate import generate_texts
    from llmtune.inputs import column
    from llmtune.schema import GenerationArgs

    texts = column(rows, field or "text", ())
    prefix = run.info.source_prefix if run.info is not None else ""
    g = run.recipe.generation if run.recipe is not None else GenerationArgs()
    max_len = run.recipe.train.max_source_length if run.recipe is not None else 512
    preds = generate_texts(run.model, run.tokenizer, [prefix + t for t in texts], g, batch_size=batch_size,
                           max_input_length=max_len)
    return [{"source": t, "prediction": p} for t, p in zip(texts, preds, strict=True)]


# ---- zero/few-shot prompting of a decoder ------------------------------------------------------------------


def prompt_spec(recipe: Recipe) -> PromptSpec:
    d = recipe.data
    if recipe.task == "translation":
        return PromptSpec("Source", "Translation", f"Translate from {d.source_lang or 'the source language'} to "
                          f"{d.target_lang or 'the target language'}.", ["bleu", "chrf"])
    return PromptSpec("Document", "Summary", "Summarize each document in one sentence.", ["rouge"])


def prompt_fields(recipe: Recipe, row: dict[str, Any]) -> tuple[str, list[str]]:
    d = recipe.data
    src = d.source_column or d.source_lang or "source"
    tgt = d.target_column or d.target_lang or "target"
    return as_text(row[src]) or "", references_of(row[tgt])


def prompt_choices(recipe: Recipe, splits: dict[str, Split]) -> None:
    return None
