"""`llmtune eval`: score prediction files, evaluate a model on a dataset, and zero/few-shot baselines.

Model evaluation reuses each task's own `tokenize` and `evaluate` (the code that runs during training), so the
numbers a run reports at its end and the numbers `llmtune eval` reports on the same split agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune import data as data_mod
from llmtune import runs, tasks
from llmtune.errors import LlmtuneError
from llmtune.recipe import Recipe

SPLIT_NAMES = {"eval": "eval", "validation": "eval", "dev": "eval", "test": "test", "train": "train"}


@dataclass
class Setting:
    """One row of the comparison table: a model evaluated one way."""

    name: str
    metrics: dict[str, dict[str, Any]]  # key -> {value, ci_low, ci_high, n}
    records: list[dict[str, Any]]


def recipe_for(model: str, recipe_arg: str | None, overrides: list[str]) -> Recipe:
    """The recipe to evaluate with: --recipe (a file, a built-in name or a run folder), else the run's own."""
    from llmtune.recipe import find_recipe, load_recipe

    if recipe_arg is None:
        run_recipe = Path(model) / "recipe.yaml"
        if not run_recipe.exists():
            raise LlmtuneError(f"--model {model}: not a run folder with a recipe.yaml; give --recipe RECIPE "
                               "to say which data and task to evaluate on")
        return load_recipe(run_recipe, overrides)
    p = Path(recipe_arg)
    if p.is_dir():
        if not (p / "recipe.yaml").exists():
            raise LlmtuneError(f"--recipe {recipe_arg}: folder has no recipe.yaml")
        p = p / "recipe.yaml"
    return load_recipe(find_recipe(str(p)), overrides)


def _eval_split(recipe: Recipe, split: str, need_train: bool) -> tuple[dict[str, data_mod.Split], data_mod.Split]:
    task = tasks.get(recipe.task)
    key = SPLIT_NAMES.get(split)
    if key is None:
        raise LlmtuneError(f"--split {split}: choose eval (validation), test or train")
    splits = data_mod.load_splits(recipe, validate=lambda s: task.validate(recipe, s), need_train=need_train)
    if key not in splits:
        raise LlmtuneError(f"--split {split}: the recipe's data has no {key} split (has: {', '.join(splits)}); "
                           f"set data.{key}_file or data.{key}_split")
    return splits, splits[key]


def _ci(name: str, preds: list[Any], refs: list[Any], bootstrap: int, seed: int) -> dict[str, dict[str, Any]]:
    from llmtune.scoring import score_texts

    if name in ("accuracy", "f1"):
        return score_texts([str(p) for p in preds], [[str(r)] for r in refs], [name], bootstrap=bootstrap,
                           seed=seed)["results"]
    return score_texts(preds, refs, [name], bootstrap=bootstrap, seed=seed)["results"]


def _with_intervals(metrics: dict[str, float], records: list[dict[str, Any]], names: list[str] | None,
                    bootstrap: int, seed: int, recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The task's own metric values, with bootstrap intervals: the task's `intervals` hook where it has one, else
    from the per-example records where they hold a `prediction` and its `label` or `references` (`reference`:
    one text); the loss (and perplexity) from records' per-example `loss` (and `n_tokens`, for a token mean)."""
    n = len(records)
    task = tasks.get(recipe.task)
    out = {k: {"value": v, "ci_low": None, "ci_high": None, "n": n} for k, v in metrics.items()}
    hook = getattr(task, "intervals", None)
    predicted = bool(records) and all("prediction" in r for r in records)
    if hook is not None:
        if bootstrap and records:
            for key, (low, high) in hook(recipe, records, bootstrap, seed).items():
                if key in out:
                    out[key].update(ci_low=low, ci_high=high)
    elif predicted and all("label" in r for r in records):
        preds, refs = [r["prediction"] for r in records], [r["label"] for r in records]
        for name in names or ["accuracy", "f1"]:
            if name in ("accuracy", "f1"):
                out.update(_ci(name, preds, refs, bootstrap, seed))
    elif predicted and all("references" in r or "reference" in r for r in records):
        preds = [r["prediction"] for r in records]
        refs = [r["references"] if "references" in r else [r["reference"]] for r in records]
        wanted = names or [m for m in ("rouge", "bleu", "chrf", "exact_match") if any(k.startswith(m) for k in metrics)]
        for name in wanted:
            if name in ("perplexity", "loss"):
                continue
            out.update(_ci(name, preds, refs, bootstrap, seed))
    if task.TOKEN_LEVEL_LOSS and "loss" in metrics and "perplexity" not in out:
        out["perplexity"] = {"value": math.exp(min(metrics["loss"], 50.0)), "ci_low": None, "ci_high": None, "n": n}
    if bootstrap and "loss" in out and out["loss"]["ci_low"] is None:
        _loss_interval(out, records, task.TOKEN_LEVEL_LOSS, bootstrap, seed)
    return out


def _loss_interval(out: dict[str, dict[str, Any]], records: list[dict[str, Any]], token_level: bool, bootstrap: int,
                   seed: int) -> None:
    """Bootstrap intervals of the loss (and perplexity) over examples from the records' per-example `loss`
    (weighted by `n_tokens` where the loss is a token mean), set only where they reproduce the split's loss."""
    from llmtune import metrics as M

    rows = [r for r in records if r.get("loss") is not None]
    if not rows or (token_level and not all(r.get("n_tokens") for r in rows)):
        return
    stats = M.prepare_loss([r["loss"] for r in rows], [r["n_tokens"] for r in rows] if token_level else None,
                           perplexity="perplexity" in out)
    if not math.isclose(stats.values["loss"], out["loss"]["value"], rel_tol=1e-5, abs_tol=1e-9):
        return  # the records' losses are another quantity than the split's (ORPO's, say)
    for key, (low, high) in M.confidence_interval(stats, bootstrap, seed).items():
        out[key].update(ci_low=low, ci_high=high)


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in (runs.INFO_FILE, "config.json", "adapter_config.json"))


