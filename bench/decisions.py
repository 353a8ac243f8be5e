"""Decisions on real parts: how often predict.py's verdicts and masks are right.

For every class of an MVTec-layout folder (``<class>/train/good``, ``<class>/test/<kind>``,
``<class>/ground_truth/<kind>/NNN_mask.png``), every k in --k_shot and reference seed in --seeds,
it runs **predict.py's own path**: k good references drawn from ``train/good`` (the draw
``test_few_shot.py`` makes), thresholds fitted on them alone (``predict.prepare_references``),
every test image scored and decided (``predict.Decision.decide``: verdict, regions, mask at the
image's own size). It reports, per class and mean over classes:

* defects caught (TPR), false alarms (FPR), balanced accuracy = (TPR + 1 - FPR) / 2;
* image AUROC of the scores, each image scored on its own (no test-set normalisation);
* mask quality on the defective images: IoU and pixel F1 of the written mask with the ground
  truth, over the defects caught (``iou_caught``, ``f1_caught``) and over all defective images
  (a missed defect writes no mask: IoU 0; ``iou_all``), and the share of ground-truth regions
  that a written region touches (``regions_hit``, pooled over the defective images).

Several settings can be compared in one run (``--variant 'NAME: predict flags'``); the test images
are encoded once per backbone setting and class, and every variant, k and seed is scored from those
features. Writes ``decisions.json`` (every run, every image's score, verdict and IoU, the normal
scores the thresholds were fitted on), ``decisions.md`` and ``decisions_<variant>.png`` (each
class's scores of good and defective images divided by the image threshold: the line at 1 is
the decision) to --out.

    python bench/decisions.py --data_root /data/mvtec_subset --weights tf_efficientnet_lite0.pth
    python bench/decisions.py --data_root /data/mvtec_subset --weights w.pth \\
        --variant "default:" --variant "fpr5: --fpr 0.05"
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tabulate import tabulate
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import predict  # noqa: E402
from data.images import image_to_tensor, load_image, load_mask  # noqa: E402
from data.kshot import sample_kshot  # noqa: E402
from data.meta import load_meta  # noqa: E402
from data.mvtec import build_mvtec_meta  # noqa: E402
from models import build_fasl_from_args  # noqa: E402
from models.fasl import InferenceConfig  # noqa: E402
from models.flags import map_post_from_args  # noqa: E402
from utils.distributed import Dist  # noqa: E402
from utils.metrics import image_metrics, label_regions  # noqa: E402
from utils.misc import resolve_device, seed_everything, write_json  # noqa: E402

DECISIONS_FORMAT = "fasl-decisions-v1"
SUMMARY = ("tpr", "fpr", "balanced_accuracy", "image_auroc", "iou_caught", "f1_caught", "iou_all", "regions_hit")
MASK_FIGURES = ("iou_caught", "f1_caught", "iou_all", "regions_hit")
BACKBONE_FLAGS = ("model", "pretrained", "image_size", "features_list", "precision", "quick_gelu", "neighbourhood",
                  "device", "seed")  # the seed draws random weights


# ----------------------------------------------------------------------------- arithmetic

def mask_quality(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Written mask vs ground truth of one defective image (both (H, W) bool).

    iou = |P & G| / |P | G|; f1 = 2 |P & G| / (|P| + |G|) (pixel F1, the Dice coefficient);
    regions: the ground truth's 8-connected regions, hit = how many of them hold a written pixel.
    An empty ground truth gives NaN for iou and f1 and no regions.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: written {pred.shape}, ground truth {gt.shape}")
    inter = int(np.logical_and(pred, gt).sum())
    union = int(np.logical_or(pred, gt).sum())
    total = int(pred.sum()) + int(gt.sum())
    labels, n = label_regions(gt[None])
    hit = len(set(np.unique(labels[0][pred]).tolist()) - {0}) if n else 0
    return {"iou": inter / union if gt.any() else math.nan, "f1": 2 * inter / total if gt.any() else math.nan,
            "regions": int(n), "regions_hit": int(hit)}


def decision_metrics(labels, scores, verdicts, masks: list[dict | None]) -> dict:
    """One run's figures. labels: (N,) 1 = defective; scores: (N,); verdicts: (N,) 'defect'/'ok';
    masks: per image ``mask_quality`` of its written mask (None for good images).

    Rates with nothing to count (no good image: fpr; no caught defect: iou_caught) are NaN.
    """
    labels = np.asarray(labels, dtype=int)
    called = np.asarray([v == "defect" for v in verdicts])
    pos, neg = labels == 1, labels == 0
    tp, fp = int((called & pos).sum()), int((called & neg).sum())
    tpr = tp / pos.sum() if pos.any() else math.nan
    fpr = fp / neg.sum() if neg.any() else math.nan
    both = pos.any() and neg.any()
    caught = [m for m, c, p in zip(masks, called, pos) if p and c and m is not None and not math.isnan(m["iou"])]
    defective = [(m, c) for m, c, p in zip(masks, called, pos) if p and m is not None and not math.isnan(m["iou"])]
    regions = sum(m["regions"] for m, _ in defective)
    return {
        "n_good": int(neg.sum()), "n_defective": int(pos.sum()), "caught": tp, "false_alarms": fp,
        "tpr": float(tpr), "fpr": float(fpr),
        "balanced_accuracy": float((tpr + 1 - fpr) / 2) if both else math.nan,
        "image_auroc": float(image_metrics(labels, scores)["auroc"]) if both else math.nan,
        "iou_caught": float(np.mean([m["iou"] for m in caught])) if caught else math.nan,
        "f1_caught": float(np.mean([m["f1"] for m in caught])) if caught else math.nan,
        "iou_all": float(np.mean([m["iou"] if c else 0.0 for m, c in defective])) if defective else math.nan,
        "regions_hit": sum(m["regions_hit"] if c else 0 for m, c in defective) / regions if regions else math.nan,
    }


def json_safe(obj):
    """NaN (a rate with nothing to count) as null, tuples as lists: strict JSON."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def mean_std(values) -> tuple[float, float]:
    """Mean and (population) standard deviation of the finite values; NaN when there are none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())


# ----------------------------------------------------------------------------- data

@dataclass
class TestSet:
    """A class's test images as predict.py reads them (each at its own size)."""

    paths: list[Path]
    images: torch.Tensor  # (N, 3, S, S), the model input
    sizes: list[tuple[int, int]]  # (H, W) of each original image
    masks: list[np.ndarray]  # (H, W) bool ground truth (all False for good images)
    labels: np.ndarray  # (N,)


