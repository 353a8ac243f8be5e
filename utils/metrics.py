"""Evaluation metrics for few-shot anomaly detection, and the result table / files.

Image level: AUROC, F1-max and AP (scikit-learn). Pixel level: AUROC, F1-max, AP and AUPRO,
all computed from ONE descending sort of the pixel scores: ROC and PR points come from
cumulative counts at the distinct score values, AUPRO from a cumulative sum of per-pixel
region weights, so 5.76M pixels take about a second and no loop runs over thresholds.

Every metric is a Python ``float`` or ``None`` (never NaN); a ``None`` comes with a ``note``
saying why (e.g. a test set with only normal images has no image AUROC).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from tabulate import tabulate

from utils.misc import atomic_write_text, write_json

IMAGE_KEYS = ("auroc", "f1_max", "ap")
PIXEL_KEYS = ("auroc", "f1_max", "ap", "aupro")
CLASS_KEYS = tuple(f"image_{k}" for k in IMAGE_KEYS) + tuple(f"pixel_{k}" for k in PIXEL_KEYS)

# 8-connectivity inside each map, none across maps: labels a (N, H, W) stack in one call.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


def label_regions(stack: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions (8-connectivity) of each map of a (N, H, W) boolean stack, labelled in
    one call (no region spans two maps): (labels (N, H, W) int, 1..n; 0 outside, n)."""
    return ndimage.label(stack, structure=_REGION_STRUCTURE)


