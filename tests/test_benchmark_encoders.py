"""`llmtune benchmark` for the encoder workloads (embedding vs sentence-transformers' trainer, masked_lm vs
run_mlm.py) end to end at tiny scale: tiny BERT, bundled data, a few steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


def test_benchmark_tiny_embedding_and_masked_lm(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = cli("benchmark", "--scale", "tiny", "--workloads", "embedding,masked_lm", "--output-dir", tmp_path,
              "--data-dir", tmp_path / "no-such-folder")
    assert res.exit_code == 0, res.output
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((out / "results.json").read_text())
    from llmtune.hardware import native_bf16

    fp32 = ["llmtune_fp32"] if native_bf16() else []
    emb, mlm = results["workloads"]["embedding"], results["workloads"]["masked_lm"]
    assert emb["data"]["origin"].startswith("bundled llmtune:pairs") and mlm["data"]["origin"] == "bundled llmtune:mlm"
    has_st = importlib.util.find_spec("sentence_transformers") is not None
    if not has_st:  # a missing peer is reported, never silently left out
        assert "sentence_transformers" in emb["peers_missing"]["st_fit"]
    expected = {"embedding": ["llmtune", *(["st_fit"] if has_st else []), *fp32],
                "masked_lm": ["llmtune", "ref_default", *fp32]}
    for name, entry in (("embedding", emb), ("masked_lm", mlm)):
        assert sorted(r["side"] for r in entry["runs"]) == sorted(expected[name])
        for run in entry["runs"]:
            assert "error" not in run, run
            assert run["samples_per_second"] > 0 and run["loss_curve"]
            assert run["global_step"] == entry["hp"]["max_steps"]
    by_side = {name: {r["side"]: r for r in entry["runs"]} for name, entry in (("embedding", emb), ("masked_lm", mlm))}

    # embedding: the shared scorer (llmtune encodes either side's saved folder) gives llmtune's own eval number
    # for llmtune's run; both sides train the same pairs, so their tokens per pair agree
    llm = by_side["embedding"]["llmtune"]["quality"]
    assert llm["eval_spearman"] == pytest.approx(llm["llmtune_eval_spearman"], abs=1e-6)
    for run in emb["runs"]:
        assert -100 <= run["quality"]["eval_spearman"] <= 100 and -100 <= run["quality"]["eval_pearson"] <= 100
    if has_st:
        st = by_side["embedding"]["st_fit"]
        per_pair = {s: r["tokens_per_second"] / r["samples_per_second"] for s, r in by_side["embedding"].items()}
        assert per_pair["llmtune"] == pytest.approx(per_pair["st_fit"], rel=0.01)
        assert st["quality"]["eval_spearman"] != llm["eval_spearman"]  # another trainer: not one model scored twice
        assert results["summary"]["embedding"]["vs"]["st_fit"]["quality"]["metric"] == "eval_spearman"

    # masked_lm: both models scored on the same fixed masks (same masked-token count), llmtune's by its own eval
    # too; run_mlm's blocks are all max_seq_length long, llmtune's keep the short tail
    llm, ref = by_side["masked_lm"]["llmtune"], by_side["masked_lm"]["ref_default"]
    assert llm["quality"]["eval_loss"] == pytest.approx(llm["quality"]["llmtune_eval_loss"], rel=1e-6)
    assert llm["quality"]["eval_masked_tokens"] == ref["quality"]["eval_masked_tokens"] > 0
    length = mlm["hp"]["max_seq_length"]
    assert ref["tokens_per_second"] / ref["samples_per_second"] == pytest.approx(length, rel=1e-3)  # rounded figures
    assert llm["tokens_per_second"] / llm["samples_per_second"] <= length * 1.001
    assert ref["train_blocks"] >= mlm["hp"]["max_steps"] * mlm["hp"]["batch_size"]
    for run in mlm["runs"]:
        assert run["quality"]["eval_perplexity"] == pytest.approx(2.718281828 ** run["quality"]["eval_loss"], rel=1e-6)

    table = (out / "results.md").read_text()
    assert "| masked-LM continued pretraining (PD books) |" in table and "run_mlm.py" in table
    if has_st:
        assert "| sentence embeddings, CoSENT (STS-B) |" in table and "SentenceTransformerTrainer" in table
