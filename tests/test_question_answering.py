"""Extractive QA: windows and labels on literal tokenizer outputs, span post-processing over windows, SQuAD's nested
JSON, `llmtune eval --metric squad` on files, and the pipeline end to end on a tiny BERT through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import minilm_dir, write_jsonl

from llmtune.errors import LlmtuneError
from llmtune.metrics import squad_v1, squad_v2
from llmtune.tasks import question_answering as qa


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_labels_on_literal_tokenizer_outputs(tok: Any) -> None:
    """[CLS] who founded it ? [SEP] ada brown founded it in 1990 . [SEP], as MiniLM's WordPiece tokenizer gives it."""
    context = "Ada Brown founded it in 1990."
    enc = tok(["who founded it?"], [context], return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"][0]]
    seq_ids = enc.sequence_ids(0)
    assert tok.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "[CLS]", "who", "founded", "it", "?", "[SEP]", "ada", "brown", "founded", "it", "in", "1990", ".", "[SEP]"]
    assert offsets == [(0, 0), (0, 3), (4, 11), (12, 14), (14, 15), (0, 0),
                       (0, 3), (4, 9), (10, 17), (18, 20), (21, 23), (24, 28), (28, 29), (0, 0)]
    assert seq_ids == [None, 0, 0, 0, 0, None, 1, 1, 1, 1, 1, 1, 1, None]
    # "Ada Brown" = characters [0, 9): tokens 6..7; "1990" = [24, 28): token 11; no answer: [CLS]
    assert qa.window_labels(offsets, seq_ids, 1, 0, 9, 0) == (6, 7)
    assert qa.window_labels(offsets, seq_ids, 1, 24, 28, 0) == (11, 11)
    assert qa.window_labels(offsets, seq_ids, 1, None, None, 0) == (0, 0)
    # an answer that starts mid-token ("rown") still covers its whole token, as run_qa.py labels it
    assert qa.window_labels(offsets, seq_ids, 1, 5, 9, 0) == (7, 7)


LONG = ("The old mill stood by the river for many years. Farmers brought their grain there every autumn. "
        "The miller kept careful records of every sack. Children played in the meadow behind the barn. "
        "Nobody remembers when the last harvest was milled. The key to the mill is kept by Rosa Vidal. "
        "She lives in the blue house near the bridge.")
QUESTION = "Who keeps the key to the mill?"
ANSWER = "Rosa Vidal"


def _long_windows(tok: Any) -> dict[str, Any]:
    start = LONG.index(ANSWER)
    batch = {"question": [QUESTION], "context": [LONG],
             "answers": [{"text": [ANSWER], "answer_start": [start]}]}
    return qa.windows(batch, [0], tok, "question", "context", "answers", max_len=40, stride=8, keep_offsets=True)


def test_windows_put_the_label_in_the_window_that_holds_the_answer(tok: Any) -> None:
    feats = _long_windows(tok)
    n = len(feats["input_ids"])
    assert n >= 3 and feats["example"] == [0] * n
    holding = [w for w in range(n) if feats["start_positions"][w] != feats["cls_index"][w]]
    assert holding, "some window must hold the answer"
    assert 0 not in holding  # the first window ends long before the answer
    for w in range(n):
        s, e = feats["start_positions"][w], feats["end_positions"][w]
        if w in holding:
            assert tok.convert_ids_to_tokens(feats["input_ids"][w][s:e + 1]) == ["rosa", "vidal"]
            offs = feats["offsets"][w]
            assert LONG[offs[s][0]:offs[e][1]] == ANSWER
        else:
            assert s == e == feats["cls_index"][w] == 0
        # question and special tokens are outside the context
        q_len = len(tok(QUESTION, add_special_tokens=False)["input_ids"])
        assert all(o == [-1, -1] for o in feats["offsets"][w][:q_len + 2])
    # consecutive windows overlap by the stride
    first, second = feats["offsets"][0], feats["offsets"][1]
    ctx_first = [o for o in first if o[0] >= 0]
    ctx_second = [o for o in second if o[0] >= 0]
    assert ctx_first[-8:] == ctx_second[:8]


