"""The one Accelerate training loop that every task shares, as a few named steps.

Order follows Accelerate's idioms: Accelerator first; tokenize under main_process_first; prepare model, optimizer,
loaders and scheduler; step inside accumulate(); gather_for_metrics before scoring; only the main process writes.
`finetune` reads as the sequence of steps; each step is a function of the `Run` that carries their shared state.
Progress is reported as plain text through `report` (the CLI renders it) and through the `llmtune` logger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune import batching, hardware, runs, tasks
from llmtune import data as data_mod
from llmtune.errors import Interrupted, LlmtuneError
from llmtune.recipe import Recipe

logger = logging.getLogger("llmtune")

#: the data keys (and defaults) of DataArgs when it held every task's keys; see _fingerprint
LEGACY_DATA_DEFAULTS: dict[str, Any] = {
    "text_column": "text", "text_pair_column": None, "label_column": "label", "label_names": None,
    "source_column": None, "target_column": None, "source_prefix": None, "source_lang": None, "target_lang": None,
    "format": "instruction", "prompt_column": "instruction", "input_column": "input", "completion_column": "output",
    "messages_column": "messages", "template": None, "train_on_prompt": False, "packing": False,
}


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
    pending_extras: dict[str, list[float]] = field(default_factory=dict)  # the loss hook's extras: name -> [sum, n]
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
    # keys that DataArgs held before each task declared its own: their defaults fill in for the keys another task
    # owns, so a checkpoint written before that change still resumes
    data = {**LEGACY_DATA_DEFAULTS, **r["data"]}
    data = {k: v for k, v in data.items() if k not in ("max_eval_samples", "max_test_samples")}
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
        # the optimizer's state (restored on resume) carries these: a new value would be silently ignored
        "optimizer": f"lr{recipe.train.learning_rate}/wd{recipe.train.weight_decay}",
    }


def _is_peft(model: Any) -> bool:

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
            "batches": "the global batch size, accumulation, seed or length grouping",
            "optimizer": "train.learning_rate or train.weight_decay (the checkpoint's optimizer state holds the old "
                         "values)"}
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


def build_accelerator(recipe: Recipe, out: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    mp = hardware.resolve_mixed_precision(recipe)
    kwargs: dict[str, Any] = {}
    hardware.check_hardware(recipe)
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




@dataclass
class Run:
    """What the steps of one fine-tuning run share."""

    recipe: Recipe
    task: tasks.TaskModule
    out: Path
    report: Callable[[str], None]
    lock: runs.OutputLock
    t0: float = field(default_factory=time.time)
    resume_from: Path | None = None
    accelerator: Any = None
    tokenizer: Any = None
    splits: dict[str, data_mod.Split] = field(default_factory=dict)
    info: Any = None
    train_ds: Any = None
    eval_ds: Any = None
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    sampler: Any = None
    train_loader: Any = None
    eval_loader: Any = None
    state: TrainerState = field(default_factory=TrainerState)
    adapter_only: bool = False
    max_steps: int = 0
    batches_per_epoch: int = 0
    updates_per_epoch: int = 1
    metric_name: str = "loss"
    greater: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)
    last_records: list[dict[str, Any]] = field(default_factory=list)
    last_eval_step: int = -1
    base_eval: dict[str, float] = field(default_factory=dict)
    final_checkpoint: Path | None = None  # saved only to protect the final eval and write

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def processes(self) -> int:
        return int(self.accelerator.num_processes)


def finetune(recipe: Recipe, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, evaluate during and after training, write the run folder. Returns all_results."""
    run = prepare_run(recipe, report or (lambda message: None))
    try:
        load_data_and_model(run)
        build_loaders_and_optimizer(run)
        restore_or_start(run)
        evaluate_before_training(run)
        train(run)
        with _StopFlag() as stop:  # from here on a Ctrl-C or SIGTERM is heard at the next safe point
            evaluate_at_end(run)
            if stop.signum is not None:
                raise Interrupted(f"interrupted during the final evaluation; {run.out}/checkpoint-"
                                  f"{run.state.global_step} holds the trained model. Run the same command again "
                                  "to evaluate it and write the run")
            return finish(run)
    finally:
        run.lock.release()


