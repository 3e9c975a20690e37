"""`llmtune eval --task FILE.yaml` and `llmtune eval --metric perplexity --text FILE`: multiple-choice tasks and
perplexity whose numbers equal lm-evaluation-harness 0.4.x on the same model, task file and text.

Orchestration only: the log-likelihoods are llmtune.loglik's, the task files and prompts llmtune.lmtasks'. Kept
apart from evaluation.py (the recipe-driven evaluations) because nothing here reads a recipe. Every input (task
files, their data, prompts, the text) is read and checked before a model is loaded; files are written last.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune import lmtasks, loglik, runs, tasks
from llmtune.errors import LlmtuneError

TEXT_FIELDS = ("text", "page", "document", "content")
log = logging.getLogger("llmtune")


@dataclass
class LM:
    """A model to score text with, loaded on first use: `kind` is known before the weights are read."""

    name: str
    kind: str  # "causal" or "masked"
    loader: Any

    def load(self) -> tuple[Any, Any]:
        model, tokenizer = self.loader()
        model.eval()
        return model, tokenizer


def _masked_config(config: dict[str, Any]) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    archs = config.get("architectures") or []
    if any(a.endswith("ForCausalLM") for a in archs) or config.get("is_decoder"):
        return False
    return any(a.endswith("ForMaskedLM") for a in archs) or config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def find_lm(model_arg: str, what: str = "--model") -> LM:
    """A run or model folder (through runs.load_run: LoRA adapters on their base), else an alias, GGUF file or hub
    id; causal unless its config describes a masked LM."""
    from llmtune.lora import load_base
    from llmtune.models import load_model, load_tokenizer, read_config, resolve
    from llmtune.recipe import ModelArgs

    path = Path(model_arg).expanduser()
    plain = path.is_dir() and not (path / runs.INFO_FILE).is_file() and not (path / "adapter_config.json").is_file()
    if plain and (path / "config.json").is_file() and _masked_config(read_config(path)):
        # a plain masked-LM folder: tasks.recognize would hand it to causal_lm, which claims any non-seq2seq config
        # before masked_lm is asked
        folder_args = ModelArgs(name=str(path))

        def masked_folder() -> tuple[Any, Any]:
            from transformers import AutoModelForMaskedLM

            return load_model(AutoModelForMaskedLM, folder_args), load_tokenizer(folder_args)

        return LM(str(model_arg), "masked", masked_folder)
    if path.is_dir() and any((path / f).is_file() for f in (runs.INFO_FILE, "config.json", "adapter_config.json")):
        run = runs.load_run(path)
        model_class = tasks.get(run.task).MODEL_CLASS
        if model_class == "AutoModelForCausalLM":
            kind = "causal"
        elif model_class == "AutoModelForMaskedLM":
            kind = "masked"
        else:
            raise LlmtuneError(f"{what} {model_arg}: a {run.task} model; log-likelihoods need a language model (a "
                               "causal_lm or preference run, a decoder, or a masked_lm run)")
        return LM(str(model_arg), kind, lambda: (run.model, run.tokenizer))
    args = ModelArgs(name=model_arg)
    resolved = resolve(args, where=what)
    config = read_config(resolved.path) if resolved.is_local and not resolved.gguf_file else {}
    if config and _masked_config(config):
        def masked() -> tuple[Any, Any]:
            from transformers import AutoModelForMaskedLM

            return load_model(AutoModelForMaskedLM, args, resolved), load_tokenizer(args, resolved)

        return LM(str(model_arg), "masked", masked)
    return LM(str(model_arg), "causal", lambda: (load_base(args, None, resolved), load_tokenizer(args, resolved)))


# ---- multiple choice ------------------------------------------------------------------------------------------


@dataclass
class PreparedTask:
    task: lmtasks.TaskFile
    docs: lmtasks.Docs
    requests: list[lmtasks.Request]
    num_fewshot: int


def prepare_tasks(paths: list[Path], num_fewshot: int | None, chat: bool) -> list[PreparedTask]:
    out = []
    names: dict[str, Path] = {}
    for p in paths:
        task = lmtasks.read_task(Path(p))
        if task.name in names:
            raise LlmtuneError(f"--task {p}: task name {task.name!r} is also the name of --task {names[task.name]}")
        names[task.name] = Path(p)
        k = task.num_fewshot if num_fewshot is None else num_fewshot
        if num_fewshot and task.raw.get("num_fewshot") == 0:  # lm-eval's simple_evaluate: an explicit 0 stays
            log.warning("--task %s sets num_fewshot: 0, which lm-eval never overrides: --num-fewshot %d is "
                        "ignored for it", p, num_fewshot)
            k = 0
        task.num_fewshot = k  # the docs' few-shot split is needed only with examples
        docs = lmtasks.Docs(task, lmtasks.load_docs(task))
        out.append(PreparedTask(task, docs, lmtasks.build_requests(task, docs, k, chat), k))
    return out


def _context(req: lmtasks.Request, tokenizer: Any) -> str:
    return req.context if isinstance(req.context, str) else lmtasks.render_chat(tokenizer, req.context)


def score_task(prepared: PreparedTask, model: Any, tokenizer: Any, chat: bool, batch_size: int, bootstrap: int,
               seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """({metric: {value, stderr, ci_low, ci_high, n}}, per-sample records) of one task for one model."""
    from llmtune.metrics import bootstrap_ci

    task = prepared.task
    args_per_doc = []
    for req in prepared.requests:
        ctx = _context(req, tokenizer)
        args_per_doc.append([(ctx, c) for c in lmtasks.continuations(task, req, chat)])
    flat = [a for args in args_per_doc for a in args]
    results = loglik.loglikelihood(model, tokenizer, flat, batch_size)
    records, pos = [], 0
    for req, args in zip(prepared.requests, args_per_doc, strict=True):
        res = results[pos:pos + len(args)]
        pos += len(args)
        scores = lmtasks.score_doc(req, res)
        records.append(lmtasks.sample_record(req, args, res, scores, task.metrics))
    metrics: dict[str, Any] = {}
    for name in task.metrics:
        values = [r[name] for r in records]
        entry = {"value": sum(values) / len(values), "stderr": lmtasks.mean_stderr(values), "ci_low": None,
                 "ci_high": None, "n": len(values)}
        if bootstrap and len(values) > 1:
            (low, high), = bootstrap_ci("accuracy", values, [1.0] * len(values), n=bootstrap, seed=seed).values()
            entry.update(ci_low=low, ci_high=high)
        metrics[name] = entry
    return metrics, records


def _harness_results(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's `results` entry: "acc,none", "acc_stderr,none", ..., "alias"."""
    out: dict[str, Any] = {"alias": name}
    for key, m in metrics.items():
        out[f"{key},none"] = m["value"]
        out[f"{key}_stderr,none"] = m["stderr"] if m["stderr"] is not None else "N/A"
    return out