def test_best_answer_over_windows_from_hand_made_logits(tok: Any) -> None:
    import numpy as np

    feats = _long_windows(tok)
    n = len(feats["input_ids"])
    w_ans = next(w for w in range(n) if feats["start_positions"][w] != feats["cls_index"][w])
    wins = []
    for w in range(n):
        length = len(feats["input_ids"][w])
        start, end = np.zeros(length, dtype=np.float32), np.zeros(length, dtype=np.float32)
        if w == w_ans:
            start[feats["start_positions"][w]] = 6.0
            end[feats["end_positions"][w]] = 6.0
        if w == 0:  # a decoy in the first window, scored lower; and a high score on a question token (not context)
            ctx = [k for k, o in enumerate(feats["offsets"][0]) if o[0] >= 0]
            start[ctx[2]], end[ctx[3]] = 5.0, 5.0
            start[1], end[2] = 50.0, 50.0
        # padding as the gather adds it (-100 offsets and logits) must not change anything
        pad = 7
        wins.append((np.concatenate([start, np.full(pad, -100.0)]), np.concatenate([end, np.full(pad, -100.0)]),
                     np.concatenate([np.array(feats["offsets"][w]), np.full((pad, 2), -100)]), 0))
    ans = qa.best_answer(LONG, wins, n_best_size=20, max_answer_length=30)
    start_char = LONG.index(ANSWER)
    assert (ans["text"], ans["start"], ans["end"]) == (ANSWER, start_char, start_char + len(ANSWER))
    assert 0.5 < ans["score"] < 1.0  # softmax over the n best: the decoy takes a share
    # spans longer than max_answer_length are not candidates: a 1-token limit cannot give "Rosa Vidal"
    assert qa.best_answer(LONG, wins, 20, 1)["text"] != ANSWER
    # v2: the null score ([CLS] of the window where it is smallest) against the threshold
    null_wins = [(s.copy(), e.copy(), o, c) for s, e, o, c in wins]
    for s, e, _, _ in null_wins:
        s[0], e[0] = 8.0, 8.0  # null score 16 in every window; best span 12: diff 4
    v2 = qa.best_answer(LONG, null_wins, 20, 30, version_2_with_negative=True, null_score_diff_threshold=0.0)
    assert v2["text"] == "" and v2["start"] is None and v2["null_score_diff"] == pytest.approx(4.0)
    v2 = qa.best_answer(LONG, null_wins, 20, 30, version_2_with_negative=True, null_score_diff_threshold=5.0)
    assert v2["text"] == ANSWER


SQUAD_NESTED = {
    "version": "1.1",
    "data": [{"title": "Mill", "paragraphs": [
        {"context": LONG, "qas": [
            {"id": "q1", "question": QUESTION, "answers": [{"text": ANSWER, "answer_start": LONG.index(ANSWER)}]},
            {"id": "q2", "question": "Where does she live?",
             "answers": [{"text": "in the blue house near the bridge", "answer_start": LONG.index("in the blue")},
                         {"text": "the blue house", "answer_start": LONG.index("the blue")}]}]},
        {"context": "Grain came every autumn.", "qas": [
            {"id": "q3", "question": "When did grain come?", "answers": [{"text": "every autumn", "answer_start": 11}]},
            {"id": "q4", "question": "Who milled it?", "answers": [], "is_impossible": True}]}]}],
}


def test_nested_squad_json_is_read_as_flat_rows(tmp_path: Path) -> None:
    from llmtune import data
    from llmtune.recipe import build_recipe

    path = tmp_path / "train.json"
    path.write_text(json.dumps(SQUAD_NESTED), encoding="utf-8")
    flat = tmp_path / "eval.json"  # a plain .json list of flat rows still reads as before
    flat.write_text(json.dumps([{"id": "e1", "context": "Ada came.", "question": "Who came?",
                                 "answers": {"text": ["Ada"], "answer_start": [0]}}]), encoding="utf-8")
    recipe = build_recipe({"task": "question_answering", "model": {"name": "x"},
                           "data": {"train_file": str(path), "eval_file": str(flat),
                                    "version_2_with_negative": True}})
    splits = data.load_splits(recipe, validate=lambda s: qa.validate(recipe, s))
    rows = splits["train"].dataset
    assert rows["id"] == ["q1", "q2", "q3", "q4"]
    assert rows["title"] == ["Mill"] * 4
    assert rows[1]["answers"] == {"text": ["in the blue house near the bridge", "the blue house"],
                                  "answer_start": [LONG.index("in the blue"), LONG.index("the blue")]}
    assert rows[3]["answers"] == {"text": [], "answer_start": []}
    assert splits["eval"].dataset["id"] == ["e1"]
    # SQuAD v1 refuses the unanswerable question, naming file and row
    v1 = build_recipe({"task": "question_answering", "model": {"name": "x"},
                       "data": {"train_file": str(path), "eval_file": str(flat)}})
    with pytest.raises(LlmtuneError, match=r"train.json: row 4: .*version_2_with_negative"):
        data.load_splits(v1, validate=lambda s: qa.validate(v1, s))