def prepare_run(recipe: Recipe, report: Callable[[str], None]) -> Run:
    """Check the model name and the output folder before anything is written, then build the Accelerator."""
    from accelerate.utils import set_seed

    from llmtune.models import check_positions, resolve

    runs.refuse_special_output(recipe.train.output_dir, recipe.source)
    out = Path(recipe.train.output_dir or "runs/run")
    run = Run(recipe=recipe, task=tasks.get(recipe.task), out=out, report=report, lock=runs.OutputLock(out))
    check_positions(recipe.train.max_seq_length, resolve(recipe.model))  # a bad model fails before any write
    run.resume_from = _resolve_resume(recipe, out) if out.exists() else None
    if run.resume_from is None and recipe.train.resume_from_checkpoint not in ("auto", False, "false"):
        run.resume_from = _resolve_resume(recipe, out)
    runs.check_output_dir(out, recipe.train.overwrite_output_dir, resume=run.resume_from is not None)
    if os.environ.get("RANK", "0") == "0":  # one lock per run, held by the main process
        run.lock.acquire()
    try:
        run.accelerator = build_accelerator(recipe, out)
    except BaseException:
        run.lock.release()
        raise
    if not run.main:
        run.report = lambda message: None
    set_seed(recipe.train.seed)
    return run


def load_data_and_model(run: Run) -> None:
    """Tokenizer, validated splits, the task's info, tokenized splits (main process first: one cache), model."""
    from llmtune.models import load_tokenizer, resolve

    recipe, task = run.recipe, run.task
    run.tokenizer = load_tokenizer(recipe.model, resolve(recipe.model))
    with run.accelerator.main_process_first():
        run.splits = data_mod.load_splits(recipe, validate=lambda s: task.validate(recipe, s))
        run.info = task.setup(recipe, run.splits, run.tokenizer)
        tasks.check_best_metric(recipe, run.info)
        run.train_ds = task.tokenize(recipe, run.tokenizer, run.splits["train"], run.info)
        run.eval_ds = task.tokenize(recipe, run.tokenizer, run.splits["eval"], run.info)
    if len(run.train_ds) == 0:
        raise LlmtuneError(f"{run.splits['train'].origin}: no training rows left after preprocessing")
    run.model = task.load_model(recipe, run.tokenizer, run.info)
    with_model = getattr(task, "with_model", None)
    if with_model is not None:  # columns computed by the starting model (a reference's log-probs), cached
        with run.accelerator.main_process_first():
            run.train_ds = with_model(recipe, run.tokenizer, run.model, run.train_ds, "train", run.accelerator)
            run.eval_ds = with_model(recipe, run.tokenizer, run.model, run.eval_ds, "eval", run.accelerator)
    _frozen_in_bf16(run)
    if recipe.train.gradient_checkpointing:
        run.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(run.model, "enable_input_require_grads"):
            run.model.enable_input_require_grads()


def _frozen_in_bf16(run: Run) -> None:
    """Under LoRA with bf16 autocast, the frozen base Linear weights whose values are bf16 values are stored in
    bf16 (llmtune/frozen_bf16.py: the same numbers, without an fp32 copy beside autocast's bf16 one). Not under
    DeepSpeed, FSDP or Megatron, which manage the weights' storage themselves, nor with 4-bit weights."""
    acc = run.accelerator
    if (acc.mixed_precision != "bf16" or not _is_peft(run.model) or run.recipe.lora.load_in_4bit
            or str(getattr(acc.distributed_type, "value", acc.distributed_type)) in
            ("DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA")):
        return
    from llmtune.frozen_bf16 import store_frozen_bf16

    converted, kept = store_frozen_bf16(run.model)
    if converted or kept:
        run.report(f"frozen base weights: {converted} linear layers stored in bf16 (their values are bf16 values: "
                   "nothing changes but the memory)"
                   + (f"; {kept} kept in fp32 (bf16 would round them)" if kept else ""))


