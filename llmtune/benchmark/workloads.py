"""The workloads: their data, their settings per scale, the model folders both sides load, and llmtune's side.

Fairness starts here. Each workload is prepared once, before any measured run: its data rows are written to
JSON Lines files and its initial model is saved to a folder, and both sides read those same files and load that
same folder. A workload's `hp` (batch size, steps, learning rate, maximum lengths...) is one dict that both
sides take their settings from.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

from llmtune.benchmark import preference_workload
from llmtune.errors import LlmtuneError

BUNDLED = Path(__file__).resolve().parent.parent / "datasets"

# ---- settings --------------------------------------------------------------------------------------------
# max_steps=None: one epoch over all the training rows the source has. Training rows are cut to
# max_steps * batch_size, so no side ever trains on a partial batch or a second epoch.

T5_SMALL = {"d_model": 256, "d_kv": 32, "d_ff": 1024, "num_layers": 3, "num_heads": 8}
T5_FULL = {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8}  # t5-small's shape
T5_TINY = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2}

SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {
        "tiny": {"model": "tiny-bert", "batch_size": 8, "max_steps": 4, "eval_rows": 32, "learning_rate": 1e-3},
        # at least 200 optimizer steps at the default scale (and 60 for LoRA below): enough steady-state training
        # that start-up, the first slow steps and the noise of a shared machine do not decide the ratio
        "small": {"model": "minilm-l6", "batch_size": 32, "max_steps": 200, "eval_rows": None, "learning_rate": 5e-5},
        "full": {"model": "minilm-l6", "batch_size": 32, "max_steps": None, "eval_rows": None, "learning_rate": 5e-5},
    },
    "summarization": {
        "tiny": {"t5": T5_TINY, "batch_size": 4, "max_steps": 4, "eval_rows": 8, "learning_rate": 1e-3,
                 "max_source_length": 64, "max_target_length": 16, "max_new_tokens": 8},
        "small": {"t5": T5_SMALL, "batch_size": 8, "max_steps": 30, "eval_rows": 64, "learning_rate": 1e-3,
                  "max_source_length": 512, "max_target_length": 64, "max_new_tokens": 32},
        "full": {"t5": T5_FULL, "batch_size": 16, "max_steps": None, "eval_rows": None, "learning_rate": 1e-3,
                 "max_source_length": 512, "max_target_length": 64, "max_new_tokens": 64},
    },
    "causal_lm": {
        "tiny": {"model": "tiny-llama", "batch_size": 4, "max_steps": 3, "eval_rows": 8, "learning_rate": 1e-3,
                 "max_seq_length": 128},
        "small": {"model": "smollm2-135m", "batch_size": 4, "max_steps": 60, "eval_rows": 64, "learning_rate": 2e-4,
                  "max_seq_length": 384},
        "full": {"model": "smollm2-135m", "batch_size": 8, "max_steps": None, "eval_rows": None,
                 "learning_rate": 5e-4, "max_seq_length": 512},
    },
    # long examples (SciTLDR abstracts of 200+ tokens as summarisation instructions: 250-400 tokens an example,
    # as DialogSum's dialogues), batch 8: where packing rows must beat padding, and memory shows
    "causal_lm_long": {
        "tiny": {"model": "tiny-llama", "batch_size": 4, "max_steps": 2, "eval_rows": 8, "learning_rate": 1e-3,
                 "max_seq_length": 512},
        "small": {"model": "smollm2-135m", "batch_size": 8, "max_steps": 4, "eval_rows": 16, "learning_rate": 5e-4,
                  "max_seq_length": 512},
        "full": {"model": "smollm2-135m", "batch_size": 8, "max_steps": 60, "eval_rows": 200, "learning_rate": 5e-4,
                 "max_seq_length": 512},
    },
    "generation": {
        # the model: a T5 built from a config and trained by llmtune for `prepare_steps` (not measured), so that
        # it writes summaries of varying length and stops on its own, as a real model does
        "tiny": {"t5": T5_TINY, "prepare_steps": 2, "eval_rows": 16, "batch_size": 8, "max_source_length": 64,
                 "max_new_tokens": 8},
        "small": {"t5": T5_SMALL, "prepare_steps": 100, "eval_rows": 300, "batch_size": 32,
                  "max_source_length": 512, "max_new_tokens": 48},
        "full": {"t5": T5_FULL, "prepare_steps": 600, "eval_rows": None, "batch_size": 32,
                 "max_source_length": 512, "max_new_tokens": 64},
    },
    "ner": {
        # WNUT-17 sentences are short (~35 MiniLM tokens): 128 cuts almost none
        "tiny": {"model": "tiny-bert", "batch_size": 8, "max_steps": 4, "eval_rows": 32, "learning_rate": 1e-3,
                 "max_seq_length": 128},
        "small": {"model": "minilm-l6", "batch_size": 16, "max_steps": 60, "eval_rows": None, "learning_rate": 3e-4,
                  "max_seq_length": 128},
        "full": {"model": "minilm-l6", "batch_size": 16, "max_steps": None, "eval_rows": None, "learning_rate": 1e-4,
                 "max_seq_length": 128},
    },
    "qa": {
        # run_qa.py's 384/128 at full scale; small keeps 256-token windows (the stride is still 128) so that its
        # few steps fit in a couple of minutes on 2 cores
        "tiny": {"model": "tiny-bert", "batch_size": 8, "max_steps": 4, "eval_rows": 16, "learning_rate": 1e-3,
                 "max_seq_length": 128, "doc_stride": 32},
        "small": {"model": "minilm-l6", "batch_size": 16, "max_steps": 12, "eval_rows": 200, "learning_rate": 3e-4,
                  "max_seq_length": 256, "doc_stride": 128},
        "full": {"model": "minilm-l6", "batch_size": 16, "max_steps": None, "eval_rows": None, "learning_rate": 1e-4,
                 "max_seq_length": 384, "doc_stride": 128},
    },
    "metrics": {
        "tiny": {"pairs": 300},
        "small": {"pairs": 20_000},
        "full": {"pairs": 20_000},
    },
}

# what each workload is scored by, and how far llmtune may fall behind the reference before it counts as worse:
# (metric, higher_is_better, absolute tolerance, relative tolerance)
QUALITY = {
    "classification": ("eval_accuracy", True, 0.01, 0.0),
    "summarization": ("eval_rougeL", True, 0.5, 0.0),
    "causal_lm": ("eval_loss", False, 0.0, 0.02),
    "causal_lm_long": ("eval_loss", False, 0.0, 0.02),
    "generation": ("rougeL", True, 0.5, 0.0),
    "metrics": ("bleu", True, 1e-9, 0.0),
    "ner": ("eval_f1", True, 0.02, 0.0),  # seqeval entity F1 in [0, 1]
    "qa": ("eval_f1", True, 2.0, 0.0),  # SQuAD F1 in points (0-100)
}

# metric scoring must give the same numbers on both sides. rougeLsum is left out: llmtune splits sentences with
# a regex (nltk's punkt cannot be downloaded offline), the plain loop scores the text unsplit.
IDENTICAL = {"metrics": ("rouge1", "rouge2", "rougeL", "bleu")}

# the reference variants of each workload (see references.py for what each one is)
VARIANTS = {
    "classification": ("ref_default", "ref_tuned"),
    "summarization": ("ref_default", "ref_tuned"),
    # llmtune_padded: llmtune itself with data.packing=false (packing must not cost more than padding; GSM8K's
    # short examples share rows, causal_lm_long's rarely do). The first variant runs next to llmtune.
    "causal_lm": ("llmtune_padded", "ref_default", "ref_tuned", "trl_sft"),
    "causal_lm_long": ("llmtune_padded", "ref_tuned", "trl_sft"),
    "generation": ("ref_default", "ref_tuned"),
    "metrics": ("ref_default",),
    # run_ner.py pads per batch by default; run_qa.py pads to max_seq_length by default, which a careful user
    # turns off: one variant each, as such a user runs them (dynamic padding + group_by_length)
    "ner": ("ref_tuned",),
    "qa": ("ref_tuned",),
}

# where llmtune trains with mixed_precision auto, as its recipes for these tasks do (the seq2seq recipes train in
# fp32, and so does the summarization workload): on hardware with native bf16 these workloads also run a
# `llmtune_fp32` side (llmtune with mixed_precision no), so the report can show how much of the gain is bf16
FP32_SIDE = "llmtune_fp32"
AUTOCAST = ("classification", "causal_lm", "causal_lm_long", "ner", "qa")

# issue #16's targets, like for like and at equal quality (a target is met only where llmtune's quality is not
# worse beyond the noise): (reference variant, figure, minimum llmtune/reference ratio). The llmtune_padded side
# is llmtune itself: packing must never cost more than padding. ref_default (a script's defaults) is llmtune's own
# bar, kept beside the tuned and peer references.
TARGETS = {
    "classification": [("ref_default", "samples_per_second", 2.0), ("ref_tuned", "samples_per_second", 1.5)],
    "causal_lm": [("ref_default", "tokens_per_second", 1.5), ("llmtune_padded", "tokens_per_second", 1.0),
                  ("trl_sft", "tokens_per_second", 2.0)],
    "causal_lm_long": [("llmtune_padded", "tokens_per_second", 1.0), ("trl_sft", "tokens_per_second", 2.0)],
    "generation": [("ref_default", "samples_per_second", 1.5)],
    "metrics": [("ref_default", "samples_per_second", 1.5)],
    # every new workload >= 1.3x its reference
    "ner": [("ref_tuned", "samples_per_second", 1.3)],
    "qa": [("ref_tuned", "samples_per_second", 1.3)],
    "masked_lm": [("ref_default", "samples_per_second", 1.3)],
    "embedding": [("st_fit", "samples_per_second", 1.3)],
    "preference": [("trl_dpo", "samples_per_second", 1.3)],
}
# peak memory at most this share of every reference's (not of llmtune's own padded side)
MEMORY_TARGET = 0.7
OWN_SIDES = ("llmtune_padded",)
# the least MFU (of the measured peak in the run's precision) llmtune's side must reach: LoRA SFT
MFU_TARGETS = {"causal_lm": 0.25, "causal_lm_long": 0.25}


# ---- data ------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def _read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


_HUB_REACHABLE: list[bool] = []


def hub_reachable() -> bool:
    """One quick connection attempt, remembered: offline, `datasets` would retry each dataset for ~25 s."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    if not _HUB_REACHABLE:
        import socket

        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            _HUB_REACHABLE.append(True)
        except OSError:
            _HUB_REACHABLE.append(False)
    return _HUB_REACHABLE[0]


