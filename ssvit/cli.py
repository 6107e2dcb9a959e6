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
        print(f"{prog}: error: {e}" if prog else f"error: {e}", file=sys.stderr)
        return 2
    return 0