def build_loaders_and_optimizer(run: Run) -> None:
    """Length-grouped train batches, longest-first eval batches, AdamW and the schedule; all prepared."""
    from transformers import get_scheduler

    t, n = run.recipe.train, run.processes
    collate = run.task.collator(run.recipe, run.tokenizer, run.model)
    lengths = batching.lengths(run.train_ds)
    run.sampler = batching.LengthGroupedBatches(lengths, t.per_device_train_batch_size * n, t.seed, t.group_by_length)
    train_loader = batching.train_loader(run.train_ds, collate, run.sampler, t.dataloader_num_workers, t.seed)
    eval_loader = batching.eval_loader(run.eval_ds, collate, t.per_device_eval_batch_size * n)
    optimizer = make_optimizer(run.model, run.recipe)
    run.batches_per_epoch = len(run.sampler)
    run.updates_per_epoch = max(1, math.ceil(run.batches_per_epoch / t.gradient_accumulation_steps))
    run.max_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * run.updates_per_epoch)
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * run.max_steps)
    # with split_batches the prepared scheduler steps once per update, whatever the number of processes
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=run.max_steps)
    run.model, run.optimizer, run.train_loader, run.eval_loader, run.scheduler = run.accelerator.prepare(
        run.model, optimizer, train_loader, eval_loader, scheduler)
    run.adapter_only = _is_peft(run.accelerator.unwrap_model(run.model))
    if run.adapter_only:
        run.accelerator.register_save_state_pre_hook(_keep_trainable)
    run.state = TrainerState(fingerprint=_fingerprint(run.recipe, run.train_ds, lengths, n))
    run.metric_name = best_metric_name(run.recipe)
    run.greater = run.task.GREATER_IS_BETTER if run.metric_name == run.task.DEFAULT_METRIC else \
        not run.metric_name.endswith(("loss", "perplexity", "ter"))


def best_metric_name(recipe: Recipe) -> str:
    """train.metric_for_best_model without the `eval_` prefix a Trainer user may write (both forms work there)."""
    name = recipe.train.metric_for_best_model or tasks.get(recipe.task).DEFAULT_METRIC
    return name[len("eval_"):] if name.startswith("eval_") else name


def restore_or_start(run: Run) -> None:
    """Load the checkpoint to resume from (if any); write the resolved recipe and run_info.json; say what runs."""
    recipe, t, out, acc = run.recipe, run.recipe.train, run.out, run.accelerator
    if run.resume_from is not None:
        saved = TrainerState.from_file(run.resume_from / "trainer_state.json")
        _check_resume_compatible(saved.fingerprint, run.state.fingerprint, run.resume_from)
        acc.load_state(str(run.resume_from), **({"strict": False} if run.adapter_only else {}))
        saved.fingerprint = run.state.fingerprint
        run.state = saved
        run.report(f"Resuming from {run.resume_from} (step {run.state.global_step})")
    if run.main:
        if t.overwrite_output_dir and run.resume_from is None:
            # only now, with the new recipe, data and model all read: a bad input never costs the previous run
            runs.clear_previous_run(out)
        out.mkdir(parents=True, exist_ok=True)
        runs.clean_partial(out)
        if run.resume_from is not None:  # rows the killed attempt logged after its last checkpoint are not history
            (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.state.log_history),
                                           encoding="utf-8")
        (out / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        runs.write_json(out / "run_info.json", runs.run_info({"recipe_source": recipe.source,
                                                              "mixed_precision": acc.mixed_precision}))
    if acc.log_with:
        acc.init_trackers(out.name, config=_flat_config(recipe))
    n = run.processes
    global_batch = t.per_device_train_batch_size * n * t.gradient_accumulation_steps
    num_epochs = math.ceil(run.max_steps / run.updates_per_epoch)
    run.report(f"{recipe.task} on {len(run.train_ds):,} train / {len(run.eval_ds):,} eval rows; global batch "
               f"{global_batch} = {t.per_device_train_batch_size} per device x {n} processes x "
               f"{t.gradient_accumulation_steps} accumulation; {run.max_steps} optimizer steps ({num_epochs} epochs)")
    if t.mixed_precision == "auto":
        run.report(f"mixed precision: {acc.mixed_precision} (auto: "
                   f"{hardware.native_bf16() or 'no native bf16 on this hardware'})")


def log(run: Run, row: dict[str, Any]) -> None:
    run.state.log_history.append(row)
    if run.main:
        with (run.out / "log.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    if run.accelerator.log_with:
        run.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])