def _hub(name: str, config: str | None) -> Any:
    """A hub dataset, or None when the hub cannot be reached."""
    if not hub_reachable():
        return None
    try:
        import datasets

        return datasets.load_dataset(name, config)
    except Exception:  # no network, a renamed dataset...: the next source is tried
        return None


def _join(value: Any) -> str:
    return " ".join(s.strip() for s in value) if isinstance(value, list) else str(value)


def _refs(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def load_source(name: str, data_dir: Path | None) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """(train/eval rows in the workload's columns, where they came from): --data-dir, else the hub, else bundled."""
    if data_dir is not None:
        found = _from_dir(name, data_dir)
        if found is not None:
            return found
    found = _from_hub(name)
    if found is not None:
        return found
    return _bundled(name)


def _from_dir(name: str, d: Path) -> tuple[dict[str, list[dict[str, Any]]], str] | None:
    if name == "sst2" and (d / "sst2" / "train.tsv").exists():
        def tsv(p: Path) -> list[dict[str, Any]]:
            with p.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                return [{"text": r.get("text", r.get("sentence")), "label": int(r["label"])} for r in reader]
        return {"train": tsv(d / "sst2" / "train.tsv"), "eval": tsv(d / "sst2" / "dev.tsv")}, f"{d / 'sst2'} (--data-dir)"
    if name == "scitldr" and (d / "scitldr" / "train.jsonl").exists():
        def rows(p: Path) -> list[dict[str, Any]]:
            return [{"source": _join(r["source"]), "target": _refs(r["target"])[0], "references": _refs(r["target"])}
                    for r in _read_jsonl(p)]
        return ({"train": rows(d / "scitldr" / "train.jsonl"), "eval": rows(d / "scitldr" / "dev.jsonl")},
                f"{d / 'scitldr'} (--data-dir)")
    if name == "gsm8k" and (d / "gsm8k" / "train.jsonl").exists():
        def qa(p: Path) -> list[dict[str, Any]]:
            return [{"question": r["question"], "answer": r["answer"]} for r in _read_jsonl(p)]
        return {"train": qa(d / "gsm8k" / "train.jsonl"), "eval": qa(d / "gsm8k" / "test.jsonl")}, \
            f"{d / 'gsm8k'} (--data-dir)"
    if name == "wnut17" and (d / "wnut17" / "train.jsonl").exists():
        def tagged(p: Path) -> list[dict[str, Any]]:
            return [{"tokens": r["tokens"], "ner_tags": r["ner_tags"]} for r in _read_jsonl(p)]
        return {"train": tagged(d / "wnut17" / "train.jsonl"), "eval": tagged(d / "wnut17" / "dev.jsonl")}, \
            f"{d / 'wnut17'} (--data-dir)"
    if name == "squad" and (d / "squad" / "train.jsonl").exists():
        train, held_out = squad_split(_read_jsonl(d / "squad" / "train.jsonl"))
        return {"train": train, "eval": held_out}, f"{d / 'squad'} train.jsonl, held-out articles as eval (--data-dir)"
    if name == "multi30k" and (d / "multi30k" / "train.de.gz").exists():
        return {"train": [{"text": t} for t in _read_lines(d / "multi30k" / "train.de.gz")], "eval": []}, \
            f"{d / 'multi30k'} train.de (--data-dir)"
    return None


def _from_hub(name: str) -> tuple[dict[str, list[dict[str, Any]]], str] | None:
    if name == "sst2":
        ds = _hub("nyu-mll/glue", "sst2")
        if ds is not None:
            return {"train": [{"text": r["sentence"], "label": r["label"]} for r in ds["train"]],
                    "eval": [{"text": r["sentence"], "label": r["label"]} for r in ds["validation"]]}, "hub nyu-mll/glue sst2"
    if name == "scitldr":
        ds = _hub("allenai/scitldr", "Abstract")
        if ds is not None:
            def rows(split: Any) -> list[dict[str, Any]]:
                return [{"source": _join(r["source"]), "target": _refs(r["target"])[0],
                         "references": _refs(r["target"])} for r in split]
            return {"train": rows(ds["train"]), "eval": rows(ds["validation"])}, "hub allenai/scitldr Abstract"
    if name == "gsm8k":
        ds = _hub("openai/gsm8k", "main")
        if ds is not None:
            return {"train": [dict(question=r["question"], answer=r["answer"]) for r in ds["train"]],
                    "eval": [dict(question=r["question"], answer=r["answer"]) for r in ds["test"]]}, "hub openai/gsm8k main"
    if name == "multi30k":
        ds = _hub("bentrevett/multi30k", None)
        if ds is not None:
            return {"train": [{"text": r["de"]} for r in ds["train"]], "eval": []}, "hub bentrevett/multi30k (de)"
    return None


def _bundled(name: str) -> tuple[dict[str, list[dict[str, Any]]], str]:
    def rows(folder: str, split: str) -> list[dict[str, Any]]:
        return _read_jsonl(BUNDLED / folder / f"{split}.jsonl")

    if name == "sst2":
        return {s: [{"text": r["text"], "label": r["label"]} for r in rows("sentiment", s)] for s in ("train", "eval")}, \
            "bundled llmtune:sentiment"
    if name == "scitldr":
        return {s: [{"source": r["document"], "target": _refs(r["summary"])[0], "references": _refs(r["summary"])}
                    for r in rows("summarize", s)] for s in ("train", "eval")}, "bundled llmtune:summarize"
    if name == "gsm8k":
        from llmtune.tasks.causal_lm import user_content

        return {s: [{"question": user_content(r["instruction"], r.get("input")), "answer": r["output"]}
                    for r in rows("instruct", s)] for s in ("train", "eval")}, "bundled llmtune:instruct"
    if name == "wnut17":
        return {s: [{"tokens": r["tokens"], "ner_tags": r["ner_tags"]} for r in rows("ner", s)]
                for s in ("train", "eval")}, "bundled llmtune:ner"
    if name == "squad":
        return {s: [_squad_row(r) for r in rows("qa", s)] for s in ("train", "eval")}, "bundled llmtune:qa"
    if name == "multi30k":
        texts = [r["summary"] if isinstance(r["summary"], str) else r["summary"][0]
                 for s in ("train", "eval") for r in rows("summarize", s)]
        return {"train": [{"text": t} for t in texts], "eval": []}, "bundled llmtune:summarize (summaries)"
    raise LlmtuneError(f"unknown benchmark data set {name}")


def _squad_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(r["id"]), "context": r["context"], "question": r["question"],
            "answers": {"text": list(r["answers"]["text"]), "answer_start": list(r["answers"]["answer_start"])}}


