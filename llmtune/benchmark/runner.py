"""Prepare the workloads, run llmtune and the references in alternation, measure, and write the report.

Every measured run is a fresh process (`run_one`), polled from here for the memory of its whole process tree
(workers included). Within a repeat the sides run back to back with llmtune next to each reference, and the order
flips from one repeat to the next, so a slow spell on a shared machine falls on both sides of a comparison rather
than on one; the report gives medians over the repeats and, as the ratio, the median of the per-repeat
llmtune/reference ratios.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmtune.benchmark import SCALES, WORKLOADS
from llmtune.errors import LlmtuneError

POLL_SECONDS = 0.1


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment(threads: int) -> dict[str, Any]:
    from llmtune.runs import versions

    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
                            "cpus": cpu_count(), "threads": threads, "cpu": platform.processor() or platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    info.update(versions())
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# ---- memory of a process tree -------------------------------------------------------------------------------
# The run's own process reports its exact peak RSS (VmHWM) when it ends, which costs nothing while it runs. Only
# processes it starts (metric scoring's worker pool) need sampling from outside: then the PSS of the whole tree is
# read (shared pages split between the processes sharing them, so forked workers are not counted twice). Reading
# PSS walks a process's page tables, so it is done only while such workers exist: a poll must not slow the run
# it measures, and must not cost a big process more than a small one.


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def workers_tree_mb(pid: int) -> float:
    """PSS summed over the run's process and its descendants; 0 while it has none (its VmHWM covers that)."""
    kids = descendants(pid)
    return _pss_mb(pid) + sum(_pss_mb(k) for k in kids) if kids else 0.0


# ---- one measured run ---------------------------------------------------------------------------------------


