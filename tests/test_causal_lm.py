"""causal_lm on a tiny Llama (2 layers, hidden 32) with SmolLM2's real tokenizer: LoRA wrapping, label masking on
literal tensors, packing = unpacked loss, merge = base + adapter, seeded generation; one short SmolLM2 run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl

from llmtune.tasks import causal_lm as clm


def recipe_dict(model: Path | str, out: Path, **extra: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "task": "causal_lm",
        "model": {"name": str(model)},
        "data": {"dataset": "llmtune:instruct", "max_train_samples": 24, "max_eval_samples": 6},
        "lora": {"r": 4, "alpha": 8},
        "train": {"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 2, "max_seq_length": 96},
        "generation": {"max_new_tokens": 4},
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        recipe.setdefault(section, {})[field] = value
    return recipe


def write_recipe(path: Path, model: Path | str, out: Path, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump(recipe_dict(model, out, **extra)), encoding="utf-8")
    return path


def load_parts(tiny_llama: Path, tmp_path: Path, **extra: Any) -> tuple[Any, Any, Any]:
    from llmtune.models import load_tokenizer
    from llmtune.recipe import build_recipe

    recipe = build_recipe(recipe_dict(tiny_llama, tmp_path / "out", **extra))
    tok = load_tokenizer(recipe.model)
    return recipe, tok, clm.load_model(recipe, tok, {})


def test_lora_trains_only_the_adapters(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    recipe, tok, model = load_parts(tiny_llama, tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.tensor([[1, 520, 9531, 198, 37, 2]])
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (".lora_B." in n or ".lora_A." in n), n

    _, _, full = load_parts(tiny_llama, tmp_path, lora__enabled=False)
    assert type(full).__name__ == "LlamaForCausalLM" and all(p.requires_grad for p in full.parameters())


def _saved_bytes(model: Any, ids: Any) -> int:
    """Bytes autograd keeps for the backward of one training forward of the decoder layers (each storage once;
    weights excluded; without the output layer, whose 49k-vocabulary logits would dwarf a tiny model's layers)."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Any) -> Any:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.get_base_model().model(input_ids=ids)
    return sum(seen.values())


def _loss_and_grads(models: Any, ids: Any, bf16: bool) -> list[tuple[Any, dict[str, Any]]]:
    """Each model's training loss on ids (labels = ids) and its trainable gradients, from the same seed."""
    import torch

    results = []
    for m in models:
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}))
        m.zero_grad()
    return results


