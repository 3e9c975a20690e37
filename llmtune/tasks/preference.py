"""Preference tuning of decoders on (prompt, chosen, rejected) pairs: DPO, IPO, and the reference-free ORPO and SimPO.

The formulas are TRL's, so curves and numbers compare: DPO and IPO as in `DPOTrainer` (loss_type "sigmoid" with
cDPO label smoothing, and "ipo" on per-token averaged log-ratios), SimPO as in `CPOTrainer(loss_type="simpo",
cpo_alpha=0)` and ORPO as in `ORPOTrainer` (its NLL term over the chosen sequence, prompt included, as TRL does).
Tokenization follows `DPOTrainer` too: the prompt and prompt + response are tokenized whole and the response is
what follows their common token prefix, so a token that merges across the boundary is counted once, where TRL
counts it.

Chosen and rejected go through the model as one batch (each batch row holds a pair: input_ids is pairs x 2 x
length). The reference of DPO/IPO is the base model with the adapter switched off when LoRA is on (no second copy
in memory), else a frozen copy of the starting weights. The training loop's `loss(model, batch)` hook has no
recipe argument, so the settings and the reference are kept per model object in `_STATE` (see load_model). With
`preference.precompute_reference` the reference's log-probabilities are columns of the tokenized splits
(`with_model`, before training), and the collator carries them into each batch instead.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmtune.data import Split, as_text, require_column
from llmtune.errors import LlmtuneError
from llmtune.schema import DataArgs, TrainArgs
from llmtune.tasks import EvalContext, LoadedRun, PromptSpec
from llmtune.tasks import causal_lm as clm

if TYPE_CHECKING:
    from llmtune.schema import Recipe

logger = logging.getLogger("llmtune")

MODEL_CLASS = "AutoModelForCausalLM"
PEFT_TASK_TYPE = "CAUSAL_LM"
LORA_DEFAULT = True
GENERATE_DEFAULT = False
GENERATES = True  # its runs generate text: the generation section and eval.generate apply
#: the untrained policy's numbers (loss log 2, accuracy 0.5 for DPO) are the baseline of a run
EVAL_BEFORE_TRAINING = True
DEFAULT_METRIC = "rewards/accuracies"  # TRL's name
GREATER_IS_BETTER = True
TOKEN_LEVEL_LOSS = False  # a loss per pair, not a token NLL: no perplexity
DECODER_ONLY = True

HH_TURN = "\n\nAssistant:"  # Anthropic HH-RLHF transcripts: the last assistant turn starts the response


@dataclass
class Data(DataArgs):
    # auto: message lists -> chat; prompt strings -> chat when the tokenizer has a chat template; transcripts without
    # a prompt column (HH-RLHF) -> text. text: strings joined as they are (TRL's non-conversational form).
    format: Literal["auto", "chat", "text"] = "auto"
    prompt_column: str = "prompt"  # absent from the data: the prompt is split off chosen/rejected
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    template: str | None = None  # a chat template for a tokenizer without one (causal_lm's built-ins or Jinja)


@dataclass
class Train(TrainArgs):
    # a prompt longer than this keeps its last max_prompt_length tokens when prompt + response exceed
    # max_seq_length (TRL 0.x's keep_end); unset, prompt + response is cut at max_seq_length (TRL 1.x)
    max_prompt_length: int | None = None


@dataclass
class PreferenceArgs:
    loss: Literal["dpo", "ipo", "orpo", "simpo"] = "dpo"
    beta: float = 0.1  # DPO/IPO/SimPO temperature (IPO's tau)
    label_smoothing: float = 0.0  # cDPO / SimPO: the probability that a pair's preference is flipped
    gamma: float = 0.5  # SimPO's target reward margin
    orpo_lambda: float = 0.1  # ORPO's lambda (TRL ORPOConfig.beta), weight of the odds-ratio term
    # DPO/IPO: the reference's log-probabilities of every pair computed once before training (train and eval
    # splits) and kept with the tokenized cache; no reference forward per step, no frozen copy in memory
    precompute_reference: bool = False


OPTIONS: dict[str, type] = {"data": Data, "train": Train, "preference": PreferenceArgs}

REFERENCE_LOSSES = ("dpo", "ipo")


@dataclass
class Info:
    """The resolved prompt layout (chat template or plain text), the loss and the base model, so that generation
    from the run renders prompts as training did (causal_lm's functions read `prompt_format`)."""

    format: str = "chat"
    prompt_format: str | None = "chat"
    loss: str = "dpo"
    base_model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def settings(recipe: Recipe) -> PreferenceArgs:
    return recipe.section("preference")  # type: ignore[no-any-return]


def check_recipe(recipe: Recipe) -> None:
    clm.resolve_template(recipe.data.template)
    p, s = settings(recipe), recipe.source
    if p.beta <= 0:
        raise LlmtuneError(f"{s}: preference.beta must be > 0, got {p.beta}")
    if p.orpo_lambda < 0:
        raise LlmtuneError(f"{s}: preference.orpo_lambda cannot be negative, got {p.orpo_lambda}")
    if not 0 <= p.label_smoothing < 0.5:
        raise LlmtuneError(f"{s}: preference.label_smoothing must be in [0, 0.5), got {p.label_smoothing}")
    if p.label_smoothing and p.loss in ("ipo", "orpo"):
        raise LlmtuneError(f"{s}: preference.label_smoothing applies to dpo and simpo, not to {p.loss}")
    if p.precompute_reference and p.loss not in REFERENCE_LOSSES:
        raise LlmtuneError(f"{s}: preference.precompute_reference applies to dpo and ipo; {p.loss} uses no "
                           "reference model")
    mp = recipe.train.max_prompt_length
    if mp is not None and not 1 <= mp < recipe.train.max_seq_length:
        raise LlmtuneError(f"{s}: train.max_prompt_length must be at least 1 and below train.max_seq_length "
                           f"({recipe.train.max_seq_length}), got {mp}")


def recognizes(config: dict[str, Any]) -> bool:
    return False  # a plain decoder folder is causal_lm's; preference runs carry llmtune_info.json


# ---- rows: (prompt, chosen, rejected), with the prompt split off transcripts ------------------------------


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str) for t in value)


