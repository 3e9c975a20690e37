"""The one reader of user input files: `llmtune predict --input`, `llmtune generate --input` and the prediction and
reference files of `llmtune eval` all read through `read_records`.

Formats, chosen by suffix (a trailing `.gz` is decompressed first):
  .jsonl   one JSON value per line: an object or a bare string; blank lines are skipped
  .json    a list of objects or of strings, or an object holding such a list under the field asked for
  .csv     a header row, then rows (.tsv: tab-separated, no quoting, like GLUE)
  other    plain text (.txt, .de, .hyp, ...): one text per line
Text is UTF-8, with or without a byte-order mark (spreadsheet exports write one). Every user error raises
`LlmtuneError` with a one-line message naming the file and the line or item.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

STRUCTURED = (".jsonl", ".json", ".csv", ".tsv")


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    return suffix if suffix in STRUCTURED else ".txt"


def read_text(path: Path) -> str:
    if not path.exists():
        raise LlmtuneError(f"{path}: file not found")
    if path.is_dir():
        raise LlmtuneError(f"{path}: is a directory, not a file")
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise LlmtuneError(f"{path}: cannot read: {e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:offset].count(b"\n") + 1
        raise LlmtuneError(f"{path}, line {line}: not valid UTF-8 (byte 0x{data[offset]:02x}); "
                           "re-save the file as UTF-8") from None
    if not text.strip():
        raise LlmtuneError(f"{path}: file is empty")
    return text


def lines_of(text: str) -> list[str]:
    # Split on \n only: str.splitlines() would also break at \x0b, \x1c, \u2028... inside a line.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


@dataclass
class Records:
    """The items of a file, each with where it is ("line 3", "item [2]") for messages."""

    fmt: str
    items: list[tuple[str, Any]]
    header: list[str] | None = None  # .csv/.tsv: the column names (items are dicts of them)
    list_field: str | None = None  # .json: the field of a top-level object that held the list


def read_records(path: Path, list_field: str | None = None) -> Records:
    """Every item of `path`: strings (plain text: every line, empty ones included), JSON values, or row dicts."""
    text = read_text(path)
    fmt = file_format(path)
    if fmt == ".txt":
        return Records(fmt, [(f"line {i}", line) for i, line in enumerate(lines_of(text), 1)])
    if fmt == ".jsonl":
        items = []
        for number, line in enumerate(lines_of(text), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise LlmtuneError(f"{path}, line {number}: invalid JSON ({e.msg} at column {e.colno})") from None
        return Records(fmt, items)
    if fmt == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise LlmtuneError(f"{path}, line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        used = None
        if isinstance(doc, dict) and list_field is not None and isinstance(doc.get(list_field), list):
            doc, used = doc[list_field], list_field  # {"predictions": ["...", ...]}: the field names the list
        elif not isinstance(doc, list):
            raise LlmtuneError(f"{path}: expected a JSON list of objects or strings, found {type(doc).__name__}")
        if not doc:
            raise LlmtuneError(f"{path}: the JSON list is empty")
        return Records(fmt, [(f"item [{i}]", item) for i, item in enumerate(doc)], list_field=used)
    delimiter = "\t" if fmt == ".tsv" else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows = []
    try:
        header = next(reader)
        for row in reader:
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise LlmtuneError(f"{path}, line {reader.line_num}: {len(row)} fields, the header has "
                                   f"{len(header)}")
            rows.append((f"line {reader.line_num}", dict(zip(header, row, strict=True))))
    except csv.Error as e:
        raise LlmtuneError(f"{path}, line {reader.line_num}: {e}") from None
    if not rows:
        raise LlmtuneError(f"{path}: no rows after the header")
    return Records(fmt, rows, header=header)


def read_rows(path: Path, what: str = "--input") -> list[dict[str, Any]]:
    """Input rows for predict and generate: objects as they are; a text line or a bare string is {"text": ...}.
    Blank lines of a text file are skipped (there is nothing to predict for them). Each row remembers where it
    came from under the key `_where`, for messages."""
    if not path.is_file() and not path.exists():
        raise LlmtuneError(f"{what} {path}: file not found")
    records = read_records(path)
    rows: list[dict[str, Any]] = []
    for where, item in records.items:
        if isinstance(item, str):
            if records.fmt == ".txt" and not item.strip():
                continue
            rows.append({"text": item, "_where": f"{what} {path}, {where}"})
        elif isinstance(item, dict):
            rows.append({**item, "_where": f"{what} {path}, {where}"})
        else:
            raise LlmtuneError(f"{what} {path}, {where}: {item!r} is neither an object nor a string")
    if not rows:
        raise LlmtuneError(f"{what} {path}: no inputs in the file")
    return rows


def column(rows: list[dict[str, Any]], field: str | None, defaults: Sequence[str]) -> list[str]:
    """The text of `field` in every row (else the first of `defaults` a row has; else its only field). A list of
    strings (pre-split words, sentences) is joined with spaces."""
    out = []
    for row in rows:
        keys = [k for k in row if k != "_where"]
        key = field if field is not None else next((k for k in defaults if k in row), keys[0] if len(keys) == 1 else None)
        where = row.get("_where", "input row")
        if key is None or key not in row:
            hint = f"field '{field}'" if field else f"field '{defaults[0]}'" + (
                f" (nor {', '.join(defaults[1:])})" if len(defaults) > 1 else "")
            raise LlmtuneError(f"{where}: no {hint}; fields: {', '.join(keys)}"
                               + ("" if field else "; choose one with --field"))
        value = row[key]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = " ".join(value)
        if not isinstance(value, str):
            raise LlmtuneError(f"{where}: field '{key}' holds {value!r}, expected text")
        out.append(value)
    return out
