"""Data parallelism on CPU (gloo): 2 processes give the 1-process result at the same global batch size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import minilm_dir, tiny_recipe


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dropout draws different masks in each process; without it the two set-ups must agree."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-nodrop")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    BertModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def _finetune(recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmtune", "finetune", str(recipe), *extra], env=env,
                          capture_output=True, text=True, timeout=600)


def test_two_processes_match_one(tmp_path: Path, tiny_bert_no_dropout: Path, sentiment_files) -> None:
    train, eval_ = sentiment_files
    # 21 eval rows: the last eval batch is uneven across processes, yet every row must be scored once
    rows = eval_.read_text().splitlines()
    eval_.write_text("\n".join((rows * 6)[:21]) + "\n")
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert_no_dropout, train, eval_, tmp_path / "one",
                         train__max_steps=8, train__eval_steps=4, train__per_device_eval_batch_size=4,
                         train__gradient_accumulation_steps=2)
    one = _finetune(recipe, "train.per_device_train_batch_size=4")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _finetune(recipe, f"train.output_dir={tmp_path / 'two'}", "train.per_device_train_batch_size=2",
                    "train.per_device_eval_batch_size=2", "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "global batch 8 = 2 per device x 2 processes x 2 accumulation" in " ".join(two.stdout.split())
    r1 = json.loads((tmp_path / "one" / "all_results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "all_results.json").read_text())
    assert r1["global_step"] == r2["global_step"] == 8
    assert abs(r1["train_loss"] - r2["train_loss"]) < 1e-3
    for key in ("eval_accuracy", "eval_f1"):
        assert r1[key] == r2[key], key
    assert abs(r1["eval_loss"] - r2["eval_loss"]) < 1e-4
    preds = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 21  # each eval row exactly once, in order
    assert [json.loads(p)["text"] for p in preds] == [json.loads(r)["text"] for r in (rows * 6)[:21]]
    # only the main process wrote: one log line per logging step, not two
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2, 4, 6, 8]


def test_an_error_in_the_processes_is_one_line(tmp_path: Path, tiny_bert: Path, sentiment_files) -> None:
    """Weights are read by each process (the launcher's own checks do not load them): the main process says what
    went wrong in one line, the other stays quiet, the launcher adds no traceback or logs; nothing is written."""
    train, eval_ = sentiment_files
    bad = tmp_path / "bad-model"
    bad.mkdir()
    for f in tiny_bert.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes()[:1000])
    recipe = tiny_recipe(tmp_path / "r.yaml", bad, train, eval_, tmp_path / "run", train__max_steps=2)
    res = _finetune(recipe, "--num-processes", "2")
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0] == f"error: {bad / 'model.safetensors'} is damaged (incomplete header): re-run or restore it"
    assert not (tmp_path / "run").exists()


def test_the_launcher_names_the_process_that_failed_first(tmp_path: Path) -> None:
    """When a process other than the main one stops first (the main one then only sees its peer gone), the
    launcher says which, in one line, with that process's exit code."""
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '1':\n    sys.exit(3)\ntime.sleep(60)\n")
    res = subprocess.run([sys.executable, "-m", "llmtune._launcher", "torchrun", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", "0", str(script)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [
        "error: process 1 stopped first (exit code 3); run with llmtune --debug to see every process's traceback"]


def test_a_launcher_that_started_fewer_processes_than_asked_is_seen(tmp_path: Path) -> None:
    """`accelerate launch --num_processes 2` starts one process on a machine without GPUs: llmtune reads what its
    launcher was asked (flag or config file) to say so instead of training alone."""
    from llmtune.launch import processes_asked_of_launcher

    config = tmp_path / "cfg.yaml"
    config.write_text("num_processes: 4\n")
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    for args, expected in ((["accelerate", "launch", "--num_processes", "2", "-m", "llmtune"], 2),
                           (["accelerate", "launch", "--num_processes=3", "-m", "llmtune"], 3),
                           (["accelerate", "launch", "--config_file", str(config), "-m", "llmtune"], 4),
                           (["accelerate", "launch", "-m", "llmtune"], None),
                           (["torchrun", "--nproc_per_node", "2"], None)):
        proc = subprocess.Popen([*sleep, *args])
        try:
            for _ in range(200):  # until the child has exec'd (before, /proc shows the forking parent's command)
                if b"time.sleep" in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                    break
                time.sleep(0.01)
            assert processes_asked_of_launcher(proc.pid) == expected, args
        finally:
            proc.kill()
            proc.wait()
