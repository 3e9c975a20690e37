"""Multiple-choice tasks written as lm-evaluation-harness task YAMLs, and their prompts, as lm-eval 0.4.x builds them.

A task file uses lm-eval's fields (lm_eval/config/task.py TaskConfig): `task`, `dataset_path` (a `datasets`
builder such as json/csv/parquet/text with `dataset_kwargs.data_files`, or a local file or folder),
`test_split` / `validation_split` / `training_split` / `fewshot_split`, `doc_to_text` / `doc_to_choice` /
`doc_to_target` (a field name, a Jinja2 template, an int target or a list of choices), `target_delimiter`,
`fewshot_delimiter`, `description`, `num_fewshot`, `fewshot_config.sampler` (default / first_n),
`output_type: multiple_choice`, `metric_list` (acc, acc_norm). Paths are relative to the task file's folder.

What lm-eval does and this module repeats (lm_eval/api/task.py ConfigurableTask, lm_eval/api/samplers.py):
  - the documents are the test split, else the validation split; few-shot examples come from fewshot_split,
    else the training, validation or test split, in that order;
  - one random.Random(1234) (lm-eval's default fewshot seed) per task draws the examples of every document in
    turn; when the few-shot split is the test split, n + 1 are drawn and the document itself removed;
  - plain prompt: description + per example (text + target_delimiter + answer + fewshot_delimiter) + text;
    each choice is scored as the continuation target_delimiter + choice;
  - chat prompt (lm-eval's --apply_chat_template --fewshot_as_multiturn): a system turn with the description,
    a user/assistant pair per example, a user turn with the text, rendered by the tokenizer's chat template with
    the generation prompt; the choice is scored with no delimiter;
  - acc: argmax of the log-likelihoods, acc_norm: argmax of log-likelihood / len(choice) in characters; the
    standard error is the sample standard deviation (ddof 1) / sqrt(n).
No model code here (see llmtune.loglik) and no files written.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

FEWSHOT_SEED = 1234  # lm-eval's default --fewshot_seed
BUILDERS = ("json", "csv", "parquet", "text", "arrow")
SUFFIX_BUILDER = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                  ".txt": "text", ".arrow": "arrow"}
KEYS = ("task", "task_alias", "dataset_path", "dataset_name", "dataset_kwargs", "training_split",
        "validation_split", "test_split", "fewshot_split", "doc_to_text", "doc_to_choice", "doc_to_target",
        "target_delimiter", "fewshot_delimiter", "description", "num_fewshot", "fewshot_config", "output_type",
        "metric_list", "metadata", "tag", "should_decontaminate", "doc_to_decontamination_query", "repeats")
# lm-eval fields that change what is computed and that llmtune does not implement: refused, never ignored
UNSUPPORTED = ("process_docs", "process_results", "filter_list", "use_prompt", "gen_prefix", "include",
               "custom_dataset", "generation_kwargs", "doc_to_image", "doc_to_audio", "group", "unsafe_code")
FEWSHOT_KEYS = ("sampler", "split")
METRICS = ("acc", "acc_norm")


def _closest(key: str, valid: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {match[0]}?)" if match else ""


@dataclass
class TaskFile:
    """One task YAML, checked: its fields with lm-eval's defaults applied."""

    path: Path
    name: str
    raw: dict[str, Any]
    dataset_path: str
    dataset_name: str | None
    dataset_kwargs: dict[str, Any]
    test_split: str | None
    validation_split: str | None
    training_split: str | None
    fewshot_split: str | None
    doc_to_text: Any
    doc_to_choice: Any
    doc_to_target: Any
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    num_fewshot: int = 0
    sampler: str = "default"
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    version: Any = None


def _yaml_error(path: Path, e: Exception) -> LlmtuneError:
    mark = getattr(e, "problem_mark", None)
    where = f", line {mark.line + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if "!function" in str(e):
        problem = "!function (Python code in a task file) is not supported: write the field as a Jinja template"
    return LlmtuneError(f"--task {path}{where}: not a task YAML llmtune can read ({problem})")