def test_lora_dropout_inside_the_adapter_equals_peft_and_keeps_less(tiny_llama: Path) -> None:
    """lora.wrap moves each adapter's dropout into its lora_A (DroppedLinear): the loss and gradients of PEFT's
    Dropout -> lora_A given the same masks (keep_mask's, drawn in the same order from the same seed), in fp32 and
    under bf16 autocast, the same adapter keys, and less kept for the backward (no float noise and dropped copy
    per adapted layer)."""
    import copy

    import torch
    from peft import get_peft_model

    from llmtune import lora
    from llmtune.lora_dropout import DroppedLinear, keep_mask
    from llmtune.models import load_tokenizer
    from llmtune.recipe import build_recipe

    class MaskDropout(torch.nn.Dropout):  # nn.Dropout with keep_mask's masks: PEFT's forward, llmtune's draws
        def forward(self, x: Any) -> Any:
            keep, scale = keep_mask(x, self.p)
            return x * keep * scale if self.training else x

    recipe = build_recipe(recipe_dict(tiny_llama, Path("unused"), lora__dropout=0.3))
    base = lora.load_base(recipe.model)
    models = []
    for fuse in (False, True):
        torch.manual_seed(1)
        m = get_peft_model(copy.deepcopy(base), lora.peft_config(recipe.lora, clm.PEFT_TASK_TYPE))
        for name, p in m.named_parameters():
            if ".lora_B." in name:  # PEFT starts B at zero, where the adapter (and its dropout) changes nothing
                p.data.normal_(0, 0.5)
        if fuse:
            assert lora.fuse_dropout(m) == 14  # 2 layers x 7 linear layers (all-linear)
        models.append(m.train())
    peft_model, fused = models
    assert {type(m) for m in fused.modules()} >= {DroppedLinear}
    assert not any(isinstance(m, torch.nn.Dropout) for m in fused.modules())
    assert fused.state_dict().keys() == peft_model.state_dict().keys()
    wrapped = clm.load_model(recipe, load_tokenizer(recipe.model), {})  # the task's own model is fused too
    assert sum(isinstance(m, DroppedLinear) for m in wrapped.modules()) == 14

    ids = torch.randint(0, 500, (3, 19))
    (_, grads_peft), _ = _loss_and_grads(models, ids, False)  # PEFT's own masks: another draw, other gradients
    masked = copy.deepcopy(peft_model)
    for module in masked.modules():
        for name, drop in list(getattr(module, "lora_dropout", {}).items()):
            module.lora_dropout[name] = MaskDropout(drop.p)
    (loss0, grads0), (loss1, grads1) = _loss_and_grads([masked, fused], ids, False)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
    for n in grads0:
        assert grads0[n].abs().sum() > 0, n
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-5, atol=1e-6, msg=n)
        if ".lora_A." in n:
            assert not torch.allclose(grads_peft[n], grads0[n]), n  # the masks matter to the comparison
    # under bf16 autocast the two round at other places (llmtune scales lora_A's output, PEFT its input): each is
    # as far from the fp32 gradients as the other
    (loss_p, grads_p), (loss_f, grads_f) = _loss_and_grads([masked, fused], ids, True)
    torch.testing.assert_close(loss_f, loss_p, rtol=2e-2, atol=1e-3)
    for n in grads0:
        err_p, err_f = (grads_p[n] - grads0[n]).norm(), (grads_f[n] - grads0[n]).norm()
        assert err_f <= 1.5 * err_p + 1e-3 * grads0[n].norm(), (n, err_f, err_p)
    # eval: no dropout on either side
    with torch.no_grad():
        assert torch.equal(peft_model.eval()(input_ids=ids).logits, fused.eval()(input_ids=ids).logits)
    kept = [_saved_bytes(m.train(), ids) for m in models]
    assert kept[1] < 0.75 * kept[0], kept


def test_keep_mask_rate_scale_and_seed() -> None:
    """keep_mask: the rate is p to 1/65536, every 16-bit lane is used (odd sizes too), the scale makes the
    expectation exact, and the same seed draws the same mask."""
    import torch

    from llmtune.lora_dropout import keep_mask

    x = torch.ones(1001, 997)  # not a multiple of 4 elements
    for p in (0.05, 0.1, 0.5):
        torch.manual_seed(3)
        keep, scale = keep_mask(x, p)
        rate = round(p * 65536) / 65536
        assert keep.shape == x.shape and keep.dtype == torch.bool and scale == 1 / (1 - rate)
        n = keep.numel()
        sd = (rate * (1 - rate) / n) ** 0.5
        assert abs((1 - keep.float().mean().item()) - rate) < 5 * sd, p
        lanes = keep.flatten()[: n - n % 4].view(-1, 4).float().mean(0)  # each lane of the 64-bit draws
        assert ((1 - lanes) - rate).abs().max() < 5 * sd * 2, (p, lanes)
        assert abs((x * keep * scale).mean().item() - 1) < 5 * sd * scale
        torch.manual_seed(3)
        assert torch.equal(keep_mask(x, p)[0], keep)
    assert keep_mask(x, 0.0)[0].all()


