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
    plain = not (path / runs.INFO_FILE).is_file() and not (path / "adapter_config.json").is_file()
    run = None
    if _is_model_folder(path):
        try:
            run = runs.load_run(path)
        except LlmtuneError:
            if not plain:
                raise
            # a plain folder no task claims by itself (a bare encoder: AutoModel, no head): the recipe's base
            # model, below
    if run is not None:
        if tasks.MODULES[run.task] == tasks.MODULES[recipe.task]:
            info = run.info if run.info is not None else task.setup(recipe, splits, run.tokenizer)
            return run.model, run.tokenizer, info
        if not plain:
            raise LlmtuneError(f"--model {model_arg}: a {run.task} model, but the recipe's task is {recipe.task}; "
                               "evaluate it with a recipe of its own task")
        # a plain folder with another task's head (a masked-LM folder under a classification recipe): the
        # recipe's base model, below
    from llmtune.models import load_tokenizer, read_config, resolve

    recipe.model.name = model_arg
    recipe.model.gguf_file = None
    recipe.lora.enabled = False  # evaluate the model as it is: never wrap a fresh adapter
    resolved = resolve(recipe.model, where="--model")
    tokenizer = load_tokenizer(recipe.model, resolved)
    if getattr(task, "CLASSES_FROM_CONFIG", False):  # a head with fixed classes: from the model, not the data
        info = task.info_from_config(read_config(resolved.path) if resolved.is_local else {}, f"--model {model_arg}")
    else:
        info = task.setup(recipe, splits, tokenizer)
    return task.load_model(recipe, tokenizer, info), tokenizer, info


def check_metric_names(recipe: Recipe, info: Any, names: list[str] | None) -> None:
    """`--metric` for a model's eval names what the task's eval reports (a metric it does not compute was ignored
    in silence), before the model runs."""
    import difflib

    from llmtune.metrics import output_names

    declared = tasks.get(recipe.task).metric_names(recipe, info)
    for name in names or []:
        try:
            wanted = output_names(name)
        except ValueError as e:  # not a metric at all
            raise LlmtuneError(f"--metric {name}: {e}") from None
        if all(k in declared for k in wanted):
            continue
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        generate = " (with --set eval.generate=true it also generates and scores text)" \
            if getattr(tasks.get(recipe.task), "GENERATES", False) and not recipe.generate_in_eval else ""
        raise LlmtuneError(f"--metric {name}: {recipe.task}'s eval reports no {name}{hint}; it reports "
                           f"{', '.join(declared)}{generate}")


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
    check_metric_names(recipe, info, names)
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

#: how --shots prompts are written: `plain` text blocks, or the model's own `chat` template
PROMPT_FORMATS = ("plain", "chat")


def check_prompt_format(value: str | None) -> None:
    if value is not None and value not in PROMPT_FORMATS:
        raise LlmtuneError(f"--prompt-format {value}: choose plain or chat")


def resolve_prompt_format(requested: str | None, tokenizer: Any, model_arg: str) -> str:
    """The --shots format: what was asked, else chat when the tokenizer has a chat template, else plain."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise LlmtuneError(f"--prompt-format chat: the tokenizer of {model_arg} has no chat template; "
                           "use --prompt-format plain")
    return requested or ("chat" if has_template else "plain")


def check_promptable(recipe: Recipe) -> None:
    """A task is prompted only when its module has the prompt_* functions (see tasks.TaskModule)."""
    task = tasks.get(recipe.task)
    if not all(hasattr(task, f) for f in ("prompt_spec", "prompt_fields", "prompt_choices")):
        raise LlmtuneError(f"--shots prompting does not apply to {recipe.task}: a {task.MODEL_CLASS} is fine-tuned, "
                           "not prompted; evaluate a fine-tuned run with llmtune eval --model RUN, or prompt a "
                           "decoder with a recipe of a generation or classification task")


def task_line(recipe: Recipe, choices: list[str] | None = None) -> str:
    return tasks.get(recipe.task).prompt_spec(recipe).instruction.replace("{choices}", ", ".join(choices or []))


def build_prompt(recipe: Recipe, shots: list[tuple[str, str]], text: str, choices: list[str] | None = None) -> str:
    """A plain few-shot prompt: the task line, K solved examples, then the input to solve (lm-eval's layout with
    `description`, target_delimiter " " and fewshot_delimiter "\\n\\n")."""
    spec = tasks.get(recipe.task).prompt_spec(recipe)
    head = task_line(recipe, choices) + "\n\n"
    inp, out = spec.input_header, spec.output_header
    body = "".join(f"{inp}: {x}\n{out}: {y}\n\n" for x, y in shots)
    return f"{head}{body}{inp}: {text}\n{out}:"


def chat_messages(recipe: Recipe, shots: list[tuple[str, str]], text: str,
                  choices: list[str] | None = None) -> list[dict[str, str]]:
    """lm-eval's --apply_chat_template --fewshot_as_multiturn on the plain layout: the task line as the system
    message (where lm-eval puts a task's `description`), each example a user turn (its doc_to_text: the plain
    block's "Text: ...\nLabel:") and an assistant turn (its answer), then the input to answer as a user turn: plain
    and chat differ by the template alone."""
    spec = tasks.get(recipe.task).prompt_spec(recipe)

    def user(x: str) -> dict[str, str]:
        return {"role": "user", "content": f"{spec.input_header}: {x}\n{spec.output_header}:"}

    messages = [{"role": "system", "content": task_line(recipe, choices)}]
    for x, y in shots:
        messages += [user(x), {"role": "assistant", "content": y}]
    messages.append(user(text))
    return messages


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation rendered up to the assistant's answer. A template that refuses a system turn (it raises, as
    Gemma's does) gets the task line at the head of the first user turn instead: lm-eval drops it, which would
    leave a zero-shot prompt with no task at all."""
    from jinja2 import TemplateError

    def render(msgs: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))

    try:
        return render(messages)
    except TemplateError:
        if messages[0]["role"] != "system":
            raise
        first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
        return render([first, *messages[2:]])


