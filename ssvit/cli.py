"""Shared entry-point behaviour: bad input ends with a one-line message and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable


def exit_status(fn: Callable[[], object], errors: tuple[type[BaseException], ...], prog: str = "") -> int:
    """Run ``fn()``; an exception of a type in ``errors`` prints ``[prog: ]error: <message>`` on
    stderr (no traceback) and gives 2; success gives 0. Anything else propagates."""
    try:
        fn()
    except errors as e:
        msg = one_line(e)
        print(f"{prog}: error: {msg}" if prog else f"error: {msg}", file=sys.stderr)
        return 2
    return 0


def one_line(e: BaseException) -> str:
    """The message of ``e``; for an exception re-raised from a DataLoader worker (whose message
    carries the worker's whole traceback) the original exception's own message only."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].replace(".", "").isidentifier() else last
    return msg