def test_gated_mlp_keeps_less_and_gives_the_models_numbers(tiny_llama: Path) -> None:
    """swiglu.fuse (the task's loader calls it): bit for bit the loss and gradients of the model's own MLP forward,
    in fp32 and under bf16 autocast, with LoRA adapters in the MLP, and less kept for the backward."""
    import copy

    import torch
    from peft import get_peft_model

    from llmtune import lora, swiglu
    from llmtune.models import load_tokenizer
    from llmtune.recipe import build_recipe

    recipe = build_recipe(recipe_dict(tiny_llama, Path("unused"), lora__dropout=0.3))
    torch.manual_seed(1)
    plain = get_peft_model(lora.load_base(recipe.model), lora.peft_config(recipe.lora, clm.PEFT_TASK_TYPE))
    for name, p in plain.named_parameters():
        if ".lora_B." in name:  # non-zero adapters, so the MLP's LoRA path is part of what is compared
            p.data.normal_(0, 0.5)
    fused = copy.deepcopy(plain)
    assert swiglu.fuse(fused) == 2 and swiglu.fuse(plain.get_base_model().lm_head) == 0
    wrapped = clm.load_model(recipe, load_tokenizer(recipe.model), {})
    mlps = [m for m in wrapped.modules() if type(m).__name__ == "LlamaMLP"]
    assert len(mlps) == 2 and all(m.forward.__func__ is swiglu._forward for m in mlps)
    ids = torch.randint(0, 500, (3, 19))
    for bf16 in (False, True):
        (loss0, grads0), (loss1, grads1) = _loss_and_grads((plain.train(), fused.train()), ids, bf16)
        assert torch.equal(loss0, loss1), bf16
        assert all(torch.equal(grads0[n], grads1[n]) for n in grads0), bf16
        assert any(".mlp.gate_proj." in n and grads0[n].abs().sum() > 0 for n in grads0)
    kept = [_saved_bytes(m.train(), ids) for m in (plain, fused)]
    # one (tokens x intermediate) fp32 tensor less per layer: silu(g)
    cfg = plain.config
    assert kept[0] - kept[1] == cfg.num_hidden_layers * ids.numel() * cfg.intermediate_size * 4, kept


