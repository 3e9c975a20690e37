"""Parity with TRL: a LoRA adapter trained by `llmtune finetune` (task: preference, DPO) and evaluated on held-out
pairs by `llmtune eval --model RUN` and by trl's `DPOTrainer.evaluate()` gives the same eval loss, reward accuracy,
rewards and margins (to 1e-4; both in fp32), from the same token ids.

Like for like on TRL's side, from its 1.16 source:
- plain string prompts (no chat template): TRL tokenizes prompt and prompt + response + EOS whole and the response is
  what follows their common prefix, as llmtune's text layout does; lengths stay far below truncation.
- TRL averages its rewards/* metrics as the mean of per-batch means, and its accuracy counts a tie as 0 (llmtune: 0.5):
  one eval batch holding every pair makes the means exact, and the pairs are checked to hold no tie.
- the reference is the base model given as `ref_model`. With `ref_model=None`, a PeftModel that already has an adapter
  gets a frozen copy of that adapter as its reference ("ref", for re-training an adapter), so every reward would be
  measured against the trained adapter itself; llmtune's reference is the base model (the adapter switched off), which
  TRL uses for a new adapter made from `peft_config`.
- DPOConfig defaults to bf16=True: set False, as llmtune evaluates in fp32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl

pytest.importorskip("trl")

TRAIN = [{"prompt": f"Name a {kind}.", "chosen": f" {good}.", "rejected": f" {bad}."} for kind, good, bad in [
    ("fruit", "An apple", "A hammer"), ("color", "Blue", "A spoon"), ("animal", "A horse", "A chair"),
    ("tool", "A saw", "A cloud"), ("city", "Paris", "A carrot"), ("metal", "Iron", "A poem"),
    ("planet", "Mars", "A sock"), ("tree", "An oak", "A lamp")]]
HELD_OUT = [{"prompt": "Name a fruit you can eat.", "chosen": " A pear.", "rejected": " A drill."},
            {"prompt": "Name an animal that swims.", "chosen": " A fish.", "rejected": " A ladder."},
            {"prompt": "Name a color of the sky.", "chosen": " Blue.", "rejected": " A wrench and a bolt."},
            {"prompt": "Name a tool for wood.", "chosen": " A saw, or a chisel.", "rejected": " An orange."},
            {"prompt": "Name a large city.", "chosen": " Tokyo.", "rejected": " A teaspoon."},
            {"prompt": "Name a tree.", "chosen": " A birch.", "rejected": " A kettle."}]
BETA = 0.2
NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
         "logps/rejected")


def _recipe(tiny_llama: Path, train: Path, held_out: Path, out: Path) -> dict[str, Any]:
    return {"task": "preference", "model": {"name": str(tiny_llama)},
            "data": {"train_file": str(train), "eval_file": str(held_out), "format": "text"},
            "preference": {"loss": "dpo", "beta": BETA},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 4,
                      "per_device_eval_batch_size": 4, "learning_rate": 2e-2, "logging_steps": 2,
                      "max_seq_length": 128, "mixed_precision": "no"}}


def _trl_eval(tiny_llama: Path, run: Path, tmp_path: Path) -> tuple[dict[str, float], Any]:
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(run)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, loss_type=["sigmoid"], bf16=False, use_cpu=True,
                     per_device_eval_batch_size=len(HELD_OUT), max_length=1024, gradient_checkpointing=False,
                     report_to=[], dataloader_num_workers=0)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list(TRAIN), eval_dataset=Dataset.from_list(HELD_OUT))
    return trainer.evaluate(), trainer.eval_dataset


def test_eval_agrees_with_trl_dpo_trainer(tiny_llama: Path, tmp_path: Path, cli) -> None:
    from transformers import AutoTokenizer

    from llmtune.data import Split, load_file
    from llmtune.runs import load_run
    from llmtune.tasks import preference as pref

    train, held_out = write_jsonl(tmp_path / "train.jsonl", TRAIN), write_jsonl(tmp_path / "held.jsonl", HELD_OUT)
    run = tmp_path / "run"
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(_recipe(tiny_llama, train, held_out, run)))
    res = cli("finetune", recipe_file)
    assert res.exit_code == 0, res.output
    res = cli("eval", "--model", run, "--output-dir", tmp_path / "ev", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    (ours,) = json.loads((tmp_path / "ev" / "results.json").read_text())["results"].values()
    ours = {k: ours[k]["value"] for k in NAMES}
    per_pair = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(per_pair) == len(HELD_OUT)
    # trained: rewards away from 0, and no tie (TRL counts a tie 0, llmtune 0.5), so accuracy is compared exactly
    assert min(abs(r["reward_chosen"] - r["reward_rejected"]) for r in per_pair) > 1e-3
    assert abs(ours["rewards/chosen"]) > 1e-2 and abs(ours["rewards/rejected"]) > 1e-2

    theirs, tokenized = _trl_eval(tiny_llama, run, tmp_path)
    # the same token ids on both sides: llmtune's tokenization of the held-out split with the run's recipe
    recipe = load_run(run).recipe
    tok = AutoTokenizer.from_pretrained(run)
    split = Split("eval", load_file(str(held_out), "data.eval_file", recipe), str(held_out))
    mine = pref.tokenize(recipe, tok, split, pref.setup(recipe, {"eval": split}, tok))
    for k in range(len(HELD_OUT)):
        p = mine[k]["prompt_length"]
        assert mine[k]["input_ids"][:p] == tokenized[k]["prompt_ids"], k
        assert mine[k]["input_ids"][p:] == tokenized[k]["chosen_ids"], k
        assert mine[k]["rejected_input_ids"][p:] == tokenized[k]["rejected_ids"], k
    for name in NAMES:
        assert math.isclose(ours[name], theirs[f"eval_{name}"], abs_tol=1e-4, rel_tol=0), (name, ours, theirs)
    assert ours["rewards/accuracies"] == pytest.approx(theirs["eval_rewards/accuracies"], abs=1e-12)
