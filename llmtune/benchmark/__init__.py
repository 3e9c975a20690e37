"""`llmtune benchmark`: each workload run by llmtune and by a reference implementation of the same work.

The references (`references.py`) are written the way a user of the Hugging Face example scripts runs the work:
`transformers.Trainer` / `Seq2SeqTrainer` (and PEFT for LoRA), with the same model folder, data rows,
hyperparameters, maximum lengths, number of optimizer steps and threads as llmtune. Where the example scripts'
defaults differ from good practice there are two variants: `ref_default` (the scripts' defaults) and `ref_tuned`
(dynamic padding, length grouping).

    workloads.py   data, scales, the shared model folders, and the llmtune side of each workload
    references.py  the reference side of each workload
    run_one.py     one measured run in its own process (`python -m llmtune.benchmark.run_one`)
    runner.py      prepares the workloads, alternates the sides, measures time and memory, shows progress
    report.py      medians, llmtune/reference ratios, quality flags, the Markdown table and the charts
                   (`python -m llmtune.benchmark.report RESULTS_DIR` redraws them from results.json)
"""

from __future__ import annotations

WORKLOADS = ("classification", "summarization", "causal_lm", "causal_lm_long", "generation", "metrics", "ner", "qa", "preference")
WORKLOADS = (*WORKLOADS, "embedding", "masked_lm")  # encoder_workloads.py
SCALES = ("tiny", "small", "full")
