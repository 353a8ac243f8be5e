"""The shell workflow's up-front check (scripts/workflow_lib.sh): train.py's and test_few_shot.py's
flags, each program's own ``--check_args``, in one Python process, before any dataset is read.

    python scripts/check_flags.py TRAIN_FLAGS... --then TEST_FLAGS...

Exits 0, or 2 after one line ``<program>: error: <message>`` on stderr (argparse's usage of
the program is left out: the script prints its own).
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _check(prog: str, main, argv: list[str]) -> None:
    sys.argv[0] = prog  # argparse names the program it checks
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            main([*argv, "--check_args"])
    except SystemExit as stop:
        if stop.code:
            lines = [line for line in err.getvalue().splitlines() if f"{prog}: error:" in line]
            _fail(lines[-1] if lines else err.getvalue().strip() or f"{prog}: error: exit status {stop.code}")
    except (ValueError, FileNotFoundError) as problem:
        _fail(f"{prog}: error: {problem}")


def _fail(line: str) -> None:
    print(line, file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if "--then" not in argv:
        _fail("usage: python scripts/check_flags.py TRAIN_FLAGS... --then TEST_FLAGS...")
    cut = argv.index("--then")
    import test_few_shot
    import train

    _check("train.py", train.main, argv[:cut])
    _check("test_few_shot.py", test_few_shot.main, argv[cut + 1:])


if __name__ == "__main__":
    main(sys.argv[1:])
