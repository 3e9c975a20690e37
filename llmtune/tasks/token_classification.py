"""Token classification (NER): a per-token head on an encoder; labels on each word's first sub-token, entity-level
precision/recall/F1 by seqeval (as run_ner.py reports them), predictions mapped back to words.

Data: a list-of-words column and a list-of-tags column (tags as strings, or as integer ids with data.label_names or a
hub dataset's ClassLabel feature), or CoNLL files (`.conll`, `.txt`, optionally `.gz`): one `token<whitespace>tag`
per line (tab-separated when the line has a tab, so tokens may hold spaces; several columns: the first is the token,
the last the tag), a blank line between sentences, `-DOCSTART-` lines skipped.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmtune.data import Split, require_column
from llmtune.errors import LlmtuneError
from llmtune.losses import token_cross_entropy
from llmtune.schema import DataArgs, EvalArgs
from llmtune.tasks import EvalContext, LoadedRun

if TYPE_CHECKING:
    from llmtune.schema import Recipe

logger = logging.getLogger("llmtune")

MODEL_CLASS = "AutoModelForTokenClassification"
PEFT_TASK_TYPE = None  # full fine-tuning only: lora.enabled is refused
LORA_DEFAULT = False
GENERATE_DEFAULT = False
EVAL_BEFORE_TRAINING = False
DEFAULT_METRIC = "f1"  # seqeval's micro entity F1, as run_ner.py reports it
GREATER_IS_BETTER = True
TOKEN_LEVEL_LOSS = False  # a per-word cross-entropy: exp(loss) is no perplexity anyone reports
DECODER_ONLY = False

CONLL_SUFFIXES = (".conll", ".txt")
#: the column a CoNLL file's rows carry besides tokens and tags: the file line a sentence starts on, for messages
LINE_COLUMN = "conll_line"
Scheme = Literal["IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU"]


def read_conll(path: Path, key: str, tokens_column: str, tags_column: str) -> Any:
    """A CoNLL file as a datasets.Dataset of sentences (tokens, tags, and the line each sentence starts on)."""
    import datasets

    try:
        raw = gzip.open(path, "rb").read() if path.suffix.lower() == ".gz" else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise LlmtuneError(f"{key} {path}: cannot read the file ({e})") from None
    sentences: list[tuple[int, list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            if words:
                sentences.append((start, words, tags))
            words, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields if f.strip()]
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise LlmtuneError(f"{key} {path}: line {lineno}: expected 'token<whitespace>tag', got {line.strip()!r}")
        if not words:
            start = lineno
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append((start, words, tags))
    if not sentences:
        raise LlmtuneError(f"{key} {path}: the file has no sentences")
    return datasets.Dataset.from_dict({tokens_column: [s[1] for s in sentences], tags_column: [s[2] for s in sentences],
                                       LINE_COLUMN: [s[0] for s in sentences]})


@dataclass
class Data(DataArgs):
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    label_names: list[str] | None = None  # the tags in the head's order; needed for integer tags (unless the hub
    #                                       dataset's ClassLabel feature names them)
    label_all_tokens: bool = False  # train on every sub-token of a word (B- becomes I- after the first), as run_ner

    def file_reader(self, suffix: str) -> Callable[[Path, str], Any] | None:
        """The reader of a file suffix that data.load_file does not know or reads otherwise (CoNLL .conll/.txt)."""
        if suffix not in CONLL_SUFFIXES:
            return None
        return lambda path, key: read_conll(path, key, self.tokens_column, self.tags_column)


@dataclass
class Eval(EvalArgs):
    seqeval_scheme: Scheme | None = None  # None: seqeval's default (lenient) mode; IOB2/IOBES...: strict mode


OPTIONS: dict[str, type] = {"data": Data, "eval": Eval}


@dataclass
class Info:
    """The tags, in the order of the head's outputs (written to llmtune_info.json and config.json's id2label)."""

    label_names: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"label_names": list(self.label_names)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        return cls(label_names=[str(x) for x in d["label_names"]])


def _scheme(recipe: Recipe | None) -> str | None:
    return getattr(recipe.eval, "seqeval_scheme", None) if recipe is not None else None


def check_recipe(recipe: Recipe) -> None:
    names = recipe.data.label_names
    if names is None:
        return
    if len(set(names)) != len(names):
        raise LlmtuneError(f"{recipe.source}: data.label_names has duplicates: {names}")
    scheme = _scheme(recipe)
    if scheme:
        for name in names:
            problem = _tag_problem(name, scheme)
            if problem:
                raise LlmtuneError(f"{recipe.source}: data.label_names: {problem}")


def recognizes(config: dict[str, Any]) -> bool:
    return any(a.endswith("ForTokenClassification") for a in config.get("architectures") or [])


# ---- rows -------------------------------------------------------------------------------------------------


def _feature_names(split: Split, column: str) -> list[str] | None:
    """Tag names of a hub dataset's `Sequence(ClassLabel)` column."""
    feature = getattr(split.dataset, "features", {}).get(column)
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return [str(n) for n in names] if names else None


