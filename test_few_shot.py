"""Few-shot evaluation: per class, k references -> memory bank -> score every test image.

Metrics per class and their mean (image AUROC / F1-max / AP; pixel AUROC / F1-max / AP /
AUPRO at --eval_size), printed as a table and written to results.json and results.csv.

    python test_few_shot.py --data_path datasets/visa --dataset visa \\
        --checkpoint_path checkpoints/mvtec/fasl/seed111/epoch_5.pth --save_path results/visa --k_shot 1

A sweep over reference draws and shots runs in one invocation (the model is loaded once and each
class's test images are read once for all runs); every run is written as a single run would be,
under --save_path/<k>shot/seed<seed>/, and sweep.md / .json / .csv hold the mean and standard
deviation over seeds per class and k, with the references each seed drew:

    python test_few_shot.py ... --k_shot 1 2 4 --seeds 0 1 2

Under torchrun the test images are shared among the processes (whole classes first, the images
of a large class when it is more than a process's share) and rank 0 gathers the maps and scores
and computes the metrics, so results.json is the one a single process writes:

    torchrun --nproc_per_node 4 test_few_shot.py ... --device cuda
"""
from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

from data.dataset import load_test_images, select_classes
from data.images import load_image, resize_image
from data.kshot import choose_references, load_reference_images, save_kshot
from data.meta import load_meta
from models import build_fasl_from_args
from models.fasl import InferenceConfig, mode_uses_heads, resolved_search_dtype
from models.flags import add_backbone_args, add_hidden_alias, add_inference_args
from utils.cli import run_cli
from utils.distributed import gather_to_main, plan_units, shutdown
from utils.metrics import CLASS_KEYS, class_metrics, format_table, transductive_scores, write_results
from utils.misc import atomic_write_text, start_run, write_json
from utils.visualize import class_range, save_png, triptych


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True, help="root of the test dataset (holds meta.json)")
    p.add_argument("--dataset", default="visa", help="name of the test dataset, for the results (default: %(default)s)")
    p.add_argument("--save_path", required=True, help="output folder: results.json, results.csv, references.json, test.log")
    p.add_argument("--checkpoint_path", default=None, help="trained heads (epoch_N.pth); required with --mode fasl")
    add_backbone_args(p)
    add_inference_args(p)
    p.add_argument("--k_shot", type=int, nargs="+", default=[1],
                   help="reference images per class; several values make a sweep (default: 1)")
    p.add_argument("--refs_file", default=None,
                   help="references.json of an earlier run: reuse exactly those references")
    add_hidden_alias(p, "--refs", "refs_file")
    p.add_argument("--seed", type=int, default=111, help="seed of the reference sampling (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="several reference seeds: a sweep (default: --seed alone)")
    p.add_argument("--eval_size", type=int, default=240, help="side of the maps and masks the metrics use (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=8, help="test images per forward pass (default: %(default)s)")
    p.add_argument("--classes", nargs="+", default=None, help="evaluate these classes only (default: all)")
    p.add_argument("--transductive", action=argparse.BooleanOptionalAction, default=True,
                   help="the reference code's evaluation: average each image score with the maximum of its "
                        "map, min-max normalised over the maxima of the class's whole test set (default: on; "
                        "--no-transductive scores each image on its own)")
    p.add_argument("--save_maps", action="store_true", help="write each image's score map and mask as .npy under maps/")
    p.add_argument("--save_vis", action="store_true",
                   help="write image | ground truth | heat map | colour bar PNGs under vis/")
    p.add_argument("--check_args", action="store_true",
                   help="check the flags and exit: nothing is read, built or written (the shell scripts use it)")
    args = p.parse_args(argv)
    if mode_uses_heads(args.mode) and not args.checkpoint_path:
        p.error(f"--mode {args.mode} needs --checkpoint_path (or use --mode fd, which needs no training)")
    # --seeds, or several k, make a sweep: every run in its own <k>shot/seed<seed>/ folder
    args.sweep = args.seeds is not None or len(set(args.k_shot)) > 1
    args.seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else [args.seed]))
    args.k_shot = list(dict.fromkeys(args.k_shot))
    if any(k < 1 for k in args.k_shot):
        p.error(f"--k_shot must be >= 1, got {args.k_shot}")
    if args.refs_file and args.sweep:
        p.error("--refs_file fixes the references of one run: give one --k_shot and one seed with it")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    return args


def _file_stem(img_path: str) -> str:
    return Path(img_path).with_suffix("").as_posix().replace("/", "__")


class Runs:
    """The (k, seed) runs of an invocation, their references and where each is written."""

    def __init__(self, args, meta: dict, classes: list[str]):
        self.keys = [(k, s) for k in args.k_shot for s in args.seeds]
        self.sweep = args.sweep
        self.refs = {(k, s): choose_references(meta, classes, k, s, args.refs_file) for k, s in self.keys}
        self.root = Path(args.save_path)

    def folder(self, key) -> Path:
        k, s = key
        return self.root / f"{k}shot" / f"seed{s}" if self.sweep else self.root


