"""`llmtune eval` through the CLI: file scoring agrees with the reference packages; model evaluation agrees
with what training reported; few-shot prompting runs on a tiny decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe, write_jsonl

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


def _tiny_decoder(folder: Path, chat_template: bool) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer, with or without its chat template (ChatML:
    <|im_end|> ends each turn)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmtune.models import ALIASES

    smol = ALIASES["smollm2-135m"][0]()
    tok = AutoTokenizer.from_pretrained(smol.path, gguf_file=smol.gguf_file)
    if not chat_template:  # a base model's tokenizer: prompted plain
        tok.chat_template = None
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoder whose tokenizer has no chat template."""
    return _tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), chat_template=False)


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_decoder(tmp_path_factory.mktemp("tiny-chat"), chat_template=True)


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
        for key, r in setting.items():  # every column carries its intervals, the fine-tuned run's loss included
            assert r["ci_low"] is not None and r["ci_low"] <= r["value"] <= r["ci_high"], key
    assert got["config"]["shots"] == [0, 2] and got["config"]["seed"] == 0
    assert got["config"]["prompt_format"] == "plain"  # this tokenizer has no chat template
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


def test_chat_prompt_is_lm_evals_multiturn_layout(tiny_chat: Path) -> None:
    from transformers import AutoTokenizer

    from llmtune.evaluation import chat_messages, render_chat_prompt, turn_end
    from llmtune.recipe import build_recipe

    tok = AutoTokenizer.from_pretrained(tiny_chat)
    recipe = build_recipe({"task": "classification", "model": {"name": "x"}, "data": {"train_file": "t.jsonl"}})
    shots = [("great food", "positive"), ("rude staff", "negative")]
    msgs = chat_messages(recipe, shots, "a clever film", ["negative", "positive"])
    assert render_chat_prompt(tok, msgs) == (
        "<|im_start|>system\nClassify each text as one of: negative, positive.<|im_end|>\n"
        "<|im_start|>user\nText: great food\nLabel:<|im_end|>\n<|im_start|>assistant\npositive<|im_end|>\n"
        "<|im_start|>user\nText: rude staff\nLabel:<|im_end|>\n<|im_start|>assistant\nnegative<|im_end|>\n"
        "<|im_start|>user\nText: a clever film\nLabel:<|im_end|>\n<|im_start|>assistant\n")
    assert turn_end(tok) == ([tok.convert_tokens_to_ids("<|im_end|>")], "")
    # a template that refuses a system turn gets the task line at the head of the first user turn
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                         "{% endif %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_chat_prompt(tok, chat_messages(recipe, [], "a clever film", ["negative", "positive"])) == \
        "<user>Classify each text as one of: negative, positive.\n\nText: a clever film\nLabel:</s><assistant>"
    assert turn_end(tok) == ([], "</s>")


def _direct_loglik(model, tokenizer, context: str, continuation: str) -> float:  # noqa: ANN001
    import torch

    ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return float(sum(logp[i - 1, ids[i]] for i in range(n_ctx, len(ids))))


