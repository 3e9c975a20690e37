"""Evaluation metrics: pure functions from (predictions, references) to a dict of floats.

Every number comes from the reference packages (`rouge_score`, `sacrebleu`) or, for classification, from the
same definitions scikit-learn uses; tests check them against those packages to the last digit.

Scales: ROUGE, BLEU, chrF, TER and exact match are on 0-100 (as sacreBLEU prints them); accuracy, precision,
recall and F1 are fractions in [0, 1] (as scikit-learn and `evaluate` return them).

References for text metrics are `list[list[str]]` (one list of references per example; the lists may have
different lengths) or `list[str]` (one reference each). Confidence intervals and the paired significance test
resample per-example statistics, so their cost does not depend on the metric's own cost:

    stats = prepare("bleu", predictions, references)          # the expensive part, once
    stats.values                                               # {"bleu": 27.3}
    confidence_interval(stats, n=1000, seed=0)                 # {"bleu": (25.9, 28.8)}
    paired_test(stats, prepare("bleu", other, references))     # {"bleu": {"a", "b", "diff", "p_value", ...}}
"""

from __future__ import annotations

import functools
import inspect
import math
import multiprocessing
import os
import re
import string
import sys
import unicodedata
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Below this many pairs a worker pool costs more than it saves (start-up and pickling).
PARALLEL_MIN_PAIRS = 2000

# Bootstrap: index matrices up to this many entries are drawn in one call, exactly as sacreBLEU draws them
# (so seeds give sacreBLEU's resamples); larger ones are drawn in blocks of rows to bound memory.
_ONE_SHOT_DRAW = 1 << 23
_BLOCK_ENTRIES = 1 << 22

Resampler = Callable[[np.ndarray], dict[str, np.ndarray]]


# ----------------------------------------------------------------------------------------------------
# Input checks


def _check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> int:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("no examples to score")
    return len(predictions)


def _texts(predictions: Sequence[str]) -> list[str]:
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise TypeError(f"prediction {i} is {type(p).__name__}, not str")
    return list(predictions)


def as_multi_references(references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """One list of reference strings per example; a bare string counts as a single reference."""
    out: list[list[str]] = []
    for i, refs in enumerate(references):
        group = [refs] if isinstance(refs, str) else list(refs)
        if not group:
            raise ValueError(f"example {i} has no reference")
        for r in group:
            if not isinstance(r, str):
                raise TypeError(f"a reference of example {i} is {type(r).__name__}, not str")
        out.append(group)
    return out


# ----------------------------------------------------------------------------------------------------
# ROUGE


_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc cf fig figs eq eqs al approx inc ltd co corp dept ca resp sec".split()
)
# A sentence ends at . ! ? or … (plus closing quotes/brackets) before whitespace, at CJK 。！？
# (no space needed), or at a newline.
_BOUNDARY = re.compile(r"""([.!?…]+["'”’»)\]]*)\s+|[。！？]+["'”’」』）)]*\s*|\s*\n\s*""")
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")


def _is_abbreviation(text_before: str) -> bool:
    words = text_before.split()
    if not words:
        return False
    word = words[-1].lstrip("\"'“‘«([").lower()
    # "J. Smith", "e.g. this", "U.S. law", "Dr. No": a letter, letter-dot chains, a known abbreviation.
    return bool(_INITIALS.fullmatch(word)) or word in _ABBREVIATIONS


def sentence_split(text: str) -> str:
    """Split text into sentences with a regex and join them with newlines (the input rougeLsum expects).

    A stand-in for `nltk.sent_tokenize`, whose punkt data cannot be downloaded offline: it splits after
    sentence-final punctuation followed by whitespace (not after a lone "." that ends an initial or a common
    abbreviation), after CJK full stops, and at existing newlines.
    """
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end_punct = m.group(1)
        if end_punct == "." and _is_abbreviation(text[start : m.start()]):
            continue
        piece = text[start : m.end()].strip()
        if piece:
            sentences.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return "\n".join(sentences)


class _CachedStemmer:
    """Porter stemming dominates ROUGE's cost; the stem of a word never changes, so cache it (3x faster)."""

    def __init__(self, stemmer: Any) -> None:
        self.stem = functools.lru_cache(maxsize=1 << 16)(stemmer.stem)


def _rouge_scorers(use_stemmer: bool) -> tuple[Any, Any]:
    from rouge_score import rouge_scorer, tokenizers

    tokenizer = tokenizers.DefaultTokenizer(use_stemmer)
    if getattr(tokenizer, "_stemmer", None) is not None:
        tokenizer._stemmer = _CachedStemmer(tokenizer._stemmer)
    # rougeLsum alone in its scorer: rouge_score then skips tokenizing the unsplit text.
    return (
        rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer),
        rouge_scorer.RougeScorer(["rougeLsum"], tokenizer=tokenizer),
    )


def _rouge_chunk(task: tuple[list[str], list[list[str]], bool]) -> list[tuple[float, float, float, float]]:
    predictions, references, use_stemmer = task
    scorer, lsum_scorer = _rouge_scorers(use_stemmer)
    out = []
    for pred, refs in zip(predictions, references, strict=True):
        s = scorer.score_multi(refs, pred)
        lsum = lsum_scorer.score_multi([sentence_split(r) for r in refs], sentence_split(pred))
        out.append((s["rouge1"].fmeasure, s["rouge2"].fmeasure, s["rougeL"].fmeasure,
                    lsum["rougeLsum"].fmeasure))
    return out


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _mp_context() -> Any:
    # fork where the OS has it safely (Linux; sacreBLEU and `datasets` do the same): workers start in
    # milliseconds and need not re-import anything. spawn elsewhere (macOS, Windows).
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def rouge_per_example(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    use_stemmer: bool = True,
    n_jobs: int | None = None,
) -> dict[str, list[float]]:
    """Per-example ROUGE F-measures (0-1) for rouge1, rouge2, rougeL and rougeLsum.

    Several references: the best one per rouge type, exactly as `RougeScorer.score_multi` picks it. rougeLsum
    scores `sentence_split` text. `n_jobs=None` uses a process pool over all CPUs from `PARALLEL_MIN_PAIRS`
    pairs on, `n_jobs=1` never does, `n_jobs=k` always uses k workers; the examples are cut into contiguous
    chunks and put back in order, so every number is identical to the single-process result.
    """
    n = _check_lengths(predictions, references)
    preds = _texts(predictions)
    refs = as_multi_references(references)
    if n_jobs is not None and n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1 or None, got {n_jobs}")
    workers = (cpu_count() if n >= PARALLEL_MIN_PAIRS else 1) if n_jobs is None else n_jobs
    workers = min(workers, n)
    if workers <= 1 or multiprocessing.current_process().daemon:  # a pool worker may not start its own pool
        rows = _rouge_chunk((preds, refs, use_stemmer))
    else:
        # A few chunks per worker evens out long and short examples.
        n_chunks = min(n, workers * 4)
        bounds = [round(i * n / n_chunks) for i in range(n_chunks + 1)]
        tasks = [(preds[a:b], refs[a:b], use_stemmer) for a, b in zip(bounds, bounds[1:], strict=False)]
        with _mp_context().Pool(workers) as pool:
            rows = [row for chunk in pool.map(_rouge_chunk, tasks, chunksize=1) for row in chunk]
    return {key: [row[k] for row in rows] for k, key in enumerate(ROUGE_KEYS)}


