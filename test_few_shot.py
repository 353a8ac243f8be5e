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
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

from data.dataset import load_test_images, select_classes
from data.images import load_image, resize_image
from data.kshot import choose_references, load_reference_images, save_kshot
from data.meta import check_files, load_meta, split_files
from models import build_fasl_from_args
from models.fasl import InferenceConfig, mode_uses_heads, resolved_search_dtype
from models.flags import (BATCH_SIZE, SEED, add_advanced_scoring_args, add_backbone_args, add_inference_args,
                          add_post_args, add_retired_flag, check_model_flags, check_post_flags, hide_advanced,
                          map_post_from_args, parser_for)
from models.lot import LotScorer, LotScoring, content_key, pool_members
from models.postprocess import MapPost
from utils.cli import InputValueError, run_cli
from utils.distributed import broadcast_from_main, gather_to_main, plan_units, shutdown
from utils.metrics import (CLASS_KEYS, SPREAD, class_metrics, format_table, mean_spread, transductive_scores,
                           write_results)
from utils.misc import atomic_write_text, check_output_folder, fatal_errors_logged, start_run, write_json
from utils.visualize import class_range, save_png, triptych

HELP = """Few-shot evaluation: per class, k references -> memory bank -> score every test image; metrics per
class and their mean in results.json / .csv / .md (docs/reproduction.md; every flag: docs/flags.md).

  python test_few_shot.py --data_path datasets/visa --save_path results/visa \\
      --checkpoint_path checkpoints/mvtec/fasl/seed111/epoch_5.pth --k_shot 1 2 4 --seeds 0 1 2"""


def build_parser(show_advanced: bool = False) -> argparse.ArgumentParser:
    """test_few_shot.py's flags: the everyday ones and the scoring flags of the paper's workflow in
    --help, the rest (backbone details, evaluation, outputs, post-processing, scoring experiments)
    behind --help_advanced unless ``show_advanced``."""
    p = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--data_path", required=True, metavar="DIR", help="the test dataset (holds meta.json)")
    p.add_argument("--save_path", required=True, metavar="DIR", help="output: results.json / .csv / .md, test.log")
    p.add_argument("--checkpoint_path", default=None, metavar="FILE",
                   help="trained heads, epoch_N.pth (--mode fasl / merged)")
    p.add_argument("--k_shot", type=int, nargs="+", default=[1], metavar="K",
                   help="references per class; several: a sweep (default: 1)")
    p.add_argument("--seed", type=int, default=SEED, metavar="N",
                   help="seed of the reference draw (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                   help="a sweep over reference seeds (default: --seed alone)")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="evaluate these classes only (default: all)")
    p.add_argument("--save_vis", action="store_true", help="write image | ground truth | heat map PNGs under vis/")
    p.add_argument("--save_maps", action="store_true", help="write each score map and mask as .npy under maps/")
    add_inference_args(p, advanced=False)
    adv = p.add_argument_group("advanced: backbone, evaluation, outputs")
    add_backbone_args(p, advanced=adv, everyday=p)
    adv.add_argument("--dataset", default="visa",
                     help="name of the test dataset, for the results (default: %(default)s)")
    adv.add_argument("--refs_file", default=None,
                     help="references.json of an earlier run: reuse exactly those references")
    adv.add_argument("--eval_size", type=int, default=InferenceConfig.out_size,
                     help="side of the maps and masks the metrics use (default: %(default)s)")
    adv.add_argument("--batch_size", type=int, default=BATCH_SIZE,
                     help="test images per forward pass (default: %(default)s)")
    adv.add_argument("--lot", choices=("off", "on"), default="off",
                     help="'on': score each class's test split as one lot, every image against the references and "
                          "a pool of other test images (models/lot.py, predict.py's lot-aware scoring; --mode fd, "
                          "--winmode nan); 'off': each image on its own, the paper's protocol (default: %(default)s)")
    adv.add_argument("--transductive", action=argparse.BooleanOptionalAction, default=True,
                     help="the reference code's evaluation: average each image score with the maximum of its "
                          "map, min-max normalised over the maxima of the class's whole test set (default: on; "
                          "--no-transductive scores each image on its own)")
    adv.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="each class's results are written as it finishes (classes/<class>.json in the run's "
                          "folder); a rerun skips the classes done with the same settings whose --save_maps / "
                          "--save_vis files asked for are there, and ends with the results.json an uninterrupted "
                          "run writes (default: on; --no-resume computes every class again)")
    adv.add_argument("--check_args", action="store_true",
                     help="check the flags and exit: nothing is read, built or written (the shell scripts use it)")
    post = p.add_argument_group("advanced: post-processing (beyond the reference code: off by default)")
    add_post_args(post, MapPost())
    scoring = p.add_argument_group("advanced scoring (experiments; the defaults are the measured choices)")
    add_advanced_scoring_args(p, scoring)
    add_retired_flag(p, "--refs", "is predict.py's reference images; here the references of an earlier run are "
                                  "--refs_file references.json")
    if not show_advanced:
        hide_advanced(p, adv, post, scoring, what="backbone, evaluation, outputs, post-processing, scoring experiments")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser_for(build_parser, argv)
    args = p.parse_args(argv)
    if mode_uses_heads(args.mode) and not args.checkpoint_path:
        p.error(f"--mode {args.mode} needs --checkpoint_path (or use --mode fd, which needs no training)")
    if args.lot == "on" and (args.mode != "fd" or args.winmode != "nan"):
        p.error(f"--lot on compares the training-free features of whole images: it needs --mode fd and --winmode nan "
                f"(got --mode {args.mode}, --winmode {args.winmode})")
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
    if args.eval_size < 1:
        p.error("--eval_size must be >= 1")
    check_model_flags(p, args, windows=True)
    check_post_flags(p, args)
    return args