def squad_split(rows: list[dict[str, Any]], eval_share: float = 0.1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """SQuAD's training questions as (train, eval): a seeded tenth of the articles is held out whole, so no eval
    context was seen in training; both are shuffled (seeded), so that a few hundred questions (a small scale's
    training rows or eval slice) span many articles rather than the first one or two."""
    titles = sorted({r.get("title", "") for r in rows})
    held = set(random.Random(0).sample(titles, max(1, round(eval_share * len(titles))))) if len(titles) > 1 else set()
    train = [_squad_row(r) for r in rows if r.get("title", "") not in held]
    evals = [_squad_row(r) for r in rows if r.get("title", "") in held]
    random.Random(0).shuffle(train)
    random.Random(1).shuffle(evals)
    return train, evals


def window_counts(model: str, rows: list[dict[str, Any]], max_length: int, stride: int) -> list[int]:
    """How many windows each question's context is cut into, as run_qa.py cuts them (question first, only the
    context truncated, `stride` tokens shared by neighbours)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    enc = tok([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
              max_length=max_length, stride=stride, return_overflowing_tokens=True)
    counts = [0] * len(rows)
    for i in enc["overflow_to_sample_mapping"]:
        counts[i] += 1
    return counts


def noisy_copy(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """A stand-in system output: the reference with some words dropped, one replaced and two swapped."""
    words = [w for w in text.split() if rng.random() > 0.15] or text.split()[:1]
    if len(words) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    if words and rng.random() < 0.5:
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
    return " ".join(words)


# ---- model folders ---------------------------------------------------------------------------------------


def minilm_dir() -> str:
    from llmtune.models import ALIASES

    return ALIASES["minilm-l6"][0]().path


def build_classifier(kind: str, num_labels: int, folder: Path, head: str = "SequenceClassification",
                     label_names: list[str] | None = None) -> str:
    """MiniLM (or a tiny BERT) with its head (`head`: SequenceClassification, TokenClassification or
    QuestionAnswering) initialised once, saved for both sides to load. `label_names` go into the config's
    id2label, so that both sides map each tag to the same row of the head."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    labels: dict[str, Any] = {"num_labels": num_labels}
    if label_names:
        labels.update(id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    torch.manual_seed(0)
    if kind == "tiny-bert":
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512, **labels)
        model = getattr(transformers, f"BertFor{head}")(cfg)
    else:
        from llmtune.models import ALIASES

        model = getattr(transformers, f"AutoModelFor{head}").from_pretrained(ALIASES[kind][0]().path, **labels)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def build_t5(dims: dict[str, Any], folder: Path) -> str:
    """A T5 built from a config with a fixed seed and MiniLM's WordPiece vocabulary (no T5 weights offline)."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    # Made to behave like a T5 tokenizer: text, then the end token ([SEP] here), no leading [CLS] and no
    # token_type_ids. With BERT's "[CLS] text [SEP]" the labels would start with a token that is always [CLS],
    # and the two sides would score different label sequences (llmtune drops such a token, run_summarization does
    # not), so their eval losses could not be compared.
    bert = AutoTokenizer.from_pretrained(minilm_dir())
    backend = bert.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    sep = bert.sep_token
    backend.post_processor = TemplateProcessing(single=f"$A {sep}", pair=f"$A {sep} $B:1 {sep}:1",
                                                special_tokens=[(sep, bert.sep_token_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=bert.pad_token, eos_token=sep,
                                  unk_token=bert.unk_token, model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), num_decoder_layers=dims["num_layers"], decoder_start_token_id=tok.pad_token_id,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **dims)
    model = T5ForConditionalGeneration(cfg)
    model.generation_config.decoder_start_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def build_causal(kind: str, folder: Path) -> str:
    """SmolLM2-135M dequantized from its GGUF once and saved as bf16 safetensors (or a tiny Llama with its
    tokenizer), so both sides load the same dense weights from a plain folder. bf16, as most decoders are
    published on the hub: both sides load it in fp32, as a user of the hub checkpoint
    does, and llmtune can then keep the frozen weights in bf16 under LoRA at no loss (llmtune/frozen_bf16.py),
    as it would for that user. The dequantized Q4_1 values are not bf16 values: saving rounds them once."""
    import torch

    from llmtune.models import load_tokenizer
    from llmtune.recipe import ModelArgs

    tok = load_tokenizer(ModelArgs(name="smollm2-135m"))
    if kind == "tiny-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(cfg)
    else:
        from llmtune.lora import load_base

        model = load_base(ModelArgs(name=kind))
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


# ---- prepare: data files and model folders, once per benchmark ---------------------------------------------


def long_instructions(source: tuple[dict[str, list[dict[str, Any]]], str], min_tokens: int = 200,
                      ) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """SciTLDR rows as summarisation instructions ({question, answer}), the abstracts of at least `min_tokens`
    SmolLM2 tokens only: with the chat template and the TLDR, 250-400 tokens an example."""
    from llmtune.models import load_tokenizer
    from llmtune.recipe import ModelArgs

    data, origin = source
    tok = load_tokenizer(ModelArgs(name="smollm2-135m"))
    out = {}
    for split, rows in data.items():
        out[split] = [{"question": f"Summarize this abstract in one sentence.\n\n{r['source']}", "answer": r["target"]}
                      for r in rows if len(tok(r["source"], add_special_tokens=False)["input_ids"]) >= min_tokens]
    return out, f"{origin}, abstracts of {min_tokens}+ tokens as summarisation instructions"


def _steps_and_rows(s: dict[str, Any], n_train: int) -> tuple[int, int]:
    steps = s["max_steps"] if s["max_steps"] is not None else max(1, n_train // s["batch_size"])
    return steps, min(n_train, steps * s["batch_size"])


# workloads whose preparation lives in their own module: name -> fn(settings, spec, data_dir, work) that fills
# spec's "model", "model_name", "hp" and "data" as the branches of prepare() below do
PREPARE: dict[str, Any] = {}


def prepare(workload: str, scale: str, data_dir: Path | None, work: Path, threads: int,
            max_steps: int | None = None) -> dict[str, Any]:
    """Write the workload's data files and model folder under `work`; return the spec both sides run from.
    `max_steps` (`llmtune benchmark --max-steps`) replaces the scale's optimizer steps of a training workload (the
    rows follow: steps x batch), on both sides alike."""
    s = dict(SETTINGS[workload][scale])
    if max_steps is not None and "max_steps" in s:
        s["max_steps"] = max_steps
    work.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"workload": workload, "scale": scale, "threads": threads}
    if workload == "classification":
        data, origin = load_source("sst2", data_dir)
        steps, n = _steps_and_rows(s, len(data["train"]))
        evals = data["eval"][: s["eval_rows"]] if s["eval_rows"] else data["eval"]
        labels = sorted({r["label"] for r in data["train"]}, key=str)
        spec["model"] = build_classifier(s["model"], len(labels), work / "model")
        spec["model_name"] = "MiniLM-L6-H384" if s["model"] == "minilm-l6" else s["model"]
        spec["hp"] = {"batch_size": s["batch_size"], "eval_batch_size": 32, "max_steps": steps,
                      "learning_rate": s["learning_rate"], "max_seq_length": 128, "logging_steps": max(1, steps // 10)}
        spec["data"] = {"train": write_jsonl(work / "train.jsonl", data["train"][:n]),
                        "eval": write_jsonl(work / "eval.jsonl", evals), "origin": origin,
                        "train_rows": n, "eval_rows": len(evals)}
    elif workload in ("summarization", "generation"):
        data, origin = load_source("scitldr", data_dir)
        evals = data["eval"][: s["eval_rows"]] if s["eval_rows"] else data["eval"]
        spec["data"] = {"eval": write_jsonl(work / "eval.jsonl", evals), "origin": origin, "eval_rows": len(evals)}
        init = build_t5(s["t5"], work / "t5-init")
        spec["model_name"] = "T5 d_model={d_model} layers={num_layers} (from a config)".format(**s["t5"])
        if workload == "summarization":
            steps, n = _steps_and_rows(s, len(data["train"]))
            spec["model"] = init
            spec["data"].update(train=write_jsonl(work / "train.jsonl", data["train"][:n]), train_rows=n)
            spec["hp"] = {"batch_size": s["batch_size"], "eval_batch_size": 32, "max_steps": steps,
                          "learning_rate": s["learning_rate"], "max_source_length": s["max_source_length"],
                          "max_target_length": s["max_target_length"], "max_new_tokens": s["max_new_tokens"],
                          "logging_steps": max(1, steps // 10), "source_prefix": "summarize: "}
        else:
            train_path = write_jsonl(work / "prepare-train.jsonl", data["train"])
            spec["model"] = train_generation_model(init, train_path, spec["data"]["eval"], s, work / "t5-trained")
            spec["model_name"] += f", trained {s['prepare_steps']} steps"
            spec["hp"] = {"batch_size": s["batch_size"], "max_source_length": s["max_source_length"],
                          "max_new_tokens": s["max_new_tokens"], "source_prefix": "summarize: "}
    elif workload in ("causal_lm", "causal_lm_long"):
        if workload == "causal_lm":
            data, origin = load_source("gsm8k", data_dir)
        else:
            data, origin = long_instructions(load_source("scitldr", data_dir))
        steps, n = _steps_and_rows(s, len(data["train"]))
        evals = data["eval"][: s["eval_rows"]] if s["eval_rows"] else data["eval"]
        spec["model"] = build_causal(s["model"], work / "model")
        spec["model_name"] = "SmolLM2-135M-Instruct + LoRA r=8" if s["model"] == "smollm2-135m" else s["model"]
        spec["hp"] = {"batch_size": s["batch_size"], "eval_batch_size": 8, "max_steps": steps,
                      "learning_rate": s["learning_rate"], "max_seq_length": s["max_seq_length"],
                      "logging_steps": max(1, steps // 10), "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
        spec["data"] = {"train": write_jsonl(work / "train.jsonl", data["train"][:n]),
                        "eval": write_jsonl(work / "eval.jsonl", evals), "origin": origin,
                        "train_rows": n, "eval_rows": len(evals)}
    elif workload == "ner":
        data, origin = load_source("wnut17", data_dir)
        steps, n = _steps_and_rows(s, len(data["train"]))
        evals = data["eval"][: s["eval_rows"]] if s["eval_rows"] else data["eval"]
        # llmtune's order of the tags (O first, then by type), written into the head's config for both sides
        seen = {t for split in ("train", "eval") for r in data[split] for t in r["ner_tags"]}
        names = sorted(seen, key=lambda t: (t != "O", t[2:], t))
        spec["model"] = build_classifier(s["model"], len(names), work / "model", "TokenClassification", names)
        spec["model_name"] = "MiniLM-L6-H384" if s["model"] == "minilm-l6" else s["model"]
        spec["hp"] = {"batch_size": s["batch_size"], "eval_batch_size": 64, "max_steps": steps,
                      "learning_rate": s["learning_rate"], "max_seq_length": s["max_seq_length"],
                      "weight_decay": 0.01, "warmup_steps": steps // 10, "logging_steps": max(1, steps // 10)}
        spec["data"] = {"train": write_jsonl(work / "train.jsonl", data["train"][:n]),
                        "eval": write_jsonl(work / "eval.jsonl", evals), "origin": origin,
                        "train_rows": n, "eval_rows": len(evals)}
    elif workload == "qa":
        data, origin = load_source("squad", data_dir)
        # a question gives one window or more; both sides count training samples as windows (what a step's
        # batch holds). The questions are chosen so that their windows fill max_steps batches exactly: both sides
        # then train one epoch over the same windows (with more windows than that, each side's length grouping
        # would pick a different subset, longer on one side than on the other)
        spec["model"] = build_classifier(s["model"], 2, work / "model", "QuestionAnswering")
        counts = window_counts(spec["model"], data["train"], s["max_seq_length"], s["doc_stride"])
        steps = s["max_steps"] if s["max_steps"] is not None else max(1, sum(counts) // s["batch_size"])
        chosen, room = [], steps * s["batch_size"]
        for row, c in zip(data["train"], counts, strict=True):
            if c <= room:
                chosen.append(row)
                room -= c
            if room == 0:
                break
        if room:
            raise LlmtuneError(f"qa: the training questions give fewer than {steps} x {s['batch_size']} windows")
        n = len(chosen)
        data["train"] = chosen
        evals = data["eval"][: s["eval_rows"]] if s["eval_rows"] else data["eval"]
        spec["model_name"] = "MiniLM-L6-H384" if s["model"] == "minilm-l6" else s["model"]
        spec["hp"] = {"batch_size": s["batch_size"], "eval_batch_size": 64, "max_steps": steps,
                      "learning_rate": s["learning_rate"], "max_seq_length": s["max_seq_length"],
                      "doc_stride": s["doc_stride"], "n_best_size": 20, "max_answer_length": 30,
                      "weight_decay": 0.01, "warmup_steps": steps // 10, "logging_steps": max(1, steps // 10)}
        spec["data"] = {"train": write_jsonl(work / "train.jsonl", data["train"][:n]),
                        "eval": write_jsonl(work / "eval.jsonl", evals), "origin": origin,
                        "train_rows": n, "eval_rows": len(evals), "train_unit": "windows"}
    elif workload == "metrics":
        data, origin = load_source("multi30k", data_dir)
        texts = [r["text"] for r in data["train"] if r["text"].strip()]
        vocabulary = sorted({w for t in texts for w in t.split()})
        rng = random.Random(0)
        pairs = [{"reference": texts[i % len(texts)]} for i in range(s["pairs"])]
        for p in pairs:
            p["prediction"] = noisy_copy(p["reference"], rng, vocabulary)
        spec["model_name"] = "-"
        spec["hp"] = {"pairs": len(pairs)}
        spec["data"] = {"pairs": write_jsonl(work / "pairs.jsonl", pairs), "origin": origin + ", predictions: "
                        "each reference with seeded word drops, a swap and a replacement", "eval_rows": len(pairs)}
    elif workload in PREPARE:  # a workload written in its own module (registered in PREPARE)
        PREPARE[workload](s, spec, data_dir, work)
    else:
        raise LlmtuneError(f"unknown workload '{workload}'")
    from llmtune.benchmark import mfu
    from llmtune.hardware import native_bf16

    # like for like: where llmtune's side autocasts to bf16, the references do too (references.bf16)
    spec["autocast"] = workload in AUTOCAST and native_bf16() is not None
    if workload in mfu.CLASSES:  # the model's shape, for the model FLOPs of each run (mfu.py)
        hp = spec["hp"]
        lora = {"r": hp["lora_r"], "target_modules": hp.get("lora_target_modules", "all-linear")} if "lora_r" in hp else None
        spec["flops"] = mfu.model_shape(workload, spec["model"], lora)
        spec["flops"]["reference_forward"] = workload == "preference" and hp.get("loss", "dpo") in ("dpo", "ipo") \
            and not hp.get("precompute_reference", False)
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    return spec


def train_generation_model(init: str, train: str, eval_: str, s: dict[str, Any], folder: Path) -> str:
    """Train the generation workload's T5 with llmtune (not measured): a model that has learnt when to stop."""
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    out = folder.parent / "t5-trained-run"
    recipe = build_recipe({
        "task": "summarization", "model": {"name": init},
        "data": {"train_file": train, "eval_file": eval_, "source_column": "source", "target_column": "target",
                 "source_prefix": "summarize: ", "max_eval_samples": 8},
        "train": {"output_dir": str(out), "max_steps": s["prepare_steps"], "per_device_train_batch_size": 8,
                  "learning_rate": 2e-3, "max_source_length": min(256, s["max_source_length"]), "max_target_length": 64,
                  "logging_steps": 10, "overwrite_output_dir": True, "resume_from_checkpoint": False},
        "generation": {"max_new_tokens": 8},
        "eval": {"generate": False},
    }, source="benchmark:generation-prepare")
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the runner shows its own progress
    try:
        finetune(recipe)
    finally:
        os.environ.pop("TQDM_DISABLE") if quiet is None else os.environ.__setitem__("TQDM_DISABLE", quiet)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        if (out / name).exists():
            shutil.copy(out / name, folder / name)
    shutil.rmtree(out, ignore_errors=True)
    return str(folder)


