"""`llmtune finetune --num-processes N`: re-run the same command as N data-parallel processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: list[str], num_processes: int, debug: bool = False) -> int:
    """Start N processes on this machine and return the launcher's exit code.

    With GPUs this is `accelerate launch --multi_gpu` (NCCL). On CPUs accelerate's own `--cpu` launcher starts a
    single process (it expects mpirun for more), so torchrun starts them and Accelerate, told to stay on the CPU,
    joins them over gloo. Settings beyond the process count belong in an accelerate config:
    `accelerate launch --config_file accelerate_configs/... -m llmtune finetune RECIPE`. Without --debug the
    launcher runs through llmtune._launcher, which keeps its tracebacks and logs off the screen: the main process
    has said what went wrong in one line.
    """
    import torch

    tail = ["-m", "llmtune", *(["--debug"] if debug else []), *args]
    env = dict(os.environ)
    if torch.cuda.is_available():
        launcher = ["accelerate.commands.launch"] if debug else ["llmtune._launcher", "accelerate"]
        cmd = [sys.executable, "-m", *launcher, "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--dynamo_backend", "no", *tail]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        # share the cores instead of oversubscribing them: N processes x all cores each thrash
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
        launcher = ["torch.distributed.run"] if debug else ["llmtune._launcher", "torchrun"]
        cmd = [sys.executable, "-m", *launcher, "--nproc_per_node", str(num_processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *tail]
    return subprocess.call(cmd, env=env)


def processes_asked_of_launcher(ppid: int | None = None) -> int | None:
    """How many processes `accelerate launch` (our parent, if it is one) was asked for: `--num_processes N`, or
    `num_processes` in its `--config_file`. None when the parent is not accelerate's launcher or did not say.
    On a machine without GPUs accelerate starts one process whatever it is asked (it expects mpirun for more)."""
    try:
        raw = Path(f"/proc/{ppid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    joined = " ".join(argv)
    if "accelerate" not in joined or "launch" not in argv and "accelerate.commands.launch" not in joined:
        return None
    for i, a in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            value = a[len(flag) + 1:] if a.startswith(flag + "=") else argv[i + 1] if a == flag and i + 1 < len(argv) \
                else None
            if value is not None:
                return int(value) if value.isdigit() else None
    for i, a in enumerate(argv):
        if a in ("--config_file", "--config-file") and i + 1 < len(argv):
            try:
                import yaml

                n = (yaml.safe_load(Path(argv[i + 1]).read_text()) or {}).get("num_processes")
            except (OSError, ValueError, AttributeError, yaml.YAMLError):
                return None
            return n if isinstance(n, int) else None
    return None