def _turns(value: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": t["role"], "content": t["content"]} for t in value]


def split_transcripts(chosen: Any, rejected: Any) -> tuple[Any, Any, Any] | None:
    """(prompt, chosen response, rejected response) of two full dialogues that share their start, or None.

    Strings in the HH-RLHF form are cut after the last "\\n\\n\\nAssistant:" of chosen (rejected must start with the
    same text); other strings at their longest common prefix, backed off a space (TRL's extract_prompt); message
    lists at their longest common run of turns.
    """
    if isinstance(chosen, str) and isinstance(rejected, str):
        cut = chosen.rfind(HH_TURN)
        if cut >= 0 and rejected.startswith(chosen[:cut + len(HH_TURN)]):
            end = cut + len(HH_TURN)
        else:
            end = 0
            for a, b in zip(chosen, rejected, strict=False):
                if a != b:
                    break
                end += 1
            if end and end < min(len(chosen), len(rejected)) and chosen[end - 1] == " ":
                end -= 1
        if end == 0:
            return None
        return chosen[:end], chosen[end:], rejected[end:]
    if _is_messages(chosen) and _is_messages(rejected):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        if k == 0:
            return None
        return _turns(chosen[:k]), _turns(chosen[k:]), _turns(rejected[k:])
    return None


def _empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return not value or all(not str(t.get("content", "")).strip() for t in value if isinstance(t, dict))
    return True


class BlankResponse(LlmtuneError):
    """A transcript pair (no prompt column) whose chosen or rejected turn is empty after the shared prompt: HH-RLHF
    has a few (a dialogue that ends on an empty "Assistant:"). Such pairs are skipped with a warning that counts
    them; TRL trains on them as a lone end-of-turn token, which teaches nothing about the preference."""


def row_parts(recipe: Recipe, row: dict[str, Any], where: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of one raw row, each text or a list of turns; LlmtuneError naming the row."""
    d = recipe.data
    values = {}
    for key, col in (("chosen", d.chosen_column), ("rejected", d.rejected_column)):
        v = row.get(col)
        if not (isinstance(v, str) or _is_messages(v)):
            raise LlmtuneError(f"{where}: column '{col}' (data.{key}_column) holds {v!r}, expected text or a list of "
                               "{role, content} turns")
        values[key] = v
    if d.prompt_column in row:
        prompt = row[d.prompt_column]
        if not (isinstance(prompt, str) or _is_messages(prompt)):
            raise LlmtuneError(f"{where}: column '{d.prompt_column}' (data.prompt_column) holds {prompt!r}, expected "
                               "text or a list of {role, content} turns")
        if _empty(prompt):
            raise LlmtuneError(f"{where}: column '{d.prompt_column}' (data.prompt_column) is empty")
        parts = (prompt, values["chosen"], values["rejected"])
    else:
        split = split_transcripts(values["chosen"], values["rejected"])
        if split is None:
            raise LlmtuneError(f"{where}: chosen and rejected share no prompt (no common start up to the last "
                               f"assistant turn), and there is no '{d.prompt_column}' column (data.prompt_column) "
                               "to give it")
        parts = split
    for key, v in (("chosen", parts[1]), ("rejected", parts[2])):
        if _empty(v):
            col = d.chosen_column if key == "chosen" else d.rejected_column
            if d.prompt_column not in row:
                raise BlankResponse(f"{where}: the {key} response (column '{col}') is empty after the shared prompt")
            raise LlmtuneError(f"{where}: the {key} response (column '{col}') is empty")
    return parts


def _warn_blank(origin: str, rows: list[int], total: int) -> None:
    if rows:
        shown = ", ".join(str(r + 1) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        logger.warning("%s: %d of %d pairs have an empty chosen or rejected response after the shared prompt (row%s "
                       "%s) and are skipped", origin, len(rows), total, "s" if len(rows) > 1 else "", shown)


def validate(recipe: Recipe, split: Split) -> None:
    d = recipe.data
    require_column(split, d.chosen_column, "data.chosen_column")
    require_column(split, d.rejected_column, "data.rejected_column")
    blank = []
    for i, row in enumerate(split.dataset):
        try:
            parts = row_parts(recipe, row, f"{split.origin}: row {i + 1}")
        except BlankResponse:
            blank.append(i)
            continue
        if d.format == "text" and any(not isinstance(p, str) for p in parts):
            raise LlmtuneError(f"{split.origin}: row {i + 1}: data.format=text needs text cells, not lists of turns")
    if len(blank) == len(split.dataset):
        raise LlmtuneError(f"{split.origin}: every pair has an empty chosen or rejected response after the shared "
                           "prompt")


def _layout(recipe: Recipe, split: Split, tokenizer: Any) -> str:
    """chat or text: how the rows become token ids."""
    d = recipe.data
    has_template = d.template is not None or bool(getattr(tokenizer, "chat_template", None))
    first = split.dataset[0]
    lists = any(_is_messages(first.get(c)) for c in (d.prompt_column, d.chosen_column, d.rejected_column))
    fmt = d.format
    if fmt == "auto":
        fmt = "chat" if lists or (has_template and d.prompt_column in split.dataset.column_names) else "text"
    if fmt == "chat" and not has_template:
        raise LlmtuneError(f"{recipe.source}: chat rows need a chat template, and the tokenizer of "
                           f"'{recipe.model.name}' has none; set data.template (built-in: "
                           f"{', '.join(clm.TEMPLATES)}, or a Jinja template) or data.format=text")
    return fmt


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    from llmtune.lora import check_qlora

    if recipe.lora_enabled:
        check_qlora(recipe.lora)
    info = Info(loss=settings(recipe).loss, base_model=recipe.model.name)
    if tokenizer is None:
        return info
    template = clm.resolve_template(recipe.data.template)
    if template is not None:
        tokenizer.chat_template = template  # saved with the run's tokenizer: generation renders as training did
    # `llmtune eval` on a base model loads no train split: any split shows the rows' layout
    info.format = info.prompt_format = _layout(recipe, splits.get("train") or next(iter(splits.values())), tokenizer)
    return info


# ---- tokenization -----------------------------------------------------------------------------------------


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_pair(tokenizer: Any, layout: str, prompt: Any, chosen: Any, rejected: Any
                ) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the prompt and of each response, as TRL's DPOTrainer makes them: the prompt alone and the
    prompt + response are tokenized whole, and the response is what follows their common prefix."""
    if layout == "chat":
        def as_turns(v: Any, role: str) -> list[dict[str, str]]:
            return _turns(v) if isinstance(v, list) else [{"role": role, "content": v}]

        p = as_turns(prompt, "user")

        def ids(turns: list[dict[str, str]], gen: bool) -> list[int]:
            return list(tokenizer(clm.render_chat(tokenizer, turns, add_generation_prompt=gen),
                                  add_special_tokens=False)["input_ids"])

        prompt_ids = ids(p, True)
        full = [ids(p + as_turns(r, "assistant"), False) for r in (chosen, rejected)]
    else:
        eos = tokenizer.eos_token or ""

        def text(v: Any) -> str:
            return as_text(v) or ""

        prompt_ids = list(tokenizer(text(prompt))["input_ids"])
        full = [list(tokenizer(text(prompt) + (text(r) if text(r).endswith(eos) else text(r) + eos))["input_ids"])
                for r in (chosen, rejected)]
    n = min(_common_prefix(prompt_ids, f) for f in full)
    return prompt_ids[:n], full[0][n:], full[1][n:]


def truncate(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int,
             max_prompt_length: int | None) -> tuple[list[int], list[int], list[int], str | None]:
    """Fit prompt + each response into max_length, and say how ("prompt", "response", "dropped" or None).

    With max_prompt_length, a prompt too long for the longer response keeps its last max_prompt_length tokens
    (TRL 0.x keep_end); then responses keep their first max_length - len(prompt) tokens (TRL 1.x keep_start on
    the whole sequence). A prompt that leaves no room drops the pair ("dropped")."""
    how = None
    if len(prompt) + max(len(chosen), len(rejected)) > max_length:
        how = "response"
        if max_prompt_length is not None and len(prompt) > max_prompt_length:
            prompt, how = prompt[-max_prompt_length:], "prompt"
        room = max_length - len(prompt)
        if room <= 0:
            return prompt, [], [], "dropped"
        chosen, rejected = chosen[:room], rejected[:room]
    return prompt, chosen, rejected, how


def _encode(batch: dict[str, list[Any]], indices: list[int], recipe: Recipe, tokenizer: Any, layout: str,
            origin: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"input_ids": [], "rejected_input_ids": [], "prompt_length": [], "row": [],
                                 "truncated": []}
    t = recipe.train
    for k, i in enumerate(indices):
        row = {c: batch[c][k] for c in batch}
        try:
            prompt, chosen, rejected = row_parts(recipe, row, f"{origin}: row {i + 1}")
        except BlankResponse:  # skipped (tokenize warns once, counting them)
            for key in ("input_ids", "rejected_input_ids"):
                out[key].append([])
            out["prompt_length"].append(0)
            out["row"].append(i)
            out["truncated"].append("blank")
            continue
        p, c, r = encode_pair(tokenizer, layout, prompt, chosen, rejected)
        p, c, r, how = truncate(p, c, r, t.max_seq_length, t.max_prompt_length)
        out["input_ids"].append(p + c)
        out["rejected_input_ids"].append(p + r)
        out["prompt_length"].append(len(p))
        out["row"].append(i)
        out["truncated"].append(how or "")
    return out


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    ds = split.dataset
    layout = info.prompt_format or "chat"
    ds = ds.map(_encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                fn_kwargs={"recipe": recipe, "tokenizer": tokenizer, "layout": layout, "origin": split.origin},
                desc=f"Tokenizing {split.name}")
    how = ds["truncated"]
    blank = [r for r, h in zip(ds["row"], how, strict=True) if h == "blank"]
    _warn_blank(split.origin, blank, len(how))
    if blank:
        ds = ds.filter(lambda h: h != "blank", input_columns="truncated", desc="Dropping pairs with a blank response")
        how = ds["truncated"]
    n_prompt, n_resp, n_drop = how.count("prompt"), how.count("response"), how.count("dropped")
    if n_prompt or n_resp or n_drop:
        t = recipe.train
        logger.warning("%s: %d of %d pairs exceed train.max_seq_length=%d: %d kept with responses cut, %d of them "
                       "with the prompt cut to its last train.max_prompt_length=%s tokens; %d dropped (the prompt "
                       "leaves no room for a response)", split.origin, n_prompt + n_resp + n_drop, len(how),
                       t.max_seq_length, n_prompt + n_resp, n_prompt, t.max_prompt_length, n_drop)
    if n_drop:
        ds = ds.filter(lambda h: h != "dropped", input_columns="truncated", desc="Dropping pairs without room")
    if len(ds) == 0 and split.name != "train":
        raise LlmtuneError(f"{split.origin}: no pair fits train.max_seq_length={recipe.train.max_seq_length}")
    return ds.remove_columns("truncated")


# ---- model, reference, collator ---------------------------------------------------------------------------

#: per model object: (settings, frozen reference or None). The loop's loss(model, batch) gets no recipe.
_STATE: weakref.WeakKeyDictionary[Any, tuple[PreferenceArgs, Any]] = weakref.WeakKeyDictionary()


def attach(model: Any, args: PreferenceArgs, reference: Any = None) -> Any:
    """Give `model` its preference settings and (full-weight DPO/IPO) its frozen reference."""
    if reference is not None:
        reference.eval()
        reference.requires_grad_(False)
    _STATE[model] = (args, reference)
    return model


def _unwrap(model: Any) -> Any:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _state(model: Any) -> tuple[Any, PreferenceArgs, Any]:
    inner = _unwrap(model)
    if inner not in _STATE:
        raise LlmtuneError("internal: a preference model without settings (load it with the preference task)")
    args, ref = _STATE[inner]
    return inner, args, ref


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    import copy

    model = clm.load_model(recipe, tokenizer, info)  # causal_lm's loader: LoRA with the same PEFT type
    p = settings(recipe)
    ref = None
    if p.loss in REFERENCE_LOSSES and not recipe.lora_enabled and not p.precompute_reference:
        ref = copy.deepcopy(model)  # full weights: the reference is the starting point, frozen
    return attach(model, p, ref)


def _weights_digest(model: Any) -> str:
    """A digest of the weights the reference is computed from (the base's, LoRA factors left out): a retrained
    model in the same folder must not reuse reference log-probabilities cached for the old one. Two float64
    sums per tensor: one pass over the weights, a tensor at a time."""
    import hashlib

    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in _unwrap(model).named_parameters():
            if "lora_" in name:
                continue
            sums = torch.stack([p.sum(dtype=torch.float64), p.abs().sum(dtype=torch.float64)]).tolist()
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{sums[0]!r}:{sums[1]!r};".encode())
    return h.hexdigest()


def with_model(recipe: Recipe, tokenizer: Any, model: Any, ds: Any, split: str, accelerator: Any) -> Any:
    """With preference.precompute_reference: `ds` with the reference's log-probability of each pair's chosen and
    rejected response (columns ref_chosen_logps, ref_rejected_logps), computed once before training; else `ds`.

    The reference is the starting model (LoRA: the adapter switched off), in eval mode, on the accelerator's
    device, in the precision of the forward each value replaces (eval runs in fp32: hardware.full_precision).
    The result is a datasets.map cached with the tokenized split, under a fingerprint of the split, the weights,
    the model settings, the precision and the device: a changed model or data computes anew."""
    import contextlib
    import hashlib
    import json

    import torch

    p = settings(recipe)
    if not p.precompute_reference or p.loss not in REFERENCE_LOSSES:
        return ds
    inner = _unwrap(model)
    device = accelerator.device
    try:
        inner.to(device)  # where prepare() would put it; the scoring runs there
    except ValueError:  # a quantized (QLoRA) base is placed at load and refuses .to()
        device = next(inner.parameters()).device
    lora = hasattr(inner, "disable_adapter")
    # as the forward each replaces: the adapter-off reference of a LoRA run goes through the prepared model's
    # autocast, the frozen copy of a full-weight run (never prepared) in fp32
    precision = str(accelerator.mixed_precision) if split == "train" and lora else "fp32"
    key = {"data": ds._fingerprint, "weights": _weights_digest(inner), "model": recipe.fingerprint("model"),
           "precision": precision, "device": device.type, "torch": torch.__version__}
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    collate = collator(recipe, tokenizer, model)
    autocast = accelerator.autocast if precision != "fp32" else contextlib.nullcontext
    adapter_off = inner.disable_adapter if lora else contextlib.nullcontext

    done: list[Any] = []

    def every_pair() -> Any:
        """(pairs, 2) log-probs of the whole split, in the eval loader's batches (longest first, as
        batching.eval_loader; each process's slice of a global batch is one of them) and eval_step's
        sub-batches: the same shapes as the eval forward, so an untrained policy ties with its reference
        exactly (DPO's 0.5 baseline), not to rounding."""
        cols = ("input_ids", "rejected_input_ids", "prompt_length")
        lengths = [len(x) for x in ds["input_ids"]]
        order = sorted(range(len(ds)), key=lambda i: -lengths[i])
        size = max(1, recipe.train.per_device_eval_batch_size)
        out = torch.zeros((len(ds), 2), dtype=torch.float32)
        for s in range(0, len(order), size):
            rows = order[s:s + size]
            sel = ds[rows]
            b = collate([{c: sel[c][j] for c in cols} for j in range(len(rows))])
            for part, lp in _by_logits_budget(inner, {k: v.to(device) for k, v in b.items()}):
                ids, att, resp = _flat(lp)
                with torch.no_grad(), autocast(), adapter_off():
                    logps = sequence_logps(inner, ids, att, resp)["logps"].float().cpu()
                out[[rows[j] for j in part]] = logps.view(-1, 2)
        return out

    def column(_: Any, indices: list[int]) -> dict[str, list[float]]:
        if not done:  # computed on the first call only: a cached split never calls this
            done.append(every_pair())
        values = done[0][indices]
        return {"ref_chosen_logps": values[:, 0].tolist(), "ref_rejected_logps": values[:, 1].tolist()}

    was_training = inner.training
    inner.eval()
    try:
        return ds.map(column, batched=True, with_indices=True, input_columns=["prompt_length"],
                      new_fingerprint=fingerprint, desc=f"Reference log-probabilities ({split})")
    finally:
        inner.train(was_training)


class PairCollator:
    """Pairs -> input_ids / attention_mask / response_mask of shape (pairs, 2, length): [:, 0] chosen, [:, 1]
    rejected, right-padded. Rows per batch are pairs, so the loop's samples/s counts pairs."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seqs = [(list(f["input_ids"]), list(f["rejected_input_ids"]), int(f["prompt_length"])) for f in features]
        width = max(max(len(c), len(r)) for c, r, _ in seqs)
        ids = torch.full((len(seqs), 2, width), self.pad, dtype=torch.long)
        att = torch.zeros((len(seqs), 2, width), dtype=torch.long)
        resp = torch.zeros((len(seqs), 2, width), dtype=torch.long)
        for b, (c, r, p) in enumerate(seqs):
            for j, s in enumerate((c, r)):
                ids[b, j, :len(s)] = torch.tensor(s, dtype=torch.long)
                att[b, j, :len(s)] = 1
                resp[b, j, p:len(s)] = 1
        batch = {"input_ids": ids, "attention_mask": att, "response_mask": resp}
        if "ref_chosen_logps" in features[0]:  # precomputed (with_model): (pairs, 2), fp32 as a forward gives
            batch["ref_logps"] = torch.tensor([[f["ref_chosen_logps"], f["ref_rejected_logps"]] for f in features],
                                              dtype=torch.float32)
        if "idx" in features[0]:
            batch["idx"] = torch.tensor([f["idx"] for f in features])
            batch["row"] = torch.tensor([f["row"] for f in features])
        return batch


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PairCollator(pad if pad is not None else 0)


# ---- log-probabilities and the losses ---------------------------------------------------------------------


def sequence_logps(model: Any, input_ids: Any, attention_mask: Any, response_mask: Any, nll: bool = False
                   ) -> dict[str, Any]:
    """Per-sequence sums of response-token log-probabilities and response token counts (rows of input_ids), and
    with `nll` the sum and count of next-token NLL over every real token after the first (ORPO's NLL term).

    Logits are computed only from the first position that predicts a response token on (`logits_to_keep`) unless
    the NLL needs them all: the prompt's output-layer work and softmax are skipped."""
    import torch

    width = input_ids.shape[1]
    target_mask = response_mask[:, 1:].bool()
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    start = 0
    if not nll and clm._keeps_logits(model) and bool(target_mask.any()):
        start = int(target_mask.any(0).nonzero()[0])  # first position that predicts a response token
        kwargs["logits_to_keep"] = width - start
    logits = model(**kwargs).logits
    logits = logits[:, : width - 1 - start].float()  # position p predicts token p + 1
    targets = input_ids[:, start + 1:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    mask = target_mask[:, start:]
    out = {"logps": (token_logps * mask).sum(-1), "counts": mask.sum(-1)}
    if nll:
        real = attention_mask[:, 1:].bool()
        out["nll_sum"] = -(token_logps * real).sum(-1)
        out["nll_count"] = real.sum(-1)
    return out


def _flat(batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    b, two, width = batch["input_ids"].shape
    return tuple(batch[k].reshape(b * two, width) for k in ("input_ids", "attention_mask", "response_mask"))


def pair_logps(model: Any, batch: dict[str, Any], args: PreferenceArgs, reference: Any = None) -> dict[str, Any]:
    """Policy (and for DPO/IPO reference) log-probabilities of each pair's chosen and rejected response, from one
    forward of the concatenated batch each. Tensors of shape (pairs,)."""
    import torch

    ids, att, resp = _flat(batch)
    pol = sequence_logps(model, ids, att, resp, nll=args.loss == "orpo")
    out = {"chosen_logps": pol["logps"][0::2], "rejected_logps": pol["logps"][1::2],
           "chosen_count": pol["counts"][0::2], "rejected_count": pol["counts"][1::2]}
    if args.loss == "orpo":
        out["nll_sum"], out["nll_count"] = pol["nll_sum"][0::2], pol["nll_count"][0::2]
    if args.loss in REFERENCE_LOSSES and "ref_logps" in batch:  # precomputed before training
        out["ref_chosen_logps"], out["ref_rejected_logps"] = batch["ref_logps"][:, 0], batch["ref_logps"][:, 1]
    elif args.loss in REFERENCE_LOSSES:
        with torch.no_grad():
            if reference is not None:
                dev = ids.device
                if next(reference.parameters()).device != dev:
                    reference.to(dev)
                ref = sequence_logps(reference, ids, att, resp)
            else:
                inner = _unwrap(model)
                if not hasattr(inner, "disable_adapter"):
                    raise LlmtuneError("internal: DPO/IPO without LoRA needs a frozen reference model")
                with inner.disable_adapter():  # the base model: the adapter switched off, no second copy
                    ref = sequence_logps(inner, ids, att, resp)
        out["ref_chosen_logps"], out["ref_rejected_logps"] = ref["logps"][0::2], ref["logps"][1::2]
    return out


def _log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2 (as TRL's ORPO)."""
    import torch

    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def preference_losses(args: PreferenceArgs, lp: dict[str, Any]) -> dict[str, Any]:
    """Per-pair losses and rewards, and the logps TRL logs, from pair_logps' tensors (float64 or float32).

    dpo:   -(1-eps) logsigmoid(beta d) - eps logsigmoid(-beta d), d = (pi_c - ref_c) - (pi_r - ref_r), sums
    ipo:   (d_c/n_c - d_r/n_r - 1/(2 beta))^2 with d = pi - ref (TRL averages the log-ratios per token)
    simpo: as dpo on d = a_c - a_r - gamma/beta with a = pi/n (average log-prob), no reference
    orpo:  per pair -lambda logsigmoid(log odds(a_c) - log odds(a_r)); the NLL of chosen is added by the caller
    Rewards: beta (pi - ref) for dpo/ipo; beta a for simpo; lambda a for orpo."""
    import torch.nn.functional as F

    c, r = lp["chosen_logps"], lp["rejected_logps"]
    nc, nr = lp["chosen_count"].clamp(min=1).to(c.dtype), lp["rejected_count"].clamp(min=1).to(c.dtype)
    beta, eps = args.beta, args.label_smoothing
    out: dict[str, Any] = {}
    if args.loss in REFERENCE_LOSSES:
        dc, dr = c - lp["ref_chosen_logps"], r - lp["ref_rejected_logps"]
        if args.loss == "dpo":
            z = beta * (dc - dr)
            out["losses"] = -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps
        else:
            out["losses"] = (dc / nc - dr / nr - 1 / (2 * beta)) ** 2
        out["chosen_rewards"], out["rejected_rewards"] = beta * dc, beta * dr
        out["logps_chosen"], out["logps_rejected"] = c, r
    elif args.loss == "simpo":
        ac, ar = c / nc, r / nr
        z = beta * (ac - ar - args.gamma / beta)
        out["losses"] = -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps
        out["chosen_rewards"], out["rejected_rewards"] = beta * ac, beta * ar
        out["logps_chosen"], out["logps_rejected"] = ac, ar
    else:
        ac, ar = c / nc, r / nr
        log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
        ratio = F.logsigmoid(log_odds)
        out["losses"] = -args.orpo_lambda * ratio
        out["log_odds_ratio"], out["log_odds_chosen"] = ratio, log_odds
        out["chosen_rewards"], out["rejected_rewards"] = args.orpo_lambda * ac, args.orpo_lambda * ar
        out["logps_chosen"], out["logps_rejected"] = ac, ar
    return out


def loss(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The training objective (the loop's hook): the batch mean of the per-pair losses (+ ORPO's chosen NLL, the
    token mean over the batch as TRL computes it), and per-pair values of TRL's training metrics, which the loop
    averages over the pairs of a logging window (accuracy and margin first: the progress bar shows those)."""
    _, args, ref = _state(model)
    lp = pair_logps(model, batch, args, ref)
    out = preference_losses(args, lp)
    value = out["losses"].mean()
    cr, rr = out["chosen_rewards"].detach(), out["rejected_rewards"].detach()
    extras: dict[str, Any] = {"rewards/accuracies": (cr > rr).float() + 0.5 * (cr == rr).float(),
                              "rewards/margins": cr - rr, "rewards/chosen": cr, "rewards/rejected": rr,
                              "logps/chosen": out["logps_chosen"].detach(),
                              "logps/rejected": out["logps_rejected"].detach()}
    if args.loss == "orpo":
        nll = lp["nll_sum"].sum() / lp["nll_count"].sum().clamp(min=1)
        value = value + nll
        extras.update({"nll_loss": nll.detach(), "log_odds_ratio": out["log_odds_ratio"].detach(),
                       "log_odds_chosen": out["log_odds_chosen"].detach()})
    return value, extras


# ---- evaluation -------------------------------------------------------------------------------------------

#: logits of one eval forward are at most this many floats (sequences x length x vocab), as causal_lm's eval
EVAL_LOGITS_BUDGET = clm.EVAL_LOGITS_BUDGET


def _by_logits_budget(model: Any, batch: dict[str, Any]) -> list[tuple[range, dict[str, Any]]]:
    """(positions, sub-batch) of a few pairs at a time, so that one forward's logits stay within
    EVAL_LOGITS_BUDGET (eval_step, and with_model that must match its shapes)."""
    pairs, _, width = batch["input_ids"].shape
    vocab = int(getattr(getattr(_unwrap(model), "config", None), "vocab_size", 0) or 50_000)
    step = max(1, EVAL_LOGITS_BUDGET // max(1, 2 * width * vocab))
    return [(range(s, min(s + step, pairs)), {k: v[s:s + step] for k, v in batch.items()})
            for s in range(0, pairs, step)]


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Per pair: policy (and reference) log-probs, response token counts, ORPO's NLL parts, the raw row index.
    Forwards a few pairs at a time so the logits stay within EVAL_LOGITS_BUDGET."""
    import torch

    _, args, ref = _state(model)
    rows = batch.pop("row")
    parts = [pair_logps(model, sub, args, ref) for _, sub in _by_logits_budget(model, batch)]
    out = {k: torch.cat([p[k] for p in parts]).to(torch.float64) for k in parts[0]}
    out["row"] = rows
    return out


def metrics_from_logps(args: PreferenceArgs, outputs: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Split-level metrics with TRL's names (exact means over pairs; the loss of ORPO adds the token-mean NLL of
    every chosen sequence) and the per-pair values. A tie in reward counts half in rewards/accuracies (an
    untrained policy against itself scores 0.5, not TRL's 0)."""
    out = preference_losses(args, outputs)
    cr, rr = out["chosen_rewards"], out["rejected_rewards"]
    correct = (cr > rr).double() + 0.5 * (cr == rr).double()
    value = float(out["losses"].mean())
    metrics: dict[str, float] = {}
    if args.loss == "orpo":
        nll = float(outputs["nll_sum"].sum() / outputs["nll_count"].sum().clamp(min=1))
        value += nll
        metrics.update({"nll_loss": nll, "log_odds_ratio": float(out["log_odds_ratio"].mean()),
                        "log_odds_chosen": float(out["log_odds_chosen"].mean())})
    metrics = {"loss": value, "rewards/chosen": float(cr.mean()), "rewards/rejected": float(rr.mean()),
               "rewards/accuracies": float(correct.mean()), "rewards/margins": float((cr - rr).mean()),
               "logps/chosen": float(out["logps_chosen"].mean()), "logps/rejected": float(out["logps_rejected"].mean()),
               **metrics}
    return metrics, {**out, "correct": correct}


def _shown(value: Any) -> Any:
    return value if isinstance(value, str) else [dict(t) for t in value]


def metric_names(recipe: Recipe, info: Info | None) -> list[str]:
    names = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected"]
    if recipe.section("preference").loss == "orpo":
        names += ["nll_loss", "log_odds_ratio", "log_odds_chosen"]
    return names


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    if not outputs:
        return {}, []
    _, args, _ = _state(ctx.model)
    metrics, per = metrics_from_logps(args, outputs)
    rows = ctx.split.dataset
    records = []
    for k, i in enumerate(outputs["row"].tolist()):
        prompt, chosen, rejected = row_parts(ctx.recipe, rows[int(i)], f"{ctx.split.origin}: row {int(i) + 1}")
        records.append({"row": int(i), "prompt": _shown(prompt), "chosen": _shown(chosen),
                        "rejected": _shown(rejected),
                        "reward_chosen": float(per["chosen_rewards"][k]),
                        "reward_rejected": float(per["rejected_rewards"][k]),
                        "logps_chosen": float(per["logps_chosen"][k]),
                        "logps_rejected": float(per["logps_rejected"][k]),
                        "loss": float(per["losses"][k]), "correct": float(per["correct"][k])})
    return metrics, records


def intervals(recipe: Recipe, records: list[dict[str, Any]], bootstrap: int, seed: int
              ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (95%) over pairs of the per-pair means (`llmtune eval --model`); ORPO's loss
    has none (its NLL term is a token mean over the whole split)."""
    import numpy as np

    if not bootstrap or not records or not all("correct" in r for r in records):
        return {}
    cols = {"rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected", "rewards/accuracies": "correct",
            "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected"}
    values = {m: np.array([r[f] for r in records], dtype=np.float64) for m, f in cols.items()}
    values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
    if settings(recipe).loss != "orpo":
        values["loss"] = np.array([r["loss"] for r in records], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(records), size=(bootstrap, len(records)))
    out = {}
    for name, v in values.items():
        low, high = np.quantile(v[picks].mean(axis=1), [0.025, 0.975])
        out[name] = (float(low), float(high))
    return out


# ---- a finished run: causal_lm's loading, generation and prediction ---------------------------------------


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    """Base + adapter (the reference is the adapter switched off), or full weights with the base model of the
    recipe as frozen reference."""
    from llmtune import lora
    from llmtune.schema import ModelArgs

    model, tokenizer = clm.load_trained(path, recipe, info)
    args = settings(recipe) if recipe is not None else PreferenceArgs(loss=info.loss if info else "dpo")
    ref = None
    if args.loss in REFERENCE_LOSSES and not lora.is_adapter_dir(path):
        base = recipe.model if recipe is not None else ModelArgs(name=info.base_model if info else None)
        if not base.name:
            raise LlmtuneError(f"{path}: a full-weight {args.loss} model names no base model to use as reference")
        ref = lora.load_base(base)
    return attach(model, args, ref), tokenizer


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """`llmtune predict`: a generation per prompt, as a causal_lm run (the policy is a decoder like any other)."""
    return clm.predict(run, rows, batch_size, field or "prompt" if rows and "prompt" in rows[0] else field,
                       pair_field)


def prompt_spec(recipe: Recipe) -> PromptSpec:
    return clm.prompt_spec(recipe)


def prompt_fields(recipe: Recipe, row: dict[str, Any]) -> tuple[str, list[str]]:
    prompt, chosen, _ = row_parts(recipe, row, "row")
    if not (isinstance(prompt, str) and isinstance(chosen, str)):
        raise LlmtuneError("--shots: prompting baselines need text prompts, not lists of turns")
    return prompt, [chosen]


def prompt_choices(recipe: Recipe, splits: dict[str, Split]) -> None:
    return None
