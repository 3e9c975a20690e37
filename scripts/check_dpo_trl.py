"""Issue #15's check: DPO on HH-RLHF by recipe overrides alone, evaluated by llmtune and by TRL on the same held-out pairs.

    python scripts/check_dpo_trl.py                       # train, then evaluate on both sides
    python scripts/check_dpo_trl.py --skip-train          # evaluate an existing run folder again
    python scripts/check_dpo_trl.py --skip-train --no-eval  # llmtune's numbers from the run's own final eval
    python scripts/check_dpo_trl.py --set train.max_steps=40 --set data.val_size=200

1. `llmtune finetune recipes/dpo.yaml` with the overrides below (HH-RLHF transcripts: the prompt is split off at the
   last "\\n\\nAssistant:", so the rows are plain text, TRL's non-conversational form), then
   `llmtune eval --model RUN` on the run's held-out pairs (data.val_size, split off the training file, seeded).
2. The same adapter, beta and held-out pairs through trl's `DPOTrainer.evaluate()`: the base model as `ref_model`
   (with `ref_model=None` TRL would measure a loaded adapter against a frozen copy of itself), `bf16=False` (llmtune
   evaluates in fp32), `max_length` = train.max_seq_length (keep_start truncation, as llmtune's without
   train.max_prompt_length, which TRL 1.x does not have), an eval batch size that divides the pairs (TRL averages
   its metrics as means of per-batch means).
3. Prints each metric on both sides and the differences, the pairs whose token ids differ between the sides, and
   the tied pairs (TRL's accuracy counts a tie 0, llmtune's 0.5: HH-RLHF has rows with chosen == rejected); exits 1
   when a metric differs by more than --tolerance (accuracy compared with ties counted as TRL counts them).

llmtune refuses a pair whose response is blank after the shared prompt, and names its row: 3 rows of the shared
HH-RLHF file (233, 693, 1521) end on an empty "Assistant:" turn, so the script trains on a copy without them.

Needs the `bench` extra (trl) and ../shared/data/hh_rlhf/train.jsonl (or --data). Runs offline on a CPU; on 2 cores
the default (10 steps of 4 pairs, 64 held-out pairs, 384 tokens) takes about a quarter of an hour.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
         "logps/rejected")


def overrides(data: Path, out: Path, extra: list[str]) -> list[str]:
    """The run: recipes/dpo.yaml (SmolLM2-135M-Instruct + LoRA r=8, DPO beta 0.1) on HH-RLHF by overrides only."""
    return ["data.dataset=null", f"data.train_file={data}", "data.val_size=64", "train.max_seq_length=384",
            "train.max_steps=10", "train.per_device_train_batch_size=4", "train.per_device_eval_batch_size=16",
            "train.eval_steps=null", "train.logging_steps=2", "eval.before_training=false",
            f"train.output_dir={out}", "train.overwrite_output_dir=true", *extra]


def usable_copy(data: Path, dst: Path) -> list[int]:
    """Copy `data` to `dst` without the transcripts llmtune refuses (a response that is blank after the shared prompt:
    3 rows of the shared HH-RLHF file end on an empty "Assistant:" turn, which TRL would train on as " " + EOS);
    return their row numbers."""
    from llmtune.tasks.preference import split_transcripts

    kept, dropped = [], []
    for i, line in enumerate(data.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        parts = split_transcripts(row.get("chosen"), row.get("rejected"))
        if parts is None or not parts[1].strip() or not parts[2].strip():
            dropped.append(i + 1)
        else:
            kept.append(line)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return dropped


def llmtune(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "llmtune", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=env)


def held_out(run: Path) -> tuple[Any, Any, Any, list[dict[str, str]]]:
    """(recipe, tokenizer, llmtune's tokenized eval split, its rows as prompt/chosen/rejected text)."""
    from transformers import AutoTokenizer

    from llmtune import evaluation
    from llmtune.runs import load_run
    from llmtune.tasks import preference as pref

    recipe = load_run(run).recipe
    tok = AutoTokenizer.from_pretrained(run)
    splits, split = evaluation._eval_split(recipe, "eval", need_train=False)
    info = pref.setup(recipe, splits, tok)
    if info.format != "text":
        raise SystemExit(f"the rows are rendered as {info.format}; this check compares TRL's plain-text form")
    tokenized = pref.tokenize(recipe, tok, split, info)
    rows = []
    for i in tokenized["row"]:  # the pairs llmtune keeps (a prompt that fills max_seq_length drops a pair, as in TRL)
        prompt, chosen, rejected = pref.row_parts(recipe, split.dataset[i], f"eval row {i + 1}")
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return recipe, tok, tokenized, rows


def trl_eval(recipe: Any, tok: Any, run: Path, rows: list[dict[str, str]]) -> tuple[dict[str, float], Any]:
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from llmtune.lora import load_base

    p = recipe.section("preference")
    policy = PeftModel.from_pretrained(load_base(recipe.model), run)
    reference = load_base(recipe.model)
    n = len(rows)
    batch = max(b for b in range(1, min(n, recipe.train.per_device_eval_batch_size) + 1) if n % b == 0)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, beta=p.beta, loss_type=["sigmoid"], label_smoothing=p.label_smoothing,
                         bf16=False, use_cpu=not torch.cuda.is_available(), per_device_eval_batch_size=batch,
                         max_length=recipe.train.max_seq_length, gradient_checkpointing=False, report_to=[])
        ds = Dataset.from_list(rows)
        # train_dataset: the trainer needs one; nothing is trained
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tok, train_dataset=ds,
                             eval_dataset=ds)
        return trainer.evaluate(), trainer.eval_dataset