def read_task(path: Path) -> TaskFile:
    """Parse and check a task file (no data read yet)."""
    import yaml

    if not path.exists():
        raise LlmtuneError(f"--task {path}: file not found")
    if path.is_dir():
        raise LlmtuneError(f"--task {path}: is a directory; give the task's .yaml file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except UnicodeDecodeError:
        raise LlmtuneError(f"--task {path}: not valid UTF-8 text") from None
    if not isinstance(raw, dict):
        raise LlmtuneError(f"--task {path}: expected a mapping of lm-eval task fields (task, dataset_path, "
                           f"doc_to_text, ...), found {type(raw).__name__}")
    for key in raw:
        if key in UNSUPPORTED:
            raise LlmtuneError(f"--task {path}: {key} is an lm-eval field llmtune does not support")
        if key not in KEYS:
            raise LlmtuneError(f"--task {path}: unknown field {key!r}{_closest(str(key), KEYS)}")
    where = f"--task {path}"
    output_type = raw.get("output_type", "multiple_choice")
    if output_type != "multiple_choice":
        raise LlmtuneError(f"{where}: output_type {output_type!r}: llmtune scores multiple_choice tasks "
                           "(use --metric perplexity --text FILE for perplexity)")
    for key in ("dataset_path", "doc_to_text", "doc_to_choice", "doc_to_target"):
        if raw.get(key) is None:
            raise LlmtuneError(f"{where}: {key} is missing; a multiple_choice task needs dataset_path, "
                               "doc_to_text, doc_to_choice and doc_to_target")
    if raw.get("test_split") is None and raw.get("validation_split") is None:
        raise LlmtuneError(f"{where}: give test_split or validation_split: the split whose documents are scored")
    for key in ("target_delimiter", "fewshot_delimiter", "description", "dataset_path"):
        if key in raw and not isinstance(raw[key], str):
            raise LlmtuneError(f"{where}: {key} must be a string, found {raw[key]!r}")
    for key in ("doc_to_text", "doc_to_target"):
        if not isinstance(raw[key], str | int) or isinstance(raw[key], bool):
            raise LlmtuneError(f"{where}: {key} must be a field name, a Jinja template or an int")
    if isinstance(raw["doc_to_text"], int):
        raise LlmtuneError(f"{where}: doc_to_text as an int (one context per choice, as Winogrande) is not "
                           "supported")
    if not isinstance(raw["doc_to_choice"], str | list | dict):
        raise LlmtuneError(f"{where}: doc_to_choice must be a field name, a Jinja template, a list or a mapping")
    num = raw.get("num_fewshot", 0) or 0
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise LlmtuneError(f"{where}: num_fewshot must be an integer >= 0, found {num!r}")
    fewshot = raw.get("fewshot_config") or {}
    if not isinstance(fewshot, dict):
        raise LlmtuneError(f"{where}: fewshot_config must be a mapping")
    for key in fewshot:
        if key not in FEWSHOT_KEYS:
            raise LlmtuneError(f"{where}: fewshot_config.{key} is not supported (llmtune reads "
                               f"{', '.join(FEWSHOT_KEYS)})")
    sampler = fewshot.get("sampler", "default")
    if sampler not in ("default", "first_n"):
        raise LlmtuneError(f"{where}: fewshot_config.sampler {sampler!r}: choose default or first_n")
    metrics = []
    for item in raw.get("metric_list") or [{"metric": m} for m in METRICS]:
        name = item.get("metric") if isinstance(item, dict) else item
        if name not in METRICS:
            raise LlmtuneError(f"{where}: metric {name!r}: llmtune computes {' and '.join(METRICS)} for "
                               "multiple_choice tasks")
        metrics.append(name)
    kwargs = raw.get("dataset_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise LlmtuneError(f"{where}: dataset_kwargs must be a mapping (data_files: ...)")
    metadata = raw.get("metadata") or {}
    return TaskFile(
        path=path, name=str(raw.get("task") or path.stem), raw=raw, dataset_path=raw["dataset_path"],
        dataset_name=raw.get("dataset_name"), dataset_kwargs=dict(kwargs), test_split=raw.get("test_split"),
        validation_split=raw.get("validation_split"), training_split=raw.get("training_split"),
        fewshot_split=fewshot.get("split", raw.get("fewshot_split")), doc_to_text=raw["doc_to_text"],
        doc_to_choice=raw["doc_to_choice"], doc_to_target=raw["doc_to_target"],
        target_delimiter=raw.get("target_delimiter", " "), fewshot_delimiter=raw.get("fewshot_delimiter", "\n\n"),
        description=raw.get("description", "") or "", num_fewshot=num, sampler=sampler, metrics=metrics,
        version=metadata.get("version") if isinstance(metadata, dict) else None)


def _local(folder: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else folder / p)


def _data_files(task: TaskFile) -> Any:
    files = task.dataset_kwargs.get("data_files")
    folder = task.path.parent
    if files is None:
        return None
    if isinstance(files, str):
        return _local(folder, files)
    if isinstance(files, list):
        return [_local(folder, str(f)) for f in files]
    if isinstance(files, dict):
        return {k: (_local(folder, v) if isinstance(v, str) else [_local(folder, str(f)) for f in v])
                for k, v in files.items()}
    raise LlmtuneError(f"--task {task.path}: dataset_kwargs.data_files must be a path, a list or a mapping of "
                       "split to path")


def load_docs(task: TaskFile) -> dict[str, list[dict[str, Any]]]:
    """Every split of the task's dataset as lists of documents (datasets.load_dataset, local files only)."""
    import datasets

    files = _data_files(task)
    path = task.dataset_path
    where = f"--task {task.path}"
    if path not in BUILDERS:
        local = Path(_local(task.path.parent, path))
        if local.is_file():  # dataset_path: data/test.jsonl, one file: its split is "train", as datasets names it
            builder = SUFFIX_BUILDER.get(local.suffix.lower())
            if builder is None:
                raise LlmtuneError(f"{where}: dataset_path {path}: unknown file type {local.suffix!r}")
            path, files = builder, files or str(local)
        elif local.is_dir():
            path = str(local)
        else:
            raise LlmtuneError(f"{where}: dataset_path {path}: not a datasets builder ({', '.join(BUILDERS)}) "
                               f"nor a local file or folder ({local} does not exist); hub datasets need the "
                               "network")
    elif files is None:
        raise LlmtuneError(f"{where}: dataset_path {path} needs dataset_kwargs.data_files")
    for f in [files] if isinstance(files, str) else (files.values() if isinstance(files, dict) else files or []):
        for one in [f] if isinstance(f, str) else f:
            if not any(ch in one for ch in "*?[") and not Path(one).exists():
                raise LlmtuneError(f"{where}: data file {one} not found (paths are relative to the task file's "
                                   "folder)")
    kwargs = {k: v for k, v in task.dataset_kwargs.items() if k not in ("data_files", "trust_remote_code")}
    try:
        data = datasets.load_dataset(path, task.dataset_name, data_files=files, **kwargs)
    except Exception as e:  # datasets raises many types for a file it cannot parse
        raise LlmtuneError(f"{where}: could not load the dataset ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0][:200]})") from None
    return {name: [dict(row) for row in split] for name, split in data.items()}


# ---- lm-eval's doc_to_text / doc_to_target / doc_to_choice --------------------------------------------------

_ENV: Any = None


def _render(template: str, doc: dict[str, Any]) -> str:
    global _ENV
    if _ENV is None:  # lm_eval.utils.env: undefined fields are errors; a trailing newline stays
        from jinja2 import BaseLoader, Environment, StrictUndefined

        _ENV = Environment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
        _ENV.filters["regex_replace"] = lambda s, p, r, count=0: re.sub(p, r, s, count=count)
    return _ENV.from_string(template).render(**doc)


class Docs:
    """The task's documents and how each field is read from a document, with messages naming the document."""

    def __init__(self, task: TaskFile, splits: dict[str, list[dict[str, Any]]]) -> None:
        self.task = task
        where = f"--task {task.path}"
        split = task.test_split if task.test_split is not None else task.validation_split
        if split not in splits:
            raise LlmtuneError(f"{where}: split {split!r} not in the dataset (has: {', '.join(splits)})")
        self.split = split
        self.docs = splits[split]
        if not self.docs:
            raise LlmtuneError(f"{where}: split {split!r} has no documents")
        self.features = set(self.docs[0])
        fs = task.fewshot_split or task.training_split or task.validation_split or task.test_split
        if task.num_fewshot and fs not in splits:
            raise LlmtuneError(f"{where}: few-shot split {fs!r} not in the dataset (has: {', '.join(splits)})")
        self.fewshot_docs = splits.get(fs, []) if task.num_fewshot else []
        # lm-eval removes the document from its own examples only when fewshot_split names the test split
        self.exclude_self = task.fewshot_split == task.test_split

    def _field(self, key: str, spec: Any, doc: dict[str, Any], i: int | str) -> Any:
        if isinstance(spec, str) and spec in self.features:
            return doc[spec]
        if isinstance(spec, str):
            try:
                return _render(spec, doc)
            except Exception as e:  # jinja2's UndefinedError, TemplateSyntaxError
                raise LlmtuneError(f"--task {self.task.path}: {key}, document {i}: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:160]} (fields: {', '.join(sorted(doc))})") from None
        return spec

    def text(self, doc: dict[str, Any], i: int | str) -> str:
        value = self._field("doc_to_text", self.task.doc_to_text, doc, i)
        if not isinstance(value, str):
            raise LlmtuneError(f"--task {self.task.path}: doc_to_text, document {i}: {value!r} is not text")
        if value.isdigit() and self.task.doc_to_text not in self.features:
            raise LlmtuneError(f"--task {self.task.path}: doc_to_text, document {i}: renders to an int (one "
                               "context per choice), which llmtune does not support")
        return value

    def choices(self, doc: dict[str, Any], i: int | str) -> list[str]:
        spec = self.task.doc_to_choice
        if isinstance(spec, dict):
            value: Any = list(spec.values())
        elif isinstance(spec, str) and spec not in self.features:
            rendered = self._field("doc_to_choice", spec, doc, i)
            try:
                value = ast.literal_eval(rendered)
            except (ValueError, SyntaxError):
                raise LlmtuneError(f"--task {self.task.path}: doc_to_choice, document {i}: {rendered[:80]!r} is "
                                   "not a Python/JSON list of choices") from None
        else:
            value = self._field("doc_to_choice", spec, doc, i)
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise LlmtuneError(f"--task {self.task.path}: doc_to_choice, document {i}: expected a non-empty "
                               f"list of strings, found {value!r}"[:300])
        if any(c == "" for c in value):
            raise LlmtuneError(f"--task {self.task.path}: doc_to_choice, document {i}: an empty choice (acc_norm "
                               "divides by its length)")
        return value

    def target(self, doc: dict[str, Any], i: int | str) -> Any:
        """lm-eval's doc_to_target: an int index, a string, or a list (several right answers)."""
        spec = self.task.doc_to_target
        value = self._field("doc_to_target", spec, doc, i)
        if isinstance(spec, str) and spec not in self.features and isinstance(value, str):
            if value.isdigit():
                return ast.literal_eval(value)
            if len(value) >= 2 and value[0] == "[" and value[-1] == "]":
                try:
                    return ast.literal_eval(value)
                except (SyntaxError, ValueError):
                    return value
        return value

    def gold(self, doc: dict[str, Any], i: int | str, choices: list[str]) -> list[int]:
        """The index (indices) of the right choice(s)."""
        target = self.target(doc, i)
        where = f"--task {self.task.path}: doc_to_target, document {i}"
        golds = target if isinstance(target, list) else [target]
        out = []
        for g in golds:
            if isinstance(g, bool) or not isinstance(g, int | str):
                raise LlmtuneError(f"{where}: {g!r} is neither a choice index nor a choice")
            if isinstance(g, int):
                if not 0 <= g < len(choices):
                    raise LlmtuneError(f"{where}: index {g} out of range for {len(choices)} choices")
                out.append(g)
            elif g in choices:
                out.append(choices.index(g))
            else:
                raise LlmtuneError(f"{where}: {g!r} is not one of the choices {choices}"[:300])
        return out

    def answer(self, doc: dict[str, Any], i: int | str) -> str:
        """A few-shot example's answer text (lm-eval's build_qa_turn)."""
        a = self.target(doc, i)
        c = self.choices(doc, i)
        if isinstance(a, int) and not isinstance(a, bool):
            if not 0 <= a < len(c):
                raise LlmtuneError(f"--task {self.task.path}: doc_to_target, few-shot document {i}: index {a} out "
                                   f"of range for {len(c)} choices")
            return c[a]
        if isinstance(a, list):
            return str(a[0])
        return str(a)


@dataclass
class Request:
    """One document of a task: its prompt (plain text, or chat messages to render) and the choices."""

    doc_id: int
    doc: dict[str, Any]
    target: Any
    context: str | list[dict[str, str]]
    choices: list[str]
    gold: list[int]
    shots: list[int]  # indices into the few-shot split


def build_requests(task: TaskFile, docs: Docs, num_fewshot: int, chat: bool) -> list[Request]:
    """Every document's prompt, with few-shot examples drawn as lm-eval's ContextSampler draws them."""
    rnd = random.Random(FEWSHOT_SEED)
    pool = docs.fewshot_docs
    if num_fewshot and len(pool) < num_fewshot + (1 if docs.exclude_self else 0):
        raise LlmtuneError(f"--task {task.path}: {num_fewshot} few-shot examples asked for, the few-shot split "
                           f"has {len(pool)} documents")
    index = {id(d): j for j, d in enumerate(pool)}
    out = []
    for i, doc in enumerate(docs.docs):
        shots: list[dict[str, Any]] = []
        if num_fewshot:
            if task.sampler == "first_n":
                shots = ([x for x in pool if x != doc] if docs.exclude_self else pool)[:num_fewshot]
            elif docs.exclude_self:
                shots = [x for x in rnd.sample(list(pool), num_fewshot + 1) if x != doc][:num_fewshot]
                if len(shots) < num_fewshot:  # copies of the document in the pool: lm-eval draws again without them
                    shots = rnd.sample([x for x in pool if x != doc], num_fewshot)
            else:
                shots = rnd.sample(list(pool), num_fewshot)
        choices = docs.choices(doc, i)
        gold = docs.gold(doc, i, choices)
        text = docs.text(doc, i)
        turns = [(docs.text(s, f"{index[id(s)]} of the few-shot split"),
                  docs.answer(s, f"{index[id(s)]} of the few-shot split")) for s in shots]
        if chat:
            messages = [{"role": "system", "content": task.description}] if task.description else []
            for q, a in turns:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": text})
            context: str | list[dict[str, str]] = messages
        else:
            context = task.description + "".join(
                q + task.target_delimiter + a + task.fewshot_delimiter for q, a in turns) + text
        out.append(Request(i, doc, docs.target(doc, i), context, choices, gold, [index[id(s)] for s in shots]))
    return out


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """lm-eval's HFLM.apply_chat_template: the generation prompt added; a template refusing the system role is
    tried again without it."""
    from jinja2.exceptions import TemplateError

    if getattr(tokenizer, "chat_template", None) is None:
        raise LlmtuneError("--prompt-format chat: the tokenizer has no chat template; use --prompt-format plain")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             continue_final_message=False)
    except TemplateError:
        messages = [m for m in messages if m["role"] != "system"]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             continue_final_message=False)


