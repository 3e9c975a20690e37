"""The checks of issue #14 on real data, through llmtune's command line only: a rerunnable script, one JSON file.

    python scripts/check_encoders.py                          # both checks, the recipes' steps (tens of minutes on CPU)
    python scripts/check_encoders.py --only embedding --embedding-steps 20 --mlm-eval-lines 200

embedding  MiniLM fine-tuned on STS-B train (../shared/data/stsb) by overrides of recipes/embedding.yaml alone
           (scored pairs, so CoSENT). Checks: the Spearman correlation recomputed here (scipy) from the embeddings
           `llmtune predict` saves equals llmtune's eval_spearman; it beats the untouched MiniLM's (the step-0 eval,
           base_eval_spearman); the run folder loads in sentence-transformers and encodes to the same vectors.
masked_lm  MiniLM's masked-LM continued pretraining on the public-domain books (../shared/data/pd_books) by
           overrides of recipes/mlm.yaml alone. Checks: the held-out book's fixed-mask perplexity falls to at most a
           tenth of the freshly initialised head's (the step-0 eval), on the same masked tokens.

Exit code 0 when every check that ran passed, 1 otherwise. Results: --out/check_encoders.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def llmtune(*args: str | Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "llmtune", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check(results: dict[str, Any], name: str, ok: bool, detail: str) -> None:
    results["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def embedding(data: Path, out: Path, steps: int | None, extra: list[str], results: dict[str, Any]) -> None:
    import numpy as np
    from scipy.stats import spearmanr

    run = out / "stsb"
    overrides = ["data.dataset=null", f"data.train_file={data / 'stsb' / 'train.jsonl'}",
                 f"data.eval_file={data / 'stsb' / 'dev.jsonl'}", "data.score_max=5", f"train.output_dir={run}",
                 "train.overwrite_output_dir=true", "train.resume_from_checkpoint=false"]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    overrides += extra
    t0 = time.time()
    llmtune("finetune", "recipes/embedding.yaml", *overrides)
    ev = json.loads((run / "eval_results.json").read_text())
    results["embedding"] = {"seconds": round(time.time() - t0, 1), "overrides": overrides,
                            **{k: ev[k] for k in ev if "spearman" in k or "pearson" in k}}
    dev = read_jsonl(data / "stsb" / "dev.jsonl")
    vectors = {}
    for field in ("sentence1", "sentence2"):
        llmtune("predict", run, "--input", data / "stsb" / "dev.jsonl", "--field", field,
                "--output", out / f"dev-{field}.jsonl")
        vectors[field] = np.array([r["embedding"] for r in read_jsonl(out / f"dev-{field}.jsonl")])
    a, b = vectors["sentence1"], vectors["sentence2"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ours = 100 * float(spearmanr(cos, [r["score"] for r in dev]).statistic)
    results["embedding"]["spearman_from_saved_embeddings"] = ours
    # the saved vectors are rounded to 7 places: the recomputed correlation agrees to ~1e-4 points
    check(results, "embedding: Spearman from saved embeddings = llmtune's", abs(ours - ev["eval_spearman"]) < 1e-2,
          f"scipy {ours:.4f} vs eval_spearman {ev['eval_spearman']:.4f} (dev, {len(dev)} pairs)")
    check(results, "embedding: beats the untouched MiniLM", ev["eval_spearman"] > ev["base_eval_spearman"],
          f"{ev['eval_spearman']:.2f} vs base {ev['base_eval_spearman']:.2f}")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        check(results, "embedding: loads in sentence-transformers", False, "sentence-transformers is not installed")
        return
    model = SentenceTransformer(str(run), device="cpu")
    texts = [r["sentence1"] for r in dev]
    theirs = model.encode(texts, batch_size=64)
    diff = float(np.abs(theirs - a).max())
    results["embedding"]["sentence_transformers_max_abs_diff"] = diff
    check(results, "embedding: SentenceTransformer(run) gives llmtune's vectors", diff < 1e-5,
          f"max |difference| {diff:.2e} over {len(texts)} sentences x {a.shape[1]}")


def masked_lm(data: Path, out: Path, steps: int | None, eval_lines: int | None, results: dict[str, Any]) -> None:
    run = out / "mlm_books"
    overrides = ["data.dataset=null", f"data.train_file={data / 'pd_books' / 'train.txt'}",
                 f"data.eval_file={data / 'pd_books' / 'dev.txt'}", f"train.output_dir={run}",
                 "train.overwrite_output_dir=true", "train.resume_from_checkpoint=false"]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    if eval_lines:
        overrides.append(f"data.max_eval_samples={eval_lines}")
    t0 = time.time()
    llmtune("finetune", "recipes/mlm.yaml", *overrides)
    ev = json.loads((run / "eval_results.json").read_text())
    keys = ("loss", "perplexity", "accuracy", "masked_tokens")
    results["masked_lm"] = {"seconds": round(time.time() - t0, 1), "overrides": overrides,
                            **{f"{p}eval_{k}": ev.get(f"{p}eval_{k}") for p in ("base_", "") for k in keys}}
    check(results, "masked_lm: the same fixed masks before and after",
          ev["eval_masked_tokens"] == ev["base_eval_masked_tokens"] > 0, f"{ev['eval_masked_tokens']:.0f} masked tokens")
    base, after = ev["base_eval_perplexity"], ev["eval_perplexity"]
    check(results, "masked_lm: held-out perplexity well below the fresh head's", math.isfinite(after) and after <= base / 10,
          f"{after:.1f} vs fresh head {base:.1f} (loss {ev['eval_loss']:.3f} vs {ev['base_eval_loss']:.3f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "check_encoders")
    p.add_argument("--only", choices=("embedding", "masked_lm"))
    p.add_argument("--embedding-steps", type=int, help="train.max_steps (default: the recipe's)")
    p.add_argument("--embedding-set", dest="embedding_extra", action="append", default=[],
                   help="another override of recipes/embedding.yaml, k=v (repeatable)")
    p.add_argument("--mlm-steps", type=int, help="train.max_steps (default: the recipe's)")
    p.add_argument("--mlm-eval-lines", type=int, help="data.max_eval_samples: held-out paragraphs (default: all)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"data_dir": str(args.data_dir), "checks": []}
    if args.only in (None, "embedding"):
        embedding(args.data_dir, args.out, args.embedding_steps, args.embedding_extra, results)
    if args.only in (None, "masked_lm"):
        masked_lm(args.data_dir, args.out, args.mlm_steps, args.mlm_eval_lines, results)
    (args.out / "check_encoders.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out / 'check_encoders.json'}")
    return 0 if all(c["ok"] for c in results["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
