"""The common ending of every command-line program (no heavy imports: the dataset builders use it).

Which errors are the user's: the project's own input errors (a bad value, a missing or unreadable
file, a device the machine lacks) are reported in one line; anything else (a bug, CUDA
out-of-memory, an NCCL failure, a shape error inside torch) keeps its traceback, because a one-line
"error" would hide where it happened. An out-of-memory error also says which settings lower memory.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable


class InputError(Exception):
    """A problem with what the user gave (a flag, a file, the machine), raised by this project:
    always reported in one line."""


class DeviceError(InputError, RuntimeError):
    """The device asked for does not exist on this machine."""


# raised by the project's own code (never by a library's): a value, a file
_OWN_KINDS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
USER_ERRORS = (InputError, *_OWN_KINDS)  # the kinds that may be input errors (see is_input_error)

_PROJECT = Path(__file__).resolve().parent.parent
OOM_HINT = ("lower --batch_size (images per forward pass) and, with LFE windows (--winmode mul / onlywin), "
            "--window_batch (windows per backbone call); --align image_index searches less than exhaustive")


def _own_frame(err: BaseException) -> bool:
    """Whether the innermost Python frame of ``err``'s traceback is this project's code (not a
    library's, e.g. torch, NumPy or scikit-learn)."""
    tb = err.__traceback__
    if tb is None:
        return True  # constructed, not raised (tests); the kind decides
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    parts = path.parts
    return "site-packages" not in parts and "dist-packages" not in parts and _PROJECT in path.parents


def is_input_error(err: BaseException) -> bool:
    """An error to report in one line: an :class:`InputError`, or a value / file error the
    project's own code raised. A RuntimeError that is not an InputError never is."""
    if isinstance(err, InputError):
        return True
    return isinstance(err, _OWN_KINDS) and _own_frame(err)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA out-of-memory (``torch.OutOfMemoryError``), or a host allocation that failed."""
    if isinstance(err, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(err).__mro__):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def run_cli(main: Callable[[], Any], prog: str, oom_hint: str = OOM_HINT) -> None:
    """Run a program's ``main()`` and exit: input errors (see :func:`is_input_error`) print
    ``prog: error: message`` instead of a traceback; an out-of-memory error prints its traceback
    and then what lowers memory; an int that ``main()`` returns is the exit status, anything else
    means success. Set FASL_DEBUG=1 to get the traceback of input errors too."""
    try:
        status = main()
    except BaseException as err:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        if is_out_of_memory(err):
            traceback.print_exc()
            sys.exit(f"{prog}: error: out of memory ({first_line(err)}): {oom_hint}")
        if not is_input_error(err) or os.environ.get("FASL_DEBUG"):
            raise
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        sys.exit(f"{prog}: error: {message} (FASL_DEBUG=1 shows the traceback)")
    sys.exit(status if isinstance(status, int) else 0)