def _file_stem(img_path: str) -> str:
    return Path(img_path).with_suffix("").as_posix().replace("/", "__")


# what --save_maps and --save_vis write, by their name in a class's record
OUTPUT_FLAGS = {"maps": "save_maps", "vis": "save_vis"}


def output_files(out: Path, cls: str, paths: list[str], kind: str) -> list[Path]:
    """The files ``save_outputs`` writes for ``kind`` ("maps" or "vis") of class ``cls`` whose test
    images are ``paths``, in the run folder ``out``."""
    if kind == "vis":
        return [out / "vis" / cls / f"{_file_stem(p)}.png" for p in paths]
    folder = out / "maps" / cls
    return [*(folder / f"{_file_stem(p)}_{what}.npy" for p in paths for what in ("map", "mask")),
            folder / "image_scores.npy", folder / "paths.txt"]


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


# flags that choose what is run or written, not the numbers of a class (those are in its record; the
# outputs written, --save_maps / --save_vis, are in it too, and checked apart: see ClassRecords.done)
_NOT_CLASS_SETTINGS = ("save_path", "check_args", "resume", "classes", "k_shot", "seeds", "seed", "sweep",
                       "refs_file", "save_maps", "save_vis", "batch_size", "device")


def file_digest(path) -> str | None:
    """sha256 of a file's bytes (None for no file): a checkpoint retrained in place is another one."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ClassRecords:
    """Each class's metrics, written as the class finishes (``<run folder>/classes/<class>.json``)
    with everything its numbers depend on and the outputs written (``{"maps": bool, "vis": bool}``),
    so a rerun can skip the classes already done."""

    def __init__(self, args, meta: dict, runs: Runs, model, cfg: InferenceConfig, device_type: str):
        common = {k: v for k, v in vars(args).items() if k not in _NOT_CLASS_SETTINGS}
        common.update(checkpoint_sha256=file_digest(args.checkpoint_path) if mode_uses_heads(args.mode) else None,
                      device_type=device_type, encoder_dtype=str(model.bank_dtype).replace("torch.", ""),
                      search_dtype=resolved_search_dtype(model, cfg))
        self.common, self.meta, self.runs = common, meta, runs
        self.outputs = {kind: bool(getattr(args, flag)) for kind, flag in OUTPUT_FLAGS.items()}

    def path(self, key, cls: str) -> Path:
        return self.runs.folder(key) / "classes" / f"{cls.replace('/', '__')}.json"

    def settings(self, key, cls: str) -> dict:
        k, seed = key
        doc = {**self.common, "k_shot": k, "seed": seed, "references": self.runs.refs[key][cls],
               "test_images": [[s["img_path"], s["mask_path"]] for s in self.meta["test"][cls]]}
        return json.loads(json.dumps(doc, sort_keys=True, default=str))  # as it reads back from the file

    def write(self, key, cls: str, metrics: dict) -> None:
        write_json(self.path(key, cls), {"settings": self.settings(key, cls), "metrics": metrics,
                                         "order": list(metrics),  # the JSON's keys are sorted
                                         "outputs": self.outputs})

    def done(self, key, cls: str) -> dict | None:
        """The metrics of an earlier run of ``cls`` with the same settings, or None; None too when an
        output asked for now (--save_maps, --save_vis) was not written by that run (a record without
        ``outputs`` wrote none) or one of its files is gone, so that the class is scored again."""
        path = self.path(key, cls)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("settings") != self.settings(key, cls):
            return None
        written = doc.get("outputs") if isinstance(doc.get("outputs"), dict) else {}
        paths = [s["img_path"] for s in self.meta["test"][cls]]
        for kind, wanted in self.outputs.items():
            if wanted and not (written.get(kind) is True and
                               all(f.is_file() for f in output_files(self.runs.folder(key), cls, paths, kind))):
                return None
        metrics = doc.get("metrics") or {}
        return {k: metrics[k] for k in doc.get("order", metrics) if k in metrics} or None


def class_pool(args, meta, cls: str, model, cfg) -> tuple[torch.Tensor | None, dict[int, int]]:
    """--lot on: the class's test split is the lot; its pool (models/lot.py ``choose_pool``, by the
    files' content, so every process of a torchrun picks the same) as images, and each pool
    image's position by its index in the split. (None, {}) without --lot."""
    if args.lot != "on":
        return None, {}
    samples = meta["test"][cls]
    keys = [content_key((Path(args.data_path) / s["img_path"]).read_bytes()) for s in samples]
    chosen, position = pool_members(range(len(samples)), keys, LotScoring().pool_size)
    bb = model.backbone
    pool = load_test_images(args.data_path, meta, cls, args.image_size, args.eval_size, bb.mean, bb.std,
                            indices=chosen).images
    return pool, position