def _out_dir(model: str, output_dir: Path | None, what: str) -> Path:
    if output_dir is not None:
        return output_dir
    from llmtune.runs import default_eval_dir

    return default_eval_dir(model, f"eval-{what}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def run_tasks(model: str, task_paths: list[Path], finetuned: list[str], num_fewshot: int | None,
              prompt_format: str | None, batch_size: int, bootstrap: int, seed: int, output_dir: Path | None,
              log_samples: bool) -> dict[str, Any]:
    """Score every task with `model` and each `finetuned` run; write results.json (and samples_<task>.jsonl)."""
    t0 = time.time()
    fmt = prompt_format or "plain"  # lm-eval's default; chat = --apply_chat_template --fewshot_as_multiturn
    if fmt not in ("plain", "chat"):
        raise LlmtuneError(f"--prompt-format {fmt}: choose plain or chat")
    if num_fewshot is not None and num_fewshot < 0:
        raise LlmtuneError(f"--num-fewshot {num_fewshot}: cannot be negative")
    chat = fmt == "chat"
    lms = [find_lm(m, what) for m, what in [(model, "--model"), *((f, "--finetuned") for f in finetuned)]]
    for lm in lms:
        if lm.kind != "causal":
            raise LlmtuneError(f"--model {lm.name}: a masked LM; --task scores choices by their log-likelihood "
                               "after the prompt, which needs a causal LM (a decoder)")
    prepared = prepare_tasks(task_paths, num_fewshot, chat)  # every task file, document and prompt checked here
    settings: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for lm in lms:
        m, tok = lm.load()
        label = ("" if lm is lms[0] else "fine-tuned ") + lm.name
        settings[label], samples[label] = {}, {}
        for p in prepared:
            metrics, records = score_task(p, m, tok, chat, batch_size, bootstrap, seed)
            settings[label][p.task.name] = metrics
            samples[label][p.task.name] = records
        del m
    base = next(iter(settings))
    names = [p.task.name for p in prepared]
    result: dict[str, Any] = {
        "results": {n: _harness_results(n, settings[base][n]) for n in names},
        "group_subtasks": {n: [] for n in names},
        "configs": {p.task.name: {**p.task.raw, "num_fewshot": p.num_fewshot} for p in prepared},
        "versions": {p.task.name: p.task.version for p in prepared},
        "n-shot": {p.task.name: p.num_fewshot for p in prepared},
        "higher_is_better": {p.task.name: {m: True for m in p.task.metrics} for p in prepared},
        "n-samples": {p.task.name: {"original": len(p.docs.docs), "effective": len(p.docs.docs)} for p in prepared},
        "task_hashes": {n: lmtasks.task_hash(samples[base][n]) for n in names},
        "config": {"model": model, "finetuned": finetuned, "tasks": [str(t) for t in task_paths],
                   "prompt_format": fmt, "apply_chat_template": chat, "fewshot_as_multiturn": chat,
                   "fewshot_seed": lmtasks.FEWSHOT_SEED, "batch_size": batch_size, "bootstrap": bootstrap,
                   "seed": seed},
        # llmtune's own view: every model (column) and task (row), with bootstrap 95% intervals
        "settings": settings,
        "ci": {s: {n: {k: [v["ci_low"], v["ci_high"]] for k, v in settings[s][n].items()} for n in names}
               for s in settings},
        "finetuned": {s: {"results": {n: _harness_results(n, settings[s][n]) for n in names},
                          "task_hashes": {n: lmtasks.task_hash(samples[s][n]) for n in names}}
                      for s in list(settings)[1:]},
        "versions_packages": runs.versions(),
        "git_hash": runs.git_hash(),
        "total_evaluation_time_seconds": round(time.time() - t0, 3),
    }
    out = _out_dir(model, output_dir, "tasks")
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "results.json", result)
    written = ["results.json"]
    if log_samples:
        for i, s in enumerate(settings):
            for n in names:
                name = f"samples_{_slug(n)}.jsonl" if i == 0 else f"samples_{_slug(n)}.{_slug(s)}.jsonl"
                runs.write_jsonl(out / name, samples[s][n])
                written.append(name)
    result["output_dir"] = str(out)
    result["written"] = written
    return result


