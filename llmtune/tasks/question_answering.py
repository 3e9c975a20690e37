"""Extractive question answering (SQuAD): a span head gives start and end logits over windows of a long context.

A context longer than `train.max_seq_length` is split into overlapping windows (`data.doc_stride` tokens shared by
neighbours), each paired with the question, as run_qa.py's prepare_train_features / prepare_validation_features
do. Training labels the answer's first and last token in a window that holds the whole answer, and the [CLS] token
in every other window (and for an unanswerable SQuAD v2 question). Eval keeps each window's offset mapping and the
row of its question; score() picks the best span over all windows of a question (the `n_best_size` best starts x
ends, at most `max_answer_length` tokens; for v2 the null score against `eval.null_score_diff_threshold`), as
run_qa.py's postprocess_qa_predictions does, then scores it with the official SQuAD v1.1 / v2.0 EM and F1.

Rows: `id`, `context`, `question`, `answers: {"text": [...], "answer_start": [...]}` (the flat form of the hub's
`squad`), or SQuAD's nested JSON (`data` -> `paragraphs` -> `qas`), flattened by `json_rows` below.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.data import Split, check_text_column, require_column
from llmtune.errors import LlmtuneError
from llmtune.schema import DataArgs, EvalArgs
from llmtune.tasks import EvalContext, LoadedRun

if TYPE_CHECKING:
    from llmtune.schema import Recipe

MODEL_CLASS = "AutoModelForQuestionAnswering"
PEFT_TASK_TYPE = None  # full fine-tuning only: lora.enabled is refused
LORA_DEFAULT = False
GENERATE_DEFAULT = False
EVAL_BEFORE_TRAINING = False
DEFAULT_METRIC = "f1"  # SQuAD F1 (v1.1 `f1`, v2.0 `f1`: both keys exist)
GREATER_IS_BETTER = True
TOKEN_LEVEL_LOSS = False  # mean of the start and end cross-entropies per window
DECODER_ONLY = False


@dataclass
class Data(DataArgs):
    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"  # {"text": [...], "answer_start": [...]} (a list of {text, answer_start} too)
    id_column: str = "id"  # a split without it names each question by its row number
    doc_stride: int | None = None  # tokens shared by neighbouring windows; None: min(128, max_seq_length // 3)
    version_2_with_negative: bool = False  # SQuAD v2: questions without an answer (empty `answers`)
    n_best_size: int = 20
    max_answer_length: int = 30  # in tokens

    def file_reader(self, suffix: str) -> Callable[[Path, str], Any] | None:
        """data.load_file's hook: a .json file in SQuAD's nested form is read as flat rows (others as usual)."""
        return read_squad_json if suffix == ".json" else None


@dataclass
class Eval(EvalArgs):
    # v2: predict no answer when null score - best span score exceeds this (run_qa.py's flag of the same name)
    null_score_diff_threshold: float = 0.0


OPTIONS: dict[str, type] = {"data": Data, "eval": Eval}


@dataclass
class Info:
    """How the run cut windows and picked spans, so `llmtune predict` does the same without the recipe."""

    max_seq_length: int = 384
    doc_stride: int = 128
    version_2_with_negative: bool = False
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def doc_stride(recipe: Recipe) -> int:
    stride = recipe.data.doc_stride
    return min(128, recipe.train.max_seq_length // 3) if stride is None else stride


def _info(recipe: Recipe) -> Info:
    d = recipe.data
    return Info(recipe.train.max_seq_length, doc_stride(recipe), d.version_2_with_negative, d.n_best_size,
                d.max_answer_length, recipe.eval.null_score_diff_threshold)


def check_recipe(recipe: Recipe) -> None:
    d, s = recipe.data, recipe.source
    stride, max_len = doc_stride(recipe), recipe.train.max_seq_length
    if not 0 <= stride < max_len:
        raise LlmtuneError(f"{s}: data.doc_stride must be at least 0 and less than train.max_seq_length "
                           f"({max_len}), got {stride}")
    for key in ("n_best_size", "max_answer_length"):
        if getattr(d, key) < 1:
            raise LlmtuneError(f"{s}: data.{key} must be at least 1, got {getattr(d, key)}")


def recognizes(config: dict[str, Any]) -> bool:
    return "ForQuestionAnswering" in " ".join(config.get("architectures") or [])


# ---- rows -------------------------------------------------------------------------------------------------


def json_rows(doc: Any, origin: str) -> list[dict[str, Any]] | None:
    """SQuAD's nested JSON ({"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
    [{"text", "answer_start"}]}]}]}]}) as flat rows; None for a document of any other shape. Read by data.py for a
    .json file of this task, and by `llmtune eval --metric squad` for a references file."""
    if not (isinstance(doc, dict) and isinstance(doc.get("data"), list) and doc["data"]
            and all(isinstance(a, dict) and "paragraphs" in a for a in doc["data"])):
        return None
    rows = []
    for i, article in enumerate(doc["data"]):
        for j, para in enumerate(article["paragraphs"] or []):
            where = f"{origin}: data[{i}].paragraphs[{j}]"
            if not isinstance(para, dict) or not isinstance(para.get("context"), str) \
                    or not isinstance(para.get("qas"), list):
                raise LlmtuneError(f"{where}: expected an object with a 'context' text and a 'qas' list")
            for k, qa in enumerate(para["qas"]):
                if not isinstance(qa, dict) or "question" not in qa or "id" not in qa:
                    raise LlmtuneError(f"{where}.qas[{k}]: expected an object with 'id', 'question' and 'answers'")
                answers = qa.get("answers") or []
                if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
                    raise LlmtuneError(f"{where}.qas[{k}]: 'answers' must be a list of "
                                       '{"text": ..., "answer_start": ...} objects')
                rows.append({"id": str(qa["id"]), "title": str(article.get("title", "")), "context": para["context"],
                             "question": qa["question"],
                             "answers": {"text": [a.get("text") for a in answers],
                                         "answer_start": [a.get("answer_start") for a in answers]}})
    return rows


def read_squad_json(path: Path, key: str) -> Any:
    """A .json file in SQuAD's nested form as a datasets.Dataset of flat rows; None for any other JSON (a list of
    records is read by data.py as usual)."""
    import datasets

    raw = gzip.open(path, "rb").read() if path.suffix.lower() == ".gz" else path.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # data.py reports a broken file with its line
    rows = json_rows(doc, f"{key} {path}")
    if rows is None:
        return None
    if not rows:
        raise LlmtuneError(f"{key} {path}: SQuAD JSON without questions")
    return datasets.Dataset.from_list(rows)


def answers_of(value: Any) -> tuple[list[Any], list[Any]] | None:
    """(texts, starts) of an answers cell: {"text": [...], "answer_start": [...]} or [{"text", "answer_start"}...]."""
    if isinstance(value, dict) and "text" in value:
        texts, starts = value.get("text"), value.get("answer_start")
        texts = [texts] if isinstance(texts, str) else texts
        starts = [starts] if isinstance(starts, int) else starts
        if isinstance(texts, list) and (isinstance(starts, list) or starts is None):
            return texts, starts if starts is not None else [None] * len(texts)
        return None
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        return [a.get("text") for a in value], [a.get("answer_start") for a in value]
    return None


def _ids(split: Split, d: Data) -> list[str]:
    ds = split.dataset
    if d.id_column in ds.column_names:
        return [str(v) for v in ds[d.id_column]]
    return [str(i + 1) for i in range(len(ds))]


def validate(recipe: Recipe, split: Split) -> None:
    d = recipe.data
    check_text_column(split, d.question_column, "data.question_column")
    check_text_column(split, d.context_column, "data.context_column")
    ds = split.dataset
    if d.id_column in ds.column_names:
        seen: dict[str, int] = {}
        for i, raw in enumerate(ds[d.id_column]):
            if raw is None or isinstance(raw, (bool, float, list, dict)) or str(raw).strip() == "":
                raise LlmtuneError(f"{split.origin}: row {i + 1}: id column '{d.id_column}' holds {raw!r}, "
                                   "expected a text or an integer")
            if str(raw) in seen:
                raise LlmtuneError(f"{split.origin}: row {i + 1}: id {raw!r} repeats row {seen[str(raw)]}; "
                                   "question ids must be unique (predictions and scores are keyed by them)")
            seen[str(raw)] = i + 1
    if split.name == "test" and d.answers_column not in ds.column_names:
        return  # an unlabelled test split can still be predicted
    require_column(split, d.answers_column, "data.answers_column")
    for i, (raw, context) in enumerate(zip(ds[d.answers_column], ds[d.context_column], strict=True)):
        at = f"{split.origin}: row {i + 1}: column '{d.answers_column}'"
        parsed = answers_of(raw)
        if parsed is None:
            raise LlmtuneError(f"{at} holds {str(raw)[:80]!r}, expected "
                               '{"text": [...], "answer_start": [...]}')
        texts, starts = parsed
        if len(texts) != len(starts):
            raise LlmtuneError(f"{at}: {len(texts)} answer texts but {len(starts)} answer_start values")
        if not texts and not d.version_2_with_negative:
            raise LlmtuneError(f"{at}: no answer; every SQuAD v1 question needs one (set "
                               "data.version_2_with_negative=true for unanswerable questions)")
        for j, (text, start) in enumerate(zip(texts, starts, strict=True)):
            if not isinstance(text, str) or not text.strip():
                raise LlmtuneError(f"{at}: answer {j + 1} is {text!r}, expected a non-empty text "
                                   "(an unanswerable question has empty lists)")
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                raise LlmtuneError(f"{at}: answer {j + 1} ({text!r}) has answer_start {start!r}, expected the "
                                   "character offset of the answer in the context (an integer >= 0)")
            if context[start:start + len(text)] != text:
                found = context.find(text)
                hint = f"; the text occurs at offset {found}" if found >= 0 else "; the text is not in the context"
                raise LlmtuneError(f"{at}: answer {j + 1} {text!r} is not at answer_start {start} (the context has "
                                   f"{context[start:start + len(text)]!r} there){hint}")


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    if tokenizer is not None and not getattr(tokenizer, "is_fast", False):
        raise LlmtuneError(f"{recipe.source}: model.name '{recipe.model.name}': question answering needs a fast "
                           "tokenizer (its offset mappings put answers back into the context)")
    return _info(recipe)


# ---- windows ----------------------------------------------------------------------------------------------


def window_labels(offsets: list[tuple[int, int]], sequence_ids: list[int | None], context_id: int,
                  start_char: int | None, end_char: int | None, cls_index: int) -> tuple[int, int]:
    """(start token, end token) of the answer [start_char, end_char) in one window; (cls, cls) when the window
    does not hold the whole answer or there is none (run_qa.py's prepare_train_features)."""
    if start_char is None or end_char is None:
        return cls_index, cls_index
    first = 0
    while sequence_ids[first] != context_id:
        first += 1
    last = len(sequence_ids) - 1
    while sequence_ids[last] != context_id:
        last -= 1
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls_index, cls_index
    while first < len(offsets) and offsets[first][0] <= start_char:
        first += 1
    while offsets[last][1] >= end_char:
        last -= 1
    return first - 1, last + 1


def _check_questions(tokenizer: Any, questions: list[str], max_len: int, stride: int, origin: str) -> None:
    """A question so long that the window left for the context is not wider than the stride would make the
    tokenizer panic (a Rust panic, not an exception): name the row instead."""
    budget = max_len - tokenizer.num_special_tokens_to_add(pair=True) - stride
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for i, n in enumerate(lengths):
        if n >= budget:
            raise LlmtuneError(f"{origin}: row {i + 1}: the question is {n} tokens; with train.max_seq_length "
                               f"{max_len} and data.doc_stride {stride} at most {budget - 1} fit beside a context "
                               "window (raise train.max_seq_length or lower data.doc_stride)")


def windows(batch: dict[str, list[Any]], rows: list[int], tokenizer: Any, question: str, context: str,
            answers: str | None, max_len: int, stride: int, keep_offsets: bool) -> dict[str, Any]:
    """Overlapping windows of each (question, context) with labels where `answers` is given; with
    `keep_offsets` (eval, predict) each window's character offsets (-1 outside the context), the row it came
    from (`example`) and where its [CLS] token is."""
    pad_right = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in batch[question]]  # run_qa.py: leading spaces waste window tokens
    contexts = batch[context]
    enc = tokenizer(questions if pad_right else contexts, contexts if pad_right else questions,
                    truncation="only_second" if pad_right else "only_first", max_length=max_len, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    sample_map = enc.pop("overflow_to_sample_mapping")
    all_offsets = enc.pop("offset_mapping")
    context_id = 1 if pad_right else 0
    out: dict[str, list[Any]] = {"start_positions": [], "end_positions": [], "offsets": [], "example": [],
                                 "cls_index": []}
    for w, offsets in enumerate(all_offsets):
        ids = enc["input_ids"][w]
        if tokenizer.cls_token_id in ids:
            cls_index = ids.index(tokenizer.cls_token_id)
        elif tokenizer.bos_token_id in ids:
            cls_index = ids.index(tokenizer.bos_token_id)
        else:
            cls_index = 0
        seq_ids = enc.sequence_ids(w)
        row = sample_map[w]
        if answers is not None:
            texts, starts = answers_of(batch[answers][row]) or ([], [])
            start_char = starts[0] if texts else None
            end_char = start_char + len(texts[0]) if texts else None
            s, e = window_labels(offsets, seq_ids, context_id, start_char, end_char, cls_index)
            out["start_positions"].append(s)
            out["end_positions"].append(e)
        if keep_offsets:
            out["offsets"].append([list(o) if seq_ids[k] == context_id else [-1, -1] for k, o in enumerate(offsets)])
            out["example"].append(rows[row])
            out["cls_index"].append(cls_index)
    result = dict(enc)
    result.update({k: v for k, v in out.items() if v})
    return result


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    d = recipe.data
    ds = split.dataset
    stride, max_len = doc_stride(recipe), recipe.train.max_seq_length
    _check_questions(tokenizer, [q.lstrip() for q in ds[d.question_column]], max_len, stride, split.origin)
    answers = d.answers_column if d.answers_column in ds.column_names else None
    return ds.map(
        windows,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "question": d.question_column, "context": d.context_column,
                   "answers": answers, "max_len": max_len, "stride": stride, "keep_offsets": split.name != "train"},
        desc=f"Tokenizing {split.name} into windows",
    )


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    from transformers import AutoModelForQuestionAnswering

    from llmtune.models import load_model as load

    return load(AutoModelForQuestionAnswering, recipe.model)


