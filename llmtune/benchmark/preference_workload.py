"""The `preference` workload: DPO with LoRA on (prompt, chosen, rejected) pairs, llmtune against TRL's DPOTrainer.

Both sides train the same LoRA adapter (all-linear, the workload's r/alpha, no dropout: TRL's `disable_dropout`
default) on the same model folder and pairs, with DPO's sigmoid loss at the same beta, the same optimizer steps,
batch size, learning rate and linear schedule, in fp32 (llmtune's preference recipe trains with
mixed_precision no, so the workload is not in workloads.AUTOCAST and TRL's `bf16` default is turned off), and the
DPO reference is the base model with the adapter switched off on both. TRL's `gradient_checkpointing` (on by
default in DPOConfig) is off, as llmtune's. Samples are pairs; tokens are the non-padding tokens of chosen and
rejected (prompt included in each), as both count them.

Data: HH-RLHF (`--data-dir`/hh_rlhf/train.jsonl, see ../shared/data/PROVENANCE.md; else the hub's
Anthropic/hh-rlhf; else the bundled llmtune:preference pairs). Transcripts are split into prompt / chosen / rejected
text at the last "\\n\\nAssistant:" (llmtune's split_transcripts) and written as plain text columns, so both sides
tokenize them the same way (TRL's non-conversational path = llmtune's data.format=text: identical token ids, see
tests/test_preference_trl.py). Conversations that start with the same first human turn are branches of one
dialogue: whole groups of them are held out (seeded), so no eval prompt was seen in training. Pairs whose prompt +
response does not fit max_seq_length are left out, so that neither side truncates.

Eval: the held-out pairs after training, llmtune's eval (exact means over pairs) and TRL's `evaluate()` (means of
per-batch means): the eval rows are a multiple of the eval batch size, so both are means over the same pairs. A tie
in reward counts 0.5 in llmtune's accuracy and 0 in TRL's (only an untrained adapter ties).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

SETTINGS: dict[str, dict[str, Any]] = {
    "tiny": {"model": "tiny-llama", "batch_size": 4, "max_steps": 3, "eval_rows": 8, "eval_batch_size": 8,
             "learning_rate": 5e-3, "max_seq_length": 256},
    "small": {"model": "smollm2-135m", "batch_size": 4, "max_steps": 8, "eval_rows": 32, "eval_batch_size": 16,
              "learning_rate": 5e-4, "max_seq_length": 256},
    "full": {"model": "smollm2-135m", "batch_size": 8, "max_steps": None, "eval_rows": None, "eval_batch_size": 16,
             "learning_rate": 5e-4, "max_seq_length": 512},
}
# scored by held-out reward accuracy (a share of pairs in [0, 1]); eval_loss is reported beside it
QUALITY = ("eval_rewards/accuracies", True, 0.05, 0.0)
VARIANTS = ("trl_dpo",)
TITLE = "preference tuning, DPO + LoRA (HH-RLHF)"
REFERENCE_NAME = "TRL DPOTrainer + PEFT LoRA"
LLMTUNE_NAME = "chosen + rejected in one forward, reference = adapter off"
METRICS = ("loss", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "rewards/margins")

HH_TURN = "\n\nHuman:"


# ---- data ------------------------------------------------------------------------------------------------


def _triples(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """prompt / chosen / rejected text of each usable row (transcripts split at the last assistant turn; rows with
    no shared prompt, an empty response or chosen == rejected left out)."""
    from llmtune.tasks.preference import split_transcripts

    out = []
    for r in rows:
        if isinstance(r.get("prompt"), str):
            parts: Any = (r["prompt"], r["chosen"], r["rejected"])
        else:
            parts = split_transcripts(r.get("chosen"), r.get("rejected"))
        if parts is None or not all(isinstance(p, str) for p in parts):
            continue
        prompt, chosen, rejected = parts
        if not chosen.strip() or not rejected.strip() or chosen == rejected:
            continue
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def _first_turn(prompt: str) -> str:
    start = prompt.find(HH_TURN)
    if start < 0:
        return prompt
    end = prompt.find("\n\nAssistant:", start)
    return prompt[start:end if end >= 0 else None].strip()


def hh_split(rows: list[dict[str, Any]], eval_share: float = 0.1) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """HH-RLHF transcripts as (train, held-out eval) prompt/chosen/rejected rows: a seeded share of the first human
    turns is held out with every conversation that starts with it; both shuffled (seeded)."""
    pairs = _triples(rows)
    openings = sorted({_first_turn(p["prompt"]) for p in pairs})
    k = max(1, round(eval_share * len(openings))) if len(openings) > 1 else 0
    held = set(random.Random(0).sample(openings, k))
    train = [p for p in pairs if _first_turn(p["prompt"]) not in held]
    evals = [p for p in pairs if _first_turn(p["prompt"]) in held]
    random.Random(0).shuffle(train)
    random.Random(1).shuffle(evals)
    return train, evals


def load_pairs(data_dir: Path | None) -> tuple[dict[str, list[dict[str, str]]], str]:
    """(train/eval prompt-chosen-rejected rows, where they came from): --data-dir, else the hub, else bundled."""
    from llmtune.benchmark import workloads as w

    if data_dir is not None and (data_dir / "hh_rlhf" / "train.jsonl").exists():
        train, evals = hh_split(w._read_jsonl(data_dir / "hh_rlhf" / "train.jsonl"))
        return ({"train": train, "eval": evals},
                f"{data_dir / 'hh_rlhf'} train.jsonl, held-out first human turns as eval (--data-dir)")
    ds = w._hub("Anthropic/hh-rlhf", None)
    if ds is not None:
        train, evals = hh_split([dict(r) for r in ds["train"]])
        return {"train": train, "eval": evals}, "hub Anthropic/hh-rlhf train, held-out first human turns as eval"
    return ({s: _triples(w._read_jsonl(w.BUNDLED / "preference" / f"{s}.jsonl")) for s in ("train", "eval")},
            "bundled llmtune:preference")


def fits(tokenizer: Any, pair: dict[str, str], max_length: int) -> bool:
    """Whether prompt + each response (+ EOS, as both sides add it) fits max_length tokens: no side truncates."""
    eos = tokenizer.eos_token or ""
    return all(len(tokenizer(pair["prompt"] + pair[k] + eos)["input_ids"]) <= max_length for k in ("chosen", "rejected"))


def prepare(s: dict[str, Any], spec: dict[str, Any], data_dir: Path | None, work: Path) -> None:
    """workloads.PREPARE["preference"]: the model folder, the pairs both sides read, and the shared hp."""
    from transformers import AutoTokenizer

    from llmtune.benchmark import workloads as w

    data, origin = load_pairs(data_dir)
    spec["model"] = w.build_causal(s["model"], work / "model")
    tok = AutoTokenizer.from_pretrained(spec["model"])
    max_len = s["max_seq_length"]
    train = [p for p in data["train"] if fits(tok, p, max_len)]
    evals = [p for p in data["eval"] if fits(tok, p, max_len)]
    left_out = len(data["train"]) + len(data["eval"]) - len(train) - len(evals)
    steps, n = w._steps_and_rows(s, len(train))
    evals = evals[: s["eval_rows"]] if s["eval_rows"] else evals
    bs = s["eval_batch_size"]
    if len(evals) > bs:  # whole eval batches: TRL's means of batch means are then means over the pairs
        evals = evals[: len(evals) - len(evals) % bs]
    spec["model_name"] = "SmolLM2-135M-Instruct + LoRA r=8" if s["model"] == "smollm2-135m" else s["model"]
    spec["hp"] = {"batch_size": s["batch_size"], "eval_batch_size": min(bs, len(evals)), "max_steps": steps,
                  "learning_rate": s["learning_rate"], "max_seq_length": max_len,
                  "logging_steps": max(1, steps // 10), "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                  "loss": "dpo", "beta": 0.1, "precompute_reference": False}
    spec["data"] = {"train": w.write_jsonl(work / "train.jsonl", train[:n]),
                    "eval": w.write_jsonl(work / "eval.jsonl", evals),
                    "origin": f"{origin}; {left_out} pairs longer than {max_len} tokens left out",
                    "train_rows": n, "eval_rows": len(evals), "train_unit": "pairs"}


# ---- llmtune's side --------------------------------------------------------------------------------------


def llmtune_side(spec: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    from llmtune.benchmark import workloads as w
    from llmtune.recipe import build_recipe
    from llmtune.train import finetune

    hp = spec["hp"]
    recipe = build_recipe({
        "task": "preference", "model": {"name": spec["model"]},
        "data": {"train_file": spec["data"]["train"], "eval_file": spec["data"]["eval"], "format": "text"},
        "lora": {"enabled": True, "r": hp["lora_r"], "alpha": hp["lora_alpha"], "dropout": hp["lora_dropout"],
                 "target_modules": "all-linear"},
        "preference": {"loss": hp["loss"], "beta": hp["beta"], "precompute_reference": hp["precompute_reference"]},
        "train": {**w._train_section(spec, seed, out), "max_seq_length": hp["max_seq_length"]},
        "eval": {"before_training": False},  # no base-model eval: the reference does none
    }, source="benchmark:preference")
    res = finetune(recipe)
    figures = w._train_figures(res, out)
    figures["precision"] = "bf16" if figures["mixed_precision"] == "bf16" else "fp32"
    return {**figures, "quality": {f"eval_{m}": res[f"eval_{m}"] for m in METRICS}}


# ---- the reference: TRL's DPOTrainer ---------------------------------------------------------------------


def trl_dpo(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    """TRL's DPOTrainer as its docs set it up for LoRA: a `peft_config` (a new adapter, so the reference is the base
    model with the adapter off), `ref_model=None`, prompt/chosen/rejected text columns, then `evaluate()` on the
    held-out pairs."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    from llmtune.benchmark.references import bf16, trainer_figures, training_args

    hp = spec["hp"]
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model.config.use_cache = False
    raw = load_dataset("json", data_files={"train": spec["data"]["train"], "validation": spec["data"]["eval"]})
    # random batches (tuned=False): DPOTrainer's datasets have no input_ids column for group_by_length to sort by
    args = training_args(hp, seed, out, tuned=False, bf16=bf16(spec, variant), cls=DPOConfig, beta=hp["beta"],
                         loss_type=["sigmoid"], max_length=hp["max_seq_length"], gradient_checkpointing=False,
                         precompute_ref_log_probs=hp["precompute_reference"])
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
                             lora_dropout=hp["lora_dropout"], target_modules="all-linear", bias="none")
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=raw["train"],
                         eval_dataset=raw["validation"], processing_class=tokenizer, peft_config=peft_config)
    train_result = trainer.train()
    trainer.save_model()
    scored = trainer.evaluate()
    return {**trainer_figures(trainer, train_result), "quality": {f"eval_{m}": scored[f"eval_{m}"] for m in METRICS}}