def score_unit(model, cfg, args, meta, unit, runs: Runs, log, tag: str) -> dict:
    """One process's piece of work: the test images ``unit.start:unit.stop`` of ``unit.cls``,
    read once and scored against every run's bank. Returns their masks (n, M, M) uint8 and, per
    run, (maps (n, M, M) float32, image scores (n,)) before the transductive blend."""
    bb = model.backbone
    t0 = time.time()
    data = load_test_images(args.data_path, meta, unit.cls, args.image_size, args.eval_size, bb.mean, bb.std,
                            indices=range(unit.start, unit.stop))
    windows = model.windows_for(cfg)
    progress = lambda it: tqdm(it, desc=unit.cls, leave=False, dynamic_ncols=True)  # noqa: E731
    scored = {}
    for key in runs.keys:
        refs = load_reference_images(args.data_path, runs.refs[key][unit.cls], args.image_size, bb.mean, bb.std)
        bank = model.build_memory(refs, windows, window_batch=cfg.window_batch)
        pred = model.predict_all(data.images, bank, cfg, args.batch_size, progress)
        del bank  # a class's banks live only for its turn
        scored[key] = (pred.score_map.numpy(), pred.image_score.numpy())
    log.info("%s%s: images %d-%d, %d run(s) in %.1fs", tag, unit.cls, unit.start, unit.stop - 1, len(runs.keys),
             time.time() - t0)
    return {"masks": data.masks, "runs": scored}


def finish_class(args, meta, cls: str, pieces: dict, runs: Runs, log) -> dict:
    """Rank 0: a class's pieces ({start: score_unit's result}) joined in meta.json order -> its
    metrics per run, its outputs written."""
    samples = meta["test"][cls]
    labels = np.array([s["anomaly"] for s in samples], dtype=np.int64)
    paths = [s["img_path"] for s in samples]
    starts = sorted(pieces)
    masks = np.concatenate([pieces[s]["masks"] for s in starts])
    if len(masks) != len(samples):
        raise RuntimeError(f"{cls}: {len(masks)} of {len(samples)} test images were scored")
    results = {}
    for key in runs.keys:
        maps = np.concatenate([pieces[s]["runs"][key][0] for s in starts])
        scores = np.concatenate([pieces[s]["runs"][key][1] for s in starts])
        if args.transductive:
            scores = transductive_scores(scores, maps)
        metrics = class_metrics(labels, scores, masks, maps)
        metrics["n_images"] = len(samples)
        metrics["n_anomalous"] = int(labels.sum())
        save_outputs(args, runs.folder(key), cls, paths, maps, masks, scores)
        results[key] = metrics
        log.info("%s: %d images (%d anomalous)%s%s", cls, len(samples), int(labels.sum()),
                 f", k={key[0]}, seed {key[1]}" if runs.sweep else "",
                 f" [{metrics['note']}]" if "note" in metrics else "")
    return results


def save_outputs(args, out: Path, cls, paths, maps, masks, scores) -> None:
    """--save_maps: each map and mask as .npy; --save_vis: image | ground truth | heat map | colour
    bar, every map of the class drawn on one colour scale (the class's 1st to 99.9th percentile of
    scores), so colours compare across its images and a map of small values is not all blue."""
    value_range = class_range(maps) if args.save_vis and len(maps) else (0.0, 1.0)
    for path, score_map, mask, score in zip(paths, maps, masks, scores):
        stem = _file_stem(path)
        if args.save_maps:
            (out / "maps" / cls).mkdir(parents=True, exist_ok=True)
            np.save(out / "maps" / cls / f"{stem}_map.npy", score_map.astype(np.float32))
            np.save(out / "maps" / cls / f"{stem}_mask.npy", mask.astype(np.uint8))
        if args.save_vis:
            image = resize_image(load_image(Path(args.data_path) / path), args.eval_size)
            save_png(out / "vis" / cls / f"{stem}.png", triptych(image, mask, score_map, value_range))
    if args.save_maps:
        np.save(out / "maps" / cls / "image_scores.npy", scores.astype(np.float32))
        (out / "maps" / cls / "paths.txt").write_text("\n".join(paths) + "\n")


