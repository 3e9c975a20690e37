"""`llmtune finetune --num-processes N`: re-run the same command under `accelerate launch`."""

from __future__ import annotations

import subprocess
import sys


def launch(args: list[str], num_processes: int, debug: bool = False) -> int:
    """Start N processes on this machine (gloo on CPU, NCCL on GPUs) and return the launcher's exit code.

    Hardware settings beyond the process count come from the user's accelerate config
    (`accelerate config` or `accelerate launch --config_file accelerate_configs/...`).
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--machine_rank", "0", "--dynamo_backend", "no", "--mixed_precision", "no"]
    import torch

    if not torch.cuda.is_available():
        cmd.append("--cpu")
    if num_processes > 1:
        cmd.append("--multi_gpu") if torch.cuda.is_available() else None
    cmd += ["-m", "llmtune", *(["--debug"] if debug else []), *args]
    return subprocess.call(cmd)
