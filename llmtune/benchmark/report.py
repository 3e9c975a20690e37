"""Medians, llmtune/reference ratios, quality flags, the Markdown table and the charts.

Quality rule: llmtune's quality is flagged as worse than a reference's when its median is worse than the
reference's median by more than the noise, where noise = the larger of the spread (max - min) of either side
over the repeats (each repeat uses another seed, on both sides) and the workload's tolerance (QUALITY in
workloads.py: 0.01 accuracy, 0.5 ROUGE-L points, 2% eval loss, 0.02 entity F1, 2 SQuAD F1 points, 1e-9 BLEU for
metric scoring, which must be identical).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from llmtune.benchmark import preference_workload

FIGURES = ("samples_per_second", "tokens_per_second", "wall_seconds", "cpu_seconds", "peak_mem_mb", "peak_cuda_mb",
           "train_runtime", "outside_training_seconds", "model_tflops", "mfu")

TITLES = {
    "classification": "classification (SST-2)",
    "summarization": "summarization (SciTLDR)",
    "causal_lm": "causal LM + LoRA (GSM8K)",
    "causal_lm_long": "causal LM + LoRA, long examples (SciTLDR)",
    "generation": "generation-based eval (SciTLDR)",
    "metrics": "metric scoring (ROUGE + BLEU)",
    "ner": "token classification (WNUT-17)",
    "qa": "question answering (SQuAD v1.1)",
}
REFERENCE_NAMES = {
    ("classification", "ref_default"): "run_glue.py defaults (pad to 128)",
    ("classification", "ref_tuned"): "run_glue.py + dynamic padding, group_by_length",
    ("summarization", "ref_default"): "run_summarization.py defaults",
    ("summarization", "ref_tuned"): "run_summarization.py + group_by_length",
    ("causal_lm", "llmtune_padded"): "llmtune padded (data.packing=false)",
    ("causal_lm", "ref_default"): "Trainer + PEFT, padded to max length",
    ("causal_lm", "ref_tuned"): "Trainer + PEFT, dynamic padding, group_by_length",
    ("causal_lm", "trl_sft"): "TRL SFTTrainer, padding_free, completion_only_loss, PEFT",
    ("causal_lm_long", "llmtune_padded"): "llmtune padded (data.packing=false)",
    ("causal_lm_long", "ref_tuned"): "Trainer + PEFT, dynamic padding, group_by_length",
    ("causal_lm_long", "trl_sft"): "TRL SFTTrainer, padding_free, completion_only_loss, PEFT",
    ("generation", "ref_default"): "Seq2SeqTrainer.predict, predict_with_generate",
    ("generation", "ref_tuned"): "predict_with_generate, rows sorted, no labels",
    ("metrics", "ref_default"): "rouge_score loop + sacrebleu.corpus_bleu",
    ("ner", "ref_tuned"): "run_ner.py + group_by_length",
    ("qa", "ref_tuned"): "run_qa.py + dynamic padding, group_by_length",
}
LLMTUNE_NAMES = {
    "classification": "dynamic padding, length-grouped batches",
    "summarization": "dynamic padding, length-grouped batches",
    "causal_lm": "packing (padding-free rows)",
    "causal_lm_long": "packing (padding-free rows)",
    "generation": "batched, length-sorted generation",
    "metrics": "cached stems, process pool",
    "ner": "dynamic padding, length-grouped batches",
    "qa": "dynamic padding, length-grouped windows",
}
TITLES["preference"] = preference_workload.TITLE
REFERENCE_NAMES[("preference", "trl_dpo")] = preference_workload.REFERENCE_NAME
LLMTUNE_NAMES["preference"] = preference_workload.LLMTUNE_NAME

from llmtune.benchmark import encoder_workloads  # noqa: E402  (the encoder workloads register here)

TITLES.update(encoder_workloads.TITLES)
REFERENCE_NAMES.update(encoder_workloads.REFERENCE_NAMES)
LLMTUNE_NAMES.update(encoder_workloads.LLMTUNE_NAMES)


def llmtune_name(workload: str, results: dict[str, Any]) -> str:
    """What llmtune did, with the precision its runs chose where it was not fp32 (the references' is the same)."""
    runs = results["workloads"].get(workload, {}).get("runs", [])
    precisions = sorted({r["mixed_precision"] for r in runs if r.get("side") == "llmtune" and r.get("mixed_precision")})
    extra = [f"{p} autocast" for p in precisions if p != "no"]
    return ", ".join([LLMTUNE_NAMES[workload], *extra])


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def _spread(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return max(values) - min(values) if len(values) > 1 else 0.0


def paired_ratio(runs: list[dict[str, Any]], ref: str, figure: str, side: str = "llmtune") -> float | None:
    """The median over repeats of llmtune's figure / the reference's figure in the same repeat.

    The two runs of a repeat ran back to back, so a machine that is slower for a while (other jobs on a shared
    machine) slows both; the ratio of two medians taken over different moments would not cancel that out.
    """
    by_repeat: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.get(figure) is not None:
            by_repeat.setdefault(r.get("repeat", 0), {})[r["side"]] = r[figure]
    pairs = [v[side] / v[ref] for v in by_repeat.values() if v.get(side) and v.get(ref)]
    return statistics.median(pairs) if pairs else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    from llmtune.benchmark import workloads as w
    from llmtune.benchmark.references import FP32
    from llmtune.benchmark.workloads import FP32_SIDE, IDENTICAL, QUALITY, TARGETS, VARIANTS

    summary: dict[str, Any] = {}
    for name, entry in results["workloads"].items():
        if entry.get("status") != "ok":
            summary[name] = {"status": entry.get("status")}
            continue
        metric, higher, abs_tol, rel_tol = QUALITY[name]
        runs = [r for r in entry["runs"] if "error" not in r]
        sides: dict[str, Any] = {}
        ran = {r["side"] for r in entry["runs"]}
        fp32 = [FP32_SIDE] if FP32_SIDE in ran else []
        twins = [v + FP32 for v in VARIANTS[name] if v + FP32 in ran]  # the references' fp32 twins
        for side in ("llmtune", *VARIANTS[name], *fp32, *twins):
            mine = [r for r in runs if r["side"] == side]
            figs = {f: _median([r.get(f) for r in mine]) for f in FIGURES}
            keys = sorted({k for r in mine for k in r.get("quality", {})})
            quality = {k: _median([r["quality"].get(k) for r in mine]) for k in keys}
            spread = {k: _spread([r["quality"].get(k) for r in mine]) for k in keys}
            sides[side] = {"runs": len(mine), "failed": sum(1 for r in entry["runs"] if r["side"] == side and "error" in r),
                           "median": figs, "quality": quality, "quality_spread": spread}
        comparisons: dict[str, Any] = {}
        llm = sides["llmtune"]
        for ref in VARIANTS[name]:
            if ref in entry.get("peers_missing", {}):
                continue
            other = sides[ref]
            ratios = {f: paired_ratio(runs, ref, f) for f in FIGURES}
            ratio_of_medians = {f: (llm["median"][f] / other["median"][f]) if llm["median"][f] and other["median"][f]
                                else None for f in FIGURES}
            a, b = llm["quality"].get(metric), other["quality"].get(metric)
            quality: dict[str, Any] = {"metric": metric, "llmtune": a, "reference": b}
            if a is not None and b is not None:
                noise = max(llm["quality_spread"].get(metric, 0.0), other["quality_spread"].get(metric, 0.0),
                            abs_tol, rel_tol * abs(b))
                worse_by = (b - a) if higher else (a - b)
                quality.update(difference=a - b, noise=noise, worse=worse_by > noise, better=-worse_by > noise)
            if name in IDENTICAL:
                diffs = [abs(llm["quality"][k] - other["quality"][k]) for k in IDENTICAL[name]
                         if llm["quality"].get(k) is not None and other["quality"].get(k) is not None]
                quality["max_abs_difference"] = max(diffs) if diffs else None
                quality["identical"] = bool(diffs) and max(diffs) <= abs_tol
                quality["worse"] = not quality["identical"]
                quality["better"] = False
            targets = []
            for t_ref, figure, minimum in TARGETS.get(name, []):
                if t_ref == ref:
                    value = ratios.get(figure)
                    met = value is not None and value >= minimum and not quality.get("worse", False)
                    targets.append({"figure": figure, "minimum": minimum, "ratio": value, "met": met})
            if ref not in w.OWN_SIDES:  # llmtune's own padded side is a speed bar, not a peer to use less memory than
                mem = ratios.get("peak_mem_mb")
                targets.append({"figure": "peak_mem_mb", "maximum": w.MEMORY_TARGET, "ratio": mem,
                                "met": mem is not None and mem <= w.MEMORY_TARGET})
            comparisons[ref] = {"ratios": ratios, "ratio_of_medians": ratio_of_medians, "quality": quality,
                                "targets": targets}
        summary[name] = {"status": "ok", "sides": sides, "vs": comparisons,
                         "peers_missing": dict(entry.get("peers_missing", {}))}
        if name in w.MFU_TARGETS:  # llmtune's median MFU against the measured peak of its precision
            value = llm["median"].get("mfu")
            least = w.MFU_TARGETS[name]
            summary[name]["mfu_target"] = {"minimum": least, "mfu": value, "met": value is not None and value >= least}
        if fp32:  # like for like in fp32: llmtune_fp32 against each reference's fp32 twin; and bf16 alone
            own = sides[FP32_SIDE]
            summary[name]["fp32"] = {
                twin: {"ratios": {f: paired_ratio(runs, twin, f, side=FP32_SIDE) for f in FIGURES},
                       "quality": {"metric": metric, "llmtune_fp32": own["quality"].get(metric),
                                   "reference": sides[twin]["quality"].get(metric)}}
                for twin in twins}
            # paired_ratio(side=llmtune_fp32, ref=llmtune) is fp32/bf16; the bf16 gain is its inverse
            summary[name]["fp32"]["llmtune"] = {
                "ratios": {f: paired_ratio(runs, FP32_SIDE, f) for f in FIGURES},
                "quality": {"metric": metric, "llmtune_fp32": own["quality"].get(metric)}}
            for twin in twins:  # what bf16 buys the reference, for comparison
                summary[name]["fp32"][twin.removesuffix(FP32) + ":bf16"] = {
                    "ratios": {f: paired_ratio(runs, twin, f, side=twin.removesuffix(FP32)) for f in FIGURES},
                    "quality": {"metric": metric, "llmtune_fp32": sides[twin]["quality"].get(metric),
                                "reference": sides[twin.removesuffix(FP32)]["quality"].get(metric)}}
    return summary


# ---- text ---------------------------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _peak_line(meta: dict[str, Any]) -> str:
    peak = meta.get("peak_flops") or {}
    if not peak:
        return ""

    def flops(v: float) -> str:
        return f"{v / 1e12:.2f} TFLOP/s" if v >= 1e12 else f"{v / 1e9:.0f} GFLOP/s"

    parts = []
    for k in ("fp32", "bf16"):
        if peak.get(k):
            low, high = peak.get(f"{k}_range") or (peak[k], peak[k])
            parts.append(f"{k} {flops(peak[k])}" + (f" (readings {flops(low)}-{flops(high)})" if low != high else ""))
    when = (f"the highest of {peak['readings']} readings, at the start and after each run" if peak.get("readings", 1) > 1
            else "measured at the start")
    return (f"MFU: model FLOPs per second (llmtune/benchmark/mfu.py: 6·N per trained token for trained weights, "
            f"4·N for frozen ones under LoRA, plus attention over each example's tokens) over this machine's matmul "
            f"peak, {when}, on {peak.get('threads')} threads ({peak.get('device')}, "
            f"{peak.get('matrix')}² products): {', '.join(parts)}; a run is divided by the peak of its precision.")


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _quality(name: str, q: dict[str, Any]) -> str:
    metric = q["metric"]
    a, b = q.get("llmtune"), q.get("reference")
    if a is None or b is None:
        return "—"
    digits = 3 if metric in ("eval_accuracy", "eval_loss") else 2
    text = f"{metric.removeprefix('eval_')} {a:.{digits}f} vs {b:.{digits}f}"
    if "identical" in q:
        return f"identical ({metric} {a:.2f})" if q["identical"] else f"**⚠ differs** by up to {q['max_abs_difference']:.2g}"
    if q.get("worse"):
        return f"**⚠ worse** ({text})"
    if q.get("better"):
        return f"better ({text})"
    return f"≈ ({text})"


def _target(c: dict[str, Any], mfu_target: dict[str, Any] | None = None) -> str:
    parts = []
    for t in c["targets"]:
        mark = "✓" if t["met"] else "✗"
        if "minimum" in t:
            parts.append(f"≥{t['minimum']:g}× {mark}")
        elif "maximum" in t:
            parts.append(f"memory ≤{t['maximum']:g}× {mark}")
    if mfu_target:
        parts.append(f"MFU ≥{100 * mfu_target['minimum']:g}% {'✓' if mfu_target['met'] else '✗'}")
    return " ".join(parts) or "—"


def run_line(name: str, run: dict[str, Any]) -> str:
    if "error" in run:
        return f"{name} · {run['side']} · repeat {run.get('repeat', 0) + 1}: [red]failed[/] {run['error']}"
    q = ", ".join(f"{k} {v:.4g}" for k, v in run.get("quality", {}).items() if isinstance(v, (int, float)))
    tok = f", {run['tokens_per_second']:.0f} tokens/s" if run.get("tokens_per_second") else ""
    return (f"{name} · {run['side']} · repeat {run.get('repeat', 0) + 1}: {run['samples_per_second']:.1f} samples/s"
            f"{tok}, wall {run['wall_seconds']:.0f} s, peak {run['peak_mem_mb']:.0f} MB; {q}")


def markdown(results: dict[str, Any]) -> str:
    from llmtune.benchmark.workloads import MEMORY_TARGET, VARIANTS

    meta, summary = results["meta"], results["summary"]
    gpu = any(s.get("sides", {}).get("llmtune", {}).get("median", {}).get("peak_cuda_mb") for s in summary.values())
    head = ["workload", "llmtune vs reference", "samples/s llmtune · ref", "×", "tokens/s ×", "MFU llmtune · ref",
            "train s llmtune · ref", "start-up + eval s", "CPU s ×", "peak MB llmtune · ref", "×",
            *(["peak CUDA MB ×"] if gpu else []), "quality", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        if s.get("status") != "ok":
            lines.append(f"| {TITLES[name]} | {s.get('status')} |" + " |" * (len(head) - 2))
            continue
        llm = s["sides"]["llmtune"]["median"]
        for i, (ref, c) in enumerate(s["vs"].items()):
            other = s["sides"][ref]["median"]
            r = c["ratios"]
            cells = [TITLES[name], f"{llmtune_name(name, results)} vs {REFERENCE_NAMES[(name, ref)]}",
                     f"{_num(llm['samples_per_second'])} · {_num(other['samples_per_second'])}",
                     f"**{_ratio(r['samples_per_second'])}**", _ratio(r["tokens_per_second"]),
                     f"{_pct(llm['mfu'])} · {_pct(other['mfu'])}",
                     f"{_num(llm['train_runtime'], 0)} · {_num(other['train_runtime'], 0)}",
                     f"{_num(llm['outside_training_seconds'], 0)} · {_num(other['outside_training_seconds'], 0)}",
                     _ratio(r["cpu_seconds"]),
                     f"{_num(llm['peak_mem_mb'], 0)} · {_num(other['peak_mem_mb'], 0)}", _ratio(r["peak_mem_mb"]),
                     *([_ratio(r["peak_cuda_mb"])] if gpu else []), _quality(name, c["quality"]),
                     _target(c, s.get("mfu_target") if i == 0 else None)]
            lines.append("| " + " | ".join(cells) + " |")
        for ref, why in s.get("peers_missing", {}).items():  # a peer that could not run is said, not skipped
            if ref in VARIANTS[name]:
                lines.append(f"| {TITLES[name]} | vs {REFERENCE_NAMES[(name, ref)]} | {why} |" + " |" * (len(head) - 3))
    failed = [(n, side, s["sides"][side]["failed"]) for n, s in summary.items() if s.get("status") == "ok"
              for side in s["sides"] if s["sides"][side]["failed"]]
    device = meta.get("gpu") or f"{meta['cpu']}, {meta['threads']} threads on {meta['cpus']} CPUs"
    steps = f", {meta['max_steps']} steps (--max-steps)" if meta.get("max_steps") else ""
    notes = [
        "",
        f"Medians of {meta['repeats']} repeats per side ({meta['scale']} scale{steps}), {device}, "
        f"torch {meta.get('torch', '?')}, "
        f"transformers {meta.get('transformers', '?')}; {meta['date']}. × is the median over repeats of llmtune / reference "
        "within a repeat, where the two ran back to back (above 1 is faster "
        "for samples/s and tokens/s, below 1 is less for wall time, CPU time and memory). CPU s: CPU seconds of the whole run, "
        "steadier than wall time on a shared machine. Tokens are non-padding tokens (sum of attention_mask "
        "over the trained batches). Peak MB: the run process's own peak RSS (VmHWM); where it starts worker processes, "
        "the peak (sampled every 0.1 s) of the PSS summed over it and its workers, if larger.",
        _peak_line(meta),
        "Train s: the training loop alone (the figures per second come from it); start-up + eval s: the rest of the "
        "run's wall time (imports, model load, tokenization, evaluation, saving).",
        "Quality: ⚠ marks llmtune worse than the reference by more than the noise (the larger of either side's spread "
        "over the repeats and the tolerance: 0.01 accuracy, 0.5 ROUGE-L, 2% eval loss, 0.02 entity F1, 2 SQuAD F1; "
        "metric scoring must be identical).",
        "Target: issue #16's, each met only at equal quality (no ⚠): ≥ n× the reference's throughput (tokens/s for "
        "causal LM, samples/s elsewhere; llmtune padded: packing must not cost more than padding), peak memory "
        f"≤ {MEMORY_TARGET:g}× every reference's, and llmtune's LoRA MFU ≥ the share shown of the measured peak "
        "(on the workload's first row).",
    ]
    if failed:
        notes.append("Failed runs: " + ", ".join(f"{n}/{side} ×{k}" for n, side, k in failed) + " (see logs/).")
    return "\n".join(lines + notes + fp32_table(results)) + "\n"


def fp32_table(results: dict[str, Any]) -> list[str]:
    """llmtune with train.mixed_precision=no against the references' fp32 twins: the gain that is not bf16's."""
    from llmtune.benchmark.references import FP32

    summary = results["summary"]
    rows = []
    for name, s in summary.items():
        for ref, c in s.get("fp32", {}).items():
            figure = "tokens_per_second" if name.startswith("causal_lm") else "samples_per_second"
            r, q = c["ratios"], c["quality"]
            digits = 3 if q["metric"] in ("eval_accuracy", "eval_loss") else 2
            if ref == "llmtune":
                what = "llmtune (bf16 autocast) vs llmtune fp32: the bf16 gain alone"
                a, b = s["sides"]["llmtune"]["quality"].get(q["metric"]), q["llmtune_fp32"]
            elif ref.endswith(":bf16"):
                what = f"{REFERENCE_NAMES[(name, ref.removesuffix(':bf16'))]}: bf16 vs fp32, the reference's own bf16 gain"
                a, b = q["reference"], q["llmtune_fp32"]
            else:
                what = f"llmtune fp32 vs {REFERENCE_NAMES[(name, ref.removesuffix(FP32))]} in fp32"
                a, b = q["llmtune_fp32"], q["reference"]
            quality = "—" if a is None or b is None else \
                f"{q['metric'].removeprefix('eval_')} {a:.{digits}f} vs {b:.{digits}f}"
            rows.append(f"| {TITLES[name]} | {what} | **{_ratio(r.get(figure))}** ({figure.replace('_per_second', '/s')}) "
                        f"| {_ratio(r.get('peak_mem_mb'))} | {quality} |")
    if not rows:
        return []
    return ["", "llmtune's recipes train with `train.mixed_precision: auto`, which picked bf16 autocast on this "
            "machine (native bf16), and the references above ran with the Trainer's `bf16=True` (like for like). "
            "The same comparisons in fp32: llmtune with `train.mixed_precision=no` against the tuned reference "
            "without `bf16` (paired the same way):",
            "", "| workload | comparison | throughput × | peak MB × | quality |", "|---|---|---|---|---|", *rows]


def details(results: dict[str, Any]) -> str:
    out = ["| workload | model | data (rows) | settings |", "|---|---|---|---|"]
    for name, entry in results["workloads"].items():
        if entry.get("status") != "ok":
            continue
        d = entry["data"]
        rows = ", ".join(f"{k.removesuffix('_rows')} {v:,}" for k, v in d.items() if k.endswith("_rows"))
        hp = ", ".join(f"{k} {v}" for k, v in entry["hp"].items())
        out.append(f"| {name} | {entry['model']} | {d['origin']} ({rows}) | {hp} |")
    return "\n".join(out) + "\n"


def write(out: Path, results: dict[str, Any]) -> None:
    meta = results["meta"]
    md = [f"# llmtune benchmark — {meta['date']} on {meta['host']}", "", f"`{meta.get('command', '')}`", "",
          markdown(results), "", "## Workloads", "", details(results), "",
          "![throughput ratio](throughput_ratio.png)", "", "![loss curves](loss_curves.png)", ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    try:
        charts(out, results)
    except Exception as e:  # a chart must never cost the figures
        (out / "charts_error.txt").write_text(f"{type(e).__name__}: {e}\n")


def charts(out: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmtune.benchmark.workloads import TARGETS

    summary = results["summary"]
    ok = [n for n, s in summary.items() if s.get("status") == "ok"]
    # one bar per reference that ran, in the order of first appearance (ref_default, ref_tuned, then the peers)
    refs: list[str] = []
    for name in ok:
        refs += [r for r in summary[name]["vs"] if r not in refs]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(refs) * len(ok) + 1.5), 3.8), dpi=110)
    width = 0.8 / max(1, len(refs))

    def x_of(i: int, ref: str) -> float:
        return i + (refs.index(ref) - (len(refs) - 1) / 2) * width

    for ref in refs:
        xs, ys = [], []
        for i, name in enumerate(ok):
            c = summary[name]["vs"].get(ref)
            if c is None:
                continue
            figure = "tokens_per_second" if name.startswith("causal_lm") else "samples_per_second"
            xs.append(x_of(i, ref))
            ys.append(c["ratios"].get(figure) or 0.0)
        bars = ax.bar(xs, ys, width, label=f"vs {ref}")
        ax.bar_label(bars, labels=[f"{y:.2f}×" for y in ys], fontsize=7)
    for i, name in enumerate(ok):
        for ref, _, minimum in TARGETS.get(name, []):
            if ref in refs and ref in summary[name]["vs"]:
                x = x_of(i, ref)
                ax.plot([x - width / 2, x + width / 2], [minimum, minimum], color="black", lw=1.2, ls="--")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(ok)), [n.replace("_", " ") for n in ok])
    ax.set_ylabel("llmtune / reference throughput")
    ax.set_title("throughput ratio (samples/s; tokens/s for causal LM); dashes: targets", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_ratio.png")
    plt.close(fig)

    trained = [n for n in ok if any(r.get("loss_curve") for r in results["workloads"][n]["runs"])]
    fig, axes = plt.subplots(1, max(1, len(trained)), figsize=(4.2 * max(1, len(trained)), 3.3), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], trained, strict=False):
        for run in results["workloads"][name]["runs"]:
            if run.get("repeat") != 0 or not run.get("loss_curve"):
                continue
            steps, losses = zip(*run["loss_curve"], strict=True)
            ax.plot(steps, losses, label=run["side"], lw=1.5 if run["side"] == "llmtune" else 1.0)
        ax.set_title(f"{name} (repeat 1, seed 42)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not trained:
        axes[0][0].text(0.5, 0.5, "no training workload in this run", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png")
    plt.close(fig)


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def rewrite(folder: Path) -> None:
    """Summarise results.json again and redraw results.md and the charts (after a change to the report code)."""
    results = load(folder / "results.json")
    results["summary"] = summarize(results)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    write(folder, results)


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        rewrite(Path(arg))