def _where(split: Split, i: int) -> str:
    line = ""
    if LINE_COLUMN in split.dataset.column_names:
        line = f" (line {split.dataset[i][LINE_COLUMN]})"
    return f"{split.origin}: row {i + 1}{line}"


def _tag_problem(tag: str, scheme: str) -> str | None:
    """Why `tag` cannot occur in `scheme` (prefixes B-, I-, ... then a type), or None."""
    if tag == "O":
        return None
    allowed = {"IOB1": "BI", "IOB2": "BI", "IOE1": "EI", "IOE2": "EI", "IOBES": "BIES", "BILOU": "BILU"}[scheme]
    if len(tag) < 3 or tag[1] != "-" or tag[0] not in allowed:
        examples = ", ".join(f"{p}-PER" for p in allowed)
        return f"tag {tag!r} is not a {scheme} tag (O, or {examples}...)"
    return None


def _sequence_problem(tags: list[str], scheme: str) -> tuple[int, str] | None:
    """The first position (0-based) where `tags` is not a well-formed sequence of `scheme`, and why."""
    for j, tag in enumerate(tags):
        problem = _tag_problem(tag, scheme)
        if problem:
            return j, problem
    if scheme not in ("IOB2", "IOBES"):
        return None
    for j, tag in enumerate(tags):
        prev = tags[j - 1] if j else "O"
        nxt = tags[j + 1] if j + 1 < len(tags) else "O"
        kind = tag[2:]
        inside = prev[2:] == kind and prev[0] in "BI"
        if tag[0] in "IE" and not inside:
            return j, f"{tag!r} after {prev!r} (an entity must start with B-{kind})"
        if scheme == "IOBES" and tag[0] in "BI" and not (nxt[2:] == kind and nxt[0] in "IE"):
            return j, f"{tag!r} before {nxt!r} (an IOBES entity of one token is S-{kind}; a longer one ends with E-)"
    return None


def _tag_name(tag: Any, names: list[str]) -> str:
    return names[tag] if isinstance(tag, int) and not isinstance(tag, bool) else str(tag)


def validate(recipe: Recipe, split: Split) -> None:
    d = recipe.data
    require_column(split, d.tokens_column, "data.tokens_column")
    has_tags = d.tags_column in split.dataset.column_names
    if not has_tags and split.name == "test":
        has_tags = False  # an untagged test split can still be predicted
    else:
        require_column(split, d.tags_column, "data.tags_column")
        has_tags = True
    names = list(d.label_names) if d.label_names else _feature_names(split, d.tags_column)
    known = set(names) if names else None
    scheme = _scheme(recipe)
    tokens_col = split.dataset[d.tokens_column]
    tags_col = split.dataset[d.tags_column] if has_tags else [None] * len(tokens_col)
    for i, (words, tags) in enumerate(zip(tokens_col, tags_col, strict=True)):
        if not isinstance(words, list):
            raise LlmtuneError(f"{_where(split, i)}: column '{d.tokens_column}' (data.tokens_column) holds "
                               f"{type(words).__name__} {str(words)[:40]!r}, expected a list of words")
        if not words:
            raise LlmtuneError(f"{_where(split, i)}: empty sentence (column '{d.tokens_column}' has no words)")
        for j, w in enumerate(words):
            if not isinstance(w, str) or not w.strip():
                raise LlmtuneError(f"{_where(split, i)}, position {j + 1}: word {w!r} is not a non-empty string")
        if tags is None:
            continue
        if not isinstance(tags, list):
            raise LlmtuneError(f"{_where(split, i)}: column '{d.tags_column}' (data.tags_column) holds "
                               f"{type(tags).__name__}, expected a list of tags")
        if len(tags) != len(words):
            raise LlmtuneError(f"{_where(split, i)}: {len(words)} tokens but {len(tags)} tags; every token needs "
                               "exactly one tag")
        for j, tag in enumerate(tags):
            where = f"{_where(split, i)}, position {j + 1} (word {words[j]!r})"
            if isinstance(tag, int) and not isinstance(tag, bool):
                if names is None:
                    raise LlmtuneError(f"{where}: integer tag {tag} but no tag names; set data.label_names "
                                       "(the tags in id order)")
                if not 0 <= tag < len(names):
                    raise LlmtuneError(f"{where}: tag id {tag} is outside data.label_names ({len(names)} tags)")
            elif not isinstance(tag, str) or not tag.strip():
                raise LlmtuneError(f"{where}: tag {tag!r} is not a tag name")
            elif known is not None and tag not in known:
                raise LlmtuneError(f"{where}: tag {tag!r} is not in data.label_names {names}")
        if scheme:
            problem = _sequence_problem([_tag_name(t, names or []) for t in tags], scheme)
            if problem:
                j, why = problem
                raise LlmtuneError(f"{_where(split, i)}, position {j + 1} (word {words[j]!r}): {why}; "
                                   f"eval.seqeval_scheme={scheme} (strict mode) needs well-formed tags")


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    d = recipe.data
    if tokenizer is not None and not getattr(tokenizer, "is_fast", False):
        raise LlmtuneError(f"model.name '{recipe.model.name}': token_classification needs a fast tokenizer (one that "
                           "maps sub-tokens to words); this model has only a slow one")
    if d.label_names:
        return Info(list(d.label_names))
    for split in splits.values():
        names = _feature_names(split, d.tags_column)
        if names:
            return Info(names)
    seen = {t for name in ("train", "eval") if name in splits and d.tags_column in splits[name].dataset.column_names
            for tags in splits[name].dataset[d.tags_column] for t in tags}
    # "O" first, then the rest sorted: the same order whatever the order of the rows
    return Info(sorted(seen, key=lambda t: (t != "O", t[2:], t)))


