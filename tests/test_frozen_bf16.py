"""Frozen base weights stored in bf16 under LoRA + bf16 autocast (llmtune/frozen_bf16.py): bit for bit the loss
and gradients of fp32 storage under autocast, the fp32 forward unchanged, weights bf16 would round left alone, and
a finetune run's numbers unchanged while its frozen weights take half the bytes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_causal_lm import _loss_and_grads, recipe_dict

from llmtune.frozen_bf16 import BF16FrozenLinear, exact_in_bf16, store_frozen_bf16
from llmtune.tasks import causal_lm as clm


def test_exact_in_bf16() -> None:
    assert exact_in_bf16(torch.tensor([0.0, -0.0, 1.0, -2.5, 3.140625, float("inf"), 2.0 ** -130]))
    assert exact_in_bf16(torch.randn(7, 5).bfloat16().float().t())  # a strided view too
    assert not exact_in_bf16(torch.tensor([1.0, 1.0 + 2 ** -10]))
    assert not exact_in_bf16(torch.tensor([0.1]))


def _peft_tiny(tiny_llama: Path, round_to_bf16: bool) -> torch.nn.Module:
    from peft import get_peft_model

    from llmtune import lora
    from llmtune.recipe import build_recipe

    recipe = build_recipe(recipe_dict(tiny_llama, Path("unused"), lora__dropout=0.3))
    base = lora.load_base(recipe.model)
    if round_to_bf16:  # as a checkpoint published in bf16 and loaded in fp32
        for p in base.parameters():
            p.data = p.data.bfloat16().float()
    torch.manual_seed(1)
    m = get_peft_model(base, lora.peft_config(recipe.lora, clm.PEFT_TASK_TYPE))
    lora.fuse_dropout(m)
    for name, p in m.named_parameters():
        if ".lora_B." in name:  # non-zero adapters, so their path is part of what is compared
            p.data.normal_(0, 0.5)
    return m.train()


def test_same_numbers_half_the_bytes(tiny_llama: Path) -> None:
    plain = _peft_tiny(tiny_llama, round_to_bf16=True)
    stored = copy.deepcopy(plain)
    before = sum(p.nbytes for p in stored.parameters())
    converted, kept = store_frozen_bf16(stored)
    assert (converted, kept) == (14, 0)  # 2 layers x 7 base linears; the tied lm_head (the embedding) stays fp32
    base = stored.get_base_model()
    assert base.lm_head.weight.dtype == torch.float32 and base.lm_head.weight is base.model.embed_tokens.weight
    q = base.model.layers[0].self_attn.q_proj
    assert type(q.base_layer) is BF16FrozenLinear and q.base_layer.weight.dtype == torch.bfloat16
    assert q.lora_A["default"].weight.dtype == torch.float32 and q.lora_A["default"].weight.requires_grad
    linear_bytes = sum(m.weight.nbytes for m in stored.modules() if type(m) is BF16FrozenLinear)
    assert before - sum(p.nbytes for p in stored.parameters()) == linear_bytes  # fp32 -> bf16: half of them
    assert stored.state_dict().keys() == plain.state_dict().keys()

    ids = torch.randint(0, 500, (3, 19))
    (loss0, grads0), (loss1, grads1) = _loss_and_grads([plain, stored], ids, bf16=True)
    assert torch.equal(loss0, loss1)
    for n in grads0:
        assert grads0[n].abs().sum() > 0 and torch.equal(grads0[n], grads1[n]), n
    with torch.no_grad():  # fp32 forward (llmtune's eval, generation): the weights are upcast, exactly
        assert torch.equal(plain.eval()(input_ids=ids).logits, stored.eval()(input_ids=ids).logits)


def test_weights_bf16_would_round_stay_fp32(tiny_llama: Path) -> None:
    m = _peft_tiny(tiny_llama, round_to_bf16=False)  # random fp32 weights: not bf16 values
    layer = m.get_base_model().model.layers[1].mlp.down_proj.base_layer
    layer.weight.data = layer.weight.data.bfloat16().float()  # this one alone is
    assert store_frozen_bf16(m) == (1, 13)
    assert type(layer) is BF16FrozenLinear
    assert all(p.dtype == torch.float32 for n, p in m.named_parameters() if "down_proj" not in n or ".1." not in n)


def test_finetune_stores_frozen_bf16_and_gives_the_same_run(tiny_llama: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of one recipe on a bf16-valued checkpoint, with and without the bf16 storage: the same losses."""
    from transformers import AutoModelForCausalLM

    from llmtune import train
    from llmtune.recipe import build_recipe

    folder = tmp_path / "bf16-model"
    AutoModelForCausalLM.from_pretrained(tiny_llama).to(torch.bfloat16).save_pretrained(folder)
    for f in tiny_llama.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (folder / f.name).write_bytes(f.read_bytes())
    results, lines = [], []
    for store in (0, 1):
        if store:
            monkeypatch.undo()
        else:
            monkeypatch.setattr(train, "_frozen_in_bf16", lambda run: None)
        recipe = build_recipe(recipe_dict(folder, tmp_path / f"out-{store}", train__mixed_precision="bf16",
                                          train__eval_steps=2, lora__dropout=0.1))
        results.append(train.finetune(recipe, report=lines.append))
    assert sum("frozen base weights: 14 linear layers stored in bf16" in line for line in lines) == 1
    for key in ("train_loss", "eval_loss"):
        assert results[0][key] == results[1][key], key
    logs = [[json.loads(r) for r in (tmp_path / f"out-{s}" / "log.jsonl").read_text().splitlines()] for s in (0, 1)]
    assert [r.get("loss") for r in logs[0]] == [r.get("loss") for r in logs[1]]