def _to_numpy(x: Any) -> np.ndarray:
    """Tensor or array-like → NumPy array (half-precision tensors are widened exactly to float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _check_scores(scores: np.ndarray, what: str) -> np.ndarray:
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise TypeError(f"{what} must be real numbers, got dtype {scores.dtype}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain NaN or inf")
    return scores


def _check_binary(labels: np.ndarray, what: str) -> np.ndarray:
    if labels.dtype == bool:
        return labels
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what} must be 0/1 (or bool), got values {np.unique(labels)[:5]}...")
    return labels.astype(bool)


# ----------------------------------------------------------------------------- image level

def image_metrics(labels: Any, scores: Any) -> Dict[str, Any]:
    """Image-level AUROC, F1-max and AP.

    Args:
        labels: (N,) 0/1 or bool, 1 = anomalous.
        scores: (N,) float, higher = more anomalous.

    Returns:
        ``{"auroc", "f1_max", "ap"}`` as floats; when ``labels`` hold one class only all three
        are ``None`` and a ``"note"`` string says why.
    """
    labels = _check_binary(_to_numpy(labels).reshape(-1), "image labels")
    scores = _check_scores(_to_numpy(scores).reshape(-1), "image scores")
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    n_anomalous = int(labels.sum())
    if labels.size == 0 or n_anomalous in (0, labels.size):
        kind = "normal" if n_anomalous == 0 else "anomalous"
        return {**dict.fromkeys(IMAGE_KEYS), "note": f"n/a: test set has only {kind} images"}
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "f1_max": float(f1.max()),
        "ap": float(average_precision_score(labels, scores)),
    }


# ----------------------------------------------------------------------------- pixel level

class _SortedSweep(NamedTuple):
    """Cumulative counts at each distinct score, highest score first (one entry per threshold)."""
    order: np.ndarray  # (M,) int, pixel indices sorted by descending score
    ends: np.ndarray   # (T,) int, last sorted position of each distinct score value
    tps: np.ndarray    # (T,) int, anomalous pixels with score >= threshold
    fps: np.ndarray    # (T,) int, normal pixels with score >= threshold


def _sweep(y: np.ndarray, s: np.ndarray) -> _SortedSweep:
    """One sort of ``s`` (M,) and cumulative positives of ``y`` (M,) bool at distinct scores."""
    order = np.argsort(s)[::-1]  # tie order is irrelevant: we only read at group ends
    s_desc = s[order]
    ends = np.flatnonzero(s_desc[1:] != s_desc[:-1])
    ends = np.append(ends, s_desc.size - 1)
    tps = np.cumsum(y[order], dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return _SortedSweep(order, ends, tps, fps)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _roc_pr_from_sweep(sw: _SortedSweep, n_pos: int, n_neg: int) -> Dict[str, float]:
    # ROC: trapezoids from (0, 0) through every distinct threshold (sklearn's roc_auc_score).
    tpr = np.concatenate(([0.0], sw.tps / n_pos))
    fpr = np.concatenate(([0.0], sw.fps / n_neg))
    # AP, sklearn's step rule: sum_n (R_n - R_{n-1}) P_n with R_0 = 0.
    precision = sw.tps / (sw.tps + sw.fps)
    recall = sw.tps / n_pos
    ap = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    # F1 = 2PR / (P + R) = 2 TP / (TP + FP + #pos); the denominator is never 0 here.
    f1 = 2.0 * sw.tps / (sw.tps + sw.fps + n_pos)
    return {"auroc": _trapezoid(tpr, fpr), "f1_max": float(f1.max()), "ap": ap}


def pro_curve_area(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    """Normalised area under a PRO curve up to ``max_fpr``.

    Args:
        fpr, pro: (T,) points of the curve, ``fpr`` non-decreasing, starting at (0, 0).
        max_fpr: integration limit in (0, 1].

    The curve is cut at ``max_fpr`` by linear interpolation of the segment that crosses it,
    integrated with the trapezoidal rule and divided by ``max_fpr``.
    """
    j = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[:j] <= max_fpr < fpr[j]
    if j < fpr.size:
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_cut = y0 + (max_fpr - x0) * (y1 - y0) / (x1 - x0)
        fpr = np.append(fpr[:j], max_fpr)
        pro = np.append(pro[:j], y_cut)
    return _trapezoid(pro, fpr) / max_fpr


def _aupro_from_sweep(sw: _SortedSweep, masks: np.ndarray, n_neg: int,
                      max_fpr: float) -> Optional[float]:
    regions, n_regions = label_regions(masks)  # (N, H, W) int ids
    if n_regions == 0:
        return None
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    # Each anomalous pixel adds 1 / (|its region| * n_regions) to the mean per-region overlap.
    weight = np.zeros(n_regions + 1, dtype=np.float64)
    weight[1:] = 1.0 / (sizes * float(n_regions))
    pro = np.cumsum(weight[regions.ravel()[sw.order]])[sw.ends]
    fpr = np.concatenate(([0.0], sw.fps / n_neg))
    pro = np.concatenate(([0.0], np.minimum(pro, 1.0)))
    return pro_curve_area(fpr, pro, max_fpr)


def pixel_metrics(masks: Any, maps: Any, max_fpr: float = 0.3) -> Dict[str, Any]:
    """Pixel-level AUROC, F1-max, AP and AUPRO over a whole test set.

    Args:
        masks: (N, H, W) bool or 0/1 ground truth (values > 0 count as anomalous).
        maps: (N, H, W) float anomaly maps, higher = more anomalous (kept at full precision).
        max_fpr: AUPRO integration limit (MVTec: 0.3); the area is divided by it.

    Returns:
        ``{"auroc", "f1_max", "ap", "aupro"}`` as floats. When every pixel is normal (or every
        pixel anomalous) all are ``None`` with a ``"note"``. AUPRO follows the MVTec AD
        reference: connected regions with 8-connectivity per map, FPR over all normal pixels,
        PRO = mean over regions of the fraction of the region at or above the threshold.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    masks, maps = _to_numpy(masks), _to_numpy(maps)
    if maps.ndim == 2:
        masks, maps = masks[None], maps[None]
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    masks = masks > 0 if masks.dtype != bool else masks
    _check_scores(maps, "anomaly maps")
    n_pos = int(masks.sum())
    n_neg = masks.size - n_pos
    if n_pos == 0 or n_neg == 0:
        kind = "no anomalous" if n_pos == 0 else "no normal"
        return {**dict.fromkeys(PIXEL_KEYS), "note": f"n/a: test set has {kind} pixels"}
    sw = _sweep(masks.ravel(), maps.ravel())
    out: Dict[str, Any] = _roc_pr_from_sweep(sw, n_pos, n_neg)
    out["aupro"] = _aupro_from_sweep(sw, masks, n_neg, max_fpr)
    return out


# ----------------------------------------------------------------------------- per class

