"""Causal language modelling: decoder-only models (Llama, Qwen, GPT...) on plain text, instruction pairs or chat
conversations, by default through LoRA adapters.

Labels are the input ids with every token the loss must skip set to -100: the prompt (unless
data.train_on_prompt), and always the first token of an example, which nothing predicts. Masking that first token
also makes packing exact: in a packed row it would be "predicted" from the previous example's last token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmtune.data import Split, as_text, check_text_column, require_column
from llmtune.errors import LlmtuneError
from llmtune.losses import token_cross_entropy
from llmtune.schema import DataArgs
from llmtune.tasks import EvalContext, LoadedRun, PromptSpec

if TYPE_CHECKING:
    from llmtune.schema import GenerationArgs, Recipe

MODEL_CLASS = "AutoModelForCausalLM"
PEFT_TASK_TYPE = "CAUSAL_LM"
LORA_DEFAULT = True  # LoRA adapters unless lora.enabled=false
GENERATE_DEFAULT = False  # eval loss by default; eval.generate=true also generates and scores the answers
GENERATES = True  # its runs generate text: the generation section and eval.generate apply
#: the base model's eval loss is the yardstick of a fine-tune: the loop may evaluate once before step 1
EVAL_BEFORE_TRAINING = True
DEFAULT_METRIC = "loss"
GREATER_IS_BETTER = False
TOKEN_LEVEL_LOSS = True
DECODER_ONLY = True


@dataclass
class Data(DataArgs):
    format: Literal["text", "instruction", "chat"] = "instruction"
    text_column: str = "text"
    prompt_column: str = "instruction"
    input_column: str | None = "input"
    completion_column: str = "output"
    messages_column: str = "messages"
    template: str | None = None
    train_on_prompt: bool = False
    packing: bool = False


OPTIONS: dict[str, type] = {"data": Data}


@dataclass
class Info:
    """The data format, the base model's name and how prompts are laid out (chat template, alpaca or text), so
    generation from the run renders prompts the way training did."""

    format: str = "instruction"
    base_model: str | None = None
    prompt_format: str | None = None  # None under `llmtune validate` (no tokenizer)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Info:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def check_recipe(recipe: Recipe) -> None:
    resolve_template(recipe.data.template)  # a misspelt built-in name fails here, before any data is read


RECOGNIZES_THE_REST = True  # tasks.recognize asks this task last


def recognizes(config: dict[str, Any]) -> bool:
    """Any decoder: the registry asks this task last, for folders no other task claims. A bare model without a
    head (`BertModel`, `LlamaModel`: AutoModel folders) is not one: it cannot generate (it was taken for a decoder
    and wrote random words)."""
    archs = config.get("architectures") or []
    bare = bool(archs) and all(a.endswith("Model") and not a.endswith("LMHeadModel") for a in archs)
    return not config.get("is_encoder_decoder") and not bare

IGNORE = -100
ROLES = ("system", "user", "assistant", "tool")
DEFAULT_GEN_METRICS = ("rouge", "bleu", "exact_match")
# logits of one forward in evaluate() are at most this many floats (rows x length x vocab): 256 MB in fp32
EVAL_LOGITS_BUDGET = 64 * 1024 * 1024

# data.template: a chat template for models without one, by name or as a Jinja string
TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # plain-text turns that any tokenizer encodes; an assistant turn ends with EOS so generation stops there
    "plain": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
        "{% else %}{{ '### User:\n' + message['content'] + '\n\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
    ),
}


# ---- prompt rendering (shared with `llmtune generate`) -----------------------------------------------------


def resolve_template(template: str | None) -> str | None:
    if template is None:
        return None
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{{" in template or "{%" in template:
        return template
    raise LlmtuneError(f"data.template: '{template}' is neither a built-in template ({', '.join(TEMPLATES)}) "
                       "nor a Jinja chat template")


def user_content(instruction: str, input_text: str | None) -> str:
    return f"{instruction}\n\n{input_text}" if input_text and input_text.strip() else instruction


def alpaca_prompt(instruction: str, input_text: str | None) -> str:
    """The instruction prompt for tokenizers without a chat template (the Alpaca layout)."""
    if input_text and input_text.strip():
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))


def generation_prompt(tokenizer: Any, prompt_format: str, instruction: str, input_text: str | None = None,
                      system: str | None = None) -> str:
    """What the model is given to continue, in the layout it was trained on."""
    if prompt_format == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": user_content(instruction, input_text)}]
        return render_chat(tokenizer, messages, add_generation_prompt=True)
    if prompt_format == "alpaca":
        return alpaca_prompt(instruction, input_text)
    return user_content(instruction, input_text)


def adds_special_tokens(prompt_format: str) -> bool:
    """Chat templates write BOS themselves when the model wants one; the other layouts let the tokenizer add it."""
    return prompt_format != "chat"


# ---- tokenization: strings -> (input_ids, labels) -----------------------------------------------------------


def from_segments(tokenizer: Any, segments: list[tuple[str, bool]], special_first: bool, eos_after: bool,
                  max_length: int, train_on_prompt: bool) -> tuple[list[int], list[int]]:
    """Token ids of consecutive text pieces and labels that keep only the pieces marked trainable.

    Each piece is tokenized on its own, so a piece boundary is a token boundary: the prompt's tokens are exactly
    those the model sees at generation time, and the mask never cuts a token in two.
    """
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, trainable) in enumerate(segments):
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=special_first and i == 0)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if trainable or train_on_prompt else [IGNORE] * len(piece))
    if eos_after and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    ids, labels = ids[:max_length], labels[:max_length]
    if labels:
        labels[0] = IGNORE
    return ids, labels


def encode_text(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], list[int]]:
    return from_segments(tokenizer, [(text, True)], special_first=True, eos_after=True, max_length=max_length,
                         train_on_prompt=True)


def text_chunks(tokenizer: Any, text: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """A long text as consecutive windows of max_length tokens (training uses all of it, not just its start)."""
    ids, _ = from_segments(tokenizer, [(text, True)], special_first=True, eos_after=True, max_length=1 << 62,
                           train_on_prompt=True)
    out = []
    for start in range(0, len(ids), max_length):
        window = ids[start:start + max_length]
        if len(window) > 1:  # a 1-token tail has nothing to predict
            out.append((window, [IGNORE] + window[1:]))
    return out


def encode_instruction(tokenizer: Any, prompt_format: str, instruction: str, input_text: str | None, output: str,
                       max_length: int, train_on_prompt: bool) -> tuple[list[int], list[int]]:
    if prompt_format == "chat":
        messages = [{"role": "user", "content": user_content(instruction, input_text)},
                    {"role": "assistant", "content": output}]
        return encode_chat(tokenizer, messages, max_length, train_on_prompt)
    segments = [(alpaca_prompt(instruction, input_text), False), (output, True)]
    return from_segments(tokenizer, segments, special_first=True, eos_after=True, max_length=max_length,
                         train_on_prompt=train_on_prompt)


def chat_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant_reply) pieces.

    Rendering the turns before assistant turn k with the generation prompt, then through turn k, gives the reply's
    span as the difference. Templates that rewrite earlier turns (so a shorter conversation is not a prefix of a
    longer one) fall back to training on the last reply only.
    """
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:k], add_generation_prompt=True) if k else ""
        through = render_chat(tokenizer, messages[:k + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            spans = []
            break
        spans.append((len(before), len(through.rstrip())))  # the newline after an end-of-turn token is layout
    if not spans:
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        before = render_chat(tokenizer, messages[:last], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[:last + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise LlmtuneError("the chat template does not render a conversation's start as a prefix of the whole "
                               "conversation, so the assistant replies cannot be located; set data.template")
        spans = [(len(before), len(through.rstrip()))]
    segments: list[tuple[str, bool]] = []
    pos = 0
    for start, end in spans:
        segments += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    segments.append((full[pos:], False))
    return segments


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], max_length: int,
                train_on_prompt: bool) -> tuple[list[int], list[int]]:
    return from_segments(tokenizer, chat_segments(tokenizer, messages), special_first=False, eos_after=False,
                         max_length=max_length, train_on_prompt=train_on_prompt)


# ---- validation and setup ---------------------------------------------------------------------------------


def _input_column(recipe: Recipe, split: Split) -> str | None:
    """data.input_column, or None when the default 'input' is simply absent (most datasets have no such column)."""
    col = recipe.data.input_column
    if col is None or (col == "input" and col not in split.dataset.column_names):
        return None
    return col


def _check_messages(split: Split, column: str) -> None:
    require_column(split, column, "data.messages_column")
    for i, value in enumerate(split.dataset[column]):
        where = f"{split.origin}: row {i + 1}: column '{column}' (data.messages_column)"
        if not isinstance(value, list) or not value:
            raise LlmtuneError(f"{where} holds {value!r}, expected a non-empty list of {{role, content}} turns")
        for j, turn in enumerate(value):
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or \
                    not isinstance(turn.get("content"), str):
                raise LlmtuneError(f"{where}: turn {j + 1} is {turn!r}, expected {{\"role\": ..., \"content\": "
                                   "\"text\"}")
            if turn["role"] not in ROLES:
                raise LlmtuneError(f"{where}: turn {j + 1} has role '{turn['role']}'; roles are "
                                   f"{', '.join(ROLES)}")
        if split.name != "test" and not any(t["role"] == "assistant" for t in value):
            raise LlmtuneError(f"{where}: no assistant turn, so nothing to learn or score")


def validate(recipe: Recipe, split: Split) -> None:
    d = recipe.data
    if d.format == "text":
        check_text_column(split, d.text_column, "data.text_column")
    elif d.format == "chat":
        _check_messages(split, d.messages_column)
    else:
        check_text_column(split, d.prompt_column, "data.prompt_column")
        col = _input_column(recipe, split)
        if col is not None:
            require_column(split, col, "data.input_column")
            for i, value in enumerate(split.dataset[col]):
                if value is not None and as_text(value) is None:
                    raise LlmtuneError(f"{split.origin}: row {i + 1}: column '{col}' (data.input_column) holds "
                                       f"{value!r}, expected text (or empty)")
        if split.name == "test" and d.completion_column not in split.dataset.column_names:
            return  # prompts only: still good for generation
        check_text_column(split, d.completion_column, "data.completion_column")


def prompt_format_for(recipe: Recipe, tokenizer: Any) -> str:
    """chat (a chat template renders the turns), alpaca (instructions, no template), or text."""
    d = recipe.data
    if d.format == "text":
        return "text"
    has_template = d.template is not None or bool(getattr(tokenizer, "chat_template", None))
    if d.format == "chat" and not has_template:
        raise LlmtuneError(f"{recipe.source}: data.format=chat needs a chat template, and the tokenizer of "
                           f"'{recipe.model.name}' has none; set data.template (built-in: {', '.join(TEMPLATES)}, "
                           "or a Jinja template)")
    return "chat" if has_template else "alpaca"


def setup(recipe: Recipe, splits: dict[str, Split], tokenizer: Any) -> Info:
    from llmtune.lora import check_qlora

    d = recipe.data
    if recipe.lora_enabled:
        check_qlora(recipe.lora)
    template = resolve_template(d.template)
    if d.format == "text" and recipe.generate_in_eval:
        raise LlmtuneError(f"{recipe.source}: eval.generate=true needs prompts and references "
                           "(data.format instruction or chat), not data.format=text")
    info = Info(format=d.format, base_model=recipe.model.name)
    if tokenizer is None:  # `llmtune validate` could not load the tokenizer
        return info
    if template is not None:
        # the run folder's tokenizer keeps the template, so generation renders prompts the way training did
        tokenizer.chat_template = template
    info.prompt_format = prompt_format_for(recipe, tokenizer)
    if info.prompt_format == "chat":
        # compile and render the template once here, so `llmtune validate` finds a broken one before training
        try:
            render_chat(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                        add_generation_prompt=False)
        except Exception as e:  # jinja2 raises TemplateSyntaxError, UndefinedError, TypeError...
            key = "data.template" if d.template is not None else f"the chat template of {recipe.model.name}"
            raise LlmtuneError(f"{recipe.source}: {key} does not render a conversation: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    return info


# ---- tokenize, model, collator --------------------------------------------------------------------------


def _encode(batch: dict[str, list[Any]], tokenizer: Any, fmt: str, prompt_format: str, text: str, prompt: str,
            input_col: str | None, completion: str, messages: str, max_length: int,
            train_on_prompt: bool, chunk: bool) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    n = len(next(iter(batch.values())))
    for i in range(n):
        if fmt == "text" and chunk:
            for ids, labels in text_chunks(tokenizer, as_text(batch[text][i]) or "", max_length):
                out["input_ids"].append(ids)
                out["labels"].append(labels)
            continue
        if fmt == "text":
            ids, labels = encode_text(tokenizer, as_text(batch[text][i]) or "", max_length)
        elif fmt == "chat":
            turns = [{"role": t["role"], "content": t["content"]} for t in batch[messages][i]]
            ids, labels = encode_chat(tokenizer, turns, max_length, train_on_prompt)
        else:
            inp = as_text(batch[input_col][i]) if input_col else None
            ids, labels = encode_instruction(tokenizer, prompt_format, as_text(batch[prompt][i]) or "", inp,
                                             as_text(batch[completion][i]) or "", max_length, train_on_prompt)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
    return out


def _has_target(row: dict[str, Any]) -> bool:
    return any(label != IGNORE for label in row["labels"])


def tokenize(recipe: Recipe, tokenizer: Any, split: Split, info: Info) -> Any:
    import logging

    d = recipe.data
    ds = split.dataset
    ds = ds.map(
        _encode,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "fmt": d.format, "prompt_format": info.prompt_format or "text",
                   "text": d.text_column, "prompt": d.prompt_column, "input_col": _input_column(recipe, split),
                   "completion": d.completion_column, "messages": d.messages_column,
                   "max_length": recipe.train.max_seq_length, "train_on_prompt": d.train_on_prompt,
                   # training texts are cut into windows; eval keeps one row per text (its first window), so
                   # predictions line up with the file
                   "chunk": split.name == "train"},
        desc=f"Tokenizing {split.name}",
    )
    if split.name != "train" and len(ds) and not any(_has_target(row) for row in ds):
        # a loss over no token would read 0.0 and a perplexity of 1.0: say why instead
        raise LlmtuneError(f"{split.origin}: no {split.name} row has a response token within "
                           f"train.max_seq_length={recipe.train.max_seq_length} (every target is truncated away), "
                           "so there is nothing to score; raise train.max_seq_length")
    if split.name == "train":
        # a row whose response lies wholly beyond max_seq_length has no token to learn from; a batch of such
        # rows would divide 0 by 0. Eval rows stay, so predictions line up with the file.
        before = len(ds)
        ds = ds.filter(_has_target, desc="Dropping rows without response tokens")
        if len(ds) < before:
            logging.getLogger("llmtune").warning(
                "%s: %d of %d rows have no response token within train.max_seq_length=%d and are skipped",
                split.origin, before - len(ds), before, recipe.train.max_seq_length)
    return ds


def load_model(recipe: Recipe, tokenizer: Any, info: Info) -> Any:
    from llmtune import lora, swiglu
    from llmtune.models import resolve

    resolved = resolve(recipe.model)
    model = lora.load_base(recipe.model, recipe.lora if recipe.lora_enabled else None, resolved)
    swiglu.fuse(model)  # the gated MLP's backward keeps g and u, not silu(g) as well: same numbers, less memory
    # No KV cache while training: it costs memory, and transformers only derives the per-example attention
    # blocks of a packed row from position_ids when no cache is passed. generate() turns it on for itself.
    model.config.use_cache = False
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if recipe.lora_enabled:
        model = lora.wrap(model, recipe, PEFT_TASK_TYPE, resolved)
    return model


class CausalCollator:
    """Right-padded batches (training ones that mark their learnt tokens without an attention_mask: see
    __call__), or with packing rows of concatenated examples whose position_ids restart at 0 for each example (no
    attention across examples).

    Packed rows hold at most `max_length` tokens each, and the row width is chosen per batch: 33 capacities from
    the longest example up to `max_length` are tried (first-fit, longest examples first) and the one whose rows
    x width costs least is kept, attention (dense over a row's width, the per-example blocks masked) counted at
    width / (1.5 x hidden) of a position's linear work: on SmolLM2 (hidden 576) + LoRA a position in rows of 512
    cost 1.17x (bf16) and 1.2x (fp32) one in rows of 279 (fwd + bwd, 2 CPU cores). The longest example's own
    capacity is a candidate, and its rows are never more nor wider than the padded batch's, so a packed batch
    never costs more than padding it would. Packing in order up to `max_length` did (a 300-500 token batch of 8
    became 7 rows of 511 where padding gave 8 of 279: 1.9x the step time), and one row of the whole batch costs
    the square of all its tokens (4.5x slower than padding on such dialogues). A short row is filled up with
    padding that continues its last example's positions: under causal attention no real token sees it, and its
    labels are ignored. Packed batches carry per-row `n_tokens`/`n_examples`, which the loop counts (and
    removes) instead of guessing from the tensors.

    Eval batches (they carry `idx`) are always padded, so each example's loss can be put back in its row.
    """

    def __init__(self, pad_token_id: int, packing: bool, keep_logits: bool = False,
                 max_length: int | None = None, learnt_only: bool = False, hidden_size: int = 1024) -> None:
        self.pad_token_id = pad_token_id
        self.hidden_size = hidden_size
        self.packing = packing
        # a packed row computes logits only where the next token is learnt (the answer, not the prompt): the
        # output layer (vocabulary x hidden, a fifth of a small model's compute) and the softmax skip the rest
        self.keep_logits = keep_logits
        self.max_length = max_length
        # padded training batches mark their learnt tokens too (target_index, target), for the loss hook: the
        # output layer then never sees a prompt or padding position (batch 8 x 512 over a 49k vocabulary: 0.8 GB
        # of fp32 logits, again for their log-softmax and their gradient)
        self.learnt_only = learnt_only

    @staticmethod
    def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
        """Indices of the examples in each row: longest first, each into the first row it fits in."""
        rows: list[list[int]] = []
        fill: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            for r, used in enumerate(fill):
                if used + lengths[i] <= capacity:
                    rows[r].append(i)
                    fill[r] += lengths[i]
                    break
            else:
                rows.append([i])
                fill.append(lengths[i])
        return [sorted(r) for r in rows]

    def _rows(self, features: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        lengths = [len(f["input_ids"]) for f in features]
        longest = max(lengths)
        cap = max(longest, self.max_length if self.max_length is not None else sum(lengths))
        # the longest example's capacity first (never worse than padding), the budget itself, a grid between
        candidates = sorted({longest, cap, *(longest + (cap - longest) * k // 32 for k in range(1, 32))})
        best: tuple[float, list[list[int]]] | None = None
        for capacity in candidates:
            rows = self._first_fit(lengths, capacity)
            width = max(sum(lengths[i] for i in r) for r in rows)
            cost = len(rows) * width * (1 + width / (1.5 * self.hidden_size))
            if best is None or cost < best[0]:  # ties keep the narrower rows
                best = (cost, rows)
        assert best is not None
        return [[features[i] for i in r] for r in best[1]]

    def _packed(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = self._rows(features)
        width = max(sum(len(f["input_ids"]) for f in r) for r in rows)
        all_ids, all_labels, all_pos, n_tokens = [], [], [], []
        for r in rows:
            ids: list[int] = []
            labels: list[int] = []
            positions: list[int] = []
            for f in r:
                ids += list(f["input_ids"])
                labels += list(f["labels"])
                positions += range(len(f["input_ids"]))
            n_tokens.append(len(ids))
            fill = width - len(ids)
            positions += range(positions[-1] + 1, positions[-1] + 1 + fill)
            all_ids.append(ids + [self.pad_token_id] * fill)
            all_labels.append(labels + [IGNORE] * fill)
            all_pos.append(positions)
        batch = {"input_ids": torch.tensor(all_ids), "labels": torch.tensor(all_labels),
                 "position_ids": torch.tensor(all_pos), "n_tokens": torch.tensor(n_tokens),
                 "n_examples": torch.tensor([len(r) for r in rows])}
        if self.keep_logits:
            # position p predicts token p + 1: keep p where that token counts in some row, labels already shifted
            learnt = batch["labels"][:, 1:] != IGNORE
            keep = torch.nonzero(learnt.any(0)).squeeze(1)
            if len(keep):
                batch["logits_to_keep"] = keep
                batch["shift_labels"] = batch["labels"][:, 1:][:, keep]
                # and, for the loss hook, exactly the (row, position) pairs whose next token is learnt, flattened
                # over rows x width: the output layer then runs on the learnt tokens alone, not on every row at
                # the union of the rows' learnt positions (on long prompts with short answers, most of them)
                self._mark_learnt(batch)
        return batch

    @staticmethod
    def _mark_learnt(batch: dict[str, Any]) -> None:
        """target_index (flattened over rows x width) and target of every position whose next token is learnt."""
        import torch

        labels = batch["labels"]
        learnt = labels[:, 1:] != IGNORE
        if not bool(learnt.any()):
            return
        rows_, pos = torch.nonzero(learnt, as_tuple=True)
        batch["target_index"] = rows_ * labels.shape[1] + pos
        batch["target"] = labels[:, 1:][learnt]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        has_idx = "idx" in features[0]
        if self.packing and not has_idx:
            return self._packed(features)
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.tensor([list(f["input_ids"]) + [self.pad_token_id] * (width - len(f["input_ids"]))
                                       for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                            for f in features]),
            "labels": torch.tensor([list(f["labels"]) + [IGNORE] * (width - len(f["labels"])) for f in features]),
        }
        if has_idx:
            batch["idx"] = torch.tensor([f["idx"] for f in features])
        elif self.learnt_only:
            self._mark_learnt(batch)
            # Right padding under causal attention: no real token attends to a pad after it, and the pads' own
            # outputs are never learnt, so the mask changes no loss or gradient. Without it SDPA runs its causal
            # kernel instead of a 4-D mask (SmolLM2 + LoRA, bf16, 8 x 337: 1.05x a step, interleaved). The loop
            # counts the batch from n_tokens/n_examples, as a packed one.
            mask = batch.pop("attention_mask")
            batch["n_tokens"] = mask.sum(1)
            batch["n_examples"] = torch.ones(len(features), dtype=torch.long)
        return batch


def _plain_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output layer) of a causal LM whose logits are the output layer applied to the decoder's last
    hidden state and nothing else (Llama, Mistral, Qwen, SmolLM, GPT-2...), else None: soft-capped or scaled
    logits (Gemma 2, Cohere, Granite) keep the model's own forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or any(getattr(config, k, None) not in (None, 1, 1.0) for k in
                             ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")):
        return None
    decoder = getattr(base, getattr(base, "base_model_prefix", "") or "", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    import torch

    if decoder is None or decoder is base or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def loss(model: Any, batch: dict[str, Any]) -> Any:
    """The training loss. A batch that marks its learnt tokens (target_index, target; packed or padded) runs the
    decoder, then the output layer and the cross-entropy on those tokens alone: the same mean token loss as the
    model's own forward (tests/test_causal_lm.py checks loss and gradients), without logits for the prompt and
    padding positions (or, packed, for those that only share a column with another row's answer)."""
    import torch.nn.functional as F

    index, target = batch.pop("target_index", None), batch.pop("target", None)
    parts = _plain_head(model) if index is not None else None
    if parts is None:
        return model(**batch).loss
    decoder, head = parts
    kwargs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    hidden = decoder(**kwargs, use_cache=False).last_hidden_state
    logits = head(hidden.reshape(-1, hidden.shape[-1])[index])
    return F.cross_entropy(logits.float(), target)


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' own decoders do; remote code may not)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def collator(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return CausalCollator(pad if pad is not None else 0, recipe.data.packing,
                          keep_logits=recipe.data.packing and model is not None and _keeps_logits(model),
                          max_length=recipe.train.max_seq_length,
                          learnt_only=model is not None and _plain_head(model) is not None,
                          hidden_size=int(getattr(getattr(model, "config", None), "hidden_size", None) or 1024))


# ---- evaluation -----------------------------------------------------------------------------------------


def example_losses(model: Any, batch: dict[str, Any], labels: Any) -> tuple[Any, Any]:
    """Per-row sums of token cross-entropies (float64) and token counts, next-token shifted, -100 skipped.

    Forwards a few rows at a time so the logits (rows x length x vocab) stay within EVAL_LOGITS_BUDGET.
    """
    import torch

    rows, width = labels.shape
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 50_000)
    step = max(1, EVAL_LOGITS_BUDGET // max(1, width * vocab))
    sums, counts = [], []
    for r in range(0, rows, step):
        part = {k: v[r:r + step] for k, v in batch.items()}
        logits = model(**part).logits[:, :-1].float()
        target = labels[r:r + step, 1:]
        ce = token_cross_entropy(logits, target.clamp(min=0))
        mask = target != IGNORE
        sums.append((ce * mask).to(torch.float64).sum(-1))
        counts.append(mask.sum(-1))
    return torch.cat(sums), torch.cat(counts)


def _eval_prompts(recipe: Recipe, tokenizer: Any, split: Split, prompt_format: str
                  ) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Generation prompts, references and the record fields that show each prompt, for the eval rows."""
    d = recipe.data
    rows = split.dataset
    prompts, refs, shown = [], [], []
    if d.format == "chat":
        for turns in rows[d.messages_column]:
            msgs = [{"role": t["role"], "content": t["content"]} for t in turns]
            last = max(k for k, m in enumerate(msgs) if m["role"] == "assistant")
            prompts.append(render_chat(tokenizer, msgs[:last], add_generation_prompt=True))
            refs.append(msgs[last]["content"])
            shown.append({"prompt": next((m["content"] for m in reversed(msgs[:last]) if m["role"] == "user"), "")})
        return prompts, refs, shown
    input_col = _input_column(recipe, split)
    instructions = [as_text(v) or "" for v in rows[d.prompt_column]]
    inputs = [as_text(v) for v in rows[input_col]] if input_col else [None] * len(instructions)
    completions = [as_text(v) or "" for v in rows[d.completion_column]]
    for ins, inp, out in zip(instructions, inputs, completions, strict=True):
        prompts.append(generation_prompt(tokenizer, prompt_format, ins, inp))
        refs.append(out)
        shown.append({"instruction": ins, **({"input": inp} if input_col else {})})
    return prompts, refs, shown


def eval_step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    labels = batch.pop("labels")
    sums, counts = example_losses(model, batch, labels)
    return {"sums": sums, "counts": counts}


def metric_names(recipe: Recipe, info: Info | None) -> list[str]:
    from llmtune.metrics import output_names

    names = ["loss", "perplexity"]
    if recipe.data.format != "text" and recipe.generate_in_eval:
        names += [k for m in recipe.eval.metrics or DEFAULT_GEN_METRICS for k in output_names(m)]
    return names


def score(ctx: EvalContext, outputs: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    sums_t, counts_t = outputs["sums"], outputs["counts"]
    n_tokens = int(counts_t.sum())
    if n_tokens == 0:
        raise LlmtuneError(f"{ctx.split.origin}: no target token to score in the {ctx.split.name} split")
    # exact token-weighted mean over the whole split: every target token counts once, whatever the batching
    loss = float(sums_t.sum() / max(n_tokens, 1))
    metrics: dict[str, float] = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf")}
    records: list[dict[str, Any]] = []
    d = ctx.recipe.data
    rows = ctx.split.dataset
    per_row = [float(s / c) if c > 0 else None for s, c in zip(sums_t.tolist(), counts_t.tolist(), strict=True)]
    # n_tokens weighs each row's mean in llmtune eval's interval of the token-weighted loss
    counts = [int(c) for c in counts_t.tolist()]
    if d.format == "text":
        records = [{"text": as_text(t), "loss": x, "n_tokens": c}
                   for t, x, c in zip(rows[d.text_column], per_row, counts, strict=True)]
        return metrics, records
    prompt_format = ctx.info.prompt_format or "chat"
    prompts, refs, shown = _eval_prompts(ctx.recipe, ctx.tokenizer, ctx.split, prompt_format)
    records = [{**s, "reference": r, "loss": x, "n_tokens": c}
               for s, r, x, c in zip(shown, refs, per_row, counts, strict=True)]
    if ctx.recipe.generate_in_eval:
        from llmtune import metrics as metrics_mod
        from llmtune.generate import generate_texts

        preds = generate_texts(
            ctx.accelerator.unwrap_model(ctx.model), ctx.tokenizer, prompts, ctx.recipe.generation,
            batch_size=ctx.recipe.train.per_device_eval_batch_size,
            max_input_length=ctx.recipe.train.max_seq_length, decoder_only=True, accelerator=ctx.accelerator,
            add_special_tokens=adds_special_tokens(prompt_format))
        for name in ctx.recipe.eval.metrics or DEFAULT_GEN_METRICS:
            try:
                metrics.update(metrics_mod.compute(name, preds, refs))
            except ValueError as e:
                raise LlmtuneError(f"eval.metrics: {e}") from e
        for rec, p in zip(records, preds, strict=True):
            rec["prediction"] = p
    return metrics, records


# ---- a finished run ----------------------------------------------------------------------------------------


def load_trained(path: Path, recipe: Recipe | None, info: Info | None) -> tuple[Any, Any]:
    """Base + adapter for a LoRA run (the base rebuilt from the run's recipe), else the saved model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtune import lora

    if lora.is_adapter_dir(path):
        model = lora.load_adapter(path, recipe, lora.load_base)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        from llmtune.models import load_tokenizer

        tokenizer = load_tokenizer(lora.base_args(path, recipe))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return model, tokenizer


def render_prompts(tokenizer: Any, prompt_format: str, prompts: list[tuple[str, str | None]], raw: bool = False,
                   system: str | None = None) -> tuple[list[str], bool]:
    """The texts given to the model for (instruction, input) pairs, and whether the tokenizer adds its special
    tokens (BOS): `raw` gives the prompt as it is, without the chat template."""
    if raw:
        return [user_content(a, b) for a, b in prompts], True
    return [generation_prompt(tokenizer, prompt_format, a, b, system) for a, b in prompts], \
        adds_special_tokens(prompt_format)


def run_prompt_format(run: LoadedRun) -> str:
    fmt = run.info.prompt_format if run.info is not None else None
    return fmt or ("chat" if getattr(run.tokenizer, "chat_template", None) else "text")


def generate_for(model: Any, tokenizer: Any, prompt_format: str, prompts: list[tuple[str, str | None]],
                 g: GenerationArgs, batch_size: int, max_input_length: int, raw: bool = False,
                 system: str | None = None) -> list[str]:
    """Batched generation for (instruction, input) prompts rendered the way the model was trained."""
    from llmtune.generate import generate_texts

    texts, special = render_prompts(tokenizer, prompt_format, prompts, raw=raw, system=system)
    return generate_texts(model, tokenizer, texts, g, batch_size=batch_size, max_input_length=max_input_length,
                          decoder_only=True, add_special_tokens=special)


def predict(run: LoadedRun, rows: list[dict[str, Any]], batch_size: int, field: str | None,
            pair_field: str | None) -> list[dict[str, Any]]:
    """`llmtune predict` on a causal_lm run: one generation per input text."""
    from llmtune.inputs import column
    from llmtune.schema import GenerationArgs

    texts = column(rows, field or "text", ())
    g = run.recipe.generation if run.recipe is not None else GenerationArgs()
    max_in = run.recipe.train.max_seq_length if run.recipe is not None else 1024
    outs = generate_for(run.model, run.tokenizer, run_prompt_format(run), [(t, None) for t in texts], g, batch_size,
                        max_in)
    return [{"prompt": t, "generation": o} for t, o in zip(texts, outs, strict=True)]


# ---- zero/few-shot prompting of a decoder ------------------------------------------------------------------


def prompt_spec(recipe: Recipe) -> PromptSpec:
    return PromptSpec("Instruction", "Response", "Answer each instruction.", ["rouge", "exact_match"])


def prompt_fields(recipe: Recipe, row: dict[str, Any]) -> tuple[str, list[str]]:
    d = recipe.data
    if d.format != "instruction":
        raise LlmtuneError(f"--shots: prompting baselines support instruction data, not data.format={d.format}")
    text = str(row[d.prompt_column])
    extra = row.get(d.input_column) if d.input_column else None
    if extra:
        text += "\n" + str(extra)
    return text, [str(row[d.completion_column])]


def prompt_choices(recipe: Recipe, splits: dict[str, Split]) -> None:
    return None
