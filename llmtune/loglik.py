"""Log-likelihoods of text under a causal LM, computed the way lm-evaluation-harness 0.4.x (HFLM) does, so that
perplexities and multiple-choice scores agree with it sample by sample.

lm-eval's rules, reproduced here (lm_eval/api/model.py TemplateLM, lm_eval/models/huggingface.py HFLM,
lm_eval/utils.py get_rolling_token_windows / make_disjoint_window):
  - a (context, continuation) pair: trailing whitespace of the context moves to the start of the continuation;
    context + continuation are encoded together and split at the length of the context's own encoding (so a
    merge across the boundary goes to the continuation); an empty context becomes the prefix token (BOS, else EOS);
  - strings are encoded with the tokenizer's default special tokens, except that a string already starting with
    the prefix token's text is encoded without them (a chat-templated prompt carries its own BOS);
  - the model sees (context + continuation)[-(max_length + 1):][:-1]: left truncation, the last token is only
    predicted; max_length defaults to the model config's n_positions / max_position_embeddings / n_ctx, else the
    tokenizer's model_max_length, else 2048;
  - rolling log-likelihood: the document's tokens are cut into windows that predict each token exactly once; the
    first window is conditioned on the prefix token.
Masked LMs have no left-to-right likelihood: `pseudo_loglikelihood` masks each token in turn (Salazar et al.).
No Typer here and no files: pure model code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmtune.errors import LlmtuneError

DEFAULT_MAX_LENGTH = 2048  # lm-eval's HFLM._DEFAULT_MAX_LENGTH
TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length


def prefix_token_id(tokenizer: Any) -> int:
    """lm-eval's HFLM.prefix_token_id: BOS, else EOS. What an empty context and a document's first token see."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is None:
        raise LlmtuneError("the tokenizer has neither a BOS nor an EOS token: nothing to condition the first "
                           "token on")
    return int(tokenizer.eos_token_id)


def model_max_length(model: Any, tokenizer: Any) -> int:
    """lm-eval's resolve_max_length: the text config's positions, else the tokenizer's limit, else 2048."""
    config = getattr(model, "config", None)
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


