"""Log-likelihoods, perplexity and multiple choice (llmtune.loglik, llmtune.lmtasks, `llmtune eval --task/--text`):
direct computations on literal token ids, lm-eval's context/continuation split and rolling windows, acc_norm by
hand, and parity with lm-evaluation-harness 0.4.x itself (HFLM and simple_evaluate) on a tiny Llama."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, write_jsonl

from llmtune.errors import LlmtuneError

BUNDLED_TASK = REPO / "llmtune" / "datasets" / "mc" / "everyday.yaml"
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 30, "A short one.",
         "Lines\n\nwith  odd   spacing and naïve café unicode.\n" * 12]


@pytest.fixture(scope="module")
def lm(tiny_llama: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def _direct(model: Any, ids: list[int], start: int) -> float:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, one unbatched forward."""
    import torch

    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_loglikelihood_equals_direct_computation_on_token_ids(lm: tuple[Any, Any]) -> None:
    from llmtune import loglik

    model, tok = lm
    reqs = [([5, 17, 99, 310], [42, 7]), ([1], [800, 801, 802]), ([9] * 30, [3]), ([11, 12], [13, 14, 15, 16, 17])]
    got = loglik.score_tokens(model, reqs, batch_size=3, max_length=512)
    for (ctx, cont), (ll, _) in zip(reqs, got, strict=True):
        assert ll == pytest.approx(_direct(model, ctx + cont, len(ctx)), abs=1e-4)
    # left truncation: only the last max_length tokens are seen, the last one only predicted
    ctx, cont = list(range(100, 140)), [7, 8, 9]
    (ll, _), = loglik.score_tokens(model, [(ctx, cont)], batch_size=1, max_length=10)
    window = (ctx + cont)[-11:]
    assert ll == pytest.approx(_direct(model, window, len(window) - 3), abs=1e-4)
    # is_greedy: a continuation of the argmax tokens is greedy
    import torch

    ids = [5, 17, 99]
    with torch.no_grad():
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    (_, greedy), = loglik.score_tokens(model, [(ids, [nxt])], batch_size=1, max_length=512)
    assert greedy
    # strings: the same as encoding first; batch size and order change nothing
    pairs = [("Question: what is two plus two?\nAnswer:", " four"), ("x", " y z"), ("", "hello world")]
    a = loglik.loglikelihood(model, tok, pairs, batch_size=1)
    b = loglik.loglikelihood(model, tok, pairs[::-1], batch_size=8)[::-1]
    for (c, x), (ll_a, _), (ll_b, _) in zip(pairs, a, b, strict=True):
        ctx_ids, cont_ids = loglik.encode_pair(tok, c, x)
        assert ll_a == pytest.approx(_direct(model, ctx_ids + cont_ids, len(ctx_ids)), abs=1e-4)
        assert ll_a == pytest.approx(ll_b, abs=1e-5)


def test_context_continuation_split(lm: tuple[Any, Any]) -> None:
    from llmtune import loglik

    _, tok = lm
    # trailing whitespace of the context moves into the continuation
    assert loglik.encode_pair(tok, "Answer: ", "yes") == loglik.encode_pair(tok, "Answer:", " yes")
    assert loglik.encode_pair(tok, "Answer:  \n", "yes") == loglik.encode_pair(tok, "Answer:", "  \nyes")
    ctx, cont = loglik.encode_pair(tok, "Answer:", " yes")
    assert ctx == tok.encode("Answer:") and ctx + cont == tok.encode("Answer: yes")
    # encoded together, split at the context's length: a merge across the boundary belongs to the continuation
    ctx, cont = loglik.encode_pair(tok, "The intern", "ationally known")
    whole = tok.encode("The internationally known")
    assert ctx == tok.encode("The intern") and cont == whole[len(ctx):]
    assert whole[:len(ctx)] != ctx  # "international" is one token: the context's last token is not in `whole`
    with pytest.raises(LlmtuneError, match="no tokens"):  # nothing left to score (lm-eval fails an assert here)
        loglik.loglikelihood(None, tok, [("intern", "ational")], batch_size=1, max_length=8)
    # an empty context is the prefix token (BOS)
    ctx, cont = loglik.encode_pair(tok, "", "hello")
    assert ctx == [tok.bos_token_id] and cont == tok.encode("hello", add_special_tokens=False)