def test_shots_chat_by_default_plain_on_request(tmp_path: Path, tiny_chat: Path, tiny_llama: Path, sentiment_files,
                                               cli) -> None:
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtune.evaluation import chat_messages, render_chat_prompt

    train, eval_ = sentiment_files
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "classification", "model": {"name": str(tiny_chat)},
                                      "data": {"train_file": str(train), "eval_file": str(eval_)}}))
    res = cli("eval", "--model", tiny_chat, "--recipe", recipe, "--shots", "0,1", "--output-dir", tmp_path / "chat",
              "--bootstrap", "50")
    assert res.exit_code == 0, res.output
    assert "(chat)" in res.stdout
    got = json.loads((tmp_path / "chat" / "results.json").read_text())
    assert got["config"]["prompt_format"] == "chat"
    assert [n.split(" ")[0] for n in got["results"]] == ["0-shot", "1-shot"]
    assert all(n.endswith("(chat)") for n in got["results"])
    for setting in got["results"].values():
        for key, r in setting.items():
            assert r["ci_low"] is not None and r["ci_low"] <= r["value"] <= r["ci_high"], key
    # each label is scored right after the rendered assistant header (lm-eval: no target delimiter under a template)
    rows = [json.loads(x) for x in (tmp_path / "chat" / "predictions.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(tiny_chat)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat).eval()
    from llmtune.recipe import load_recipe

    r = load_recipe(recipe)
    prompt = render_chat_prompt(tok, chat_messages(r, [], rows[0]["text"], ["negative", "positive"]))
    import math

    lls = [_direct_loglik(model, tok, prompt, c) for c in ("negative", "positive")]
    z = math.log(sum(math.exp(v) for v in lls))
    assert rows[0]["probabilities"]["positive"] == pytest.approx(math.exp(lls[1] - z), abs=2e-6)

    res = cli("eval", "--model", tiny_chat, "--recipe", recipe, "--shots", "0", "--prompt-format", "plain",
              "--output-dir", tmp_path / "plain", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert got["config"]["prompt_format"] == "plain" and list(got["results"]) == [f"0-shot {tiny_chat} (plain)"]
    # a tokenizer without a chat template is prompted plain, and chat is refused for it
    res = cli("eval", "--model", tiny_llama, "--recipe", recipe, "--shots", "0", "--output-dir", tmp_path / "nt",
              "--bootstrap", "0")
    assert res.exit_code == 0 and json.loads((tmp_path / "nt" / "results.json").read_text())["config"][
        "prompt_format"] == "plain"
    res = cli("eval", "--model", tiny_llama, "--recipe", recipe, "--shots", "0", "--prompt-format", "chat",
              "--output-dir", tmp_path / "refused")
    assert res.exit_code == 2 and "has no chat template" in res.stderr and not (tmp_path / "refused").exists()


def test_chat_generation_stops_at_the_end_of_the_turn(tmp_path: Path, tiny_chat: Path, cli) -> None:
    import yaml

    rows = [{"document": f"The council met on day {i} and approved the new park budget.",
             "summary": f"Council approves park budget on day {i}."} for i in range(8)]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    recipe = tmp_path / "sum.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "summarization", "model": {"name": str(tiny_chat)},
        "data": {"train_file": str(data), "eval_file": str(data), "source_column": "document",
                 "target_column": "summary", "max_eval_samples": 3},
        "generation": {"max_new_tokens": 6}}))
    res = cli("eval", "--model", tiny_chat, "--recipe", recipe, "--shots", "1", "--output-dir", tmp_path / "o",
              "--bootstrap", "50")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "o" / "results.json").read_text())
    (setting,) = got["results"].values()
    assert setting["rougeL"]["ci_low"] is not None
    assert all("<|im" not in r["prediction"] for r in
               map(json.loads, (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()))


def test_finetuned_causal_lm_column_carries_intervals(tmp_path: Path, tiny_chat: Path, cli) -> None:
    import yaml

    rows = [{"instruction": f"Say the number {i}.", "output": f"The number is {i}."} for i in range(12)]
    data = write_jsonl(tmp_path / "i.jsonl", rows)
    recipe = tmp_path / "clm.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "causal_lm", "model": {"name": str(tiny_chat)},
        "data": {"train_file": str(data), "eval_file": str(data), "format": "instruction",
                 "prompt_column": "instruction", "completion_column": "output"},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 6, "max_seq_length": 64, "learning_rate": 1e-3},
        "eval": {"generate": True}, "generation": {"max_new_tokens": 4}}))
    assert cli("finetune", recipe).exit_code == 0
    res = cli("eval", "--model", tiny_chat, "--recipe", recipe, "--shots", "0", "--finetuned", tmp_path / "run",
              "--output-dir", tmp_path / "cmp", "--bootstrap", "100")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "cmp" / "results.json").read_text())
    base, tuned = got["results"].values()
    assert {"loss", "perplexity", "rougeL", "exact_match"} <= set(tuned)
    for setting in (base, tuned):
        for key, r in setting.items():
            assert r["ci_low"] is not None and r["ci_low"] <= r["value"] <= r["ci_high"], key
    trained = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert tuned["loss"]["value"] == pytest.approx(trained["eval_loss"], abs=1e-6)


