from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from llmtune import data as data_mod
from llmtune.errors import LlmtuneError
from llmtune.recipe import build_recipe
from llmtune.tasks import classification


def recipe(**data: object) -> object:
    return build_recipe({"task": "classification", "model": {"name": "minilm-l6"}, "data": data})


def splits(**data: object) -> dict:
    r = recipe(**data)
    return data_mod.load_splits(r, validate=lambda s: classification.validate(r, s))


def test_tsv_with_bare_quotes_and_val_size(tmp_path: Path) -> None:
    p = tmp_path / "train.tsv"
    rows = [f'a "quoted thing {i} \tgood' if i % 2 else f"plain {i}\tbad" for i in range(20)]
    p.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    s = splits(train_file=str(p), val_size=0.25)
    assert len(s["train"].dataset) == 15 and len(s["eval"].dataset) == 5
    assert any('"quoted' in t for t in s["train"].dataset["text"])


def test_csv_parquet_and_max_samples(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"sentence": [f"text {i}" for i in range(30)], "label": [i % 3 for i in range(30)]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "e.parquet")
    s = splits(train_file=str(tmp_path / "t.csv"), eval_file=str(tmp_path / "e.parquet"), text_column="sentence",
               max_train_samples=10, max_eval_samples=4)
    assert len(s["train"].dataset) == 10 and len(s["eval"].dataset) == 4
    info = classification.setup(recipe(train_file="t.csv", text_column="sentence"), s, None)
    assert info.label_names == ["0", "1", "2"]


def test_list_of_strings_is_joined_and_gz_text_pairs(tmp_path: Path) -> None:
    from conftest import write_jsonl

    p = write_jsonl(tmp_path / "t.jsonl", [{"text": ["Hello", "world."], "label": "a"}, {"text": "x", "label": "b"}])
    s = splits(train_file=str(p), eval_file=str(p))
    assert data_mod.as_text(s["train"].dataset[0]["text"]) == "Hello world."
    for lang, lines in (("en", ["a cat", "a dog"]), ("de", ["eine Katze", "ein Hund"])):
        with gzip.open(tmp_path / f"train.{lang}.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    r = build_recipe({"task": "translation", "model": {"name": "x"},
                      "data": {"train_file": str(tmp_path / "train.{lang}.gz"), "source_lang": "en",
                               "target_lang": "de"}})
    ds = data_mod.load_raw_splits(r)["train"].dataset
    assert ds.column_names == ["en", "de"] and ds[1] == {"en": "a dog", "de": "ein Hund"}


@pytest.mark.parametrize(
    ("content", "kwargs", "needle"),
    [
        (None, {}, "file not found"),
        ("", {}, "the file is empty"),
        ('{"txt": "a", "label": "x"}\n', {}, "column 'text' not found"),
        ('{"text": "a", "lable": "x"}\n', {}, "did you mean 'lable'"),
        ('{"text": "", "label": "x"}\n', {}, "row 1: column 'text' (data.text_column) is an empty text"),
        ('{"text": "ok", "label": "x"}\n{"text": 5, "label": "x"}\n', {}, "row 2: column 'text'"),
        ('{"text": "ok", "label": "maybe"}\n', {"label_names": ["neg", "pos"]}, "row 1: label 'maybe' is not in"),
        ('{"text": "ok", "label": 7}\n', {"label_names": ["neg", "pos"]}, "row 1: label 7 is not in"),
        ('{"text": "ok", "label": null}\n', {}, "row 1: label column 'label' holds None"),
        ('{"text": "ok", "label": 1}\n{"text": "ok", "label": "x"}\n', {}, "mixes integer and text"),
        ("not json\n", {}, "line 1: invalid JSON"),
    ],
)
def test_bad_data_is_named(tmp_path: Path, content: str | None, kwargs: dict, needle: str) -> None:
    p = tmp_path / "train.jsonl"
    if content is not None:
        p.write_text(content, encoding="utf-8")
    with pytest.raises(LlmtuneError) as e:
        splits(train_file=str(p), eval_file=str(p), **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_bytes(b"text,label\nfine,a\ncaf\xe9,b\n")
    with pytest.raises(LlmtuneError, match=r"line 3 is not UTF-8"):
        splits(train_file=str(p))


def test_eval_label_unseen_in_train(tmp_path: Path) -> None:
    from conftest import write_jsonl

    tr = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    ev = write_jsonl(tmp_path / "e.jsonl", [{"text": "c", "label": "z"}])
    r = recipe(train_file=str(tr), eval_file=str(ev))
    s = data_mod.load_splits(r, validate=lambda sp: classification.validate(r, sp))
    with pytest.raises(LlmtuneError, match="row 1: label 'z' never occurs in the training data"):
        classification.setup(r, s, None)


def test_bundled_dataset_unknown_name() -> None:
    with pytest.raises(LlmtuneError, match="no such bundled dataset"):
        splits(dataset="llmtune:sentimnet")