# ---- the llmtune side ------------------------------------------------------------------------------------


def _train_section(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    # mixed_precision auto, as in llmtune's recipes: bf16 autocast where the CPU or GPU runs bf16 natively, fp32
    # elsewhere; evaluation runs in fp32 either way. The report names the precision each run used. The
    # `llmtune_fp32` side (spec["mixed_precision"] = "no") shows what llmtune does without bf16.
    hp = spec["hp"]
    return {"output_dir": str(out), "max_steps": hp["max_steps"], "per_device_train_batch_size": hp["batch_size"],
            "per_device_eval_batch_size": hp.get("eval_batch_size", 32), "learning_rate": hp["learning_rate"],
            "weight_decay": 0.0, "warmup_steps": 0, "lr_scheduler_type": "linear", "seed": seed,
            "logging_steps": hp["logging_steps"], "overwrite_output_dir": True, "resume_from_checkpoint": False,
            "mixed_precision": spec.get("mixed_precision", "auto" if spec["workload"] in AUTOCAST else "no")}


def _loss_curve(out: Path) -> list[list[float]]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return [[r["step"], r["loss"]] for r in rows if "loss" in r]


def _train_figures(res: dict[str, Any], out: Path) -> dict[str, Any]:
    info = json.loads((out / "run_info.json").read_text())
    return {"train_runtime": res["train_runtime"], "train_samples_per_second": res["train_samples_per_second"],
            "train_tokens_per_second": res["train_tokens_per_second"], "global_step": res["global_step"],
            "train_loss": res["train_loss"], "loss_curve": _loss_curve(out),
            "mixed_precision": info.get("mixed_precision", "no")}


def llmtune_classification(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    hp = spec["hp"]
    recipe = build_recipe({
        "task": "classification", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "text_column": "text",
                 "label_column": "label"},
        "train": {**_train_section(spec, seed, out), "max_seq_length": hp["max_seq_length"]},
    }, source="benchmark:classification")
    res = finetune(recipe)
    return {**_train_figures(res, out), "quality": {"eval_accuracy": res["eval_accuracy"], "eval_loss": res["eval_loss"]}}


def llmtune_summarization(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    hp = spec["hp"]
    recipe = build_recipe({
        "task": "summarization", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "source_column": "source",
                 "target_column": "target", "source_prefix": hp["source_prefix"]},
        "train": {**_train_section(spec, seed, out), "max_source_length": hp["max_source_length"],
                  "max_target_length": hp["max_target_length"]},
        "generation": {"max_new_tokens": hp["max_new_tokens"]},
        "eval": {"metrics": ["rouge"]},
    }, source="benchmark:summarization")
    res = finetune(recipe)
    preds = [r["prediction"] for r in _read_jsonl(out / "predictions.jsonl")]
    return {**_train_figures(res, out), "predictions": preds, "quality": {"eval_loss": res["eval_loss"]}}


def llmtune_causal_lm(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    hp = spec["hp"]
    recipe = build_recipe({
        "task": "causal_lm", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "format": "instruction",
                 "prompt_column": "question", "input_column": None, "completion_column": "answer",
                 "packing": spec.get("packing", True)},
        "lora": {"enabled": True, "r": hp["lora_r"], "alpha": hp["lora_alpha"], "dropout": hp["lora_dropout"],
                 "target_modules": "all-linear"},
        "train": {**_train_section(spec, seed, out), "max_seq_length": hp["max_seq_length"]},
        "eval": {"generate": False, "before_training": False},  # no base-model eval: the reference does none
    }, source="benchmark:causal_lm")
    res = finetune(recipe)
    return {**_train_figures(res, out), "quality": {"eval_loss": res["eval_loss"]}}


def _regularised(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """The train section with the workload's weight decay and warm-up (the ner and qa recipes use both)."""
    hp = spec["hp"]
    return {**_train_section(spec, seed, out), "max_seq_length": hp["max_seq_length"],
            "weight_decay": hp["weight_decay"], "warmup_steps": hp["warmup_steps"]}


def llmtune_ner(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    recipe = build_recipe({
        "task": "token_classification", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "tokens_column": "tokens",
                 "tags_column": "ner_tags"},
        "train": _regularised(spec, seed, out),
    }, source="benchmark:ner")
    res = finetune(recipe)
    keys = ("eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_loss")
    return {**_train_figures(res, out), "quality": {k: res[k] for k in keys}}


def llmtune_qa(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    hp = spec["hp"]
    recipe = build_recipe({
        "task": "question_answering", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "question_column": "question",
                 "context_column": "context", "answers_column": "answers", "doc_stride": hp["doc_stride"],
                 "n_best_size": hp["n_best_size"], "max_answer_length": hp["max_answer_length"]},
        "train": _regularised(spec, seed, out),
    }, source="benchmark:qa")
    res = finetune(recipe)
    return {**_train_figures(res, out), "quality": {"eval_exact_match": res["eval_exact_match"],
                                                    "eval_f1": res["eval_f1"]}}


def llmtune_generation(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """llmtune's eval-time generation (what the seq2seq task's evaluate() calls): batched, longest first."""
    import time

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from llmtune.generate import generate_texts
    from llmtune.recipe import GenerationArgs

    hp = spec["hp"]
    rows = _read_jsonl(Path(spec["data"]["eval"]))
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["model"])
    if torch.cuda.is_available():
        model = model.to("cuda")
    t0 = time.perf_counter()
    preds = generate_texts(model, tokenizer, [hp["source_prefix"] + r["source"] for r in rows],
                           GenerationArgs(max_new_tokens=hp["max_new_tokens"]), batch_size=hp["batch_size"],
                           max_input_length=hp["max_source_length"])
    seconds = time.perf_counter() - t0
    return generation_figures(preds, tokenizer, seconds)


def generation_figures(preds: list[str], tokenizer: Any, seconds: float) -> dict[str, Any]:
    """Rows and generated tokens per second; the mean generated length shows whether the model stops early."""
    n_tokens = sum(len(x) for x in tokenizer(preds, add_special_tokens=False)["input_ids"]) if preds else 0
    return {"runtime": seconds, "samples_per_second": len(preds) / seconds, "tokens_per_second": n_tokens / seconds,
            "gen_len": n_tokens / max(len(preds), 1), "predictions": preds}


def llmtune_metrics(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """llmtune.metrics: ROUGE with cached stems over a process pool, then sacreBLEU's BLEU."""
    import time

    from llmtune import metrics

    pairs = _read_jsonl(Path(spec["data"]["pairs"]))
    preds, refs = [p["prediction"] for p in pairs], [p["reference"] for p in pairs]
    t0 = time.perf_counter()
    scores = metrics.rouge(preds, refs)
    t1 = time.perf_counter()
    scores.update(metrics.bleu(preds, refs))
    t2 = time.perf_counter()
    return {"runtime": t2 - t0, "samples_per_second": len(pairs) / (t2 - t0), "rouge_seconds": t1 - t0,
            "bleu_seconds": t2 - t1, "quality": scores}


LLMTUNE = {
    "classification": llmtune_classification,
    "summarization": llmtune_summarization,
    "causal_lm": llmtune_causal_lm,
    "causal_lm_long": llmtune_causal_lm,
    "generation": llmtune_generation,
    "metrics": llmtune_metrics,
    "ner": llmtune_ner,
    "qa": llmtune_qa,
}

# workloads written in their own module
SETTINGS["preference"] = preference_workload.SETTINGS
QUALITY["preference"] = preference_workload.QUALITY
VARIANTS["preference"] = preference_workload.VARIANTS
LLMTUNE["preference"] = preference_workload.llmtune_side
PREPARE["preference"] = preference_workload.prepare


def pipeline_available(workload: str) -> str | None:
    """None when llmtune's pipeline for the workload can run here, else why not."""
    import importlib

    module = {"summarization": "llmtune.tasks.seq2seq", "generation": "llmtune.tasks.seq2seq",
              "causal_lm": "llmtune.tasks.causal_lm", "causal_lm_long": "llmtune.tasks.causal_lm",
              "ner": "llmtune.tasks.token_classification",
              "qa": "llmtune.tasks.question_answering"}.get(workload)
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except Exception as e:  # a missing or broken pipeline module
        return f"not available: pipeline missing ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if workload in ("causal_lm", "causal_lm_long"):
        try:
            importlib.import_module("llmtune.lora")
        except Exception as e:
            return f"not available: pipeline missing (llmtune.lora: {type(e).__name__})"
    return None


def score_rouge_l(preds: list[str], refs: list[list[str]]) -> float:
    """ROUGE-L of a side's predictions, scored the same way for both sides (multi-reference)."""
    from llmtune import metrics

    return metrics.rouge(preds, refs)["rougeL"] if preds else math.nan


# ---- workloads written in modules of their own -----------------------------------------------------------

from llmtune.benchmark import encoder_workloads as _encoders  # noqa: E402  (it imports this module lazily)

for _name in _encoders.NAMES:
    SETTINGS[_name] = _encoders.SETTINGS[_name]
    QUALITY[_name] = _encoders.QUALITY[_name]
    VARIANTS[_name] = _encoders.VARIANTS[_name]
    LLMTUNE[_name] = _encoders.LLMTUNE[_name]
    PREPARE[_name] = _encoders.PREPARE[_name]
AUTOCAST = (*AUTOCAST, *_encoders.NAMES)  # recipes/embedding.yaml and mlm.yaml train with mixed_precision auto