def transductive_scores(image_scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The reference code's image score over a class's test set: ``0.5 * (s_i + (m_i - min m) /
    (max m - min m))``, with ``m_i`` the maximum of image i's map and min / max taken over the N
    maxima (not over pixels).

    image_scores: (N,), maps: (N, H, W). Returns (N,). When every map has the same maximum the
    normalised term is 0 (the reference divides by zero there).
    """
    peaks = np.asarray(maps).reshape(len(maps), -1).max(axis=1).astype(np.float64)  # [N]
    lo, hi = float(peaks.min()), float(peaks.max())
    normalised = (peaks - lo) / (hi - lo) if hi > lo else np.zeros_like(peaks)
    return 0.5 * (np.asarray(image_scores) + normalised)


def class_metrics(labels: Any, image_scores: Any, masks: Any, maps: Any,
                  max_fpr: float = 0.3) -> Dict[str, Any]:
    """All metrics of one class.

    Args:
        labels: (N,) 0/1 image labels; image_scores: (N,) float.
        masks: (N, H, W) 0/1 ground truth or ``None`` (no pixel annotation → pixel metrics n/a).
        maps: (N, H, W) float anomaly maps at the evaluation size, or ``None``.

    Returns:
        ``image_auroc, image_f1_max, image_ap, pixel_auroc, pixel_f1_max, pixel_ap,
        pixel_aupro`` (float or None) and, when something is n/a, ``"note"``.
    """
    image = image_metrics(labels, image_scores)
    if masks is None or maps is None:
        pixel = {**dict.fromkeys(PIXEL_KEYS), "note": "n/a: no masks or maps given"}
    else:
        pixel = pixel_metrics(masks, maps, max_fpr=max_fpr)
    out: Dict[str, Any] = {f"image_{k}": image[k] for k in IMAGE_KEYS}
    out.update({f"pixel_{k}": pixel[k] for k in PIXEL_KEYS})
    notes = [f"{level}: {part['note']}" for level, part in (("image", image), ("pixel", pixel))
             if "note" in part]
    if out["pixel_aupro"] is None and "note" not in pixel:
        notes.append("pixel: aupro n/a: no anomalous regions")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def _is_metric_value(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool))


COUNT_KEYS = ("n_images", "n_anomalous")  # counts, summed over classes (an average of counts means nothing)


def mean_metrics(metrics: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
    """Average each numeric key over a list of metric dicts, ignoring ``None`` values; the counts
    of :data:`COUNT_KEYS` are summed instead.

    Returns:
        ``{key: mean or None, ..., "counts": {key: number of dicts used}, "n_classes": N}``;
        a metric some classes lack (``None``) is the mean over ``counts[key]`` of the N classes.
        Non-numeric entries (notes, nested dicts) are skipped. Key order follows first appearance.
    """
    sums: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    n_classes = 0
    for m in metrics:
        n_classes += 1
        for key, value in m.items():
            if not _is_metric_value(value):
                continue
            sums.setdefault(key, 0 if key in COUNT_KEYS else 0.0)
            counts.setdefault(key, 0)
            if value is not None:
                sums[key] += int(value) if key in COUNT_KEYS else float(value)
                counts[key] += 1
    out: Dict[str, Any] = {k: (sums[k] if k in COUNT_KEYS else sums[k] / counts[k] if counts[k] else None)
                           for k in sums}
    out["counts"] = {k: v for k, v in counts.items() if k not in COUNT_KEYS}
    out["n_classes"] = n_classes
    return out


# the spread of every "mean ± spread" table over seeds (test_few_shot.py's sweep, bench/real_eval.py; bench/decisions.py's
# mean_std is the same), named in each table's header
SPREAD = "sample standard deviation (ddof 1; 0 for a single value)"


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the :data:`SPREAD` of one or more values: ``[0.1, 0.3]`` -> (0.2, 0.1414...),
    ``[0.25]`` -> (0.25, 0.0)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_spread needs at least one value")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def partial_note(mean: Mapping[str, Any], keys: Sequence[str]) -> str:
    """'image_auroc over 3/4 classes; ...' for the metrics of ``keys`` that some classes lack
    (empty when every class has every one)."""
    n = mean.get("n_classes", 0)
    parts = [f"{k} over {mean['counts'][k]}/{n} classes" for k in keys
             if k in mean.get("counts", {}) and mean["counts"][k] < n]
    return "; ".join(parts)


# ----------------------------------------------------------------------------- reporting

def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.1f}"


def format_table(results: Mapping[str, Mapping[str, Any]],
                 keys: Sequence[str] = CLASS_KEYS) -> str:
    """Per-class table (percentages, 1 decimal, ``n/a`` for None) with a final ``mean`` row; a
    mean over only some of the classes (the others have ``n/a``) shows ``(n/N)`` after it.

    Args:
        results: ``{class_name: metrics dict}``.
        keys: metric keys to show, as columns in this order.
    """
    rows = [[cls] + [_percent(m.get(k)) for k in keys] for cls, m in results.items()]
    mean = mean_metrics(results.values())
    n, counts = mean["n_classes"], mean["counts"]

    def cell(k):  # a mean over fewer than all classes says over how many
        value = _percent(mean.get(k))
        return f"{value} ({counts[k]}/{n})" if mean.get(k) is not None and counts.get(k, n) < n else value

    rows.append(["mean"] + [cell(k) for k in keys])
    return tabulate(rows, headers=["class", *keys], tablefmt="github", disable_numparse=True,
                    colalign=("left",) + ("right",) * len(keys))


class ResultFiles(NamedTuple):
    json: Path
    csv: Path


def _clean(m: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in m.items():
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            raise ValueError(f"metric {key!r} is {value}; use None for n/a")
        out[key] = float(value) if isinstance(value, np.floating) else value
    return out


def write_results(out_dir: os.PathLike | str, results: Mapping[str, Mapping[str, Any]],
                  extra: Optional[Mapping[str, Any]] = None) -> ResultFiles:
    """Write ``results.json`` and ``results.csv`` into ``out_dir`` (created if needed).

    results.json: ``{"per_class": {cls: metrics}, "mean": mean_metrics(...), "extra": extra}``
    with floats as numbers (fractions in [0, 1]) and None as null.
    results.csv: one row per class and a final ``mean`` row; numeric columns in order of first
    appearance, raw fractions with 6 decimals (counts as integers, summed in the mean row), empty
    cell for None, and a ``note`` column (the mean row's names the metrics some classes lack).
    """
    out_dir = Path(out_dir)
    per_class = {str(cls): _clean(m) for cls, m in results.items()}
    mean = mean_metrics(per_class.values())
    json_path = write_json(out_dir / "results.json",
                           {"per_class": per_class, "mean": mean, "extra": dict(extra or {})})
    keys: List[str] = [k for k in mean if k not in ("counts", "n_classes")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", *keys, "note"])
    mean_row = {**mean, "note": partial_note(mean, keys)}
    for cls, m in [*per_class.items(), ("mean", mean_row)]:
        cells = ["" if m.get(k) is None else str(int(m[k])) if k in COUNT_KEYS else f"{float(m[k]):.6f}"
                 for k in keys]
        writer.writerow([cls, *cells, m.get("note", "") if isinstance(m.get("note"), str) else ""])
    csv_path = atomic_write_text(out_dir / "results.csv", buf.getvalue())
    return ResultFiles(json_path, csv_path)


if __name__ == "__main__":
    import time

    rng = np.random.default_rng(0)
    n, size = 100, 240
    yy, xx = np.mgrid[:size, :size]
    bench_masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n // 2, n):  # half the maps carry 1-3 elliptic defects
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(20, size - 20, 2)
            ry, rx = rng.integers(3, 25, 2)
            bench_masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    bench_maps = (rng.random((n, size, size)) + 0.5 * bench_masks).astype(np.float32)
    t0 = time.perf_counter()
    result = pixel_metrics(bench_masks, bench_maps)
    elapsed = time.perf_counter() - t0
    print(f"pixel_metrics on {n} maps of {size}x{size} ({bench_maps.size / 1e6:.2f}M pixels, "
          f"float32): {elapsed:.2f} s  (torch threads: {torch.get_num_threads()})")
    print({k: round(v, 4) for k, v in result.items()})