def score_unit(model, cfg, args, meta, unit, runs: Runs, log, tag: str) -> dict:
    """One process's piece of work: the test images ``unit.start:unit.stop`` of ``unit.cls``,
    read once and scored against every run's references (models/lot.py ``LotScorer``, the one
    scoring path of every program; lot-aware with --lot on). Returns their masks (n, M, M) uint8
    and, per run, (maps (n, M, M) float32, image scores (n,)) before the transductive blend."""
    bb = model.backbone
    t0 = time.time()
    data = load_test_images(args.data_path, meta, unit.cls, args.image_size, args.eval_size, bb.mean, bb.std,
                            indices=range(unit.start, unit.stop))
    pool, position = class_pool(args, meta, unit.cls, model, cfg)
    members = [position.get(i) for i in range(unit.start, unit.stop)]
    progress = lambda it: tqdm(it, desc=unit.cls, leave=False, dynamic_ncols=True)  # noqa: E731
    scored = {}
    for key in runs.keys:
        refs = load_reference_images(args.data_path, runs.refs[key][unit.cls], args.image_size, bb.mean, bb.std)
        scorer = LotScorer(model, cfg, map_post_from_args(args), LotScoring() if pool is not None else None)
        pred = scorer.fit(refs, pool).score_all(data.images, members, args.batch_size, progress)
        del scorer  # a class's banks live only for its turn
        scored[key] = (pred.score_map.numpy(), pred.image_score.numpy())
    log.info("%s%s: images %d-%d, %d run(s) in %.1fs", tag, unit.cls, unit.start, unit.stop - 1, len(runs.keys),
             time.time() - t0)
    return {"masks": data.masks, "runs": scored}


def finish_class(args, meta, cls: str, pieces: dict, runs: Runs, log, records: ClassRecords | None = None) -> dict:
    """Rank 0: a class's pieces ({start: score_unit's result}) joined in meta.json order -> its
    metrics per run, its outputs and (``records``) its record written."""
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
        if records is not None:
            records.write(key, cls, metrics)
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
    if args.save_maps:
        files = output_files(out, cls, paths, "maps")  # map and mask per image, then scores and paths
        files[0].parent.mkdir(parents=True, exist_ok=True)
        for i, (score_map, mask) in enumerate(zip(maps, masks)):
            np.save(files[2 * i], score_map.astype(np.float32))
            np.save(files[2 * i + 1], mask.astype(np.uint8))
        np.save(files[-2], scores.astype(np.float32))
        files[-1].write_text("\n".join(paths) + "\n")
    if args.save_vis:
        for path, file, score_map, mask in zip(paths, output_files(out, cls, paths, "vis"), maps, masks):
            image = resize_image(load_image(Path(args.data_path) / path), args.eval_size)
            save_png(file, triptych(image, mask, score_map, value_range))