def evaluate(task: tasks.TaskModule, ctx: tasks.EvalContext) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The eval loop every task shares: the task's eval_step on each batch, outputs gathered from every process,
    each row once and in row order, then the task's score (in fp32: see hardware.full_precision)."""
    import torch

    model = ctx.model
    was_training = model.training
    model.eval()
    per_batch = []
    try:
        with hardware.full_precision(model), torch.no_grad():
            from llmtune.progress import bar

            # leave=False: during training the eval bar goes when it is done, under the training bar
            for batch in bar(ctx.loader, total=len(ctx.loader), desc=f"eval ({ctx.split.name})", unit="batch",
                             main=ctx.accelerator.is_main_process, leave=False):
                idx = batch.pop("idx")
                outputs = task.eval_step(model, batch)
                if outputs:
                    per_batch.append(batching.collect(ctx.accelerator, idx, outputs))
            outputs = batching.gather_outputs(ctx.accelerator, per_batch)
            return task.score(ctx, outputs)
    finally:
        if was_training:
            model.train()


def evaluate_now(run: Run, keep_best: bool = True) -> None:
    ctx = tasks.EvalContext(model=run.model, loader=run.eval_loader, accelerator=run.accelerator, recipe=run.recipe,
                            tokenizer=run.tokenizer, info=run.info, split=run.splits["eval"])
    hardware.release_freed_memory()
    metrics, run.last_records = evaluate(run.task, ctx)
    run.last_eval = {f"eval_{k}": v for k, v in metrics.items()}
    run.last_eval_step = step = run.state.global_step
    log(run, {"step": step, "epoch": round(step / run.updates_per_epoch, 4), **run.last_eval})
    run.report(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in run.last_eval.items()))
    value = run.last_eval.get(f"eval_{run.metric_name}")
    if value is None and run.recipe.train.metric_for_best_model:
        import difflib

        names = [k[len("eval_"):] for k in run.last_eval]
        close = difflib.get_close_matches(run.metric_name, names, n=1)
        raise LlmtuneError(f"train.metric_for_best_model: this task's eval reports no '{run.metric_name}'"
                           + (f" (did you mean '{close[0]}'?)" if close else "") + f"; it reports {', '.join(names)}")
    if step == 0 or not keep_best:
        return  # the untrained baseline is reported, never kept as "best"
    st = run.state
    if value is not None and (st.best_metric is None or
                              (value > st.best_metric if run.greater else value < st.best_metric)):
        st.best_metric, st.best_step = value, step


def evaluate_before_training(run: Run) -> None:
    """The base model's numbers, so a run shows what fine-tuning bought (or, on resume, the ones it logged)."""
    import torch

    before = run.recipe.eval.before_training
    before = run.task.EVAL_BEFORE_TRAINING if before is None else before
    if before and run.resume_from is None and run.state.global_step == 0:
        # forked RNG: seeded generation in eval must not shift the training stream
        with torch.random.fork_rng():
            evaluate_now(run)
        run.base_eval = dict(run.last_eval)
    elif run.resume_from is not None:
        first = run.state.log_history[0] if run.state.log_history else {}
        run.base_eval = {k: v for k, v in first.items() if k.startswith("eval_")} if first.get("step") == 0 else {}


def save_checkpoint(run: Run, rotate: bool = True) -> None:
    acc, out, state = run.accelerator, run.out, run.state
    step = state.global_step
    tmp, final = out / f".tmp-checkpoint-{step}", out / f"checkpoint-{step}"
    try:
        if run.main and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if run.main:
            (tmp / "trainer_state.json").write_text(state.to_json())
            runs.commit_dir(tmp, final)
            if rotate:
                runs.rotate_checkpoints(out, run.recipe.train.save_total_limit, keep_step=state.best_step)
    except OSError as e:
        if run.main:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = runs.checkpoints(out)
        kept = f"the previous checkpoint {prev[-1][1]} is intact" if prev else "no earlier checkpoint exists"
        raise LlmtuneError(f"could not write checkpoint {final} ({e.strerror or e}); {kept}") from e
    acc.wait_for_everyone()


def _progress_bar(run: Run) -> Any:
    from llmtune.progress import bar

    return bar(total=run.max_steps, initial=run.state.global_step, main=run.main, desc="training", unit="step")