def turn_end(tokenizer: Any) -> tuple[list[int], str]:
    """What the chat template writes after an assistant's answer: its first token as a stop id when that is a
    special token (<|im_end|>, <|eot_id|>, <end_of_turn>: often not the tokenizer's EOS), else the text at which
    to cut a generated answer."""
    mark = "ANSWER_ENDS_HERE"
    try:
        rendered = str(tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": mark}], tokenize=False))
    except Exception:  # a template that needs more than one user turn: EOS alone stops generation
        return [], ""
    after = rendered.split(mark, 1)[1] if mark in rendered else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    if ids and ids[0] in set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items()
                                                           if t.special}:
        return [ids[0]], ""
    return [], after.strip()


def prompts_for(recipe: Recipe, tokenizer: Any, prompt_format: str, shots: list[tuple[str, str]], texts: list[str],
                choices: list[str] | None = None) -> list[str]:
    if prompt_format == "chat":
        return [render_chat_prompt(tokenizer, chat_messages(recipe, shots, x, choices)) for x in texts]
    return [build_prompt(recipe, shots, x, choices) for x in texts]


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


def load_decoder(model_arg: str, recipe: Recipe, prompt_format: str | None = None) -> tuple[Any, Any, str]:
    """The decoder to prompt (an alias, folder, GGUF file or hub id), in eval mode, its tokenizer and the prompt
    format (checked against the tokenizer before the weights load)."""
    from transformers import AutoModelForCausalLM

    from llmtune.models import load_model, load_tokenizer, resolve

    args = type(recipe.model)(**{**recipe.model.__dict__, "name": model_arg, "gguf_file": None})
    resolved = resolve(args, where="--model")
    tokenizer = load_tokenizer(args, resolved)
    fmt = resolve_prompt_format(prompt_format, tokenizer, model_arg)
    model = load_model(AutoModelForCausalLM, args, resolved)
    model.eval()
    return model, tokenizer, fmt