def test_labels_mask_the_prompt_literal(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids_of = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = clm.generation_prompt(tok, "chat", "Add the numbers.", "2 and 3")
    assert prompt.endswith("<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n")
    ids, labels = clm.encode_instruction(tok, "chat", "Add the numbers.", "2 and 3", "5", 128, False)
    p, r = ids_of(prompt), ids_of("5<|im_end|>")
    assert ids == p + r + ids_of("\n")
    assert labels == [-100] * len(p) + r + [-100]
    assert tok.decode(r) == "5<|im_end|>" and r[-1] == tok.eos_token_id  # the model learns to stop

    ids_all, labels_all = clm.encode_instruction(tok, "chat", "Add the numbers.", "2 and 3", "5", 128, True)
    assert ids_all == ids and labels_all == [-100] + ids[1:]  # train_on_prompt: all but the unpredicted first

    # no chat template: the Alpaca layout, response + EOS trained
    ids2, labels2 = clm.encode_instruction(tok, "alpaca", "Name a color.", "", "Red", 128, False)
    p2 = tok(clm.alpaca_prompt("Name a color.", ""))["input_ids"]
    assert ids2 == p2 + ids_of("Red") + [tok.eos_token_id]
    assert labels2 == [-100] * len(p2) + ids_of("Red") + [tok.eos_token_id]

    # multi-turn chat: every assistant reply (with its end-of-turn token) is trained, nothing else
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    ids3, labels3 = clm.encode_chat(tok, msgs, 256, False)
    assert ids3 == ids_of(clm.render_chat(tok, msgs, False))  # segment-wise = whole-string tokenization here
    assert tok.decode([t for t in labels3 if t != -100]) == "hello<|im_end|>4<|im_end|>"

    # truncation keeps at most max_seq_length tokens; the collator pads labels with -100 and masks attention
    short, short_labels = clm.encode_instruction(tok, "chat", "Add the numbers.", "2 and 3", "5", 8, False)
    assert len(short) == 8 and short_labels == [-100] * 8
    batch = clm.CausalCollator(tok.pad_token_id, packing=False)(
        [{"input_ids": [1, 5, 6], "labels": [-100, 5, 6]}, {"input_ids": [1, 7], "labels": [-100, 7]}])
    assert torch.equal(batch["input_ids"], torch.tensor([[1, 5, 6], [1, 7, tok.pad_token_id]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 5, 6], [-100, 7, -100]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))
    packed = clm.CausalCollator(tok.pad_token_id, packing=True)(
        [{"input_ids": [1, 5, 6], "labels": [-100, 5, 6]}, {"input_ids": [1, 7], "labels": [-100, 7]}])
    assert "attention_mask" not in packed
    assert torch.equal(packed["position_ids"], torch.tensor([[0, 1, 2, 0, 1]]))
    assert torch.equal(packed["labels"], torch.tensor([[-100, 5, 6, -100, 7]]))


def test_packed_loss_equals_unpacked(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    # train mode as in the loop; no LoRA dropout, so two forwards are comparable; seeded first, so the adapters'
    # initial A matrices (and the numbers below) do not depend on which tests ran before
    torch.manual_seed(0)
    recipe, tok, model = load_parts(tiny_llama, tmp_path, data__packing=True, lora__dropout=0.0)
    assert model.training and model.config.use_cache is False
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero adapters, so the LoRA path is part of what is compared
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    rows = [("Name a color.", "", "Red"), ("Add the numbers.", "2 and 3", "5"),
            ("Write a haiku about the sea.", "", "Waves fold into foam\nsalt wind carries gull voices\nthe tide"),
            ("Give the opposite of the word.", "victory", "defeat")]
    feats = []
    for ins, inp, out in rows:
        ids, labels = clm.encode_instruction(tok, "chat", ins, inp, out, 256, False)
        feats.append({"input_ids": ids, "labels": labels})
    collate = clm.collator(recipe, tok, model)
    assert collate.hidden_size == model.config.hidden_size == 32
    # at hidden size 32 attention outweighs the linear layers, and the cheapest rows are the padded batch's; with
    # attention counted at nothing (as on wide models, nearly) examples share rows, which is what is tested here
    collate.hidden_size = 10**9
    packed = collate(feats)
    padded = clm.CausalCollator(tok.pad_token_id, packing=False)(feats)
    total = sum(len(f["input_ids"]) for f in feats)
    # rows of at most max_seq_length tokens (96 here), fewer positions than padding, one row of two examples
    assert packed["input_ids"].shape[0] > 1 and packed["input_ids"].shape[1] <= recipe.train.max_seq_length
    assert packed["input_ids"].numel() < padded["input_ids"].numel() and int(packed["n_examples"].max()) >= 2
    assert int(packed.pop("n_tokens").sum()) == total and int(packed.pop("n_examples").sum()) == len(feats)
    # logits only where an answer token is predicted in some row: one learnt label per kept position and row
    n_learnt = sum(sum(1 for x in f["labels"] if x != -100) for f in feats)
    assert packed["logits_to_keep"].shape[0] < packed["input_ids"].shape[1]
    assert int((packed["shift_labels"] != -100).sum()) == n_learnt
    # without a row budget and with attention counted at nothing, the cheapest packing is one row of the batch
    one = clm.CausalCollator(tok.pad_token_id, packing=True, keep_logits=True, hidden_size=10**9)(feats)
    assert one["input_ids"].shape == (1, total) and one["logits_to_keep"].shape == (n_learnt,)

    def loss_and_grads(batch: dict[str, Any]) -> tuple[float, list[Any]]:
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    def hook_loss_and_grads(batch: dict[str, Any]) -> tuple[float, list[Any]]:
        model.zero_grad()
        loss = clm.loss(model, dict(batch))  # the task's loss hook, as the training loop calls it
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    # the learnt tokens alone go through the output layer: one per learnt label, fewer than rows x kept positions
    assert packed["target_index"].shape[0] == n_learnt == int((packed["target"] != -100).sum())
    assert n_learnt < packed["input_ids"].shape[0] * packed["logits_to_keep"].shape[0]
    lh, gh = hook_loss_and_grads(packed)
    for k in ("target_index", "target"):
        packed.pop(k)
    lp, gp = loss_and_grads(packed)
    lu, gu = loss_and_grads(padded)
    assert abs(lp - lu) < 1e-4 and abs(lh - lu) < 1e-4
    assert max(float((a - b).abs().max()) for a, b in zip(gp, gu, strict=True)) < 1e-4
    assert max(float((a - b).abs().max()) for a, b in zip(gh, gu, strict=True)) < 1e-4
    # the same row with logits at every position: the same loss and gradients
    full = {k: v for k, v in packed.items() if k not in ("logits_to_keep", "shift_labels")}
    lf, gf = loss_and_grads(full)
    assert abs(lf - lp) < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(gp, gf, strict=True)) < 1e-5
    # padded training batches mark their learnt tokens too (the recipe's collator does for a plain output layer):
    # the hook's loss and gradients are the model's own forward's on the padded batch
    assert collate.learnt_only
    marked = clm.CausalCollator(tok.pad_token_id, packing=False, learnt_only=True)(feats)
    assert marked["target_index"].shape[0] == n_learnt and "target_index" not in padded
    # ...and drop the attention mask (right padding is never attended under causal attention), counting themselves
    assert "attention_mask" not in marked and "attention_mask" in padded
    assert int(marked.pop("n_tokens").sum()) == total and int(marked.pop("n_examples").sum()) == len(feats)
    lm, gm = hook_loss_and_grads(marked)
    assert abs(lm - lu) < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(gm, gu, strict=True)) < 1e-5
    # eval batches (with idx) keep every position: each row's loss is put back in its row
    assert "target_index" not in clm.CausalCollator(tok.pad_token_id, packing=False, learnt_only=True)(
        [{**f, "idx": i} for i, f in enumerate(feats)])
    # control: the same row without restarting positions lets examples attend to each other
    flat = {k: v for k, v in one.items() if k in ("input_ids", "labels")}
    assert abs(float(model(**flat).loss) - lu) > 2e-4  # well above the 1e-5 of equal computations