@pytest.mark.parametrize(("n", "max_length", "context_len"), [(1, 4, 1), (10, 4, 1), (17, 5, 1), (17, 5, 3),
                                                               (30, 8, 8), (7, 7, 1), (8, 7, 1), (50, 6, 4)])
def test_rolling_windows_score_every_token_once(n: int, max_length: int, context_len: int) -> None:
    from llmtune import loglik

    tokens = list(range(100, 100 + n))
    windows = list(loglik.rolling_windows(tokens, 0, max_length, context_len))
    assert [t for _, pred in windows for t in pred] == tokens  # each token predicted once, in order
    assert sum(len(p) for _, p in windows) == len(tokens)
    seq = [0] + tokens
    for k, (ctx, pred) in enumerate(windows):
        assert len(ctx) + len(pred) - 1 <= max_length  # one forward of at most max_length tokens
        start = seq.index(pred[0])
        assert ctx == seq[start - len(ctx):start]  # the context is what comes right before
        if k:  # every later window sees at least max_length - stride tokens before its new ones
            assert len(ctx) >= min(context_len, start)


def test_rolling_loglikelihood_and_stride(lm: tuple[Any, Any]) -> None:
    from llmtune import loglik

    model, tok = lm
    default = loglik.loglikelihood_rolling(model, tok, TEXTS, max_length=32, batch_size=4)
    same = loglik.loglikelihood_rolling(model, tok, TEXTS, max_length=32, stride=32, batch_size=2)
    strided = loglik.loglikelihood_rolling(model, tok, TEXTS, max_length=32, stride=12, batch_size=4)
    for d, s, st, text in zip(default, same, strided, TEXTS, strict=True):
        n = len(tok.encode(text))
        assert d["tokens"] == s["tokens"] == st["tokens"] == n
        assert d["loglikelihood"] == pytest.approx(s["loglikelihood"], abs=1e-4)
        assert st["windows"] >= d["windows"]
    # one window holding the whole text: the direct sum with BOS in front
    short = loglik.loglikelihood_rolling(model, tok, [TEXTS[1]], batch_size=1)[0]
    ids = tok.encode(TEXTS[1])
    assert short["windows"] == 1
    assert short["loglikelihood"] == pytest.approx(_direct(model, [tok.bos_token_id] + ids, 1), abs=1e-4)
    # strided: the transformers guide's windows, each token scored once with max_length - stride context
    ids = tok.encode(TEXTS[0])
    seq = [tok.bos_token_id] + ids
    total, predicted, L, S = 0.0, 0, 32, 12
    while predicted < len(ids):
        new = min(len(ids) - predicted, L if predicted == 0 else S)
        end = predicted + new + 1  # position in seq after the last new token
        begin = max(0, end - 1 - L) if predicted else 0
        window = seq[begin:end]
        total += _direct(model, window, len(window) - new)
        predicted += new
    assert strided[0]["loglikelihood"] == pytest.approx(total, abs=1e-3)
    with pytest.raises(Exception, match="stride"):
        loglik.loglikelihood_rolling(model, tok, TEXTS, max_length=16, stride=17)


