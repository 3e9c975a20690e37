"""runs.load_run: the one loader predict, eval, generate and merge use, on run folders of every task and on
folders llmtune did not write (merged models, plain from_pretrained folders, info files of an older version)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmtune import runs
from llmtune.errors import LlmtuneError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _classifier(tiny_bert: Path, folder: Path) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=2,
                                                          id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return folder


def test_every_task_loads_from_its_info_file(tmp_path: Path, tiny_bert: Path, tiny_t5: Path, tiny_llama: Path) -> None:
    from llmtune.tasks import causal_lm, classification, seq2seq

    cls = _classifier(tiny_bert, tmp_path / "cls")
    (cls / runs.INFO_FILE).write_text(json.dumps({"task": "classification", "label_names": ["neg", "pos"]}))
    run = runs.load_run(cls)
    assert run.task == "classification" and isinstance(run.info, classification.Info)
    assert run.info.label_names == ["neg", "pos"] and not run.model.training and not run.adapter

    s2s = _copy(tiny_t5, tmp_path / "s2s")
    # an info file as the version before typed info wrote it: every key, plus `task`
    (s2s / runs.INFO_FILE).write_text(json.dumps({
        "task": "summarization", "source_column": "document", "source_key": None, "target_column": "summary",
        "target_key": None, "source_prefix": "summarize: ", "model_type": "t5", "label_drop_leading": [],
        "metrics": ["rouge"], "metric_signatures": {"rouge": "rouge|x"}, "source_lang": None, "target_lang": None}))
    run = runs.load_run(s2s)
    assert run.task == "summarization" and isinstance(run.info, seq2seq.Info)
    assert run.info.source_prefix == "summarize: " and run.info.metrics == ["rouge"]
    assert run.info.to_json()["metric_signatures"] == {"rouge": "rouge|x"}

    clm = _copy(tiny_llama, tmp_path / "clm")
    # keys a later version might add are skipped; missing keys take their defaults
    (clm / runs.INFO_FILE).write_text(json.dumps({"task": "causal_lm", "prompt_format": "chat", "new_key": 1}))
    run = runs.load_run(clm)
    assert run.task == "causal_lm" and isinstance(run.info, causal_lm.Info)
    assert run.info.prompt_format == "chat" and run.info.format == "instruction"


def test_folders_without_info_are_recognised_by_their_config(tmp_path: Path, tiny_bert: Path, tiny_t5: Path,
                                                             tiny_llama: Path) -> None:
    cls = runs.load_run(_classifier(tiny_bert, tmp_path / "cls"))
    assert cls.task == "classification" and cls.info.label_names == ["neg", "pos"]  # from id2label
    assert runs.load_run(tiny_t5).task == "summarization"
    assert runs.load_run(tiny_llama).task == "causal_lm"


def test_adapter_folder_loads_base_plus_adapter(tmp_path: Path, tiny_llama: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft_model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=2, target_modules="all-linear",
                                                 init_lora_weights=False))
    out = tmp_path / "adapter"
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
    run = runs.load_run(out)  # no recipe.yaml, no info: the base comes from adapter_config.json
    assert run.task == "causal_lm" and run.adapter
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(run.model(input_ids=ids).logits, peft_model.eval()(input_ids=ids).logits, atol=1e-6)


def test_damaged_and_foreign_folders_are_named(tmp_path: Path, tiny_bert: Path) -> None:
    with pytest.raises(LlmtuneError, match="not a folder"):
        runs.load_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LlmtuneError, match="not a run or model folder"):
        runs.load_run(empty)
    bad_info = _classifier(tiny_bert, tmp_path / "bad-info")
    (bad_info / runs.INFO_FILE).write_text("{not json")
    with pytest.raises(LlmtuneError, match="unreadable run information"):
        runs.load_run(bad_info)
    (bad_info / runs.INFO_FILE).write_text(json.dumps({"task": "alchemy"}))
    with pytest.raises(LlmtuneError, match="'alchemy' is not one this llmtune knows"):
        runs.load_run(bad_info)
    truncated = _classifier(tiny_bert, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(LlmtuneError, match=r"model.safetensors is damaged"):
        _ = runs.load_run(truncated).model  # the weights load on first use


def test_a_plain_folder_is_given_the_task_its_architecture_names() -> None:
    """causal_lm claims any decoder, so it is asked last: a BertForMaskedLM folder is masked_lm's, not a decoder."""
    from llmtune import tasks

    assert tasks.recognize({"architectures": ["BertForMaskedLM"], "model_type": "bert"}) == "masked_lm"
    assert tasks.recognize({"architectures": ["BertForSequenceClassification"]}) == "classification"
    assert tasks.recognize({"architectures": ["BertForTokenClassification"]}) == "token_classification"
    assert tasks.recognize({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}) == "causal_lm"
    assert tasks.recognize({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}) == "causal_lm"
    # a bare encoder (AutoModel) has no head to generate with: it was taken for a decoder and wrote random words
    assert tasks.recognize({"architectures": ["BertModel"], "model_type": "bert"}) is None
