"""Masked LM: BERT masking statistics, blocks, fixed eval masks, exact resume, the CLI end to end, and a masked-LM
run reused as the encoder of a classifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import minilm_dir, run_cli, tiny_recipe, write_jsonl

from llmtune.tasks import masked_lm as mlm

MASK = 103


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def _sample(rows: int = 2000, width: int = 128) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (rows, width), generator=g)
    special = torch.zeros(rows, width, dtype=torch.long)
    special[:, 0] = 1
    lengths = torch.randint(width // 2, width + 1, (rows,), generator=g)
    for r, n in enumerate(lengths.tolist()):
        special[r, n - 1:] = 1  # [SEP] and padding
    ids[:, 0] = 101
    ids[special.bool() & (ids != 101)] = 0
    return ids, special


def _fractions(ids: Any, special: Any, masked: Any, labels: Any) -> tuple[float, float, float, float]:
    chosen = labels != -100
    n = int(chosen.sum())
    as_mask = int((chosen & (masked == MASK)).sum()) / n
    kept = int((chosen & (masked == ids)).sum()) / n
    return n / int((special == 0).sum()), as_mask, 1 - as_mask - kept, kept


def test_masking_statistics_token_level(tokenizer: Any) -> None:
    import torch

    ids, special = _sample()
    random_ids = mlm.maskable_ids(tokenizer)
    masked, labels = mlm.mask_tokens(ids, special, None, 0.15, MASK, random_ids, torch.Generator().manual_seed(0))
    rate, as_mask, as_random, kept = _fractions(ids, special, masked, labels)
    assert rate == pytest.approx(0.15, abs=0.01)
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert as_random == pytest.approx(0.1, abs=0.01)
    assert kept == pytest.approx(0.1, abs=0.01)
    sp = special.bool()
    assert bool((masked[sp] == ids[sp]).all()) and bool((labels[sp] == -100).all())  # specials untouched
    assert bool((labels[~sp & (labels != -100)] == ids[~sp & (labels != -100)]).all())  # labels are the originals
    swapped = (labels != -100) & (masked != MASK) & (masked != ids)
    assert not bool(torch.isin(masked[swapped], torch.tensor(tokenizer.all_special_ids)).any())
    # the same generator seed gives the same masks; another seed other ones
    again = mlm.mask_tokens(ids, special, None, 0.15, MASK, random_ids, torch.Generator().manual_seed(0))
    other = mlm.mask_tokens(ids, special, None, 0.15, MASK, random_ids, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], masked) and not torch.equal(other[1], labels)


def test_masking_statistics_whole_words(tokenizer: Any) -> None:
    import torch

    ids, special = _sample()
    g = torch.Generator().manual_seed(2)
    word_start = (torch.rand(ids.shape, generator=g) < 0.6).long()  # words of 1.67 pieces on average
    word_start[:, 1] = 1
    masked, labels = mlm.mask_tokens(ids, special, word_start, 0.15, MASK, mlm.maskable_ids(tokenizer),
                                     torch.Generator().manual_seed(0))
    rate, as_mask, as_random, kept = _fractions(ids, special, masked, labels)
    assert rate == pytest.approx(0.15, abs=0.01)
    assert as_mask == pytest.approx(0.8, abs=0.01) and as_random == pytest.approx(0.1, abs=0.01)
    chosen = (labels != -100).tolist()
    starts, sp = word_start.tolist(), special.tolist()
    for r in range(len(chosen)):
        word: list[bool] = []
        for j in range(len(chosen[r])):
            if sp[r][j]:
                assert not chosen[r][j]
                continue
            if starts[r][j] and word:
                assert len(set(word)) == 1  # a word is chosen whole or not at all
                word = []
            word.append(chosen[r][j])
        assert len(set(word)) <= 1


def test_whole_words_on_real_text(tokenizer: Any) -> None:
    batch = {"text": ["Harrowgate weavers unpacked extraordinary looms", "", "Ottilie Marsh"] * 40}
    enc = mlm._encode_lines(batch, tokenizer, "text", 128, line_by_line=False, words=True)
    assert len(enc["input_ids"]) == 80  # blank lines are skipped
    blocks = mlm._group(enc, 16)
    features = [{"input_ids": i, "special_tokens_mask": s, "word_start": w, "block": k}
                for k, (i, s, w) in enumerate(zip(blocks["input_ids"], blocks["special_tokens_mask"],
                                                  blocks["word_start"], strict=True))]
    collate = mlm.Collator(tokenizer, 0.3, seed=0, vocab_size=None)
    out = collate(features)
    for row, lab in zip(features, out["labels"].tolist(), strict=True):
        pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
        for j in range(1, len(pieces)):
            if pieces[j].startswith("##") and j > 0 and row["word_start"][j] == 0:
                assert (lab[j] != -100) == (lab[j - 1] != -100), pieces
    assert torch_equal(collate(features)["input_ids"], out["input_ids"])  # masks are a function of the batch


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_blocks_keep_every_token(tokenizer: Any) -> None:
    long = " ".join(["the river runs past the mill"] * 30)
    batch = {"text": [long, "short line", long]}
    enc = mlm._encode_lines(batch, tokenizer, "text", 64, line_by_line=False, words=False)
    total = sum(len(x) for x in enc["input_ids"])
    blocks = mlm._group(enc, 64)
    assert [len(b) for b in blocks["input_ids"]] == [64] * (total // 64) + ([total % 64] if total % 64 else [])
    assert [t for b in blocks["input_ids"] for t in b] == [t for x in enc["input_ids"] for t in x]
    lines = mlm._encode_lines(batch, tokenizer, "text", 64, line_by_line=True, words=False)
    # a line longer than a block continues in further examples; each has its own [CLS] ... [SEP]
    assert len(lines["input_ids"]) > 3 and all(len(x) <= 64 and x[0] == 101 and x[-1] == 102
                                               for x in lines["input_ids"])


def _mlm_recipe(path: Path, model: Path, train: Path, eval_: Path, out: Path, **train_extra: Any) -> Path:
    recipe = {"task": "masked_lm", "model": {"name": str(model)},
              "data": {"train_file": str(train), "eval_file": str(eval_), "whole_word_mask": True},
              "train": {"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 4,
                        "per_device_eval_batch_size": 8, "learning_rate": 2e-3, "logging_steps": 2,
                        "eval_steps": 2, "save_steps": 2, "max_seq_length": 32, **train_extra}}
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture
def text_files(tmp_path: Path) -> tuple[Path, Path]:
    bundled = Path(mlm.__file__).resolve().parent.parent / "datasets" / "mlm"
    rows = [json.loads(x)["text"] for x in (bundled / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    (tmp_path / "text_train.txt").write_text("\n".join(rows[:12]) + "\n\n", encoding="utf-8")  # a trailing blank line
    evals = [json.loads(x) for x in (bundled / "eval.jsonl").read_text(encoding="utf-8").splitlines()[:4]]
    return tmp_path / "text_train.txt", write_jsonl(tmp_path / "text_eval.jsonl", evals)


def test_end_to_end_predict_eval_and_chain(tiny_bert: Path, tmp_path: Path, text_files: tuple[Path, Path],
                                           sentiment_files: tuple[Path, Path], caplog: Any) -> None:
    import logging

    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    caplog.set_level(logging.WARNING, logger="llmtune")  # an earlier in-process benchmark run quietens it
    out = tmp_path / "mlm"
    res = run_cli("finetune", _mlm_recipe(tmp_path / "r.yaml", tiny_bert, *text_files, out))
    assert res.exit_code == 0, res.output
    assert "has no pretrained masked-LM head" in caplog.text
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_loss"] < results["base_eval_loss"]  # trained on the same fixed masks it is scored on
    assert results["eval_perplexity"] == pytest.approx(2.718281828 ** results["eval_loss"], rel=1e-6)
    assert 0 <= results["eval_accuracy"] <= 1 and results["eval_masked_tokens"] > 0
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == results["eval_samples"]
    assert sum(r["masked_tokens"] for r in records) == results["eval_masked_tokens"]
    assert all(len(r["targets"]) == len(r["predictions"]) == r["masked_tokens"] for r in records)
    n = sum(r["masked_tokens"] for r in records)
    assert results["eval_loss"] == pytest.approx(sum(r["loss"] * r["masked_tokens"] for r in records) / n, rel=1e-9)
    # a plain AutoModelForMaskedLM folder
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    AutoModelForMaskedLM.from_pretrained(out)

    # the eval masks are fixed: llmtune eval on the same split twice gives the run's own loss
    losses = []
    for k in range(2):
        res = run_cli("eval", "--model", out, "--bootstrap", "0", "--output-dir", tmp_path / f"ev{k}")
        assert res.exit_code == 0, res.output
        scored = next(iter(json.loads((tmp_path / f"ev{k}" / "results.json").read_text())["results"].values()))
        losses.append(scored["loss"]["value"])
    assert losses[0] == losses[1] == pytest.approx(results["eval_loss"], abs=1e-5)

    (tmp_path / "in.txt").write_text("the river [MASK] runs past the mill.\nno slot here [MASK] and [MASK].\n",
                                     encoding="utf-8")
    res = run_cli("predict", out, "--input", tmp_path / "in.txt", "--output", tmp_path / "p.jsonl")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [len(r["masks"]) for r in lines] == [1, 2]
    cands = lines[0]["masks"][0]["candidates"]
    assert len(cands) == 5 and cands[0]["score"] >= cands[-1]["score"]
    assert cands[0]["sequence"].startswith("the river") and cands[0]["sequence"].endswith("runs past the mill.")
    assert "[MASK]" not in cands[0]["sequence"] and cands[0]["token"].lstrip("#") in cands[0]["sequence"]

    (tmp_path / "bad.txt").write_text("a slot [MASK] here\nno slot at all\n", encoding="utf-8")
    res = run_cli("predict", out, "--input", tmp_path / "bad.txt")
    assert res.exit_code == 2 and "line 2" in res.output and "no [MASK] in the text" in res.output, res.output

    # the masked-LM run is the encoder of a classifier: its weights load, the head is new
    clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    mlm_weights = load_file(out / "model.safetensors")
    emb = "bert.embeddings.word_embeddings.weight"
    assert torch_equal(clf.state_dict()[emb], mlm_weights[emb])
    recipe = tiny_recipe(tmp_path / "clf.yaml", out, *sentiment_files, tmp_path / "clf", train__max_steps=2)
    res = run_cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    assert "eval_accuracy" in json.loads((tmp_path / "clf" / "eval_results.json").read_text())
    # ... and of a tagger and a span head: the same encoder under a new head, through the CLI
    for task, data, metric in (
            ("token_classification", {"dataset": "llmtune:ner", "max_train_samples": 16, "max_eval_samples": 4}, "f1"),
            ("question_answering", {"dataset": "llmtune:qa", "max_train_samples": 8, "max_eval_samples": 4,
                                    "doc_stride": 16}, "exact_match")):
        path = tmp_path / f"{task}.yaml"
        path.write_text(yaml.safe_dump({"task": task, "model": {"name": str(out)}, "data": data,
                                        "train": {"output_dir": str(tmp_path / task), "max_steps": 2,
                                                  "per_device_train_batch_size": 4, "max_seq_length": 64}}))
        res = run_cli("finetune", path)
        assert res.exit_code == 0, res.output
        assert f"eval_{metric}" in json.loads((tmp_path / task / "eval_results.json").read_text()), task


def test_resume_draws_the_same_masks(tiny_bert: Path, tmp_path: Path, text_files: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file

    ref = tmp_path / "ref"
    res = run_cli("finetune", _mlm_recipe(tmp_path / "ref.yaml", tiny_bert, *text_files, ref))
    assert res.exit_code == 0, res.output
    shutil.rmtree(ref / "checkpoint-4", ignore_errors=True)
    resumed = tmp_path / "resumed"
    recipe = _mlm_recipe(tmp_path / "res.yaml", tiny_bert, *text_files, resumed,
                         resume_from_checkpoint=str(ref / "checkpoint-2"))
    res = run_cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    assert "Resuming from" in res.output
    a, b = load_file(ref / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch_equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (ref, resumed))
    assert ra["eval_loss"] == rb["eval_loss"] and ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)


def test_recipe_validates() -> None:
    from llmtune.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "mlm.yaml")
    assert recipe.task == "masked_lm" and recipe.data.dataset == "llmtune:mlm"