def train(run: Run) -> None:
    """Optimizer steps until max_steps: accumulate, clip, step; log, evaluate and checkpoint on schedule;
    a Ctrl-C or SIGTERM saves a checkpoint at the next update and stops (Interrupted)."""
    import torch

    acc, t, state, model = run.accelerator, run.recipe.train, run.state, run.model
    loss_of = tasks.loss_fn(run.task)
    progress = _progress_bar(run)
    model.train()
    loss_acc = torch.full((), state.pending_loss_sum, device=acc.device)
    loss_n = state.pending_loss_n
    # the loss hook's extras (rewards/accuracies...): a sum on device and a count per name, like the loss
    extras = _ExtraMeans(acc.device, state.pending_extras)
    tok_acc = torch.zeros((), device=acc.device, dtype=torch.long)
    keep_going = True
    window_t, window_samples = time.time(), 0
    seg_start = time.time()
    with _StopFlag() as stop:
        while state.global_step < run.max_steps:
            epoch = state.epoch
            # Skipping inside our own sampler (not accelerate's skip_first_batches, whose new loader draws a seed
            # from the global RNG) keeps the dropout stream of a resumed run identical to an uninterrupted one.
            run.sampler.set_position(epoch, skip=state.batches_in_epoch)
            for batch in run.train_loader:
                # per-row counts a collator may add for padding-free layouts: counted here, not model inputs
                counts = {k: batch.pop(k) for k in ("n_tokens", "n_examples") if k in batch}
                with acc.accumulate(model):
                    # the prepared model's forward autocasts by itself, but a loss hook may call its parts directly
                    # (causal_lm runs the decoder, then the output layer on the learnt tokens): they autocast too
                    with acc.autocast():
                        loss, extra = _split_loss(loss_of(model, batch))
                    acc.backward(loss)
                    finite = True
                    if acc.sync_gradients:
                        if t.max_grad_norm > 0:
                            acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                        # one collective per update carries both the finiteness of the loss and a pending signal
                        flags = acc.reduce(torch.stack([
                            torch.isfinite(loss.detach()).float(),
                            torch.tensor(float(stop.signum is None), device=loss.device)]), "min")
                        finite, keep_going = bool(flags[0] > 0), bool(flags[1] > 0)
                        if not finite and not t.skip_nonfinite:
                            raise LlmtuneError(
                                f"non-finite loss ({loss.item()}) at step {state.global_step + 1}; the last good "
                                f"checkpoint is kept in {run.out}. Lower train.learning_rate, or set "
                                "train.skip_nonfinite=true to skip such steps")
                        if not finite:
                            run.optimizer.zero_grad()
                            logger.warning("skipped step %d: non-finite loss", state.global_step + 1)
                    run.optimizer.step()
                    run.scheduler.step()
                    run.optimizer.zero_grad()
                state.batches_in_epoch += 1
                bsz, tokens = _batch_size_and_tokens(batch, counts)
                tok_acc += tokens
                # each process sees its slice of the global batch; every slice has the same size but the last
                window_samples += bsz * run.processes
                state.samples_seen += bsz * run.processes
                if finite:
                    loss_acc += loss.detach().float()
                    loss_n += 1
                    extras.add(extra)
                if not acc.sync_gradients:
                    continue
                state.global_step += 1
                progress.update(1)
                if state.global_step % t.logging_steps == 0 or state.global_step == run.max_steps:
                    mean_loss = float(acc.reduce(loss_acc / max(loss_n, 1), "mean"))
                    state.train_loss_sum += mean_loss * loss_n
                    state.train_loss_count += loss_n
                    loss_acc.zero_()
                    loss_n = 0
                    extra_means = extras.pop(acc)
                    state.tokens_seen += int(acc.reduce(tok_acc, "sum"))
                    tok_acc.zero_()
                    now = time.time()
                    sps = window_samples / max(now - window_t, 1e-9)
                    window_t, window_samples = now, 0
                    lr = run.scheduler.get_last_lr()[0]
                    log(run, {"step": state.global_step, "epoch": round(state.global_step / run.updates_per_epoch, 4),
                              "loss": round(mean_loss, 6), **{k: round(v, 6) for k, v in extra_means.items()},
                              "learning_rate": lr, "samples_per_second": round(sps, 2)})
                    # the bar has room for the first two extras (a task puts the ones worth watching first)
                    shown = {k.rsplit("/", 1)[-1]: f"{v:.4f}" for k, v in list(extra_means.items())[:2]}
                    progress.set_postfix({"loss": f"{mean_loss:.4f}", **shown, "lr": f"{lr:.2e}", "sps": f"{sps:.1f}"})
                is_epoch_end = state.batches_in_epoch >= run.batches_per_epoch
                do_eval = (t.eval_steps and state.global_step % t.eval_steps == 0) or \
                    (not t.eval_steps and is_epoch_end and state.global_step < run.max_steps)
                if do_eval:
                    evaluate_now(run)
                do_save = (t.save_steps and state.global_step % t.save_steps == 0) or (not t.save_steps and do_eval)
                stop_now = not keep_going
                if is_epoch_end:
                    state.epoch, state.batches_in_epoch = epoch + 1, 0
                if do_save or stop_now:
                    state.pending_loss_sum, state.pending_loss_n = float(loss_acc), loss_n
                    state.pending_extras = extras.pending()
                    state.train_seconds += time.time() - seg_start
                    seg_start = time.time()
                    save_checkpoint(run)
                if stop_now:
                    progress.close()
                    raise Interrupted(f"interrupted at step {state.global_step}; checkpoint saved in "
                                      f"{run.out}/checkpoint-{state.global_step}. Run the same command again to resume")
                if state.global_step >= run.max_steps:
                    break
            else:
                state.epoch, state.batches_in_epoch = epoch + 1, 0
    progress.close()
    state.train_seconds += time.time() - seg_start
    if not (run.out / f"checkpoint-{state.global_step}").is_dir():
        # the final eval and write can take minutes: until the final model is in place, the last step is kept
        # in a checkpoint (outside the rotation, removed once the run is written), so no signal costs training
        state.pending_loss_sum, state.pending_loss_n = float(loss_acc), loss_n
        state.pending_extras = extras.pending()
        save_checkpoint(run, rotate=False)
        run.final_checkpoint = run.out / f"checkpoint-{state.global_step}"