# ---- perplexity -----------------------------------------------------------------------------------------------


def read_documents(path: Path, field: str | None) -> list[str]:
    """The documents of --text: a .txt file is one document (as lm-eval's wikitext pages); each row of a
    .jsonl/.json/.csv/.tsv/.parquet file is one, from `field` (default: text)."""
    from llmtune import inputs

    if not path.exists():
        raise LlmtuneError(f"--text {path}: file not found")
    if path.is_dir():
        raise LlmtuneError(f"--text {path}: is a directory, not a file")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = [{**r, "_where": f"--text {path}, row {i}"} for i, r in enumerate(pq.read_table(path).to_pylist())]
        except Exception as e:
            raise LlmtuneError(f"--text {path}: cannot read the parquet file ({type(e).__name__})") from None
        if not rows:
            raise LlmtuneError(f"--text {path}: no rows")
        docs = inputs.column(rows, field, TEXT_FIELDS)
    elif inputs.file_format(path) == ".txt":
        if field is not None:
            raise LlmtuneError(f"--text-field {field}: a .txt file is one document and has no fields")
        docs = [inputs.read_text(path)]
    else:
        docs = inputs.column(inputs.read_rows(path, "--text"), field, TEXT_FIELDS)
    for i, d in enumerate(docs):
        if not d.strip():
            raise LlmtuneError(f"--text {path}: document {i + 1} is empty")
    return docs


def word_count(doc: str) -> int:
    """lm-eval's count_words (wikitext counts the original page the same way)."""
    return len(re.split(r"\s+", doc))


def perplexity_metrics(docs: list[str], scored: list[dict[str, Any]]) -> dict[str, float]:
    """Token, word and byte perplexity and bits per byte, each a ratio of sums over documents (lm-eval's
    weighted_perplexity and bits_per_byte)."""
    ll = math.fsum(s["loglikelihood"] for s in scored)
    tokens = sum(s["tokens"] for s in scored)
    words = sum(word_count(d) for d in docs)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    return {"token_perplexity": math.exp(-ll / tokens), "word_perplexity": math.exp(-ll / words),
            "byte_perplexity": math.exp(-ll / nbytes), "bits_per_byte": -ll / nbytes / math.log(2),
            "loglikelihood": ll, "tokens": tokens, "words": words, "bytes": nbytes}