def read_meta(root: Path) -> dict:
    """meta.json when the folder has one, else the MVTec layout indexed in memory (the folder may be
    read-only)."""
    return load_meta(root) if (root / "meta.json").is_file() else build_mvtec_meta(root)


def load_test_set(root: Path, meta: dict, cls: str, model) -> TestSet:
    bb = model.backbone
    paths, images, sizes, masks, labels = [], [], [], [], []
    for s in meta["test"][cls]:
        path = root / s["img_path"]
        img = load_image(path)
        problem = predict.image_problem((img.height, img.width), model)
        if problem is not None:
            raise ValueError(f"{path}: {problem}")
        mask = load_mask(root / s["mask_path"] if s["mask_path"] else "", (img.height, img.width), path)
        if s["anomaly"] and not mask.any():
            raise ValueError(f"{path} is labelled defective but its mask {s['mask_path'] or '(none)'} is empty")
        paths.append(path)
        images.append(image_to_tensor(img, bb.image_size, bb.mean, bb.std))
        sizes.append((img.height, img.width))
        masks.append(mask)
        labels.append(int(s["anomaly"]))
    labels = np.asarray(labels)
    if not (labels == 0).any() or not (labels == 1).any():
        raise ValueError(f"class {cls!r} needs good and defective test images (has {int((labels == 0).sum())} good, "
                         f"{int((labels == 1).sum())} defective)")
    return TestSet(paths, torch.stack(images), sizes, masks, labels)


# ----------------------------------------------------------------------------- runs

@dataclass
class Variant:
    name: str
    args: argparse.Namespace  # predict.py's parsed flags (refs/images/out are placeholders)

    @property
    def backbone_key(self) -> tuple:
        return tuple(str(getattr(self.args, f, None)) for f in BACKBONE_FLAGS)


def parse_variant(spec: str, common: list[str]) -> Variant:
    name, _, flags = spec.partition(":")
    name = name.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"--variant {spec!r}: give 'NAME: predict flags' with a plain NAME (letters, digits, - _)")
    argv = [*common, *shlex.split(flags), "--refs", "_", "--images", "_", "--out", "_"]
    try:
        args = predict.parse_args(argv)
    except SystemExit as err:  # argparse has printed why
        raise ValueError(f"--variant {name}: predict.py refuses the flags {shlex.join(argv[:-6])}") from err
    if args.load_refs or args.save_refs:
        raise ValueError(f"--variant {name}: --load_refs / --save_refs make no sense here")
    return Variant(name, args)


