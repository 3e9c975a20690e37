"""`llmtune finetune --num-processes N`: re-run the same command as N data-parallel processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: list[str], num_processes: int, debug: bool = False) -> int:
    """Start N processes on this machine and return the launcher's exit code.

    With GPUs this is `accelerate launch --multi_gpu` (NCCL). On CPUs accelerate's own `--cpu` launcher starts a
    single process (it expects mpirun for more), so torchrun starts them and Accelerate, told to stay on the CPU,
    joins them over gloo. Settings beyond the process count belong in an accelerate config:
    `accelerate launch --config_file accelerate_configs/... -m llmtune finetune RECIPE`.
    """
    import torch

    tail = ["-m", "llmtune", *(["--debug"] if debug else []), *args]
    env = dict(os.environ)
    if torch.cuda.is_available():
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--dynamo_backend", "no", *tail]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        # share the cores instead of oversubscribing them: N processes x all cores each thrash
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *tail]
    return subprocess.call(cmd, env=env)