def test_packing_never_costs_more_than_padding() -> None:
    """Row widths are chosen per batch: never more positions, nor wider rows, than padding the same batch."""
    import random

    rng = random.Random(0)
    collate = clm.CausalCollator(0, packing=True, max_length=512, hidden_size=576)
    # the batch that packing in order made 1.9x slower: 7 rows of 511 where padding gives 8 rows of 279
    lengths = [279, 275, 268, 262, 250, 244, 236, 232]
    for case in [lengths] + [[rng.randint(20, 500) for _ in range(rng.randint(1, 16))] for _ in range(200)]:
        feats = [{"input_ids": [1] * n, "labels": [-100] + [1] * (n - 1)} for n in case]
        b = collate(feats)
        rows, width = b["input_ids"].shape
        assert width <= max(case) or rows * width < len(case) * max(case), case
        assert rows * width <= len(case) * max(case) and int(b["n_tokens"].sum()) == sum(case), case
        assert int(b["n_examples"].sum()) == len(case) and int((b["position_ids"] == 0).sum()) == len(case)
        assert all(int(n) <= width for n in b["n_tokens"])
    # the in-order row of 279 + 232 tokens is gone: no row is wider than the longest example here
    assert tuple(collate([{"input_ids": [1] * n, "labels": [1] * n} for n in lengths])["input_ids"].shape) == (8, 279)
    # short examples do share rows: 2 x 200 positions where padding takes 4 x 200 (one row of 380 costs more)
    assert collate([{"input_ids": [1] * n, "labels": [1] * n} for n in (200, 60, 70, 50)])["input_ids"].shape == (2, 200)