def run_one(variant: Variant, model, cfg: InferenceConfig, encoded: list, test: TestSet, ref_paths: list[Path],
            log, mask_levels: tuple[float, ...] = ()) -> tuple[dict, list[dict], list[float]]:
    """Fit on ``ref_paths`` and decide every test image, as predict.py does -> (metrics, per-image records,
    the normal image scores the image threshold was fitted on). ``mask_levels``: other --mask_level
    values whose mask figures are added as ``iou_caught@L`` etc. (same scores and verdicts)."""
    args = copy.copy(variant.args)
    args.refs = [str(p) for p in ref_paths]
    post = map_post_from_args(args)
    refs = predict.prepare_references(args, model, cfg, log, Dist(), post)
    decision = predict.Decision.of(args, refs.thresholds)
    others = {level: replace(decision, mask_level=level) for level in mask_levels}
    other_q: dict[float, list] = {level: [] for level in mask_levels}
    scores, verdicts, qualities, records = [], [], [], []
    i = 0
    for enc in encoded:
        pred = post.apply(model.score(enc, refs.bank, cfg))
        maps, batch_scores = pred.score_map.float().cpu().numpy(), pred.image_score.float().cpu().numpy()
        for score_map, score in zip(maps, batch_scores):
            outcome = decision.decide(score_map, float(score), test.sizes[i])
            quality = mask_quality(outcome.found.mask, test.masks[i]) if test.labels[i] else None
            for level, dec in others.items():
                other_q[level].append(mask_quality(dec.decide(score_map, float(score), test.sizes[i]).found.mask,
                                                   test.masks[i]) if test.labels[i] else None)
            scores.append(float(score))
            verdicts.append(outcome.verdict)
            qualities.append(quality)
            records.append({"path": str(test.paths[i]), "label": int(test.labels[i]), "score": float(score),
                            "verdict": outcome.verdict, "n_regions": len(outcome.found.regions),
                            "defect_area": outcome.found.area, **(quality or {})})
            i += 1
    metrics = decision_metrics(test.labels, scores, verdicts, qualities)
    for level, q in other_q.items():
        m = decision_metrics(test.labels, scores, verdicts, q)
        metrics.update({f"{name}@{level:g}": m[name] for name in MASK_FIGURES})
    metrics.update(image_threshold=refs.thresholds.image, pixel_threshold=refs.thresholds.pixel,
                   min_region_fraction=refs.thresholds.min_region_fraction)
    fit = refs.thresholds.fit
    return metrics, records, (list(fit.image_scores) if fit is not None else [])


def class_means(runs: list[dict], variant: str, k: int, classes: list[str], metric: str) -> dict:
    """Each class's (mean, std) over seeds of ``metric`` for one (variant, k)."""
    return {c: mean_std(r["metrics"][metric] for r in runs
                        if r["variant"] == variant and r["k"] == k and r["class"] == c) for c in classes}


def summarise(runs: list[dict], variants: list[str], ks: list[int], classes: list[str]) -> dict:
    """Per (variant, k): each class's mean and std over seeds, and the mean over classes (with the std
    over seeds of the class mean)."""
    out = {}
    for v in variants:
        for k in ks:
            mine = [r for r in runs if r["variant"] == v and r["k"] == k]
            by_metric = {m: class_means(mine, v, k, classes, m) for m in SUMMARY}
            per_class = {c: {m: by_metric[m][c] for m in SUMMARY} for c in classes}
            seeds = sorted({r["seed"] for r in mine})
            by_seed = {m: [mean_std(r["metrics"][m] for r in mine if r["seed"] == s)[0] for s in seeds]
                       for m in SUMMARY}
            mean = {m: (mean_std(per_class[c][m][0] for c in classes)[0], mean_std(by_seed[m])[1]) for m in SUMMARY}
            out[f"{v}|{k}"] = {"variant": v, "k": k, "classes": per_class, "mean": mean}
    return out


def _cell(ms: tuple[float, float]) -> str:
    m, s = ms
    return "–" if not math.isfinite(m) else f"{m:.3f} ± {s:.3f}"


