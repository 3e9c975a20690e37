"""`llmtune generate`: load a run, a model folder, a GGUF file, a hub id or an alias, render prompts the way the
model was trained (its chat template, or the instruction layout of the run), and generate, streaming a single
prompt to the terminal or batching over a file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune import runs, tasks
from llmtune.errors import LlmtuneError
from llmtune.recipe import GenerationArgs, Recipe
from llmtune.tasks import causal_lm

PROMPT_FIELDS = ("prompt", "instruction", "question", "text", "input")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    recipe: Recipe | None
    prompt_format: str  # chat / alpaca / text


def load(model_or_run: str) -> Loaded:
    """A run or model folder through runs.load_run, else a base decoder (alias, hub id, GGUF file)."""
    path = Path(model_or_run).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in (runs.INFO_FILE, "adapter_config.json", "config.json")):
        run = runs.load_run(path)
        if not tasks.get(run.task).DECODER_ONLY:
            raise LlmtuneError(f"{path}: a {run.task} model, not a decoder that continues text; generate needs a "
                               "causal_lm run or a decoder model (use `llmtune predict` for this run)")
        return Loaded(run.model, run.tokenizer, run.recipe, causal_lm.run_prompt_format(run))
    from llmtune.lora import load_base
    from llmtune.models import load_tokenizer, resolve
    from llmtune.recipe import ModelArgs

    args = ModelArgs(name=model_or_run)
    resolved = resolve(args, where="MODEL")
    tokenizer = load_tokenizer(args, resolved)
    model = load_base(args, None, resolved)
    model.eval()
    fmt = "chat" if getattr(tokenizer, "chat_template", None) else "text"
    return Loaded(model, tokenizer, None, fmt)


def generation_args(base: GenerationArgs, overrides: list[str], options: dict[str, Any]) -> GenerationArgs:
    """base < `--set generation.key=value` < explicit CLI options (None means not given)."""
    from llmtune.recipe import _build_section, parse_override

    raw = dataclasses.asdict(base)
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 2 and path[0] == "generation":
            raw[path[1]] = value
        else:
            raise LlmtuneError(f"--set {text}: only generation.KEY=VALUE settings apply here")
    options = {k: v for k, v in options.items() if v is not None}
    if "do_sample" not in options and any(k in options for k in ("temperature", "top_k", "top_p")):
        options["do_sample"] = True  # asking for a temperature or top-k/top-p means sampling
    raw.update(options)
    g = _build_section(GenerationArgs, raw, "generation")
    if g.num_beams < 1 or g.max_new_tokens < 1:
        raise LlmtuneError("generation: num_beams and max_new_tokens must be at least 1")
    if g.do_sample and g.temperature <= 0:
        raise LlmtuneError("generation: temperature must be > 0 when sampling")
    if not 0 < g.top_p <= 1:
        raise LlmtuneError(f"generation: top_p must be in (0, 1], got {g.top_p}")
    if g.repetition_penalty <= 0:
        raise LlmtuneError(f"generation: repetition_penalty must be > 0 (1 is none), got {g.repetition_penalty}")
    if g.top_k < 0:
        raise LlmtuneError(f"generation: top_k must be 0 (no limit) or more, got {g.top_k}")
    return g


def read_prompts(path: Path, field: str | None) -> list[tuple[str, str | None]]:
    """(instruction, input) pairs: one per line of a .txt file, or a field of each .jsonl/.json/.csv/.tsv row (an
    `instruction` field takes the row's `input` field along)."""
    from llmtune.inputs import read_rows

    out: list[tuple[str, str | None]] = []
    for row in read_rows(path):
        key = field or next((k for k in PROMPT_FIELDS if k in row), None)
        if key is None or not isinstance(row.get(key), str):
            raise LlmtuneError(f"{row['_where']}: no text field {field or ' / '.join(PROMPT_FIELDS)}; "
                               "choose one with --field")
        if not row[key].strip():
            raise LlmtuneError(f"{row['_where']}: the prompt is empty")
        extra = row.get("input") if key == "instruction" and isinstance(row.get("input"), str) else None
        out.append((row[key], extra))
    return out


def stream_one(loaded: Loaded, prompt: str, g: GenerationArgs, add_special_tokens: bool) -> str:
    """Generate for one prompt, printing words to stdout as they come (beam search cannot stream: printed at end)."""
    import sys

    import torch
    from transformers import TextStreamer

    from llmtune.generate import generation_kwargs

    tok = loaded.tokenizer
    model = loaded.model
    if g.seed is not None:
        torch.manual_seed(g.seed)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(next(model.parameters()).device)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True) if g.num_beams == 1 else None
    with torch.no_grad():
        out = model.generate(**enc, **generation_kwargs(g, tok), streamer=streamer)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    if streamer is None:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return text.strip()


def generate_rows(model_or_run: str, prompts: list[tuple[str, str | None]], g: GenerationArgs | None = None,
                  overrides: list[str] | None = None, options: dict[str, Any] | None = None, batch_size: int = 16,
                  stream: bool = False, raw: bool = False, system: str | None = None,
                  max_input_length: int | None = None) -> list[dict[str, Any]]:
    """One {"prompt", "generation"} row per prompt, in order. Settings: the run's recipe (or defaults) <
    overrides < options; `stream` prints the single prompt's generation as it is produced."""
    loaded = load(model_or_run)
    base = g or (loaded.recipe.generation if loaded.recipe is not None else GenerationArgs())
    g = generation_args(base, list(overrides or []), dict(options or {}))
    max_in = max_input_length or (loaded.recipe.train.max_seq_length if loaded.recipe is not None else 1024)
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if positions and g.max_new_tokens >= positions:
        raise LlmtuneError(f"--max-new-tokens {g.max_new_tokens}: the model has {positions} positions in all; "
                           f"ask for fewer than {positions} new tokens")
    if stream and len(prompts) == 1:
        texts, special = causal_lm.render_prompts(loaded.tokenizer, loaded.prompt_format, prompts, raw, system)
        outs = [stream_one(loaded, texts[0], g, special)]
    else:
        outs = causal_lm.generate_for(loaded.model, loaded.tokenizer, loaded.prompt_format, prompts, g, batch_size,
                                      max_in, raw=raw, system=system)
    return [{"prompt": p, **({"input": b} if b is not None else {}), "generation": o}
            for (p, b), o in zip(prompts, outs, strict=True)]
