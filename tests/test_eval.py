"""`llmtune eval` through the CLI: file scoring agrees with the reference packages; model evaluation agrees
with what training reported; few-shot prompting runs on a tiny decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import minilm_dir, tiny_recipe, write_jsonl

PREDS = ["The cat sat on the mat.", "Ein Hund läuft im Park.", "", "Prices rose 3% in May; analysts expected 2%.",
         "naïve café owners agree", "results improve with more data"]
REFS = [["A cat was sitting on the mat.", "The cat sat on a mat."], ["Ein Hund rennt im Park."],
        ["Nothing to see here."], ["Prices rose by 3 percent in May.", "In May, prices went up 3%.", "3% rise"],
        ["naive cafe owners agree"], ["More data improves results."]]


def test_file_scoring_matches_reference_packages(tmp_path: Path, cli) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = write_jsonl(tmp_path / "p.jsonl", [{"prediction": p} for p in PREDS])
    refs = write_jsonl(tmp_path / "r.jsonl", [{"references": r} for r in REFS])
    out = tmp_path / "res.json"
    res = cli("eval", "--metric", "rouge", "--metric", "bleu,chrf", "--predictions", preds, "--references", refs,
              "--reference-field", "references", "--output", out, "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(scorer.score_multi(r, p)[key].fmeasure for p, r in zip(PREDS, REFS, strict=True)) / len(PREDS)
        assert got["results"][key]["value"] == pytest.approx(expected, abs=1e-9)
    streams = [[r[i] if i < len(r) else None for r in REFS] for i in range(max(map(len, REFS)))]
    assert got["results"]["bleu"]["value"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, streams).score, abs=1e-9)
    assert got["results"]["chrf"]["value"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, streams).score, abs=1e-9)
    for key, r in got["results"].items():
        assert r["ci_low"] <= r["value"] <= r["ci_high"], key
    for key in ("config", "n_samples", "versions", "git_hash", "total_evaluation_time_seconds"):
        assert key in got
    assert "nrefs:var" in got["signatures"]["bleu"]


def test_file_scoring_errors(tmp_path: Path, cli) -> None:
    preds = tmp_path / "p.txt"
    preds.write_text("a\nb\n")
    refs = tmp_path / "r.txt"
    refs.write_text("a\nb\nc\n")
    res = cli("eval", "--metric", "bleu", "--predictions", preds, "--references", refs)
    assert res.exit_code == 2 and "has 2 predictions but" in res.stderr and "3 references" in res.stderr
    res = cli("eval", "--metric", "blue", "--predictions", preds, "--references", preds)
    assert res.exit_code == 2 and "unknown metric 'blue'" in res.stderr
    res = cli("eval", "--metric", "perplexity", "--predictions", preds, "--references", preds)
    assert res.exit_code == 2 and "needs a model" in res.stderr


def test_model_eval_reproduces_training_eval(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out)
    assert cli("finetune", recipe).exit_code == 0
    res = cli("eval", "--model", out, "--output-dir", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "ev" / "results.json").read_text())
    trained = json.loads((out / "eval_results.json").read_text())
    (setting,) = got["results"].values()
    assert setting["accuracy"]["value"] == pytest.approx(trained["eval_accuracy"], abs=1e-9)
    assert setting["loss"]["value"] == pytest.approx(trained["eval_loss"], abs=1e-6)
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()) == 4


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_zero_and_few_shot_side_by_side_with_a_finetuned_run(tmp_path: Path, tiny_bert: Path, tiny_llama: Path,
                                                            sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, tmp_path / "run")
    assert cli("finetune", recipe).exit_code == 0
    res = cli("eval", "--model", tiny_llama, "--recipe", recipe, "--shots", "0,2", "--finetuned", tmp_path / "run",
              "--output-dir", tmp_path / "cmp", "--bootstrap", "100")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "cmp" / "results.json").read_text())
    names = list(got["results"])
    assert names[0].startswith("0-shot") and names[1].startswith("2-shot") and names[2].startswith("fine-tuned")
    for setting in got["results"].values():
        assert 0 <= setting["accuracy"]["value"] <= 1
    assert got["config"]["shots"] == [0, 2] and got["config"]["seed"] == 0
    rows = [json.loads(x) for x in (tmp_path / "cmp" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["prediction"] in ("positive", "negative") for r in rows)
    # the same seed draws the same shots: same numbers
    res2 = cli("eval", "--model", tiny_llama, "--recipe", recipe, "--shots", "2", "--output-dir", tmp_path / "again",
               "--bootstrap", "100")
    assert res2.exit_code == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert list(again["results"].values())[0] == got["results"][names[1]]


def test_shots_on_generation_task(tmp_path: Path, tiny_llama: Path, cli) -> None:
    rows = [{"document": f"The council met on day {i} and approved the new park budget.",
             "summary": f"Council approves park budget on day {i}."} for i in range(8)]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    import yaml

    recipe = tmp_path / "sum.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "summarization", "model": {"name": str(tiny_llama)},
        "data": {"train_file": str(data), "eval_file": str(data), "source_column": "document",
                 "target_column": "summary", "max_eval_samples": 3},
        "generation": {"max_new_tokens": 5}}))
    res = cli("eval", "--model", tiny_llama, "--recipe", recipe, "--shots", "1", "--output-dir", tmp_path / "o",
              "--bootstrap", "50")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "rougeL" in list(got["results"].values())[0]
