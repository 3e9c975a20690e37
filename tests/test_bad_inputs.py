"""The corpus of malformed inputs in tests/bad_inputs/: each gives one line naming the file, key or row, exit code 2.

Every folder of bad_inputs/ is one case: its files (recipe, data, fake models and run folders) and a `case.yaml`:

    args: ["validate", "recipe.yaml"]      # the command line, run in a copy of the folder
    expect: ["train.jsonl", "row 3"]       # substrings the one error line must contain
    move: {"prior_run": "runs/recipe"}     # optional: renames before the run (runs/ is git-ignored)
    skip_if_cuda: true                     # optional: the case is only bad on a machine without CUDA
    xfail: "why"                           # optional: a known bug, xfail(strict=True) until fixed

`{tiny_bert}` (`{tiny_t5}`, `{tiny_llama}`) in the arguments or in a .yaml file is replaced by that tiny model
fixture's folder, so no case touches the network.
Paths in the recipes are relative: the command runs with the copied folder as its cwd.
The test checks exit code 2, exactly one line on stderr, the expected substrings, no traceback, and that
nothing in the folder was written, changed or removed.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import NEGATIVE, POSITIVE, run_cli, tiny_recipe, write_jsonl

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
PLACEHOLDER = "{tiny_bert}"
MODELS = ("tiny_bert", "tiny_t5", "tiny_llama")  # {name} placeholders, each the conftest fixture of that name


def _load_cases() -> list[Any]:
    params = []
    for folder in sorted(p for p in CORPUS.iterdir() if (p / "case.yaml").is_file()):
        spec = yaml.safe_load((folder / "case.yaml").read_text(encoding="utf-8"))
        marks = []
        if spec.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=spec["xfail"]))
        if spec.get("skip_if_cuda"):
            marks.append(pytest.mark.skipif(_cuda(), reason="only a bad input on a machine without CUDA"))
        params.append(pytest.param(folder.name, spec, id=folder.name, marks=marks))
    return params


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder under root, so a write, an overwrite or a new empty folder shows."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def prepare(name: str, spec: dict[str, Any], dest: Path, request: pytest.FixtureRequest) -> list[str]:
    """Copy the case into dest, apply `move` and the {tiny_bert} placeholder; return the arguments."""
    shutil.copytree(CORPUS / name, dest, ignore=shutil.ignore_patterns("case.yaml"))
    for src, dst in (spec.get("move") or {}).items():
        (dest / dst).parent.mkdir(parents=True, exist_ok=True)
        (dest / src).rename(dest / dst)
    args = [str(a) for a in spec["args"]]
    for fixture in MODELS:
        mark = "{" + fixture + "}"
        yamls = [p for p in dest.rglob("*.yaml") if mark.encode() in p.read_bytes()]
        if yamls or any(mark in a for a in args):
            tiny = str(request.getfixturevalue(fixture))
            args = [a.replace(mark, tiny) for a in args]
            for p in yamls:
                p.write_bytes(p.read_bytes().replace(mark.encode(), tiny.encode()))
    return args


CASES = _load_cases()


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 200  # issue 19: at least 200 cases across every command and task


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_bad_input(name: str, spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   request: pytest.FixtureRequest) -> None:
    root = tmp_path / name
    args = prepare(name, spec, root, request)
    before = snapshot(root)
    monkeypatch.chdir(root)
    res = run_cli(*args)
    where = f"llmtune {' '.join(args)}\nexit {res.exit_code}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert "Traceback" not in res.output, where
    assert res.exit_code == 2, where
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, where
    assert lines[0].startswith("error: "), where
    missing = [s for s in spec["expect"] if s not in lines[0]]
    assert not missing, f"{missing} not in the message\n{where}"
    assert snapshot(root) == before, f"files changed\n{where}"


def test_debug_shows_the_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    from llmtune.errors import LlmtuneError

    spec = {"args": ["validate", "recipe.yaml", "train.learning_rate=-1"]}
    args = prepare("negative_learning_rate", spec, tmp_path / "case", request)
    monkeypatch.chdir(tmp_path / "case")
    with pytest.raises(LlmtuneError, match="learning_rate must be > 0"):
        run_cli("--debug", *args)


SECRET = "hf_secret123"


def test_token_is_never_written_and_remote_code_stays_off(tiny_bert: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_TOKEN comes from the environment only: no file of the run folder holds it (logs, recipe, card...)."""
    import sys

    from llmtune import models

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", SECRET)
    monkeypatch.chdir(tmp_path)
    rows = [{"text": t, "label": "positive"} for t in POSITIVE[:6]] + [{"text": t, "label": "negative"} for t in NEGATIVE[:6]]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    evals = write_jsonl(tmp_path / "eval.jsonl", rows[:2] + rows[-2:])
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "recipe.yaml", tiny_bert, train, evals, out, train__max_steps=2,
                         train__save_steps=1)
    monkeypatch.setattr(sys, "argv", ["llmtune", "finetune", str(recipe)])  # what run_info records as the command

    seen: list[dict[str, Any]] = []
    common = models._common_kwargs

    def spy(args: Any, resolved: Any) -> dict[str, Any]:
        kw = common(args, resolved)
        seen.append(kw)
        return kw

    monkeypatch.setattr(models, "_common_kwargs", spy)
    res = run_cli("finetune", str(recipe))
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"recipe.yaml", "README.md", "run_info.json", "log.jsonl"} <= {p.name for p in files}
    leaked = [str(p.relative_to(out)) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, f"{SECRET} written to {leaked}"
    # trust_remote_code stays false unless the recipe sets it
    assert seen and all(kw.get("trust_remote_code") is False for kw in seen), seen
    saved = yaml.safe_load((out / "recipe.yaml").read_text(encoding="utf-8"))
    assert saved["model"]["trust_remote_code"] is False