def tables(summary: dict, variants: list[str], ks: list[int], classes: list[str]) -> str:
    """The markdown report: one line per (variant, k) of means over classes, then per-class tables."""
    head = ["variant", "k", *SUMMARY]
    rows = [[s["variant"], s["k"], *(_cell(s["mean"][m]) for m in SUMMARY)] for s in summary.values()]
    text = ["## Mean over classes (± std over reference seeds)", "",
            tabulate(rows, headers=head, tablefmt="github"), ""]
    for v in variants:
        rows = [[c, k, *(_cell(summary[f"{v}|{k}"]["classes"][c][m]) for m in SUMMARY)] for c in classes for k in ks]
        text += [f"## {v}: per class (mean ± std over reference seeds)", "",
                 tabulate(rows, headers=["class", "k", *SUMMARY], tablefmt="github"), ""]
    for v in variants:
        tpr = [summary[f"{v}|{k}"]["mean"]["tpr"][0] for k in ks]
        ok = all(b >= a - 1e-12 for a, b in zip(tpr, tpr[1:]))
        text.append(f"- {v}: defects caught over k = {', '.join(map(str, ks))}: "
                    f"{' → '.join(f'{t:.3f}' for t in tpr)} ({'never fewer' if ok else 'FEWER with more references'})")
    return "\n".join(text) + "\n"


def mask_table(runs: list[dict], variants: list[str], ks: list[int], levels: list[float]) -> str:
    """Mean over classes of the mask figures at every --mask_levels value (same verdicts)."""
    if not levels:
        return ""
    rows = []
    for v in variants:
        for level in levels:
            row = [v, f"{level:g}"]
            for k in ks:
                classes = sorted({r["class"] for r in runs if r["variant"] == v and r["k"] == k})
                for name in ("iou_caught", "f1_caught"):
                    per = class_means(runs, v, k, classes, f"{name}@{level:g}")
                    row.append(f"{mean_std(m for m, _ in per.values())[0]:.3f}")
            rows.append(row)
    head = ["variant", "mask_level", *[f"{n} k={k}" for k in ks for n in ("iou_caught", "f1_caught")]]
    return "\n## Masks at other --mask_level values (mean over classes)\n\n" + \
        tabulate(rows, headers=head, tablefmt="github") + "\n"


def threshold_grid(runs: list[dict], variant: str, fprs, margins) -> list[dict]:
    """Re-decide a finished run's images under other image-threshold settings, from the normal scores
    and image scores it stored (``models.thresholds.image_threshold``: max(mean + z std, empirical
    quantile) at each fpr, x (1 + margin)): per (fpr, margin, k) the mean over classes of TPR, FPR and
    balanced accuracy. The masks are not re-made (they need the maps)."""
    from models.thresholds import image_threshold

    out = []
    ks = sorted({r["k"] for r in runs if r["variant"] == variant})
    classes = sorted({r["class"] for r in runs if r["variant"] == variant})
    for fpr in fprs:
        for margin in margins:
            for k in ks:
                tprs, fps = [], []
                for c in classes:
                    t, f = [], []
                    for r in runs:
                        if r["variant"] != variant or r["k"] != k or r["class"] != c or not r["normal_scores"]:
                            continue  # (thresholds given by hand store no normal scores)
                        thr = image_threshold(np.asarray(r["normal_scores"]), fpr, margin).threshold
                        lab = np.asarray([i["label"] for i in r["images"]])
                        sc = np.asarray([i["score"] for i in r["images"]])
                        t.append(float((sc[lab == 1] > thr).mean()))
                        f.append(float((sc[lab == 0] > thr).mean()))
                    if t:
                        tprs.append(np.mean(t))
                        fps.append(np.mean(f))
                if not tprs:
                    continue
                tpr, fp = float(np.mean(tprs)), float(np.mean(fps))
                out.append({"fpr": fpr, "margin": margin, "k": k, "tpr": tpr, "false_alarms": fp,
                            "balanced_accuracy": (tpr + 1 - fp) / 2})
    return out


# ----------------------------------------------------------------------------- picture

