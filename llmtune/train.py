"""The one Accelerate training loop that every task shares.

Order follows Accelerate's idioms: Accelerator first; tokenize under main_process_first; prepare model, optimizer,
loaders and scheduler; step inside accumulate(); gather_for_metrics before scoring; only the main process writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune import data as data_mod
from llmtune import runs
from llmtune.errors import LlmtuneError
from llmtune.recipe import Recipe

logger = logging.getLogger("llmtune")


class Interrupted(LlmtuneError):
    """Ctrl-C or SIGTERM during training: a checkpoint was saved."""


@dataclass
class TrainerState:
    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples_seen: int = 0
    tokens_seen: int = 0
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    pending_loss_sum: float = 0.0  # micro-batch losses since the last log line, so a resume loses none
    pending_loss_n: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    train_seconds: float = 0.0
    fingerprint: dict[str, str] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text()))


class LengthGroupedBatches:
    """Batches of similar length in a seeded, epoch-dependent order.

    Shuffle indices, cut them into mega-batches of 50 batches, sort each mega-batch by length, then shuffle the
    batches. Padding shrinks, yet batch composition stays random. The order depends only on (seed, epoch), so a
    resumed run replays exactly the batches of an uninterrupted one.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool, shuffle: bool = True):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group_by_length
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0  # batches of this epoch already consumed before a resume

    def set_position(self, epoch: int, skip: int = 0) -> None:
        # not `set_epoch`: Accelerate calls that with its own count of iterations, which a resumed run restarts
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(idx)
        bs = self.batch_size
        if self.group:
            mega = bs * 50
            idx = [i for s in range(0, len(idx), mega)
                   for i in sorted(idx[s:s + mega], key=lambda i: -self.lengths[i])]
        out = [idx[s:s + bs] for s in range(0, len(idx), bs)]
        if self.group and self.shuffle:
            rng.shuffle(out)
        return out[self.skip:]

    def __iter__(self) -> Any:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size) - self.skip


def _lengths(ds: Any) -> list[int]:
    return [len(x) for x in ds["input_ids"]]


class FixedBatches:
    """A fixed list of batches with the `batch_size` attribute Accelerate needs to split them across processes."""

    def __init__(self, batches: list[list[int]], batch_size: int):
        self.batches, self.batch_size = batches, batch_size

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def eval_loader(ds: Any, collate: Any, batch_size: int) -> Any:
    """Longest-first batches with an `idx` column, so padding is small and rows can be put back in order."""
    from torch.utils.data import DataLoader

    ds = ds.add_column("idx", list(range(len(ds)))) if "idx" not in ds.column_names else ds
    order = sorted(range(len(ds)), key=lambda i: -len(ds[i]["input_ids"])) if len(ds) < 200_000 else list(range(len(ds)))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    import torch

    return DataLoader(ds, batch_sampler=FixedBatches(batches, batch_size), collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))


def _trainable_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: Any, recipe: Recipe) -> Any:
    import torch

    groups = _trainable_groups(model, recipe.train.weight_decay)
    try:
        # fused AdamW runs one kernel per step over all parameters; on CPU it is much faster than foreach
        return torch.optim.AdamW(groups, lr=recipe.train.learning_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=recipe.train.learning_rate)


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _fingerprint(recipe: Recipe, train_ds: Any, lengths: list[int], processes: int) -> dict[str, str]:
    """What must not change between a run and its resume: the model, the data and the batch composition.

    The data part hashes the data settings, every row's token count and the tokens of the first rows: an edited,
    reordered or extended file is caught without reading the whole dataset again.
    """
    r = recipe.to_dict()
    data = {k: v for k, v in r["data"].items() if k not in ("max_eval_samples", "max_test_samples")}
    h = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    h.update(json.dumps(lengths).encode())
    head = train_ds.select(range(min(256, len(train_ds))))
    for col in ("input_ids", "labels"):
        if col in head.column_names:
            h.update(json.dumps(list(head[col])).encode())
    return {
        "model": recipe.fingerprint("model", "lora"),
        "data": h.hexdigest()[:16],
        # the global batch decides which examples form an update; how it is split over processes does not
        "batches": f"{recipe.train.per_device_train_batch_size * processes}x{recipe.train.gradient_accumulation_steps}"
                   f"/seed{recipe.train.seed}/group{recipe.train.group_by_length}",
    }


