"""The reference side: each workload written the way a user of the Hugging Face example scripts runs it.

    classification  examples/pytorch/text-classification/run_glue.py (train, save, evaluate)
    summarization   examples/pytorch/summarization/run_summarization.py (--predict_with_generate)
    causal_lm       Trainer + PEFT LoRA on prompt/completion pairs with the prompt masked, as in PEFT's examples;
                    and TRL's SFTTrainer (padding_free, completion_only_loss, peft_config): the trainer
                    LLaMA-Factory and Axolotl users train through (`trl_sft`, from the `bench` extra)
    generation      run_summarization.py --do_predict --predict_with_generate (Seq2SeqTrainer.predict)
    metrics         a loop over rouge_score's RougeScorer, then one sacrebleu.corpus_bleu call
    ner             examples/pytorch/token-classification/run_ner.py (tokenize_and_align_labels, seqeval)
    qa              examples/pytorch/question-answering/run_qa.py + utils_qa.postprocess_qa_predictions

`ref_default` keeps the example scripts' defaults where they differ from good practice; `ref_tuned` is what a
careful user of the same scripts would switch on:

    classification  default: run_glue pads every example to max_seq_length (--pad_to_max_length is True)
                    tuned:   dynamic padding (DataCollatorWithPadding) + group_by_length
    summarization   default: run_summarization already pads per batch; random batches
                    tuned:   + group_by_length
    causal_lm       default: every example padded to max_seq_length (padding="max_length"), as PEFT's examples do
                    tuned:   dynamic padding + group_by_length
    generation      default: predict() on the labelled rows in file order (it also computes the loss)
                    tuned:   unlabelled rows sorted longest first (generation only, little padding)
    ner             tuned only: run_ner already pads per batch (DataCollatorForTokenClassification); + group_by_length
    qa              tuned only: dynamic padding (run_qa's --pad_to_max_length False) + group_by_length

What makes the comparison fair: both sides load the same model folder (the same initial weights) and read the
same data files; every number below comes from the workload's one `hp` dict (batch sizes, optimizer steps,
learning rate, linear schedule without warm-up and weight decay 0 except where the workload's hp sets them (ner,
qa: warm-up steps and weight decay 0.01, as their recipes), maximum lengths, generation length); seeds are
equal per repeat; the optimizer is the Trainer's default fused AdamW, as llmtune's; no checkpoints are written
mid-run on either side; the runner gives both sides the same threads. Non-padding tokens are counted as the sum of
attention_mask over the batches trained (`include_num_input_tokens_seen="non_padding"`), as llmtune counts them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmtune.benchmark import preference_workload

IGNORE = -100
# a reference variant's fp32 twin: `ref_tuned_fp32` is `ref_tuned` without bf16 (the fp32 table of the report)
FP32 = "_fp32"


# the reference variant that also runs in fp32 where the references autocast (beside llmtune_fp32)
FP32_TWIN = "ref_tuned"
# the peers that come from the `bench` extra: side -> the package it needs
PEERS: dict[str, str] = {"trl_sft": "trl"}


def peer_missing(side: str) -> str | None:
    """Why a peer side cannot run here (its package is not installed), else None."""
    import importlib.util

    package = PEERS.get(side.removesuffix(FP32))
    if package and importlib.util.find_spec(package) is None:
        return f"not run: {package} is not installed (pip install -e '.[bench]')"
    return None


def base_variant(variant: str) -> str:
    """The variant without its precision: `ref_tuned_fp32` -> `ref_tuned`."""
    return variant.removesuffix(FP32)


def bf16(spec: dict[str, Any], variant: str) -> bool:
    """Like for like: a reference autocasts to bf16 (the Trainer's `bf16=True`) exactly where llmtune's side does
    (`spec["autocast"]`, set by workloads.prepare: the workload trains with mixed_precision auto and this machine
    runs bf16 natively); its `_fp32` twin, like llmtune's `llmtune_fp32` side, runs fp32."""
    return bool(spec.get("autocast")) and not variant.endswith(FP32)


def training_args(hp: dict[str, Any], seed: int, out: Path, tuned: bool, seq2seq: bool = False, bf16: bool = False,
                  cls: Any = None, **extra: Any) -> Any:
    """The TrainingArguments every reference shares (`cls`: a subclass, e.g. TRL's SFTConfig)."""
    import torch
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    cls = cls or (Seq2SeqTrainingArguments if seq2seq else TrainingArguments)
    return cls(
        output_dir=str(out),
        max_steps=hp["max_steps"],
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp.get("eval_batch_size", 32),
        learning_rate=hp["learning_rate"],
        weight_decay=hp.get("weight_decay", 0.0),
        lr_scheduler_type="linear",
        warmup_steps=hp.get("warmup_steps", 0),
        logging_steps=hp["logging_steps"],
        seed=seed,
        train_sampling_strategy="group_by_length" if tuned else "random",  # --group_by_length
        include_num_input_tokens_seen="non_padding",
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=bf16,  # autocast, fp32 master weights: what llmtune's mixed_precision bf16 does
        # without it the Trainer refuses bf16 on a CPU ("doesn't support bf16/gpu"), even on an AMX Xeon
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )


def sequential_eval(trainer: Any) -> None:
    """Evaluate and predict in dataset order. With `train_sampling_strategy="group_by_length"` (the tuned
    variants' --group_by_length) transformers also length-groups the eval batches (huggingface/transformers#33514),
    so `predict()` returns rows in another order than the dataset's: harmless where labels come back with them
    (classification, NER), garbage where rows are matched to the dataset by position afterwards (run_qa.py's window
    post-processing: SQuAD F1 4.3 instead of 45 on held-out articles, 2026-12-02; the summaries scored against the
    eval file's references)."""
    trainer.args.train_sampling_strategy = "random"  # the eval sampler is then sequential; training is over


def trainer_figures(trainer: Any, train_result: Any) -> dict[str, Any]:
    m = train_result.metrics
    return {
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "train_runtime": m["train_runtime"],
        "train_samples_per_second": m["train_samples_per_second"],
        "train_tokens_per_second": trainer.state.num_input_tokens_seen / m["train_runtime"],
        "global_step": trainer.state.global_step,
        "train_loss": m["train_loss"],
        "loss_curve": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
    }


# ---- 1. classification: run_glue.py ----------------------------------------------------------------------


def classification(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    import numpy as np
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        default_data_collator,
        set_seed,
    )

    hp = spec["hp"]
    pad_to_max_length = base_variant(variant) == "ref_default"  # run_glue.py: --pad_to_max_length defaults to True
    set_seed(seed)
    raw = load_dataset("json", data_files={"train": spec["data"]["train"], "validation": spec["data"]["eval"]})
    label_list = sorted(raw["train"].unique("label"))
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=len(label_list))
    label_to_id = {v: i for i, v in enumerate(label_list)}
    model.config.label2id = {str(v): i for v, i in label_to_id.items()}
    model.config.id2label = {i: str(v) for v, i in label_to_id.items()}
    padding = "max_length" if pad_to_max_length else False

    def preprocess_function(examples: dict[str, list[Any]]) -> Any:
        result = tokenizer(examples["text"], padding=padding, max_length=hp["max_seq_length"], truncation=True)
        result["label"] = [label_to_id[label] for label in examples["label"]]
        return result

    raw = raw.map(preprocess_function, batched=True)

    def compute_metrics(p: Any) -> dict[str, float]:
        preds = np.argmax(p.predictions, axis=1)
        return {"accuracy": float((preds == p.label_ids).astype(np.float32).mean())}

    trainer = Trainer(
        model=model,
        args=training_args(hp, seed, out, tuned=not pad_to_max_length, bf16=bf16(spec, variant)),
        train_dataset=raw["train"],
        eval_dataset=raw["validation"],
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=default_data_collator if pad_to_max_length else DataCollatorWithPadding(tokenizer),
    )
    train_result = trainer.train()
    trainer.save_model()
    metrics = trainer.evaluate()
    return {**trainer_figures(trainer, train_result),
            "quality": {"eval_accuracy": metrics["eval_accuracy"], "eval_loss": metrics["eval_loss"]}}