def _split_loss(value: Any) -> tuple[Any, dict[str, Any]]:
    """A loss hook's result: a bare loss tensor, or (loss, {name: per-example values or a scalar})."""
    if isinstance(value, tuple):
        loss, extra = value
        return loss, extra
    return value, {}


class _ExtraMeans:
    """Means over a logging window of the loss hook's extras, accumulated on device (no sync per step): each
    value of a per-example tensor counts once (preference: per pair), a scalar once per micro-batch. At a logging
    step one reduction sums every process's sums and counts."""

    def __init__(self, device: Any, pending: dict[str, list[float]]) -> None:
        import torch

        self.device = device
        self.sums = {k: torch.tensor(float(s), device=device) for k, (s, _) in pending.items()}
        self.counts = {k: int(n) for k, (_, n) in pending.items()}

    def add(self, extra: dict[str, Any]) -> None:
        import torch

        for name, v in extra.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=self.device)
            if name not in self.sums:
                self.sums[name], self.counts[name] = torch.zeros((), device=self.device), 0
            self.sums[name] += v.sum()
            self.counts[name] += v.numel()

    def pop(self, acc: Any) -> dict[str, float]:
        """The window's means (every process gets the same), and a fresh window."""
        import torch

        if not self.sums:
            return {}
        names = list(self.sums)
        counts = torch.tensor([float(self.counts[k]) for k in names], device=self.device)
        totals = acc.reduce(torch.stack([torch.stack([self.sums[k] for k in names]), counts]), "sum")
        means = dict(zip(names, (totals[0] / totals[1].clamp(min=1)).tolist(), strict=True))  # the one sync
        self.sums, self.counts = {}, {}
        return means

    def pending(self) -> dict[str, list[float]]:
        """Sums and counts since the last log line, for the checkpoint: a resume loses none (as the loss)."""
        return {k: [float(v), self.counts[k]] for k, v in self.sums.items()}


def _batch_size_and_tokens(batch: dict[str, Any], counts: dict[str, Any]) -> tuple[int, Any]:
    """Examples and real (non-pad) tokens of a batch: the collator's own counts where it gives them, else the
    attention mask, else a packed row's examples start where position ids restart."""
    if "n_tokens" in counts and "n_examples" in counts:
        return int(counts["n_examples"].sum()), counts["n_tokens"].sum()
    if "attention_mask" in batch:
        return batch["input_ids"].shape[0], batch["attention_mask"].sum()
    pos = batch.get("position_ids")
    bsz = int((pos == 0).sum()) if pos is not None else batch["input_ids"].shape[0]
    return bsz, batch["input_ids"].numel()