def test_acc_norm_on_hand_made_choices() -> None:
    from llmtune import lmtasks

    req = lmtasks.Request(0, {}, 1, "Q:", ["a", "a much longer answer"], [1], [])
    # raw: "a" wins (-2 > -10); per character: -2/1 = -2 < -10/20 = -0.5, the long answer wins
    scores = lmtasks.score_doc(req, [(-2.0, False), (-10.0, False)])
    assert (scores["acc"], scores["acc_norm"], scores["pred"], scores["pred_norm"]) == (0.0, 1.0, 0, 1)
    # ties: the first choice, as numpy.argmax
    assert lmtasks.score_doc(req, [(-3.0, False), (-3.0, False)])["pred"] == 0
    # several right answers
    multi = lmtasks.Request(0, {}, [0, 2], "Q:", ["x", "yy", "zzz"], [0, 2], [])
    assert lmtasks.score_doc(multi, [(-9.0, False), (-1.0, False), (-0.5, False)])["acc"] == 1.0
    assert lmtasks.mean_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(math.sqrt(0.25) / 2)


# ---- parity with lm-evaluation-harness ----------------------------------------------------------------------

SECOND = """task: odd_one
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/odd.jsonl
test_split: test
fewshot_split: test
description: "Pick the word that fits.\\n\\n"
doc_to_text: "{{prompt}} ->"
doc_to_choice: options
doc_to_target: "{{label}}"
target_delimiter: "  "
fewshot_delimiter: "\\n###\\n"
output_type: multiple_choice
"""
ODD = [{"prompt": p, "options": o, "label": lab} for p, o, lab in [
    ("red, green, blue", ["colour", "animal"], "colour"), ("cat, dog, cow", ["colour", "animal"], "animal"),
    ("one, two, three", ["number", "fruit", "tool"], "number"), ("apple, pear, plum", ["number", "fruit"], "fruit"),
    ("hammer, saw, drill", ["tool", "fruit"], "tool"), ("oak, pine, elm", ["tree", "fish"], "tree"),
    ("trout, cod, eel", ["tree", "fish", "bird"], "fish"), ("owl, crow, wren", ["bird", "fish"], "bird"),
    ("Monday, Friday", ["day", "month"], "day"), ("May, June, July", ["day", "month"], "month"),
    ("piano, flute", ["instrument", "vegetable"], "instrument"), ("leek, kale, pea", ["instrument", "vegetable"], "vegetable")]]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tasks")
    shutil.copy(BUNDLED_TASK, d / "everyday.yaml")
    for f in ("train.jsonl", "test.jsonl"):
        shutil.copy(BUNDLED_TASK.parent / f, d / f)
    (d / "data").mkdir()
    write_jsonl(d / "data" / "odd.jsonl", ODD)
    (d / "odd_one.yaml").write_text(SECOND, encoding="utf-8")
    return d


