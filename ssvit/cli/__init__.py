"""Shared entry-point behaviour: bad input ends with a one-line message and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable


def exit_status(fn: Callable[[], object], errors: tuple[type[BaseException], ...], prog: str = "",
                fatal: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``fn()`` and end the process's distributed part in order (``ssvit.utils.shutdown``).

    Success: every rank meets, the process group is destroyed, 0. An exception of a type in
    ``errors`` prints ``[prog: ]error: <message>`` on stderr (no traceback) and gives 2; one in
    ``fatal`` the same line and 1 (e.g. a diverged run). Anything else propagates -- except in a
    distributed process, where any error leaves this rank at once (``fail_now``: its rank and error
    printed once, the status above, 1 with the traceback for an unexpected one), so that no rank
    waits at a barrier that a failed peer will never reach."""
    from ..utils.distributed import is_dist
    from ..utils.shutdown import fail_now, finish, format_traceback
    try:
        fn()
        finish()
    except errors + fatal as e:
        line = f"{prog}: error: {one_line(e)}" if prog else f"error: {one_line(e)}"
        status = 1 if isinstance(e, fatal) and not isinstance(e, errors) else 2
        if is_dist():
            fail_now(line, status)
        print(line, file=sys.stderr)
        return status
    except BaseException as e:
        if is_dist() and not isinstance(e, SystemExit):
            fail_now(f"{type(e).__name__}: {one_line(e).strip().splitlines()[0] if str(e).strip() else ''}", 1,
                     detail=format_traceback(e))
        raise
    return 0


def one_line(e: BaseException) -> str:
    """The message of ``e``; for an exception re-raised from a DataLoader worker (whose message
    carries the worker's whole traceback) the original exception's own message only."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].replace(".", "").isidentifier() else last
    return msg
