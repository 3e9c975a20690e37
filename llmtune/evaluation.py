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
from llmtune import runs
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
    from llmtune import tasks

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
                    bootstrap: int, seed: int, task: str) -> dict[str, dict[str, Any]]:
    """The task's own metric values, with bootstrap intervals from the per-example records where possible."""
    n = len(records)
    out = {k: {"value": v, "ci_low": None, "ci_high": None, "n": n} for k, v in metrics.items()}
    labelled = [r for r in records if "label" in r]
    if labelled and len(labelled) == n:
        preds, refs = [r["prediction"] for r in records], [r["label"] for r in records]
        wanted = names or ["accuracy", "f1"]
        for name in wanted:
            if name in ("accuracy", "f1"):
                out.update(_ci(name, preds, refs, bootstrap, seed))
    elif records and "references" in records[0]:
        preds, refs = [r["prediction"] for r in records], [r["references"] for r in records]
        wanted = names or [m for m in ("rouge", "bleu", "chrf", "exact_match") if any(k.startswith(m) for k in metrics)]
        for name in wanted:
            if name in ("perplexity", "loss"):
                continue
            out.update(_ci(name, preds, refs, bootstrap, seed))
    if task != "classification" and "loss" in metrics and "perplexity" not in out:
        out["perplexity"] = {"value": math.exp(min(metrics["loss"], 50.0)), "ci_low": None, "ci_high": None, "n": n}
    return out


def _load_finetuned(model_arg: str, recipe: Recipe) -> tuple[Any, Any, dict[str, Any]]:
    """A run folder or model folder: (model, tokenizer, info). LoRA runs load their base plus the adapter."""
    from llmtune import tasks
    from llmtune.models import load_tokenizer, resolve

    path = Path(model_arg)
    if (path / "adapter_config.json").exists():
        from llmtune import lora

        model, tokenizer, _, info = lora.load_run(path)
        return model, tokenizer, info
    recipe.model.name = model_arg
    recipe.model.gguf_file = None if path.is_dir() else recipe.model.gguf_file
    recipe.lora.enabled = False  # evaluate the model as it is: never wrap a fresh adapter
    resolved = resolve(recipe.model, where="--model")
    tokenizer = load_tokenizer(recipe.model, resolved)
    info: dict[str, Any] = {}
    if recipe.task == "classification":
        from llmtune.models import read_config

        cfg = read_config(resolved.path) if resolved.is_local else {}
        id2label = cfg.get("id2label")
        if not id2label or "SequenceClassification" not in " ".join(cfg.get("architectures") or []):
            raise LlmtuneError(f"--model {model_arg}: not a fine-tuned classifier (no classification head); "
                               "for an untuned decoder use --shots to prompt it")
        info["label_names"] = [id2label[str(i)] for i in range(len(id2label))]
    task = tasks.get(recipe.task)
    return task.load_model(recipe, tokenizer, info), tokenizer, info