def _is_peft(model: Any) -> bool:
    import sys

    if "peft" not in sys.modules:  # nothing made a PEFT model; importing peft only to ask would cost ~2 s
        return False
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _keep_trainable(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    """Checkpoints of an adapter run hold the trainable weights only: the frozen base (hundreds of MB) is
    the same in every checkpoint and is rebuilt from model.name on resume."""
    for model, state_dict in zip(models, weights, strict=True):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state_dict if k not in trainable]:
            del state_dict[key]


def _check_resume_compatible(saved: dict[str, str], now: dict[str, str], ckpt: Path) -> None:
    what = {"model": "the model or LoRA settings", "data": "training data (rows or columns)",
            "batches": "the global batch size, accumulation, seed or length grouping"}
    for key, label in what.items():
        if saved.get(key) and saved.get(key) != now.get(key):
            raise LlmtuneError(f"train.resume_from_checkpoint: {ckpt} was made with different {label}; resuming "
                               "would mix two runs. Use another train.output_dir, or "
                               "train.resume_from_checkpoint=false train.overwrite_output_dir=true to start over")


def _resolve_resume(recipe: Recipe, out: Path) -> Path | None:
    rc = recipe.train.resume_from_checkpoint
    if rc is False or rc == "false":
        return None
    if rc == "auto":
        if recipe.train.overwrite_output_dir:  # as in the HF example scripts: overwriting means starting over
            return None
        found = runs.checkpoints(out)
        return found[-1][1] if found else None
    p = Path(str(rc))
    if not p.is_dir():
        raise LlmtuneError(f"train.resume_from_checkpoint: {rc} is not a checkpoint folder")
    if not (p / runs.MARKER).exists() or not (p / "trainer_state.json").exists():
        raise LlmtuneError(f"train.resume_from_checkpoint: {rc} is not a complete llmtune checkpoint "
                           f"(no {runs.MARKER} marker or trainer_state.json)")
    return p


def check_hardware(recipe: Recipe) -> None:
    """Settings this machine cannot run, said before anything is loaded."""
    import torch

    if recipe.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise LlmtuneError(f"{recipe.source}: train.mixed_precision=fp16 needs a CUDA GPU; on CPU use bf16 or no")


def native_bf16() -> str | None:
    """Where bf16 runs at full speed here: a CUDA GPU with bf16, or a CPU with bf16 instructions (AVX512-BF16,
    AMX), which oneDNN uses for bf16 matrix products (~1.7x fp32 on an AVX512-BF16 EPYC). None elsewhere:
    without them bf16 is emulated on a CPU and slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return "CUDA GPU with bf16" if torch.cuda.is_bf16_supported() else None
    try:
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "CPU with bf16 instructions"
    except (AttributeError, RuntimeError):
        pass
    return None


def release_freed_memory() -> None:
    """Hand the heap pages training freed back to the OS before eval adds its own peak on top. Training with
    varying batch shapes (bf16 autocast especially) leaves glibc's heap at 1.3-1.5 GB with under 0.3 GB live;
    eval's allocations then come on top of that. No effect on any number; milliseconds."""
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...)
            pass


@contextlib.contextmanager
def full_precision(model: Any) -> Any:
    """Evaluate without the autocast that Accelerate wraps around forward for mixed precision (put back after).

    The weights are fp32 whatever the precision of training arithmetic, and the numbers of a run's eval must
    not depend on it: under bf16 autocast a young LoRA adapter's small contribution is rounded away where it is
    added to the base layer's bf16 output (eval loss 1.308 in bf16 against 1.266 in fp32 for the same adapter,
    which `llmtune eval` would then report).
    """
    inner = getattr(model, "module", model)  # DDP keeps the wrapped forward on the module inside
    wrapped, original = inner.__dict__.get("forward"), inner.__dict__.get("_original_forward")
    if wrapped is None or original is None:
        yield
        return
    inner.forward = original
    try:
        yield
    finally:
        inner.forward = wrapped


