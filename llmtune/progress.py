"""Progress bars: training, evaluation and generation draw the same kind, on the main process only."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str, main: bool = True,
        initial: int = 0, leave: bool = True) -> Any:
    """A tqdm bar on stderr. TQDM_DISABLE is read here too: tqdm reads it once, at import, so a caller setting it
    later was not heard. Off a terminal (a log file) it redraws every 30 s instead of filling the log."""
    from tqdm.auto import tqdm

    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    return tqdm(iterable, total=total, initial=initial, disable=not main or quiet, desc=desc, unit=unit,
                dynamic_ncols=True, leave=leave, mininterval=0.1 if sys.stderr.isatty() else 30)
