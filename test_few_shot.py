"""Few-shot evaluation: per class, k references -> memory bank -> score every test image.

Metrics per class and their mean (image AUROC / F1-max / AP; pixel AUROC / F1-max / AP /
AUPRO at --eval_size), printed as a table and written to results.json and results.csv.

    python test_few_shot.py --data_path datasets/visa --dataset visa \
        --checkpoint_path checkpoints/mvtec/fasl/seed111/epoch_5.pth --save_path results/visa --k_shot 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.dataset import TestImages, load_test_images, select_classes
from data.images import load_image, resize_image
from data.kshot import choose_references, load_reference_images, save_kshot
from data.meta import load_meta
from models import build_fasl_from_args
from models.fasl import InferenceConfig, Prediction, mode_uses_heads, resolved_search_dtype
from models.flags import add_backbone_args, add_hidden_alias, add_inference_args
from utils.metrics import class_metrics, format_table, transductive_scores, write_results
from utils.cli import run_cli
from utils.misc import start_run
from utils.visualize import class_range, save_png, triptych


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True, help="root of the test dataset (holds meta.json)")
    p.add_argument("--dataset", default="visa", help="name of the test dataset, for the results (default: %(default)s)")
    p.add_argument("--save_path", required=True, help="output folder: results.json, results.csv, references.json, test.log")
    p.add_argument("--checkpoint_path", default=None, help="trained heads (epoch_N.pth); required with --mode fasl")
    add_backbone_args(p)
    add_inference_args(p)
    p.add_argument("--k_shot", type=int, default=1, help="reference images per class (default: %(default)s)")
    p.add_argument("--refs_file", default=None,
                   help="references.json of an earlier run: reuse exactly those references")
    add_hidden_alias(p, "--refs", "refs_file")
    p.add_argument("--seed", type=int, default=111, help="seed of the reference sampling (default: %(default)s)")
    p.add_argument("--eval_size", type=int, default=240, help="side of the maps and masks the metrics use (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=8, help="test images per forward pass (default: %(default)s)")
    p.add_argument("--classes", nargs="+", default=None, help="evaluate these classes only (default: all)")
    p.add_argument("--transductive", action=argparse.BooleanOptionalAction, default=True,
                   help="the reference code's evaluation: average each image score with the maximum of its "
                        "map, min-max normalised over the maxima of the class's whole test set (default: on; "
                        "--no-transductive scores each image on its own)")
    p.add_argument("--save_maps", action="store_true", help="write each image's score map and mask as .npy under maps/")
    p.add_argument("--save_vis", action="store_true", help="write image | ground truth | heatmap PNGs under vis/")
    p.add_argument("--check_args", action="store_true",
                   help="check the flags and exit: nothing is read, built or written (the shell scripts use it)")
    args = p.parse_args(argv)
    if mode_uses_heads(args.mode) and not args.checkpoint_path:
        p.error(f"--mode {args.mode} needs --checkpoint_path (or use --mode fd, which needs no training)")
    return args


def _file_stem(img_path: str) -> str:
    return Path(img_path).with_suffix("").as_posix().replace("/", "__")


def evaluate_class(model, cfg: InferenceConfig, args, data: TestImages, references: list[str], windows, log,
                   cls: str) -> tuple[dict, Prediction]:
    """Score every test image of ``cls`` against a bank of ``references``; returns the metrics
    and the prediction (maps at --eval_size, image scores after the transductive blend if on)."""
    bb = model.backbone
    t0 = time.time()
    bank = model.build_memory(load_reference_images(args.data_path, references, args.image_size, bb.mean, bb.std),
                              windows, window_batch=cfg.window_batch)
    progress = lambda it: tqdm(it, desc=cls, leave=False, dynamic_ncols=True)  # noqa: E731
    pred = model.predict_all(data.images, bank, cfg, args.batch_size, progress)
    del bank  # a class's banks live only for its turn
    maps, scores = pred.score_map.numpy(), pred.image_score.numpy()
    if args.transductive:
        scores = transductive_scores(scores, maps)
    metrics = class_metrics(data.labels, scores, data.masks, maps)
    metrics["n_images"] = len(data.paths)
    metrics["n_anomalous"] = int(data.labels.sum())
    save_outputs(args, cls, data.paths, maps, data.masks, scores)
    log.info("%s: %d images (%d anomalous) in %.1fs%s", cls, len(data.paths), int(data.labels.sum()),
             time.time() - t0, f" [{metrics['note']}]" if "note" in metrics else "")
    return metrics, Prediction(pred.score_map, torch.as_tensor(scores))


def save_outputs(args, cls, paths, maps, masks, scores) -> None:
    """--save_maps: each map and mask as .npy; --save_vis: image | ground truth | heat map | colour
    bar, every map of the class drawn on one colour scale (the class's 1st to 99.9th percentile of
    scores), so colours compare across its images and a map of small values is not all blue."""
    out = Path(args.save_path)
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = InferenceConfig.from_args(args, out_size=args.eval_size)  # refuses bad scoring values
    if args.check_args:
        return {}
    save_path, log, device = start_run(args, "test")

    meta = load_meta(args.data_path)
    classes = select_classes(meta, "test", args.classes)
    empty = [c for c in classes if not meta["test"][c]]
    if empty:
        raise ValueError(f"class(es) {empty} have no test images in {args.data_path}/meta.json")
    model = build_fasl_from_args(args, device, checkpoint=args.checkpoint_path if mode_uses_heads(args.mode) else None)
    model.eval()
    windows = model.windows_for(cfg)

    refs = choose_references(meta, classes, args.k_shot, args.seed, args.refs_file)
    save_kshot(save_path / "references.json", {c: refs[c] for c in classes},
               {"dataset": args.dataset, "seed": args.seed, "k_shot": args.k_shot if args.refs_file is None else None,
                "refs_file": args.refs_file})
    log.info("testing %s (%s): %d classes, k=%d, mode %s, winmode %s, align %s", args.data_path, args.dataset,
             len(classes), args.k_shot, args.mode, args.winmode, args.align)

    results = {}
    for cls in tqdm(classes, desc="classes", dynamic_ncols=True):
        bb = model.backbone
        data = load_test_images(args.data_path, meta, cls, args.image_size, args.eval_size, bb.mean, bb.std)
        results[cls], _ = evaluate_class(model, cfg, args, data, refs[cls], windows, log, cls)
    table = format_table(results)
    print(table)
    (save_path / "results.md").write_text(table + "\n")
    files = write_results(save_path, results, {"args": vars(args), "references": str(save_path / "references.json"),
                                               "search_dtype": resolved_search_dtype(model, cfg)})
    log.info("results: %s, %s", files.json, files.csv)
    return results


if __name__ == "__main__":
    run_cli(main, "test_few_shot.py")