def test_packed_attention_grows_linearly_with_examples() -> None:
    """Examples of a fixed length: packed rows grow in number, not in width, so the attention mask (rows x width
    x width) grows linearly with the examples, where one row of the whole batch would grow quadratically."""
    feats = [{"input_ids": list(range(1, 41)), "labels": [-100] + list(range(2, 41))} for _ in range(16)]
    collate = clm.CausalCollator(0, packing=True, max_length=96)
    sizes = []
    for n in (4, 8, 16):
        b = collate(feats[:n])
        rows, width = b["input_ids"].shape
        assert width <= 96 and int(b["n_tokens"].sum()) == 40 * n
        sizes.append(rows * width * width)
    assert sizes[1] == 2 * sizes[0] and sizes[2] == 2 * sizes[1]
    # padding continues the last example's positions: no new example starts in it
    b = collate(feats[:3])
    assert int((b["position_ids"] == 0).sum()) == 3 and int(b["n_examples"].sum()) == 3


def test_finetune_generate_merge(tiny_llama: Path, tmp_path: Path, cli) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_llama, out, data__packing=True, eval__generate=True,
                          train__eval_steps=2)
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "recipe.yaml",
                 "predictions.jsonl", "all_results.json", "COMPLETE"):
        assert (out / name).exists(), name
    assert not (out / "model.safetensors").exists()  # the adapter only, not the base model
    results = json.loads((out / "all_results.json").read_text())
    assert math.isclose(results["eval_perplexity"], math.exp(results["eval_loss"]), rel_tol=1e-9)
    for key in ("eval_rouge1", "eval_rougeL", "eval_bleu", "eval_exact_match"):
        assert isinstance(results[key], float), key
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and all({"instruction", "reference", "prediction", "loss"} <= set(p) for p in preds)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama)

    # plain PEFT loads the adapter; the merged folder gives the same logits as base + adapter
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    x = torch.tensor([[1, 4093, 198, 7684, 260, 2966, 30, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        base_logits = base(x).logits
        adapted = PeftModel.from_pretrained(base, out).eval()
        peft_logits = adapted(x).logits
    assert float((peft_logits - base_logits).abs().max()) > 1e-3  # training moved the adapter
    merged_dir = tmp_path / "merged"
    res = cli("merge", out, "--output", merged_dir)
    assert res.exit_code == 0, res.output
    assert (merged_dir / "model.safetensors").exists() and not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        assert float((merged(x).logits - peft_logits).abs().max()) < 1e-4
    res = cli("merge", out, "--output", merged_dir)
    assert res.exit_code == 2 and "--force" in res.stderr

    # seeded sampling repeats itself; a file of prompts is generated in order
    args = ("generate", out, "--prompt", "Name a color.", "--sample", "--seed", "7", "--max-new-tokens", "6")
    first, second = cli(*args), cli(*args)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() and first.stdout == second.stdout
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Name a color.", "input": ""},
                                                 {"instruction": "Give the opposite of the word.", "input": "up"},
                                                 {"instruction": "Say hi."}])
    res = cli("generate", merged_dir, "--input", prompts, "--output", tmp_path / "g.jsonl",
              "--set", "generation.max_new_tokens=3")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Name a color.", "Give the opposite of the word.", "Say hi."]
    assert rows[1]["input"] == "up" and all(isinstance(r["generation"], str) for r in rows)


def test_chat_data_and_templates(tiny_llama: Path, tmp_path: Path, cli) -> None:
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_llama, bare)
    (bare / "chat_template.jinja").unlink()
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    convs = [[{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": str(2 * i)}]
             for i in range(12)]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in convs])
    base = {"data__dataset": None, "data__train_file": str(data), "data__format": "chat", "data__val_size": 4,
            "train__max_steps": 2}
    res = cli("finetune", write_recipe(tmp_path / "a.yaml", bare, tmp_path / "a", **base))
    assert res.exit_code == 2 and "data.template" in res.stderr
    res = cli("finetune", write_recipe(tmp_path / "b.yaml", bare, tmp_path / "b", data__template="plain", **base))
    assert res.exit_code == 0, res.output
    assert "### Assistant:" in (tmp_path / "b" / "chat_template.jinja").read_text()  # kept for generation
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": convs[0]}, {"messages": [{"role": "user"}]}])
    res = cli("validate", write_recipe(tmp_path / "c.yaml", tiny_llama, tmp_path / "c",
                                       **{**base, "data__train_file": str(bad)}))
    assert res.exit_code == 2 and "row 2" in res.stderr and "turn 1" in res.stderr