# ---- 2. summarization: run_summarization.py --------------------------------------------------------------


def summarization(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    import numpy as np
    from datasets import load_dataset
    from rouge_score import rouge_scorer
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer, set_seed

    hp = spec["hp"]
    set_seed(seed)
    raw = load_dataset("json", data_files={"train": spec["data"]["train"], "validation": spec["data"]["eval"]})
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["model"])
    prefix = hp["source_prefix"]

    def preprocess_function(examples: dict[str, list[Any]]) -> Any:
        inputs = [prefix + inp for inp in examples["source"]]
        model_inputs = tokenizer(inputs, max_length=hp["max_source_length"], padding=False, truncation=True)
        labels = tokenizer(text_target=examples["target"], max_length=hp["max_target_length"], padding=False,
                           truncation=True)
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    train_dataset = raw["train"].map(preprocess_function, batched=True, remove_columns=raw["train"].column_names)
    eval_dataset = raw["validation"].map(preprocess_function, batched=True,
                                         remove_columns=raw["validation"].column_names)
    data_collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE)
    # evaluate.load("rouge") fetches its script from the hub; its computation is this rouge_score loop
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    decoded: list[str] = []

    def compute_metrics(eval_preds: Any) -> dict[str, float]:
        preds, labels = eval_preds
        preds = np.where(preds != IGNORE, preds, tokenizer.pad_token_id)
        decoded_preds = [p.strip() for p in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        labels = np.where(labels != IGNORE, labels, tokenizer.pad_token_id)
        decoded_labels = [x.strip() for x in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        decoded[:] = decoded_preds
        scores = [scorer.score(ref, pred) for pred, ref in zip(decoded_preds, decoded_labels, strict=True)]
        return {k: 100 * sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeL")}

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args(hp, seed, out, tuned=base_variant(variant) == "ref_tuned", seq2seq=True, predict_with_generate=True),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
    )
    train_result = trainer.train()
    trainer.save_model()
    sequential_eval(trainer)  # `decoded` is scored against the eval file's references row by row
    metrics = trainer.evaluate(max_new_tokens=hp["max_new_tokens"], num_beams=1, metric_key_prefix="eval")
    return {**trainer_figures(trainer, train_result), "predictions": list(decoded),
            "quality": {"eval_loss": metrics["eval_loss"]}}


# ---- 3. causal_lm: Trainer + PEFT LoRA -------------------------------------------------------------------


def causal_lm(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, default_data_collator, set_seed

    hp = spec["hp"]
    max_len = hp["max_seq_length"]
    pad_to_max_length = base_variant(variant) == "ref_default"
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
                                             lora_dropout=hp["lora_dropout"], target_modules="all-linear", bias="none"))

    def preprocess(example: dict[str, Any]) -> dict[str, list[int]]:
        input_ids, labels = causal_lm_tokens(tokenizer, example, max_len)
        attention_mask = [1] * len(input_ids)
        if pad_to_max_length:
            pad = max_len - len(input_ids)
            input_ids += [tokenizer.pad_token_id] * pad
            attention_mask += [0] * pad
            labels += [IGNORE] * pad
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    raw = load_dataset("json", data_files={"train": spec["data"]["train"], "validation": spec["data"]["eval"]})
    train_dataset = raw["train"].map(preprocess, remove_columns=raw["train"].column_names)
    eval_dataset = raw["validation"].map(preprocess, remove_columns=raw["validation"].column_names)
    collator = default_data_collator if pad_to_max_length else DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)
    trainer = Trainer(model=model, args=training_args(hp, seed, out, tuned=not pad_to_max_length, bf16=bf16(spec, variant)),
                      train_dataset=train_dataset, processing_class=tokenizer, data_collator=collator)
    train_result = trainer.train()
    trainer.save_model()
    return {**trainer_figures(trainer, train_result),
            "quality": {"eval_loss": eval_loss_per_token(model, eval_dataset, collator, hp["eval_batch_size"])}}