class _Collator:
    """Dynamic padding; a window's offsets (eval) are padded with -1 (outside the context) to the batch width."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        import torch

        features = [dict(f) for f in features]
        offsets = [f.pop("offsets") for f in features] if "offsets" in features[0] else None
        batch = self.pad(features)
        if offsets is not None:
            width = batch["input_ids"].shape[1]
            batch["offsets"] = torch.tensor([o + [[-1, -1]] * (width - len(o)) for o in offsets], dtype=torch.long)
        return batch


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    return _Collator(tokenizer)


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    keep = {k: batch.pop(k) for k in ("offsets", "example", "cls_index")}
    starts, ends = batch.pop("start_positions", None), batch.pop("end_positions", None)
    out = model(**batch)
    start, end = out.start_logits.float(), out.end_logits.float()
    res = {"start_logits": start, "end_logits": end, **keep}
    if starts is not None:
        # padding positions out of the softmax, so the loss does not depend on how windows were batched
        pad = ~batch["attention_mask"].bool() if "attention_mask" in batch else torch.zeros_like(start, dtype=torch.bool)
        low = torch.finfo(start.dtype).min
        ce = torch.nn.functional.cross_entropy
        res["loss"] = (ce(start.masked_fill(pad, low), starts, reduction="none")
                       + ce(end.masked_fill(pad, low), ends, reduction="none")) / 2
    return res


# ---- spans back from windows --------------------------------------------------------------------------------


def best_answer(context: str, windows_: list[tuple[Any, Any, Any, int]], n_best_size: int, max_answer_length: int,
                version_2_with_negative: bool = False, null_score_diff_threshold: float = 0.0) -> dict[str, Any]:
    """The answer of one question from its windows' (start_logits, end_logits, offsets, cls_index), as run_qa.py's
    postprocess_qa_predictions picks it: the `n_best_size` best start and end tokens of each window (context tokens
    only: offsets >= 0), spans of at most `max_answer_length` tokens, ranked by start + end logit; for v2 the
    smallest [CLS] score over the windows competes, and no answer ("") wins when null score - best span score >
    the threshold. Returns {text, start, end (characters; None for no answer), score (softmax over the n best),
    null_score_diff (v2)}."""
    import numpy as np

    cands: list[tuple[float, float, float, int, int]] = []  # (score, start logit, end logit, char start, char end)
    null: float | None = None
    for start_logits, end_logits, offsets, cls_index in windows_:
        start_logits, end_logits, offsets = np.asarray(start_logits), np.asarray(end_logits), np.asarray(offsets)
        valid = offsets[:, 0] >= 0
        window_null = float(start_logits[cls_index] + end_logits[cls_index])
        if null is None or window_null < null:
            null = window_null
        # only context tokens compete for the n best (run_qa.py takes the n best of all positions, then drops the
        # invalid ones: the same answers whenever n_best_size context tokens score above the rest)
        n_valid = int(valid.sum())
        if n_valid == 0:
            continue
        k = min(n_best_size, n_valid)
        s_top = np.argsort(np.where(valid, start_logits, -np.inf), kind="stable")[::-1][:k]
        e_top = np.argsort(np.where(valid, end_logits, -np.inf), kind="stable")[::-1][:k]
        for s in s_top:
            for e in e_top:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                cands.append((float(start_logits[s] + end_logits[e]), float(start_logits[s]), float(end_logits[e]),
                              int(offsets[s][0]), int(offsets[e][1])))
    cands.sort(key=lambda c: c[0], reverse=True)
    cands = cands[:n_best_size]
    scores = [c[0] for c in cands] + ([null] if version_2_with_negative and null is not None else [])
    probs = np.exp(np.array(scores) - max(scores)) if scores else np.array([])
    probs = probs / probs.sum() if scores else probs
    if not cands:  # run_qa.py answers "empty" here; no answer is the honest one
        return {"text": "", "start": None, "end": None, "score": float(probs[-1]) if len(probs) else 0.0,
                **({"null_score_diff": None} if version_2_with_negative else {})}
    best = cands[0]
    answer = {"text": context[best[3]:best[4]], "start": best[3], "end": best[4], "score": float(probs[0])}
    if version_2_with_negative and null is not None:
        diff = null - best[1] - best[2]
        answer["null_score_diff"] = diff
        if diff > null_score_diff_threshold:
            answer.update({"text": "", "start": None, "end": None, "score": float(probs[-1])})
    return answer


def _answers_by_row(outputs: dict[str, Any], n_rows: int, contexts: list[str], info: Info) -> list[dict[str, Any]]:
    import numpy as np

    start, end = outputs["start_logits"].numpy(), outputs["end_logits"].numpy()
    offsets, cls = outputs["offsets"].numpy(), outputs["cls_index"].numpy()
    per_row: list[list[int]] = [[] for _ in range(n_rows)]
    for w, row in enumerate(np.asarray(outputs["example"]).tolist()):
        per_row[int(row)].append(w)
    return [best_answer(contexts[i], [(start[w], end[w], offsets[w], int(cls[w])) for w in per_row[i]],
                        info.n_best_size, info.max_answer_length, info.version_2_with_negative,
                        info.null_score_diff_threshold) for i in range(n_rows)]


def metric_names(recipe: Recipe, info: Info | None) -> list[str]:
    if info is not None and info.version_2_with_negative:
        return ["loss", "exact", "f1", *(f"{p}_{m}" for p in ("HasAns", "NoAns") for m in ("exact", "f1"))]
    return ["loss", "exact_match", "f1"]


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from llmtune.metrics import squad_v1, squad_v2

    recipe = ctx.recipe
    d = recipe.data
    rows = ctx.split.dataset
    if not outputs:
        return {}, []
    contexts = list(rows[d.context_column])
    answers = _answers_by_row(outputs, len(rows), contexts, _info(recipe))  # the recipe: `--set` applies in eval
    ids = _ids(ctx.split, d)
    questions = list(rows[d.question_column])
    refs = [answers_of(a)[0] for a in rows[d.answers_column]] if d.answers_column in rows.column_names else None  # type: ignore[index]
    records = []
    for i, ans in enumerate(answers):
        rec = {"id": ids[i], "question": questions[i], "prediction": ans["text"], "start": ans["start"],
               "end": ans["end"], "score": round(ans["score"], 6)}
        if "null_score_diff" in ans:
            rec["null_score_diff"] = None if ans["null_score_diff"] is None else round(ans["null_score_diff"], 6)
        if refs is not None:
            # `answers`, not `references`: llmtune eval would re-score a `references` field with plain exact_match
            rec["answers"] = list(refs[i])
        records.append(rec)
    metrics: dict[str, float] = {}
    if "loss" in outputs:
        metrics["loss"] = float(outputs["loss"].mean())
    if refs is not None:
        preds = {r["id"]: r["prediction"] for r in records}
        gold = {r["id"]: r["answers"] for r in records}
        if d.version_2_with_negative:
            scored = squad_v2(preds, gold)
            metrics.update({k: float(v) for k, v in scored.items() if not k.endswith(("total", "missing_predictions"))})
        else:
            scored = squad_v1(preds, gold)
            metrics.update({"exact_match": scored["exact_match"], "f1": scored["f1"]})
    return metrics, records


# ---- a finished run ---------------------------------------------------------------------------------------


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    return AutoModelForQuestionAnswering.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """`llmtune predict`: the answer span of each row's question in its context (`--field` names the question
    field, `--pair-field` the context field)."""
    import torch

    from llmtune.inputs import column

    questions = column(rows, field or "question", ())
    contexts = column(rows, pair_field or "context", ())
    info = _info(run.recipe) if run.recipe is not None else (run.info or Info())
    tok, model = run.tokenizer, run.model
    origin = rows[0].get("_where", "--input").rsplit(",", 1)[0] if rows else "--input"
    _check_questions(tok, [q.lstrip() for q in questions], info.max_seq_length, info.doc_stride, origin)
    feats = windows({"question": questions, "context": contexts}, list(range(len(rows))), tok, "question", "context",
                    None, info.max_seq_length, info.doc_stride, keep_offsets=True)
    n = len(feats["input_ids"])
    keys = [k for k in feats if k != "offsets"]
    order = sorted(range(n), key=lambda w: -len(feats["input_ids"][w]))
    collate = _Collator(tok)
    parts: dict[int, tuple[Any, Any]] = {}
    model.eval()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            ids = order[s:s + batch_size]
            batch = collate([{k: feats[k][w] for k in keys if k not in ("example", "cls_index")} for w in ids])
            out = model(**{k: v.to(model.device) for k, v in batch.items()})
            for j, w in enumerate(ids):
                length = len(feats["input_ids"][w])
                parts[w] = (out.start_logits[j, :length].float().cpu().numpy(), out.end_logits[j, :length].float().cpu().numpy())
    per_row: list[list[int]] = [[] for _ in rows]
    for w in range(n):
        per_row[feats["example"][w]].append(w)
    results = []
    for i, row in enumerate(rows):
        ans = best_answer(contexts[i], [(parts[w][0], parts[w][1], feats["offsets"][w], feats["cls_index"][w])
                                        for w in per_row[i]], info.n_best_size, info.max_answer_length,
                          info.version_2_with_negative, info.null_score_diff_threshold)
        rec: dict[str, Any] = {"id": row["id"]} if "id" in row else {}
        rec.update({"question": questions[i], "prediction": ans["text"], "start": ans["start"], "end": ans["end"],
                    "score": round(ans["score"], 6)})
        results.append(rec)
    return results


# ---- `llmtune eval --metric squad` on files -----------------------------------------------------------------


def _read_json_or_lines(path: Path) -> Any:
    """A .json document, or the records of a .jsonl file (a list)."""
    from llmtune.inputs import file_format, read_records, read_text

    if file_format(path) == ".json":
        text = read_text(path)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LlmtuneError(f"{path}, line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if file_format(path) != ".jsonl":
        raise LlmtuneError(f"{path}: SQuAD files are .json or .jsonl, not {path.suffix or path.name}")
    return [item for _, item in read_records(path).items]


PREDICTION_KEYS = ("prediction", "prediction_text", "answer", "text")


def read_squad_predictions(path: Path, field: str | None = None) -> dict[str, str]:
    """{id: answer}: the official JSON object, or records with `id` and an answer field (`prediction`,
    `prediction_text`...; llmtune's predictions.jsonl as it is)."""
    doc = _read_json_or_lines(path)
    if isinstance(doc, dict):
        bad = next((k for k, v in doc.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise LlmtuneError(f"{path}: the prediction of question {bad!r} is {doc[bad]!r}, expected a text")
        return dict(doc)
    out: dict[str, str] = {}
    for i, rec in enumerate(doc if isinstance(doc, list) else []):
        if not isinstance(rec, dict) or "id" not in rec:
            raise LlmtuneError(f"{path}, record {i + 1}: expected an object with 'id' and an answer field "
                               f"({', '.join(PREDICTION_KEYS)}), or a file holding one {{id: answer}} object")
        key = field or next((k for k in PREDICTION_KEYS if k in rec), None)
        if key is None or not isinstance(rec.get(key), str):
            raise LlmtuneError(f"{path}, record {i + 1}: no answer text under "
                               f"{repr(field) if field else ' / '.join(PREDICTION_KEYS)}")
        out[str(rec["id"])] = rec[key]
    if not out:
        raise LlmtuneError(f"{path}: no predictions in the file")
    return out


def read_squad_references(path: Path, field: str | None = None) -> dict[str, list[str]]:
    """{id: gold answers} from SQuAD's nested JSON, or flat records (JSON list / JSONL) with `id` and `answers`
    ({"text": [...]}, a list of texts, or llmtune's predictions.jsonl `answers`)."""
    doc = _read_json_or_lines(path)
    rows = json_rows(doc, str(path))
    if rows is None:
        if not isinstance(doc, list):
            raise LlmtuneError(f"{path}: expected SQuAD's JSON ({{\"data\": [{{\"paragraphs\": ...}}]}}) or "
                               "records with 'id' and 'answers'")
        rows = doc
    out: dict[str, list[str]] = {}
    key = field or "answers"
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict) or "id" not in rec or key not in rec:
            raise LlmtuneError(f"{path}, record {i + 1}: expected an object with 'id' and {key!r}")
        value = rec[key]
        texts = value if isinstance(value, list) and all(isinstance(t, str) for t in value) else \
            (answers_of(value) or (None, None))[0]
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise LlmtuneError(f"{path}, record {i + 1}: {key!r} holds {str(value)[:80]!r}, expected "
                               '{"text": [...]} or a list of answer texts')
        if str(rec["id"]) in out:
            raise LlmtuneError(f"{path}, record {i + 1}: id {rec['id']!r} appears twice")
        out[str(rec["id"])] = list(texts)
    if not out:
        raise LlmtuneError(f"{path}: no questions in the file")
    return out


def score_squad_files(predictions_path: str | Path, references_path: str | Path, prediction_field: str | None = None,
                      reference_field: str | None = None, bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05,
                      compare_path: str | Path | None = None) -> dict[str, Any]:
    """Official SQuAD EM/F1 of a predictions file (v2.0 scoring when some reference question has no answer),
    in scoring.score_files' result shape, with bootstrap intervals and an optional paired test."""
    import math

    from llmtune import metrics as M

    if bootstrap < 0:
        raise LlmtuneError(f"bootstrap must be >= 0, got {bootstrap}")
    if not 0 < alpha < 1:
        raise LlmtuneError(f"alpha must be between 0 and 1, got {alpha}")
    refs = read_squad_references(Path(references_path), reference_field)
    preds = read_squad_predictions(Path(predictions_path), prediction_field)
    v2 = any(not [a for a in answers if a] for answers in refs.values())
    prepare = M.prepare_squad_v2 if v2 else M.prepare_squad_v1
    stats = prepare(preds, refs)
    intervals = M.confidence_interval(stats, bootstrap, seed, alpha) if bootstrap else {}

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    results = {}
    for key, value in stats.values.items():
        low, high = intervals.get(key, (math.nan, math.nan))
        results[key] = {"value": num(value), "ci_low": num(low), "ci_high": num(high), "n": stats.n}
    comparison = None
    if compare_path is not None:
        other = prepare(read_squad_predictions(Path(compare_path), prediction_field), refs)
        comparison = {k: {kk: num(vv) for kk, vv in row.items()}
                      for k, row in M.paired_test(stats, other, bootstrap or 1000, seed).items()}
    unknown = len([k for k in preds if k not in refs])
    signature = f"squad_v{'2.0' if v2 else '1.1'}|official normalisation|questions:{len(refs)}|unknown_ids:{unknown}"
    return {"results": results, "signatures": {"squad": signature}, "comparison": comparison, "n_samples": len(refs)}
