"""Batched generation shared by every task: decoding settings, length-sorted batches, exact sharding."""

from __future__ import annotations

from typing import Any

from llmtune.schema import GenerationArgs


def generation_kwargs(g: GenerationArgs, tokenizer: Any) -> dict[str, Any]:
    """`model.generate` keyword arguments for greedy, beam, top-k, top-p and temperature decoding."""
    kw: dict[str, Any] = {
        "max_new_tokens": g.max_new_tokens,
        "num_beams": g.num_beams,
        "do_sample": g.do_sample,
        "length_penalty": g.length_penalty,
        "repetition_penalty": g.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if g.no_repeat_ngram_size:
        kw["no_repeat_ngram_size"] = g.no_repeat_ngram_size
    if g.do_sample:
        kw.update(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p)
    else:
        # greedy/beam: unset the sampling knobs so a model's generation_config cannot turn sampling on
        kw.update(temperature=None, top_k=None, top_p=None)
    return kw


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    g: GenerationArgs,
    batch_size: int = 16,
    max_input_length: int = 512,
    decoder_only: bool = False,
    accelerator: Any = None,
    add_special_tokens: bool = True,
    stop_token_ids: list[int] | None = None,
) -> list[str]:
    """Generate one text per prompt, in the prompts' order.

    Prompts are tokenized once and sorted by token count, longest first, so each batch pads little (and the
    biggest batch comes first, so an out-of-memory shows at once). Not by characters: characters per token vary
    from text to text, and on SciTLDR batches formed by characters padded to 12% more positions, each paid for in
    the encoder and again in every decoding step's cross-attention.
    With several processes each takes every n-th batch and the results are gathered as objects, so every prompt
    is generated exactly once. `stop_token_ids` end generation besides the model's EOS (a chat template's
    end-of-turn token).
    """
    import torch

    if not prompts:
        return []
    # no token_type_ids: BERT tokenizers return them, T5's generate() rejects them, and they are all 0
    encoded = tokenizer(prompts, truncation=True, max_length=max_input_length, add_special_tokens=add_special_tokens,
                        return_token_type_ids=False)
    # stable: equal lengths keep the prompts' order
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded["input_ids"][i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    kwargs = generation_kwargs(g, tokenizer)
    if stop_token_ids:
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        kwargs["eos_token_id"] = eos + [t for t in stop_token_ids if t not in eos]
    if g.seed is not None:
        torch.manual_seed(g.seed)
    old_side = tokenizer.padding_side
    if decoder_only:
        tokenizer.padding_side = "left"  # new tokens must follow the prompt directly
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    mine: list[tuple[int, str]] = []
    try:
        from llmtune.progress import bar

        with torch.no_grad():
            for b in bar(batches[rank::world], desc="generating", unit="batch", main=rank == 0, leave=False):
                # padded as the tokenizer would have padded the batch's texts (side, pad id, mask) had it tokenized them
                enc = tokenizer.pad({k: [v[i] for i in b] for k, v in encoded.items()}, padding=True,
                                    return_tensors="pt").to(device)
                if decoder_only:
                    enc.pop("token_type_ids", None)  # BERT-style tokenizers add them; decoders take none
                out = model.generate(**enc, **kwargs)
                if decoder_only:
                    out = out[:, enc["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(out, skip_special_tokens=True)
                mine.extend(zip(b, (t.strip() for t in texts), strict=True))
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    if world > 1:
        from accelerate.utils import gather_object

        mine = gather_object(mine)
    result = [""] * len(prompts)
    for i, text in mine:
        result[i] = text
    return result