def _samples(folder: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / f"samples_{name}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("fmt", ["plain", "chat"])
def test_tasks_equal_lm_eval(fmt: str, tiny_llama: Path, task_dir: Path, tmp_path: Path, cli,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    out = tmp_path / "ours"
    res = cli("eval", "--model", tiny_llama, "--task", task_dir / "everyday.yaml", "--task", task_dir / "odd_one.yaml",
              "--num-fewshot", "2", "--log-samples", "--prompt-format", fmt, "--output-dir", out, "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    assert "everyday" in res.stdout and "odd_one" in res.stdout
    ours = json.loads((out / "results.json").read_text(encoding="utf-8"))
    monkeypatch.chdir(task_dir)  # lm-eval reads data_files relative to the working directory
    chat = fmt == "chat"
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},dtype=float32",
                                     tasks=["everyday", "odd_one"], num_fewshot=2, batch_size=4, device="cpu",
                                     task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                                     log_samples=True,
                                     apply_chat_template=chat, fewshot_as_multiturn=chat)
    for name in ("everyday", "odd_one"):
        for key in ("acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"):
            assert ours["results"][name][key] == pytest.approx(theirs["results"][name][key], abs=1e-6), (name, key)
        assert ours["n-shot"][name] == theirs["n-shot"][name] == 2
        mine = _samples(out, name)
        for a, b in zip(theirs["samples"][name], mine, strict=True):
            assert [list(x) for x in a["arguments"]] == b["arguments"]  # the same prompts and continuations
            for (ll_a, greedy_a), (ll_b, greedy_b) in zip(a["filtered_resps"], b["filtered_resps"], strict=True):
                assert float(ll_a) == pytest.approx(ll_b, abs=1e-4)
                assert bool(greedy_a) == greedy_b
            assert a["doc_hash"] == b["doc_hash"] and a["prompt_hash"] == b["prompt_hash"]
        s = ours["settings"][str(tiny_llama)][name]["acc"]
        assert s["ci_low"] <= s["value"] <= s["ci_high"]


def test_loglikelihood_and_perplexity_equal_lm_eval(tiny_llama: Path, lm: tuple[Any, Any], tmp_path: Path,
                                                    cli) -> None:
    pytest.importorskip("lm_eval")
    import re

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from llmtune import loglik

    model, tok = lm
    harness = HFLM(pretrained=str(tiny_llama), batch_size=3, device="cpu", dtype="float32")
    pairs = [("The cat sat on the ", "mat"), ("Question: 2+2?\nAnswer:", " four"), ("", "hello world"),
             ("x  ", " y z"), ("<|im_start|>user\nhi", " there"), ("a " * 600, "end of the text")]
    theirs = harness.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    ours = loglik.loglikelihood(model, tok, pairs, batch_size=2)
    for (a, ga), (b, gb) in zip(theirs, ours, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    rolled = harness.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(TEXTS)])
    mine = loglik.loglikelihood_rolling(model, tok, TEXTS, batch_size=2)
    for a, b in zip(rolled, mine, strict=True):
        assert a == pytest.approx(b["loglikelihood"], abs=1e-4)
    # the CLI's word/byte perplexity and bits per byte: lm-eval's wikitext aggregation of the same numbers
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

    text = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    res = cli("eval", "--model", tiny_llama, "--metric", "perplexity", "--text", text, "--output-dir", tmp_path / "ppl")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "ppl" / "results.json").read_text(encoding="utf-8"))["perplexity"]
    words = [(ll, len(re.split(r"\s+", t))) for ll, t in zip(rolled, TEXTS, strict=True)]
    nbytes = [(ll, len(t.encode("utf-8"))) for ll, t in zip(rolled, TEXTS, strict=True)]
    assert got["word_perplexity"]["value"] == pytest.approx(weighted_perplexity(words), rel=1e-6)
    assert got["byte_perplexity"]["value"] == pytest.approx(weighted_perplexity(nbytes), rel=1e-6)
    assert got["bits_per_byte"]["value"] == pytest.approx(bits_per_byte(nbytes), rel=1e-6)
    n_tokens = sum(len(tok.encode(t)) for t in TEXTS)
    assert got["token_perplexity"]["value"] == pytest.approx(math.exp(-sum(rolled) / n_tokens), rel=1e-6)
    assert got["token_perplexity"]["ci_low"] <= got["token_perplexity"]["value"] <= got["token_perplexity"]["ci_high"]


