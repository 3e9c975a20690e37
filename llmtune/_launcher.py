"""The process launcher behind `llmtune finetune --num-processes N`, made quiet.

torchrun (and `accelerate launch --multi_gpu`, which calls torchrun's code) answers a worker that exits with an
error by logging every signal it sends and raising ChildFailedError, whose traceback and failure report fill the
screen under the one line the main process has already printed. Here the launcher runs in-process with its logs
off, and its exit code is the first failed worker's (2 for a user error, 130 for an interruption).
`llmtune --debug` does not come here: it runs the launcher as is, traceback included.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    which, *args = argv
    # the launcher's own logs ("Sending process N closing signal SIGTERM", "failed (exitcode: 2)"); its modules
    # set their loggers' levels when imported, so the switch is global (this process does nothing else)
    logging.disable(logging.CRITICAL)
    try:
        if which == "torchrun":
            from torch.distributed.run import parse_args, run

            run(parse_args(args))
        else:
            from accelerate.commands.launch import launch_command, launch_command_parser

            launch_command(launch_command_parser().parse_args(args))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if rank != 0:  # the other processes stay quiet (cli.handle_errors): say which one stopped first
            sys.stderr.write(f"error: process {rank} stopped first (exit code {failure.exitcode}); run with "
                             "llmtune --debug to see every process's traceback\n")
        return failure.exitcode if failure.exitcode > 0 else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
