"""NER and extractive-QA metrics against their references: the seqeval package, and the official SQuAD v1.1 and
v2.0 evaluation scripts (their functions re-implemented literally below, as `evaluate`'s squad metrics ship them)."""

from __future__ import annotations

import collections
import random
import re
import string
import sys
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pytest
import seqeval.scheme
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

from llmtune import metrics as M

# ------------------------------------------------------------------------------------------------------------
# seqeval


def seqeval_reference(preds: list[list[str]], refs: list[list[str]], scheme: str | None = None) -> dict[str, Any]:
    """What `evaluate`'s seqeval module computes, flattened as run_ner.py reports it."""
    kwargs: dict[str, Any] = {} if scheme is None else {"mode": "strict", "scheme": getattr(seqeval.scheme, scheme)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero divisions, "mean of empty slice" in the macro average
        report = classification_report(refs, preds, output_dict=True, **kwargs)
        micro = report.pop("micro avg")
        report.pop("macro avg")
        report.pop("weighted avg")
        out: dict[str, Any] = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
                               "accuracy": accuracy_score(refs, preds)}
        for name, score in report.items():
            out.update({f"{name}_precision": score["precision"], f"{name}_recall": score["recall"],
                        f"{name}_f1": score["f1-score"], f"{name}_number": score["support"]})
        # The one-number functions agree with the report.
        assert precision_score(refs, preds, **kwargs) == out["precision"]
        assert recall_score(refs, preds, **kwargs) == out["recall"]
        assert f1_score(refs, preds, **kwargs) == out["f1"]
    return out


