"""Summarization and translation on a tiny T5 (2 layers, d_model 32) built from a config: label masking, the
T5 prefix, multiple references, and both tasks end to end through the CLI, with the reported ROUGE and BLEU
recomputed from predictions.jsonl by rouge_score and sacrebleu directly."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from llmtune.data import Split
from llmtune.errors import LlmtuneError
from llmtune.recipe import build_recipe, load_recipe


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models run many tiny ops: on a busy CPU each op of a 2-thread pool waits for a descheduled thread
    (measured here: 70x slower at load 3.5 on 2 cores), while one thread loses nothing."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seq2seq_recipe(path: Path, model: Path, out: Path, task: str, data: dict[str, Any], **train: Any) -> Path:
    recipe = {
        "task": task,
        "model": {"name": str(model)},
        "data": data,
        "train": {"output_dir": str(out), "max_steps": 8, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 4, "learning_rate": 3e-2, "logging_steps": 2, "eval_steps": 4,
                  "max_source_length": 48, "max_target_length": 16, **train},
        "generation": {"max_new_tokens": 8},
    }
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- units: label masking, prefix, references ---------------------------------------------------


def test_labels_padded_with_minus_100_and_decoder_inputs_shifted(tiny_t5: Path) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from llmtune.tasks import seq2seq

    tok = AutoTokenizer.from_pretrained(tiny_t5)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)
    collate = seq2seq.collator(None, tok, model)  # type: ignore[arg-type]
    batch = collate([{"input_ids": [11, 12, 13, 102], "attention_mask": [1, 1, 1, 1], "labels": [21, 22, 102]},
                     {"input_ids": [11, 102], "attention_mask": [1, 1], "labels": [21, 102]}])
    assert batch["labels"].tolist() == [[21, 22, 102], [21, 102, -100]]
    # decoder inputs: the start token (PAD for T5), then the labels shifted right; -100 never reaches the model
    assert batch["decoder_input_ids"].tolist() == [[0, 21, 22], [0, 21, 102]]
    assert batch["input_ids"].tolist() == [[11, 12, 13, 102], [11, 102, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # padding never counts in the loss: the batch loss is the mean over the 5 real label tokens
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits
        real = torch.tensor([[True, True, True], [True, True, False]])
        targets = batch["labels"][real]
        manual = torch.nn.functional.cross_entropy(logits[real], targets)
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_encode_trains_on_first_reference_without_a_leading_cls(tiny_t5: Path) -> None:
    from transformers import AutoTokenizer

    from llmtune.tasks.seq2seq import _encode, leading_ids_to_drop

    tok = AutoTokenizer.from_pretrained(tiny_t5)
    batch = {"doc": [["first sentence .", "second one ."], "plain text"], "sum": [["alpha", "beta"], "gamma"]}
    drop = leading_ids_to_drop(tok.pad_token_id, tok)  # T5 starts decoding at PAD; WordPiece opens with [CLS]
    assert drop == [tok.pad_token_id, tok.cls_token_id]
    enc = _encode(batch, tokenizer=tok, source_column="doc", source_key=None, target_column="sum", target_key=None,
                  prefix="summarize: ", max_source_length=32, max_target_length=8, drop_leading=drop)
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "summarize : first sentence. second one."
    assert "token_type_ids" not in enc  # T5 has no such input
    assert enc["labels"] == [tok("alpha")["input_ids"][1:], tok("gamma")["input_ids"][1:]]  # first reference, ends
    assert enc["labels"][0][-1] == tok.sep_token_id                                          # with [SEP] (= EOS)


def test_bert2bert_from_one_bert_checkpoint(tiny_bert: Path) -> None:
    """The minilm-l6-bert2bert recipe path on a tiny BERT: cross-attention copied, encoder frozen, tokens set."""
    import torch
    from transformers import AutoTokenizer

    from llmtune.tasks import seq2seq

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = seq2seq.bert2bert(str(tiny_bert), decoder_layers=1)
    seq2seq.fix_special_tokens(model, tok)
    assert len(model.decoder.bert.encoder.layer) == 1 and len(model.encoder.encoder.layer) == 2
    layer = model.decoder.bert.encoder.layer[0]
    assert torch.equal(layer.crossattention.self.query.weight, layer.attention.self.query.weight)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    cfg, gen = model.config, model.generation_config
    assert (cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id) == (tok.cls_token_id, 0, tok.sep_token_id)
    assert (gen.decoder_start_token_id, gen.eos_token_id) == (tok.cls_token_id, tok.sep_token_id)
    # [CLS] opens every WordPiece text and is this model's decoder start: it must not be a label
    assert seq2seq.leading_ids_to_drop(cfg.decoder_start_token_id, tok) == [tok.cls_token_id]
    batch = seq2seq.collator(None, tok, model)([{"input_ids": [101, 7, 8, 102], "attention_mask": [1, 1, 1, 1],
                                                 "labels": [9, 10, 102]}])  # type: ignore[arg-type]
    assert batch["decoder_input_ids"].tolist() == [[tok.cls_token_id, 9, 10]]
    assert torch.isfinite(model(**batch).loss)
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3)
    assert out[0, 0] == tok.cls_token_id and out.shape[1] <= 4


def _recipe(task: str, **data: Any) -> Any:
    return build_recipe({"task": task, "model": {"name": "x"}, "data": {"train_file": "x.jsonl", **data}})


def test_t5_prefix_default_warns_and_explicit_prefix_wins(caplog: pytest.LogCaptureFixture) -> None:
    from llmtune.tasks.seq2seq import source_prefix

    with caplog.at_level(logging.WARNING, logger="llmtune"):
        assert source_prefix(_recipe("summarization"), "t5") == "summarize: "
    assert "data.source_prefix is not set" in caplog.text and "summarize: " in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        r = _recipe("translation", source_lang="en", target_lang="de")
        assert source_prefix(r, "t5") == "translate English to German: "
        assert source_prefix(_recipe("translation", source_lang="en", target_lang="xx"), "mt5") == \
            "translate English to xx: "
    assert "translate English to German: " in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        assert source_prefix(_recipe("summarization", source_prefix=""), "t5") == ""
        assert source_prefix(_recipe("summarization", source_prefix="tl;dr: "), "t5") == "tl;dr: "
        assert source_prefix(_recipe("summarization"), "bart") == ""
    assert caplog.text == ""


def test_multi_reference_validation_and_scoring(tmp_path: Path) -> None:
    import datasets
    from rouge_score import rouge_scorer

    from llmtune.tasks.seq2seq import references, score_texts, validate

    r = _recipe("summarization", source_column="doc", target_column="sum")
    good = datasets.Dataset.from_list([{"doc": "a b c", "sum": ["the cat sat", "a dog ran"]},
                                       {"doc": "d e f", "sum": ["one more"]}])
    validate(r, Split("eval", good, "eval.jsonl"))
    assert [references(v) for v in good["sum"]] == [["the cat sat", "a dog ran"], ["one more"]]
    for rows, msg in (([{"doc": "a", "sum": ["x"]}, {"doc": "b", "sum": []}], "row 2: target column 'sum'"),
                      ([{"doc": "a", "sum": ["x"]}, {"doc": "b", "sum": ["ok", " "]}],
                       "row 2: target column 'sum' (data.target_column) has an empty reference"),
                      ([{"doc": "a", "sum": 5}], "row 1: target column 'sum' (data.target_column) holds a number")):
        with pytest.raises(LlmtuneError, match=re.escape(msg)):
            validate(r, Split("eval", datasets.Dataset.from_list(rows), "eval.jsonl"))
    ds = datasets.Dataset.from_list([{"doc": "a", "sum": "x"}, {"doc": "", "sum": "y"}])
    with pytest.raises(LlmtuneError, match="eval.jsonl: row 2: source column 'doc'"):
        validate(r, Split("eval", ds, "eval.jsonl"))
    # several references: ROUGE takes the best one per example, as rouge_score's score_multi does
    preds = ["a dog ran fast", "nothing in common"]
    refs = [["the cat sat", "a dog ran"], ["one more"]]
    got = score_texts(["rouge"], preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    want = sum(scorer.score_multi(t, p)["rouge1"].fmeasure for p, t in zip(preds, refs, strict=True)) / 2
    assert got["rouge1"] == pytest.approx(100 * want, abs=1e-9)


# ---- end to end through the CLI -----------------------------------------------------------------


def recompute_rouge(records: list[dict[str, Any]]) -> dict[str, float]:
    """ROUGE straight from rouge_score: best reference per example, mean F x 100; rougeLsum on split sentences."""
    from rouge_score import rouge_scorer

    from llmtune.metrics import sentence_split

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    lsum = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    sums = dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.0)
    for rec in records:
        s = scorer.score_multi(rec["references"], rec["prediction"])
        for k in ("rouge1", "rouge2", "rougeL"):
            sums[k] += s[k].fmeasure
        sums["rougeLsum"] += lsum.score_multi([sentence_split(t) for t in rec["references"]],
                                              sentence_split(rec["prediction"]))["rougeLsum"].fmeasure
    return {k: 100 * v / len(records) for k, v in sums.items()}


def test_summarization_end_to_end(tmp_path: Path, tiny_t5: Path, cli) -> None:
    out = tmp_path / "run"
    data = {"dataset": "llmtune:summarize", "source_column": "document", "target_column": "summary",
            "max_train_samples": 24, "max_eval_samples": 6}
    recipe = seq2seq_recipe(tmp_path / "r.yaml", tiny_t5, out, "summarization", data)
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "recipe.yaml",
                 "eval_results.json", "all_results.json", "predictions.jsonl", "llmtune_info.json", "COMPLETE"):
        assert (out / name).exists(), name
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len"):
        assert isinstance(results[key], float), key
    assert results["eval_loss"] > 0 and 0 < results["eval_gen_len"] <= 8
    log = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in log if "eval_rougeL" in r] == [4, 8]  # generate-then-score during training too
    records = read_jsonl(out / "predictions.jsonl")
    bundled = read_jsonl(REPO / "llmtune" / "datasets" / "summarize" / "eval.jsonl")[:6]
    assert [r["source"] for r in records] == [b["document"] for b in bundled]
    assert [r["references"] for r in records] == [b["summary"] if isinstance(b["summary"], list)
                                                  else [b["summary"]] for b in bundled]
    assert any(len(r["references"]) == 2 for r in records)  # the multi-reference path is exercised
    assert all(isinstance(r["prediction"], str) for r in records)
    assert results["eval_rouge1"] > 0  # the model says some words of the references, so the check below has teeth
    for key, value in recompute_rouge(records).items():
        assert abs(results[f"eval_{key}"] - value) < 1e-6, key
    info = json.loads((out / "llmtune_info.json").read_text())
    assert info["task"] == "summarization" and info["source_prefix"] == "summarize: "  # a T5: default prefix
    assert info["metric_signatures"]["rouge"].startswith("rouge|nrefs:var|")

    # predict with the run's generation settings, overridable
    inp = tmp_path / "new.txt"
    inp.write_text("The town pool opens on June 1 with new hours.\nA storm closes the harbor road.\n")
    res = cli("predict", out, "--input", inp, "--set", "generation.num_beams=2", "--set", "generation.max_new_tokens=5")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [r["source"] for r in rows] == ["The town pool opens on June 1 with new hours.",
                                           "A storm closes the harbor road."]
    assert all(isinstance(r["prediction"], str) for r in rows)


def test_two_processes_score_every_eval_row_once(tmp_path: Path, tiny_t5: Path, cli) -> None:
    """7 eval rows, 2 per batch, 2 processes: generation is sharded unevenly, yet each row is scored once, in order,
    and the numbers are the 1-process numbers."""
    data = {"dataset": "llmtune:summarize", "source_column": "document", "target_column": "summary",
            "max_train_samples": 16, "max_eval_samples": 7}
    recipe = seq2seq_recipe(tmp_path / "r.yaml", tiny_t5, tmp_path / "one", "summarization", data,
                            max_steps=4, per_device_eval_batch_size=2)
    assert cli("finetune", recipe).exit_code == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "llmtune", "finetune", str(recipe), f"train.output_dir={tmp_path / 'two'}",
                          "train.per_device_train_batch_size=2", "--num-processes", "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    one_res, two_res = (json.loads((tmp_path / d / "eval_results.json").read_text()) for d in ("one", "two"))
    for key in ("eval_rouge1", "eval_rougeL", "eval_gen_len"):
        assert one_res[key] == two_res[key], key
    assert abs(one_res["eval_loss"] - two_res["eval_loss"]) < 1e-5
    one, two_rows = read_jsonl(tmp_path / "one" / "predictions.jsonl"), read_jsonl(tmp_path / "two" / "predictions.jsonl")
    assert len(two_rows) == 7 and two_rows == one
    for key, value in recompute_rouge(two_rows).items():
        assert abs(two_res[f"eval_{key}"] - value) < 1e-6, key


def _gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


EN = ["a man rides a bike", "two dogs play in the snow", "a woman reads a book", "children run on the beach",
      "a cat sleeps on a chair", "a boy kicks a ball", "people walk in the park", "a girl eats an apple"]
DE = ["ein mann fährt fahrrad", "zwei hunde spielen im schnee", "eine frau liest ein buch",
      "kinder laufen am strand", "eine katze schläft auf einem stuhl", "ein junge tritt einen ball",
      "leute gehen im park", "ein mädchen isst einen apfel"]


def test_translation_end_to_end_from_line_aligned_gzip_files(tmp_path: Path, tiny_t5: Path, cli) -> None:
    import sacrebleu

    for split, (en, de) in {"train": (EN, DE), "val": (EN[:5], DE[:5])}.items():
        _gz(tmp_path / f"{split}.en.gz", en)
        _gz(tmp_path / f"{split}.de.gz", de)
    out = tmp_path / "run"
    data = {"train_file": str(tmp_path / "train.{lang}.gz"), "eval_file": str(tmp_path / "val.{lang}.gz"),
            "source_lang": "en", "target_lang": "de"}
    recipe = seq2seq_recipe(tmp_path / "r.yaml", tiny_t5, out, "translation", data, max_steps=16, learning_rate=6e-2)
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("eval_loss", "eval_bleu", "eval_chrf", "eval_gen_len"):
        assert isinstance(results[key], float), key
    records = read_jsonl(out / "predictions.jsonl")
    assert [r["source"] for r in records] == EN[:5] and [r["references"] for r in records] == [[d] for d in DE[:5]]
    preds = [r["prediction"] for r in records]
    assert results["eval_bleu"] > 0 and results["eval_chrf"] > 0  # some words right: the checks below have teeth
    bleu = sacrebleu.metrics.BLEU()
    assert abs(results["eval_bleu"] - bleu.corpus_score(preds, [[r["references"][0] for r in records]]).score) < 1e-6
    chrf = sacrebleu.metrics.CHRF().corpus_score(preds, [[r["references"][0] for r in records]]).score
    assert abs(results["eval_chrf"] - chrf) < 1e-6
    info = json.loads((out / "llmtune_info.json").read_text())
    assert info["metric_signatures"]["bleu"] == str(bleu.get_signature().format())
    assert info["source_prefix"] == "translate English to German: "


def test_unknown_eval_metric_is_named(tmp_path: Path, tiny_t5: Path, cli) -> None:
    data = {"dataset": "llmtune:summarize", "source_column": "document", "target_column": "summary"}
    recipe = seq2seq_recipe(tmp_path / "r.yaml", tiny_t5, tmp_path / "run", "summarization", data)
    res = cli("finetune", recipe, "eval.metrics=[rogue]")
    assert res.exit_code == 2 and "eval.metrics: 'rogue'" in res.stderr and "did you mean 'rouge'" in res.stderr


@pytest.mark.parametrize("name", ["summarize_tiny", "summarize_t5", "translate_t5"])
def test_shipped_recipes_parse_and_start_with_their_command(name: str) -> None:
    path = REPO / "recipes" / f"{name}.yaml"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# llmtune finetune recipes/{name}.yaml"
    recipe = load_recipe(path)
    assert recipe.task in ("summarization", "translation") and recipe.description