def test_eval_metric_squad_on_files(tmp_path: Path, cli: Any) -> None:
    refs = tmp_path / "dev.json"
    refs.write_text(json.dumps(SQUAD_NESTED), encoding="utf-8")
    preds = {"q1": "rosa vidal", "q2": "blue house", "q3": "autumn", "q4": ""}
    (tmp_path / "preds.json").write_text(json.dumps(preds), encoding="utf-8")
    out = tmp_path / "res.json"
    res = cli("eval", "--metric", "squad", "--predictions", tmp_path / "preds.json", "--references", refs,
              "-o", out, "--bootstrap", "50")
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())["results"]
    gold = {"q1": [ANSWER], "q2": ["in the blue house near the bridge", "the blue house"],
            "q3": ["every autumn"], "q4": []}
    want = squad_v2(preds, gold)  # q4 has no answer: v2.0 scoring
    assert got["exact"]["value"] == want["exact"] and got["f1"]["value"] == want["f1"]
    assert got["HasAns_f1"]["value"] == want["HasAns_f1"] and got["NoAns_exact"]["value"] == 100.0
    assert got["f1"]["ci_low"] <= got["f1"]["value"] <= got["f1"]["ci_high"]
    # v1.1 on flat JSONL references, predictions as JSONL records
    flat = write_jsonl(tmp_path / "refs.jsonl", [{"id": "a", "answers": {"text": ["the Blue House"], "answer_start": [0]}},
                                                 {"id": "b", "answers": {"text": ["x y z"], "answer_start": [0]}}])
    recs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "blue house."}, {"id": "b", "prediction": "y"}])
    res = cli("eval", "--metric", "squad", "--predictions", recs, "--references", flat, "-o", out, "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())["results"]
    want = squad_v1({"a": "blue house.", "b": "y"}, {"a": ["the Blue House"], "b": ["x y z"]})
    assert got["exact_match"]["value"] == want["exact_match"] == 50.0
    assert got["f1"]["value"] == want["f1"] == pytest.approx(100 * (1 + 0.5) / 2)


def _qa_recipe(tmp_path: Path, model: Path, **data: Any) -> Path:
    recipe = {
        "task": "question_answering",
        "model": {"name": str(model)},
        "data": {"dataset": "llmtune:qa", "max_train_samples": 24, "max_eval_samples": 12, "doc_stride": 16, **data},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "per_device_train_batch_size": 8,
                  "per_device_eval_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1,
                  "max_seq_length": 64},
    }
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_finetune_predict_eval_through_the_cli(tmp_path: Path, tiny_bert: Path, cli: Any) -> None:
    res = cli("finetune", _qa_recipe(tmp_path, tiny_bert))
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    results = json.loads((run / "eval_results.json").read_text())
    info = json.loads((run / "llmtune_info.json").read_text())
    assert info["task"] == "question_answering" and info["doc_stride"] == 16 and info["max_seq_length"] == 64
    assert json.loads((run / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    eval_rows = [json.loads(line) for line in
                 (Path(qa.__file__).parent.parent / "datasets" / "qa" / "eval.jsonl").read_text().splitlines()][:12]
    assert [r["id"] for r in records] == [r["id"] for r in eval_rows]  # one record per question, in split order
    assert results["eval_samples"] > 12  # windows: the 64-token budget splits some passages
    for rec, row in zip(records, eval_rows, strict=True):
        assert rec["question"] == row["question"] and rec["answers"] == row["answers"]["text"]
        if rec["prediction"]:
            assert row["context"][rec["start"]:rec["end"]] == rec["prediction"]
    # the reported metrics are the official SQuAD v1.1 scores of predictions.jsonl
    want = squad_v1({r["id"]: r["prediction"] for r in records}, {r["id"]: r["answers"] for r in records})
    assert results["eval_exact_match"] == want["exact_match"]
    assert results["eval_f1"] == want["f1"]
    assert results["eval_loss"] > 0

    # predict: the same answers for the same rows
    inp = write_jsonl(tmp_path / "inputs.jsonl", [{"id": r["id"], "question": r["question"], "context": r["context"]}
                                                   for r in eval_rows[:5]])
    out = tmp_path / "pred.jsonl"
    res = cli("predict", run, "--input", inp, "-o", out)
    assert res.exit_code == 0, res.output
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["prediction"] for p in predicted] == [r["prediction"] for r in records[:5]]
    assert [(p["start"], p["end"]) for p in predicted] == [(r["start"], r["end"]) for r in records[:5]]

    # llmtune eval --model RUN: the run's own numbers again
    res = cli("eval", "--model", run, "--output-dir", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]
    (setting,) = ev.values()
    assert setting["f1"]["value"] == results["eval_f1"]
    assert setting["exact_match"]["value"] == results["eval_exact_match"]

    # and the file scorer agrees on predictions.jsonl against the eval rows
    refs = write_jsonl(tmp_path / "refs.jsonl", eval_rows)
    res = cli("eval", "--metric", "squad", "--predictions", run / "predictions.jsonl", "--references", refs,
              "-o", tmp_path / "s.json", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    scored = json.loads((tmp_path / "s.json").read_text())["results"]
    assert scored["f1"]["value"] == results["eval_f1"]


def test_shots_prompting_is_refused_clearly() -> None:
    from llmtune.evaluation import check_promptable
    from llmtune.recipe import build_recipe

    recipe = build_recipe({"task": "question_answering", "model": {"name": "x"}, "data": {"train_file": "t.jsonl"}})
    with pytest.raises(LlmtuneError, match="--shots prompting does not apply"):
        check_promptable(recipe)
