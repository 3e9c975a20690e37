"""One measured run in a process of its own, so that its peak memory is its own and nothing warms up for the next:

    python -m llmtune.benchmark.run_one SPEC.json SIDE SEED WORK_DIR RESULT.json

SIDE is `llmtune`, `llmtune_fp32` (llmtune with train.mixed_precision=no) or a reference variant (`ref_default`,
`ref_tuned`). The runner sets the thread variables in
the environment; this process also sets torch's thread count, identically for both sides.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any


def _quiet(libraries: bool) -> None:
    warnings.filterwarnings("ignore")
    for name in ("transformers", "datasets", "accelerate", "peft", "torch", "llmtune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not libraries:
        return
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM). Not ru_maxrss: Linux carries the parent's
    high-water mark across fork and exec into it, so it would report the runner's footprint."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run(spec: dict[str, Any], side: str, seed: int, work: Path) -> dict[str, Any]:
    workload = spec["workload"]
    threads = int(spec["threads"])
    torch = None
    if side.startswith("llmtune"):
        from llmtune.hardware import tune_cpu_allocator

        tune_cpu_allocator()  # as the llmtune command does at start, before torch is imported
    if workload != "metrics":  # metric scoring needs no torch; importing it would only add to the footprint
        import torch

        torch.set_num_threads(threads)
    _quiet(libraries=torch is not None)
    from llmtune.benchmark.references import REFERENCES, base_variant
    from llmtune.benchmark.workloads import LLMTUNE

    t0 = time.perf_counter()
    if side == "llmtune_fp32":  # llmtune as in its recipes, but with train.mixed_precision=no
        spec, side = {**spec, "mixed_precision": "no"}, "llmtune"
    if side == "llmtune_padded":  # llmtune with data.packing=false: padded batches (a causal_lm variant)
        spec, side = {**spec, "packing": False}, "llmtune"
    ref = REFERENCES.get(workload)
    if isinstance(ref, dict) and side != "llmtune":  # several reference implementations: one per variant
        ref = ref[base_variant(side)]
    fn = LLMTUNE[workload] if side == "llmtune" else (lambda s, seed, out: ref(s, side, seed, out))
    result = fn(spec, seed, work)
    result["inner_seconds"] = time.perf_counter() - t0
    result["peak_rss_main_mb"] = peak_rss_mb()
    if torch is not None and torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["torch_threads"] = torch.get_num_threads() if torch is not None else threads
    return result


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 5:
        sys.stderr.write(__doc__ or "")
        return 2
    spec_path, side, seed, work, out = args
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = json.loads(Path(spec_path).read_text())
    result = run(spec, side, int(seed), Path(work))
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