def _load_finetuned(model_arg: str, recipe: Recipe, splits: dict[str, data_mod.Split]) -> tuple[Any, Any, Any]:
    """(model, tokenizer, info) of a run or model folder (runs.load_run), or of a base model named by a hub id,
    alias or GGUF file, evaluated as it is (no fresh adapter)."""
    task = tasks.get(recipe.task)
    path = Path(model_arg)
    if _is_model_folder(path):
        run = runs.load_run(path)
        if tasks.MODULES[run.task] != tasks.MODULES[recipe.task]:
            raise LlmtuneError(f"--model {model_arg}: a {run.task} model, but the recipe's task is {recipe.task}; "
                               "evaluate it with a recipe of its own task")
        info = run.info if run.info is not None else task.setup(recipe, splits, run.tokenizer)
        return run.model, run.tokenizer, info
    from llmtune.models import load_tokenizer, read_config, resolve

    recipe.model.name = model_arg
    recipe.model.gguf_file = None
    recipe.lora.enabled = False  # evaluate the model as it is: never wrap a fresh adapter
    resolved = resolve(recipe.model, where="--model")
    tokenizer = load_tokenizer(recipe.model, resolved)
    if hasattr(task, "info_from_config"):  # a head with fixed classes: they come from the model, not the data
        info = task.info_from_config(read_config(resolved.path) if resolved.is_local else {}, f"--model {model_arg}")
    else:
        info = task.setup(recipe, splits, tokenizer)
    return task.load_model(recipe, tokenizer, info), tokenizer, info