def rouge(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    use_stemmer: bool = True,
    n_jobs: int | None = None,
) -> dict[str, float]:
    """Mean per-example ROUGE F-measure x 100 for each of ROUGE_KEYS (not evaluate's bootstrap median)."""
    per = rouge_per_example(predictions, references, use_stemmer=use_stemmer, n_jobs=n_jobs)
    return {key: 100.0 * math.fsum(v) / len(v) for key, v in per.items()}


# ----------------------------------------------------------------------------------------------------
# sacreBLEU: BLEU, chrF, TER


def reference_streams(references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Transpose per-example reference lists into sacreBLEU's reference streams.

    sacreBLEU wants streams of equal length and drops `None` entries per segment; an empty string would count
    as a real, empty reference (it changes BLEU's closest reference length, chrF and TER's average length, and
    the signature's `nrefs`), so missing references are padded with `None`, never with "".
    """
    refs = as_multi_references(references)
    width = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def _nrefs(references: Sequence[str] | Sequence[Sequence[str]]) -> int:
    counts = {len(r) for r in as_multi_references(references)}
    return counts.pop() if len(counts) == 1 else -1  # -1 is sacreBLEU's "var"


def _sacrebleu_metric(name: str, options: dict[str, Any]) -> Any:
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        if options.get("tokenize") is not None and options["tokenize"] not in BLEU.TOKENIZERS:
            raise ValueError(f"unknown BLEU tokenize '{options['tokenize']}'; choose from "
                             f"{', '.join(BLEU.TOKENIZERS)}")
        if options.get("smooth_method", "exp") not in BLEU.SMOOTH_DEFAULTS:
            raise ValueError(f"unknown BLEU smooth_method '{options['smooth_method']}'; choose from "
                             f"{', '.join(BLEU.SMOOTH_DEFAULTS)}")
    cls = {"bleu": BLEU, "chrf": CHRF, "ter": TER}[name]
    return cls(**options)


def bleu(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    max_ngram_order: int = 4,
    effective_order: bool = False,
    force: bool = False,
) -> dict[str, float]:
    """sacreBLEU corpus BLEU (0-100). The reproducibility string: `signature("bleu", references, ...)`."""
    options = dict(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method,
                   smooth_value=smooth_value, max_ngram_order=max_ngram_order,
                   effective_order=effective_order, force=force)
    return {"bleu": _sacrebleu_score("bleu", predictions, references, options)}


def chrf(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
    lowercase: bool = False,
    whitespace: bool = False,
    eps_smoothing: bool = False,
) -> dict[str, float]:
    """sacreBLEU corpus chrF (0-100); `word_order=2` gives chrF++."""
    options = dict(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                   whitespace=whitespace, eps_smoothing=eps_smoothing)
    return {"chrf": _sacrebleu_score("chrf", predictions, references, options)}


def ter(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    normalized: bool = False,
    no_punct: bool = False,
    asian_support: bool = False,
    case_sensitive: bool = False,
) -> dict[str, float]:
    """sacreBLEU corpus TER (0-100, lower is better)."""
    options = dict(normalized=normalized, no_punct=no_punct, asian_support=asian_support,
                   case_sensitive=case_sensitive)
    return {"ter": _sacrebleu_score("ter", predictions, references, options)}


def _sacrebleu_score(name: str, predictions: Sequence[str], references: Any,
                     options: dict[str, Any]) -> float:
    _check_lengths(predictions, references)
    metric = _sacrebleu_metric(name, options)
    return float(metric.corpus_score(_texts(predictions), reference_streams(references)).score)


# ----------------------------------------------------------------------------------------------------
# Classification and exact match


def _label_order(labels: Sequence[Hashable]) -> list[Hashable]:
    unique = list(dict.fromkeys(labels))
    try:
        return sorted(unique)  # type: ignore[type-var]
    except TypeError:  # mixed types (1 and "1" are different labels): keep first-seen order
        return unique


def _label_indices(predictions: Sequence[Hashable],
                   references: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray, int]:
    labels = _label_order(list(references) + list(predictions))
    index = {label: i for i, label in enumerate(labels)}
    true = np.fromiter((index[r] for r in references), dtype=np.int64, count=len(references))
    pred = np.fromiter((index[p] for p in predictions), dtype=np.int64, count=len(predictions))
    return true, pred, len(labels)


def _classification_from_weights(true: np.ndarray, pred: np.ndarray, n_labels: int,
                                 weights: np.ndarray) -> dict[str, float]:
    """scikit-learn's definitions (labels=None, zero_division=0), example i counted weights[i] times."""
    correct = true == pred
    tp = np.bincount(true, weights=weights * correct, minlength=n_labels)
    n_true = np.bincount(true, weights=weights, minlength=n_labels)
    n_pred = np.bincount(pred, weights=weights, minlength=n_labels)
    # labels=None means the labels present in y_true or y_pred; in a bootstrap resample that set can shrink.
    present = (n_true > 0) | (n_pred > 0)
    tp, n_true, n_pred = tp[present], n_true[present], n_pred[present]
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    denom = n_true + n_pred
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    acc = float(tp.sum() / weights.sum())
    return {"accuracy": acc, "f1": float(f1.mean()), "precision": float(precision.mean()),
            "recall": float(recall.mean()), "f1_micro": acc}


def classification_metrics(predictions: Sequence[Hashable],
                           references: Sequence[Hashable]) -> dict[str, float]:
    """accuracy, macro f1/precision/recall and micro f1 (fractions), as scikit-learn computes them.

    Labels may be ints or strings (compared with ==); the macro average runs over every label seen in the
    references or the predictions; a label never predicted has precision 0 (zero_division=0). For single-label
    data micro F1 equals accuracy.
    """
    n = _check_lengths(predictions, references)
    true, pred, n_labels = _label_indices(predictions, references)
    return _classification_from_weights(true, pred, n_labels, np.ones(n))


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> dict[str, float]:
    """Fraction of predictions equal to their reference label."""
    n = _check_lengths(predictions, references)
    return {"accuracy": sum(p == r for p, r in zip(predictions, references, strict=True)) / n}


@functools.lru_cache(maxsize=4096)
def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str, ignore_case: bool = False, ignore_punctuation: bool = False,
                     normalize_whitespace: bool = True,
                     regexes_to_ignore: Sequence[str] | None = None) -> str:
    """The text exact_match compares: regexes removed, then case, punctuation and whitespace handled."""
    if isinstance(regexes_to_ignore, str):
        regexes_to_ignore = [regexes_to_ignore]
    for pattern in regexes_to_ignore or ():
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        # ASCII punctuation and symbols (like `evaluate`) plus every Unicode punctuation mark („“, 。, ¿).
        text = "".join(ch for ch in text if not _is_punctuation(ch))
    if normalize_whitespace:
        text = " ".join(text.split())
    return text


def _exact_match_rows(predictions: Sequence[str], references: Any, **options: Any) -> np.ndarray:
    _check_lengths(predictions, references)
    preds = _texts(predictions)
    refs = as_multi_references(references)
    return np.array([
        100.0 * any(normalize_answer(p, **options) == normalize_answer(r, **options) for r in group)
        for p, group in zip(preds, refs, strict=True)
    ])


def exact_match(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    normalize_whitespace: bool = True,
    regexes_to_ignore: Sequence[str] | None = None,
) -> dict[str, float]:
    """Percentage (0-100) of predictions equal to one of their references after `normalize_answer`."""
    rows = _exact_match_rows(predictions, references, ignore_case=ignore_case,
                             ignore_punctuation=ignore_punctuation, normalize_whitespace=normalize_whitespace,
                             regexes_to_ignore=regexes_to_ignore)
    return {"exact_match": math.fsum(rows) / len(rows)}


# ----------------------------------------------------------------------------------------------------
# Sufficient statistics, bootstrap intervals and the paired test


@dataclass(frozen=True, eq=False)
class MetricStats:
    """A metric's values on a corpus plus what resampling needs (built by `prepare`).

    `resample(counts)` takes a (B, n) matrix, row b giving how often each example is drawn in resample b, and
    returns each key's B resampled values.
    """

    name: str
    values: dict[str, float]
    n: int
    resample: Resampler = field(repr=False)


def _mean_resampler(rows: np.ndarray, keys: Sequence[str]) -> Resampler:
    n = rows.shape[0]

    def resample(counts: np.ndarray) -> dict[str, np.ndarray]:
        means = counts @ rows / n
        return {key: means[:, k] for k, key in enumerate(keys)}

    return resample


def _mean_stats(name: str, rows: np.ndarray, keys: Sequence[str]) -> MetricStats:
    values = {key: math.fsum(rows[:, k]) / rows.shape[0] for k, key in enumerate(keys)}
    return MetricStats(name, values, rows.shape[0], _mean_resampler(rows, keys))


def _prepare_rouge(predictions: Sequence[str], references: Any, use_stemmer: bool = True,
                   n_jobs: int | None = None) -> MetricStats:
    per = rouge_per_example(predictions, references, use_stemmer=use_stemmer, n_jobs=n_jobs)
    rows = 100.0 * np.array([per[key] for key in ROUGE_KEYS], dtype=np.float64).T
    return _mean_stats("rouge", rows, ROUGE_KEYS)


def _prepare_exact_match(predictions: Sequence[str], references: Any, **options: Any) -> MetricStats:
    return _mean_stats("exact_match", _exact_match_rows(predictions, references, **options)[:, None],
                       ["exact_match"])


def _prepare_accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> MetricStats:
    _check_lengths(predictions, references)
    rows = np.array([float(p == r) for p, r in zip(predictions, references, strict=True)])[:, None]
    return _mean_stats("accuracy", rows, ["accuracy"])


def prepare_loss(losses: Sequence[float], weights: Sequence[float] | None = None,
                 perplexity: bool = False) -> MetricStats:
    """A split's mean loss from per-example losses, for `confidence_interval`: weighted by `weights` (each example's
    target tokens, where the loss is a token mean: every token counts once, as in the split's own loss), so a
    resample is the ratio sum(w * loss) / sum(w) over its examples. `perplexity` adds exp(loss)."""
    loss = np.asarray(losses, dtype=np.float64)
    w = np.ones_like(loss) if weights is None else np.asarray(weights, dtype=np.float64)
    if loss.shape != w.shape or not len(loss) or (w <= 0).any():
        raise ValueError("prepare_loss needs one positive weight per loss, and at least one loss")
    num = loss * w
    keys = ["loss", "perplexity"] if perplexity else ["loss"]

    def with_perplexity(mean: np.ndarray) -> dict[str, np.ndarray]:
        out = {"loss": mean}
        if perplexity:
            out["perplexity"] = np.exp(np.minimum(mean, 700.0))
        return out

    def resample(counts: np.ndarray) -> dict[str, np.ndarray]:
        return with_perplexity((counts @ num) / (counts @ w))

    mean = math.fsum(num) / math.fsum(w)
    values = {k: float(v[0]) for k, v in with_perplexity(np.array([mean])).items()}
    return MetricStats("loss", {k: values[k] for k in keys}, len(loss), resample)


def _prepare_classification(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> MetricStats:
    n = _check_lengths(predictions, references)
    true, pred, n_labels = _label_indices(predictions, references)

    def resample(counts: np.ndarray) -> dict[str, np.ndarray]:
        scores = [_classification_from_weights(true, pred, n_labels, row) for row in counts]
        return {key: np.array([s[key] for s in scores]) for key in scores[0]}

    values = _classification_from_weights(true, pred, n_labels, np.ones(n))
    return MetricStats("f1", values, n, resample)


def _sacrebleu_prepare(name: str) -> Callable[..., MetricStats]:
    def prepare_fn(predictions: Sequence[str], references: Any, **options: Any) -> MetricStats:
        _check_lengths(predictions, references)
        metric = _sacrebleu_metric(name, {**metric_options(name), **options})
        # The calls `corpus_score` makes, keeping the segment statistics sacreBLEU's bootstrap resamples.
        seg_stats = metric._extract_corpus_statistics(_texts(predictions), reference_streams(references))
        value = float(metric._aggregate_and_compute(seg_stats).score)
        rows = np.array(seg_stats, dtype=np.float64)

        def resample(counts: np.ndarray) -> dict[str, np.ndarray]:
            sums = counts @ rows
            # tolist(): BLEU's add-k smoothing mutates the list it is given.
            return {name: np.array([metric._compute_score_from_stats(s.tolist()).score for s in sums])}

        return MetricStats(name, {name: value}, len(predictions), resample)

    return prepare_fn


def _resample_indices(rng: np.random.Generator, n_items: int, n_resamples: int) -> Iterator[np.ndarray]:
    """Bootstrap index blocks of shape (B, n_items); one draw like sacreBLEU's when small enough."""
    block = max(1, _BLOCK_ENTRIES // n_items)
    if n_items * n_resamples <= _ONE_SHOT_DRAW:
        idx = rng.choice(n_items, size=(n_resamples, n_items), replace=True)
        for start in range(0, n_resamples, block):
            yield idx[start : start + block]
    else:
        for start in range(0, n_resamples, block):
            yield rng.choice(n_items, size=(min(block, n_resamples - start), n_items), replace=True)


def _counts(idx: np.ndarray, n_items: int) -> np.ndarray:
    b = idx.shape[0]
    flat = (idx + np.arange(b)[:, None] * n_items).ravel()
    return np.bincount(flat, minlength=b * n_items).reshape(b, n_items).astype(np.float64)


def _resampled(stats_list: Sequence[MetricStats], n: int, seed: int | None) -> list[dict[str, np.ndarray]]:
    """Each statistic's values on the same n resamples (paired: one index draw shared by all)."""
    size = stats_list[0].n
    if any(s.n != size for s in stats_list):
        raise ValueError(f"cannot pair corpora of {[s.n for s in stats_list]} examples")
    if n < 1:
        raise ValueError(f"the number of bootstrap resamples must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in stats_list]
    for idx in _resample_indices(rng, size, n):
        counts = _counts(idx, size)
        for part, stats in zip(parts, stats_list, strict=True):
            part.append(stats.resample(counts))
    return [{key: np.concatenate([p[key] for p in part]) for key in stats.values}
            for part, stats in zip(parts, stats_list, strict=True)]


def confidence_interval(stats: MetricStats, n: int = 1000, seed: int | None = 0,
                        alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval (1 - alpha) for each key of `stats`, from n resamples of the examples."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    (samples,) = _resampled([stats], n, seed)
    out = {}
    for key, values in samples.items():
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out[key] = (float(low), float(high))
    return out


def paired_test(stats_a: MetricStats, stats_b: MetricStats, n: int = 1000,
                seed: int | None = 0) -> dict[str, dict[str, float]]:
    """sacreBLEU's paired bootstrap test (Koehn 2004) of system b against system a on the same examples.

    Both systems are scored on the same n resamples; the |b - a| differences are centred on their mean (the
    null hypothesis) and p = (#{centred > observed |b - a|} + 1) / (n + 1), as in `sacrebleu.significance`.
    One deliberate difference: when the observed difference is exactly 0 (e.g. identical outputs) sacreBLEU
    reports p = 1/(n+1), which reads as "significant"; here p = 1.
    Returns per key: a, b, diff = b - a, p_value, and a percentile 95% interval of the difference.
    """
    samples_a, samples_b = _resampled([stats_a, stats_b], n, seed)
    out = {}
    for key, a in stats_a.values.items():
        b = stats_b.values[key]
        observed = abs(b - a)
        sample_diffs = np.abs(samples_b[key] - samples_a[key])
        centred = sample_diffs - sample_diffs.mean()
        p = 1.0 if observed == 0 else (int(np.sum(centred > observed)) + 1) / (len(centred) + 1)
        low, high = np.quantile(samples_b[key] - samples_a[key], [0.025, 0.975])
        out[key] = {"a": a, "b": b, "diff": b - a, "p_value": p, "diff_ci_low": float(low),
                    "diff_ci_high": float(high)}
    return out


# ----------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class MetricSpec:
    """A metric the CLI can name: its function, its sufficient-statistics builder and what it compares."""

    function: Callable[..., dict[str, float]]
    prepare: Callable[..., MetricStats]
    text_references: bool  # True: strings, several per example allowed; False: one label per example
    higher_is_better: bool = True
    tag_sequences: bool = False  # predictions and references are lists of tags, one list per sentence (seqeval)


def seqeval(predictions: list[list[str]], references: list[list[str]], scheme: str | None = None) -> dict[str, float]:
    """`seqeval_metrics` (defined below, with the NER code) under the registry's name."""
    return seqeval_metrics(predictions, references, scheme)


def _prepare_seqeval(predictions: list[list[str]], references: list[list[str]],
                     scheme: str | None = None) -> MetricStats:
    return prepare_seqeval(predictions, references, scheme)


METRICS: dict[str, MetricSpec] = {
    "rouge": MetricSpec(rouge, _prepare_rouge, text_references=True),
    "bleu": MetricSpec(bleu, _sacrebleu_prepare("bleu"), text_references=True),
    "chrf": MetricSpec(chrf, _sacrebleu_prepare("chrf"), text_references=True),
    "ter": MetricSpec(ter, _sacrebleu_prepare("ter"), text_references=True, higher_is_better=False),
    "exact_match": MetricSpec(exact_match, _prepare_exact_match, text_references=True),
    "accuracy": MetricSpec(accuracy, _prepare_accuracy, text_references=False),
    "f1": MetricSpec(classification_metrics, _prepare_classification, text_references=False),
    "seqeval": MetricSpec(seqeval, _prepare_seqeval, text_references=False, tag_sequences=True),
}


def _spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise ValueError(f"unknown metric '{name}'; choose from {', '.join(METRICS)}")
    return METRICS[name]


def metric_options(name: str) -> dict[str, Any]:
    """The options a metric accepts, with their defaults."""
    params = list(inspect.signature(_spec(name).function).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _check_options(function: Callable[..., Any], options: dict[str, Any]) -> None:
    valid = list(inspect.signature(function).parameters)[2:]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {function.__name__}; "
                         f"valid: {', '.join(valid) or 'none'}")


def compute(name: str, predictions: Sequence[Any], references: Sequence[Any],
            **options: Any) -> dict[str, float]:
    """Run the metric registered as `name` with its options (ValueError for an unknown name or option)."""
    spec = _spec(name)
    _check_options(spec.function, options)
    return spec.function(predictions, references, **options)


#: the keys of metrics that do not score text: what they report, as a model's eval names them (squad's v1 and
#: v2 keys differ but for f1)
OUTPUT_NAMES = {"f1": ["f1"], "accuracy": ["accuracy"], "seqeval": ["precision", "recall", "f1", "accuracy"],
                "squad": ["f1"], "perplexity": ["perplexity"], "loss": ["loss"]}


def output_names(name: str) -> list[str]:
    """The keys a metric reports (rouge: rouge1, rouge2, rougeL, rougeLsum), read off one scored example for the
    text metrics."""
    if name in OUTPUT_NAMES:
        return OUTPUT_NAMES[name]
    return list(compute(name, ["a b"], [["a b"]]))


def prepare(name: str, predictions: Sequence[Any], references: Sequence[Any], **options: Any) -> MetricStats:
    """The metric's values plus per-example statistics for `confidence_interval` and `paired_test`."""
    spec = _spec(name)
    _check_options(spec.function, options)
    return spec.prepare(predictions, references, **options)


def signature(name: str, references: Sequence[Any], **options: Any) -> str:
    """A reproducibility string: sacreBLEU's own signature for bleu/chrf/ter, a similar one for the others."""
    spec = _spec(name)
    _check_options(spec.function, options)
    if name in ("bleu", "chrf", "ter"):
        metric = _sacrebleu_metric(name, {**metric_options(name), **options})
        metric.num_refs = _nrefs(references)  # what corpus_score would set after caching the references
        return str(metric.get_signature().format())
    settings = {**metric_options(name), **options}
    settings.pop("n_jobs", None)
    parts = [name]
    if spec.text_references:
        nrefs = _nrefs(references)
        parts.append(f"nrefs:{'var' if nrefs == -1 else nrefs}")
    parts += [f"{k}:{v}" for k, v in settings.items()]
    if name == "rouge":
        parts += ["lsum_split:regex", f"rouge_score:{metadata.version('rouge-score')}"]
    return "|".join(parts)


def _registered_name(metric: str | Callable[..., dict[str, float]]) -> str | None:
    if isinstance(metric, str):
        _spec(metric)
        return metric
    for name, spec in METRICS.items():
        if spec.function is metric:
            return name
    return None


def _generic_stats(fn: Callable[..., dict[str, float]], predictions: Sequence[Any], references: Sequence[Any],
                   options: dict[str, Any]) -> MetricStats:
    """Any metric function: recompute it on each resample (slow, but correct for whatever it computes)."""
    n = _check_lengths(predictions, references)
    preds, refs = list(predictions), list(references)

    def resample(counts: np.ndarray) -> dict[str, np.ndarray]:
        results = []
        for row in counts:
            sel = np.repeat(np.arange(n), row.astype(np.int64))
            results.append(fn([preds[i] for i in sel], [refs[i] for i in sel], **options))
        return {key: np.array([r[key] for r in results]) for key in results[0]}

    return MetricStats(getattr(fn, "__name__", "metric"), fn(preds, refs, **options), n, resample)


def bootstrap_ci(
    metric_fn: str | Callable[..., dict[str, float]],
    predictions: Sequence[Any],
    references: Sequence[Any],
    n: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    **options: Any,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) interval for every key of a metric (a registered name or function).

    Registered metrics resample per-example statistics (ROUGE F, exact-match hits, sacreBLEU's segment
    statistics), so 1000 resamples of 20k sentences take about a second; any other function is re-run per
    resample.
    """
    name = _registered_name(metric_fn)
    if name is None:
        assert callable(metric_fn)
        stats = _generic_stats(metric_fn, predictions, references, options)
    else:
        stats = prepare(name, predictions, references, **options)
    return confidence_interval(stats, n=n, seed=seed, alpha=alpha)


def paired_bootstrap(
    metric_name: str,
    preds_a: Sequence[Any],
    preds_b: Sequence[Any],
    references: Sequence[Any],
    n: int = 1000,
    seed: int | None = 0,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Paired bootstrap test of system b against system a (see `paired_test`; sacreBLEU's seed is 12345)."""
    return paired_test(prepare(metric_name, preds_a, references, **options),
                       prepare(metric_name, preds_b, references, **options), n=n, seed=seed)


# ----------------------------------------------------------------------------------------------------
# Token classification (NER): entity-level precision, recall and F1 by seqeval
#
# The entities come from seqeval's own functions (`get_entities` in the default mode, `Entities` in strict
# mode); the counting and dividing are redone here per sentence, with seqeval's formulas, so that the
# corpus numbers are seqeval's to the last digit and bootstrap resamples of sentences cost a matrix product.


SEQEVAL_SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")


def _tag_sequences(sequences: Sequence[Sequence[str]], side: str) -> list[list[str]]:
    out: list[list[str]] = []
    for i, seq in enumerate(sequences):
        if isinstance(seq, str):
            raise TypeError(f"{side} sentence {i} is a string, not a list of tags")
        tags = list(seq)
        for j, tag in enumerate(tags):
            if not isinstance(tag, str):
                raise TypeError(f"{side} sentence {i}, position {j}: tag is {type(tag).__name__}, not str")
            if not tag:
                raise ValueError(f"{side} sentence {i}, position {j}: empty tag")
        out.append(tags)
    return out


def _seqeval_scheme(scheme: str | None) -> Any:
    if scheme is None:
        return None
    if not isinstance(scheme, str) or scheme.upper() not in SEQEVAL_SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; choose from {', '.join(SEQEVAL_SCHEMES)} "
                         "(or None for seqeval's default, lenient mode)")
    from seqeval import scheme as schemes

    return getattr(schemes, scheme.upper())


def _check_scheme_tags(sequences: list[list[str]], scheme_cls: Any, side: str) -> None:
    """Strict mode: every tag's prefix must belong to the scheme.

    seqeval raises on its own, but unhelpfully: a KeyError ('X') for an unknown prefix, a ValueError that
    names neither sentence nor position for a prefix outside the scheme (E- in IOB2).
    """
    from seqeval.scheme import Prefixes

    allowed = scheme_cls.allowed_prefix
    for i, seq in enumerate(sequences):
        for j, tag in enumerate(seq):
            prefix = Prefixes.get(tag[0])
            if prefix is None or prefix not in allowed:
                names = ", ".join(p for p in "BIOESUL" if Prefixes[p] in allowed)
                raise ValueError(f"{side} sentence {i}, position {j}: tag {tag!r} is not valid in the "
                                 f"{scheme_cls.__name__} scheme (prefixes {names}, e.g. B-PER)")


def _sentence_entities(sequences: list[list[str]], scheme_cls: Any) -> list[set[tuple[str, int, int]]]:
    """Each sentence's entities as (type, start, end), found exactly as seqeval finds them."""
    if scheme_cls is not None:
        from seqeval.scheme import Entities

        return [{(e.tag, e.start, e.end) for e in ents} for ents in Entities(sequences, scheme_cls).entities]
    import bisect

    from seqeval.metrics.sequence_labeling import get_entities

    # seqeval's default mode runs over the whole corpus with an "O" after each sentence; doing the same (rather
    # than one call per sentence) keeps its results even for odd tags. Positions are then corpus offsets.
    starts = [0]
    for seq in sequences[:-1]:
        starts.append(starts[-1] + len(seq) + 1)
    out: list[set[tuple[str, int, int]]] = [set() for _ in sequences]
    for type_name, start, end in get_entities(sequences):
        out[bisect.bisect_right(starts, start) - 1].add((type_name, start, end))
    return out


def _seqeval_rows(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                  scheme: str | None) -> tuple[list[str], np.ndarray]:
    """Entity types (sorted, as seqeval reports them) and one row of counts per sentence.

    Columns: true positives, predicted and true entities per type (3 blocks of len(types)), then correct
    tokens and tokens.
    """
    _check_lengths(predictions, references)
    preds = _tag_sequences(predictions, "predictions")
    refs = _tag_sequences(references, "references")
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        if len(p) != len(r):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(r)} reference tags")
    if not any(refs):
        raise ValueError("no tokens to score: every sentence is empty")
    scheme_cls = _seqeval_scheme(scheme)
    if scheme_cls is not None:
        _check_scheme_tags(refs, scheme_cls, "references")
        _check_scheme_tags(preds, scheme_cls, "predictions")
    true_ents = _sentence_entities(refs, scheme_cls)
    pred_ents = _sentence_entities(preds, scheme_cls)
    types = sorted({e[0] for ents in true_ents + pred_ents for e in ents})
    index = {t: k for k, t in enumerate(types)}
    n_types = len(types)
    rows = np.zeros((len(refs), 3 * n_types + 2), dtype=np.int64)
    for i, (te, pe, p, r) in enumerate(zip(true_ents, pred_ents, preds, refs, strict=True)):
        for block, ents in ((0, te & pe), (1, pe), (2, te)):
            for e in ents:
                rows[i, block * n_types + index[e[0]]] += 1
        rows[i, 3 * n_types] = sum(a == b for a, b in zip(r, p, strict=True))
        rows[i, 3 * n_types + 1] = len(r)
    return types, rows


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """seqeval's precision, recall and F1 (zero_division=0), elementwise; the same operations in the same order."""
    precision = np.divide(tp, n_pred, out=np.zeros(np.shape(tp)), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros(np.shape(tp)), where=n_true > 0)
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros(np.shape(tp)), where=denom > 0)
    return precision, recall, f1


def _seqeval_from_sums(sums: np.ndarray, types: Sequence[str], numbers: bool) -> dict[str, np.ndarray]:
    """Scores from count sums of shape (B, columns): one value per row for each key."""
    k = len(types)
    tp, n_pred, n_true = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k : 3 * k]
    precision, recall, f1 = _prf(tp.sum(axis=1), n_pred.sum(axis=1), n_true.sum(axis=1))
    tokens = sums[:, 3 * k + 1]
    out = {"precision": precision, "recall": recall, "f1": f1,
           # A resample of only empty sentences has no token accuracy (NaN), as seqeval has none (ZeroDivisionError).
           "accuracy": np.divide(sums[:, 3 * k], tokens, out=np.full(len(sums), np.nan), where=tokens > 0)}
    p_t, r_t, f_t = _prf(tp, n_pred, n_true)
    for j, t in enumerate(types):
        out[f"{t}_precision"], out[f"{t}_recall"], out[f"{t}_f1"] = p_t[:, j], r_t[:, j], f_t[:, j]
        if numbers:
            out[f"{t}_number"] = n_true[:, j]
    return out


def seqeval_metrics(
    predictions: list[list[str]],
    references: list[list[str]],
    scheme: str | None = None,
) -> dict[str, float]:
    """Entity-level scores of tag sequences as seqeval gives them (what run_ner.py and `evaluate`'s seqeval report).

    `precision`, `recall`, `f1`: micro average over all entities; `accuracy`: token accuracy; then per entity
    type T (sorted): `T_precision`, `T_recall`, `T_f1` and `T_number` (its count in the references). Fractions
    in [0, 1]; a division by zero gives 0 (seqeval's zero_division default).

    `scheme=None` is seqeval's default mode (conlleval-compatible, lenient: an I- without a B- still starts an
    entity, E-/S- tags are understood). `scheme="IOB2"`, `"IOBES"` (or another of SEQEVAL_SCHEMES) is
    `mode="strict"` with that scheme: an entity counts only if it is well formed, and a tag whose prefix is not
    in the scheme raises ValueError naming the sentence and position. Every sentence must have as many
    predicted tags as reference tags.
    """
    return _seqeval_values(*_seqeval_rows(predictions, references, scheme))


def _seqeval_values(types: list[str], rows: np.ndarray) -> dict[str, float]:
    scores = _seqeval_from_sums(rows.sum(axis=0)[None, :], types, numbers=True)
    return {key: int(v[0]) if key.endswith("_number") else float(v[0]) for key, v in scores.items()}


def prepare_seqeval(predictions: list[list[str]], references: list[list[str]],
                    scheme: str | None = None) -> MetricStats:
    """`seqeval_metrics` without the `_number` counts, plus per-sentence counts for resampling sentences.

    Use it with `confidence_interval` and `paired_test`. In a resample a type may be missing: its scores are
    then 0 (seqeval would not list it).
    """
    types, rows = _seqeval_rows(predictions, references, scheme)
    values = {key: v for key, v in _seqeval_values(types, rows).items() if not key.endswith("_number")}
    matrix = rows.astype(np.float64)  # integer counts: the products below are exact

    def resample(counts: np.ndarray) -> dict[str, np.ndarray]:
        return _seqeval_from_sums(counts @ matrix, types, numbers=False)

    return MetricStats("seqeval", values, len(rows), resample)


def seqeval_bootstrap_ci(
    predictions: list[list[str]],
    references: list[list[str]],
    scheme: str | None = None,
    n: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) interval of every `seqeval_metrics` score, resampling sentences.

    The same intervals as `bootstrap_ci(seqeval_metrics, ...)` re-running seqeval on each resample would give,
    from summed per-sentence counts instead.
    """
    return confidence_interval(prepare_seqeval(predictions, references, scheme), n=n, seed=seed, alpha=alpha)


# ----------------------------------------------------------------------------------------------------
# Extractive QA: SQuAD v1.1 and v2.0 exact match and F1, as the official evaluation scripts compute them
#
# Sums run in the references' order with the scripts' own operations (v1.1 `+=`, v2.0 `sum()`, which since
# Python 3.12 is compensated), so the totals match the scripts to the last digit on any Python.

_SQUAD_PUNCTUATION = frozenset(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_normalize_answer(text: str) -> str:
    """SQuAD's `normalize_answer`: lower-case, drop ASCII punctuation, the articles a/an/the, extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCTUATION)
    return " ".join(_SQUAD_ARTICLES.sub(" ", text).split())


def _squad_f1(gold_tokens: list[str], pred_tokens: list[str], v2: bool) -> float:
    from collections import Counter

    if v2 and (not gold_tokens or not pred_tokens):
        # v2.0: if either is no-answer, F1 is 1 if both are, else 0. v1.1 has no such rule (empty vs empty: 0).
        return int(gold_tokens == pred_tokens)
    num_same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _squad_inputs(predictions: Any, references: Any, allow_empty: bool) -> list[tuple[str, list[str]]]:
    if not hasattr(predictions, "keys") or not hasattr(references, "items"):
        raise TypeError("SQuAD predictions and references are dicts keyed by question id")
    if not references:
        raise ValueError("no questions to score")
    out = []
    for qid, answers in references.items():
        group = [answers] if isinstance(answers, str) else list(answers)
        if not group and not allow_empty:
            raise ValueError(f"question {qid!r} has no reference answer (SQuAD v1.1 needs at least one)")
        for a in group:
            if not isinstance(a, str):
                raise TypeError(f"a reference answer of question {qid!r} is {type(a).__name__}, not str")
        if qid in predictions and not isinstance(predictions[qid], str):
            raise TypeError(f"prediction for question {qid!r} is {type(predictions[qid]).__name__}, not str")
        out.append((qid, group))
    return out


def _warn_missing(missing: list[str], total: int) -> None:
    if missing:
        import warnings

        shown = ", ".join(map(repr, missing[:3])) + (", ..." if len(missing) > 3 else "")
        warnings.warn(f"{len(missing)} of {total} questions have no prediction and score 0: {shown}",
                      stacklevel=3)


def _squad_v1_scores(predictions: dict[str, str],
                     references: dict[str, list[str]]) -> tuple[list[Any], list[Any], list[str]]:
    """Per question (reference order): exact match and F1, None where the prediction is missing."""
    exact, f1, missing = [], [], []
    for qid, answers in _squad_inputs(predictions, references, allow_empty=False):
        if qid not in predictions:
            missing.append(qid)
            exact.append(None)
            f1.append(None)
            continue
        pred = squad_normalize_answer(predictions[qid])
        pred_tokens = pred.split()
        golds = [squad_normalize_answer(a) for a in answers]
        exact.append(max(pred == g for g in golds))
        f1.append(max(_squad_f1(g.split(), pred_tokens, v2=False) for g in golds))
    return exact, f1, missing


def _squad_v1_totals(exact: list[Any], f1: list[Any], missing: list[str]) -> dict[str, float]:
    em_sum = f1_sum = 0
    for e, f in zip(exact, f1, strict=True):
        if e is not None:  # the official script: an unanswered question adds nothing but counts in the total
            em_sum += e
            f1_sum += f
    total = len(exact)
    return {"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total, "missing_predictions": len(missing)}


def _mean_stats_with_values(name: str, rows: np.ndarray, keys: Sequence[str],
                            values: dict[str, float]) -> MetricStats:
    # The point values stay the official script's sums; only the resamples use matrix products.
    return MetricStats(name, {key: values[key] for key in keys}, rows.shape[0], _mean_resampler(rows, keys))


def squad_v1(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """SQuAD v1.1 `exact_match` and `f1` (0-100), as the official script and `evaluate`'s squad metric.

    predictions: question id -> answer text; references: question id -> its gold answers (the best one counts).
    A question without a prediction scores 0 and still counts, as in the official script (which prints a
    message; here a warning); `missing_predictions` says how many. Predictions for unknown ids are ignored.
    """
    exact, f1, missing = _squad_v1_scores(predictions, references)
    _warn_missing(missing, len(exact))
    return _squad_v1_totals(exact, f1, missing)


def prepare_squad_v1(predictions: dict[str, str], references: dict[str, list[str]]) -> MetricStats:
    """`squad_v1`'s exact_match and f1, plus per-question scores for resampling questions."""
    exact, f1, missing = _squad_v1_scores(predictions, references)
    _warn_missing(missing, len(exact))
    values = _squad_v1_totals(exact, f1, missing)
    rows = 100.0 * np.array([[float(e or 0), float(f or 0)] for e, f in zip(exact, f1, strict=True)])
    return _mean_stats_with_values("squad_v1", rows, ["exact_match", "f1"], values)


@dataclass(frozen=True)
class _SquadV2Scores:
    qids: list[str]
    has_ans: dict[str, bool]
    exact_raw: dict[str, int]
    f1_raw: dict[str, float]
    exact: dict[str, float]  # after the no-answer threshold; missing predictions absent
    f1: dict[str, float]
    missing: list[str]


def _squad_v2_scores(predictions: dict[str, str], references: dict[str, list[str]],
                     na_probs: dict[str, float] | None, na_prob_thresh: float) -> _SquadV2Scores:
    qids, has_ans, exact_raw, f1_raw, missing = [], {}, {}, {}, []
    for qid, answers in _squad_inputs(predictions, references, allow_empty=True):
        qids.append(qid)
        # The official script: answerable when the answer list is non-empty. A list of empty strings ([""], how
        # a no-answer gold is often written) counts as unanswerable here; on SQuAD data the two never differ.
        has_ans[qid] = any(a != "" for a in answers)
        gold = [a for a in answers if squad_normalize_answer(a)] or [""]
        if qid not in predictions:
            missing.append(qid)
            continue
        pred = predictions[qid]
        pred_norm = squad_normalize_answer(pred)
        pred_tokens = pred_norm.split() if pred else []
        exact_raw[qid] = max(int(squad_normalize_answer(a) == pred_norm) for a in gold)
        f1_raw[qid] = max(_squad_f1(squad_normalize_answer(a).split() if a else [], pred_tokens, v2=True)
                          for a in gold)
    if na_probs is None:
        na_probs = {qid: 0.0 for qid in predictions}  # the official default: no question is predicted no-answer
    absent = [qid for qid in exact_raw if qid not in na_probs]
    if absent:
        raise ValueError(f"na_probs has no probability for {len(absent)} answered questions, e.g. {absent[0]!r}")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid in exact_raw:  # apply_no_ans_threshold
        if na_probs[qid] > na_prob_thresh:
            exact[qid] = f1[qid] = float(not has_ans[qid])
        else:
            exact[qid], f1[qid] = exact_raw[qid], f1_raw[qid]
    return _SquadV2Scores(qids, has_ans, exact_raw, f1_raw, exact, f1, missing)


def _squad_v2_best_thresh(predictions: dict[str, str], scores: _SquadV2Scores, raw: dict[str, Any],
                          na_probs: dict[str, float]) -> tuple[float, float]:
    """The official find_best_thresh: walk questions by rising no-answer probability, answering each in turn."""
    # Counted over answered questions so a missing prediction scores 0 at every threshold (the script would
    # count an unanswered no-answer question as right); with every question answered this is the script's count.
    cur_score = sum(1 for qid in raw if not scores.has_ans[qid])
    best_score = cur_score
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in raw:
            continue
        if scores.has_ans[qid]:
            diff = raw[qid]
        else:
            diff = -1 if predictions[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores.qids), best_thresh


def _squad_v2_eval(scores: _SquadV2Scores, qid_list: list[str]) -> dict[str, float]:
    # make_eval_dict; a missing prediction adds nothing to the sums but counts in the total.
    answered = [k for k in qid_list if k in scores.exact]
    return {"exact": 100.0 * sum(scores.exact[k] for k in answered) / len(qid_list),
            "f1": 100.0 * sum(scores.f1[k] for k in answered) / len(qid_list),
            "total": len(qid_list)}


def _squad_v2_totals(predictions: dict[str, str], scores: _SquadV2Scores,
                     na_probs: dict[str, float] | None) -> dict[str, float]:
    out = _squad_v2_eval(scores, scores.qids)
    for prefix, qid_list in (("HasAns", [k for k in scores.qids if scores.has_ans[k]]),
                             ("NoAns", [k for k in scores.qids if not scores.has_ans[k]])):
        if qid_list:
            out.update({f"{prefix}_{key}": v for key, v in _squad_v2_eval(scores, qid_list).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _squad_v2_best_thresh(predictions, scores, scores.exact_raw,
                                                                            na_probs)
        out["best_f1"], out["best_f1_thresh"] = _squad_v2_best_thresh(predictions, scores, scores.f1_raw, na_probs)
    out["missing_predictions"] = len(scores.missing)
    return out


def squad_v2(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """SQuAD v2.0 scores (0-100) with the official script's keys: exact, f1, total, HasAns_exact, HasAns_f1,
    HasAns_total, NoAns_exact, NoAns_f1, NoAns_total (a split only when it has questions).

    references: question id -> gold answers; `[]` or `[""]` marks an unanswerable question, whose only right
    answer is "" (F1 of empty vs empty is 1). na_probs: question id -> probability of no answer; a question
    whose probability exceeds `na_prob_thresh` counts as answered with "" (apply_no_ans_threshold). With
    na_probs, also best_exact, best_exact_thresh, best_f1, best_f1_thresh (the best threshold found on these
    very questions: an oracle, for analysis). A question without a prediction scores 0 and still counts
    (`missing_predictions` says how many; the official script fails on it with a KeyError).
    """
    scores = _squad_v2_scores(predictions, references, na_probs, na_prob_thresh)
    _warn_missing(scores.missing, len(scores.qids))
    return _squad_v2_totals(predictions, scores, na_probs)


def prepare_squad_v2(predictions: dict[str, str], references: dict[str, list[str]],
                     na_probs: dict[str, float] | None = None, na_prob_thresh: float = 1.0) -> MetricStats:
    """`squad_v2`'s exact and f1 overall, HasAns_ and NoAns_ (not the totals or the oracle best_*), for resampling.

    A resample without any question of a split gives NaN for that split.
    """
    scores = _squad_v2_scores(predictions, references, na_probs, na_prob_thresh)
    _warn_missing(scores.missing, len(scores.qids))
    totals = _squad_v2_totals(predictions, scores, None)
    rows = 100.0 * np.array([[float(scores.exact.get(k, 0.0)), float(scores.f1.get(k, 0.0))] for k in scores.qids])
    has = np.array([scores.has_ans[k] for k in scores.qids], dtype=np.float64)
    keys = ["exact", "f1"] + [f"{p}_{m}" for p in ("HasAns", "NoAns") for m in ("exact", "f1")
                              if f"{p}_{m}" in totals]

    def resample(counts: np.ndarray) -> dict[str, np.ndarray]:
        out = {"exact": counts @ rows[:, 0] / len(rows), "f1": counts @ rows[:, 1] / len(rows)}
        for prefix, mask in (("HasAns", has), ("NoAns", 1.0 - has)):
            if f"{prefix}_exact" in totals:
                size = counts @ mask
                sums = (counts * mask) @ rows
                for j, metric in enumerate(("exact", "f1")):
                    out[f"{prefix}_{metric}"] = np.divide(sums[:, j], size, out=np.full(len(counts), np.nan),
                                                          where=size > 0)
        return out

    return MetricStats("squad_v2", {key: totals[key] for key in keys}, len(rows), resample)


def squad_v1_bootstrap_ci(predictions: dict[str, str], references: dict[str, list[str]], n: int = 1000,
                          seed: int | None = 0, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) interval of SQuAD v1.1 exact_match and f1, resampling questions."""
    return confidence_interval(prepare_squad_v1(predictions, references), n=n, seed=seed, alpha=alpha)


def squad_v2_bootstrap_ci(predictions: dict[str, str], references: dict[str, list[str]],
                          na_probs: dict[str, float] | None = None, na_prob_thresh: float = 1.0, n: int = 1000,
                          seed: int | None = 0, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) interval of SQuAD v2.0 exact and f1 (overall, HasAns_, NoAns_)."""
    return confidence_interval(prepare_squad_v2(predictions, references, na_probs, na_prob_thresh),
                               n=n, seed=seed, alpha=alpha)
