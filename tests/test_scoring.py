"""Reading prediction/reference files and scoring them: formats, errors naming file and row, results."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU

from llmtune import metrics as M
from llmtune.errors import LlmtuneError
from llmtune.scoring import read_references, read_texts, score_files

HYPS = ["Ein Mann fährt Fahrrad.", "", "Zwei Hunde spielen im Schnee 🐕!", "Eine Frau liest, sitzt, lächelt."]
REFS = [["Ein Mann fährt Fahrrad auf der Straße.", "Ein Mann radelt."],
        ["Menschen stehen vor einem Haus."],
        ["Zwei Hunde spielen im Schnee."],
        ["Eine Frau sitzt auf einer Bank und liest.", "Sie liest.", "Lesen."]]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ------------------------------------------------------------------------------------------------------------
# Formats


def test_read_txt_keeps_empty_lines_and_strips_crlf(tmp_path: Path) -> None:
    p = write(tmp_path / "hyp.txt", "eins\r\n\r\ndrei \u2028 mit Trennzeichen\n")
    assert read_texts(p) == ["eins", "", "drei \u2028 mit Trennzeichen"]
    assert read_texts(p, allow_lists=True) == [["eins"], [""], ["drei \u2028 mit Trennzeichen"]]
    # Unknown suffixes (sacreBLEU style test.de) are plain text, and so is a gzipped file.
    assert read_texts(write(tmp_path / "test.de", "a\nb")) == ["a", "b"]
    gz = tmp_path / "hyp.txt.gz"
    gz.write_bytes(gzip.compress("ä\nö\n".encode()))
    assert read_texts(gz) == ["ä", "ö"]


def test_read_jsonl_fields_lists_and_strings(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "refs.jsonl", [{"id": 1, "target": ["a", "b"]}, {"id": 2, "target": "c"}])
    write(p, p.read_text(encoding="utf-8") + "\n   \n")  # trailing blank lines are skipped
    assert read_texts(p, "target", allow_lists=True) == [["a", "b"], ["c"]]
    assert read_texts(p, allow_lists=True, default_fields=("reference", "target")) == [["a", "b"], ["c"]]
    assert read_texts(jsonl(tmp_path / "s.jsonl", ["x", "y"])) == ["x", "y"]
    assert read_texts(jsonl(tmp_path / "one.jsonl", [{"output": "x"}])) == ["x"]
    labels = jsonl(tmp_path / "labels.jsonl", [{"label": 1}, {"label": 0}, {"label": True}])
    assert read_texts(labels, "label") == ["1", "0", "true"]


def test_read_json_variants(tmp_path: Path) -> None:
    objs = write(tmp_path / "a.json", json.dumps([{"prediction": "x"}, {"prediction": "ü"}]))
    assert read_texts(objs, "prediction") == ["x", "ü"]
    assert read_texts(write(tmp_path / "b.json", '["x", "y"]')) == ["x", "y"]
    holder = write(tmp_path / "c.json", json.dumps({"references": [["r1", "r2"], ["r3"]], "meta": 1}))
    assert read_texts(holder, "references", allow_lists=True) == [["r1", "r2"], ["r3"]]


def test_read_csv_and_tsv(tmp_path: Path) -> None:
    p = write(tmp_path / "p.csv", 'id,prediction\n1,"Hallo, Welt"\n2,""\n3,"zwei\nZeilen"\n')
    assert read_texts(p, "prediction") == ["Hallo, Welt", "", "zwei\nZeilen"]
    assert read_texts(p) == ["1", "2", "3"]  # no field and no conventional name: the first column
    assert read_texts(p, default_fields=("prediction",)) == ["Hallo, Welt", "", "zwei\nZeilen"]
    # GLUE-style TSV: unbalanced quotes are text, not CSV quoting.
    t = write(tmp_path / "dev.tsv", 'text\tlabel\nit \'s a "charming journey \t1\nbad \t0\n')
    assert read_texts(t, "label") == ["1", "0"]
    assert read_texts(t, "text") == ['it \'s a "charming journey ', "bad "]


def test_read_references_from_several_files(tmp_path: Path) -> None:
    a = write(tmp_path / "ref.0", "r1a\nr2a\n")
    b = write(tmp_path / "ref.1", "r1b\nr2b\n")
    assert read_references([a, b]) == [["r1a", "r1b"], ["r2a", "r2b"]]
    with pytest.raises(LlmtuneError, match=r"ref\.2 has 1 references but .*ref\.0 has 2"):
        read_references([a, write(tmp_path / "ref.2", "x\n")])


# ------------------------------------------------------------------------------------------------------------
# User errors: one line, naming the file and the row


@pytest.mark.parametrize(("name", "content", "kwargs", "pattern"), [
    ("empty.txt", "", {}, r"empty\.txt: file is empty"),
    ("blank.jsonl", "\n \n", {}, r"blank\.jsonl: file is empty"),
    ("bad.jsonl", '{"prediction": "a"}\n{"prediction": "b"\n', {}, r"bad\.jsonl, line 2: invalid JSON"),
    ("bad.json", '[{"a": 1},\n {"a": 2,}]', {}, r"bad\.json, line 2: invalid JSON"),
    ("f.jsonl", '{"prediction": "a"}\n{"pred": "b"}\n', {"field": "prediction"},
     r"f\.jsonl, line 2: no field 'prediction' \(fields: pred\)"),
    ("amb.jsonl", '{"x": "a", "y": "b"}\n', {}, r"amb\.jsonl, line 1: several fields \(x, y\)"),
    ("list.jsonl", '{"prediction": ["a", "b"]}\n', {"field": "prediction"},
     r"list\.jsonl, line 1, field 'prediction': a list where one text was expected"),
    ("null.jsonl", '{"target": "a"}\n{"target": null}\n', {"field": "target"},
     r"null\.jsonl, line 2, field 'target': expected text, found null"),
    ("emptyrefs.jsonl", '{"target": []}\n', {"field": "target", "allow_lists": True},
     r"emptyrefs\.jsonl, line 1, field 'target': empty list of references"),
    ("obj.json", '{"a": 1}', {}, r"obj\.json: expected a JSON list"),
    ("item.json", '["a", ["b"]]', {}, r"item\.json, item \[1\]: a list where one text was expected"),
    ("ragged.csv", "a,b\n1,2\n3\n", {"field": "b"}, r"ragged\.csv, line 3: 1 fields, the header has 2"),
    ("col.csv", "a,b\n1,2\n", {"field": "c"}, r"col\.csv, header: no field 'c' \(fields: a, b\)"),
    ("head.csv", "a,b\n", {"field": "a"}, r"head\.csv: no rows after the header"),
    ("plain.txt", "a\n", {"field": "text"}, r"plain\.txt: a plain-text file has no fields"),
])
def test_read_errors_name_file_and_row(tmp_path: Path, name: str, content: str, kwargs: dict,
                                       pattern: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(LlmtuneError, match=pattern) as info:
        read_texts(path, **kwargs)
    assert "\n" not in str(info.value)


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "latin1.txt"
    p.write_bytes("gut\nschön\n".encode("latin-1"))
    with pytest.raises(LlmtuneError, match=r"latin1\.txt, line 2: not valid UTF-8 \(byte 0xf6\)"):
        read_texts(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LlmtuneError, match=r"nope\.jsonl: file not found"):
        read_texts(tmp_path / "nope.jsonl")
    with pytest.raises(LlmtuneError, match="is a directory"):
        read_texts(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# score_files


@pytest.fixture
def mt_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    preds = jsonl(tmp_path / "preds.jsonl", [{"id": i, "prediction": h} for i, h in enumerate(HYPS)])
    refs = jsonl(tmp_path / "refs.jsonl", [{"id": i, "references": r} for i, r in enumerate(REFS)])
    better = write(tmp_path / "better.txt", "".join(r[0] + "\n" for r in REFS))
    return preds, refs, better


def test_score_files_values_match_metrics(mt_files: tuple[Path, Path, Path]) -> None:
    preds, refs, _ = mt_files
    out = score_files(preds, refs, ["bleu", "chrf", "ter", "rouge", "exact_match"],
                      options={"bleu": {"tokenize": "intl"}, "rouge": {"n_jobs": 1}}, bootstrap=200, seed=3)
    json.dumps(out, allow_nan=False)
    assert out["n_samples"] == 4 and out["comparison"] is None
    expected = {**M.bleu(HYPS, REFS, tokenize="intl"), **M.chrf(HYPS, REFS), **M.ter(HYPS, REFS),
                **M.rouge(HYPS, REFS, n_jobs=1), **M.exact_match(HYPS, REFS)}
    assert set(out["results"]) == set(expected)
    for key, value in expected.items():
        row = out["results"][key]
        assert row["value"] == pytest.approx(value, abs=1e-9)
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n"] == 4
    bleu = BLEU(tokenize="intl")
    bleu.corpus_score(HYPS, M.reference_streams(REFS))
    assert out["signatures"]["bleu"] == bleu.get_signature().format()
    again = score_files(preds, refs, ["bleu"], options={"bleu": {"tokenize": "intl"}}, bootstrap=200, seed=3)
    assert again["results"]["bleu"] == out["results"]["bleu"]


def test_score_files_compare_and_no_bootstrap(mt_files: tuple[Path, Path, Path]) -> None:
    preds, refs, better = mt_files
    out = score_files(preds, refs, ["chrf"], bootstrap=0, compare_path=better)
    assert out["results"]["chrf"]["ci_low"] is None
    cmp = out["comparison"]["chrf"]
    assert cmp["a"] == pytest.approx(M.chrf(HYPS, REFS)["chrf"])
    assert cmp["b"] == pytest.approx(M.chrf([r[0] for r in REFS], REFS)["chrf"])
    assert cmp["diff"] > 0 and 0 < cmp["p_value"] <= 1


def test_score_files_label_metrics(tmp_path: Path) -> None:
    preds = write(tmp_path / "preds.txt", "positive\n negative\npositive\nneutral \n")
    refs = write(tmp_path / "dev.tsv",
                 "text\tlabel\ngood\tpositive\nbad\tnegative\nmeh\tnegative\nok\tneutral\n")
    out = score_files(preds, refs, ["accuracy", "f1"], reference_field="label", bootstrap=100)
    expected = M.classification_metrics(["positive", "negative", "positive", "neutral"],
                                        ["positive", "negative", "negative", "neutral"])
    for key, value in expected.items():
        assert out["results"][key]["value"] == pytest.approx(value, abs=1e-12)
    multi = jsonl(tmp_path / "multi.jsonl", [{"label": ["a", "b"]}] * 4)
    with pytest.raises(LlmtuneError, match=r"multi\.jsonl, example 1: 2 references; accuracy needs one"):
        score_files(preds, multi, ["accuracy"])


def test_score_files_user_errors(mt_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    preds, refs, _ = mt_files
    short = write(tmp_path / "short.txt", "one\ntwo\n")
    with pytest.raises(LlmtuneError, match=r"short\.txt has 2 predictions but .*refs\.jsonl has 4 refer"):
        score_files(short, refs, ["bleu"])
    with pytest.raises(LlmtuneError, match=r"short\.txt has 2 predictions but .*refs\.jsonl has 4"):
        score_files(preds, refs, ["bleu"], compare_path=short)
    with pytest.raises(LlmtuneError, match="unknown metric 'blue'; choose from rouge, bleu"):
        score_files(preds, refs, ["blue"])
    with pytest.raises(LlmtuneError, match="bleu: unknown option 'tokenizer'; valid: tokenize"):
        score_files(preds, refs, ["bleu"], options={"bleu": {"tokenizer": "zh"}})
    with pytest.raises(LlmtuneError, match="unknown BLEU tokenize 'xx'"):
        score_files(preds, refs, ["bleu"], options={"bleu": {"tokenize": "xx"}})
    with pytest.raises(LlmtuneError, match=r"refs\.jsonl, line 1: no field 'target'"):
        score_files(preds, refs, ["bleu"], reference_field="target")
