"""Read hub, bundled or local datasets into train/eval/test splits, and validate rows with clear errors.

Rows are validated in the order of the file as loaded (before any eval split is carved out of train), so a
message's row number is the row of the user's file.
"""

from __future__ import annotations

import difflib
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.schema import Recipe

BUNDLED_DIR = Path(__file__).parent / "datasets"
BUILTIN_PREFIX = "llmtune:"
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class Split:
    """A loaded split and where its rows came from, for error messages."""

    name: str  # train / eval / test
    dataset: Any  # datasets.Dataset
    origin: str  # file path or "hub dataset X split Y"


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open_bytes(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def check_utf8(path: Path, key: str) -> None:
    """Fail with the line number on undecodable bytes: pandas and pyarrow only say 'invalid start byte'."""
    if _suffix(path) == ".parquet":
        return
    try:
        with _open_bytes(path) as f:
            for lineno, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise LlmtuneError(f"{key} {path}: line {lineno} is not UTF-8 (byte {e.start}: "
                                       f"{line[e.start:e.start + 1]!r}); re-save the file as UTF-8") from e
    except (OSError, EOFError) as e:
        raise LlmtuneError(f"{key} {path}: cannot read the file ({e})") from e


def check_structure(path: Path, suffix: str, key: str) -> None:
    """What the parsers report badly: no rows at all, a broken JSON line, a JSON object of columns."""
    import json

    if suffix == ".parquet":
        return
    with _open_bytes(path) as f:
        text = f.read().decode("utf-8-sig")
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    header = 1 if suffix in (".csv", ".tsv") else 0
    if len(lines) <= header:
        raise LlmtuneError(f"{key} {path}: the file has no rows" + (" (only a header)" if lines else ""))
    if suffix == ".jsonl":
        kinds = NestedKinds()
        for row, (lineno, line) in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LlmtuneError(f"{key} {path}: line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise LlmtuneError(f"{key} {path}: line {lineno}: expected a JSON object per line, "
                                   f"got {type(record).__name__}")
            kinds.add(record, row)
        kinds.check(f"{key} {path}:")
    elif suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if all(line.lstrip().startswith("{") for _, line in lines):
                return  # JSON lines in a .json file: the jsonl parser reads them
            raise LlmtuneError(f"{key} {path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(obj, dict):
            raise LlmtuneError(f"{key} {path}: a JSON object of columns; expected a list of records "
                               '([{"text": ..., "label": ...}, ...]) or JSON lines')
        if isinstance(obj, list) and not obj:
            raise LlmtuneError(f"{key} {path}: the file has no rows")
        if isinstance(obj, list):
            kinds = NestedKinds()
            for row, record in enumerate(obj, 1):
                kinds.add(record, row)
            kinds.check(f"{key} {path}:")


def _kind(value: Any) -> str | None:
    if value is None:
        return None  # a null fits any column
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"  # ints and floats share a column
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


class NestedKinds:
    """Inside lists and objects (chat turns, token lists) every value of a field is of one kind in every row.
    The parsers cannot say which row breaks that: Arrow refuses the file, and the fallback parser turns the
    strings of other rows into numbers (a "0" became 0, and the error was blamed on row 1). Collected over all
    rows, the first value of a minority kind is named. Top-level columns are left to the tasks' validators,
    whose messages name the recipe key."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.first: dict[tuple[str, str], tuple[int, str, Any]] = {}

    def add(self, value: Any, row: int, generic: str = "", shown: str = "") -> None:
        kind = _kind(value)
        if kind is not None and ("." in generic or "[" in generic):
            by_kind = self.counts.setdefault(generic, {})
            by_kind[kind] = by_kind.get(kind, 0) + 1
            self.first.setdefault((generic, kind), (row, shown, value))
        if isinstance(value, dict):
            for k, v in value.items():
                self.add(v, row, f"{generic}.{k}" if generic else k, f"{shown}.{k}" if shown else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.add(v, row, f"{generic}[]", f"{shown}[{i}]")

    def check(self, where: str) -> None:
        worst = None
        for generic, by_kind in self.counts.items():
            if len(by_kind) < 2:
                continue
            usual = max(by_kind, key=lambda k: (by_kind[k], -self.first[(generic, k)][0]))
            for kind in by_kind:
                if kind != usual:
                    row, shown, value = self.first[(generic, kind)]
                    if worst is None or row < worst[0]:
                        worst = (row, shown, kind, value, usual, by_kind[usual], sum(by_kind.values()))
        if worst is not None:
            row, shown, kind, value, usual, n, total = worst
            raise LlmtuneError(f"{where} row {row}: {shown} is {kind} ({json_snippet(value)}), where {n} of the "
                               f"{total} values of that field are {usual.split(' ', 1)[1]}s; give them all the same "
                               "kind (quote numbers meant as text)")


def json_snippet(value: Any) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _expand_lang(path: str, lang: str | None) -> str:
    return path.replace("{lang}", lang or "")


def load_file(path_str: str, key: str, recipe: Recipe, lines: bool = False) -> Any:
    """One local file (or a `{lang}` pair of line-aligned text files) as a datasets.Dataset."""
    import datasets

    if "{lang}" in path_str:
        # line-aligned translation corpora; only a task with data.source_lang/target_lang (seq2seq) has the keys
        src, tgt = getattr(recipe.data, "source_lang", None), getattr(recipe.data, "target_lang", None)
        if not (src and tgt):
            raise LlmtuneError(f"{key}: '{{lang}}' in the path needs data.source_lang and data.target_lang")
        parts = []
        for lang in (src, tgt):
            # line-aligned corpora are named by language (train.en.gz): read them as one text per line
            ds = load_file(_expand_lang(path_str, lang), key, recipe, lines=True)
            parts.append(ds.rename_column(ds.column_names[0], lang))
        if len(parts[0]) != len(parts[1]):
            raise LlmtuneError(f"{key} {path_str}: the {src} file has {len(parts[0])} lines but the "
                               f"{tgt} file has {len(parts[1])}; line-aligned files must match")
        return datasets.concatenate_datasets(parts, axis=1)

    path = Path(path_str).expanduser()
    if not path.exists():
        raise LlmtuneError(f"{key}: file not found: {path_str}")
    if path.is_dir():
        raise LlmtuneError(f"{key}: {path_str} is a folder, expected a data file")
    suffix = _suffix(path)
    # a task's Data class may read file formats of its own (`file_reader(suffix)`: CoNLL for token_classification);
    # a reader that returns None leaves the file to the usual parser (SQuAD's nested .json vs a plain .json list)
    file_reader = getattr(recipe.data, "file_reader", None)
    reader = None if lines or file_reader is None else file_reader(suffix)
    builder = FORMATS.get(suffix) or ("text" if lines else None)
    if builder is None and reader is None:
        raise LlmtuneError(f"{key} {path_str}: unsupported file type '{suffix or path.name}'; use one of "
                           + ", ".join(FORMATS) + " (optionally .gz)")
    if path.stat().st_size == 0:
        raise LlmtuneError(f"{key} {path_str}: the file is empty")
    check_utf8(path, key)
    if reader is not None and (ds := reader(path, key)) is not None:
        return ds
    check_structure(path, suffix, key)
    kwargs: dict[str, Any] = {}
    if suffix == ".tsv":
        kwargs = {"sep": "\t", "quoting": 3}  # QUOTE_NONE: TSV corpora (SST-2...) hold bare quote characters
    with _open_bytes(path) as f:
        if f.read(3) == b"\xef\xbb\xbf":  # a byte-order mark, as spreadsheet exports write: not part of the text
            kwargs["encoding"] = "utf-8-sig"
    try:
        ds = datasets.load_dataset(builder, data_files={"data": str(path.resolve())}, split="data", **kwargs)
    except Exception as e:  # datasets wraps parser errors in several types; the cause is what users need
        cause = e.__cause__ or e.__context__ or e
        msg = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else type(cause).__name__
        raise LlmtuneError(f"{key} {path_str}: cannot parse as {suffix[1:]}: {msg}") from e
    if len(ds) == 0:
        raise LlmtuneError(f"{key} {path_str}: the file has no rows")
    return ds


def _load_hub(recipe: Recipe) -> dict[str, Any]:
    import datasets

    d = recipe.data
    assert d.dataset is not None
    try:
        dd = datasets.load_dataset(d.dataset, d.config)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise LlmtuneError(
            f"data.dataset '{d.dataset}': could not load it from the Hugging Face Hub ({first}). Offline? Point "
            "the recipe at local files: data.dataset=null data.train_file=... data.eval_file=..."
        ) from e
    return dict(dd)


def _load_bundled(name: str) -> dict[str, str]:
    folder = BUNDLED_DIR / name
    files = {split: folder / f"{split}.jsonl" for split in ("train", "eval", "test")}
    found = {s: str(p) for s, p in files.items() if p.exists()}
    if "train" not in found:
        names = sorted(p.name for p in BUNDLED_DIR.iterdir() if p.is_dir()) if BUNDLED_DIR.exists() else []
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{BUILTIN_PREFIX}{close[0]}'?)" if close else ""
        raise LlmtuneError(f"data.dataset '{BUILTIN_PREFIX}{name}': no such bundled dataset{hint}; "
                           f"bundled: {', '.join(names)}")
    return found


def load_raw_splits(recipe: Recipe, need_train: bool = True) -> dict[str, Split]:
    """The splits as the user's files or the hub give them, before carving and subsampling."""
    d = recipe.data
    splits: dict[str, Split] = {}
    if d.dataset and d.dataset.startswith(BUILTIN_PREFIX):
        for split, path in _load_bundled(d.dataset[len(BUILTIN_PREFIX):]).items():
            splits[split] = Split(split, load_file(path, f"data.dataset {d.dataset}", recipe), path)
    elif d.dataset:
        hub = _load_hub(recipe)
        wanted = {"train": d.train_split, "eval": d.eval_split, "test": d.test_split}
        if wanted["eval"] is None:
            wanted["eval"] = next((s for s in ("validation", "valid", "dev") if s in hub), None)
        if wanted["test"] is None and "test" in hub:
            wanted["test"] = "test"
        for split, hub_name in wanted.items():
            if hub_name is None:
                continue
            if hub_name not in hub:
                key = f"data.{split}_split"
                raise LlmtuneError(f"{key}: '{hub_name}' is not a split of {d.dataset} (splits: {', '.join(hub)})")
            splits[split] = Split(split, hub[hub_name], f"{d.dataset} split '{hub_name}'")
    else:
        for split, path in (("train", d.train_file), ("eval", d.eval_file), ("test", d.test_file)):
            if path:
                splits[split] = Split(split, load_file(path, f"data.{split}_file", recipe), path)
    for split in splits.values():
        if len(split.dataset) == 0:
            raise LlmtuneError(f"{split.origin}: the {split.name} split has no rows")
    if need_train and "train" not in splits:
        raise LlmtuneError(f"{recipe.source}: no training data (data.train_file or data.dataset)")
    return splits


def finalize_splits(recipe: Recipe, splits: dict[str, Split]) -> dict[str, Split]:
    """Carve an eval split from train when there is none, then take the first max_*_samples rows."""
    d = recipe.data
    out = dict(splits)
    if "eval" not in out and "train" in out:
        train = out["train"].dataset
        n_eval = int(d.val_size) if d.val_size >= 1 else max(1, round(len(train) * d.val_size))
        if n_eval >= len(train):
            raise LlmtuneError(f"data.val_size: {d.val_size} leaves no training rows out of {len(train)}")
        parts = train.train_test_split(test_size=n_eval, seed=recipe.train.seed, shuffle=True)
        out["train"] = Split("train", parts["train"], out["train"].origin)
        out["eval"] = Split("eval", parts["test"], f"{out['train'].origin} (val_size={d.val_size})")
    for name, limit in (("train", d.max_train_samples), ("eval", d.max_eval_samples), ("test", d.max_test_samples)):
        if name in out and limit is not None and limit < len(out[name].dataset):
            out[name] = Split(name, out[name].dataset.select(range(limit)), out[name].origin)
    return out


def load_splits(recipe: Recipe, validate: Any = None, need_train: bool = True) -> dict[str, Split]:
    """Load, validate every split with `validate(split)` (a task's row checks), then carve and subsample."""
    splits = load_raw_splits(recipe, need_train=need_train)
    if validate is not None:
        for split in splits.values():
            validate(split)
    return finalize_splits(recipe, splits)


# ---- row checks shared by the tasks -------------------------------------------------------------


def require_column(split: Split, column: str | None, key: str) -> None:
    names = split.dataset.column_names
    if column is None:
        raise LlmtuneError(f"{key} is not set (columns in {split.origin}: {', '.join(names)})")
    if column not in names:
        close = difflib.get_close_matches(column, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise LlmtuneError(f"{key}: column '{column}' not found in {split.origin} "
                           f"(columns: {', '.join(names)}){hint}")


def as_text(value: Any) -> str | None:
    """A cell as text: strings as they are, a list of strings joined with spaces, anything else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(v.strip() for v in value)
    return None


def check_text_column(split: Split, column: str, key: str, allow_empty: bool = False) -> None:
    require_column(split, column, key)
    for i, value in enumerate(split.dataset[column]):
        text = as_text(value)
        if text is None:
            kind = "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
            if value is None:
                raise LlmtuneError(f"{split.origin}: row {i + 1}: column '{column}' ({key}) is empty")
            raise LlmtuneError(f"{split.origin}: row {i + 1}: column '{column}' ({key}) holds {kind} ({value!r}), "
                               "expected text")
        if not allow_empty and not text.strip():
            raise LlmtuneError(f"{split.origin}: row {i + 1}: column '{column}' ({key}) is an empty text")


def references_of(value: Any) -> list[str]:
    """A target cell as a list of references: a string is one reference, a list of strings several."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