def evaluate_at_end(run: Run) -> None:
    """The final step's eval (unless it just ran), then the best checkpoint's weights if asked for."""
    state = run.state
    if run.last_eval_step != state.global_step:
        evaluate_now(run)
    if run.recipe.train.load_best_model_at_end and state.best_step is not None and state.best_step != state.global_step:
        best = run.out / f"checkpoint-{state.best_step}"
        if best.exists():
            run.accelerator.load_state(str(best), **({"strict": False} if run.adapter_only else {}))
            run.report(f"loaded the best model (step {state.best_step}, {run.metric_name} {state.best_metric:.4f})")
            ctx = tasks.EvalContext(model=run.model, loader=run.eval_loader, accelerator=run.accelerator,
                                    recipe=run.recipe, tokenizer=run.tokenizer, info=run.info,
                                    split=run.splits["eval"])
            metrics, run.last_records = evaluate(run.task, ctx)
            run.last_eval = {f"eval_{k}": v for k, v in metrics.items()}


def finish(run: Run) -> dict[str, Any]:
    """The results files and the final model, written by the main process; returns all_results."""
    state, acc = run.state, run.accelerator
    epoch = round(state.global_step / run.updates_per_epoch, 4)
    train_results = {
        "epoch": epoch,
        "train_loss": state.train_loss_sum / max(state.train_loss_count, 1),
        "train_runtime": round(state.train_seconds, 3),
        "train_samples": len(run.train_ds),
        "train_samples_per_second": round(state.samples_seen / max(state.train_seconds, 1e-9), 3),
        "train_steps_per_second": round(state.global_step / max(state.train_seconds, 1e-9), 3),
        "train_tokens_per_second": round(state.tokens_seen / max(state.train_seconds, 1e-9), 3),
        "global_step": state.global_step,
        "total_wall_seconds": round(time.time() - run.t0, 3),
    }
    eval_results = {**run.last_eval, **{f"base_{k}": v for k, v in run.base_eval.items()},
                    "eval_samples": len(run.eval_ds), "epoch": epoch}
    if state.best_step is not None:
        eval_results[f"best_{run.metric_name}"] = state.best_metric
        eval_results["best_step"] = state.best_step
    all_results = {**train_results, **eval_results}
    acc.wait_for_everyone()
    if run.main:
        write_final(run.out, acc.unwrap_model(run.model), run.tokenizer, run.recipe, run.info, train_results,
                    eval_results, all_results, run.last_records, state.log_history)
    acc.wait_for_everyone()
    if run.main and run.final_checkpoint is not None and run.final_checkpoint.name != \
            f"checkpoint-{state.best_step}":
        shutil.rmtree(run.final_checkpoint, ignore_errors=True)  # the final model is in place now
    if acc.log_with:
        acc.end_training()
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


def write_final(out: Path, model: Any, tokenizer: Any, recipe: Recipe, info: Any,
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
    runs.write_json(tmp / runs.INFO_FILE, {"task": recipe.task, **info.to_json()})
    try:
        runs.plot_loss(log_history, tmp / "loss.png")
    except Exception as e:  # a plot must never cost the run
        logger.warning("could not draw loss.png: %s", e)
    run_info = json.loads((out / "run_info.json").read_text()) if (out / "run_info.json").exists() else {}
    card = runs.model_card(recipe.to_yaml(), {k: v for k, v in all_results.items()
                                              if isinstance(v, (int, float))}, run_info, recipe.task,
                           recipe.model.name or "", adapter=(tmp / "adapter_config.json").exists())
    (tmp / "README.md").write_text(card, encoding="utf-8")
    names = sorted(p.name for p in tmp.iterdir())
    runs.write_json(tmp / runs.MANIFEST, names)  # what overwrite_output_dir may remove later, and nothing else
    # move every file into place, then the marker: a kill before the marker leaves an unfinished run
    for p in tmp.iterdir():
        os.replace(p, out / p.name)
    tmp.rmdir()
    (out / runs.MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