def write_sweep(root: Path, results: dict, runs: Runs, classes: list[str]) -> dict:
    """sweep.json / .md / .csv: per k and class (and their mean over classes), the mean and the
    standard deviation over seeds of every metric, and the references each seed drew."""
    summary: dict = {"k_shot": {}, "references": {}}
    rows_md, rows_csv = [], []
    for k in dict.fromkeys(k for k, _ in runs.keys):
        seeds = [s for kk, s in runs.keys if kk == k]
        per = {}
        for cls in [*classes, "mean"]:
            stats = {}
            for key in CLASS_KEYS:
                if cls == "mean":
                    vals = [np.mean([results[(k, s)][c][key] for c in classes if results[(k, s)][c][key] is not None])
                            for s in seeds if any(results[(k, s)][c][key] is not None for c in classes)]
                else:
                    vals = [results[(k, s)][cls][key] for s in seeds if results[(k, s)][cls][key] is not None]
                mean = float(np.mean(vals)) if vals else None
                std = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
                stats[key] = {"mean": mean, "std": std, "n": len(vals)}
            per[cls] = stats
            rows_md.append([f"{k}", cls] + ["n/a" if stats[m]["mean"] is None else
                                            f"{100 * stats[m]['mean']:.1f} ± {100 * stats[m]['std']:.1f}"
                                            for m in CLASS_KEYS])
            rows_csv.append([k, cls] + [v for m in CLASS_KEYS for v in
                                        ("" if stats[m]["mean"] is None else f"{stats[m]['mean']:.6f}",
                                         "" if stats[m]["std"] is None else f"{stats[m]['std']:.6f}")])
        summary["k_shot"][str(k)] = {"seeds": seeds, "per_class": per}
        summary["references"][str(k)] = {str(s): runs.refs[(k, s)] for s in seeds}
    table = tabulate(rows_md, headers=["k", "class", *CLASS_KEYS], tablefmt="github", disable_numparse=True)
    write_json(root / "sweep.json", summary)
    atomic_write_text(root / "sweep.md", f"mean ± std over seeds {list(dict.fromkeys(s for _, s in runs.keys))} "
                                         f"(percent)\n\n{table}\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["k", "class", *[f"{m}_{stat}" for m in CLASS_KEYS for stat in ("mean", "std")]])
    writer.writerows(rows_csv)
    atomic_write_text(root / "sweep.csv", buf.getvalue())
    print(table)
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = InferenceConfig.from_args(args, out_size=args.eval_size)  # refuses bad scoring values
    if args.check_args:
        return {}
    run = start_run(args, "test")
    try:
        return _evaluate(args, cfg, run)
    finally:
        shutdown(run.dist)


def _evaluate(args, cfg: InferenceConfig, run) -> dict:
    d, log = run.dist, run.log
    meta = load_meta(args.data_path)
    classes = select_classes(meta, "test", args.classes)
    empty = [c for c in classes if not meta["test"][c]]
    if empty:
        raise ValueError(f"class(es) {empty} have no test images in {args.data_path}/meta.json")
    model = build_fasl_from_args(args, run.device,
                                 checkpoint=args.checkpoint_path if mode_uses_heads(args.mode) else None)
    model.eval()
    runs = Runs(args, meta, classes)
    if d.is_main:
        for key in runs.keys:
            save_kshot(runs.folder(key) / "references.json", runs.refs[key],
                       {"dataset": args.dataset, "seed": key[1],
                        "k_shot": key[0] if args.refs_file is None else None, "refs_file": args.refs_file})
    log.info("%stesting %s (%s): %d classes, k=%s, seeds %s, mode %s, winmode %s, align %s", d.tag, args.data_path,
             args.dataset, len(classes), args.k_shot, args.seeds, args.mode, args.winmode, args.align)

    plan = plan_units({c: len(meta["test"][c]) for c in classes}, d.world_size, args.batch_size)
    mine = plan[d.rank]
    owners = {}  # class -> starts of its pieces, across all processes
    for units in plan:
        for u in units:
            owners.setdefault(u.cls, set()).add(u.start)
    pending: dict = {}
    results: dict = {key: {} for key in runs.keys}
    rounds = max(len(units) for units in plan)
    for i in tqdm(range(rounds), desc="classes" if not d.enabled else f"rank {d.rank}", dynamic_ncols=True):
        piece = None
        if i < len(mine):
            unit = mine[i]
            piece = (unit.cls, unit.start, score_unit(model, cfg, args, meta, unit, runs, log, d.tag))
        gathered = gather_to_main(piece, d)
        if not d.is_main:
            continue
        for got in gathered:
            if got is None:
                continue
            cls, start, scored = got
            pending.setdefault(cls, {})[start] = scored
            if set(pending[cls]) == owners[cls]:  # every piece of the class is in
                for key, metrics in finish_class(args, meta, cls, pending.pop(cls), runs, log).items():
                    results[key][cls] = metrics
    if not d.is_main:
        return {}

    for key in runs.keys:
        ordered = {c: results[key][c] for c in classes}
        folder = runs.folder(key)
        table = format_table(ordered)
        print(f"k={key[0]}, seed {key[1]}:\n{table}" if runs.sweep else table)
        (folder / "results.md").write_text(table + "\n")
        run_args = {**vars(args), "k_shot": key[0], "seed": key[1]}  # what this run used
        files = write_results(folder, ordered, {"args": run_args, "references": str(folder / "references.json"),
                                                "search_dtype": resolved_search_dtype(model, cfg),
                                                "world_size": d.world_size})
        log.info("results: %s, %s", files.json, files.csv)
        results[key] = ordered
    if runs.sweep:
        write_sweep(runs.root, results, runs, classes)
        return {f"{k}shot/seed{s}": results[(k, s)] for k, s in runs.keys}
    return results[runs.keys[0]]


if __name__ == "__main__":
    run_cli(main, "test_few_shot.py")