# ---- model inputs -----------------------------------------------------------------------------------------


def _encode(batch: dict[str, list[Any]], tokenizer: Any, tokens: str, tags: str | None, names: list[str],
            max_length: int, label_all: bool) -> dict[str, Any]:
    index = {n: k for k, n in enumerate(names)}
    # with label_all_tokens the later sub-tokens of a B- word learn its I- tag, as run_ner.py's b_to_i_label
    b_to_i = [index.get("I-" + n[2:], k) if n.startswith("B-") else k for k, n in enumerate(names)]
    enc = tokenizer(batch[tokens], is_split_into_words=True, truncation=True, max_length=max_length)
    labels, word_index, truncated = [], [], []
    for i, words in enumerate(batch[tokens]):
        ids = None
        if tags is not None:
            ids = [t if isinstance(t, int) else index[t] for t in batch[tags][i]]
        lab, wix = [], []
        prev = None
        for w in enc.word_ids(i):
            if w is None:
                lab.append(-100)
                wix.append(-100)
            elif w != prev:  # a word's first sub-token: it carries the word's tag and its prediction
                lab.append(ids[w] if ids is not None else -100)
                wix.append(w)
            else:
                lab.append(b_to_i[ids[w]] if label_all and ids is not None else -100)
                wix.append(-100)
            prev = w
        last = max((w for w in wix if w >= 0), default=-1)
        truncated.append(len(wix) >= max_length and last < len(words) - 1)
        labels.append(lab)
        word_index.append(wix)
    enc["labels"] = labels
    enc["word_index"] = word_index
    enc["truncated"] = truncated
    return enc


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    d = recipe.data
    ds = split.dataset
    tags = d.tags_column if d.tags_column in ds.column_names else None
    max_length = recipe.train.max_seq_length
    out = ds.map(
        _encode,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "tokens": d.tokens_column, "tags": tags, "names": info.label_names,
                   "max_length": max_length,
                   # eval rows label first sub-tokens only, so the eval loss is one term per word
                   "label_all": d.label_all_tokens and split.name == "train"},
        desc=f"Tokenizing {split.name}",
    )
    n = sum(out["truncated"])
    if n:
        logger.warning("%s: %d of %d sentences are longer than train.max_seq_length=%d tokens and were truncated; "
                       "their last words are not trained on%s", split.origin, n, len(out), max_length,
                       " and are predicted O" if split.name != "train" else "")
    return out.remove_columns("truncated")


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    from transformers import AutoModelForTokenClassification

    from llmtune.models import load_model as load

    names = info.label_names
    return load(AutoModelForTokenClassification, recipe.model, num_labels=len(names),
                id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


class _Collator:
    """Pads input ids and labels (-100) per batch; eval batches (those with `idx`) also carry `word_index`, which
    the head never sees: the position of each word's first sub-token, for mapping predictions back to words."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForTokenClassification

        self.tokenizer = tokenizer
        self.base = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        import torch

        batch = self.base([{k: v for k, v in f.items() if k != "word_index"} for f in features])
        if "idx" in features[0]:
            width = batch["input_ids"].shape[1]
            left = self.tokenizer.padding_side == "left"
            batch["word_index"] = torch.tensor([
                ([-100] * (width - len(f["word_index"])) if left else []) + list(f["word_index"])
                + ([] if left else [-100] * (width - len(f["word_index"]))) for f in features])
        return batch


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    return _Collator(tokenizer)


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    word_index = batch.pop("word_index", None)
    labels = batch.pop("labels", None)
    logits = model(**batch).logits.float()
    probs, pred = logits.softmax(-1).max(-1)
    out = {"pred": pred, "prob": probs}
    if word_index is not None:
        out["word_index"] = word_index
    if labels is not None:
        nll = token_cross_entropy(logits, labels)
        out["loss_sum"] = nll.sum(1)
        out["loss_count"] = (labels != -100).sum(1)
    return out


def _words_back(outputs: dict[str, Any], lengths: list[int], names: list[str]) -> tuple[list[list[str]], list[list[float]]]:
    """Per sentence the tag and probability predicted on each word's first sub-token; a word that was truncated
    away (or has no sub-token) is predicted O with probability 0."""
    tags = [["O"] * n for n in lengths]
    probs = [[0.0] * n for n in lengths]
    if not outputs:
        return tags, probs
    wix, pred, prob = outputs["word_index"], outputs["pred"], outputs["prob"]
    for i in range(len(lengths)):
        keep = wix[i] >= 0
        for w, p, q in zip(wix[i][keep].tolist(), pred[i][keep].tolist(), prob[i][keep].tolist(), strict=True):
            tags[i][w], probs[i][w] = names[p], q
    return tags, probs


def entities(tags: list[str], scheme: str | None = None) -> list[tuple[str, int, int]]:
    """(type, start, end) word spans (end exclusive) of one sentence's tags, found as seqeval finds them."""
    if scheme:
        from seqeval import scheme as schemes
        from seqeval.scheme import Entities

        return [(e.tag, e.start, e.end) for e in Entities([tags], getattr(schemes, scheme)).entities[0]]
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e + 1) for t, s, e in get_entities(list(tags))]