def test_plain_text_is_cut_into_windows(tiny_llama: Path, tmp_path: Path, cli) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    text = "The quick brown fox jumps over the lazy dog. " * 6
    full = tok(text)["input_ids"] + [tok.eos_token_id]
    windows = clm.text_chunks(tok, text, 16)
    assert [i for ids, _ in windows for i in ids] == full and all(len(ids) <= 16 for ids, _ in windows)
    assert all(labels == [-100] + ids[1:] for ids, labels in windows)
    data = write_jsonl(tmp_path / "t.jsonl", [{"body": text * (i % 3 + 1)} for i in range(10)])
    out = tmp_path / "text"
    res = cli("finetune", write_recipe(tmp_path / "t.yaml", tiny_llama, out, data__dataset=None, data__format="text",
                                       data__train_file=str(data), data__text_column="body", data__val_size=2,
                                       train__max_seq_length=32, train__max_steps=2))
    assert res.exit_code == 0, res.output
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(p["loss"] > 0 for p in preds)


def test_qlora_on_cpu_is_a_clear_error(tiny_llama: Path, tmp_path: Path, cli) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    res = cli("finetune", write_recipe(tmp_path / "q.yaml", tiny_llama, tmp_path / "q", lora__load_in_4bit=True))
    assert res.exit_code == 2 and "needs a CUDA GPU" in res.stderr


def test_smollm2_end_to_end(tmp_path: Path, cli) -> None:
    """The shipped recipe on the real SmolLM2-135M-Instruct, a couple of short steps."""
    from llmtune.recipe import builtin_recipe

    out = tmp_path / "smol"
    res = cli("finetune", builtin_recipe("lora_instruct"), f"train.output_dir={out}", "train.max_steps=2",
              "train.per_device_train_batch_size=2", "train.max_seq_length=64", "data.max_train_samples=4",
              "data.max_eval_samples=4")
    assert res.exit_code == 0, res.output
    results = json.loads((out / "all_results.json").read_text())
    assert 0 < results["eval_loss"] < 6  # a trained model: far below log(vocab) = 10.8
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"].endswith(".gguf") and cfg["peft_type"] == "LORA"
    assert (out / "adapter_model.safetensors").stat().st_size < 20_000_000  # adapter only (base is ~540 MB)


def test_adapter_checkpoints_hold_the_adapter_only_and_resume_exactly(tiny_llama: Path, tmp_path: Path, cli) -> None:
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    extra = {"train__max_steps": 4, "train__save_steps": 2, "train__eval_steps": 4, "train__save_total_limit": 5}
    for out in (ref, cut):
        res = cli("finetune", write_recipe(tmp_path / f"{out.name}.yaml", tiny_llama, out, **extra))
        assert res.exit_code == 0, res.output
    with safe_open(cut / "checkpoint-2" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), keys[:5]  # the frozen base is not copied into checkpoints
    # what a kill right after checkpoint-2 leaves behind, then the same command again
    for p in cut.iterdir():
        if p.name not in ("checkpoint-2", "recipe.yaml", "run_info.json", "log.jsonl"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    res = cli("finetune", tmp_path / "cut.yaml")
    assert res.exit_code == 0, res.output
    a, b = load_file(ref / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(float((a[k] - b[k]).abs().max()) <= 1e-6 for k in a)
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (ref, cut))
    assert abs(ra["eval_loss"] - rb["eval_loss"]) <= 1e-6 and ra["base_eval_loss"] == rb["base_eval_loss"]


def test_auto_precision_and_no_base_eval(tiny_llama: Path, tmp_path: Path, cli) -> None:
    """mixed_precision=auto picks bf16 exactly where the hardware has native bf16 and says which in run_info;
    eval.before_training=false skips the base-model eval that causal_lm runs by default."""
    from llmtune.hardware import native_bf16

    out = tmp_path / "run"
    res = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_llama, out, train__max_steps=2,
                                       train__mixed_precision="auto", eval__before_training=False, data__packing=True))
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run_info.json").read_text())
    assert info["mixed_precision"] == ("bf16" if native_bf16() else "no")
    assert "mixed precision:" in res.output
    results = json.loads((out / "all_results.json").read_text())
    assert math.isfinite(results["eval_loss"]) and not any(k.startswith("base_eval") for k in results)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2]  # one eval, at the end