def causal_lm_tokens(tokenizer: Any, example: dict[str, Any], max_len: int) -> tuple[list[int], list[int]]:
    """The chat template's prompt, then the answer and the end-of-turn token (the answer alone is learnt): the
    token ids and labels every causal_lm reference trains on, cut at max_len."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": example["question"]}], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example["answer"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return (prompt_ids + answer_ids)[:max_len], ([IGNORE] * len(prompt_ids) + answer_ids)[:max_len]


def eval_loss_per_token(model: Any, eval_dataset: Any, collator: Any, batch_size: int) -> float:
    """Mean loss per target token over all eval rows, in fp32 as llmtune evaluates (Trainer.evaluate averages per
    batch instead)."""
    import torch
    from torch.utils.data import DataLoader

    model.eval()
    nll, n_tokens = 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(eval_dataset, batch_size=batch_size, collate_fn=collator):
            batch = {k: v.to(model.device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            nll += float(model(**batch).loss) * n
            n_tokens += n
    return nll / max(n_tokens, 1)


def causal_lm_trl(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    """TRL's SFTTrainer as its docs set it up for prompt/completion data with LoRA: `padding_free=True` (each batch
    one row of concatenated examples with position_ids, no padding), `completion_only_loss=True`, the adapter from
    `peft_config`. The rows are tokenized as the other references tokenize them (input_ids + completion_mask, which
    SFTTrainer takes as they are), so every side trains on the same tokens."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, set_seed
    from trl import SFTConfig, SFTTrainer

    hp = spec["hp"]
    max_len = hp["max_seq_length"]
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model.config.use_cache = False

    def preprocess(example: dict[str, Any]) -> dict[str, list[int]]:
        input_ids, labels = causal_lm_tokens(tokenizer, example, max_len)
        return {"input_ids": input_ids, "completion_mask": [int(t != IGNORE) for t in labels]}

    def with_labels(example: dict[str, Any]) -> dict[str, list[int]]:
        input_ids, labels = causal_lm_tokens(tokenizer, example, max_len)
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    raw = load_dataset("json", data_files={"train": spec["data"]["train"], "validation": spec["data"]["eval"]})
    train_dataset = raw["train"].map(preprocess, remove_columns=raw["train"].column_names)
    # max_length=None: the rows are already cut at max_seq_length (TRL refuses max_length with padding_free unpacked)
    # gradient_checkpointing: SFTConfig turns it on by default (llmtune's recipes and the other references do not):
    # off, so both sides keep their activations and the memory and speed figures compare like for like
    args = training_args(hp, seed, out, tuned=False, bf16=bf16(spec, variant), cls=SFTConfig, padding_free=True,
                         completion_only_loss=True, max_length=None, packing=False, gradient_checkpointing=False)
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
                             lora_dropout=hp["lora_dropout"], target_modules="all-linear", bias="none")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    train_result = trainer.train()
    trainer.save_model()
    eval_dataset = raw["validation"].map(with_labels, remove_columns=raw["validation"].column_names)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)
    figures = trainer_figures(trainer, train_result)
    # without an attention_mask the Trainer counts tokens that are not the pad id, and the pad id is the end-of-turn
    # token every example ends with: count the trained rows' tokens instead (one epoch over all of them)
    if trainer.state.global_step * hp["batch_size"] == len(train_dataset):
        figures["train_tokens_per_second"] = sum(len(r) for r in train_dataset["input_ids"]) / figures["train_runtime"]
    return {**figures,
            "quality": {"eval_loss": eval_loss_per_token(trainer.model, eval_dataset, collator, hp["eval_batch_size"])}}


