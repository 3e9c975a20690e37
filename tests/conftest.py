"""Shared fixtures: tiny models built from a config offline, small data files, and a CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def minilm_dir() -> Path:
    from llmtune.models import ALIASES

    return Path(ALIASES["minilm-l6"][0]().path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and MiniLM's real WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer T5 (d_model 32) with random weights and MiniLM's WordPiece tokenizer (T5 starts decoding at PAD)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny-t5")
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=2, decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.sep_token_id, dropout_rate=0.0,  # no dropout: 1 and 2 processes agree
                   initializer_factor=0.1)  # small weights: real words in 8 steps
    model = T5ForConditionalGeneration(cfg)
    model.generation_config.decoder_start_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer (with its chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmtune.models import ALIASES

    smol = ALIASES["smollm2-135m"][0]()
    tok = AutoTokenizer.from_pretrained(smol.path, gguf_file=smol.gguf_file)
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


POSITIVE = ["a wonderful, warm film", "great food and friendly staff", "I loved every minute of it",
            "excellent battery life", "the best book I read this year", "works perfectly, highly recommended",
            "charming and funny", "superb acting and a clever plot", "fast delivery and great quality",
            "an absolute delight"]
NEGATIVE = ["a dull, lifeless film", "cold food and rude staff", "I hated every minute of it",
            "terrible battery life", "the worst book I read this year", "broke after a day, avoid it",
            "boring and predictable", "wooden acting and a silly plot", "late delivery and poor quality",
            "a complete waste of money"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sentiment_files(tmp_path: Path) -> tuple[Path, Path]:
    train = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    evals = [{"text": "a warm and clever film", "label": "positive"}, {"text": "rude staff", "label": "negative"},
             {"text": "great quality", "label": "positive"}, {"text": "boring plot", "label": "negative"}]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "eval.jsonl", evals)


def tiny_recipe(path: Path, model: Path, train: Path, eval_: Path, out: Path, **extra: Any) -> Path:
    """A classification recipe on the tiny BERT: a handful of steps."""
    import yaml

    recipe: dict[str, Any] = {
        "task": "classification",
        "model": {"name": str(model)},
        "data": {"train_file": str(train), "eval_file": str(eval_)},
        "train": {"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 2, "eval_steps": 2,
                  "max_seq_length": 32},
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        recipe.setdefault(section, {})[field] = value
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _reset_accelerate() -> Any:
    """Accelerate keeps process-wide singletons; tests that build several Accelerators need them reset."""
    yield
    try:
        from accelerate.state import AcceleratorState, GradientState, PartialState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()
    except Exception:
        pass


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str) -> Result:
    """Run the CLI in-process (fast: no interpreter start, no re-import of torch)."""
    from typer.testing import CliRunner

    from llmtune.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    if res.exit_code == 0 and "finetune" in args:
        check_metric_names(res.stdout)
    return Result(res.exit_code, res.stdout, res.stderr)


def check_metric_names(stdout: str) -> None:
    """Every finished run of the suite checks its task's contract: each metric its eval reported is one that
    metric_names() declares (what train.metric_for_best_model is checked against before training)."""
    import re

    from llmtune import tasks
    from llmtune.runs import load_run

    found = re.search(r"run folder: (.+)", stdout)
    if not found or not (Path(found.group(1).strip()) / "eval_results.json").is_file():
        return
    folder = Path(found.group(1).strip())
    run = load_run(folder)  # recipe and info only: weights load on first use
    reported = [k[len("eval_"):] for k in json.loads((folder / "eval_results.json").read_text())
                if k.startswith("eval_") and k not in ("eval_samples", "eval_runtime", "eval_samples_per_second")]
    declared = tasks.get(run.task).metric_names(run.recipe, run.info)
    missing = [k for k in reported if k not in declared]
    assert not missing, f"{run.task}: eval reported {missing}, which metric_names() does not declare"


@pytest.fixture
def cli() -> Any:
    return run_cli
