"""Score prediction files against reference files: `llmtune eval --predictions P --references R`.

Formats, chosen by suffix (a trailing `.gz` is decompressed first):
  .jsonl   one JSON value per line: an object (the text is `field`) or a bare string; blank lines are skipped
  .json    a list of objects or of strings, or an object holding such a list under `field`
  .csv     a header row, then rows; `field` names a column (.tsv: tab-separated, no quoting, like GLUE)
  other    plain text (.txt, .de, .hyp, ...): one text per line, empty lines included
A reference may be a list of strings (several references) in .jsonl and .json, and several reference files
may be given (sacreBLEU style, one reference per line each). Every user error raises `LlmtuneError` with a
one-line message naming the file and the line or item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from llmtune import metrics as M
from llmtune.errors import LlmtuneError
from llmtune.inputs import read_records

PREDICTION_FIELDS = ("prediction", "predictions", "generated", "output", "text")
REFERENCE_FIELDS = ("reference", "references", "target", "targets", "label", "answer")

def _pick_field(path: Path, where: str, keys: Sequence[str], field: str | None,
                defaults: Sequence[str]) -> str:
    if field is not None:
        if field not in keys:
            raise LlmtuneError(f"{path}, {where}: no field '{field}' (fields: {', '.join(map(str, keys))})")
        return field
    if len(keys) == 1:
        return keys[0]
    for name in defaults:
        if name in keys:
            return name
    known = f" and none is one of {', '.join(defaults)}" if defaults else ""
    raise LlmtuneError(f"{path}, {where}: several fields ({', '.join(map(str, keys))}){known}; "
                       "name the field to use")


def _value(path: Path, where: str, value: Any, allow_lists: bool) -> str | list[str]:
    if isinstance(value, str):
        return [value] if allow_lists else value
    if isinstance(value, bool):
        text = "true" if value else "false"
        return [text] if allow_lists else text
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise LlmtuneError(f"{path}, {where}: {value} is not a valid label")
        return [json.dumps(value)] if allow_lists else json.dumps(value)
    if isinstance(value, list):
        if not allow_lists:
            raise LlmtuneError(f"{path}, {where}: a list where one text was expected "
                               "(only references may hold several)")
        if not value:
            raise LlmtuneError(f"{path}, {where}: empty list of references")
        bad = [type(v).__name__ for v in value if not isinstance(v, str)]
        if bad:
            raise LlmtuneError(f"{path}, {where}: references must be strings, found {bad[0]}")
        return list(value)
    kind = "null" if value is None else type(value).__name__
    raise LlmtuneError(f"{path}, {where}: expected text, found {kind}")


def _from_record(path: Path, where: str, record: Any, field: str | None, defaults: Sequence[str],
                 allow_lists: bool) -> str | list[str]:
    if isinstance(record, dict):
        key = _pick_field(path, where, list(record), field, defaults)
        return _value(path, f"{where}, field '{key}'", record[key], allow_lists)
    if field is not None:
        raise LlmtuneError(f"{path}, {where}: a {type(record).__name__}, not an object with field '{field}'")
    return _value(path, where, record, allow_lists)


def read_texts(path: str | Path, field: str | None = None, allow_lists: bool = False,
               default_fields: Sequence[str] = ()) -> list[str] | list[list[str]]:
    """One text per example from a .txt/.jsonl/.json/.csv/.tsv file (see inputs.py for the formats).

    `field` names the JSON key or CSV column; without it a record with one key uses that key, else the first
    of `default_fields` present (CSV/TSV: else the first column). With `allow_lists` every item is a list of
    strings (a JSON list gives several references); without it every item is a string.
    """
    path = Path(path)
    records = read_records(path, list_field=field)
    if records.fmt == ".txt":
        if field is not None:
            raise LlmtuneError(f"{path}: a plain-text file has no fields (field '{field}' given); "
                               "use .jsonl, .json, .csv or .tsv")
        return [[line] for _, line in records.items] if allow_lists else [line for _, line in records.items]
    if records.header is not None:
        header = records.header
        if field is None and len(header) > 1 and not any(name in header for name in default_fields):
            key = header[0]  # no conventional name: the first column
        else:
            key = _pick_field(path, "header", header, field, default_fields)
        return [[row[key]] if allow_lists else row[key] for _, row in records.items]
    field = None if records.list_field else field
    return [_from_record(path, where, item, field, default_fields, allow_lists) for where, item in records.items]


def read_references(paths: str | Path | Sequence[str | Path], field: str | None = None) -> list[list[str]]:
    """References per example from one file, or from several files read in parallel (one reference each)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise LlmtuneError("no reference file given")
    columns = [read_texts(p, field, allow_lists=True, default_fields=REFERENCE_FIELDS) for p in paths]
    for p, col in zip(paths[1:], columns[1:], strict=True):
        if len(col) != len(columns[0]):
            raise LlmtuneError(f"{p} has {len(col)} references but {paths[0]} has {len(columns[0])}")
    return [[r for col in columns for r in cast(list[str], col[i])] for i in range(len(columns[0]))]


