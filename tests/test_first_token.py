"""The first-token last layer of BERT-family sequence classifiers (llmtune/first_token.py): the same logits and
gradients as the model's own forward, with padding and without, under sdpa and eager attention; left alone where
a head reads every token or the mask is not a 4-D tensor."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from llmtune import first_token

SIZES = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = [("BertConfig", "BertForSequenceClassification"),
            ("RobertaConfig", "RobertaForSequenceClassification"),
            ("ElectraConfig", "ElectraForSequenceClassification")]


def _model(config_name: str, model_name: str, attn: str, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**SIZES, num_labels=3, pad_token_id=1, **extra)
    config._attn_implementation = attn
    return getattr(transformers, model_name)(config)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 64, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # one row padded
    mask[2, 2:] = 0
    ids[mask == 0] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1])}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("config_name", "model_name"), FAMILIES)
def test_same_logits_and_gradients(config_name: str, model_name: str, attn: str) -> None:
    plain = _model(config_name, model_name, attn)
    short = copy.deepcopy(plain)
    assert first_token.apply(short)
    assert not first_token.apply(short)  # once only
    batch = _batch()
    for unpadded in (False, True):
        b = {k: (v[:1] if unpadded else v) for k, v in batch.items()}  # the one full row: the mask may be None
        plain.zero_grad()
        short.zero_grad()
        out_plain = plain.train()(**b)
        out_short = short.train()(**b)
        torch.testing.assert_close(out_short.logits, out_plain.logits, rtol=1e-5, atol=1e-6)
        out_plain.loss.backward()
        out_short.loss.backward()
        grads = {n: p.grad for n, p in short.named_parameters()}
        compared = 0
        for name, p in plain.named_parameters():
            if p.grad is None:
                assert grads[name] is None or not grads[name].any()
                continue
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
            compared += 1
        assert compared > 10
    # the last layer really ran for one position: its output holds one token per row
    seen = []
    layer = short.base_model.encoder.layer[-1]
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        short.eval()(**{k: v for k, v in batch.items() if k != "labels"})
    hook.remove()
    assert seen == [torch.Size([3, 1, 32])]


def test_bf16_autocast_matches() -> None:
    plain = _model("BertConfig", "BertForSequenceClassification", "sdpa")
    short = copy.deepcopy(plain)
    first_token.apply(short)
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = plain.eval()(**batch).logits.float()
        b = short.eval()(**batch).logits.float()
    torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)


def test_left_alone_where_it_does_not_apply() -> None:
    # a head over every token
    assert not first_token.apply(_model("BertConfig", "BertForTokenClassification", "sdpa"))
    # a decoder-style BERT and chunked feed-forward
    assert not first_token.apply(_model("BertConfig", "BertForSequenceClassification", "sdpa", is_decoder=True))
    assert not first_token.apply(_model("BertConfig", "BertForSequenceClassification", "sdpa",
                                        chunk_size_feed_forward=4))
    # a classifier of another family (the last token of a decoder)
    gpt2 = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4,
                                                                              vocab_size=64, pad_token_id=0))
    assert not first_token.apply(gpt2)


def test_other_masks_run_the_full_layer() -> None:
    short = _model("BertConfig", "BertForSequenceClassification", "sdpa")
    first_token.apply(short)
    layer = short.base_model.encoder.layer[-1]
    calls = []
    layer._llmtune_full_forward = lambda h, m, *a, **k: calls.append(m) or "the layer's own forward"
    hidden = torch.randn(2, 5, 32)
    mask_4d = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    assert layer(hidden, mask_4d).shape == (2, 1, 32) and layer(hidden, None).shape == (2, 1, 32)
    assert not calls
    mask_2d = torch.ones(2, 5, dtype=torch.bool)  # as flash-attention passes it: the layer's own forward
    assert layer(hidden, mask_2d) == "the layer's own forward" and calls == [mask_2d]