def encode(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """lm-eval's HFLM.tok_encode (add_bos_token unset): the tokenizer's default special tokens, none where the
    string already starts with the prefix token's text."""
    kwargs: dict[str, bool] = {}
    if add_special_tokens is not None:
        kwargs["add_special_tokens"] = add_special_tokens
    elif text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids of (context, continuation) as lm-eval's loglikelihood splits them."""
    if context == "":
        cont = encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if cont and cont[0] == prefix:  # the continuation starts with the prefix token itself: it is the context
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:  # "Answer: " + "yes" is scored as "Answer:" + " yes", the way the text would be tokenized
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def score_tokens(model: Any, requests: list[tuple[list[int], list[int]]], batch_size: int,
                 max_length: int) -> list[tuple[float, bool]]:
    """(sum of log p(continuation tokens | context), every continuation token is the argmax) per request, for
    requests already encoded; results in input order."""
    import torch

    for i, (ctx, cont) in enumerate(requests):
        if not ctx:
            raise LlmtuneError(f"request {i}: empty context (give the prefix token)")
        if not cont:
            raise LlmtuneError(f"request {i}: the continuation encodes to no tokens: nothing to score")
        if len(cont) > max_length:
            raise LlmtuneError(f"request {i}: the continuation has {len(cont)} tokens, more than the "
                               f"maximum length {max_length}")
    # lm-eval's Collator (group_by="contexts"): requests sharing context + continuation[:-1] (the choices of one
    # question that are one token each) need one forward, of the longest; longest first, so that batches of
    # similar lengths pad little, a memory error shows at once, and the batches are lm-eval's (same shapes, same
    # numbers to the last bit)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(requests):
        groups.setdefault(tuple(ctx + cont[:-1]), []).append(i)
    heads = [max(members, key=lambda i: len(requests[i][1])) for members in groups.values()]
    members_of = {head: groups[tuple(requests[head][0] + requests[head][1][:-1])] for head in heads}
    heads.sort(key=lambda i: (-len(requests[i][0]) - len(requests[i][1]), tuple(requests[i][0] + requests[i][1])))
    device = next(model.parameters()).device
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    with torch.no_grad():
        for start in range(0, len(heads), batch_size):
            chunk = heads[start:start + batch_size]
            # the last token is only predicted; longer inputs lose their oldest context tokens
            inps = [(requests[i][0] + requests[i][1])[-(max_length + 1):][:-1] for i in chunk]
            width = max(map(len, inps))
            # padding on the right with no attention mask, as lm-eval: under causal attention no real position
            # sees a padding token, and the unmasked call takes the same kernels as lm-eval's
            ids = torch.tensor([x + [0] * (width - len(x)) for x in inps], dtype=torch.long, device=device)
            logits = model(input_ids=ids).logits
            logp = torch.log_softmax(logits.float(), dim=-1)  # fp32 whatever the weights' dtype
            for row, head in enumerate(chunk):
                inplen = len(inps[row])
                for i in members_of[head]:
                    cont = requests[i][1]
                    lp = logp[row, inplen - len(cont):inplen]
                    target = torch.tensor(cont, dtype=torch.long, device=device)
                    greedy = bool((lp.argmax(-1) == target).all())
                    out[i] = (float(lp.gather(-1, target[:, None]).sum()), greedy)
    return [r for r in out if r is not None]


def loglikelihood(model: Any, tokenizer: Any, requests: list[tuple[str, str]], batch_size: int,
                  max_length: int | None = None) -> list[tuple[float, bool]]:
    """For each (context, continuation): the summed log-probability of the continuation's tokens and whether
    greedy decoding would produce them (lm-eval's `loglikelihood`)."""
    length = max_length or model_max_length(model, tokenizer)
    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    for (c, x), (_, cont) in zip(requests, encoded, strict=True):
        if not cont:
            raise LlmtuneError(f"continuation {x!r} after {c[-40:]!r} encodes to no tokens: nothing to score")
    return score_tokens(model, encoded, batch_size, length)


def rolling_windows(tokens: list[int], prefix: int, max_length: int,
                    context_len: int) -> Iterator[tuple[list[int], list[int]]]:
    """lm-eval's get_rolling_token_windows followed by make_disjoint_window: (context, tokens to predict) pairs
    that predict every token once. The first window predicts up to max_length tokens after the prefix token;
    each next one predicts up to max_length - context_len + 1 new tokens and sees the tokens before them up to a
    max_length window (so the last, shorter window gets more context)."""
    if not 1 <= context_len <= max_length:
        raise LlmtuneError(f"window context {context_len} must be between 1 and the maximum length {max_length}")
    if not tokens:
        return
    pred_len = max_length - context_len + 1
    first = min(max_length, len(tokens))
    pairs = [([prefix] + tokens[:first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        pairs.append((tokens[max(end - max_length - 1, 0):end - 1], tokens[end - n:end]))
        predicted += n
    for a, b in pairs:
        yield a[:len(a) - (len(b) - 1)], b


def loglikelihood_rolling(model: Any, tokenizer: Any, texts: list[str], max_length: int | None = None,
                          stride: int | None = None, batch_size: int = 8) -> list[dict[str, Any]]:
    """Per text: {"loglikelihood": summed log-probability of every token, "tokens": how many were scored,
    "windows": forward windows used}.

    Without `stride`: lm-eval's loglikelihood_rolling (disjoint windows of max_length tokens, context_len=1).
    With `stride`: the strided method of the transformers perplexity guide, each window scoring only the (up
    to) `stride` tokens no earlier window scored, with at least max_length - stride tokens of context before
    them; it is lm-eval's window scheme with context_len = max_length - stride + 1, so stride == max_length is
    the default."""
    length = max_length or model_max_length(model, tokenizer)
    step = length if stride is None else stride
    if not 1 <= step <= length:
        raise LlmtuneError(f"--stride {step}: must be between 1 and the maximum length {length}")
    prefix = prefix_token_id(tokenizer)
    windows: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    counts = []
    for t, text in enumerate(texts):
        tokens = encode(tokenizer, text)
        counts.append(len(tokens))
        for pair in rolling_windows(tokens, prefix, length, length - step + 1):
            windows.append(pair)
            owner.append(t)
    # lm-eval scores the windows in their order, batch_size at a time: the same batches, the same numbers
    scores = [r for b in range(0, len(windows), batch_size)
              for r in score_tokens(model, windows[b:b + batch_size], batch_size, length)]
    out = [{"loglikelihood": 0.0, "tokens": n, "windows": 0} for n in counts]
    for t, (ll, _) in zip(owner, scores, strict=True):
        out[t]["loglikelihood"] += ll
        out[t]["windows"] += 1
    return out


def pseudo_loglikelihood(model: Any, tokenizer: Any, texts: list[str], max_length: int | None = None,
                         batch_size: int = 8) -> list[dict[str, Any]]:
    """A masked LM's pseudo-log-likelihood (Salazar et al., 2020, "Masked Language Model Scoring"): each token
    masked in turn and scored given all the others; per text {"loglikelihood", "tokens", "windows"}. A text longer
    than the model's positions is cut into consecutive windows of max_length - 2 tokens, each between the
    tokenizer's own special tokens ([CLS] ... [SEP])."""
    import torch

    if tokenizer.mask_token_id is None:
        raise LlmtuneError("the tokenizer has no mask token: pseudo-perplexity needs a masked LM")
    length = max_length or model_max_length(model, tokenizer)
    # what frames every window: [CLS] ... [SEP] for BERT, <s> ... </s> for RoBERTa
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    prefix, suffix = [t for t in (first,) if t is not None], [t for t in (last,) if t is not None]
    n_special = len(prefix) + len(suffix)
    if length <= n_special:
        raise LlmtuneError(f"--max-length {length}: leaves no room for text between the special tokens")
    body = length - n_special
    device = next(model.parameters()).device
    rows: list[tuple[int, list[int], int]] = []  # (text, framed window, position to mask)
    out = []
    for t, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=False)
        windows = [ids[i:i + body] for i in range(0, len(ids), body)]
        for w in windows:
            framed = prefix + w + suffix
            rows.extend((t, framed, len(prefix) + j) for j in range(len(w)))
        out.append({"loglikelihood": 0.0, "tokens": len(ids), "windows": len(windows)})
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r[1]) for r in chunk)
            pad = tokenizer.pad_token_id or 0
            ids = torch.tensor([r[1] + [pad] * (width - len(r[1])) for r in chunk], device=device)
            mask = torch.tensor([[1] * len(r[1]) + [0] * (width - len(r[1])) for r in chunk], device=device)
            pos = torch.tensor([r[2] for r in chunk], device=device)
            rows_idx = torch.arange(len(chunk), device=device)
            target = ids[rows_idx, pos].clone()
            ids[rows_idx, pos] = tokenizer.mask_token_id
            logits = model(input_ids=ids, attention_mask=mask).logits[rows_idx, pos]
            lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target[:, None])[:, 0]
            for (t, _, _), v in zip(chunk, lp.tolist(), strict=True):
                out[t]["loglikelihood"] += v
    return out