def continuations(task: TaskFile, req: Request, chat: bool) -> list[str]:
    # under a chat template lm-eval drops the target delimiter: the answer starts the assistant turn
    delimiter = "" if chat else task.target_delimiter
    return [delimiter + c for c in req.choices]


# ---- metrics ------------------------------------------------------------------------------------------------


def mean_stderr(values: list[float]) -> float | None:
    """lm-eval's mean_stderr: sample standard deviation (ddof 1) / sqrt(n)."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def argmax(values: list[float]) -> int:
    """numpy.argmax: the first of equal maxima."""
    best = 0
    for j, v in enumerate(values):
        if v > values[best]:
            best = j
    return best


def score_doc(req: Request, results: list[tuple[float, bool]]) -> dict[str, float]:
    lls = [ll for ll, _ in results]
    pred = argmax(lls)
    pred_norm = argmax([ll / len(c) for ll, c in zip(lls, req.choices, strict=True)])
    return {"acc": 1.0 if pred in req.gold else 0.0, "acc_norm": 1.0 if pred_norm in req.gold else 0.0,
            "pred": pred, "pred_norm": pred_norm}


def sample_record(req: Request, args: list[tuple[str, str]], results: list[tuple[float, bool]],
                  scores: dict[str, float], metrics: list[str]) -> dict[str, Any]:
    """One line of samples_<task>.jsonl, with lm-eval's fields and hashes."""
    doc_json = json.dumps(req.doc, indent=2, default=str, ensure_ascii=False)
    return {
        "doc_id": req.doc_id, "doc": req.doc, "target": req.target,
        "arguments": [list(a) for a in args],
        "resps": [[[ll, greedy]] for ll, greedy in results],
        "filtered_resps": [[ll, greedy] for ll, greedy in results],
        "filter": "none", "metrics": metrics,
        "doc_hash": _sha(doc_json), "prompt_hash": _sha(args[0][0]), "target_hash": _sha(str(req.target)),
        **{m: scores[m] for m in metrics},
        "fewshot_ids": req.shots,
    }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def task_hash(records: list[dict[str, Any]]) -> str:
    """lm-eval's task_hashes entry: sha256 of every sample's doc, prompt and target hashes."""
    return _sha("".join(r["doc_hash"] + r["prompt_hash"] + r["target_hash"] for r in records))