def resolve_mixed_precision(recipe: Recipe) -> str:
    """train.mixed_precision, with `auto` made concrete: bf16 where the hardware runs it natively, else no."""
    mp = recipe.train.mixed_precision
    if mp == "auto":
        return "bf16" if native_bf16() else "no"
    return mp


def build_accelerator(recipe: Recipe, out: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    mp = resolve_mixed_precision(recipe)
    kwargs: dict[str, Any] = {}
    check_hardware(recipe)
    if mp != "no":
        kwargs["mixed_precision"] = mp  # otherwise the accelerate config (or `no`) decides
    log_with = None if recipe.train.report_to == "none" else recipe.train.report_to
    if log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as e:
            raise LlmtuneError("train.report_to=tensorboard needs the tensorboard package: pip install tensorboard") from e
    if log_with == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError as e:
            raise LlmtuneError("train.report_to=mlflow needs the mlflow package: pip install mlflow") from e
        os.environ.setdefault("MLFLOW_TRACKING_URI", (out / "mlruns").resolve().as_uri())
    return Accelerator(
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        # The sampler yields global batches that each process takes a slice of: the same examples form an update
        # whatever the number of processes, so 1 process and N processes at one global batch size agree.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        **kwargs,
    )


def finetune(recipe: Recipe, console: Any = None) -> dict[str, Any]:
    """Train, evaluate during and after training, write the run folder. Returns all_results."""
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from llmtune import tasks
    from llmtune.models import load_tokenizer, resolve

    t0 = time.time()
    out = Path(recipe.train.output_dir or "runs/run")
    task = tasks.get(recipe.task)
    resolved = resolve(recipe.model)  # a bad model name fails before anything is written
    resume_from = _resolve_resume(recipe, out) if out.exists() else None
    if resume_from is None and recipe.train.resume_from_checkpoint not in ("auto", False, "false"):
        resume_from = _resolve_resume(recipe, out)
    runs.prepare_output_dir(out, recipe.train.overwrite_output_dir, resume=resume_from is not None)

    accelerator = build_accelerator(recipe, out)
    main = accelerator.is_main_process
    say = (console.print if console is not None and main else (lambda *a, **k: None))
    set_seed(recipe.train.seed)

    tokenizer = load_tokenizer(recipe.model, resolved)
    with accelerator.main_process_first():
        splits = data_mod.load_splits(recipe, validate=lambda s: task.validate(recipe, s))
        info = task.setup(recipe, splits, tokenizer)
        train_ds = task.tokenize(recipe, tokenizer, splits["train"], info)
        eval_ds = task.tokenize(recipe, tokenizer, splits["eval"], info)
    if len(train_ds) == 0:
        raise LlmtuneError(f"{splits['train'].origin}: no training rows left after preprocessing")

    model = task.load_model(recipe, tokenizer, info)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    collate = task.collator(recipe, tokenizer, model)

    from torch.utils.data import DataLoader

    t = recipe.train
    lengths = _lengths(train_ds)
    n = accelerator.num_processes
    sampler = LengthGroupedBatches(lengths, t.per_device_train_batch_size * n, t.seed, t.group_by_length)
    # A loader without its own generator draws its base seed from the global RNG whenever an iterator starts;
    # a resumed run starts one at another moment, which would shift every dropout mask after it.
    train_loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                              num_workers=t.dataloader_num_workers, generator=torch.Generator().manual_seed(t.seed))
    ev_loader = eval_loader(eval_ds, collate, t.per_device_eval_batch_size * n)
    optimizer = make_optimizer(model, recipe)

    batches_per_epoch = len(sampler)
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / t.gradient_accumulation_steps))
    max_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * updates_per_epoch)
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * max_steps)
    # with split_batches the prepared scheduler steps once per update, whatever the number of processes
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
    model, optimizer, train_loader, ev_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, ev_loader, scheduler)

    adapter_only = _is_peft(accelerator.unwrap_model(model))
    if adapter_only:
        accelerator.register_save_state_pre_hook(_keep_trainable)
    state = TrainerState(fingerprint=_fingerprint(recipe, train_ds, lengths, n))
    if resume_from is not None:
        saved = TrainerState.from_file(resume_from / "trainer_state.json")
        _check_resume_compatible(saved.fingerprint, state.fingerprint, resume_from)
        accelerator.load_state(str(resume_from), **({"strict": False} if adapter_only else {}))
        saved.fingerprint = state.fingerprint
        state = saved
        say(f"[bold]Resuming[/] from {resume_from} (step {state.global_step})")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        runs.clean_partial(out)
        (out / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        runs.write_json(out / "run_info.json", runs.run_info({"recipe_source": recipe.source,
                                                                  "mixed_precision": accelerator.mixed_precision}))
    if accelerator.log_with:
        accelerator.init_trackers(out.name, config=_flat_config(recipe))

    metric_name = t.metric_for_best_model or task.DEFAULT_METRIC
    greater = task.GREATER_IS_BETTER if t.metric_for_best_model in (None, task.DEFAULT_METRIC) else \
        not metric_name.endswith(("loss", "perplexity", "ter"))
    global_batch = t.per_device_train_batch_size * n * t.gradient_accumulation_steps
    say(f"[bold]{recipe.task}[/] on {len(train_ds):,} train / {len(eval_ds):,} eval rows; global batch "
        f"{global_batch} = {t.per_device_train_batch_size} per device x {n} processes x "
        f"{t.gradient_accumulation_steps} accumulation; {max_steps} optimizer steps ({num_epochs} epochs)")
    if t.mixed_precision == "auto":
        say(f"mixed precision: {accelerator.mixed_precision} (auto: "
            f"{native_bf16() or 'no native bf16 on this hardware'})")

    log_path = out / "log.jsonl"

    def log(row: dict[str, Any]) -> None:
        state.log_history.append(row)
        if main:
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if accelerator.log_with:
            accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])

    def run_eval() -> tuple[dict[str, float], list[dict[str, Any]]]:
        ctx = tasks.EvalContext(model=model, loader=ev_loader, accelerator=accelerator, recipe=recipe,
                                tokenizer=tokenizer, info=info, split=splits["eval"])
        release_freed_memory()
        with full_precision(model):
            metrics, records = task.evaluate(ctx)
        return {f"eval_{k}": v for k, v in metrics.items()}, records

    def save_checkpoint() -> None:
        step = state.global_step
        tmp, final = out / f".tmp-checkpoint-{step}", out / f"checkpoint-{step}"
        try:
            if main and tmp.exists():
                shutil.rmtree(tmp)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp), safe_serialization=True)
            accelerator.wait_for_everyone()
            if main:
                (tmp / "trainer_state.json").write_text(state.to_json())
                runs.commit_dir(tmp, final)
                runs.rotate_checkpoints(out, t.save_total_limit, keep_step=state.best_step)
        except OSError as e:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            prev = runs.checkpoints(out)
            kept = f"the previous checkpoint {prev[-1][1]} is intact" if prev else "no earlier checkpoint exists"
            raise LlmtuneError(f"could not write checkpoint {final} ({e.strerror or e}); {kept}") from e
        accelerator.wait_for_everyone()

    last_eval: dict[str, float] = {}
    last_records: list[dict[str, Any]] = []
    last_eval_step = -1

    def evaluate_now() -> None:
        nonlocal last_eval, last_records, last_eval_step
        last_eval, last_records = run_eval()
        last_eval_step = state.global_step
        log({"step": state.global_step, "epoch": round(state.global_step / updates_per_epoch, 4), **last_eval})
        say(f"step {state.global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
        value = last_eval.get(f"eval_{metric_name}")
        if state.global_step == 0:
            return  # the untrained baseline is reported, never kept as "best"
        if value is not None and (state.best_metric is None or
                                  (value > state.best_metric if greater else value < state.best_metric)):
            state.best_metric, state.best_step = value, state.global_step

    import sys

    base_eval: dict[str, float] = {}
    before = recipe.eval.before_training
    before = getattr(task, "EVAL_BEFORE_TRAINING", False) if before is None else before
    if before and resume_from is None and state.global_step == 0:
        # the base model's numbers, so a run shows what fine-tuning bought; forked RNG: seeded generation in
        # eval must not shift the training stream
        with torch.random.fork_rng():
            evaluate_now()
        base_eval = dict(last_eval)
    elif resume_from is not None:
        first = state.log_history[0] if state.log_history else {}
        base_eval = {k: v for k, v in first.items() if k.startswith("eval_")} if first.get("step") == 0 else {}

    from tqdm.auto import tqdm

    # TQDM_DISABLE read here too: tqdm reads it once, at import, so a caller setting it later was not heard
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    progress = tqdm(total=max_steps, initial=state.global_step, disable=not main or quiet, desc="training",
                    unit="step", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)
    model.train()
    loss_acc = torch.full((), state.pending_loss_sum, device=accelerator.device)
    loss_n = state.pending_loss_n
    tok_acc = torch.zeros((), device=accelerator.device, dtype=torch.long)
    keep_going = True
    window_t, window_samples = time.time(), 0
    seg_start = time.time()
    stop = _StopFlag()
    with stop:
        while state.global_step < max_steps:
            epoch = state.epoch
            # Skipping inside our own sampler (not accelerate's skip_first_batches, whose new loader draws a seed
            # from the global RNG) keeps the dropout stream of a resumed run identical to an uninterrupted one.
            sampler.set_position(epoch, skip=state.batches_in_epoch)
            for batch in train_loader:
                with accelerator.accumulate(model):
                    outputs = model(**batch)
                    loss = outputs.loss
                    accelerator.backward(loss)
                    finite = True
                    if accelerator.sync_gradients:
                        if t.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                        # one collective per update carries both the finiteness of the loss and a pending signal
                        flags = accelerator.reduce(torch.stack([
                            torch.isfinite(loss.detach()).float(),
                            torch.tensor(float(stop.signum is None), device=loss.device)]), "min")
                        finite, keep_going = bool(flags[0] > 0), bool(flags[1] > 0)
                        if not finite and not t.skip_nonfinite:
                            raise LlmtuneError(
                                f"non-finite loss ({loss.item()}) at step {state.global_step + 1}; the last good "
                                f"checkpoint is kept in {out}. Lower train.learning_rate, or set "
                                "train.skip_nonfinite=true to skip such steps")
                        if not finite:
                            optimizer.zero_grad()
                            logger.warning("skipped step %d: non-finite loss", state.global_step + 1)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state.batches_in_epoch += 1
                if "attention_mask" in batch:
                    bsz = batch["input_ids"].shape[0]
                    tok_acc += batch["attention_mask"].sum()
                else:  # a packed row: examples start where position ids restart
                    pos = batch.get("position_ids")
                    bsz = int((pos == 0).sum()) if pos is not None else batch["input_ids"].shape[0]
                    tok_acc += batch["input_ids"].numel()
                # each process sees its slice of the global batch; every slice has the same size but the last
                window_samples += bsz * n
                state.samples_seen += bsz * n
                if finite:
                    loss_acc += loss.detach().float()
                    loss_n += 1
                if not accelerator.sync_gradients:
                    continue
                state.global_step += 1
                progress.update(1)
                if state.global_step % t.logging_steps == 0 or state.global_step == max_steps:
                    mean_loss = float(accelerator.reduce(loss_acc / max(loss_n, 1), "mean"))
                    state.train_loss_sum += mean_loss * loss_n
                    state.train_loss_count += loss_n
                    loss_acc.zero_()
                    loss_n = 0
                    state.tokens_seen += int(accelerator.reduce(tok_acc, "sum"))
                    tok_acc.zero_()
                    now = time.time()
                    sps = window_samples / max(now - window_t, 1e-9)
                    window_t, window_samples = now, 0
                    lr = scheduler.get_last_lr()[0]
                    log({"step": state.global_step, "epoch": round(state.global_step / updates_per_epoch, 4),
                         "loss": round(mean_loss, 6), "learning_rate": lr, "samples_per_second": round(sps, 2)})
                    progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}")
                is_epoch_end = state.batches_in_epoch >= batches_per_epoch
                do_eval = (t.eval_steps and state.global_step % t.eval_steps == 0) or \
                    (not t.eval_steps and is_epoch_end and state.global_step < max_steps)
                if do_eval:
                    evaluate_now()
                do_save = (t.save_steps and state.global_step % t.save_steps == 0) or (not t.save_steps and do_eval)
                stop_now = not keep_going
                if is_epoch_end:
                    state.epoch, state.batches_in_epoch = epoch + 1, 0
                if do_save or stop_now:
                    state.pending_loss_sum, state.pending_loss_n = float(loss_acc), loss_n
                    state.train_seconds += time.time() - seg_start
                    seg_start = time.time()
                    save_checkpoint()
                if stop_now:
                    progress.close()
                    raise Interrupted(f"interrupted at step {state.global_step}; checkpoint saved in "
                                      f"{out}/checkpoint-{state.global_step}. Run the same command again to resume")
                if state.global_step >= max_steps:
                    break
            else:
                state.epoch, state.batches_in_epoch = epoch + 1, 0
    progress.close()
    state.train_seconds += time.time() - seg_start

    if last_eval_step != state.global_step:
        evaluate_now()
    if t.load_best_model_at_end and state.best_step is not None and state.best_step != state.global_step:
        best = out / f"checkpoint-{state.best_step}"
        if best.exists():
            accelerator.load_state(str(best), **({"strict": False} if adapter_only else {}))
            say(f"loaded the best model (step {state.best_step}, {metric_name} {state.best_metric:.4f})")
            last_eval, last_records = run_eval()
    train_loss = state.train_loss_sum / max(state.train_loss_count, 1)
    train_results = {
        "epoch": round(state.global_step / updates_per_epoch, 4),
        "train_loss": train_loss,
        "train_runtime": round(state.train_seconds, 3),
        "train_samples": len(train_ds),
        "train_samples_per_second": round(state.samples_seen / max(state.train_seconds, 1e-9), 3),
        "train_steps_per_second": round(state.global_step / max(state.train_seconds, 1e-9), 3),
        "train_tokens_per_second": round(state.tokens_seen / max(state.train_seconds, 1e-9), 3),
        "global_step": state.global_step,
        "total_wall_seconds": round(time.time() - t0, 3),
    }
    eval_results = {**last_eval, **{f"base_{k}": v for k, v in base_eval.items()}, "eval_samples": len(eval_ds),
                    "epoch": train_results["epoch"]}
    if state.best_step is not None:
        eval_results[f"best_{metric_name}"] = state.best_metric
        eval_results["best_step"] = state.best_step
    all_results = {**train_results, **eval_results}
    accelerator.wait_for_everyone()
    if main:
        write_final(out, accelerator.unwrap_model(model), tokenizer, recipe, info, train_results, eval_results,
                    all_results, last_records, state.log_history)
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.end_training()
    return all_results


