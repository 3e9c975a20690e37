"""Sentence embeddings: losses on literal embeddings, correlation and retrieval metrics against references, the
sentence-transformers folder file by file, and runs through the CLI for pairs and scored pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli, write_jsonl

from llmtune.tasks import embedding as emb


def test_in_batch_loss_equals_a_direct_computation() -> None:
    import torch

    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    p = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 1.0]])
    scale = 20.0

    def cos(u: list[float], v: list[float]) -> float:
        return sum(x * y for x, y in zip(u, v, strict=True)) / math.hypot(*u) / math.hypot(*v)

    def ce(rows: Any, cols: Any, skip: set[tuple[int, int]] = frozenset()) -> float:  # type: ignore[assignment]
        total = 0.0
        for i in range(len(rows)):
            logits = [scale * cos(rows[i], cols[j]) for j in range(len(cols)) if (i, j) not in skip]
            mine = scale * cos(rows[i], cols[i])
            total += -mine + math.log(sum(math.exp(x) for x in logits))
        return total / len(rows)

    A, P = a.tolist(), p.tolist()
    assert float(emb.mnrl_loss(a, p, scale)) == pytest.approx(ce(A, P), rel=1e-5)
    assert float(emb.mnrl_loss(a, p, scale, symmetric=True)) == pytest.approx((ce(A, P) + ce(P, A)) / 2, rel=1e-5)
    # a hard negative joins every row's candidates
    n = torch.tensor([[1.0, 0.1]])
    assert float(emb.mnrl_loss(a, torch.cat([p, n]), scale)) == pytest.approx(ce(A, P + n.tolist()), rel=1e-5)
    # rows 0 and 2 hold the same positive text: neither is scored as the other's negative
    keys = torch.tensor([7, 8, 7])
    assert float(emb.mnrl_loss(a, p, scale, keys, keys)) == pytest.approx(ce(A, P, {(0, 2), (2, 0)}), rel=1e-5)
    # CoSENT: log(1 + sum over score_i > score_j of exp(scale (cos_j - cos_i)))
    s = torch.tensor([1.0, 0.2, 0.5])
    c = [cos(x, y) for x, y in zip(A, P, strict=True)]
    terms = [math.exp(scale * (c[j] - c[i])) for i in range(3) for j in range(3) if s[i] > s[j]]
    assert float(emb.cosent_loss(a, p, s, scale)) == pytest.approx(math.log(1 + sum(terms)), rel=1e-5)


def test_correlations_and_retrieval_match_references() -> None:
    import random

    import torch
    from scipy.stats import pearsonr, spearmanr

    rng = random.Random(0)
    x = [rng.random() for _ in range(200)]
    y = [round(v * 5 + rng.gauss(0, 1)) / 5 for v in x]  # ties in y
    assert emb.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert emb.pearson(x, y) == pytest.approx(pearsonr(x, y).statistic, abs=1e-12)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    corpus = torch.tensor([[0.0, 1.0], [1.0, 0.1], [1.0, 0.9]])
    metrics, rank = emb.retrieval_metrics(q, corpus, [1, 2, 0])
    assert rank == [1, 2, 3]  # q1's gold 0.67 < 1.0; q2's gold 0.71 < 0.77, 0.999
    assert metrics["recall@1"] == pytest.approx(1 / 3) and metrics["recall@5"] == 1.0
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3)


def test_pooling() -> None:
    import torch

    h = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert emb.pool(h, m, "mean").tolist() == [[2.0, -1.0]]
    assert emb.pool(h, m, "cls").tolist() == [[1.0, 2.0]]
    assert emb.pool(h, m, "max").tolist() == [[3.0, 2.0]]


def _recipe(tmp_path: Path, model: Path, train: Path, eval_: Path, out: Path, **extra: Any) -> Path:
    recipe: dict[str, Any] = {
        "task": "embedding", "model": {"name": str(model)},
        "data": {"train_file": str(train), "eval_file": str(eval_)},
        "train": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "max_seq_length": 32}}
    for key, value in extra.items():
        section, _, field = key.partition("__")
        recipe.setdefault(section, {})[field] = value
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _bundled(name: str, n: int) -> list[dict[str, Any]]:
    folder = Path(emb.__file__).resolve().parent.parent / "datasets" / "pairs"
    return [json.loads(x) for x in (folder / name).read_text(encoding="utf-8").splitlines()[:n]]


def test_pairs_end_to_end_and_folder_layout(tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    train = _bundled("train.jsonl", 16)
    train[1]["positive"] = train[0]["positive"]  # a duplicate text in one batch
    for r, neg in zip(train, reversed(train), strict=True):
        r["negative"] = neg["positive"]
    out = tmp_path / "pairs"
    recipe = _recipe(tmp_path, tiny_bert, write_jsonl(tmp_path / "t.jsonl", train),
                     write_jsonl(tmp_path / "e.jsonl", _bundled("eval.jsonl", 12)), out, embedding__symmetric=True)
    res = run_cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "main_score"):
        assert 0 <= results[f"eval_{key}"] <= 1 and f"base_eval_{key}" in results
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert results["eval_recall@1"] == pytest.approx(sum(r["rank"] == 1 for r in records) / len(records))

    # the sentence-transformers layout, file by file
    modules = json.loads((out / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[1]) for m in modules] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"] is True
    assert not pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_max_tokens"]
    assert (out / "2_Normalize").is_dir()
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "config_sentence_transformers.json"):
        assert (out / name).is_file(), name

    # plain AutoModel + mean pooling + normalisation gives the vectors llmtune predicts
    (tmp_path / "in.txt").write_text("Which river flows through Lisk?\nLisk stands on the Teme.\n", encoding="utf-8")
    res = run_cli("predict", out, "--input", tmp_path / "in.txt", "--output", tmp_path / "p.jsonl")
    assert res.exit_code == 0, res.output
    got = torch.tensor([json.loads(x)["embedding"] for x in (tmp_path / "p.jsonl").read_text().splitlines()])
    model, tok = AutoModel.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    enc = tok(["Which river flows through Lisk?", "Lisk stands on the Teme."], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(got, ref, atol=1e-5)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    st = SentenceTransformer(str(out), device="cpu")
    assert torch.allclose(torch.tensor(st.encode(["Which river flows through Lisk?", "Lisk stands on the Teme."])),
                          got, atol=1e-5)


def test_scored_pairs_end_to_end(tiny_bert: Path, tmp_path: Path) -> None:
    from scipy.stats import spearmanr

    rows = [{"sentence1": r["anchor"], "sentence2": r["positive"], "score": float(k % 6)}
            for k, r in enumerate(_bundled("train.jsonl", 24))]
    out = tmp_path / "sts"
    recipe = _recipe(tmp_path, tiny_bert, write_jsonl(tmp_path / "t.jsonl", rows[:16]),
                     write_jsonl(tmp_path / "e.jsonl", rows[16:]), out, data__score_max=5.0)
    res = run_cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "eval_results.json").read_text())
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["score"] for r in records] == pytest.approx([r["score"] for r in rows[16:]])
    ref = 100 * spearmanr([r["cosine"] for r in records], [r["score"] for r in records]).statistic
    assert results["eval_spearman"] == pytest.approx(ref, abs=1e-3)  # cosines rounded to 6 places in the records
    assert results["eval_main_score"] == results["eval_spearman"] and "base_eval_spearman" in results


def test_recipe_validates() -> None:
    from llmtune.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "embedding.yaml")
    assert recipe.task == "embedding" and recipe.data.dataset == "llmtune:pairs"


def test_eval_of_a_base_encoder_uses_the_recipes_pooling(tiny_bert: Path, tmp_path: Path) -> None:
    """`llmtune eval --model ENCODER --recipe R` (the baseline before training) pools as the recipe says: cls and
    mean pooling of the same untrained encoder give different retrieval scores. (A plain encoder folder, which the
    registry takes for a decoder, was refused as "a causal_lm model"; an alias was pooled by the mean always.)"""
    import json

    from conftest import run_cli

    train = tmp_path / "t.jsonl"
    train.write_text("".join(json.dumps({"anchor": f"question number {i} about {w}", "positive": f"{w} answer {i}"})
                             + "\n" for i, w in enumerate(["cats", "dogs", "rain", "tea", "maps", "jazz", "salt", "snow"])))
    scores = {}
    for pooling in ("mean", "cls"):
        recipe = _recipe(tmp_path, tiny_bert, train, train, tmp_path / f"run-{pooling}", embedding__pooling=pooling)
        res = run_cli("eval", "--model", tiny_bert, "--recipe", recipe, "--bootstrap", "0", "--output-dir",
                      tmp_path / f"ev-{pooling}")
        assert res.exit_code == 0, res.output
        scores[pooling] = json.loads((tmp_path / f"ev-{pooling}" / "results.json").read_text())["results"]
    first = next(iter(scores["mean"]))
    assert scores["mean"][first]["mrr@10"]["value"] != scores["cls"][first]["mrr@10"]["value"]


SENTENCES = ["Which river flows through Lisk?", "Lisk stands on the Teme.",
             "A much longer sentence, so that the batch pads the other two rows by a dozen tokens or more.", "Tea."]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("normalize", [True, False])
def test_run_folder_loads_in_sentence_transformers(tiny_bert: Path, tmp_path: Path, pooling: str,
                                                   normalize: bool) -> None:
    """The real package: SentenceTransformer(run folder) gives the vectors `llmtune predict` gives (1e-5), in one
    padded batch, for every pooling, with and without the Normalize module."""
    st = pytest.importorskip("sentence_transformers")
    import torch

    out = tmp_path / f"run-{pooling}-{normalize}"
    recipe = _recipe(tmp_path, tiny_bert, write_jsonl(tmp_path / "t.jsonl", _bundled("train.jsonl", 8)),
                     write_jsonl(tmp_path / "e.jsonl", _bundled("eval.jsonl", 8)), out, train__max_steps=2,
                     embedding__pooling=pooling, embedding__normalize=normalize)
    res = run_cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    res = run_cli("predict", out, "--input", tmp_path / "in.txt", "--output", tmp_path / "p.jsonl")
    assert res.exit_code == 0, res.output
    got = torch.tensor([json.loads(x)["embedding"] for x in (tmp_path / "p.jsonl").read_text().splitlines()])

    model = st.SentenceTransformer(str(out), device="cpu")
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Transformer", "Pooling", *(["Normalize"] if normalize else [])]
    assert model[1].pooling_mode == pooling and model.max_seq_length == 32
    ref = torch.tensor(model.encode(SENTENCES, batch_size=len(SENTENCES)))
    assert ref.shape == got.shape == (len(SENTENCES), 32)
    assert torch.allclose(ref, got, atol=1e-5), (ref - got).abs().max()
    norms = ref.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) is normalize


def test_collator_counts_the_tokens_of_every_text() -> None:
    """tokens/s of an embedding run: every text a batch encodes (anchor, positive, negative), not the first alone."""
    rows = [{"input_ids": [1, 2, 3], "key": 1, "b_input_ids": [4, 5], "b_key": 2, "c_input_ids": [6], "c_key": 3},
            {"input_ids": [7], "key": 4, "b_input_ids": [8, 9, 10, 11], "b_key": 5, "c_input_ids": [12, 13], "c_key": 6}]
    batch = emb.Collator(pad_id=0)(rows)
    assert batch["n_tokens"].tolist() == [6, 7] and int(batch["n_examples"].sum()) == 2
    assert batch["b_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_a_folder_saved_by_sentence_transformers_6_loads_with_its_pooling(tiny_bert: Path, tmp_path: Path,
                                                                          pooling: str) -> None:
    """sentence-transformers 6 saves `pooling_mode: "cls"` (not the pooling_mode_* bools): llmtune's loader of a
    finished embedding model pools such a folder as it says (it pooled by the mean) and gives
    SentenceTransformer.encode's vectors (the embedding benchmark scores the reference's saved model this way)."""
    st = pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers.sentence_transformer import modules

    folder = tmp_path / f"st-{pooling}"
    model = st.SentenceTransformer(modules=[modules.Transformer(str(tiny_bert), max_seq_length=32),
                                            modules.Pooling(32, pooling_mode=pooling)], device="cpu")
    model.save(str(folder))
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode"] == pooling
    encoder, tokenizer = emb.load_trained(folder, None, None)
    assert encoder.pooling == pooling and not encoder.normalize
    got = emb.encode_texts(encoder, tokenizer, SENTENCES, 32)
    assert torch.allclose(got, torch.tensor(model.encode(SENTENCES)), atol=1e-5)


def test_llmtune_predict_on_a_folder_sentence_transformers_saved(tiny_bert: Path, tmp_path: Path) -> None:
    """`llmtune predict FOLDER` on a model sentence-transformers saved itself (no llmtune_info.json; its modules.json
    names the transformer, pooling and normalisation): embeddings equal to SentenceTransformer.encode's, truncated at
    its max_seq_length. Before, the bare BertModel config was taken for a decoder and the folder generated words."""
    st = pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers.sentence_transformer import modules

    from llmtune import runs

    folder = tmp_path / "st-saved"
    model = st.SentenceTransformer(modules=[modules.Transformer(str(tiny_bert), max_seq_length=8),
                                            modules.Pooling(32, pooling_mode="max"), modules.Normalize()], device="cpu")
    model.save(str(folder))
    assert runs.run_task(folder) == ("embedding", {})
    texts = [*SENTENCES, " ".join(["word"] * 40)]  # the last one is longer than max_seq_length
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    res = run_cli("predict", folder, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "p.jsonl")
    assert res.exit_code == 0, res.output
    got = torch.tensor([json.loads(x)["embedding"] for x in (tmp_path / "p.jsonl").read_text().splitlines()])
    assert torch.allclose(got, torch.tensor(model.encode(texts)), atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