def evaluate_model(model_arg: str, recipe: Recipe, split: str, names: list[str] | None, bootstrap: int,
                   seed: int) -> Setting:
    """Run the task's evaluation (what training runs at each eval step) on `split` with a trained model."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from llmtune import tasks
    from llmtune.train import eval_loader, full_precision

    task = tasks.get(recipe.task)
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True))
    with accelerator.main_process_first():
        splits, target = _eval_split(recipe, split, need_train=False)
    model, tokenizer, info = _load_finetuned(model_arg, recipe)
    if not info or recipe.task != "classification":
        info = {**task.setup(recipe, splits, tokenizer), **info}
    with accelerator.main_process_first():
        tokenized = task.tokenize(recipe, tokenizer, target, info)
    loader = eval_loader(tokenized, task.collator(recipe, tokenizer, model),
                         recipe.train.per_device_eval_batch_size * accelerator.num_processes)
    model, loader = accelerator.prepare(model, loader)
    ctx = tasks.EvalContext(model=model, loader=loader, accelerator=accelerator, recipe=recipe, tokenizer=tokenizer,
                            info=info, split=target)
    with full_precision(model):  # fp32, as in a run's own eval, even where an earlier Accelerator chose bf16
        metrics, records = task.evaluate(ctx)
    return Setting(f"fine-tuned {model_arg}", _with_intervals(metrics, records, names, bootstrap, seed, recipe.task), records)


# ---- zero/few-shot prompting of a decoder --------------------------------------------------------------


def _example_fields(recipe: Recipe, row: dict[str, Any]) -> tuple[str, str | list[str]]:
    """(input text, target) of a row for prompting, whatever the task."""
    d = recipe.data
    if recipe.task == "classification":
        text = data_mod.as_text(row[d.text_column]) or ""
        if d.text_pair_column:
            text += "\n" + (data_mod.as_text(row[d.text_pair_column]) or "")
        return text, str(row.get(d.label_column, ""))
    if recipe.task in ("summarization", "translation"):
        src = d.source_column or d.source_lang or "source"
        tgt = d.target_column or d.target_lang or "target"
        return data_mod.as_text(row[src]) or "", data_mod.references_of(row[tgt])
    if d.format == "instruction":
        text = str(row[d.prompt_column])
        extra = row.get(d.input_column) if d.input_column else None
        if extra:
            text += "\n" + str(extra)
        return text, [str(row[d.completion_column])]
    raise LlmtuneError(f"--shots: prompting baselines support classification, summarization, translation and "
                       f"instruction data, not data.format={d.format}")


def _label_names(recipe: Recipe, splits: dict[str, data_mod.Split]) -> list[str]:
    if recipe.data.label_names:
        return list(recipe.data.label_names)
    col = recipe.data.label_column
    return sorted({str(v) for s in splits.values() if col in s.dataset.column_names for v in s.dataset[col]})


def _label_text(recipe: Recipe, value: str) -> str:
    names = recipe.data.label_names
    if names and value.lstrip("-").isdigit() and 0 <= int(value) < len(names):
        return names[int(value)]
    return value


HEADERS = {"classification": ("Text", "Label"), "summarization": ("Document", "Summary"),
           "translation": ("Source", "Translation"), "causal_lm": ("Instruction", "Response")}


def build_prompt(recipe: Recipe, shots: list[tuple[str, str]], text: str, labels: list[str] | None = None) -> str:
    """A plain few-shot prompt: a task line, K solved examples, then the input to solve."""
    inp, out = HEADERS[recipe.task]
    if recipe.task == "classification":
        head = f"Classify each text as one of: {', '.join(labels or [])}.\n\n"
    elif recipe.task == "translation":
        head = f"Translate from {recipe.data.source_lang or 'the source language'} to " \
               f"{recipe.data.target_lang or 'the target language'}.\n\n"
    elif recipe.task == "summarization":
        head = "Summarize each document in one sentence.\n\n"
    else:
        head = "Answer each instruction.\n\n"
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
        x, y = _example_fields(recipe, row)
        y = y[0] if isinstance(y, list) else _label_text(recipe, y)
        out.append((x, y))
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

    splits, target = _eval_split(recipe, split, need_train=k > 0)
    shots = _draw_shots(recipe, splits.get("train"), k, seed)
    rows = [target.dataset[i] for i in range(len(target.dataset))]
    fields = [_example_fields(recipe, r) for r in rows]
    records: list[dict[str, Any]] = []
    if recipe.task == "classification":
        labels = _label_names(recipe, splits)
        words = [_label_text(recipe, lab) for lab in labels]
        prompts = [build_prompt(recipe, shots, x, words) for x, _ in fields]
        scores = _label_logprobs(model, tokenizer, prompts, words, batch_size)
        probs = scores.softmax(-1)
        preds = [words[int(j)] for j in scores.argmax(-1)]
        golds = [_label_text(recipe, str(y)) for _, y in fields]
        for (x, _), p, g, pr in zip(fields, preds, golds, probs, strict=True):
            records.append({"text": x, "label": g, "prediction": p,
                            "probabilities": {w: round(float(v), 6) for w, v in zip(words, pr, strict=True)}})
        from llmtune.metrics import classification_metrics

        metrics = classification_metrics(preds, golds)
    else:
        prompts = [build_prompt(recipe, shots, x) for x, _ in fields]
        g = recipe.generation
        outs = generate_texts(model, tokenizer, prompts, g, batch_size=batch_size, max_input_length=4096,
                              decoder_only=True)
        # the model may go on with another "Input: ..." block: keep the first answer only
        inp = HEADERS[recipe.task][0]
        preds = [o.split(f"\n{inp}:")[0].split("\n\n")[0].strip() for o in outs]
        refs = [y if isinstance(y, list) else [y] for _, y in fields]
        for (x, _), p, r in zip(fields, preds, refs, strict=True):
            records.append({"source": x, "references": r, "prediction": p})
        from llmtune import metrics as M

        default = {"summarization": ["rouge"], "translation": ["bleu", "chrf"], "causal_lm": ["rouge", "exact_match"]}
        metrics = {}
        for name in names or default[recipe.task]:
            metrics.update(M.compute(name, preds, refs))
    label = f"{k}-shot {model_arg}"
    return Setting(label, _with_intervals(metrics, records, names, bootstrap, seed, recipe.task), records)


# ---- orchestration ----------------------------------------------------------------------------------------


def run_eval(model: str, recipe_arg: str | None, overrides: list[str], split: str, metrics: list[str] | None,
             shots: list[int] | None, finetuned: list[str], bootstrap: int, seed: int, output_dir: Path | None,
             batch_size: int = 8) -> dict[str, Any]:
    """Evaluate `model` (fine-tuned run/folder, or a decoder prompted with each of `shots`) and every
    `finetuned` run on the same split; write results.json and predictions.jsonl; return the results."""
    t0 = time.time()
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
