"""`llmtune benchmark`: the runner end to end at tiny scale (tiny BERT, bundled data, a few steps), and the report's
medians, ratios and quality flags on hand-made results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def test_benchmark_tiny_writes_results_table_and_charts(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = cli("benchmark", "--scale", "tiny", "--workloads", "classification,metrics", "--output-dir", tmp_path,
              "--data-dir", tmp_path / "no-such-folder")
    assert res.exit_code == 0, res.output
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["scale"] == "tiny" and results["meta"]["repeats"] == 1
    cls = results["workloads"]["classification"]
    # no --data-dir and no hub: the data bundled with llmtune, and the report says so
    assert cls["data"]["origin"] == "bundled llmtune:sentiment"
    # llmtune also runs in fp32 where its recipes' mixed_precision auto picks bf16, to show bf16's share
    from llmtune.hardware import native_bf16

    # ...and then the references autocast too (like for like), with the tuned one's fp32 twin beside llmtune's
    fp32 = ["llmtune_fp32", "ref_tuned_fp32"] if native_bf16() else []
    assert sorted(r["side"] for r in cls["runs"]) == sorted(["llmtune", "ref_default", "ref_tuned", *fp32])
    assert {r["mixed_precision"] for r in cls["runs"] if r["side"] == "llmtune"} == {"bf16" if fp32 else "no"}
    assert {r["mixed_precision"] for r in cls["runs"] if r["side"] == "llmtune_fp32"} == ({"no"} if fp32 else set())
    precision = {r["side"]: r["precision"] for r in cls["runs"] if r["side"].startswith("ref")}
    assert precision == ({"ref_default": "bf16", "ref_tuned": "bf16", "ref_tuned_fp32": "fp32"} if fp32
                         else {"ref_default": "fp32", "ref_tuned": "fp32"})
    for run in cls["runs"]:
        assert "error" not in run, run
        assert run["samples_per_second"] > 0 and run["tokens_per_second"] > 0 and run["peak_mem_mb"] > 50
        assert run["global_step"] == cls["hp"]["max_steps"]
        assert 0 <= run["quality"]["eval_accuracy"] <= 1 and run["loss_curve"]
        # MFU: the run's model FLOPs over the peak measured at the start, in the run's precision
        assert 0 < run["mfu"] < 1 and run["mfu_precision"] in results["meta"]["peak_flops"]
        assert 0 < run["outside_training_seconds"] < run["wall_seconds"]
    # the peak is read at the start and after every run; each MFU divides by the highest reading of its precision
    peak = results["meta"]["peak_flops"]
    runs = [r for w in results["workloads"].values() for r in w["runs"]]
    assert peak["readings"] == 1 + len(runs)
    assert peak["fp32_range"][0] <= peak["fp32_range"][1] == peak["fp32"]
    for run in cls["runs"]:
        assert run["mfu"] * peak[run["mfu_precision"]] == pytest.approx(run["model_tflops"] * 1e12)
    # the same rows (one epoch of max_steps batches) on every side, and padding never counts as a token
    per_sample = {r["side"]: r["tokens_per_second"] / r["samples_per_second"] for r in cls["runs"]}
    assert per_sample["ref_default"] == pytest.approx(per_sample["ref_tuned"], rel=0.01)
    assert per_sample["llmtune"] == pytest.approx(per_sample["ref_tuned"], rel=0.01)
    if fp32:
        assert set(results["summary"]["classification"]["fp32"]) == {"ref_tuned_fp32", "llmtune", "ref_tuned:bf16"}
        assert "llmtune fp32 vs run_glue.py + dynamic padding, group_by_length in fp32" in (out / "results.md").read_text()
    summary = results["summary"]
    vs = summary["classification"]["vs"]["ref_default"]
    assert vs["ratios"]["samples_per_second"] > 0 and vs["quality"]["metric"] == "eval_accuracy"
    metrics = summary["metrics"]["vs"]["ref_default"]["quality"]
    assert metrics["identical"], metrics  # llmtune's ROUGE and BLEU equal the plain rouge_score / sacrebleu numbers
    table = (out / "results.md").read_text()
    assert "| classification (SST-2) |" in table and "run_glue.py defaults" in table and "identical" in table
    for png in ("throughput_ratio.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "logs" / "classification-llmtune-0.log").exists()


def test_benchmark_tiny_ner_and_qa(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # --max-steps replaces the scale's steps (tiny: 4) on both sides
    res = cli("benchmark", "--scale", "tiny", "--workloads", "ner,qa", "--output-dir", tmp_path,
              "--data-dir", tmp_path / "no-such-folder", "--max-steps", "3")
    assert res.exit_code == 0, res.output
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["max_steps"] == 3
    assert results["workloads"]["ner"]["hp"]["max_steps"] == results["workloads"]["qa"]["hp"]["max_steps"] == 3
    from llmtune.hardware import native_bf16

    # with native bf16 both sides autocast, and each has its fp32 twin
    fp32 = ["llmtune_fp32", "ref_tuned_fp32"] if native_bf16() else []
    ner, qa = results["workloads"]["ner"], results["workloads"]["qa"]
    # no --data-dir and no hub: the NER and QA sets bundled with llmtune
    assert ner["data"]["origin"] == "bundled llmtune:ner" and qa["data"]["origin"] == "bundled llmtune:qa"
    for entry, keys in ((ner, ("eval_f1", "eval_precision", "eval_recall")), (qa, ("eval_exact_match", "eval_f1"))):
        assert sorted(r["side"] for r in entry["runs"]) == sorted(["llmtune", "ref_tuned", *fp32])
        for run in entry["runs"]:
            assert "error" not in run, run
            assert run["samples_per_second"] > 0 and run["peak_mem_mb"] > 50 and run["loss_curve"]
            assert run["global_step"] == entry["hp"]["max_steps"]
            for k in keys:
                assert 0 <= run["quality"][k] <= (100 if entry is qa else 1), (k, run["quality"])
        # the same rows (sentences; for QA questions whose windows fill max_steps batches exactly) on both sides,
        # and padding never counts as a token
        per_sample = {r["side"]: r["tokens_per_second"] / r["samples_per_second"] for r in entry["runs"]}
        assert per_sample["llmtune"] == pytest.approx(per_sample["ref_tuned"], rel=0.01)
    assert qa["data"]["train_unit"] == "windows" and qa["data"]["train_rows"] <= qa["hp"]["max_steps"] * 8
    summary = results["summary"]
    assert summary["ner"]["vs"]["ref_tuned"]["quality"]["metric"] == "eval_f1"
    assert summary["qa"]["vs"]["ref_tuned"]["ratios"]["samples_per_second"] > 0
    table = (out / "results.md").read_text()
    assert "| token classification (WNUT-17) |" in table and "run_ner.py" in table
    assert "| question answering (SQuAD v1.1) |" in table and "run_qa.py" in table


def _runs(side: str, metric: str, values: list[float], sps: list[float]) -> list[dict[str, Any]]:
    return [{"side": side, "repeat": i, "samples_per_second": s, "tokens_per_second": 10 * s, "wall_seconds": 100 / s,
             "peak_mem_mb": 500.0, "quality": {metric: v}} for i, (v, s) in enumerate(zip(values, sps, strict=True))]


def _results(llm: list[float], ref: list[float], workload: str = "classification",
             metric: str = "eval_accuracy") -> dict[str, Any]:
    runs = _runs("llmtune", metric, llm, [30.0, 32.0, 31.0]) + _runs("ref_default", metric, ref, [10.0, 12.0, 11.0]) \
        + _runs("ref_tuned", metric, ref, [30.0, 31.0, 29.0])
    return {"meta": {}, "workloads": {workload: {"status": "ok", "runs": runs}}}


def test_summary_medians_ratios_and_targets() -> None:
    from llmtune.benchmark.report import summarize

    s = summarize(_results([0.85, 0.86, 0.84], [0.85, 0.85, 0.86]))["classification"]
    assert s["sides"]["llmtune"]["median"]["samples_per_second"] == 31.0
    default, tuned = s["vs"]["ref_default"], s["vs"]["ref_tuned"]
    # the ratio is the median of the per-repeat ratios (30/30, 32/31, 31/29), not the ratio of the medians
    assert tuned["ratios"]["samples_per_second"] == pytest.approx(32 / 31)
    assert tuned["ratio_of_medians"]["samples_per_second"] == pytest.approx(31 / 30)
    assert default["ratios"]["samples_per_second"] == pytest.approx(31 / 11)
    assert [t["met"] for t in default["targets"] if "minimum" in t] == [True]  # >= 2x the defaults
    assert [t["met"] for t in tuned["targets"] if "minimum" in t] == [False]  # < 1.5x the tuned reference
    assert not default["quality"]["worse"]
    # peak memory: at most 0.7x the reference's (500 vs 500 MB here)
    assert [(t["maximum"], t["met"]) for t in tuned["targets"] if "maximum" in t] == [(0.7, False)]


def test_targets_are_the_issues() -> None:
    """causal_lm: >= 2x TRL, >= 1x llmtune padded (which has no memory target: it is llmtune), LoRA MFU >= 25%;
    a target is not met where quality is worse."""
    from llmtune.benchmark.report import _target, summarize

    def side(name: str, tps: list[float], mem: float, loss: float, mfu: float | None = None) -> list[dict[str, Any]]:
        return [{"side": name, "repeat": i, "samples_per_second": t / 100, "tokens_per_second": t,
                 "wall_seconds": 100.0, "peak_mem_mb": mem, "mfu": mfu, "quality": {"eval_loss": loss}}
                for i, t in enumerate(tps)]

    runs = side("llmtune", [300, 310], 600, 1.10, 0.26) + side("llmtune_padded", [310, 320], 650, 1.10) \
        + side("trl_sft", [140, 150], 1000, 1.10) + side("ref_default", [100, 100], 900, 1.30) \
        + side("ref_tuned", [200, 200], 800, 1.10)
    s = summarize({"meta": {}, "workloads": {"causal_lm": {"status": "ok", "runs": runs}}})["causal_lm"]
    trl = {t["figure"]: t for t in s["vs"]["trl_sft"]["targets"]}
    assert trl["tokens_per_second"]["minimum"] == 2.0 and trl["tokens_per_second"]["met"]  # 300/140, 310/150
    assert trl["peak_mem_mb"]["met"]  # 0.6x
    padded = s["vs"]["llmtune_padded"]["targets"]
    assert [t["figure"] for t in padded] == ["tokens_per_second"] and not padded[0]["met"]  # 0.97x (median)
    # 3x faster than the defaults, but the loss is not worse only where the tolerance allows: 1.10 vs 1.30 is better
    assert s["vs"]["ref_default"]["targets"][0]["met"]
    assert s["mfu_target"] == {"minimum": 0.25, "mfu": 0.26, "met": True}
    assert _target(s["vs"]["trl_sft"], s["mfu_target"]) == "≥2× ✓ memory ≤0.7× ✓ MFU ≥25% ✓"
    worse = summarize({"meta": {}, "workloads": {"causal_lm": {"status": "ok", "runs": [
        {**r, "quality": {"eval_loss": 1.5}} if r["side"] == "llmtune" else r for r in runs]}}})["causal_lm"]
    assert not any(t["met"] for t in worse["vs"]["trl_sft"]["targets"] if "minimum" in t)  # faster but worse


@pytest.mark.parametrize(("llm", "ref", "worse"), [
    ([0.80, 0.81, 0.80], [0.85, 0.85, 0.85], True),   # 5 points below, spread 0.01: flagged
    ([0.84, 0.85, 0.845], [0.85, 0.85, 0.85], False),  # within the 0.01 tolerance
    ([0.70, 0.85, 0.80], [0.85, 0.85, 0.85], False),  # 5 points below, but the repeats spread over 15 points
])
def test_quality_flag_beyond_noise(llm: list[float], ref: list[float], worse: bool) -> None:
    from llmtune.benchmark.report import markdown, summarize

    results = _results(llm, ref)
    results["summary"] = summarize(results)
    assert results["summary"]["classification"]["vs"]["ref_default"]["quality"]["worse"] is worse
    results["meta"] = {"cpu": "cpu", "threads": 2, "cpus": 2, "repeats": 3, "scale": "small", "date": "today"}
    assert ("⚠ worse" in markdown(results)) is worse


def test_eval_loss_tolerance_is_relative() -> None:
    from llmtune.benchmark.report import summarize

    ok = summarize(_results([1.01, 1.01, 1.01], [1.0, 1.0, 1.0], "causal_lm", "eval_loss"))["causal_lm"]
    bad = summarize(_results([1.05, 1.05, 1.05], [1.0, 1.0, 1.0], "causal_lm", "eval_loss"))["causal_lm"]
    assert not ok["vs"]["ref_default"]["quality"]["worse"] and bad["vs"]["ref_default"]["quality"]["worse"]


def test_missing_pipeline_is_reported_not_faked() -> None:
    from llmtune.benchmark.report import markdown, summarize

    results = {"meta": {"cpu": "cpu", "threads": 2, "cpus": 2, "repeats": 3, "scale": "small", "date": "today"},
               "workloads": {"causal_lm": {"status": "not available: pipeline missing (ImportError)", "runs": []}}}
    results["summary"] = summarize(results)
    assert "| causal LM + LoRA (GSM8K) | not available: pipeline missing (ImportError) |" in markdown(results)


def test_unknown_workload_is_a_one_line_error(cli) -> None:
    res = cli("benchmark", "--workloads", "clasification", "--scale", "tiny")
    assert res.exit_code == 2 and "did you mean 'classification'" in res.stderr


def test_reference_trainer_arguments_accept_bf16_on_a_cpu(tmp_path: Path) -> None:
    """The like-for-like bf16 reference: on a CPU the Trainer refuses `bf16=True` unless told `use_cpu` (found on an
    AMX Xeon, where every reference run of the benchmark failed with "doesn't support bf16/gpu")."""
    import torch

    from llmtune.benchmark.references import training_args

    hp = {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-4, "logging_steps": 1}
    args = training_args(hp, 42, tmp_path / "ref", tuned=True, bf16=True)
    assert args.bf16 and args.use_cpu == (not torch.cuda.is_available())
    assert str(args.device).startswith("cuda" if torch.cuda.is_available() else "cpu")


def test_reference_predictions_come_back_in_dataset_order(tiny_bert: Path, tmp_path: Path) -> None:
    """transformers length-groups eval batches too under group_by_length, so the tuned references' predict() came
    back in another order than the rows they are matched to (run_qa's post-processing: SQuAD F1 4.3 instead of 45);
    sequential_eval puts the eval in dataset order."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from llmtune.benchmark.references import sequential_eval, training_args

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    lengths = [3, 30, 5, 25, 8, 40, 2, 17, 33, 4, 12, 21, 7, 38, 9, 27]
    ds = Dataset.from_dict({"input_ids": [[tok.cls_token_id] + [1000 + i] * n for i, n in enumerate(lengths)]})
    hp = {"max_steps": 1, "batch_size": 4, "eval_batch_size": 4, "learning_rate": 1e-4, "logging_steps": 1}
    trainer = Trainer(model=AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
                      args=training_args(hp, 42, tmp_path / "ref", tuned=True), processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok))

    def order() -> list[int]:
        return [int(ids[1]) - 1000 for b in trainer.get_eval_dataloader(ds) for ids in b["input_ids"]]

    assert order() != list(range(len(lengths)))  # the quirk itself: length-grouped eval batches
    sequential_eval(trainer)
    assert order() == list(range(len(lengths)))
