"""What lot-aware scoring costs: predict.py end to end on the same N images, lot-aware and with
``--lot off`` (each image against the references alone), each run in its own process so its peak
memory is its own. Prints seconds per image, the ratio, and peak memory (resident set), and writes
lot_cost.json. With ``--repeats R`` each run is made R times, the two alternating (single, lot,
lot, single, ...), and the fastest of each is kept: another process on the machine only ever
slows a run down.

    python bench/lot_cost.py --refs good/ --images lot/ --n 200
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.images import list_images  # noqa: E402
from models.hardware import cpu_summary  # noqa: E402
from utils.cli import InputValueError  # noqa: E402
from utils.misc import write_json  # noqa: E402


def run(argv: list[str]) -> tuple[float, int]:
    """predict.py in a child process -> (wall seconds, its own peak resident memory in bytes, from
    the child's resource usage as it is reaped)."""
    with tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), *argv], stdout=subprocess.DEVNULL,
                                 stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            said = [line for line in err.read().replace("\r", "\n").splitlines() if line.strip()]
            last = said[-1].removesuffix(" (FASL_DEBUG=1 shows the traceback)") if said else "no message"
            raise InputValueError(f"predict.py stopped (exit {child.returncode}): {last}")
    return seconds, usage.ru_maxrss * 1024  # KiB on Linux


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--refs", nargs="+", required=True, help="the references (predict.py --refs)")
    p.add_argument("--images", nargs="+", required=True, help="images to draw the lot from (predict.py --images)")
    p.add_argument("--n", type=int, default=200, help="lot size: the first N images (default: %(default)s)")
    p.add_argument("--predict_args", default="", help="further predict.py flags for both runs, one string")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each, alternating; the fastest is kept (default: %(default)s)")
    p.add_argument("--out", default="bench_out/lot_cost", help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise InputValueError(f"--repeats must be at least 1, got {args.repeats}")
    images = list_images(args.images, "--images")
    if len(images) < args.n:
        raise InputValueError(f"--images selects {len(images)} image(s), fewer than --n {args.n}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "lot.txt"
    listing.write_text("\n".join(str(Path(i).resolve()) for i in images[:args.n]) + "\n")
    rows, doc = [], {"n": args.n, "cpu": cpu_summary(), "threads": os.cpu_count(), "runs": {}}
    runs = (("single (--lot off)", ["--lot", "off"]), ("lot-aware", ["--lot", "on"]))
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    peaks: dict[str, int] = {}
    for r in range(args.repeats):
        for name, extra in (runs if r % 2 == 0 else runs[::-1]):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, peak = run(["--refs", *args.refs, "--images", str(listing), "--out", tmp, *extra,
                                     *shlex.split(args.predict_args)])
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0), peak)
    for name, _ in runs:
        seconds, peak = min(times[name]), peaks[name]
        doc["runs"][name] = {"seconds": seconds, "all_seconds": times[name], "s_per_image": seconds / args.n,
                             "peak_rss_bytes": peak}
        rows.append([name, f"{seconds:.1f}", f"{seconds / args.n:.3f}", f"{peak / 2**20:.0f}"])
    single, lot = (doc["runs"][k]["seconds"] for k in ("single (--lot off)", "lot-aware"))
    doc["ratio"] = lot / single
    table = tabulate(rows, headers=["run", "seconds", "s / image", "peak RSS (MiB)"], tablefmt="github")
    print(f"{args.n} images, {doc['cpu']['name']} (AMX: {doc['cpu']['amx']}), predict.py end to end\n\n{table}\n\n"
          f"lot-aware / single: {doc['ratio']:.2f}x")
    write_json(out / "lot_cost.json", doc)
    return doc


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, "bench/lot_cost.py")
