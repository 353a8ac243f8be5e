"""The common ending of every command-line program (no heavy imports: the dataset builders use it)."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, RuntimeError)


def run_cli(main: Callable[[], Any], prog: str) -> None:
    """Run a program's ``main()`` and exit: user errors (missing files, bad values, unreadable
    images) print ``prog: error: message`` instead of a traceback; an int that ``main()``
    returns is the exit status, anything else means success. Set FASL_DEBUG=1 to get the
    traceback instead."""
    try:
        status = main()
    except USER_ERRORS as err:
        if os.environ.get("FASL_DEBUG"):
            raise
        sys.exit(f"{prog}: error: {err} (FASL_DEBUG=1 shows the traceback)")
    sys.exit(status if isinstance(status, int) else 0)
