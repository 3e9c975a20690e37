from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("command", [[], ["finetune"], ["validate"], ["predict"], ["env"], ["recipes"],
                                     ["recipes", "show"], ["recipes", "copy"]])
def test_help(command: list[str], cli) -> None:
    res = cli(*command, "--help")
    assert res.exit_code == 0 and "Usage" in res.stdout


def test_python_m_llmtune() -> None:
    out = subprocess.run([sys.executable, "-m", "llmtune", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "finetune" in out.stdout


def test_recipes_list_show_copy(tmp_path: Path, cli) -> None:
    res = cli("recipes")
    assert res.exit_code == 0 and "sentiment" in res.stdout
    res = cli("recipes", "show", "sentiment")
    assert res.stdout.startswith("# llmtune finetune")
    assert cli("recipes", "copy", "sentiment", tmp_path).exit_code == 0
    assert (tmp_path / "sentiment.yaml").exists()
    res = cli("recipes", "copy", "sentiment", tmp_path)
    assert res.exit_code == 2 and "already exists" in res.stderr
    res = cli("recipes", "show", "sentimnt")
    assert res.exit_code == 2 and "did you mean 'sentiment'" in res.stderr


def test_env(cli) -> None:
    res = cli("env")
    assert res.exit_code == 0 and "transformers" in res.stdout and "device" in res.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["finetune", "does/not/exist.yaml"], "recipe file not found"),
        (["finetune", "nosuchrecipe"], "no built-in recipe"),
        (["finetune", "sentiment", "train.lerning_rate=1"], "did you mean 'learning_rate'"),
        (["finetune", "sentiment", "model.name=./no/such/folder"], "folder not found"),
        (["validate", "sentiment", "data.dataset=llmtune:nope"], "no such bundled dataset"),
        (["predict", "no_such_run", "--input", "x.txt"], "not a folder"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], needle: str, cli) -> None:
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


def test_not_a_model_folder_and_not_a_gguf(tmp_path: Path, cli) -> None:
    (tmp_path / "empty").mkdir()
    fake = tmp_path / "model.gguf"
    fake.write_text("not gguf")
    res = cli("validate", "sentiment", f"model.name={tmp_path / 'empty'}")
    assert res.exit_code == 2 and "not a model: it has no config.json" in res.stderr
    res = cli("validate", "sentiment", f"model.name={fake}")
    assert res.exit_code == 2 and "is not a GGUF file" in res.stderr
