"""Summarise bench/run_targets.sh results: one row per run, in the README's table layout.

    python bench/summarize.py bench_out
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tabulate import tabulate


def _short(dtype: str) -> str:
    return dtype.replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32").replace("float16", "fp16")


def search_label(precision: str, dtype: str | None, window_dtype: str | None = None) -> str:
    """'auto (bf16)': the flag and, when it was resolved at run time, what it resolved to
    ('auto (bf16; windows fp32)' when the window search resolved otherwise)."""
    if precision != "auto" or not dtype:
        return precision
    if window_dtype and window_dtype != dtype:
        return f"auto ({_short(dtype)}; windows {_short(window_dtype)})"
    return f"auto ({_short(dtype)})"


def precision_label(precision: str, dtype: str | None) -> str:
    """'auto (fp32)': the --precision flag and the encoder dtype it resolved to on that machine."""
    if not dtype:
        return precision
    return f"{precision} ({_short(dtype)})" if precision == "auto" else precision


def main(folder: str = "bench_out") -> str:
    rows, machines = [], set()
    for path in sorted(Path(folder).glob("*.json")):
        r = json.loads(path.read_text())
        if "settings" not in r or path.stem == "metrics":
            continue
        s, t = r["settings"], r["per_image_s"]
        cpu = r.get("machine", {}).get("cpu") or {}
        if cpu:
            machines.add(
                f"{cpu.get('name')} (AMX: {'yes' if cpu.get('amx') else 'no'}, AVX-512 BF16: "
                f"{'yes' if cpu.get('avx512_bf16') else 'no'}), torch {r['machine'].get('torch')}, "
                f"{r['machine'].get('threads')} threads, {r['machine'].get('device')}")
        rows.append([
            s["winmode"], s.get("k_shot", s.get("k")), s["align"],
            precision_label(s.get("precision", "auto"), r.get("encoder_dtype")),
            search_label(s.get("search_precision", "exact"), r.get("search_dtype"), r.get("window_search_dtype")),
            f"{r['total_s']:.2f}", f"{r['floor_s']:.2f}", f"{r['total_over_floor']:.3f}",
            # the non-backbone stages measured inside predict, relative to the floor: less noisy
            # than total / floor, whose two backbone timings each wobble by a few per cent
            f"{1 + sum(t[k] for k in ('align', 'heads', 'merge', 'rest')) / r['floor_s']:.3f}",
            f"{t['align']:.3f}", f"{t['heads']:.3f}", f"{t['backbone_windows']:.2f}",
            f"{r['bank_bytes']['window'] / 2**20:.0f}", f"{r['peak_rss_bytes'] / 2**20:.0f}",
        ])
    table = tabulate(rows, headers=["winmode", "k", "align", "encoder", "search", "total s/img", "floor s/img",
                                    "total/floor", "1+overhead/floor", "align s", "heads s", "win enc s", "win bank MB",
                                    "peak RSS MB"],
                     tablefmt="github", disable_numparse=True)
    if machines:
        table = "machine: " + "; ".join(sorted(machines)) + "\n\n" + table
    agreement = []
    for path in sorted(Path(folder).glob("*.json")):
        r = json.loads(path.read_text())
        for key, value in r.get("agreement", {}).items():
            agreement.append([path.stem, key, f"{value:.4f}"])
    if agreement:
        table += "\n\n" + tabulate(agreement, headers=["run", "agreement with exhaustive", "value"],
                                   tablefmt="github", disable_numparse=True)
    metrics = Path(folder) / "metrics.json"
    if metrics.exists():
        table += f"\n\nmetrics of one class, 100 maps 240x240 (AUPRO included): {json.loads(metrics.read_text())['metrics_s']:.2f} s"
    print(table)
    return table


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("folder", nargs="?", default="bench_out",
                   help="the folder bench/run_targets.sh wrote its JSON files to (default: %(default)s)")
    args = p.parse_args(argv)
    if not Path(args.folder).is_dir():
        p.error(f"{args.folder} is not a folder of bench/run_targets.sh results")
    if not any(Path(args.folder).glob("*.json")):
        p.error(f"{args.folder} holds no .json results (run bench/run_targets.sh first)")
    return args


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]).folder)