def _perplexity_ci(docs: list[str], scored: list[dict[str, Any]], bootstrap: int, seed: int) -> dict[str, Any]:
    """Percentile bootstrap over documents (a single document has none): each resample's ratios of sums."""
    import numpy as np

    from llmtune.metrics import bootstrap_ci

    if not bootstrap or len(docs) < 2:
        return {}
    ll = np.array([s["loglikelihood"] for s in scored])
    counts = {"token_perplexity": np.array([s["tokens"] for s in scored], dtype=float),
              "word_perplexity": np.array([word_count(d) for d in docs], dtype=float),
              "byte_perplexity": np.array([len(d.encode("utf-8")) for d in docs], dtype=float)}
    idx = list(range(len(docs)))

    def fn(preds: list[int], refs: list[int]) -> dict[str, float]:
        sel = np.asarray(preds)
        total = float(ll[sel].sum())
        out = {k: math.exp(-total / float(v[sel].sum())) for k, v in counts.items()}
        out["bits_per_byte"] = -total / float(counts["byte_perplexity"][sel].sum()) / math.log(2)
        return out

    return bootstrap_ci(fn, idx, idx, n=bootstrap, seed=seed)


def run_perplexity(model: str, text: Path, field: str | None, stride: int | None, max_length: int | None,
                   batch_size: int, bootstrap: int, seed: int, output_dir: Path | None) -> dict[str, Any]:
    t0 = time.time()
    if max_length is not None and max_length < 1:
        raise LlmtuneError(f"--max-length {max_length}: must be at least 1")
    if stride is not None and stride < 1:
        raise LlmtuneError(f"--stride {stride}: must be at least 1 (the tokens each window adds)")
    if stride is not None and max_length is not None and stride > max_length:
        raise LlmtuneError(f"--stride {stride} is larger than --max-length {max_length}: tokens between windows "
                           "would never be scored")
    lm = find_lm(model)
    if lm.kind == "masked" and stride is not None:
        raise LlmtuneError(f"--stride {stride}: a masked LM's pseudo-perplexity sees every other token of its "
                           "window; --stride applies to causal LMs")
    docs = read_documents(text, field)
    m, tok = lm.load()
    length = max_length or loglik.model_max_length(m, tok)
    if stride is not None and stride > length:
        raise LlmtuneError(f"--stride {stride} is larger than the maximum length {length} (the model's)")
    if lm.kind == "masked":
        scored = loglik.pseudo_loglikelihood(m, tok, docs, max_length=length, batch_size=batch_size)
        method = "pseudo-log-likelihood (each token masked in turn; Salazar et al. 2020)"
    else:
        scored = loglik.loglikelihood_rolling(m, tok, docs, max_length=length, stride=stride, batch_size=batch_size)
        method = "lm-eval loglikelihood_rolling" if stride is None else "strided windows"
    values = perplexity_metrics(docs, scored)
    cis = _perplexity_ci(docs, scored, bootstrap, seed)
    n = len(docs)
    results = {k: {"value": values[k], "ci_low": cis.get(k, (None, None))[0], "ci_high": cis.get(k, (None, None))[1],
                   "n": n} for k in ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")}
    name = text.stem
    result = {
        "results": {name: {"alias": name, "word_perplexity,none": values["word_perplexity"],
                           "word_perplexity_stderr,none": "N/A", "byte_perplexity,none": values["byte_perplexity"],
                           "byte_perplexity_stderr,none": "N/A", "bits_per_byte,none": values["bits_per_byte"],
                           "bits_per_byte_stderr,none": "N/A"}},
        "perplexity": results,
        "totals": {k: values[k] for k in ("loglikelihood", "tokens", "words", "bytes")},
        "n-samples": {name: {"original": n, "effective": n}},
        "config": {"model": model, "text": str(text), "text_field": field, "max_length": length, "stride": stride,
                   "method": method, "masked_lm": lm.kind == "masked",
                   "windows": sum(s["windows"] for s in scored), "batch_size": batch_size, "bootstrap": bootstrap,
                   "seed": seed},
        "documents": [{"loglikelihood": s["loglikelihood"], "tokens": s["tokens"], "words": word_count(d),
                       "bytes": len(d.encode("utf-8"))} for d, s in zip(docs, scored, strict=True)],
        "versions": runs.versions(),
        "git_hash": runs.git_hash(),
        "total_evaluation_time_seconds": round(time.time() - t0, 3),
    }
    out = _out_dir(model, output_dir, "perplexity")
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "results.json", result)
    result["output_dir"] = str(out)
    return result
