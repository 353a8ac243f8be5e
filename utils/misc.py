"""Run helpers: device resolution, seeding, atomic file writes, logging, peak memory."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Union

import numpy as np
import torch

from utils.cli import DeviceError, InputFileExistsError, InputValueError

if TYPE_CHECKING:
    from utils.distributed import Dist

PathLike = Union[str, os.PathLike]

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(arg: Union[str, int, torch.device]) -> torch.device:
    """Turn a command-line device string into a ``torch.device``.

    Accepted: ``'cpu'``, ``'cuda'`` (→ ``cuda:0``), ``'cuda:N'`` and a bare index ``'N'``
    (→ ``cuda:N``); an ``int`` or a ``torch.device`` is accepted too.

    Raises:
        ValueError: the string is none of the above.
        DeviceError (a RuntimeError): CUDA is requested but unavailable, or the index is out of range.
    """
    if isinstance(arg, torch.device):
        arg = str(arg)
    if isinstance(arg, bool):  # bool is an int subclass; True is not a device
        raise InputValueError(f"invalid device {arg!r}: use 'cpu', 'cuda', 'cuda:N' or N")
    text = str(arg).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text.isdigit():
        index = int(text)
    else:
        match = _CUDA_RE.match(text)
        if match is None:
            raise InputValueError(f"invalid device {arg!r}: use 'cpu', 'cuda', 'cuda:N' or N")
        index = int(match.group(1)) if match.group(1) is not None else 0
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {arg!r} requested but CUDA is not available on this machine; "
            "use --device cpu")
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device {arg!r} requested but only {count} CUDA device(s) are visible "
            f"(valid indices 0..{count - 1})")
    return torch.device("cuda", index)


def normalize_tensor(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(..., 3, H, W) float in [0, 1] → (x - mean) / std per channel (mean, std: 3 values each)."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean_t) / std_t


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise InputValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _atomic_write(path: PathLike, write: Callable[[Any], None], mode: str) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync it, then rename over ``path``.

    A crash mid-write leaves the old file (or none) in place, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)`` through a temp file in the same folder + fsync + ``os.replace``.

    Returns the destination path.
    """
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda f: f.write(text), "w")


def _json_default(obj: Any) -> Any:
    # NumPy scalars / arrays, tensors and paths are common in results; everything else is an error.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (indent 2, sorted keys) atomically; returns the path.

    NumPy scalars/arrays, tensors and paths are converted; NaN/inf raise ``ValueError``
    (strict JSON has no NaN), so metrics must use ``None`` for "not available".
    """
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOG_DATEFMT = "%H:%M:%S"


class _StdStream(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` / ``sys.stderr`` is when a record is emitted
    (so a redirected stream, as under pytest, is honoured)."""

    def __init__(self, name: str):
        self._which = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets one; the live sys stream wins
        pass


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _LazyFileHandler(logging.FileHandler):
    """A log file (appended to) that is created, with its folder, by the first record written to
    it: a run that stops on an input error before logging anything leaves no empty log behind."""

    def __init__(self, path: str):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def get_logger(name: str, log_file: PathLike | None = None,
               level: int = logging.INFO) -> logging.Logger:
    """Logger writing ``HH:MM:SS LEVEL name: message``: information to stdout, warnings and
    errors to stderr, and everything to ``log_file`` when given.

    Calling it again for the same name adds no duplicate handlers; a new ``log_file``
    replaces (and closes) the previous file handler, so each run logs only into its own
    file (appending). The logger does not propagate to the root logger. Python warnings
    (``warnings.warn`` in the library) are routed to the same handlers.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    formatter = logging.Formatter(_LOG_FORMAT, datefmt=_LOG_DATEFMT)
    owned = [h for h in logger.handlers if getattr(h, "_fasl_handler", False)]
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in owned):
        out = _StdStream("stdout")
        out.addFilter(_Below(logging.WARNING))
        err = _StdStream("stderr")
        err.setLevel(logging.WARNING)
        for handler in (out, err):
            handler.setFormatter(formatter)
            handler._fasl_handler = True
            logger.addHandler(handler)
    if log_file is not None:
        log_path = os.path.abspath(log_file)
        for h in owned:
            if isinstance(h, logging.FileHandler) and h.baseFilename != log_path:
                logger.removeHandler(h)
                h.close()
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == log_path
                   for h in logger.handlers):
            handler = _LazyFileHandler(log_path)
            handler.setFormatter(formatter)
            handler._fasl_handler = True
            logger.addHandler(handler)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers = list(logger.handlers)
    warnings_logger.propagate = False
    return logger


def close_log_file(logger: logging.Logger, log_file: PathLike) -> None:
    """Detach and close ``logger``'s handler of ``log_file`` (and the warnings' copy of it)."""
    path = os.path.abspath(log_file)
    for lg in (logger, logging.getLogger("py.warnings")):
        for handler in list(lg.handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == path:
                lg.removeHandler(handler)
                handler.close()


def log_to_files(logger: logging.Logger, level: int, message: str, started_only: bool = False) -> None:
    """Write ``message`` to ``logger``'s log files only (the streams get it elsewhere);
    ``started_only``: only to the files already written to (none is created for it)."""
    record = logger.makeRecord(logger.name, level, "(fatal)", 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and not (started_only and handler.stream is None):
            handler.handle(record)


@contextlib.contextmanager
def fatal_errors_logged(logger: logging.Logger) -> Iterator[None]:
    """An error that ends the run is written into the run's log file as well (stderr gets it from
    ``utils.cli.run_cli``): its one line for an input error, the traceback for anything else. A
    run refused before it logged anything has no log file, and gets none."""
    from utils.cli import is_input_error

    try:
        yield
    except Exception as err:
        if is_input_error(err):
            log_to_files(logger, logging.ERROR, f"error: {err}", started_only=True)
        else:
            trace = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()
            log_to_files(logger, logging.ERROR, "error:\n" + trace, started_only=True)
        raise


def check_output_folder(path: PathLike, flag: str) -> Path:
    """Refuse an output folder that cannot be one (an existing file, or a folder below a file),
    before anything is computed or written."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = f"{p} is an existing file" if p == path else f"{p}, a folder above it, is a file"
                raise InputFileExistsError(f"{flag} {path}: {what}; give a folder")
            break
    return path


class Run(NamedTuple):
    save_path: Path
    log: logging.Logger
    device: torch.device
    dist: "Dist"


def start_run(args, name: str) -> Run:
    """Common start of train/test runs: check ``args.save_path`` can be a folder, resolve
    ``args.device``, join the process group under torchrun (utils/distributed.py), log to
    ``<name>.log`` in the save path (``<name>.rank<r>.log`` for the other processes of a torchrun;
    the folder and the file appear with the first record, so a run refused before it logs anything
    leaves nothing behind) and seed everything from ``args.seed``."""
    from utils.distributed import init_distributed

    save_path = check_output_folder(args.save_path, "--save_path")
    device = resolve_device(args.device)
    dist_info, device = init_distributed(device)
    log_name = name if dist_info.is_main else f"{name}.rank{dist_info.rank}"
    log = get_logger(f"fasl.{name}", save_path / f"{log_name}.log")
    seed_everything(args.seed)
    return Run(save_path, log, device, dist_info)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes.

    Linux: ``VmHWM`` of /proc/self/status (``ru_maxrss`` can lag behind the current RSS there);
    elsewhere ``ru_maxrss`` (bytes on macOS, KiB otherwise).
    """
    import resource

    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