def _flat_config(recipe: Recipe) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in recipe.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
        else:
            flat[section] = values
    return flat


def save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """from_pretrained form: safetensors weights (or a PEFT adapter) + config + tokenizer."""
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def write_final(out: Path, model: Any, tokenizer: Any, recipe: Recipe, info: dict[str, Any],
                train_results: dict[str, Any], eval_results: dict[str, Any], all_results: dict[str, Any],
                records: list[dict[str, Any]], log_history: list[dict[str, Any]]) -> None:
    tmp = out / ".tmp-final"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, tokenizer, tmp)
    runs.write_json(tmp / "train_results.json", train_results)
    runs.write_json(tmp / "eval_results.json", eval_results)
    runs.write_json(tmp / "all_results.json", all_results)
    runs.write_jsonl(tmp / "predictions.jsonl", records)
    runs.write_json(tmp / "llmtune_info.json", {"task": recipe.task, **{k: v for k, v in info.items()
                                                                          if k != "label_values"}})
    try:
        runs.plot_loss(log_history, tmp / "loss.png")
    except Exception as e:  # a plot must never cost the run
        logger.warning("could not draw loss.png: %s", e)
    run_info = json.loads((out / "run_info.json").read_text()) if (out / "run_info.json").exists() else {}
    card = runs.model_card(recipe.to_yaml(), {k: v for k, v in all_results.items()
                                              if isinstance(v, (int, float))}, run_info, recipe.task,
                           recipe.model.name or "", adapter=(tmp / "adapter_config.json").exists())
    (tmp / "README.md").write_text(card, encoding="utf-8")
    # move every file into place, then the marker: a kill before the marker leaves an unfinished run
    for p in tmp.iterdir():
        os.replace(p, out / p.name)
    tmp.rmdir()
    (out / runs.MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