def evaluate_model(model_arg: str, recipe: Recipe, split: str, names: list[str] | None, bootstrap: int,
                   seed: int) -> Setting:
    """Run the task's evaluation (what training runs at each eval step) on `split` with a trained model."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from llmtune.batching import eval_loader
    from llmtune.train import evaluate

    task = tasks.get(recipe.task)
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True))
    with accelerator.main_process_first():
        splits, target = _eval_split(recipe, split, need_train=False)
    model, tokenizer, info = _load_finetuned(model_arg, recipe, splits)
    with accelerator.main_process_first():
        tokenized = task.tokenize(recipe, tokenizer, target, info)
    loader = eval_loader(tokenized, task.collator(recipe, tokenizer, model),
                         recipe.train.per_device_eval_batch_size * accelerator.num_processes)
    model, loader = accelerator.prepare(model, loader)
    ctx = tasks.EvalContext(model=model, loader=loader, accelerator=accelerator, recipe=recipe, tokenizer=tokenizer,
                            info=info, split=target)
    metrics, records = evaluate(task, ctx)  # fp32, as in a run's own eval, even where an Accelerator chose bf16
    return Setting(f"fine-tuned {model_arg}", _with_intervals(metrics, records, names, bootstrap, seed, recipe), records)


# ---- zero/few-shot prompting of a decoder --------------------------------------------------------------


def build_prompt(recipe: Recipe, shots: list[tuple[str, str]], text: str, choices: list[str] | None = None) -> str:
    """A plain few-shot prompt: the task line, K solved examples, then the input to solve."""
    spec = tasks.get(recipe.task).prompt_spec(recipe)
    head = spec.instruction.replace("{choices}", ", ".join(choices or [])) + "\n\n"
    inp, out = spec.input_header, spec.output_header
    body = "".join(f"{inp}: {x}\n{out}: {y}\n\n" for x, y in shots)
    return f"{head}{body}{inp}: {text}\n{out}:"


def _draw_shots(recipe: Recipe, train: data_mod.Split | None, k: int, seed: int) -> list[tuple[str, str]]:
    if k == 0:
        return []
    if train is None:
        raise LlmtuneError("--shots: few-shot examples come from the train split, and the recipe has none")
    rng = random.Random(seed)
    n = len(train.dataset)
    if k > n:
        raise LlmtuneError(f"--shots {k}: the train split has only {n} rows")
    rows = [train.dataset[i] for i in rng.sample(range(n), k)]
    out = []
    for row in rows:
        x, y = tasks.get(recipe.task).prompt_fields(recipe, row)
        out.append((x, y[0] if isinstance(y, list) else y))
    return out


def _label_logprobs(model: Any, tokenizer: Any, prompts: list[str], labels: list[str], batch_size: int) -> Any:
    """Sum of log-probabilities of each label's tokens after each prompt: shape (len(prompts), len(labels))."""
    import torch

    label_ids = [tokenizer(" " + lab, add_special_tokens=False)["input_ids"] for lab in labels]
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(labels))]
    scores = torch.zeros(len(prompts), len(labels))
    old = tokenizer.padding_side
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for s in range(0, len(pairs), batch_size):
                chunk = pairs[s:s + batch_size]
                seqs, starts = [], []
                for i, j in chunk:
                    p = tokenizer(prompts[i], add_special_tokens=True)["input_ids"]
                    seqs.append(p + label_ids[j])
                    starts.append(len(p))
                width = max(map(len, seqs))
                pad = tokenizer.pad_token_id or 0
                ids = torch.tensor([x + [pad] * (width - len(x)) for x in seqs], device=device)
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in seqs], device=device)
                logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
                for row, ((i, j), st, seq) in enumerate(zip(chunk, starts, seqs, strict=True)):
                    toks = torch.tensor(seq[st:], device=device)
                    scores[i, j] = logp[row, st - 1:len(seq) - 1].gather(-1, toks[:, None]).sum().cpu()
    finally:
        tokenizer.padding_side = old
    return scores


def load_decoder(model_arg: str, recipe: Recipe) -> tuple[Any, Any]:
    """The decoder to prompt (an alias, folder, GGUF file or hub id), in eval mode."""
    from transformers import AutoModelForCausalLM

    from llmtune.models import load_model, load_tokenizer, resolve

    args = type(recipe.model)(**{**recipe.model.__dict__, "name": model_arg, "gguf_file": None})
    resolved = resolve(args, where="--model")
    tokenizer = load_tokenizer(args, resolved)
    model = load_model(AutoModelForCausalLM, args, resolved)
    model.eval()
    return model, tokenizer


def evaluate_shots(model_arg: str, model: Any, tokenizer: Any, recipe: Recipe, split: str, k: int,
                   names: list[str] | None, bootstrap: int, seed: int, batch_size: int) -> Setting:
    """Prompt a decoder with k examples drawn (seeded) from train, then the eval input; score the answers."""
    from llmtune.generate import generate_texts

    task = tasks.get(recipe.task)
    splits, target = _eval_split(recipe, split, need_train=k > 0)
    shots = _draw_shots(recipe, splits.get("train"), k, seed)
    rows = [target.dataset[i] for i in range(len(target.dataset))]
    fields = [task.prompt_fields(recipe, r) for r in rows]
    records: list[dict[str, Any]] = []
    choices = task.prompt_choices(recipe, splits)
    if choices is not None:  # score each choice by its likelihood after the prompt
        prompts = [build_prompt(recipe, shots, x, choices) for x, _ in fields]
        scores = _label_logprobs(model, tokenizer, prompts, choices, batch_size)
        probs = scores.softmax(-1)
        preds = [choices[int(j)] for j in scores.argmax(-1)]
        golds = [str(y) for _, y in fields]
        for (x, _), p, g, pr in zip(fields, preds, golds, probs, strict=True):
            records.append({"text": x, "label": g, "prediction": p,
                            "probabilities": {w: round(float(v), 6) for w, v in zip(choices, pr, strict=True)}})
        from llmtune.metrics import classification_metrics

        metrics = classification_metrics(preds, golds)
    else:
        prompts = [build_prompt(recipe, shots, x) for x, _ in fields]
        g = recipe.generation
        outs = generate_texts(model, tokenizer, prompts, g, batch_size=batch_size, max_input_length=4096,
                              decoder_only=True)
        # the model may go on with another "Input: ..." block: keep the first answer only
        inp = task.prompt_spec(recipe).input_header
        preds = [o.split(f"\n{inp}:")[0].split("\n\n")[0].strip() for o in outs]
        refs = [y if isinstance(y, list) else [y] for _, y in fields]
        for (x, _), p, r in zip(fields, preds, refs, strict=True):
            records.append({"source": x, "references": r, "prediction": p})
        from llmtune import metrics as M

        metrics = {}
        for name in names or task.prompt_spec(recipe).metrics:
            metrics.update(M.compute(name, preds, refs))
    label = f"{k}-shot {model_arg}"
    return Setting(label, _with_intervals(metrics, records, names, bootstrap, seed, recipe), records)