# ---- 4. generation-based eval: Seq2SeqTrainer.predict(predict_with_generate) ------------------------------


def generation(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    import numpy as np
    from datasets import load_dataset
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    from llmtune.benchmark.workloads import generation_figures

    hp = spec["hp"]
    tuned = base_variant(variant) == "ref_tuned"
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["model"])
    args = Seq2SeqTrainingArguments(output_dir=str(out), per_device_eval_batch_size=hp["batch_size"],
                                    predict_with_generate=True, report_to="none", disable_tqdm=True,
                                    dataloader_num_workers=0)
    # without labels there is nothing for DataCollatorForSeq2Seq to do but pad the inputs
    collator = DataCollatorWithPadding(tokenizer) if tuned else \
        DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE)
    trainer = Seq2SeqTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)
    raw = load_dataset("json", data_files={"test": spec["data"]["eval"]})["test"]

    t0 = time.perf_counter()

    def preprocess_function(examples: dict[str, list[Any]]) -> Any:
        inputs = [hp["source_prefix"] + inp for inp in examples["source"]]
        model_inputs = tokenizer(inputs, max_length=hp["max_source_length"], truncation=True)
        if not tuned:  # run_summarization tokenizes the targets of a labelled test set too
            model_inputs["labels"] = tokenizer(text_target=examples["target"], max_length=hp["max_new_tokens"],
                                               truncation=True)["input_ids"]
        return model_inputs

    predict_dataset = raw.map(preprocess_function, batched=True, remove_columns=raw.column_names)
    order = list(range(len(predict_dataset)))
    if tuned:  # longest first, so each batch pads little; put back in file order after
        order.sort(key=lambda i: -len(predict_dataset[i]["input_ids"]))
        predict_dataset = predict_dataset.select(order)
    results = trainer.predict(predict_dataset, metric_key_prefix="predict", max_new_tokens=hp["max_new_tokens"],
                              num_beams=1)
    preds = np.where(results.predictions != IGNORE, results.predictions, tokenizer.pad_token_id)
    texts = [p.strip() for p in tokenizer.batch_decode(preds, skip_special_tokens=True,
                                                       clean_up_tokenization_spaces=True)]
    predictions = [""] * len(texts)
    for i, text in zip(order, texts, strict=True):
        predictions[i] = text
    return generation_figures(predictions, tokenizer, time.perf_counter() - t0)