def evaluate_shots(model_arg: str, model: Any, tokenizer: Any, recipe: Recipe, split: str, k: int,
                   names: list[str] | None, bootstrap: int, seed: int, batch_size: int,
                   prompt_format: str = "plain") -> Setting:
    """Prompt a decoder with k examples drawn (seeded) from train, then the eval input; score the answers."""
    from llmtune.generate import generate_texts

    task = tasks.get(recipe.task)
    splits, target = _eval_split(recipe, split, need_train=k > 0)
    shots = _draw_shots(recipe, splits.get("train"), k, seed)
    rows = [target.dataset[i] for i in range(len(target.dataset))]
    fields = [task.prompt_fields(recipe, r) for r in rows]
    texts = [x for x, _ in fields]
    records: list[dict[str, Any]] = []
    choices = task.prompt_choices(recipe, splits)
    acc: dict[str, list[str]] = {}
    if choices is not None:  # multiple choice: each label scored by its log-likelihood after the prompt, as lm-eval
        import torch

        from llmtune.loglik import loglikelihood

        prompts = prompts_for(recipe, tokenizer, prompt_format, shots, texts, choices)
        # lm-eval's target_delimiter: " " after a plain prompt, none after a chat template's assistant header
        delimiter = "" if prompt_format == "chat" else " "
        lls = loglikelihood(model, tokenizer, [(p, delimiter + c) for p in prompts for c in choices], batch_size)
        scores = torch.tensor([ll for ll, _ in lls], dtype=torch.float64).view(len(prompts), len(choices))
        # acc_norm: log-likelihood per character of the choice (lm-eval's completion_len, without the delimiter)
        lengths = torch.tensor([float(len(c)) for c in choices], dtype=torch.float64)
        acc = {"acc": [choices[int(j)] for j in scores.argmax(-1)],
               "acc_norm": [choices[int(j)] for j in (scores / lengths).argmax(-1)]}
        probs = scores.softmax(-1)
        preds = acc["acc"]
        golds = [str(y) for _, y in fields]
        for i, (x, p, g, pr) in enumerate(zip(texts, preds, golds, probs, strict=True)):
            records.append({"text": x, "label": g, "prediction": p, "prediction_norm": acc["acc_norm"][i],
                            "probabilities": {w: round(float(v), 6) for w, v in zip(choices, pr, strict=True)},
                            "loglikelihoods": {w: float(v) for w, v in zip(choices, scores[i], strict=True)},
                            "is_greedy": {w: lls[i * len(choices) + j][1] for j, w in enumerate(choices)}})
        from llmtune.metrics import classification_metrics

        metrics = classification_metrics(preds, golds)
    else:
        prompts = prompts_for(recipe, tokenizer, prompt_format, shots, texts)
        g = recipe.generation
        if prompt_format == "chat":
            # the template writes BOS where the model wants one; the answer ends with the assistant's turn
            stop_ids, cut = turn_end(tokenizer)
            outs = generate_texts(model, tokenizer, prompts, g, batch_size=batch_size, max_input_length=4096,
                                  decoder_only=True, add_special_tokens=False, stop_token_ids=stop_ids)
            preds = [(o.split(cut)[0] if cut else o).strip() for o in outs]
        else:
            outs = generate_texts(model, tokenizer, prompts, g, batch_size=batch_size, max_input_length=4096,
                                  decoder_only=True)
            # the model may go on with another "Input: ..." block: keep the first answer only
            inp = task.prompt_spec(recipe).input_header
            preds = [o.split(f"\n{inp}:")[0].split("\n\n")[0].strip() for o in outs]
        refs = [y if isinstance(y, list) else [y] for _, y in fields]
        for x, p, r in zip(texts, preds, refs, strict=True):
            records.append({"source": x, "references": r, "prediction": p})
        from llmtune import metrics as M

        metrics = {}
        for name in names or task.prompt_spec(recipe).metrics:
            metrics.update(M.compute(name, preds, refs))
    label = f"{k}-shot {model_arg} ({prompt_format})"
    out = _with_intervals(metrics, records, names, bootstrap, seed, recipe)
    for key, picked in acc.items():  # lm-eval's names beside ours: acc (= accuracy) and acc_norm
        out[key] = _ci("accuracy", picked, golds, bootstrap, seed)["accuracy"]
    return Setting(label, out, records)


# ---- orchestration ----------------------------------------------------------------------------------------


def run_eval(model: str, recipe_arg: str | None, overrides: list[str], split: str, metrics: list[str] | None,
             shots: list[int] | None, finetuned: list[str], bootstrap: int, seed: int, output_dir: Path | None,
             batch_size: int = 8, prompt_format: str | None = None) -> dict[str, Any]:
    """Evaluate `model` (fine-tuned run/folder, or a decoder prompted with each of `shots` in `prompt_format`) and
    every `finetuned` run on the same split; write results.json and predictions.jsonl; return the results."""
    t0 = time.time()
    if split not in SPLIT_NAMES:  # before any model or data is loaded
        raise LlmtuneError(f"--split {split}: choose eval (validation), test or train")
    check_prompt_format(prompt_format)
    if prompt_format is not None and not shots:
        raise LlmtuneError(f"--prompt-format {prompt_format}: applies to --shots prompting (and --task files); "
                           "a fine-tuned model is evaluated with its own prompts")
    recipe = recipe_for(model if not shots else (finetuned[0] if finetuned and recipe_arg is None else model),
                        recipe_arg, overrides)
    settings: list[Setting] = []
    fmt = None
    if shots:
        check_promptable(recipe)
        decoder, tokenizer, fmt = load_decoder(model, recipe, prompt_format)
        for k in shots:
            settings.append(evaluate_shots(model, decoder, tokenizer, recipe, split, k, metrics, bootstrap, seed,
                                           batch_size, fmt))
    else:
        settings.append(evaluate_model(model, recipe, split, metrics, bootstrap, seed))
    for run in finetuned:
        run_recipe = recipe_for(run, None, overrides) if (Path(run) / "recipe.yaml").exists() else recipe
        if run_recipe.task != recipe.task:
            raise LlmtuneError(f"--finetuned {run}: its task is {run_recipe.task}, not {recipe.task}")
        # evaluate the run on the same data as the baselines
        run_recipe.data = recipe.data
        settings.append(evaluate_model(run, run_recipe, split, metrics, bootstrap, seed))
    out = output_dir or runs.default_eval_dir(model, f"eval-{split}")
    result = {
        "results": {s.name: s.metrics for s in settings},
        "config": {
            "model": model, "recipe": recipe.source, "recipe_hash": recipe.fingerprint(), "task": recipe.task,
            "split": split, "metrics": metrics, "shots": shots, "prompt_format": fmt, "seed": seed,
            "bootstrap": bootstrap, "finetuned": finetuned, "generation": recipe.to_dict()["generation"],
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