TAG_PREDICTION_FIELDS = ("predicted_tags", "prediction", "predictions", "tags")
TAG_REFERENCE_FIELDS = ("tags", "ner_tags", "labels", "reference", "references")


def read_tag_sequences(path: str | Path, field: str | None, defaults: Sequence[str]) -> list[list[str]]:
    """One list of tags per sentence: JSON lists (or objects holding one under `field` / the first of
    `defaults`: a run's predictions.jsonl serves as both files), or text with the tags of a sentence on one line,
    space-separated."""
    path = Path(path)
    records = read_records(path, list_field=field)
    out = []
    for where, item in records.items:
        if isinstance(item, dict):
            key = _pick_field(path, where, list(item), field, defaults)
            item, where = item[key], f"{where}, field '{key}'"
        if isinstance(item, str):
            item = item.split()
        if not isinstance(item, list) or not all(isinstance(t, str) and t for t in item):
            raise LlmtuneError(f"{path}, {where}: expected a list of tags (strings), got {str(item)[:60]}")
        out.append(item)
    if not out:
        raise LlmtuneError(f"{path}: no sentences in the file")
    return out


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def score_files(
    predictions_path: str | Path,
    references_path: str | Path | Sequence[str | Path],
    metrics: Sequence[str],
    prediction_field: str | None = None,
    reference_field: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    compare_path: str | Path | None = None,
) -> dict[str, Any]:
    """Score a predictions file (and optionally a second system's) with each metric; a JSON-able dict.

    `options` maps a metric name to its keyword options (e.g. {"bleu": {"tokenize": "zh"}}). `bootstrap`
    resamples give a percentile (1 - alpha) interval per value (0: no intervals). With `compare_path` the
    second system is tested against the first with sacreBLEU's paired bootstrap: per key a (predictions),
    b (compare), diff = b - a, p_value. Label metrics (accuracy, f1) compare whitespace-stripped strings.

    Returns {"results": {key: {"value", "ci_low", "ci_high", "n"}}, "signatures": {metric: str},
    "comparison": {key: {...}} or None, "n_samples": N}.
    """
    options = options or {}
    if not metrics:
        raise LlmtuneError("no metric given")
    if "squad" in metrics:  # files keyed by question id, read and scored by the question_answering task's code
        from llmtune.tasks.question_answering import score_squad_files

        refs = [references_path] if isinstance(references_path, str | Path) else list(references_path)
        if len(metrics) != 1 or options or len(refs) != 1:
            raise LlmtuneError("squad: one predictions and one references file, scored apart from other metrics")
        return score_squad_files(predictions_path, refs[0], prediction_field, reference_field, bootstrap, seed,
                                 alpha, compare_path)
    for name in list(metrics) + list(options):
        if name not in M.METRICS:
            raise LlmtuneError(f"unknown metric '{name}'; choose from {', '.join(M.METRICS)}")
    for name, opts in options.items():
        valid = M.metric_options(name)
        unknown = [k for k in opts if k not in valid]
        if unknown:
            raise LlmtuneError(f"{name}: unknown option '{unknown[0]}'; valid: {', '.join(valid) or 'none'}")
    if bootstrap < 0:
        raise LlmtuneError(f"bootstrap must be >= 0, got {bootstrap}")
    if not 0 < alpha < 1:
        raise LlmtuneError(f"alpha must be between 0 and 1, got {alpha}")

    ref_paths = [references_path] if isinstance(references_path, str | Path) else list(references_path)
    sequences = [m for m in metrics if M.METRICS[m].tag_sequences]
    if sequences:
        if len(sequences) != len(metrics):
            raise LlmtuneError(f"{sequences[0]} scores tag sequences; score it apart from text and label metrics")
        if len(ref_paths) != 1:
            raise LlmtuneError(f"{sequences[0]}: one references file of tag sequences, got {len(ref_paths)}")
        preds = read_tag_sequences(predictions_path, prediction_field, TAG_PREDICTION_FIELDS)
        refs = read_tag_sequences(ref_paths[0], reference_field, TAG_REFERENCE_FIELDS)
        alt = read_tag_sequences(compare_path, prediction_field, TAG_PREDICTION_FIELDS) if compare_path else None
        for path, rows in ((predictions_path, preds), (compare_path, alt)):
            if rows is not None and len(rows) != len(refs):
                raise LlmtuneError(f"{path} has {len(rows)} sentences but {ref_paths[0]} has {len(refs)}")
        for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
            if len(p) != len(r):
                raise LlmtuneError(f"{predictions_path}, sentence {i + 1}: {len(p)} predicted tags but "
                                   f"{ref_paths[0]} has {len(r)} tags")
        return score_texts(preds, refs, metrics, options, bootstrap, seed, alpha, alt,  # type: ignore[arg-type]
                           source=str(predictions_path), ref_name=str(ref_paths[0]))
    predictions = cast(list[str], read_texts(predictions_path, prediction_field,
                                             default_fields=PREDICTION_FIELDS))
    references = read_references(ref_paths, reference_field)
    ref_name = ", ".join(map(str, ref_paths))
    if len(predictions) != len(references):
        raise LlmtuneError(f"{predictions_path} has {len(predictions)} predictions but {ref_name} has "
                           f"{len(references)} references")
    other = None
    if compare_path is not None:
        other = cast(list[str], read_texts(compare_path, prediction_field, default_fields=PREDICTION_FIELDS))
        if len(other) != len(references):
            raise LlmtuneError(f"{compare_path} has {len(other)} predictions but {ref_name} has "
                               f"{len(references)} references")

    return score_texts(predictions, references, metrics, options, bootstrap, seed, alpha, other,
                       source=str(predictions_path), ref_name=ref_name)