def write_sweep(root: Path, results: dict, runs: Runs, classes: list[str]) -> dict:
    """sweep.json / .md / .csv: per k and class (and their mean over classes), the mean and the
    sample standard deviation over seeds (utils/metrics.py mean_spread: ddof 1, 0 for a single
    seed) of every metric, and the references each seed drew."""
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
                mean, std = mean_spread(vals) if vals else (None, None)
                stats[key] = {"mean": mean, "std": std, "n": len(vals)}
                if cls == "mean":  # how many classes the mean covers (the others have n/a), fewest over seeds
                    stats[key]["classes"] = min((sum(results[(k, s)][c][key] is not None for c in classes)
                                                 for s in seeds), default=0)
            per[cls] = stats

            def cell(st):
                if st["mean"] is None:
                    return "n/a"
                some = f" ({st['classes']}/{len(classes)})" if st.get("classes", len(classes)) < len(classes) else ""
                return f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}{some}"

            rows_md.append([f"{k}", cls] + [cell(stats[m]) for m in CLASS_KEYS])
            rows_csv.append([k, cls] + [v for m in CLASS_KEYS for v in
                                        ("" if stats[m]["mean"] is None else f"{stats[m]['mean']:.6f}",
                                         "" if stats[m]["std"] is None else f"{stats[m]['std']:.6f}")])
        summary["k_shot"][str(k)] = {"seeds": seeds, "per_class": per}
        summary["references"][str(k)] = {str(s): runs.refs[(k, s)] for s in seeds}
    table = tabulate(rows_md, headers=["k", "class", *CLASS_KEYS], tablefmt="github", disable_numparse=True)
    write_json(root / "sweep.json", summary)
    atomic_write_text(root / "sweep.md", f"mean ± std over seeds {list(dict.fromkeys(s for _, s in runs.keys))} "
                                         f"(percent; std: the {SPREAD})\n\n{table}\n")
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
    check_output_folder(args.save_path, "--save_path")
    run = start_run(args, "test")
    try:
        with fatal_errors_logged(run.log):
            return _evaluate(args, cfg, run)
    finally:
        shutdown(run.dist)


def _evaluate(args, cfg: InferenceConfig, run) -> dict:
    d, log = run.dist, run.log
    meta = load_meta(args.data_path)
    classes = select_classes(meta, "test", args.classes)
    empty = [c for c in classes if not meta["test"][c]]
    if empty:
        raise InputValueError(f"class(es) {empty} have no test images in {args.data_path}/meta.json")
    runs = Runs(args, meta, classes)
    # every image, mask and reference the run reads, before the model is built
    check_files(args.data_path, [*split_files(meta, "test", classes),
                                 *(p for refs in runs.refs.values() for c in classes for p in refs[c])],
                f"{args.data_path}/meta.json")
    model = build_fasl_from_args(args, run.device,
                                 checkpoint=args.checkpoint_path if mode_uses_heads(args.mode) else None)
    model.eval()
    records = ClassRecords(args, meta, runs, model, cfg, run.device.type)
    results: dict = {key: {} for key in runs.keys}
    if args.resume and d.is_main:
        for c in classes:
            earlier = {key: records.done(key, c) for key in runs.keys}
            if all(m is not None for m in earlier.values()):
                for key, metrics in earlier.items():
                    results[key][c] = metrics
    done = broadcast_from_main(sorted({c for per in results.values() for c in per}), d)
    todo = [c for c in classes if c not in done]
    if done:
        log.info("%d class(es) already done with these settings and outputs, their results reused (%s; "
                 "--no-resume computes them again): %s", len(done), "classes/<class>.json",
                 ", ".join(c for c in classes if c in done))
    if d.is_main:
        for key in runs.keys:
            save_kshot(runs.folder(key) / "references.json", runs.refs[key],
                       {"dataset": args.dataset, "seed": key[1],
                        "k_shot": key[0] if args.refs_file is None else None, "refs_file": args.refs_file})
    log.info("%stesting %s (%s): %d classes, k=%s, seeds %s, mode %s, winmode %s, align %s", d.tag, args.data_path,
             args.dataset, len(classes), args.k_shot, args.seeds, args.mode, args.winmode, args.align)

    plan = plan_units({c: len(meta["test"][c]) for c in todo}, d.world_size, args.batch_size)
    mine = plan[d.rank]
    owners = {}  # class -> starts of its pieces, across all processes
    for units in plan:
        for u in units:
            owners.setdefault(u.cls, set()).add(u.start)
    pending: dict = {}
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
                for key, metrics in finish_class(args, meta, cls, pending.pop(cls), runs, log, records).items():
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