# ---- 5. metric scoring: rouge_score and sacrebleu ---------------------------------------------------------


def metrics(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    import json

    import sacrebleu
    from rouge_score import rouge_scorer

    with open(spec["data"]["pairs"], encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    preds, refs = [p["prediction"] for p in pairs], [p["reference"] for p in pairs]
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    t0 = time.perf_counter()
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(preds, refs, strict=True)]
    quality = {k: 100 * sum(s[k].fmeasure for s in scores) / len(scores) for k in keys}
    t1 = time.perf_counter()
    quality["bleu"] = sacrebleu.corpus_bleu(preds, [refs]).score
    t2 = time.perf_counter()
    return {"runtime": t2 - t0, "samples_per_second": len(pairs) / (t2 - t0), "rouge_seconds": t1 - t0,
            "bleu_seconds": t2 - t1, "quality": quality}


# ---- 6. token classification: run_ner.py -----------------------------------------------------------------


def ner(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    import numpy as np
    from datasets import load_dataset
    from seqeval.metrics import accuracy_score, classification_report
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        PretrainedConfig,
        Trainer,
        set_seed,
    )

    hp = spec["hp"]
    set_seed(seed)
    raw = load_dataset("json", data_files={"train": spec["data"]["train"], "validation": spec["data"]["eval"]})
    text_column_name, label_column_name = "tokens", "ner_tags"
    # run_ner.py's get_label_list: the sorted set of tags, unless the model's config names them all
    label_list = sorted({t for split in raw.values() for tags in split[label_column_name] for t in tags})
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForTokenClassification.from_pretrained(spec["model"], num_labels=len(label_list))
    if model.config.label2id != PretrainedConfig(num_labels=len(label_list)).label2id \
            and sorted(model.config.label2id) == label_list:
        label_to_id = {k: int(v) for k, v in model.config.label2id.items()}
        label_list = [model.config.id2label[i] for i in range(len(label_list))]
    else:
        label_to_id = {v: i for i, v in enumerate(label_list)}
    model.config.label2id = label_to_id
    model.config.id2label = dict(enumerate(label_list))

    def tokenize_and_align_labels(examples: dict[str, list[Any]]) -> Any:
        tokenized_inputs = tokenizer(examples[text_column_name], padding=False, truncation=True,
                                     max_length=hp["max_seq_length"], is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples[label_column_name]):
            word_ids = tokenized_inputs.word_ids(batch_index=i)
            previous_word_idx = None
            label_ids = []
            for word_idx in word_ids:
                if word_idx is None:
                    label_ids.append(IGNORE)
                elif word_idx != previous_word_idx:  # the first sub-token of a word carries its tag
                    label_ids.append(label_to_id[label[word_idx]])
                else:  # --label_all_tokens False (the default)
                    label_ids.append(IGNORE)
                previous_word_idx = word_idx
            labels.append(label_ids)
        tokenized_inputs["labels"] = labels
        return tokenized_inputs

    train_dataset = raw["train"].map(tokenize_and_align_labels, batched=True, remove_columns=raw["train"].column_names)
    eval_dataset = raw["validation"].map(tokenize_and_align_labels, batched=True,
                                         remove_columns=raw["validation"].column_names)

    def compute_metrics(p: Any) -> dict[str, float]:
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        true_predictions = [[label_list[q] for (q, lab) in zip(prediction, label, strict=True) if lab != IGNORE]
                            for prediction, label in zip(predictions, labels, strict=True)]
        true_labels = [[label_list[lab] for (q, lab) in zip(prediction, label, strict=True) if lab != IGNORE]
                       for prediction, label in zip(predictions, labels, strict=True)]
        # evaluate.load("seqeval") fetches its script from the hub; its computation is this (default mode)
        report = classification_report(y_true=true_labels, y_pred=true_predictions, output_dict=True,
                                       zero_division=0)
        micro = report["micro avg"]
        return {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
                "f1": float(micro["f1-score"]), "accuracy": float(accuracy_score(true_labels, true_predictions))}

    trainer = Trainer(
        model=model,
        args=training_args(hp, seed, out, tuned=True, bf16=bf16(spec, variant)),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=compute_metrics,
    )
    train_result = trainer.train()
    trainer.save_model()
    metrics = trainer.evaluate()
    keys = ("eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_loss")
    return {**trainer_figures(trainer, train_result), "quality": {k: metrics[k] for k in keys}}


# ---- 7. extractive question answering: run_qa.py + utils_qa.py ---------------------------------------------


def postprocess_qa_predictions(examples: Any, features: Any, predictions: tuple[Any, Any], n_best_size: int = 20,
                               max_answer_length: int = 30) -> dict[str, str]:
    """utils_qa.postprocess_qa_predictions for SQuAD v1 (no null answer): per question, the best of the
    n_best_size x n_best_size start/end pairs over all its windows, by start + end logit."""
    import collections

    import numpy as np

    all_start_logits, all_end_logits = predictions
    example_id_to_index = {k: i for i, k in enumerate(examples["id"])}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)
    all_predictions: dict[str, str] = {}
    for example_index, example in enumerate(examples):
        prelim_predictions = []
        context = example["context"]
        for feature_index in features_per_example[example_index]:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            start_indexes = np.argsort(start_logits)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end_logits)[-1: -n_best_size - 1: -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    # out of this window (padding of the batch it was predicted in) or not in the context
                    if (start_index >= len(offset_mapping) or end_index >= len(offset_mapping)
                            or offset_mapping[start_index] is None or len(offset_mapping[start_index]) < 2
                            or offset_mapping[end_index] is None or len(offset_mapping[end_index]) < 2):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    prelim_predictions.append({
                        "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                        "score": start_logits[start_index] + end_logits[end_index]})
        best = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)[:n_best_size]
        for pred in best:
            pred["text"] = context[pred["offsets"][0]: pred["offsets"][1]]
        if len(best) == 0 or (len(best) == 1 and best[0]["text"] == ""):
            best.insert(0, {"text": "empty", "score": 0.0})
        all_predictions[example["id"]] = best[0]["text"]
    return all_predictions


def qa(spec: dict[str, Any], variant: str, seed: int, out: Path) -> dict[str, Any]:
    from datasets import load_dataset
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    from llmtune.metrics import squad_v1  # the official SQuAD v1.1 EM/F1, as llmtune scores them

    hp = spec["hp"]
    set_seed(seed)
    raw = load_dataset("json", data_files={"train": spec["data"]["train"], "validation": spec["data"]["eval"]})
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForQuestionAnswering.from_pretrained(spec["model"])
    pad_on_right = tokenizer.padding_side == "right"
    max_seq_length, doc_stride = hp["max_seq_length"], hp["doc_stride"]

    def windows(examples: dict[str, list[Any]]) -> Any:
        examples["question"] = [q.lstrip() for q in examples["question"]]
        return tokenizer(
            examples["question" if pad_on_right else "context"],
            examples["context" if pad_on_right else "question"],
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_seq_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,  # --pad_to_max_length False: DataCollatorWithPadding pads per batch
        )

    def prepare_train_features(examples: dict[str, list[Any]]) -> Any:
        tokenized_examples = windows(examples)
        sample_mapping = tokenized_examples.pop("overflow_to_sample_mapping")
        offset_mapping = tokenized_examples.pop("offset_mapping")
        tokenized_examples["start_positions"] = []
        tokenized_examples["end_positions"] = []
        for i, offsets in enumerate(offset_mapping):
            input_ids = tokenized_examples["input_ids"][i]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            sequence_ids = tokenized_examples.sequence_ids(i)
            answers = examples["answers"][sample_mapping[i]]
            if len(answers["answer_start"]) == 0:
                tokenized_examples["start_positions"].append(cls_index)
                tokenized_examples["end_positions"].append(cls_index)
                continue
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start_index = 0
            while sequence_ids[token_start_index] != (1 if pad_on_right else 0):
                token_start_index += 1
            token_end_index = len(input_ids) - 1
            while sequence_ids[token_end_index] != (1 if pad_on_right else 0):
                token_end_index -= 1
            if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
                # the answer is not wholly in this window: it learns the CLS index
                tokenized_examples["start_positions"].append(cls_index)
                tokenized_examples["end_positions"].append(cls_index)
            else:
                while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                    token_start_index += 1
                tokenized_examples["start_positions"].append(token_start_index - 1)
                while offsets[token_end_index][1] >= end_char:
                    token_end_index -= 1
                tokenized_examples["end_positions"].append(token_end_index + 1)
        return tokenized_examples

    def prepare_validation_features(examples: dict[str, list[Any]]) -> Any:
        tokenized_examples = windows(examples)
        sample_mapping = tokenized_examples.pop("overflow_to_sample_mapping")
        tokenized_examples["example_id"] = []
        context_index = 1 if pad_on_right else 0
        for i in range(len(tokenized_examples["input_ids"])):
            sequence_ids = tokenized_examples.sequence_ids(i)
            tokenized_examples["example_id"].append(examples["id"][sample_mapping[i]])
            tokenized_examples["offset_mapping"][i] = [
                (o if sequence_ids[k] == context_index else None)
                for k, o in enumerate(tokenized_examples["offset_mapping"][i])]
        return tokenized_examples

    train_dataset = raw["train"].map(prepare_train_features, batched=True, remove_columns=raw["train"].column_names)
    eval_examples = raw["validation"]
    eval_features = eval_examples.map(prepare_validation_features, batched=True,
                                      remove_columns=eval_examples.column_names)
    trainer = Trainer(model=model, args=training_args(hp, seed, out, tuned=True, bf16=bf16(spec, variant)),
                      train_dataset=train_dataset, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    train_result = trainer.train()
    trainer.save_model()
    # QuestionAnsweringTrainer.evaluate: predict the windows (example_id and offset_mapping are not model
    # inputs: Trainer drops them), then post-process the logits into one answer per question, in window order
    sequential_eval(trainer)
    output = trainer.predict(eval_features.remove_columns(["example_id", "offset_mapping"]))
    start_logits, end_logits = output.predictions[:2] if isinstance(output.predictions, tuple) else output.predictions
    preds = postprocess_qa_predictions(eval_examples, eval_features, (start_logits, end_logits),
                                       n_best_size=hp["n_best_size"], max_answer_length=hp["max_answer_length"])
    gold = {ex["id"]: list(ex["answers"]["text"]) for ex in eval_examples}
    scored = squad_v1(preds, gold)
    return {**trainer_figures(trainer, train_result),
            "quality": {"eval_exact_match": scored["exact_match"], "eval_f1": scored["f1"]}}


REFERENCES = {
    "classification": classification,
    "summarization": summarization,
    "causal_lm": {"ref_default": causal_lm, "ref_tuned": causal_lm, "trl_sft": causal_lm_trl},
    "causal_lm_long": {"ref_default": causal_lm, "ref_tuned": causal_lm, "trl_sft": causal_lm_trl},
    "generation": generation,
    "metrics": metrics,
    "ner": ner,
    "qa": qa,
}
REFERENCES["preference"] = {"trl_dpo": preference_workload.trl_dpo}
PEERS["trl_dpo"] = "trl"

from llmtune.benchmark import encoder_workloads  # noqa: E402  (the encoder workloads register here)

REFERENCES.update(encoder_workloads.REFERENCES)  # embedding (st_fit), masked_lm (run_mlm.py)
PEERS.update(encoder_workloads.PEERS)