def score_texts(
    predictions: list[str],
    references: list[list[str]],
    metrics: Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    other: list[str] | None = None,
    source: str = "predictions",
    ref_name: str = "references",
) -> dict[str, Any]:
    """`score_files` on lists already in memory (a model's predictions, say); same result shape."""
    options = options or {}
    results: dict[str, dict[str, Any]] = {}
    signatures: dict[str, str] = {}
    comparison: dict[str, dict[str, Any]] | None = {} if other is not None else None
    for name in dict.fromkeys(metrics):
        spec = M.METRICS[name]
        opts = options.get(name, {})
        if spec.text_references or spec.tag_sequences:
            preds, refs, alt = predictions, references, other
        else:
            several = next((i for i, r in enumerate(references) if len(r) != 1), None)
            if several is not None:
                raise LlmtuneError(f"{ref_name}, example {several + 1}: {len(references[several])} "
                                   f"references; {name} needs one label per example")
            preds = [p.strip() for p in predictions]
            refs = [r[0].strip() for r in references]
            alt = [p.strip() for p in other] if other is not None else None
        try:
            stats = M.prepare(name, preds, refs, **opts)
            signatures[name] = M.signature(name, refs, **opts)
            intervals = M.confidence_interval(stats, bootstrap, seed, alpha) if bootstrap else {}
            if alt is not None and comparison is not None:
                other_stats = M.prepare(name, alt, refs, **opts)
                for key, row in M.paired_test(stats, other_stats, bootstrap or 1000, seed).items():
                    comparison[key] = {k: _json_float(v) for k, v in row.items()}
        except (ValueError, TypeError, ImportError) as e:
            raise LlmtuneError(f"{name} on {source}: {e}") from None
        for key, value in stats.values.items():
            low, high = intervals.get(key, (math.nan, math.nan))
            results[key] = {"value": _json_float(value), "ci_low": _json_float(low),
                            "ci_high": _json_float(high), "n": stats.n}
    return {"results": results, "signatures": signatures, "comparison": comparison,
            "n_samples": len(predictions)}
