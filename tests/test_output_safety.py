"""Nothing lost: overwrite_output_dir removes only what a previous run wrote, and only once the new run's inputs
are read; special folders are refused; one writer per folder; a signal during the final eval costs nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_recipe, write_jsonl

from llmtune import runs
from llmtune.errors import LlmtuneError


def _finished_run(tmp_path: Path, tiny_bert: Path, sentiment_files, cli, **extra: object) -> tuple[Path, Path]:
    train, eval_ = sentiment_files
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out, train__max_steps=2, **extra)
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    return recipe, out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_users_files_and_a_run_whose_replacement_fails(tmp_path: Path, tiny_bert: Path,
                                                                           sentiment_files, cli) -> None:
    recipe, out = _finished_run(tmp_path, tiny_bert, sentiment_files, cli)
    assert json.loads((out / runs.MANIFEST).read_text())  # what the final write put there
    before = _snapshot(out)
    # a data file that fails validation: the finished run must survive the attempt to replace it
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "positive"}, {"text": "y"}])
    res = cli("finetune", recipe, "train.overwrite_output_dir=true", f"data.train_file={bad}")
    assert res.exit_code == 2, res.output
    assert _snapshot(out) == before
    # the user's own file in the run folder: refused, nothing removed
    (out / "notes.txt").write_text("my notes")
    res = cli("finetune", recipe, "train.overwrite_output_dir=true")
    assert res.exit_code == 2 and "holds files llmtune did not write (notes.txt)" in res.stderr
    assert _snapshot(out) == {**before, "notes.txt": b"my notes"}
    (out / "notes.txt").unlink()
    res = cli("finetune", recipe, "train.overwrite_output_dir=true", "train.max_steps=3")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 3


@pytest.mark.parametrize("where", [".", "", "recipe_folder", "~"])
def test_special_folders_are_refused(where: str, tmp_path: Path, tiny_bert: Path, sentiment_files, cli,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    train, eval_ = sentiment_files
    monkeypatch.chdir(tmp_path)
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    out = {"recipe_folder": str(recipe_dir), "~": str(Path.home())}.get(where, where)
    recipe = tiny_recipe(recipe_dir / "r.yaml", tiny_bert, train, eval_, tmp_path / "unused",
                         train__max_steps=1)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = cli("finetune", recipe, f"train.output_dir={out!r}" if out == "" else f"train.output_dir={out}",
              "train.overwrite_output_dir=true")
    assert res.exit_code == 2, res.output
    assert "train.output_dir" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_one_writer_per_folder(tmp_path: Path) -> None:
    out = tmp_path / "a" / "run"
    first = runs.OutputLock(out)
    first.acquire()
    second = runs.OutputLock(out)
    with pytest.raises(LlmtuneError, match=rf"in use by another llmtune run \(pid {os.getpid()}"):
        second.acquire()
    first.release()
    assert not out.exists() and not (tmp_path / "a").exists()  # the folders the lock made are gone again
    # a lock left by a killed process is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir(parents=True)
    import socket

    (out / runs.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    third = runs.OutputLock(out)
    third.acquire()
    assert json.loads((out / runs.LOCK).read_text())["pid"] == os.getpid()
    third.release()
    assert out.is_dir() and not (out / runs.LOCK).exists()  # a folder that was there stays


def test_a_signal_during_the_final_eval_keeps_the_trained_model(tmp_path: Path, tiny_bert: Path, sentiment_files,
                                                                 cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtune.tasks import classification

    train, eval_ = sentiment_files
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out, train__max_steps=3,
                         train__eval_steps=100, train__save_steps=100)
    real = classification.score
    calls = {"n": 0}

    def score_then_term(ctx, outputs):  # the final eval is the only one: SIGTERM arrives in the middle of it
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(ctx, outputs)

    monkeypatch.setattr(classification, "score", score_then_term)
    res = cli("finetune", recipe)
    assert res.exit_code == 130 and "checkpoint-3 holds the trained model" in res.stderr, res.output
    assert (out / "checkpoint-3" / "COMPLETE").exists() and not (out / "COMPLETE").exists()
    monkeypatch.setattr(classification, "score", real)
    res = cli("finetune", recipe)  # resumes at the last step: evaluates and writes, trains nothing more
    assert res.exit_code == 0, res.output
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 3
