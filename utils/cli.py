"""The common ending of every command-line program (no heavy imports: the dataset builders use it)."""
from __future__ import annotations

import sys
from typing import Any, Callable

USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, RuntimeError)


def run_cli(main: Callable[[], Any], prog: str) -> None:
    """Run a program's ``main()`` and exit: user errors (missing files, bad values, unreadable
    images) print ``prog: error: message`` instead of a traceback; an int that ``main()``
    returns is the exit status, anything else means success."""
    try:
        status = main()
    except USER_ERRORS as err:
        sys.exit(f"{prog}: error: {err}")
    sys.exit(status if isinstance(status, int) else 0)