def measure(spec_path: Path, side: str, seed: int, work: Path, log_path: Path, threads: int,
            timeout: float) -> dict[str, Any]:
    """Run one side in a fresh process; wall time and peak memory are measured from outside it."""
    result_path = work / "result.json"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work.parent / "hf-datasets-cache"), "PYTHONWARNINGS": "ignore",
           "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "llmtune.benchmark.run_one", str(spec_path), side, str(seed), str(work / "out"),
           str(result_path)]
    peak = 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                peak = max(peak, workers_tree_mb(proc.pid))
                if time.perf_counter() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(POLL_SECONDS)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the run and the workers it waited for: steadier than wall time on a busy machine
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    run: dict[str, Any] = {"side": side, "seed": seed, "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)}
    if hasattr(os, "getloadavg"):
        run["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # how busy the machine was around the run
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.exists() else []
        why = "timed out" if wall > timeout else f"exit code {proc.returncode}"
        run["error"] = f"{why}: " + " | ".join(tail)[-400:]
        return run
    res = json.loads(result_path.read_text())
    run.update(res)
    # the exact peak of the run's own process, or the sampled peak of its whole tree where workers add to it
    run["peak_mem_mb"] = round(max(peak, res.get("peak_rss_main_mb", 0.0)), 1)
    run["sampled_tree_pss_mb"] = round(peak, 1)  # 0: the run started no worker processes
    shutil.rmtree(work, ignore_errors=True)  # model folders of finished runs: only the figures are kept
    return run


def normalise(workload: str, run: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """One set of figure names for every workload: samples_per_second, tokens_per_second, quality."""
    from llmtune.benchmark.workloads import score_rouge_l

    if "error" in run:
        return run
    if "train_samples_per_second" in run:
        run["samples_per_second"] = run["train_samples_per_second"]
        run["tokens_per_second"] = run["train_tokens_per_second"]
    if run.get("train_runtime") is not None:
        # what the run spent outside its training loop: imports, model load, tokenization, evaluation, saving
        run["outside_training_seconds"] = round(run["wall_seconds"] - run["train_runtime"], 3)
    preds = run.pop("predictions", None)
    if preds is not None:
        # both sides' predictions are scored by the same function against every reference of a row
        with open(spec["data"]["eval"], encoding="utf-8") as f:
            refs = [json.loads(line)["references"] for line in f]
        key = "eval_rougeL" if workload == "summarization" else "rougeL"
        run.setdefault("quality", {})[key] = score_rouge_l(preds, refs)
        run["n_predictions"] = len(preds)
        run["empty_predictions"] = sum(1 for p in preds if not p.strip())
    return run


# ---- the benchmark ------------------------------------------------------------------------------------------


def _quiet_libraries() -> None:
    """The prepare step loads models and data in this process: no load reports or progress bars."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "datasets", "accelerate", "peft", "llmtune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def resolve_workloads(names: list[str] | None) -> list[str]:
    if not names:
        return list(WORKLOADS)
    out = []
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name not in WORKLOADS:
                import difflib

                close = difflib.get_close_matches(name, WORKLOADS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise LlmtuneError(f"--workloads: unknown workload '{name}'{hint}; choose from {', '.join(WORKLOADS)}")
            if name not in out:
                out.append(name)
    return out


def run_benchmark(workloads: list[str] | None = None, data_dir: Path | None = None, scale: str = "small",
                  repeats: int | None = None, output_root: Path = Path("benchmarks/results"), threads: int | None = None,
                  console: Any = None, timeout: float | None = None, max_steps: int | None = None) -> Path:
    """Run the benchmark and write results.json, results.md and the charts; return the results folder."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from llmtune.benchmark import report
    from llmtune.benchmark.references import FP32, FP32_TWIN, peer_missing
    from llmtune.benchmark.workloads import AUTOCAST, FP32_SIDE, QUALITY, VARIANTS, pipeline_available, prepare

    console = console or Console()
    names = resolve_workloads(workloads)
    if scale not in SCALES:
        raise LlmtuneError(f"--scale: '{scale}' is not one of {', '.join(SCALES)}")
    repeats = repeats if repeats is not None else (1 if scale == "tiny" else 3)
    # a run that hangs is cut off and reported as failed; full scale on a CPU legitimately takes hours
    timeout = timeout or {"tiny": 900.0, "small": 3600.0, "full": 48 * 3600.0}[scale]
    if repeats < 1:
        raise LlmtuneError(f"--repeats must be at least 1, got {repeats}")
    if max_steps is not None and max_steps < 1:
        raise LlmtuneError(f"--max-steps must be at least 1, got {max_steps}")
    threads = threads or cpu_count()
    if data_dir is not None and not data_dir.is_dir():
        console.print(f"[yellow]warning:[/] --data-dir {data_dir} is not a folder; using the hub, else the data "
                      "bundled with llmtune")
        data_dir = None
    out = output_root / f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {
        "meta": {**environment(threads), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "scale": scale, "repeats": repeats,
                 "max_steps": max_steps,
                 "workloads": names, "data_dir": str(data_dir) if data_dir else None,
                 "command": " ".join(["llmtune", *sys.argv[1:]]) if sys.argv else ""},
        "workloads": {},
    }

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2))

    import torch

    from llmtune.benchmark import mfu

    torch.set_num_threads(threads)
    _quiet_libraries()
    console.log("measuring this machine's matmul peak (fp32; bf16 where native) on "
                    f"{threads} thread{'s' if threads > 1 else ''}")
    burst = 0.3 if scale == "tiny" else 1.0  # seconds of matmuls per reading and precision
    readings = [mfu.peaks(threads, burst)]
    results["meta"]["peak_flops"] = peak = mfu.combine(readings)
    save()
    with tempfile.TemporaryDirectory(prefix="llmtune-benchmark-") as tmp:
        work_root = Path(tmp)
        columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            specs: dict[str, dict[str, Any]] = {}
            for name in names:
                entry: dict[str, Any] = {"status": "ok", "quality_metric": QUALITY[name][0],
                                         "higher_is_better": QUALITY[name][1], "runs": []}
                results["workloads"][name] = entry
                missing = pipeline_available(name)
                if missing:
                    entry["status"] = missing
                    console.log(f"{name}: {missing}")
                    continue
                task = progress.add_task(f"preparing {name}", total=None)
                try:
                    specs[name] = prepare(name, scale, data_dir, work_root / name, threads, max_steps)
                except Exception as e:  # a workload that cannot be prepared is reported, the others still run
                    entry["status"] = f"not available: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    console.log(f"{name}: {entry['status']}")
                    continue
                finally:
                    progress.remove_task(task)
                spec = specs[name]
                entry.update(model=spec["model_name"], data=spec["data"], hp=spec["hp"])
                save()
            from llmtune.hardware import native_bf16

            # llmtune's own fp32 side only where its recipes' `auto` picks bf16 (elsewhere it would repeat llmtune)
            ablate = {n for n in specs if n in AUTOCAST and native_bf16()}
            # ...and there the references run bf16 too (like for like), with the tuned one's fp32 twin beside
            # llmtune_fp32 for the fp32 table
            twins = {n: [f"{FP32_TWIN}{FP32}"] if n in ablate and FP32_TWIN in VARIANTS[n] else [] for n in specs}
            total = sum(repeats * (1 + len(VARIANTS[n]) + (n in ablate) + len(twins[n])) for n in specs)
            overall = progress.add_task("benchmark", total=total)
            for name, spec in specs.items():
                entry = results["workloads"][name]
                # llmtune runs next to each reference (in the middle of three), and the order flips every repeat
                refs = list(VARIANTS[name])
                sides = [refs[0], "llmtune", *refs[1:], *([FP32_SIDE] if name in ablate else []), *twins[name]]
                for side in sides:
                    missing = peer_missing(side)
                    if missing:  # reported in the results and the report, never silently left out
                        entry.setdefault("peers_missing", {})[side] = missing
                        console.log(f"{name} · {side}: {missing}")
                sides = [side for side in sides if side not in entry.get("peers_missing", {})]
                for r in range(repeats):
                    for side in (sides if r % 2 == 0 else sides[::-1]):
                        seed = 42 + r
                        progress.update(overall, description=f"{name} · {side} · repeat {r + 1}/{repeats}")
                        run = measure(work_root / name / "spec.json", side, seed, work_root / "runs" / f"{name}-{side}-{r}",
                                      out / "logs" / f"{name}-{side}-{r}.log", threads, timeout)
                        run = normalise(name, run, spec)
                        run["repeat"] = r
                        entry["runs"].append(run)
                        # the peak again, between runs: every MFU so far is divided by the highest reading
                        readings.append(mfu.peaks(threads, burst))
                        results["meta"]["peak_flops"] = peak = mfu.combine(readings)
                        for done, done_spec in specs.items():
                            for each in results["workloads"][done]["runs"]:
                                each.update(mfu.run_mfu(each, done_spec, peak))
                        console.log(report.run_line(name, run))
                        progress.advance(overall)
                        save()
    results["meta"]["total_seconds"] = round(time.time() - started, 1)
    results["summary"] = report.summarize(results)
    save()
    report.write(out, results)
    return out
