"""The typed recipe: sections task/model/data/train/lora/generation/eval, loading and overrides.

Precedence is defaults < recipe file < `section.key=value` overrides. Everything below the CLI takes
these dataclasses, never a dict, and every unknown key is an error that names the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from llmtune import tasks
from llmtune.errors import LlmtuneError

# the dataclasses live in schema.py (task modules import them without importing this parser); re-exported here
from llmtune.schema import (  # noqa: F401
    SECTIONS,
    DataArgs,
    EvalArgs,
    GenerationArgs,
    LoraArgs,
    ModelArgs,
    Recipe,
    TrainArgs,
)

TOP_LEVEL = ("task", "description", *SECTIONS)



def _closest(key: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return "a list of " + {str: "strings", int: "integers", float: "numbers"}.get(get_args(tp)[0], "items")
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; convert only the safe cases (int -> float, scalar -> list)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        # try the narrow types first so `str | bool` keeps a bool a bool
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, arg, where)
            except LlmtuneError:
                continue
        raise LlmtuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        # YAML 1.1 reads a bare `no` (or `off`) as false: `mixed_precision: no` means the choice "no"
        if isinstance(value, bool) and ("no" if value is False else "yes") in get_args(tp):
            return "no" if value is False else "yes"
        if value in get_args(tp) and not isinstance(value, bool):
            return value
        raise LlmtuneError(f"{where}: expected {_type_name(tp)}, got {value!r}{_closest(str(value), map(str, get_args(tp)))}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_tp is str:
            raise LlmtuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        if not isinstance(value, list):
            raise LlmtuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LlmtuneError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise LlmtuneError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `3e-5` (no dot) as a string; users write it that way all the time
            try:
                return float(value)
            except ValueError:
                pass
        raise LlmtuneError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise LlmtuneError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r}")  # a bug in the schema, not user input


def _build_section(cls: type, raw: Any, where: str, task: str | None = None, section: str = "") -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise LlmtuneError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            owners = _owners(str(key), section, task) if task else []
            if owners:
                raise LlmtuneError(f"{where}.{key}: a key of task {' / '.join(owners)}, not of task {task}"
                                   f"{_closest(str(key), names)}")
            raise LlmtuneError(f"{where}.{key}: unknown key{_closest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def task_sections(task: str) -> dict[str, type]:
    """Every section of a recipe of `task`: the shared ones (or the task's subclasses of them) and its own."""
    return {**SECTIONS, **tasks.get(task).OPTIONS}


def _owners(key: str, section: str, task: str) -> list[str]:
    """The other tasks whose `section` has `key`: a stray key is then named as theirs, not as a typo."""
    return [name for name in tasks.TASKS if name != task and section in tasks.get(name).OPTIONS
            and key in {f.name for f in dataclasses.fields(tasks.get(name).OPTIONS[section])}]


def _task_name(raw: Any, where: str) -> str:
    task = raw if raw is not None else tasks.DEFAULT_TASK
    if not isinstance(task, str) or task not in tasks.TASKS:
        raise LlmtuneError(f"{where}: task: expected one of {', '.join(map(repr, tasks.TASKS))}, got {task!r}"
                           f"{_closest(str(task), tasks.TASKS)}")
    return task


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise LlmtuneError(f"override '{text}': expected section.key=value (e.g. train.learning_rate=3e-5)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            if path[0] in SECTIONS:
                raise LlmtuneError(f"override '{text}': '{path[0]}' is a section; set one key, e.g. {path[0]}.KEY=VALUE")
            if path[0] not in TOP_LEVEL:
                raise LlmtuneError(f"override '{text}': unknown key '{path[0]}'{_closest(path[0], TOP_LEVEL)}")
            raw[path[0]] = value
        elif len(path) == 2:
            section, key = path
            task = raw.get("task")
            known = task_sections(task) if isinstance(task, str) and task in tasks.TASKS else SECTIONS
            if section not in known:
                raise LlmtuneError(f"override '{text}': unknown section '{section}'{_closest(section, known)}")
            sec = raw.setdefault(section, {}) or {}
            if not isinstance(sec, dict):
                raise LlmtuneError(f"override '{text}': section '{section}' is not a mapping in the recipe")
            sec[key] = value
            raw[section] = sec
        else:
            raise LlmtuneError(f"override '{text}': expected section.key=value with one dot")
    return raw


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice: YAML would silently keep the last one."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise LlmtuneError(f"{path}: recipe file not found")
    if path.is_dir():
        raise LlmtuneError(f"{path}: is a folder, expected a recipe .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlmtuneError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from e
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LlmtuneError(f"{path}:{at}: invalid YAML: {problem}") from e
    if raw is None:
        raise LlmtuneError(f"{path}: the recipe is empty")
    if not isinstance(raw, dict):
        raise LlmtuneError(f"{path}: expected a mapping of sections (task, model, data, train, ...), got {type(raw).__name__}")
    return raw


def build_recipe(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """A recipe parsed into the classes its task declares (tasks/<name>.py OPTIONS), then checked."""
    task = _task_name(raw.get("task"), source)
    module = tasks.get(task)
    sections = task_sections(task)
    top = ("task", "description", *sections)
    for key in raw:
        if key not in top:
            raise LlmtuneError(f"{source}: unknown key '{key}'{_closest(str(key), top)}")
    kwargs: dict[str, Any] = {"source": source, "task": task, "lora_default": module.LORA_DEFAULT,
                              "generate_default": module.GENERATE_DEFAULT}
    if "description" in raw:
        kwargs["description"] = _coerce(raw["description"], str | None, f"{source}: description")
    extra = {}
    for name, cls in sections.items():
        value = _build_section(cls, raw.get(name), f"{source}: {name}", task, name)
        if name in SECTIONS:
            kwargs[name] = value
        else:
            extra[name] = value
    recipe = Recipe(**kwargs, extra=extra)
    check_recipe(recipe)
    module.check_recipe(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    raw = read_yaml(path)
    raw = apply_overrides(raw, list(overrides or []))
    recipe = build_recipe(raw, source=str(path))
    if recipe.train.output_dir is None:
        recipe.train.output_dir = str(Path("runs") / path.stem)
    return recipe


def _first_changed(section: Any) -> str:
    """The first field of a section's dataclass that differs from its default."""
    default = type(section)()
    for f in dataclasses.fields(section):
        if getattr(section, f.name) != getattr(default, f.name):
            return f.name
    return dataclasses.fields(section)[0].name


def check_recipe(r: Recipe) -> None:
    """Combinations that no single field's type can rule out."""
    s = r.source
    t = r.train
    if not r.model.name:
        raise LlmtuneError(f"{s}: model.name is required (a hub id, a local folder, or an alias such as minilm-l6)")
    if r.data.dataset is None and r.data.train_file is None:
        raise LlmtuneError(f"{s}: data needs either data.dataset (hub or llmtune:NAME) or data.train_file")
    if r.data.dataset is not None and r.data.train_file is not None:
        raise LlmtuneError(f"{s}: data.dataset and data.train_file are both set; use one (set data.dataset=null for local files)")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "logging_steps", "max_seq_length"):
        if getattr(t, key) < 1:
            raise LlmtuneError(f"{s}: train.{key} must be at least 1, got {getattr(t, key)}")
    for key in ("eval_steps", "save_steps", "save_total_limit"):
        v = getattr(t, key)
        if v is not None and v < 1:
            raise LlmtuneError(f"{s}: train.{key} must be at least 1 or null, got {v}")
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        raise LlmtuneError(f"{s}: train.num_train_epochs must be > 0 when train.max_steps is not set")
    for key in ("weight_decay", "warmup_steps", "max_grad_norm", "dataloader_num_workers"):
        if getattr(t, key) < 0:
            raise LlmtuneError(f"{s}: train.{key} cannot be negative, got {getattr(t, key)}")
    if t.learning_rate <= 0:
        raise LlmtuneError(f"{s}: train.learning_rate must be > 0, got {t.learning_rate}")
    if not 0 <= t.warmup_ratio < 1:
        raise LlmtuneError(f"{s}: train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if t.warmup_ratio > 0 and t.warmup_steps > 0:
        raise LlmtuneError(f"{s}: set train.warmup_ratio or train.warmup_steps, not both")
    if not 0 < r.data.val_size < 1 and not (r.data.val_size >= 1 and float(r.data.val_size).is_integer()):
        raise LlmtuneError(f"{s}: data.val_size must be a fraction in (0, 1) or a whole number of rows, got {r.data.val_size}")
    for key in ("max_train_samples", "max_eval_samples", "max_test_samples"):
        v = getattr(r.data, key)
        if v is not None and v < 1:
            raise LlmtuneError(f"{s}: data.{key} must be at least 1 or null, got {v}")
    module = tasks.get(r.task)
    if module.PEFT_TASK_TYPE is None and r.lora.enabled is not False and r.lora != type(r.lora)():
        key = "enabled" if r.lora.enabled else _first_changed(r.lora)
        raise LlmtuneError(f"{s}: lora.{key}: task {r.task} trains all weights and has no LoRA adapters; "
                           "remove the lora section (or set lora.enabled=false)")
    if not getattr(module, "GENERATES", False):
        if r.generation != type(r.generation)():
            raise LlmtuneError(f"{s}: generation.{_first_changed(r.generation)}: task {r.task} does not generate "
                               "text; remove the generation section")
        if r.eval.generate:
            raise LlmtuneError(f"{s}: eval.generate: task {r.task} does not generate text; remove it")
    if r.lora.load_in_4bit and not r.lora_enabled:
        raise LlmtuneError(f"{s}: lora.load_in_4bit (QLoRA) needs LoRA; set lora.enabled=true")
    if r.lora.r < 1:
        raise LlmtuneError(f"{s}: lora.r must be at least 1, got {r.lora.r}")
    if r.lora.alpha <= 0:
        raise LlmtuneError(f"{s}: lora.alpha must be > 0, got {r.lora.alpha}")
    if not 0 <= r.lora.dropout < 1:
        raise LlmtuneError(f"{s}: lora.dropout must be in [0, 1), got {r.lora.dropout}")
    g = r.generation
    if g.num_beams < 1 or g.max_new_tokens < 1:
        raise LlmtuneError(f"{s}: generation.num_beams and generation.max_new_tokens must be at least 1")
    if g.do_sample and g.temperature <= 0:
        raise LlmtuneError(f"{s}: generation.temperature must be > 0 when generation.do_sample=true")
    if not 0 < g.top_p <= 1:
        raise LlmtuneError(f"{s}: generation.top_p must be in (0, 1], got {g.top_p}")
    if g.top_k < 0 or g.no_repeat_ngram_size < 0:
        key = "top_k" if g.top_k < 0 else "no_repeat_ngram_size"
        raise LlmtuneError(f"{s}: generation.{key} cannot be negative (0 turns it off), got {getattr(g, key)}")
    if g.repetition_penalty <= 0:
        raise LlmtuneError(f"{s}: generation.repetition_penalty must be > 0 (1.0 is no penalty), "
                           f"got {g.repetition_penalty}")
    if r.eval.bootstrap < 0:
        raise LlmtuneError(f"{s}: eval.bootstrap cannot be negative (0 turns the confidence intervals off), "
                           f"got {r.eval.bootstrap}")
    if t.resume_from_checkpoint is True:
        t.resume_from_checkpoint = "auto"


def builtin_recipes_dir() -> Path:
    """Recipes ship inside the package (wheel) and live in the repo's recipes/ folder (checkout)."""
    packaged = Path(__file__).parent / "recipes"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "recipes"


def builtin_recipes() -> list[Path]:
    d = builtin_recipes_dir()
    return sorted(d.glob("*.yaml")) if d.is_dir() else []


def builtin_recipe(name: str) -> Path:
    stem = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    for p in builtin_recipes():
        if p.stem == stem:
            return p
    names = [p.stem for p in builtin_recipes()]
    raise LlmtuneError(f"no built-in recipe '{name}'{_closest(stem, names)}; built-in: {', '.join(names)}")


def find_recipe(name: str) -> Path:
    """A path if it exists; else a built-in recipe of that name; else a clear error."""
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml") or "/" in name:
        return p
    return builtin_recipe(name)


def describe_recipe(path: Path) -> str:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "(unreadable)"
    return str(raw.get("description") or "").strip().splitlines()[0] if raw.get("description") else ""
