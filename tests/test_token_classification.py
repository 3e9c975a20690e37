"""Token classification (NER): label alignment, CoNLL files, seqeval scoring of files, and one run through the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import minilm_dir, run_cli, write_jsonl

from llmtune.errors import LlmtuneError
from llmtune.tasks import token_classification as tc

NAMES = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_labels_on_first_sub_token_or_on_all(tokenizer: Any) -> None:
    words = ["Harrowgate", "Mills", "hired", "Ottilie", "Marsh", "in", "Koldby", "."]
    tags = ["B-ORG", "I-ORG", "O", "B-PER", "I-PER", "O", "B-LOC", "O"]
    # the tokenizer's own split, written out: the test is about these pieces
    assert tokenizer.convert_ids_to_tokens(tokenizer(words, is_split_into_words=True)["input_ids"]) == [
        "[CLS]", "harrow", "##gate", "mills", "hired", "ot", "##ti", "##lie", "marsh", "in", "ko", "##ld", "##by", ".",
        "[SEP]"]
    o, b_org, i_org, b_per, i_per, b_loc, i_loc = range(7)
    batch = {"tokens": [words], "ner_tags": [tags]}
    first = tc._encode(batch, tokenizer, "tokens", "ner_tags", NAMES, 128, label_all=False)
    assert first["labels"][0] == [-100, b_org, -100, i_org, o, b_per, -100, -100, i_per, o, b_loc, -100, -100, o, -100]
    assert first["word_index"][0] == [-100, 0, -100, 1, 2, 3, -100, -100, 4, 5, 6, -100, -100, 7, -100]
    every = tc._encode(batch, tokenizer, "tokens", "ner_tags", NAMES, 128, label_all=True)
    # later sub-tokens of a B- word learn its I- tag (run_ner.py's b_to_i_label)
    assert every["labels"][0] == [-100, b_org, i_org, i_org, o, b_per, i_per, i_per, i_per, o, b_loc, i_loc, i_loc, o,
                                  -100]
    assert every["word_index"][0] == first["word_index"][0]
    # integer tags are ids into the names
    ids = tc._encode({"tokens": [words], "ner_tags": [[NAMES.index(t) for t in tags]]}, tokenizer, "tokens",
                     "ner_tags", NAMES, 128, label_all=False)
    assert ids["labels"] == first["labels"]
    # truncation: 6 positions hold [CLS] + 4 pieces + [SEP]; words 3.. are cut and the sentence counted
    short = tc._encode(batch, tokenizer, "tokens", "ner_tags", NAMES, 6, label_all=False)
    assert short["word_index"][0] == [-100, 0, -100, 1, 2, -100] and short["truncated"] == [True]
    assert first["truncated"] == [False]


def test_predictions_map_back_to_words() -> None:
    import torch

    outputs = {"word_index": torch.tensor([[-100, 0, -100, 1, 2, -100], [-100, 0, -100, -100, -100, -100]]),
               "pred": torch.tensor([[0, 3, 2, 4, 0, 0], [0, 5, 0, 0, 0, 0]]),
               "prob": torch.tensor([[1.0, 0.9, 0.1, 0.7, 0.8, 1.0], [1.0, 0.6, 1.0, 1.0, 1.0, 1.0]])}
    tags, probs = tc._words_back(outputs, [3, 2], NAMES)
    assert tags == [["B-PER", "I-PER", "O"], ["B-LOC", "O"]]  # the second sentence's last word was truncated: O
    assert probs[1] == pytest.approx([0.6, 0.0])
    assert tc._span_records(["Ann", "Lee", "ran"], tags[0], probs[0], None) == [
        {"type": "PER", "token_start": 0, "token_end": 2, "text": "Ann Lee", "score": 0.8}]
    # lenient mode reads an I- without a B- as an entity; strict IOB2 does not
    assert tc.entities(["O", "I-PER", "I-PER"]) == [("PER", 1, 3)]
    assert tc.entities(["O", "I-PER", "I-PER"], "IOB2") == []


def test_conll_files(tmp_path: Path) -> None:
    from llmtune.data import load_file
    from llmtune.recipe import build_recipe

    text = ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n\n"
            "Peter\tB-PER\nBlackburn\tI-PER\n\t\nNew York\tB-LOC\n")
    recipe = build_recipe({"task": "token_classification", "model": {"name": "x"},
                           "data": {"train_file": "t.conll", "tokens_column": "words"}})
    for name, data in (("t.conll", text.encode()), ("t.txt", text.encode()), ("t.conll.gz", gzip.compress(text.encode()))):
        (tmp_path / name).write_bytes(data)
        ds = load_file(str(tmp_path / name), "data.train_file", recipe)
        assert ds["words"] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["New York"]], name
        assert ds["ner_tags"] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
        assert ds[tc.LINE_COLUMN] == [3, 8, 11]


def test_hub_classlabel_names() -> None:
    import datasets

    from llmtune.data import Split
    from llmtune.recipe import build_recipe

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X", "I-X"]))})
    ds = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [[1, 2]]}, features=features)
    recipe = build_recipe({"task": "token_classification", "model": {"name": "x"}, "data": {"train_file": "t.jsonl"}})
    split = Split("train", ds, "hub")
    tc.validate(recipe, split)
    assert tc.setup(recipe, {"train": split}, None).label_names == ["O", "B-X", "I-X"]


def test_score_tag_files(tmp_path: Path) -> None:
    from seqeval.metrics import classification_report

    from llmtune.scoring import score_files

    refs = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "B-ORG"], ["O"], ["B-PER", "O", "B-LOC"]]
    preds = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "O"], ["B-ORG"], ["B-PER", "O", "I-LOC"]]
    write_jsonl(tmp_path / "p.jsonl", [{"predicted_tags": p, "tokens": ["w"] * len(p)} for p in preds])
    (tmp_path / "r.txt").write_text("".join(" ".join(r) + "\n" for r in refs), encoding="utf-8")
    res = score_files(tmp_path / "p.jsonl", tmp_path / "r.txt", ["seqeval"], bootstrap=200)["results"]
    report = classification_report(refs, preds, output_dict=True, zero_division=0)
    assert res["f1"]["value"] == report["micro avg"]["f1-score"]
    assert res["LOC_recall"]["value"] == report["LOC"]["recall"]
    assert res["f1"]["ci_low"] <= res["f1"]["value"] <= res["f1"]["ci_high"]
    strict = score_files(tmp_path / "p.jsonl", tmp_path / "r.txt", ["seqeval"], bootstrap=0,
                         options={"seqeval": {"scheme": "IOB2"}})["results"]
    assert strict["LOC_recall"]["value"] == 0.5  # I-LOC after O is no entity in strict mode


class _FakeTagger:
    """Tags every word piece 'ann' or 'lee' as a person (B- on the first), and 'paris' as a place."""

    def __init__(self, tokenizer: Any) -> None:
        import torch

        self.config = SimpleNamespace(id2label=dict(enumerate(NAMES)), num_labels=len(NAMES))
        self.device = torch.device("cpu")
        self.ids = {tokenizer.convert_tokens_to_ids(w): k for w, k in (("ann", 3), ("lee", 4), ("paris", 5))}

    def __call__(self, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        logits = torch.zeros(*input_ids.shape, len(NAMES))
        logits[..., 0] = 1.0
        for token, k in self.ids.items():
            logits[..., k] += 5.0 * (input_ids == token)
        return SimpleNamespace(logits=logits)


def test_predict_offsets(tokenizer: Any) -> None:
    from llmtune.tasks import LoadedRun

    run = LoadedRun(path=Path("."), task="token_classification", recipe=None, info=None, adapter=False,
                    load=lambda: (_FakeTagger(tokenizer), tokenizer))
    rows = [{"text": "Yesterday Ann Lee flew to Paris, again."}, {"tokens": ["ann", "lee", "in", "paris"]},
            {"text": "   "}]
    out = tc.predict(run, rows, batch_size=2, field=None, pair_field=None)
    assert out[0]["tokens"] == ["Yesterday", "Ann", "Lee", "flew", "to", "Paris", ",", "again", "."]
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in out[0]["entities"]] == [
        ("PER", "Ann Lee", 10, 17), ("LOC", "Paris", 26, 31)]
    assert [(e["text"], e["start"], e["end"]) for e in out[1]["entities"]] == [("ann lee", 0, 7), ("paris", 11, 16)]
    assert all(0 < e["score"] <= 1 for e in out[0]["entities"])
    assert out[2] == {"text": "   ", "tokens": [], "tags": [], "entities": []}


def _rows(path: Path, n: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def test_end_to_end(tiny_bert: Path, tmp_path: Path) -> None:
    from seqeval.metrics import accuracy_score, classification_report

    bundled = Path(tc.__file__).resolve().parent.parent / "datasets" / "ner"
    train = write_jsonl(tmp_path / "train.jsonl", _rows(bundled / "train.jsonl", 48))
    evals = write_jsonl(tmp_path / "eval.jsonl", _rows(bundled / "eval.jsonl", 12))
    out = tmp_path / "run"
    recipe = {"task": "token_classification", "model": {"name": str(tiny_bert)},
              "data": {"train_file": str(train), "eval_file": str(evals), "label_all_tokens": True},
              "train": {"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 8,
                        "per_device_eval_batch_size": 5, "learning_rate": 3e-3, "logging_steps": 2, "eval_steps": 2,
                        "max_seq_length": 32}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    res = run_cli("finetune", str(tmp_path / "r.yaml"))
    assert res.exit_code == 0, res.output
    results = json.loads((out / "eval_results.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12 and records[0]["tokens"] == _rows(bundled / "eval.jsonl", 1)[0]["tokens"]
    gold, pred = [r["tags"] for r in records], [r["predicted_tags"] for r in records]
    # the run's numbers are seqeval's on the tags it wrote
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    assert results["eval_f1"] == pytest.approx(report["micro avg"]["f1-score"], abs=1e-12)
    assert results["eval_precision"] == pytest.approx(report["micro avg"]["precision"], abs=1e-12)
    assert results["eval_accuracy"] == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    assert results["eval_loss"] > 0 and results["best_step"] in (2, 4)
    assert json.loads((out / "config.json").read_text())["id2label"]["0"] == "O"
    for r in records:
        for e in r["entities"]:
            assert e["text"] == " ".join(r["tokens"][e["token_start"]:e["token_end"]])

    scored = tmp_path / "scores.json"
    res = run_cli("eval", "--metric", "seqeval", "--predictions", out / "predictions.jsonl", "--references",
                  out / "predictions.jsonl", "--bootstrap", "100", "-o", scored)
    assert res.exit_code == 0, res.output
    assert json.loads(scored.read_text())["results"]["f1"]["value"] == pytest.approx(results["eval_f1"], abs=1e-12)

    res = run_cli("eval", "--model", out, "--bootstrap", "50", "--output-dir", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    again = next(iter(json.loads((tmp_path / "ev" / "results.json").read_text())["results"].values()))
    assert again["f1"]["value"] == pytest.approx(results["eval_f1"], abs=1e-9)
    assert again["loss"]["value"] == pytest.approx(results["eval_loss"], abs=1e-5)
    assert again["f1"]["ci_low"] is not None

    (tmp_path / "in.txt").write_text("Ann Lee joined Harrowgate Mills in Koldby.\n\nShares fell.\n", encoding="utf-8")
    res = run_cli("predict", out, "--input", tmp_path / "in.txt", "--output", tmp_path / "p.jsonl")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in lines] == [["Ann", "Lee", "joined", "Harrowgate", "Mills", "in", "Koldby", "."],
                                            ["Shares", "fell", "."]]
    for r in lines:
        assert len(r["tags"]) == len(r["tokens"])
        for e in r["entities"]:
            assert r["text"][e["start"]:e["end"]] == e["text"]

    from llmtune.evaluation import check_promptable
    from llmtune.recipe import build_recipe

    with pytest.raises(LlmtuneError, match="--shots prompting does not apply to token_classification"):
        check_promptable(build_recipe(recipe))


def test_recipe_validates() -> None:
    from llmtune.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "ner.yaml")
    assert recipe.task == "token_classification" and recipe.data.dataset == "llmtune:ner"