def test_auto_precision_is_fp32_without_native_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtune import hardware
    from llmtune.recipe import build_recipe

    recipe = build_recipe(recipe_dict("x", tmp_path, train__mixed_precision="auto"))
    monkeypatch.setattr(hardware, "native_bf16", lambda: None)
    assert hardware.resolve_mixed_precision(recipe) == "no"
    monkeypatch.setattr(hardware, "native_bf16", lambda: "CPU with bf16 instructions")
    assert hardware.resolve_mixed_precision(recipe) == "bf16"
    assert hardware.resolve_mixed_precision(build_recipe(recipe_dict("x", tmp_path))) == "no"


def test_bf16_loss_hook_runs_under_autocast(tiny_llama: Path, tmp_path: Path, cli,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss hook runs the decoder and the output layer itself, outside the prepared model's forward (which
    accelerate wraps in autocast): the loop autocasts it. Without that, mixed_precision bf16 trained causal LMs in
    fp32 (found on an AMX Xeon: the bf16 run's memory and eval loss were the fp32 run's)."""
    import torch

    from llmtune import tasks

    seen: list[tuple[bool, Any]] = []
    real = tasks.loss_fn

    def spy(task: Any) -> Any:
        fn = real(task)

        def hooked(model: Any, batch: dict[str, Any]) -> Any:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            dtypes: list[Any] = []
            handle = base.get_output_embeddings().register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
            try:
                out = fn(model, batch)
            finally:
                handle.remove()
            seen.append((torch.is_autocast_enabled("cpu"), dtypes[0] if dtypes else None))
            return out
        return hooked

    monkeypatch.setattr(tasks, "loss_fn", spy)
    for packing in (True, False):  # both layouts mark their learnt tokens for the hook
        out = tmp_path / f"run-{packing}"
        res = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_llama, out, train__max_steps=2,
                                           train__mixed_precision="bf16", eval__before_training=False,
                                           data__packing=packing))
        assert res.exit_code == 0, res.output
    assert len(seen) == 4 and all(on and dtype == torch.bfloat16 for on, dtype in seen), seen


def test_bf16_training_evaluates_in_full_precision(tiny_llama: Path, tmp_path: Path, cli) -> None:
    """A run trained under bf16 autocast reports the eval loss its saved weights have in fp32, the number that
    `llmtune eval` gives for the same run later (under autocast the two would differ in the third decimal)."""
    out = tmp_path / "run"
    res = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_llama, out, train__max_steps=2,
                                       train__mixed_precision="bf16", eval__before_training=False))
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run_info.json").read_text())["mixed_precision"] == "bf16"
    during = json.loads((out / "all_results.json").read_text())["eval_loss"]
    res = cli("eval", "--model", out, "--metric", "perplexity", "--bootstrap", "0", "-o", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    (after,) = json.loads((tmp_path / "e.json").read_text())["results"].values()
    assert after["loss"]["value"] == pytest.approx(during, abs=1e-5), (after, during)