def strip_chart(runs: list[dict], variant: str, ks: list[int], classes: list[str], path: Path) -> Path:
    """Each (class, k) a row: every test image of every seed as a dot at score / image threshold
    (good green, defective red), the decision line at 1; the axis runs over 0.5-2 (log), dots
    beyond it sit at its ends."""
    font = ImageFont.load_default()
    left, right, row_h, top = 150, 30, 22, 40
    width = 760
    rows = [(c, k) for c in classes for k in ks]
    img = Image.new("RGB", (width, top + row_h * len(rows) + 44), "white")
    d = ImageDraw.Draw(img)
    lo, hi = math.log(0.5), math.log(2.0)
    x_of = lambda r: left + (min(max(math.log(max(r, 1e-9)), lo), hi) - lo) / (hi - lo) * (width - left - right)  # noqa: E731
    d.text((8, 8), f"{variant}: image score / image threshold (log axis; right of the line = called defect)",
           fill="black", font=font)
    for tick in (0.5, 0.75, 1.0, 1.5, 2.0):
        x = x_of(tick)
        d.line([(x, top - 6), (x, top + row_h * len(rows))], fill=(220, 220, 220) if tick != 1.0 else "black",
               width=1 if tick != 1.0 else 2)
        d.text((x - 8, top + row_h * len(rows) + 6), f"{tick:g}", fill="black", font=font)
    for i, (c, k) in enumerate(rows):
        y = top + row_h * i + row_h // 2
        d.text((8, y - 6), f"{c}  k={k}", fill="black", font=font)
        for r in (r for r in runs if r["variant"] == variant and r["class"] == c and r["k"] == k):
            t = r["metrics"]["image_threshold"]
            for j, rec in enumerate(r["images"]):
                x = x_of(rec["score"] / t if t > 0 else math.inf)
                dy = (j % 3 - 1) * 4  # spread overlapping dots a little
                colour = (200, 30, 30) if rec["label"] else (20, 150, 40)
                d.ellipse([x - 3, y + dy - 3, x + 3, y + dy + 3], outline=colour, width=1)
    y = top + row_h * len(rows) + 28
    for x, colour, label in ((width - 250, (200, 30, 30), "defective"), (width - 150, (20, 150, 40), "good")):
        d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour, width=1)
        d.text((x + 8, y - 6), label, fill="black", font=font)
    img.save(path)
    return path


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="a folder in MVTec layout (meta.json optional; read only)")
    p.add_argument("--classes", nargs="+", default=None, help="classes to run (default: every class of --data_root)")
    p.add_argument("--model", default="timm:tf_efficientnet_lite0", help="backbone, as predict.py --model "
                                                                       "(default: %(default)s)")
    p.add_argument("--weights", required=True, help="its weights: a local file, or 'none' for random weights")
    p.add_argument("--image_size", type=int, default=224, help="(default: %(default)s)")
    p.add_argument("--k_shot", type=int, nargs="+", default=[1, 2, 4], help="references (default: 1 2 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reference seeds (default: 0 1 2)")
    p.add_argument("--predict_args", default="", help="further predict.py flags for every variant, one string")
    p.add_argument("--variant", action="append", default=None, metavar="'NAME: FLAGS'",
                   help="a setting to compare: a name and predict.py flags added to --predict_args; repeat for "
                        "several (default: one variant 'default' = predict.py's defaults)")
    p.add_argument("--mask_levels", type=float, nargs="+", default=[],
                   help="also report the mask figures at these --mask_level values (the verdicts are the same; "
                        "summed up in decisions.md's mask table)")
    p.add_argument("--batch_size", type=int, default=16, help="test images per forward pass (default: %(default)s)")
    p.add_argument("--out", default="bench_out/decisions", help="output folder (default: %(default)s)")
    p.add_argument("--grid", default=None, metavar="DECISIONS_JSON",
                   help="no new run: re-decide a decisions.json's images over --grid_fpr x --grid_margin image-threshold "
                        "settings (from its stored normal and image scores) and print the table")
    p.add_argument("--grid_fpr", type=float, nargs="+", default=[0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--grid_margin", type=float, nargs="+", default=[-0.1, 0.0, 0.05, 0.1, 0.2, 0.25, 0.3])
    if argv is None:
        argv = sys.argv[1:]
    if any(a == "--grid" or a.startswith("--grid=") for a in argv):  # the data flags are not needed then
        argv = [*argv, "--data_root", "-", "--weights", "none"]
    args = p.parse_args(argv)
    if any(k < 1 for k in args.k_shot):
        p.error("--k_shot values must be >= 1")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    bad = [m for m in args.mask_levels if not 0.0 <= m < 1.0]
    if bad:
        p.error(f"--mask_levels must lie in [0, 1), got {bad}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.grid:
        d = json.loads(Path(args.grid).read_text(encoding="utf-8"))
        variants = sorted({r["variant"] for r in d["runs"]})
        rows = [{"variant": v, **x} for v in variants for x in threshold_grid(d["runs"], v, args.grid_fpr, args.grid_margin)]
        print(tabulate([[r["variant"], r["fpr"], r["margin"], r["k"], f"{r['tpr']:.3f}", f"{r['false_alarms']:.3f}",
                         f"{r['balanced_accuracy']:.3f}"] for r in rows],
                       headers=["variant", "fpr", "margin", "k", "tpr", "fpr (measured)", "balanced_accuracy"],
                       tablefmt="github"))
        return {"grid": rows}
    root = Path(args.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_root {root} is not a folder")
    if args.weights.lower() not in ("none", "random") and not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights {args.weights} not found")
    meta = read_meta(root)
    classes = args.classes or sorted(meta["test"])
    unknown = [c for c in classes if c not in meta["test"] or c not in meta["train"]]
    if unknown:
        raise ValueError(f"classes {unknown} not in {root} (it has {sorted(meta['test'])})")
    for c in classes:  # k larger than the references there are: say so before any work
        n = sum(1 for s in meta["train"][c] if s["anomaly"] == 0)
        if max(args.k_shot) > n:
            raise ValueError(f"class {c!r} has {n} good training images, fewer than k = {max(args.k_shot)}")
    common = ["--model", args.model, "--pretrained", args.weights, "--image_size", str(args.image_size),
              *shlex.split(args.predict_args)]
    variants = [parse_variant(v, common) for v in (args.variant or ["default:"])]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"--variant names repeat: {names}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("fasl.decisions")
    log.addHandler(logging.NullHandler())
    log.propagate = False

    runs: list[dict] = []
    models: dict[tuple, object] = {}
    tests: dict[tuple, TestSet] = {}  # the current class's, per backbone
    total = len(variants) * len(classes) * len(args.k_shot) * len(args.seeds)
    bar = tqdm(total=total, desc="decisions", unit="run", dynamic_ncols=True)
    for v in variants:  # every model first (the seed draws random weights)
        seed_everything(v.args.seed)
        if v.backbone_key not in models:
            models[v.backbone_key] = build_fasl_from_args(v.args, resolve_device(v.args.device))
            models[v.backbone_key].eval()
    for c in classes:  # a class's test images are encoded once per backbone and window layout
        encodings: dict[tuple, list] = {}
        for v in variants:
            key = v.backbone_key
            model = models[key]
            cfg = InferenceConfig.from_args(v.args, out_size=v.args.map_size or v.args.image_size)
            if key not in tests:
                tests.clear()
                tests[key] = load_test_set(root, meta, c, model)
            test = tests[key]
            enc_key = (key, cfg.winmode, cfg.win_size, cfg.win_stride, cfg.align != "exhaustive")
            if enc_key not in encodings:
                encodings[enc_key] = [model.encode(test.images[i:i + args.batch_size], cfg)
                                      for i in range(0, len(test.paths), args.batch_size)]
            for k in args.k_shot:
                for seed in args.seeds:
                    ref_paths = [root / p for p in sample_kshot(meta, c, k, seed)]
                    metrics, records, normal = run_one(v, model, cfg, encodings[enc_key], test, ref_paths, log,
                                                       tuple(args.mask_levels))
                    runs.append({"variant": v.name, "class": c, "k": k, "seed": seed, "metrics": metrics,
                                 "references": [str(p) for p in ref_paths], "normal_scores": normal,
                                 "images": records})
                    bar.update(1)
        tests.clear()
        write_json(out / "decisions.partial.json", json_safe({"format": DECISIONS_FORMAT, "runs": runs}))
    bar.close()
    (out / "decisions.partial.json").unlink(missing_ok=True)
    summary = summarise(runs, names, args.k_shot, classes)
    report = tables(summary, names, args.k_shot, classes) + mask_table(runs, names, args.k_shot, args.mask_levels)
    settings = {"data_root": str(root), "classes": classes, "k_shot": args.k_shot, "seeds": args.seeds,
                "model": args.model, "weights": args.weights, "image_size": args.image_size,
                "variants": {v.name: {k: x for k, x in vars(v.args).items() if k not in ("refs", "images", "out")}
                             for v in variants}}
    result = {"format": DECISIONS_FORMAT, "settings": settings, "summary": summary, "runs": runs}
    write_json(out / "decisions.json", json_safe(result))
    (out / "decisions.md").write_text(report, encoding="utf-8")
    for v in names:
        strip_chart(runs, v, args.k_shot, classes, out / f"decisions_{v}.png")
    print(report)
    print(f"wrote {out / 'decisions.json'}, {out / 'decisions.md'} and {len(names)} picture(s)")
    return result


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, "bench/decisions.py")