# ---- orchestration ----------------------------------------------------------------------------------------


def run_eval(model: str, recipe_arg: str | None, overrides: list[str], split: str, metrics: list[str] | None,
             shots: list[int] | None, finetuned: list[str], bootstrap: int, seed: int, output_dir: Path | None,
             batch_size: int = 8) -> dict[str, Any]:
    """Evaluate `model` (fine-tuned run/folder, or a decoder prompted with each of `shots`) and every
    `finetuned` run on the same split; write results.json and predictions.jsonl; return the results."""
    t0 = time.time()
    if split not in SPLIT_NAMES:  # before any model or data is loaded
        raise LlmtuneError(f"--split {split}: choose eval (validation), test or train")
    recipe = recipe_for(model if not shots else (finetuned[0] if finetuned and recipe_arg is None else model),
                        recipe_arg, overrides)
    settings: list[Setting] = []
    if shots:
        decoder, tokenizer = load_decoder(model, recipe)
        for k in shots:
            settings.append(evaluate_shots(model, decoder, tokenizer, recipe, split, k, metrics, bootstrap, seed,
                                           batch_size))
    else:
        settings.append(evaluate_model(model, recipe, split, metrics, bootstrap, seed))
    for run in finetuned:
        run_recipe = recipe_for(run, None, overrides) if (Path(run) / "recipe.yaml").exists() else recipe
        if run_recipe.task != recipe.task:
            raise LlmtuneError(f"--finetuned {run}: its task is {run_recipe.task}, not {recipe.task}")
        # evaluate the run on the same data as the baselines
        run_recipe.data = recipe.data
        settings.append(evaluate_model(run, run_recipe, split, metrics, bootstrap, seed))
    out = output_dir or (Path(model) / f"eval-{split}" if Path(model).is_dir() else Path("runs") / "eval")
    result = {
        "results": {s.name: s.metrics for s in settings},
        "config": {
            "model": model, "recipe": recipe.source, "recipe_hash": recipe.fingerprint(), "task": recipe.task,
            "split": split, "metrics": metrics, "shots": shots, "seed": seed, "bootstrap": bootstrap,
            "finetuned": finetuned, "generation": recipe.to_dict()["generation"],
        },
        "n_samples": len(settings[0].records),
        "versions": runs.versions(),
        "git_hash": runs.git_hash(),
        "total_evaluation_time_seconds": round(time.time() - t0, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "results.json", result)
    rows = [{"setting": s.name, **r} for s in settings for r in s.records]
    runs.write_jsonl(out / "predictions.jsonl", rows)
    result["output_dir"] = str(out)
    return result


def score_prediction_files(predictions: Path, references: list[Path], metrics: list[str], prediction_field: str | None,
                           reference_field: str | None, options: dict[str, dict[str, Any]], bootstrap: int, seed: int,
                           compare: Path | None, output: Path | None) -> dict[str, Any]:
    from llmtune.scoring import score_files

    t0 = time.time()
    res = score_files(predictions, references if len(references) > 1 else references[0], metrics,
                      prediction_field=prediction_field, reference_field=reference_field, options=options,
                      bootstrap=bootstrap, seed=seed, compare_path=compare)
    digest = hashlib.sha256()
    for p in [predictions, *references]:
        digest.update(Path(p).read_bytes())
    result = {
        "results": res["results"],
        "signatures": res["signatures"],
        "comparison": res["comparison"],
        "config": {"predictions": str(predictions), "references": [str(r) for r in references],
                   "compare": str(compare) if compare else None, "metrics": metrics, "options": options,
                   "bootstrap": bootstrap, "seed": seed, "inputs_sha256": digest.hexdigest()[:16]},
        "n_samples": res["n_samples"],
        "versions": runs.versions(),
        "git_hash": runs.git_hash(),
        "total_evaluation_time_seconds": round(time.time() - t0, 3),
    }
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result