def test_loss_interval_is_the_token_weighted_ratio() -> None:
    import numpy as np

    from llmtune import metrics as M

    losses, tokens = [1.0, 3.0, 2.0], [1, 3, 2]
    stats = M.prepare_loss(losses, tokens, perplexity=True)
    assert stats.values["loss"] == pytest.approx((1 + 9 + 4) / 6)
    assert stats.values["perplexity"] == pytest.approx(np.exp((1 + 9 + 4) / 6))
    # a resample that draws the first example twice and the third once
    got = stats.resample(np.array([[2.0, 0.0, 1.0]]))
    assert got["loss"][0] == pytest.approx((2 * 1 + 4) / 4)
    low, high = M.confidence_interval(stats, 200, 0)["loss"]
    assert 1.0 <= low <= stats.values["loss"] <= high <= 3.0


def test_shots_refused_for_a_task_without_prompting(tmp_path: Path, cli) -> None:
    import yaml

    recipe = tmp_path / "ner.yaml"
    recipe.write_text(yaml.safe_dump({"task": "token_classification", "model": {"name": "nowhere/model"},
                                      "data": {"train_file": "t.jsonl"}}))
    res = cli("eval", "--model", "nowhere/model", "--recipe", recipe, "--shots", "0")
    assert res.exit_code == 2 and "--shots prompting does not apply to token_classification" in res.stderr


def test_label_baseline_reports_lm_evals_acc_and_acc_norm(tmp_path: Path, tiny_llama: Path, monkeypatch,
                                                          cli) -> None:
    """Labels are scored through llmtune.loglik as lm-eval's multiple choice: (prompt, " " + label) requests;
    acc takes the best log-likelihood, acc_norm the best per character of the label."""
    import yaml

    from llmtune import loglik

    rows = [{"text": f"review {i}", "label": ["bad", "excellent"][i % 2]} for i in range(6)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "classification", "model": {"name": str(tiny_llama)},
                                      "data": {"train_file": str(data), "eval_file": str(data),
                                               "label_names": ["bad", "excellent"]}}))
    seen: list[tuple[str, str]] = []

    def fake(model, tokenizer, requests, batch_size, max_length=None):  # noqa: ANN001, ANN202
        seen.extend(requests)
        return [(-2.0 if cont == " bad" else -3.0, False) for _, cont in requests]

    monkeypatch.setattr(loglik, "loglikelihood", fake)
    res = cli("eval", "--model", tiny_llama, "--recipe", recipe, "--shots", "0", "--output-dir", tmp_path / "o",
              "--bootstrap", "50")
    assert res.exit_code == 0, res.output
    assert len(seen) == 12 and seen[0][0].endswith("Text: review 0\nLabel:") and {c for _, c in seen} == {
        " bad", " excellent"}
    (setting,) = json.loads((tmp_path / "o" / "results.json").read_text())["results"].values()
    # -2 > -3 picks "bad" every time; per character -2/3 < -3/9 picks "excellent"
    assert setting["acc"]["value"] == setting["accuracy"]["value"] == 0.5
    assert setting["acc_norm"]["value"] == 0.5 and setting["acc_norm"]["ci_low"] is not None
    records = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert {r["prediction"] for r in records} == {"bad"} and {r["prediction_norm"] for r in records} == {"excellent"}
    assert records[0]["loglikelihoods"] == {"bad": -2.0, "excellent": -3.0}
