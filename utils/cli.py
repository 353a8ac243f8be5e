"""The common ending of every command-line program (no heavy imports: the dataset builders use it).

Which errors are the user's: those the project raises as an :class:`InputError` (a bad flag value,
a missing or unreadable file, a file's content, k larger than the images there are, a checkpoint of
another backbone, a device the machine lacks) are reported in one line; anything else keeps its
traceback, because a one-line "error" would hide where it happened: a bug, a plain ValueError of an
internal check (a shape that cannot be, in the project's own tensor code too), CUDA out-of-memory,
an NCCL failure, a shape error inside torch. An out-of-memory error also says which settings lower
memory.

A check that reports what the user gave raises an input-error type that is also the built-in kind
(:class:`InputValueError` is a ValueError, :class:`InputFileNotFoundError` a FileNotFoundError, ...),
so ``except ValueError`` keeps catching it; an internal invariant raises the plain built-in.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable


class InputError(Exception):
    """A problem with what the user gave (a flag, a file, the machine), raised by this project:
    always reported in one line."""


class InputValueError(InputError, ValueError):
    """A value the user gave (a flag, a file's content, a number of images) that cannot work."""


class InputFileNotFoundError(InputError, FileNotFoundError):
    """A file or folder the user named, or one a dataset lists, is not there."""


class InputFileExistsError(InputError, FileExistsError):
    """A path the user gave as an output is an existing file where a folder is needed, or is taken."""


class DeviceError(InputError, RuntimeError):
    """The device asked for does not exist on this machine."""


OOM_HINT = ("lower --batch_size (images per forward pass) and, with LFE windows (--winmode mul / onlywin), "
            "--window_batch (windows per backbone call); --align image_index searches less than exhaustive")


class _Retired(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.help_text}")


def add_retired_flag(p: argparse.ArgumentParser, old: str, why: str) -> None:
    """An old spelling or meaning of a flag, gone: kept out of --help and refused with ``why``
    (``"is now --data_root"``), so a script that still uses it stops with the flag to use instead
    of running with a setting it did not ask for."""
    action = p.add_argument(old, nargs="*", action=_Retired, help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    action.help_text = why


def is_input_error(err: BaseException) -> bool:
    """An error to report in one line: an :class:`InputError` (or one of its subclasses). A plain
    ValueError, FileNotFoundError or RuntimeError never is, wherever it was raised."""
    return isinstance(err, InputError)


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