def same_ids(mine: dict[str, Any], theirs: dict[str, Any], max_length: int) -> bool:
    """llmtune's tokenized pair (cut at tokenization) = TRL's (cut by its collator: keep_start at max_length)."""
    p = mine["prompt_length"]
    return (mine["input_ids"][:p] == theirs["prompt_ids"][:p] and len(theirs["prompt_ids"]) == p
            and mine["input_ids"] == (theirs["prompt_ids"] + theirs["chosen_ids"])[:max_length]
            and mine["rejected_input_ids"] == (theirs["prompt_ids"] + theirs["rejected_ids"])[:max_length])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hh_rlhf" / "train.jsonl")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "dpo-hh-check")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="another recipe override k=v")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the run folder --out as it is")
    ap.add_argument("--no-eval", action="store_true", help="llmtune's side: the eval the run made at its end "
                    "(eval_results.json, predictions.jsonl: the function `llmtune eval --model` calls) instead of a "
                    "new `llmtune eval --model`")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    if a.data.suffix and not a.data.exists():
        raise SystemExit(f"{a.data}: not found (HH-RLHF transcripts; see ../shared/data/PROVENANCE.md)")
    data = a.out.resolve().parent / f"{a.out.name}-train.jsonl"
    dropped = usable_copy(a.data, data)
    print(f"{a.data}: rows {dropped} left out (a blank response after the prompt, which llmtune refuses) -> {data}")
    ov = overrides(data, a.out.resolve(), a.extra)
    if not a.skip_train:
        llmtune("finetune", "recipes/dpo.yaml", *ov)
    if a.no_eval:
        ev = a.out
        done = json.loads((ev / "eval_results.json").read_text())
        ours = {k: done[f"eval_{k}"] for k in NAMES}
    else:
        ev = a.out / "eval-llmtune"
        llmtune("eval", "--model", str(a.out), "--output-dir", str(ev), "--bootstrap", "1000")
        (scored,) = json.loads((ev / "results.json").read_text())["results"].values()
        ours = {k: scored[k]["value"] for k in NAMES}
        acc = scored["rewards/accuracies"]
        if "ci_low" in acc:  # the untrained policy scores 0.5 (its rewards are 0): does training beat it?
            print(f"rewards/accuracies {acc['value']:.4f}, 95% bootstrap CI [{acc['ci_low']:.4f}, {acc['ci_high']:.4f}]: "
                  f"{'above' if acc['ci_low'] > 0.5 else 'not clearly above'} the untrained policy's 0.5")
    per_pair = [json.loads(line) for line in (ev / "predictions.jsonl").read_text().splitlines()]
    ties = sum(r["reward_chosen"] == r["reward_rejected"] for r in per_pair)
    strict = sum(r["reward_chosen"] > r["reward_rejected"] for r in per_pair) / max(len(per_pair), 1)

    recipe, tok, mine, rows = held_out(a.out)
    theirs, tokenized = trl_eval(recipe, tok, a.out, rows)
    same = len(mine) == len(tokenized) and all(same_ids(m, t, recipe.train.max_seq_length)
                                               for m, t in zip(mine, tokenized, strict=True))
    truncated = sum(len(t["prompt_ids"]) + max(len(t["chosen_ids"]), len(t["rejected_ids"])) > recipe.train.max_seq_length
                    for t in tokenized)

    print(f"\nrun {a.out}: {len(per_pair)} held-out pairs (llmtune), {len(tokenized)} (TRL); token ids identical: {same}; "
          f"{truncated} pairs cut at max_seq_length={recipe.train.max_seq_length}; {ties} tied pairs")
    print(f"overrides: {' '.join(ov)}\n")
    print(f"{'metric':<22}{'llmtune':>14}{'TRL':>14}{'|diff|':>12}")
    worst = 0.0
    for name in NAMES:
        mine_v, trl_v = ours[name], theirs[f"eval_{name}"]
        if name == "rewards/accuracies":
            print(f"{name + ' (tie 0.5)':<22}{mine_v:>14.6f}{trl_v:>14.6f}{abs(mine_v - trl_v):>12.2e}")
            mine_v, name = strict, "  ... ties as 0"
        diff = abs(mine_v - trl_v)
        worst = max(worst, diff if name != "logps/chosen" and name != "logps/rejected" else diff / max(1.0, abs(trl_v)))
        print(f"{name:<22}{mine_v:>14.6f}{trl_v:>14.6f}{diff:>12.2e}")
    ok = same and math.isfinite(worst) and worst <= a.tolerance
    print(f"\n{'agree' if ok else 'DISAGREE'}: largest difference {worst:.2e} (logps relative), tolerance {a.tolerance}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