def _span_records(words: list[str], tags: list[str], probs: list[float], scheme: str | None) -> list[dict[str, Any]]:
    return [{"type": t, "token_start": s, "token_end": e, "text": " ".join(words[s:e]),
             "score": round(sum(probs[s:e]) / (e - s), 6)} for t, s, e in entities(tags, scheme)]


def metric_names(recipe: Recipe, info: Info | None) -> list[str]:
    types = sorted({t.split("-", 1)[-1] for t in (info.label_names if info is not None else []) if t != "O"})
    return ["loss", "precision", "recall", "f1", "accuracy",
            *(f"{t}_{m}" for t in types for m in ("precision", "recall", "f1", "number"))]


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from llmtune.metrics import seqeval_metrics

    d = ctx.recipe.data
    names = ctx.info.label_names
    scheme = _scheme(ctx.recipe)
    rows = ctx.split.dataset
    words = [[str(w) for w in ws] for ws in rows[d.tokens_column]]
    gold = ([[_tag_name(t, names) for t in tags] for tags in rows[d.tags_column]]
            if d.tags_column in rows.column_names else None)
    pred, probs = _words_back(outputs, [len(ws) for ws in words], names)
    metrics: dict[str, float] = {}
    if outputs and int(outputs["loss_count"].sum()) > 0:
        metrics["loss"] = float(outputs["loss_sum"].double().sum() / outputs["loss_count"].sum())
    if gold is not None:
        metrics.update(seqeval_metrics(pred, gold, scheme))
    records = []
    for i, ws in enumerate(words):
        rec: dict[str, Any] = {"tokens": ws}
        if gold is not None:
            rec["tags"] = gold[i]
        rec["predicted_tags"] = pred[i]
        rec["entities"] = _span_records(ws, pred[i], probs[i], scheme)
        records.append(rec)
    return metrics, records


# ---- a finished run -----------------------------------------------------------------------------------------


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    return AutoModelForTokenClassification.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


CLASSES_FROM_CONFIG = True  # a model folder's head fixes the tags (config id2label): info_from_config reads them


