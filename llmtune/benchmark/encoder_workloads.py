"""The encoder workloads of `llmtune benchmark`: sentence embeddings and masked-LM continued pretraining.

    embedding   llmtune `task: embedding` vs sentence-transformers' own SentenceTransformerTrainer (`st_fit`, from
                the `bench` extra), both with CoSENT on STS-B's scored pairs: the loss llmtune's recipe trains with
                on scored pairs (recipes/embedding.yaml's STS-B overrides; its bundled pairs use in-batch negatives,
                but only scored pairs give the held-out Spearman correlation that is the quality figure). Same
                model folder, rows, batch, learning rate, warm-up, steps, seed and precision; mean pooling and
                normalisation on both. Quality: Spearman (x100) of cosine vs gold on the held-out split, both
                sides' saved folders encoded and scored by one function (`embedding_quality`).
    masked_lm   llmtune `task: masked_lm` vs transformers' run_mlm.py (tokenize with special tokens, group_texts
                into blocks of max_seq_length, DataCollatorForLanguageModeling with mlm_probability 0.15, Trainer).
                Quality: loss / perplexity / accuracy of the masked tokens on the held-out text with the SAME
                fixed masks for both sides: each side's saved model is scored on llmtune's fixed-mask eval blocks
                (data.eval_mask_seed) by one function (`masked_lm_quality`); run_mlm's own evaluate() would draw
                fresh random masks, which no two runs share.

Registered into workloads.py, references.py, report.py and WORKLOADS by a few lines in each. This module imports
those lazily (inside functions): they import it at load time.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

NAMES = ("embedding", "masked_lm")
STS_MAX = 5.0  # STS-B's gold scores are 0-5

# max_steps=None: one epoch over all the training rows (embedding) or blocks (masked_lm) the source gives
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "embedding": {
        # STS-B sentences are short (~15 MiniLM tokens): 64 cuts almost none. small: 40 steps x 32 pairs (1,280
        # of the 5,749 training pairs, shuffled), scored on all 1,500 dev pairs. lr and warm-up as the recipe
        "tiny": {"model": "tiny-bert", "batch_size": 8, "max_steps": 4, "eval_rows": 32, "learning_rate": 1e-3,
                 "max_seq_length": 64},
        "small": {"model": "minilm-l6", "batch_size": 32, "max_steps": 40, "eval_rows": None, "learning_rate": 5e-5,
                  "max_seq_length": 64},
        # sentence-transformers' STS-B training example: batch 16, lr 2e-5, warm-up 10% (one epoch here)
        "full": {"model": "minilm-l6", "batch_size": 16, "max_steps": None, "eval_rows": None, "learning_rate": 2e-5,
                 "max_seq_length": 64},
    },
    "masked_lm": {
        # eval_lines: held-out paragraphs (dev.txt is Frankenstein, a book no training split holds); small: 300
        # of its 825 paragraphs, about 300 blocks of 128. lr, weight decay and warm-up as recipes/mlm.yaml
        "tiny": {"model": "tiny-bert", "batch_size": 4, "max_steps": 3, "eval_lines": 12, "learning_rate": 1e-3,
                 "max_seq_length": 64},
        "small": {"model": "minilm-l6", "batch_size": 16, "max_steps": 20, "eval_lines": 300, "learning_rate": 3e-4,
                  "max_seq_length": 128},
        "full": {"model": "minilm-l6", "batch_size": 16, "max_steps": None, "eval_lines": None,
                 "learning_rate": 1e-4, "max_seq_length": 128},
    },
}

# (metric, higher_is_better, absolute tolerance, relative tolerance), as workloads.QUALITY
QUALITY = {
    "embedding": ("eval_spearman", True, 1.0, 0.0),  # Spearman x100 on the held-out pairs: 1 point
    "masked_lm": ("eval_loss", False, 0.0, 0.02),  # fixed-mask eval loss: 2%
}
VARIANTS = {
    "embedding": ("st_fit",),
    # run_mlm's blocks all have max_seq_length tokens (its group_texts drops the short tails), so padding and
    # length grouping change nothing: its defaults are what a careful user runs too
    "masked_lm": ("ref_default",),
}
PEERS = {"st_fit": "sentence_transformers"}  # the side's package, from the `bench` extra
TITLES = {
    "embedding": "sentence embeddings, CoSENT (STS-B)",
    "masked_lm": "masked-LM continued pretraining (PD books)",
}
REFERENCE_NAMES = {
    ("embedding", "st_fit"): "sentence-transformers SentenceTransformerTrainer, CoSENTLoss",
    ("masked_lm", "ref_default"): "run_mlm.py (group_texts, DataCollatorForLanguageModeling)",
}
LLMTUNE_NAMES = {
    "embedding": "both texts of a batch in one forward, dynamic padding",
    "masked_lm": "blocks across lines, seeded masks per batch",
}


def _bundled_dir() -> Path:
    from llmtune.benchmark import workloads as w

    return w.BUNDLED


# ---- data ------------------------------------------------------------------------------------------------


def sts_rows(data_dir: Path | None) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """STS-B train/dev as {sentence1, sentence2, score 0-5} (--data-dir's stsb/), else scored pairs made from
    llmtune's bundled question/answer pairs: each question with its own answer (5) and with another row's (0)."""
    from llmtune.benchmark import workloads as w

    folder = data_dir / "stsb" if data_dir is not None else None
    if folder is not None and (folder / "train.jsonl").exists() and (folder / "dev.jsonl").exists():
        def rows(p: Path) -> list[dict[str, Any]]:
            return [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": float(r["score"])}
                    for r in w._read_jsonl(p)]
        return {"train": rows(folder / "train.jsonl"), "eval": rows(folder / "dev.jsonl")}, \
            f"{folder} (--data-dir), train shuffled (seed 0)"
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("train", "eval"):
        pairs = w._read_jsonl(_bundled_dir() / "pairs" / f"{split}.jsonl")
        other = list(range(len(pairs)))
        random.Random(1).shuffle(other)
        scored = []
        for i, r in enumerate(pairs):
            scored.append({"sentence1": r["anchor"], "sentence2": r["positive"], "score": STS_MAX})
            j = other[i] if other[i] != i else (i + 1) % len(pairs)
            scored.append({"sentence1": r["anchor"], "sentence2": pairs[j]["positive"], "score": 0.0})
        out[split] = scored
    return out, "bundled llmtune:pairs as scored pairs (own answer 5, another row's 0), train shuffled (seed 0)"


def book_lines(data_dir: Path | None) -> tuple[dict[str, list[str]], str]:
    """The public-domain books (--data-dir's pd_books/: one paragraph a line; dev is a book of its own), else
    llmtune's bundled gazetteer paragraphs (llmtune:mlm)."""
    from llmtune.benchmark import workloads as w

    folder = data_dir / "pd_books" if data_dir is not None else None
    if folder is not None and (folder / "train.txt").exists() and (folder / "dev.txt").exists():
        return {s: [t for t in w._read_lines(folder / f"{f}.txt") if t.strip()] for s, f in
                (("train", "train"), ("eval", "dev"))}, f"{folder} (--data-dir)"
    return {s: [r["text"] for r in w._read_jsonl(_bundled_dir() / "mlm" / f"{s}.jsonl") if r["text"].strip()]
            for s in ("train", "eval")}, "bundled llmtune:mlm"


# ---- model folders ---------------------------------------------------------------------------------------


def build_encoder(kind: str, folder: Path, head: str) -> str:
    """MiniLM (or a 2-layer BERT from a config) saved once for both sides: `head` Model (a bare encoder: each side
    adds mean pooling and normalisation) or MaskedLM (MiniLM is an embedding model: its masked-LM head starts
    from random weights, drawn here once, seed 0)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    from llmtune.benchmark.workloads import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    if kind == "tiny-bert":
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)
        model = getattr(transformers, f"Bert{head}" if head == "Model" else f"BertFor{head}")(cfg)
    else:
        model = getattr(transformers, f"AutoModel{'' if head == 'Model' else 'For' + head}").from_pretrained(minilm_dir())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _model_name(kind: str) -> str:
    return "MiniLM-L6-H384" if kind == "minilm-l6" else kind


# ---- prepare (workloads.PREPARE) -------------------------------------------------------------------------


def prepare_embedding(s: dict[str, Any], spec: dict[str, Any], data_dir: Path | None, work: Path) -> None:
    from llmtune.benchmark import workloads as w

    data, origin = sts_rows(data_dir)
    train = list(data["train"])
    random.Random(0).shuffle(train)  # STS-B's train file is ordered by source: the first rows are all MSRpar
    steps, n = w._steps_and_rows(s, len(train))
    evals = data["eval"][: s["eval_rows"]] if s["eval_rows"] else data["eval"]
    spec["model"] = build_encoder(s["model"], work / "model", "Model")
    spec["model_name"] = _model_name(s["model"]) + ", mean pooling, normalised"
    spec["hp"] = {"batch_size": s["batch_size"], "eval_batch_size": 64, "max_steps": steps,
                  "learning_rate": s["learning_rate"], "max_seq_length": s["max_seq_length"],
                  "weight_decay": 0.0, "warmup_steps": steps // 10, "logging_steps": max(1, steps // 10),
                  "loss": "cosent", "cosent_scale": 20.0, "pooling": "mean", "normalize": True, "score_max": STS_MAX}
    spec["data"] = {"train": w.write_jsonl(work / "train.jsonl", train[:n]),
                    "eval": w.write_jsonl(work / "eval.jsonl", evals), "origin": origin,
                    "train_rows": n, "eval_rows": len(evals), "train_unit": "scored pairs"}


def prepare_masked_lm(s: dict[str, Any], spec: dict[str, Any], data_dir: Path | None, work: Path) -> None:
    """Training lines are taken in order until both sides' blocks fill max_steps batches: run_mlm's group_texts
    drops the short tail of each map batch of 1,000 lines, llmtune groups the whole split (one tail, kept), so
    the lines give llmtune at most a few more blocks than run_mlm; each side trains its first max_steps x batch
    blocks in its own shuffled order."""
    from transformers import AutoTokenizer

    from llmtune.benchmark import workloads as w

    data, origin = book_lines(data_dir)
    spec["model"] = build_encoder(s["model"], work / "model", "MaskedLM")
    tok = AutoTokenizer.from_pretrained(spec["model"])
    length, batch = s["max_seq_length"], s["batch_size"]
    counts = [len(ids) for ids in tok(data["train"])["input_ids"]]

    def ref_blocks(k: int) -> int:  # run_mlm's blocks from the first k lines (tails dropped per 1,000 lines)
        return sum(sum(counts[i:min(i + 1000, k)]) // length for i in range(0, k, 1000))

    if s["max_steps"] is None:
        n_lines = len(counts)
        steps = max(1, ref_blocks(n_lines) // batch)
    else:
        steps, n_lines, total = s["max_steps"], 0, 0
        while n_lines < len(counts) and total // length < steps * batch + 2 * (n_lines // 1000 + 1):
            total += counts[n_lines]
            n_lines += 1
        if ref_blocks(n_lines) < steps * batch:
            from llmtune.errors import LlmtuneError

            raise LlmtuneError(f"masked_lm: {origin} gives fewer than {steps} x {batch} blocks of {length} tokens")
    evals = data["eval"][: s["eval_lines"]] if s["eval_lines"] else data["eval"]
    spec["model_name"] = _model_name(s["model"]) + " + masked-LM head (fresh, seed 0)"
    spec["hp"] = {"batch_size": batch, "eval_batch_size": 32, "max_steps": steps, "learning_rate": s["learning_rate"],
                  "max_seq_length": length, "weight_decay": 0.01, "warmup_steps": round(0.06 * steps),
                  "logging_steps": max(1, steps // 10), "mlm_probability": 0.15, "eval_mask_seed": 0}
    spec["data"] = {"train": w.write_jsonl(work / "train.jsonl", [{"text": t} for t in data["train"][:n_lines]]),
                    "eval": w.write_jsonl(work / "eval.jsonl", [{"text": t} for t in evals]), "origin": origin,
                    "train_rows": steps * batch, "train_unit": f"blocks of {length} tokens",
                    "train_lines": n_lines, "eval_lines": len(evals)}


PREPARE = {"embedding": prepare_embedding, "masked_lm": prepare_masked_lm}


# ---- quality: one function per workload, for both sides ----------------------------------------------------


def embedding_quality(folder: str | Path, spec: dict[str, Any]) -> dict[str, float]:
    """Spearman and Pearson (x100) of cosine similarity vs the gold score on the eval pairs, from the embeddings of
    a saved sentence-transformers folder (either side's), encoded by llmtune in fp32 (pooling and normalisation as
    the folder's 1_Pooling and modules.json say)."""
    import torch
    import torch.nn.functional as F

    from llmtune.benchmark import workloads as w
    from llmtune.tasks import embedding as emb

    hp = spec["hp"]
    rows = w._read_jsonl(Path(spec["data"]["eval"]))
    model, tok = emb.load_trained(Path(folder), None, None)
    if torch.cuda.is_available():
        model = model.to("cuda")
    a = emb.encode_texts(model, tok, [r["sentence1"] for r in rows], hp["max_seq_length"], hp["eval_batch_size"])
    b = emb.encode_texts(model, tok, [r["sentence2"] for r in rows], hp["max_seq_length"], hp["eval_batch_size"])
    cos = F.cosine_similarity(a, b, dim=-1).tolist()
    gold = [float(r["score"]) for r in rows]
    return {"eval_spearman": 100 * emb.spearman(cos, gold), "eval_pearson": 100 * emb.pearson(cos, gold)}


def _mlm_recipe(spec: dict[str, Any], seed: int, out: Path) -> Any:
    from llmtune.benchmark import workloads as w
    from llmtune.recipe import build_recipe

    hp = spec["hp"]
    return build_recipe({
        "task": "masked_lm", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "text_column": "text",
                 "mlm_probability": hp["mlm_probability"], "eval_mask_seed": hp["eval_mask_seed"]},
        "train": {**w._regularised(spec, seed, out), "per_device_eval_batch_size": hp["eval_batch_size"]},
        "eval": {"before_training": False},  # no base-model eval: the reference does none
    }, source="benchmark:masked_lm")


def masked_lm_quality(folder: str | Path, spec: dict[str, Any]) -> dict[str, float]:
    """Loss, perplexity and accuracy of the masked tokens of the eval text, with llmtune's fixed eval masks (the
    same blocks and masks whichever model is scored), the model in fp32."""
    import math

    import torch
    from datasets import Dataset
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from llmtune.benchmark import workloads as w
    from llmtune.data import Split
    from llmtune.tasks import masked_lm as mlm

    recipe = _mlm_recipe(spec, 0, Path(folder) / "unused")
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForMaskedLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    split = Split("eval", Dataset.from_list(w._read_jsonl(Path(spec["data"]["eval"]))), spec["data"]["eval"])
    info = mlm.setup(recipe, {"eval": split}, tok)
    blocks = mlm.tokenize(recipe, tok, split, info)
    collate = mlm.Collator(tok, recipe.data.mlm_probability, 0, model.config.vocab_size)
    nll, count, correct = 0.0, 0, 0
    size = spec["hp"]["eval_batch_size"]
    with torch.no_grad():
        for start in range(0, len(blocks), size):
            batch = collate([blocks[i] for i in range(start, min(start + size, len(blocks)))])
            out = mlm.eval_step(model, {k: v.to(model.device) for k, v in batch.items()})
            nll += float(out["loss_sum"].sum())
            count += int(out["loss_count"].sum())
            correct += int(out["correct"].sum())
    loss = nll / max(count, 1)
    return {"eval_loss": loss, "eval_perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "eval_accuracy": correct / max(count, 1), "eval_masked_tokens": float(count)}


# ---- the llmtune sides (workloads.LLMTUNE) ---------------------------------------------------------------


def llmtune_embedding(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.benchmark import workloads as w
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    hp = spec["hp"]
    recipe = build_recipe({
        "task": "embedding", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "format": "scored",
                 "sentence1_column": "sentence1", "sentence2_column": "sentence2", "score_column": "score",
                 "score_max": hp["score_max"]},
        "embedding": {"pooling": hp["pooling"], "normalize": hp["normalize"], "loss": hp["loss"],
                      "cosent_scale": hp["cosent_scale"]},
        "train": w._regularised(spec, seed, out),
        "eval": {"before_training": False},  # no base-model eval: the reference does none
    }, source="benchmark:embedding")
    res = finetune(recipe)
    quality = embedding_quality(out, spec)
    quality["llmtune_eval_spearman"] = res["eval_spearman"]  # llmtune's own eval: the same number, a cross-check
    return {**w._train_figures(res, out), "quality": quality}


def llmtune_masked_lm(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.benchmark import workloads as w
    from llmtune.train import finetune

    res = finetune(_mlm_recipe(spec, seed, out))
    quality = masked_lm_quality(out, spec)
    quality["llmtune_eval_loss"] = res["eval_loss"]  # llmtune's own eval on the same fixed masks: a cross-check
    return {**w._train_figures(res, out), "quality": quality}


LLMTUNE = {"embedding": llmtune_embedding, "masked_lm": llmtune_masked_lm}


# ---- the reference sides (references.REFERENCES) ---------------------------------------------------------


def st_fit(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    """sentence-transformers' own training: SentenceTransformerTrainer with CoSENTLoss (scale 20, its default),
    Transformer + mean Pooling + Normalize built on the shared folder, the gold score / 5 as the label."""
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses, modules
    from transformers import set_seed

    from llmtune.benchmark.references import bf16, trainer_figures, training_args

    hp = spec["hp"]
    set_seed(seed)
    transformer = modules.Transformer(spec["model"], max_seq_length=hp["max_seq_length"])
    model = SentenceTransformer(modules=[transformer, modules.Pooling(transformer.get_embedding_dimension(),
                                                                      pooling_mode=hp["pooling"]),
                                         *([modules.Normalize()] if hp["normalize"] else [])])
    train = load_dataset("json", data_files={"train": spec["data"]["train"]})["train"]
    train = train.select_columns(["sentence1", "sentence2", "score"]).map(
        lambda r: {"score": r["score"] / hp["score_max"]})
    args = training_args(hp, seed, out, tuned=False, bf16=bf16(spec, variant), cls=SentenceTransformerTrainingArguments)
    # the Trainer counts tokens from `input_ids`, which a sentence-transformers batch does not have (its texts are
    # sentence_0_input_ids, sentence_1_...): counted below from the rows instead, as llmtune counts them
    args.include_num_input_tokens_seen = "no"
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                         loss=losses.CoSENTLoss(model, scale=hp["cosent_scale"]))
    train_result = trainer.train()
    trainer.save_model()
    figures = trainer_figures(trainer, train_result)
    tokens = sum(len(ids) for column in ("sentence1", "sentence2")
                 for ids in model.tokenizer(list(train[column]), truncation=True, max_length=hp["max_seq_length"])["input_ids"])
    figures["train_tokens_per_second"] = tokens / figures["train_runtime"]
    return {**figures, "quality": embedding_quality(out, spec)}


def run_mlm(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    """examples/pytorch/language-modeling/run_mlm.py without --line_by_line: tokenize every line with its special
    tokens, group_texts into blocks of max_seq_length (each map batch's tail dropped), DataCollatorForLanguageModeling
    (mlm_probability 0.15: 80% [MASK], 10% random, 10% kept), Trainer."""
    from itertools import chain

    from datasets import load_dataset
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, set_seed

    from llmtune.benchmark.references import bf16, trainer_figures, training_args

    hp = spec["hp"]
    set_seed(seed)
    raw = load_dataset("json", data_files={"train": spec["data"]["train"]})
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForMaskedLM.from_pretrained(spec["model"])
    embedding_size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embedding_size:
        model.resize_token_embeddings(len(tokenizer))
    max_seq_length = min(hp["max_seq_length"], tokenizer.model_max_length)

    def tokenize_function(examples: dict[str, list[Any]]) -> Any:
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])

    def group_texts(examples: dict[str, list[Any]]) -> dict[str, Any]:
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated[next(iter(examples))])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {k: [t[i: i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated.items()}

    train_dataset = tokenized["train"].map(group_texts, batched=True)
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=hp["mlm_probability"])
    trainer = Trainer(model=model, args=training_args(hp, seed, out, tuned=False, bf16=bf16(spec, variant)),
                      train_dataset=train_dataset, processing_class=tokenizer, data_collator=collator)
    train_result = trainer.train()
    trainer.save_model()
    return {**trainer_figures(trainer, train_result), "quality": masked_lm_quality(out, spec),
            "train_blocks": len(train_dataset)}


REFERENCES = {"embedding": {"st_fit": st_fit}, "masked_lm": {"ref_default": run_mlm}}