def assert_same(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    assert list(ours) == list(ref)
    for key, value in ref.items():
        assert ours[key] == value, key  # exactly: "to the last digit"
        assert type(ours[key]) is (int if key.endswith("_number") else float), key


# (predictions, references): each case is a small corpus.
NER_CASES = {
    "all_o": ([["O", "O"], ["O"]], [["O", "O"], ["O"]]),
    "empty_sentences_mixed": ([[], ["B-PER", "I-PER"], [], ["O"]], [[], ["B-PER", "I-PER"], [], ["B-LOC"]]),
    "i_without_b": ([["O", "I-PER", "I-PER", "O"], ["I-LOC"]], [["O", "B-PER", "I-PER", "O"], ["B-LOC"]]),
    "i_without_b_both_sides": ([["I-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]),
    "adjacent_same_type": ([["B-X", "B-X", "O"], ["B-X", "I-X"]], [["B-X", "B-X", "O"], ["B-X", "B-X"]]),
    "mixed_types": ([["B-PER", "I-LOC", "O", "B-ORG", "I-ORG", "B-MISC"]],
                    [["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "O"]]),
    "type_change_inside": ([["B-PER", "I-PER", "I-LOC", "O"]], [["B-PER", "I-PER", "B-LOC", "O"]]),
    "single_token_sentences": ([["B-PER"], ["O"], ["I-LOC"], ["B-ORG"]], [["B-PER"], ["B-LOC"], ["B-LOC"], ["O"]]),
    "entity_at_end_then_i_next_sentence": ([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER", "O"]]),
    "no_predicted_entities": ([["O", "O", "O"]], [["B-PER", "I-PER", "O"]]),
    "only_predicted_entities": ([["B-PER", "O", "B-LOC"]], [["O", "O", "O"]]),
    "bare_prefixes": ([["B", "I", "O"]], [["B", "O", "O"]]),
    "multi_dash_types": ([["B-ORG-corp", "I-ORG-corp", "O"]], [["B-ORG-corp", "I-ORG-corp", "O"]]),
}
IOBES_CASES = {
    "iobes_s_and_e": ([["S-PER", "O", "B-LOC", "E-LOC"], ["S-ORG"]], [["S-PER", "O", "B-LOC", "E-LOC"], ["B-ORG"]]),
    "iobes_missing_end": ([["B-LOC", "I-LOC", "O", "S-PER"]], [["B-LOC", "I-LOC", "E-LOC", "S-PER"]]),
    "iobes_e_without_b": ([["O", "E-PER", "S-PER"]], [["O", "S-PER", "S-PER"]]),
    "iobes_single_tokens": ([["S-X"], ["O"], ["S-Y"]], [["S-X"], ["S-Y"], ["S-Y"]]),
}


@pytest.mark.parametrize("case", list(NER_CASES) + list(IOBES_CASES))
def test_seqeval_default_mode_matches_seqeval(case: str) -> None:
    preds, refs = {**NER_CASES, **IOBES_CASES}[case]
    assert_same(M.seqeval_metrics(preds, refs), seqeval_reference(preds, refs))


@pytest.mark.parametrize("case", [c for c in NER_CASES if c != "bare_prefixes"])
def test_seqeval_strict_iob2_matches_seqeval(case: str) -> None:
    preds, refs = NER_CASES[case]
    assert_same(M.seqeval_metrics(preds, refs, scheme="IOB2"), seqeval_reference(preds, refs, "IOB2"))


@pytest.mark.parametrize("case", list(IOBES_CASES) + ["all_o", "empty_sentences_mixed"])
def test_seqeval_strict_iobes_matches_seqeval(case: str) -> None:
    preds, refs = {**NER_CASES, **IOBES_CASES}[case]
    assert_same(M.seqeval_metrics(preds, refs, scheme="IOBES"), seqeval_reference(preds, refs, "IOBES"))


def test_seqeval_lenient_versus_strict() -> None:
    # An I- with no B- opens an entity in the default mode only; B-X B-X are two entities in both.
    preds, refs = [["O", "I-PER", "I-PER", "B-X", "B-X"]], [["O", "B-PER", "I-PER", "B-X", "B-X"]]
    lenient, strict = M.seqeval_metrics(preds, refs), M.seqeval_metrics(preds, refs, scheme="iob2")
    assert lenient["PER_f1"] == 1.0 and strict["PER_f1"] == 0.0 and strict["PER_number"] == 1
    assert lenient["X_number"] == strict["X_number"] == 2 and lenient["X_f1"] == strict["X_f1"] == 1.0
    # B- I- without E- is an entity by default but not in strict IOBES.
    preds = refs = [["B-LOC", "I-LOC", "O"]]
    assert M.seqeval_metrics(preds, refs)["LOC_number"] == 1
    strict = M.seqeval_metrics(preds, refs, scheme="IOBES")
    assert strict["f1"] == 0.0 and "LOC_number" not in strict


def test_seqeval_random_corpora_match_seqeval() -> None:
    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    iobes_tags = tags + ["E-PER", "S-LOC", "S-ORG", "E-ORG"]
    for trial in range(60):
        vocab = iobes_tags if trial % 2 else tags
        lengths = [rng.randint(0, 7) for _ in range(rng.randint(1, 6))]
        if not any(lengths):
            lengths[0] = 1
        refs = [[rng.choice(vocab) for _ in range(k)] for k in lengths]
        preds = [[t if rng.random() < 0.6 else rng.choice(vocab) for t in seq] for seq in refs]
        assert_same(M.seqeval_metrics(preds, refs), seqeval_reference(preds, refs))
        scheme = "IOBES" if trial % 2 else "IOB2"
        assert_same(M.seqeval_metrics(preds, refs, scheme=scheme), seqeval_reference(preds, refs, scheme))


def test_seqeval_default_mode_odd_tags_match_seqeval() -> None:
    # Tags seqeval only warns about (no type, unknown prefixes, BILOU in the default mode): entities are found over
    # the whole corpus with an "O" between sentences, as seqeval does, so even these agree.
    rng = random.Random(1)
    odd = ["O", "X", "U-PER", "L-PER", "B", "I", ".", "O-PER", "B-PER", "I-PER", "E", "S", "I-LOC", "x-LOC"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(300):
            lengths = [rng.randint(1, 5) for _ in range(rng.randint(1, 5))]
            refs = [[rng.choice(odd) for _ in range(k)] for k in lengths]
            preds = [[rng.choice(odd) for _ in range(k)] for k in lengths]
            assert_same(M.seqeval_metrics(preds, refs), seqeval_reference(preds, refs))

def test_seqeval_input_errors() -> None:
    with pytest.raises(ValueError, match=r"sentence 1: 1 predicted tags but 2 reference tags"):
        M.seqeval_metrics([["O"], ["O"]], [["O"], ["O", "B-PER"]])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        M.seqeval_metrics([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="no examples"):
        M.seqeval_metrics([], [])
    # seqeval itself divides by zero here.
    with pytest.raises(ZeroDivisionError):
        accuracy_score([[], []], [[], []])
    with pytest.raises(ValueError, match="no tokens to score"):
        M.seqeval_metrics([[], []], [[], []])
    with pytest.raises(TypeError, match="predictions sentence 0 is a string"):
        M.seqeval_metrics(["B-PER O"], [["B-PER", "O"]])
    with pytest.raises(ValueError, match="references sentence 0, position 1: empty tag"):
        M.seqeval_metrics([["O", "O"]], [["O", ""]])
    with pytest.raises(ValueError, match="unknown tagging scheme 'IOB3'"):
        M.seqeval_metrics([["O"]], [["O"]], scheme="IOB3")
    # Tuples are fine (seqeval's default mode would fail on them).
    assert M.seqeval_metrics([("B-PER", "O")], [("B-PER", "O")])["f1"] == 1.0


def test_seqeval_strict_mode_rejects_tags_outside_the_scheme() -> None:
    # seqeval's own errors name neither sentence nor position, or are KeyErrors.
    scheme = seqeval.scheme.IOB2
    with pytest.raises(ValueError, match="Invalid token is found: E-X"):
        classification_report([["O"], ["B-X", "E-X"]], [["O"], ["B-X", "I-X"]], mode="strict", scheme=scheme)
    with pytest.raises(KeyError):
        classification_report([["B-X", "O"]], [["X-X", "O"]], mode="strict", scheme=scheme)
    with pytest.raises(ValueError, match=r"references sentence 1, position 1: tag 'E-X' is not valid in the IOB2 "
                                         r"scheme \(prefixes B, I, O"):
        M.seqeval_metrics([["O"], ["B-X", "I-X"]], [["O"], ["B-X", "E-X"]], scheme="IOB2")
    with pytest.raises(ValueError, match=r"predictions sentence 0, position 0: tag 'X-X'"):
        M.seqeval_metrics([["X-X", "O"]], [["B-X", "O"]], scheme="IOB2")
    with pytest.raises(ValueError, match=r"position 2: tag 'S-LOC' is not valid in the IOB2"):
        M.seqeval_metrics([["O", "O", "S-LOC"]], [["O", "O", "O"]], scheme="IOB2")
    with pytest.raises(ValueError, match=r"tag 'b-per' is not valid in the IOBES"):
        M.seqeval_metrics([["b-per"]], [["O"]], scheme="IOBES")
    # The default mode is lenient, like seqeval's: E- in IOB2-looking data is understood, nothing raises.
    preds, refs = [["O"], ["B-X", "I-X"]], [["O"], ["B-X", "E-X"]]
    assert_same(M.seqeval_metrics(preds, refs), seqeval_reference(preds, refs))


def ner_corpus(n: int, seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(seed)
    refs, preds = [], []
    for _ in range(n):
        seq: list[str] = []
        for t in rng.sample(["PER", "LOC", "ORG"], 3):
            seq += ["O"] * rng.randint(0, 2) + [f"B-{t}"] + [f"I-{t}"] * rng.randint(0, 2)
        refs.append(seq)
        preds.append([tag if rng.random() < 0.85 else rng.choice(["O", "B-PER", "I-LOC", "B-ORG"]) for tag in seq])
    return preds, refs


@pytest.mark.parametrize("scheme", [None, "IOB2"])
def test_seqeval_bootstrap_equals_rerunning_seqeval(scheme: str | None) -> None:
    preds, refs = ner_corpus(40)
    stats = M.prepare_seqeval(preds, refs, scheme=scheme)
    point = M.seqeval_metrics(preds, refs, scheme=scheme)
    assert stats.values == {k: v for k, v in point.items() if not k.endswith("_number")}

    def without_numbers(p: list[list[str]], r: list[list[str]]) -> dict[str, float]:
        return {k: v for k, v in M.seqeval_metrics(p, r, scheme=scheme).items() if not k.endswith("_number")}

    ci = M.seqeval_bootstrap_ci(preds, refs, scheme=scheme, n=200, seed=3)
    # The generic path re-runs seqeval_metrics on every resampled corpus: the same intervals, exactly.
    assert ci == M.bootstrap_ci(without_numbers, preds, refs, n=200, seed=3)
    assert ci == M.seqeval_bootstrap_ci(preds, refs, scheme=scheme, n=200, seed=3)
    assert ci != M.seqeval_bootstrap_ci(preds, refs, scheme=scheme, n=200, seed=4)
    for key in ("precision", "recall", "f1", "accuracy"):
        low, high = ci[key]
        assert low < point[key] < high


def test_seqeval_paired_test_and_missing_types_in_resamples() -> None:
    preds, refs = ner_corpus(60)
    good = M.prepare_seqeval(refs, refs)
    bad = M.prepare_seqeval(preds, refs)
    result = M.paired_test(bad, good, n=300, seed=0)
    assert result["f1"]["diff"] > 0 and result["f1"]["p_value"] < 0.05
    # A type present in one sentence only vanishes from most resamples: its scores are 0 there, no error.
    rare_refs = [["B-RARE"]] + refs[:20]
    rare_preds = [["B-RARE"]] + preds[:20]
    ci = M.seqeval_bootstrap_ci(rare_preds, rare_refs, n=200, seed=0)
    assert ci["RARE_f1"] == (0.0, 1.0)


# ------------------------------------------------------------------------------------------------------------
# The official SQuAD scripts (v1.1: `evaluate`'s squad/compute_score.py; v2.0: evaluate-v2.0.py), literally.


def v1_normalize_answer(s: str) -> str:
    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def v1_f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = v1_normalize_answer(prediction).split()
    ground_truth_tokens = v1_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def v1_exact_match_score(prediction: str, ground_truth: str) -> bool:
    return v1_normalize_answer(prediction) == v1_normalize_answer(ground_truth)


def v1_metric_max_over_ground_truths(metric_fn: Any, prediction: str, ground_truths: list[str]) -> Any:
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def v1_compute_score(dataset: list[dict], predictions: dict[str, str]) -> dict[str, float]:
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    message = "Unanswered question " + qa["id"] + " will receive score 0."
                    print(message, file=sys.stderr)
                    continue
                ground_truths = list(map(lambda x: x["text"], qa["answers"]))
                prediction = predictions[qa["id"]]
                exact_match += v1_metric_max_over_ground_truths(v1_exact_match_score, prediction, ground_truths)
                f1 += v1_metric_max_over_ground_truths(v1_f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {"exact_match": exact_match, "f1": f1}


def make_qid_to_has_ans(dataset: list[dict]) -> dict[str, bool]:
    qid_to_has_ans = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid_to_has_ans[qa["id"]] = bool(qa["answers"])
    return qid_to_has_ans


def normalize_answer(s: str) -> str:
    def remove_articles(text: str) -> str:
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def get_tokens(s: str) -> list[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def get_raw_scores(dataset: list[dict], preds: dict[str, str]) -> tuple[dict, dict]:
    exact_scores = {}
    f1_scores = {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                gold_answers = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
                if not gold_answers:
                    # For unanswerable questions, only correct answer is empty string
                    gold_answers = [""]
                if qid not in preds:
                    print("Missing prediction for %s" % qid)  # noqa: UP031
                    continue
                a_pred = preds[qid]
                # Take max over all gold answers
                exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
                f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
    return exact_scores, f1_scores


def apply_no_ans_threshold(scores: dict, na_probs: dict, qid_to_has_ans: dict, na_prob_thresh: float) -> dict:
    new_scores = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > na_prob_thresh
        if pred_na:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def make_eval_dict(exact_scores: dict, f1_scores: dict, qid_list: list | None = None) -> dict:
    if not qid_list:
        total = len(exact_scores)
        return collections.OrderedDict([
            ("exact", 100.0 * sum(exact_scores.values()) / total),
            ("f1", 100.0 * sum(f1_scores.values()) / total),
            ("total", total),
        ])
    else:
        total = len(qid_list)
        return collections.OrderedDict([
            ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
            ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
            ("total", total),
        ])


def merge_eval(main_eval: dict, new_eval: dict, prefix: str) -> None:
    for k in new_eval:
        main_eval["%s_%s" % (prefix, k)] = new_eval[k]  # noqa: UP031 (the script's own line)


def find_best_thresh(preds: dict, scores: dict, na_probs: dict, qid_to_has_ans: dict) -> tuple[float, float]:
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for _i, qid in enumerate(qid_list):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            if preds[qid]:
                diff = -1
            else:
                diff = 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def find_all_best_thresh(main_eval: dict, preds: dict, exact_raw: dict, f1_raw: dict, na_probs: dict,
                         qid_to_has_ans: dict) -> None:
    best_exact, exact_thresh = find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
    best_f1, f1_thresh = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
    main_eval["best_exact"] = best_exact
    main_eval["best_exact_thresh"] = exact_thresh
    main_eval["best_f1"] = best_f1
    main_eval["best_f1_thresh"] = f1_thresh


def v2_main(dataset: list[dict], preds: dict[str, str], na_probs: dict[str, float] | None = None,
            na_prob_thresh: float = 1.0) -> dict[str, Any]:
    """The script's main() without files and plots."""
    na_prob_file = na_probs is not None
    if not na_prob_file:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = make_qid_to_has_ans(dataset)  # maps qid to True/False
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = get_raw_scores(dataset, preds)
    exact_thresh = apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out_eval = make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        has_ans_eval = make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids)
        merge_eval(out_eval, has_ans_eval, "HasAns")
    if no_ans_qids:
        no_ans_eval = make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids)
        merge_eval(out_eval, no_ans_eval, "NoAns")
    if na_prob_file:
        find_all_best_thresh(out_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans)
    return dict(out_eval)


def as_dataset(references: dict[str, list[str]], v2: bool = True) -> list[dict]:
    """Our references in the scripts' format; for v2.0 an empty string is no answer (as `[]` is)."""
    qas = [{"id": qid, "answers": [{"text": a} for a in answers if not (v2 and a == "")]}
           for qid, answers in references.items()]
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


# Question id -> (prediction, gold answers).
QA_CASES: dict[str, tuple[str, list[str]]] = {
    "articles": ("The Eiffel Tower", ["Eiffel Tower", "the tower"]),
    "articles_only_words": ("an apple a day", ["apple day"]),
    "article_inside_word": ("theatre anthem", ["atre them"]),
    "punctuation": ("U.S.A.!", ["USA"]),
    "punctuation_split": ("rock-and-roll", ["rock and roll"]),
    "unicode_punctuation_kept": ("«Paris»", ["Paris"]),
    "accents": ("Café São Paulo", ["cafe sao paulo", "café são paulo"]),
    "accented_article": ("thé party", ["party"]),
    "cjk": ("北京大学", ["北京 大学", "北京大学"]),
    "cjk_partial": ("北京 大学 医院", ["北京 大学"]),
    "nbsp": ("the\u00a0big\u00a0cat", ["big cat"]),
    "several_refs_best_f1": ("red big dog", ["dog", "big red dog", "a cat"]),
    "repeated_tokens": ("the the dog dog dog", ["dog dog"]),
    "empty_prediction": ("", ["something"]),
    "prediction_only_articles": ("the", ["something"]),
    "gold_only_articles": ("a", ["the"]),
    "whitespace_prediction": ("   ", ["answer"]),
    "case": ("PARIS", ["paris"]),
    "numbers": ("1,000 people", ["1000 people"]),
    "partial": ("in the year 1976", ["1976"]),
}
NO_ANSWER_CASES: dict[str, tuple[str, list[str]]] = {
    "no_answer_abstained": ("", []),
    "no_answer_answered": ("Paris", []),
    "no_answer_empty_string_gold": ("", [""]),
    "no_answer_whitespace_pred": (" ", []),
    "whitespace_only_gold": ("", ["  "]),
    "whitespace_only_gold_answered": ("x", ["  "]),
    "article_only_gold": ("", ["the"]),
    "mixed_empty_and_real_gold": ("Paris", ["", "Paris"]),
}


def split(cases: dict[str, tuple[str, list[str]]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    return {k: p for k, (p, _) in cases.items()}, {k: r for k, (_, r) in cases.items()}


def assert_exact(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    ours = dict(ours)
    ours.pop("missing_predictions")
    assert list(ours) == list(ref)
    for key, value in ref.items():
        assert ours[key] == value, key
        assert type(ours[key]) is type(value), key


def test_squad_normalize_answer_is_the_scripts() -> None:
    for text in ["The Eiffel-Tower!", "an  apple\ta day", "thé «Paris»", "北京 大学", "the\u00a0cat", "", "   ", "A.N."]:
        assert M.squad_normalize_answer(text) == v1_normalize_answer(text) == normalize_answer(text)
    assert M.squad_normalize_answer("The  Cat, the hat.") == "cat hat"


@pytest.mark.parametrize("qid", list(QA_CASES))
def test_squad_v1_each_case_matches_official(qid: str) -> None:
    preds, refs = split({qid: QA_CASES[qid]})
    assert_exact(M.squad_v1(preds, refs), v1_compute_score(as_dataset(refs, v2=False), preds))


def test_squad_v1_corpus_matches_official() -> None:
    preds, refs = split(QA_CASES)
    ours = M.squad_v1(preds, refs)
    assert_exact(ours, v1_compute_score(as_dataset(refs, v2=False), preds))
    assert ours["missing_predictions"] == 0


@pytest.mark.parametrize("qid", list(QA_CASES) + list(NO_ANSWER_CASES))
def test_squad_v2_each_case_matches_official(qid: str) -> None:
    preds, refs = split({qid: {**QA_CASES, **NO_ANSWER_CASES}[qid]})
    assert_exact(M.squad_v2(preds, refs), v2_main(as_dataset(refs), preds))


def test_squad_v1_and_v2_differ_on_empty_answers() -> None:
    # v1.1: empty vs empty has exact match 1 but F1 0; v2.0: both 1. Whitespace-only gold counts as HasAns in v2.
    preds, refs = {"q": ""}, {"q": ["the"]}
    assert M.squad_v1(preds, refs) == {"exact_match": 100.0, "f1": 0.0, "missing_predictions": 0}
    v2 = M.squad_v2(preds, refs)
    assert v2["f1"] == 100.0 and v2["HasAns_total"] == 1 and "NoAns_total" not in v2
    assert M.squad_v2({"q": ""}, {"q": [""]})["NoAns_total"] == 1
    assert M.squad_v2({"q": ""}, {"q": []})["NoAns_f1"] == 100.0


def test_squad_v2_corpus_with_thresholds_matches_official() -> None:
    cases = {**QA_CASES, **NO_ANSWER_CASES}
    preds, refs = split(cases)
    dataset = as_dataset(refs)
    assert_exact(M.squad_v2(preds, refs), v2_main(dataset, preds))
    rng = random.Random(1)
    # Ties in the probabilities, extra ids the references lack, several thresholds.
    na_probs = {qid: rng.choice([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]) for qid in reversed(list(preds))}
    na_probs["not_a_question"] = 0.3
    for thresh in [1.0, 0.5, 0.3, 0.0, -1.0]:
        ours = M.squad_v2(preds, refs, na_probs=na_probs, na_prob_thresh=thresh)
        assert_exact(ours, v2_main(dataset, preds, na_probs=na_probs, na_prob_thresh=thresh))
        assert {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= set(ours)


def random_answer(rng: random.Random) -> str:
    words = ["the", "a", "an", "The", "Paris", "paris,", "tower", "Tower!", "é", "café", "北京", "大学", "1,000",
             "U.S.", "--", "«", "»", "big", "dog", "cat"]
    seps = [" ", " ", " ", "  ", "\t", "\u00a0", ""]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 4)))


def test_squad_random_corpora_match_official() -> None:
    rng = random.Random(0)
    for _ in range(40):
        refs = {f"q{i}": [random_answer(rng) for _ in range(rng.randint(0, 3))] for i in range(rng.randint(1, 12))}
        preds = {q: (rng.choice(r) if r and rng.random() < 0.3 else random_answer(rng)) for q, r in refs.items()}
        v1_refs = {q: r or ["x"] for q, r in refs.items()}
        assert_exact(M.squad_v1(preds, v1_refs), v1_compute_score(as_dataset(v1_refs, v2=False), preds))
        na_probs = {q: round(rng.random(), 1) for q in preds}
        dataset = as_dataset(refs)
        assert_exact(M.squad_v2(preds, refs), v2_main(dataset, preds))
        assert_exact(M.squad_v2(preds, refs, na_probs=na_probs, na_prob_thresh=0.5),
                     v2_main(dataset, preds, na_probs=na_probs, na_prob_thresh=0.5))


def test_squad_missing_predictions(capsys: pytest.CaptureFixture[str]) -> None:
    preds, refs = split(QA_CASES)
    del preds["articles"], preds["cjk"]
    preds["unknown_id"] = "ignored"
    with pytest.warns(UserWarning, match="2 of 20 questions have no prediction and score 0: 'articles', 'cjk'"):
        ours = M.squad_v1(preds, refs)
    assert ours["missing_predictions"] == 2
    assert_exact(ours, v1_compute_score(as_dataset(refs, v2=False), preds))
    assert "Unanswered question articles will receive score 0." in capsys.readouterr().err
    # The v2.0 script fails on a missing prediction (KeyError in the HasAns split); here it scores 0 and counts,
    # exactly like a prediction that shares no token with any gold answer.
    preds2, refs2 = split({**QA_CASES, **NO_ANSWER_CASES})
    del preds2["partial"], preds2["no_answer_abstained"]
    with pytest.raises(KeyError):
        v2_main(as_dataset(refs2), preds2)
    with pytest.warns(UserWarning, match="2 of 28 questions"):
        ours2 = M.squad_v2(preds2, refs2)
    assert ours2["missing_predictions"] == 2 and ours2["total"] == 28
    junk = {**preds2, "partial": "zzz", "no_answer_abstained": "zzz"}
    assert_exact(ours2, v2_main(as_dataset(refs2), junk))


def test_squad_input_errors() -> None:
    with pytest.raises(ValueError, match="no questions"):
        M.squad_v1({}, {})
    with pytest.raises(ValueError, match="question 'q' has no reference answer"):
        M.squad_v1({"q": "a"}, {"q": []})
    with pytest.raises(TypeError, match="prediction for question 'q' is int"):
        M.squad_v2({"q": 3}, {"q": ["3"]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="dicts keyed by question id"):
        M.squad_v1(["a"], [["a"]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="na_probs has no probability for 1 answered questions, e.g. 'b'"):
        M.squad_v2({"a": "x", "b": "y"}, {"a": ["x"], "b": ["y"]}, na_probs={"a": 0.5})
    # A bare string is one gold answer.
    assert M.squad_v1({"q": "Paris"}, {"q": "paris"})["exact_match"] == 100.0  # type: ignore[dict-item]


def qa_corpus(n: int, seed: int = 0) -> tuple[dict[str, str], dict[str, list[str]]]:
    rng = random.Random(seed)
    refs = {f"q{i}": ([] if i % 4 == 0 else [random_answer(rng) or "x", "big dog"]) for i in range(n)}
    preds = {q: (r[1] if r and rng.random() < 0.5 else rng.choice(["", "dog", "the cat"])) for q, r in refs.items()}
    return preds, refs


def positional(fn: Any, **options: Any) -> Any:
    """A SQuAD metric on parallel lists, so that the generic bootstrap can resample questions."""
    def metric(preds: list[str], refs: list[list[str]]) -> dict[str, float]:
        out = fn({str(i): p for i, p in enumerate(preds)}, {str(i): r for i, r in enumerate(refs)}, **options)
        return {k: v for k, v in out.items() if not (k.endswith("total") or k == "missing_predictions")}
    return metric


@pytest.mark.parametrize("version", [1, 2])
def test_squad_bootstrap_equals_rerunning_the_metric(version: int) -> None:
    preds, refs = qa_corpus(60)
    if version == 1:
        refs = {q: r or ["x"] for q, r in refs.items()}
        ci = M.squad_v1_bootstrap_ci(preds, refs, n=200, seed=5)
        stats = M.prepare_squad_v1(preds, refs)
        point = M.squad_v1(preds, refs)
    else:
        ci = M.squad_v2_bootstrap_ci(preds, refs, n=200, seed=5)
        stats = M.prepare_squad_v2(preds, refs)
        point = M.squad_v2(preds, refs)
        assert set(ci) == {"exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"}
    assert stats.values == {k: point[k] for k in ci}
    generic = M.bootstrap_ci(positional(M.squad_v1 if version == 1 else M.squad_v2), list(preds.values()),
                             list(refs.values()), n=200, seed=5)
    assert set(generic) == set(ci)
    for key, (low, high) in ci.items():
        # Means from a matrix product rather than the scripts' sums: equal up to rounding.
        assert np.allclose(generic[key], (low, high), rtol=0, atol=1e-9), key
        assert low <= point[key] <= high
    assert ci == (M.squad_v1_bootstrap_ci(preds, refs, n=200, seed=5) if version == 1
                  else M.squad_v2_bootstrap_ci(preds, refs, n=200, seed=5))


def test_squad_v2_bootstrap_respects_threshold_and_pairs() -> None:
    preds, refs = qa_corpus(80)
    na_probs = {q: (0.9 if p == "" else 0.2) for q, p in preds.items()}
    stats = M.prepare_squad_v2(preds, refs, na_probs=na_probs, na_prob_thresh=0.5)
    point = M.squad_v2(preds, refs, na_probs=na_probs, na_prob_thresh=0.5)
    assert stats.values == {k: point[k] for k in stats.values}
    perfect = {q: (r[-1] if r else "") for q, r in refs.items()}
    result = M.paired_test(M.prepare_squad_v2(preds, refs), M.prepare_squad_v2(perfect, refs), n=300, seed=0)
    assert result["f1"]["b"] == 100.0 and result["f1"]["p_value"] < 0.05