def info_from_config(config: dict[str, Any], where: str) -> Info:
    """The tags of a model folder that llmtune did not write, from its config's id2label."""
    id2label = config.get("id2label")
    if not id2label or not recognizes(config):
        raise LlmtuneError(f"{where}: not a token-classification model (no ...ForTokenClassification head)")
    return Info([id2label[str(i)] for i in range(len(id2label))])


#: words of raw text: a word (with inner apostrophes, hyphens, dots: "O'Neil", "U.S"), an @mention or #tag, or one
#: other non-space character (punctuation stands alone, as in CoNLL data)
WORD_RE = re.compile(r"[@#]?\w+(?:['’\-.&]\w+)*|\S")


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Raw text as words with their character offsets (start, end)."""
    found = list(WORD_RE.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def _row_words(row: dict[str, Any], field: str | None) -> tuple[str, list[str], list[tuple[int, int]]]:
    """(text, words, character offsets) of a predict input row: a text (split into words) or a list of words
    (joined with single spaces; offsets index that text)."""
    where = row.get("_where", "input row")
    keys = [k for k in row if k != "_where"]
    key = field if field is not None else next((k for k in ("tokens", "words", "text", "sentence") if k in row),
                                                keys[0] if len(keys) == 1 else None)
    if key is None or key not in row:
        hint = f"field '{field}'" if field else "a field tokens (a list of words) or text"
        raise LlmtuneError(f"{where}: no {hint}; fields: {', '.join(keys)}" + ("" if field else "; choose one with --field"))
    value = row[key]
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        offsets, pos = [], 0
        for w in value:
            offsets.append((pos, pos + len(w)))
            pos += len(w) + 1
        return " ".join(value), list(value), offsets
    if isinstance(value, str):
        words, offsets = split_words(value)
        return value, words, offsets
    raise LlmtuneError(f"{where}: field '{key}' holds {str(value)[:40]!r}, expected a text or a list of words")


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """`llmtune predict`: per input the words, their tags, and the entities with character offsets and a score
    (the mean probability of the entity's word tags)."""
    import torch

    if pair_field:
        raise LlmtuneError("--pair-field: token_classification tags one text per row; there is no text pair")
    parsed = [_row_words(r, field) for r in rows]
    scheme = _scheme(run.recipe)
    max_len = run.recipe.train.max_seq_length if run.recipe is not None else 512
    model, tok = run.model, run.tokenizer
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    order = sorted(range(len(parsed)), key=lambda i: -len(parsed[i][1]))
    out: list[dict[str, Any]] = [{} for _ in parsed]
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            ids = [i for i in order[start:start + batch_size] if parsed[i][1]]
            if ids:
                enc = tok([parsed[i][1] for i in ids], is_split_into_words=True, truncation=True, max_length=max_len,
                          padding=True, return_tensors="pt")
                probs, pred = model(**enc.to(model.device)).logits.float().softmax(-1).max(-1)
                wix = torch.tensor([[w if w is not None and (j == 0 or enc.word_ids(b)[j - 1] != w) else -100
                                     for j, w in enumerate(enc.word_ids(b))] for b in range(len(ids))])
                tags, word_probs = _words_back({"word_index": wix, "pred": pred.cpu(), "prob": probs.cpu()},
                                               [len(parsed[i][1]) for i in ids], names)
            for i in order[start:start + batch_size]:
                text, words, offsets = parsed[i]
                if not words:
                    out[i] = {"text": text, "tokens": [], "tags": [], "entities": []}
                    continue
                b = ids.index(i)
                ents = []
                for span in _span_records(words, tags[b], word_probs[b], scheme):
                    s, e = offsets[span["token_start"]][0], offsets[span["token_end"] - 1][1]
                    ents.append({"type": span["type"], "text": text[s:e], "start": s, "end": e,
                                 "score": span["score"], "token_start": span["token_start"],
                                 "token_end": span["token_end"]})
                out[i] = {"text": text, "tokens": words, "tags": tags[b], "entities": ents}
    return out


def intervals(recipe: Recipe, records: list[dict[str, Any]], bootstrap: int, seed: int) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of the entity scores over sentences (`llmtune eval --model`), in the run's scheme."""
    from llmtune import metrics as M

    if not all("tags" in r and "predicted_tags" in r for r in records):
        return {}
    stats = M.prepare_seqeval([r["predicted_tags"] for r in records], [r["tags"] for r in records],
                              _scheme(recipe))
    return dict(M.confidence_interval(stats, bootstrap, seed))