def test_perplexity_of_a_txt_file_is_one_document(tiny_llama: Path, lm: tuple[Any, Any], tmp_path: Path, cli) -> None:
    from llmtune import loglik

    model, tok = lm
    (tmp_path / "book.txt").write_text(TEXTS[0] + "\n" + TEXTS[2], encoding="utf-8")
    res = cli("eval", "--model", tiny_llama, "--metric", "perplexity", "--text", tmp_path / "book.txt",
              "--max-length", "64", "--stride", "16", "-o", tmp_path / "r.json", "--output-dir", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert len(got["documents"]) == 1 and got["config"]["stride"] == 16
    (want,) = loglik.loglikelihood_rolling(model, tok, [TEXTS[0] + "\n" + TEXTS[2]], max_length=64, stride=16)
    assert got["totals"]["loglikelihood"] == pytest.approx(want["loglikelihood"], abs=1e-4)
    assert "token_perplexity" in res.stdout


def test_lora_run_column_equals_lm_eval_on_the_adapted_model(tiny_llama: Path, task_dir: Path, tmp_path: Path, cli,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--finetuned RUN scores the LoRA run (its adapter on the base, through runs.load_run) as lm-eval's HFLM
    scores that same model instance."""
    lm_eval = pytest.importorskip("lm_eval")
    import yaml
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llmtune import runs

    run = tmp_path / "run"
    recipe = {"task": "causal_lm", "model": {"name": str(tiny_llama)},
              "data": {"dataset": "llmtune:instruct", "max_train_samples": 8, "max_eval_samples": 2},
              "lora": {"r": 4, "alpha": 8},
              "train": {"output_dir": str(run), "max_steps": 2, "per_device_train_batch_size": 4,
                        "learning_rate": 5e-2, "max_seq_length": 64},
              "eval": {"before_training": False}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert cli("finetune", tmp_path / "r.yaml").exit_code == 0
    out = tmp_path / "ev"
    res = cli("eval", "--model", tiny_llama, "--task", task_dir / "odd_one.yaml", "--finetuned", run,
              "--num-fewshot", "1", "--output-dir", out, "--log-samples")
    assert res.exit_code == 0, res.output
    ours = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (label,) = ours["finetuned"]
    tuned = [json.loads(x) for x in next(out.glob("samples_odd_one.*.jsonl")).read_text(encoding="utf-8").splitlines()]
    base = _samples(out, "odd_one")
    assert any(abs(a["filtered_resps"][0][0] - b["filtered_resps"][0][0]) > 1e-3 for a, b in zip(base, tuned, strict=True))
    loaded = runs.load_run(run)
    monkeypatch.chdir(task_dir)
    theirs = lm_eval.simple_evaluate(model=HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=4),
                                     tasks=["odd_one"], num_fewshot=1, log_samples=True,
                                     task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    for key in ("acc,none", "acc_norm,none"):
        assert ours["finetuned"][label]["results"]["odd_one"][key] == pytest.approx(theirs["results"]["odd_one"][key],
                                                                                    abs=1e-6)
    for a, b in zip(theirs["samples"]["odd_one"], tuned, strict=True):
        for (ll_a, _), (ll_b, _) in zip(a["filtered_resps"], b["filtered_resps"], strict=True):
            assert float(ll_a) == pytest.approx(ll_b, abs=1e-4)


def test_pseudo_perplexity_of_a_masked_lm(tiny_bert: Path, tmp_path: Path, cli) -> None:
    """Each token masked in turn, scored given the others (Salazar et al.); windows for long texts."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from llmtune import loglik

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)).eval()
    folder = tmp_path / "mlm"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    texts = ["a warm and clever film", "rude staff " * 9]
    got = loglik.pseudo_loglikelihood(model, tok, texts, max_length=16, batch_size=5)
    for text, g in zip(texts, got, strict=True):
        ids = tok.encode(text, add_special_tokens=False)
        want = 0.0
        for w in range(0, len(ids), 14):
            window = [tok.cls_token_id, *ids[w:w + 14], tok.sep_token_id]
            for j in range(1, len(window) - 1):
                masked = list(window)
                masked[j] = tok.mask_token_id
                with torch.no_grad():
                    logp = model(torch.tensor([masked])).logits[0, j].log_softmax(-1)
                want += float(logp[window[j]])
        assert g["tokens"] == len(ids) and g["windows"] == -(-len(ids) // 14)
        assert g["loglikelihood"] == pytest.approx(want, abs=1e-4)
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    res = cli("eval", "--model", folder, "--metric", "perplexity", "--text", text, "--max-length", "16",
              "--output-dir", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    assert "pseudo-perplexity" in res.stdout
    out = json.loads((tmp_path / "ev" / "results.json").read_text(encoding="utf-8"))
    assert out["config"]["masked_lm"]
    assert out["totals"]["loglikelihood"] == pytest.approx(sum(g["loglikelihood"] for g in got), abs=1e-4)
