"""Tests for utils.metrics: sklearn equivalence, AUPRO against a brute-force loop, hand cases."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from skimage.measure import label, regionprops
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from utils.metrics import (
    CLASS_KEYS, class_metrics, format_table, image_metrics, mean_metrics, pixel_metrics,
    pro_curve_area, write_results)


# ----------------------------------------------------------------------------- helpers

def sklearn_f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    return f1.max()


def blob_masks(rng, n, h, w, p_anomalous=0.6):
    """(n, h, w) bool masks holding 0-3 random ellipses each (some touching / overlapping)."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if rng.random() > p_anomalous:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = rng.uniform(1, h / 6), rng.uniform(1, w / 6)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def slow_aupro(masks, maps, thresholds, max_fpr=0.3):
    """Obviously-correct AUPRO: one Python pass per threshold and per region."""
    regions = [(i, r.coords) for i in range(len(masks))
               for r in regionprops(label(masks[i], connectivity=2))]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(set(thresholds), reverse=True):
        above = maps >= t
        fpr = (above & normal).sum() / normal.sum()
        pro = np.mean([above[i][c[:, 0], c[:, 1]].mean() for i, c in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def smooth_maps(rng, masks, strength=0.8):
    from scipy.ndimage import gaussian_filter
    noise = gaussian_filter(rng.random(masks.shape), sigma=(0, 1.5, 1.5))
    return noise + strength * gaussian_filter(masks.astype(float), sigma=(0, 1, 1))


# ----------------------------------------------------------------------------- image level

def test_image_metrics_hand_worked():
    out = image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert out["auroc"] == pytest.approx(0.75)
    assert out["ap"] == pytest.approx((1.0 + 2 / 3) / 2)  # recall steps 0.5 at P=1, 0.5 at P=2/3
    assert out["f1_max"] == pytest.approx(0.8)            # threshold 0.35: P=2/3, R=1
    assert "note" not in out


@pytest.mark.parametrize("labels, kind", [([0, 0, 0], "normal"), ([1, 1], "anomalous")])
def test_image_metrics_single_class_is_none_with_note(labels, kind):
    out = image_metrics(labels, np.linspace(0, 1, len(labels)))
    assert out["auroc"] is None and out["f1_max"] is None and out["ap"] is None
    assert out["note"] == f"n/a: test set has only {kind} images"


def test_image_metrics_errors():
    with pytest.raises(ValueError, match="differ in length"):
        image_metrics([0, 1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="must be 0/1"):
        image_metrics([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN or inf"):
        image_metrics([0, 1], [0.2, float("nan")])


def test_image_metrics_accepts_tensors():
    out = image_metrics(torch.tensor([0, 1, 0, 1]), torch.tensor([0.1, 0.9, 0.2, 0.8]))
    assert out == {"auroc": 1.0, "f1_max": 1.0, "ap": 1.0}


# ----------------------------------------------------------------------------- pixel ROC / PR

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 2, None])  # heavy ties, some ties, (almost) none
def test_pixel_roc_pr_equal_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    masks = rng.random((5, 20, 30)) < 0.15
    maps = rng.random(masks.shape) + 0.4 * masks
    if decimals is not None:
        maps = np.round(maps, decimals)
    out = pixel_metrics(masks, maps)
    y, s = masks.ravel(), maps.ravel()
    assert out["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert out["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert out["f1_max"] == pytest.approx(sklearn_f1_max(y, s), abs=1e-6)


def test_pixel_metrics_float32_kept_exact():
    # Scores that differ only beyond float16 precision must not be merged into ties.
    rng = np.random.default_rng(3)
    masks = rng.random((2, 16, 16)) < 0.3
    maps = (1.0 + rng.random(masks.shape) * 1e-4 + 2e-5 * masks).astype(np.float32)
    out = pixel_metrics(masks, maps)
    assert out["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)


def test_pixel_metrics_perfect_and_inverted():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:4, 2:5] = True
    masks[1, 5:7, 0:2] = True
    masks[1, 0, 7] = True
    perfect = masks.astype(float) * 0.5 + 0.25
    out = pixel_metrics(masks, perfect)
    assert out == {"auroc": 1.0, "f1_max": 1.0, "ap": 1.0, "aupro": 1.0}
    inverted = pixel_metrics(masks, -perfect)
    assert inverted["auroc"] == 0.0
    assert inverted["aupro"] == 0.0
    assert inverted["ap"] == pytest.approx(masks.mean())
    assert inverted["f1_max"] == pytest.approx(2 * masks.mean() / (1 + masks.mean()))


def test_pixel_metrics_no_anomalous_pixels_is_none_with_note():
    out = pixel_metrics(np.zeros((3, 4, 4)), np.random.default_rng(0).random((3, 4, 4)))
    assert all(out[k] is None for k in ("auroc", "f1_max", "ap", "aupro"))
    assert out["note"] == "n/a: test set has no anomalous pixels"


def test_pixel_metrics_errors_and_inputs():
    with pytest.raises(ValueError, match="must both be"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        pixel_metrics(np.eye(4)[None], maps)
    with pytest.raises(ValueError, match="max_fpr"):
        pixel_metrics(np.eye(4)[None], np.eye(4)[None], max_fpr=0.0)
    # torch input, half precision, a single 2-D map, 0/255 masks binarised at > 0
    mask = torch.zeros(6, 6)
    mask[1:3, 1:3] = 255
    tensor_map = (mask / 255 + torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) * 0.5)
    a = pixel_metrics(mask, tensor_map.half())
    b = pixel_metrics((mask > 0).numpy()[None], tensor_map.half().float().numpy()[None])
    assert a == b and a["auroc"] == 1.0


# ----------------------------------------------------------------------------- AUPRO

def test_pro_curve_area_interpolates_at_max_fpr():
    fpr = np.array([0.0, 0.2, 0.4, 1.0])
    pro = np.array([0.0, 0.5, 1.0, 1.0])
    # area to 0.3: triangle 0.05 + trapezoid 0.1 * (0.5 + 0.75) / 2 = 0.1125
    assert pro_curve_area(fpr, pro, 0.3) == pytest.approx(0.1125 / 0.3)
    assert pro_curve_area(fpr, pro, 1.0) == pytest.approx(0.05 + 0.15 + 0.6)


def test_aupro_hand_worked():
    # One region of 2 pixels (scores 0.9, 0.5), 10 normal pixels, one of them at 0.7.
    maps = np.array([[0.9, 0.5, 0.7, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02]])
    masks = np.zeros_like(maps, dtype=bool)
    masks[0, :2] = True
    # curve: (0,0) (0,.5) (.1,.5) (.1,1) (.2,1) (.3,1) ...
    out = pixel_metrics(masks[None], maps[None])
    assert out["aupro"] == pytest.approx((0.05 + 0.1 + 0.1) / 0.3)
    assert pixel_metrics(masks[None], maps[None], max_fpr=0.25)["aupro"] == pytest.approx(0.2 / 0.25)


def test_aupro_regions_are_8_connected():
    # 8-connected: one region of 3 pixels; with 4-connectivity it would be 1 + 2 pixels.
    masks = np.array([[[1, 0, 0], [0, 1, 1]]], dtype=bool)
    maps = np.array([[[0.9, 0.5, 0.1], [0.05, 0.4, 0.3]]])
    # curve (0,0) (0,1/3) (1/3,1/3) ...; cut at 0.3 gives PRO 1/3 throughout
    assert pixel_metrics(masks, maps)["aupro"] == pytest.approx(1 / 3)


def test_aupro_regions_do_not_connect_across_maps():
    # Map 0: region of 1 pixel; map 1: region of 2 pixels at the same place. Only map 0's
    # region is found before the first false positive: PRO = mean(1, 0) = 0.5 (not 1/3).
    masks = np.array([[[1, 0, 0, 0]], [[1, 1, 0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.8, 0.1, 0.1]], [[0.5, 0.5, 0.1, 0.1]]])
    assert pixel_metrics(masks, maps, max_fpr=0.1)["aupro"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aupro_equals_brute_force_at_every_distinct_score(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 4, 12, 14)
    masks[0, 3:6, 3:6] = True  # at least one region
    maps = np.round(smooth_maps(rng, masks), 2)  # rounding creates many ties
    out = pixel_metrics(masks, maps)
    assert out["aupro"] == pytest.approx(slow_aupro(masks, maps, np.unique(maps)), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_close_to_brute_force_on_200_thresholds(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 10, 48, 48)
    masks[0, 10:20, 10:20] = True
    maps = smooth_maps(rng, masks)
    thresholds = np.quantile(maps, np.linspace(0, 1, 200))
    out = pixel_metrics(masks, maps)
    assert out["aupro"] == pytest.approx(slow_aupro(masks, maps, thresholds), abs=1e-3)


def test_pixel_metrics_full_size_set():
    # 100 maps of 240x240 (the evaluation size): correctness only, no timing assertion.
    rng = np.random.default_rng(0)
    masks = np.zeros((100, 240, 240), dtype=bool)
    yy, xx = np.mgrid[:240, :240]
    for i in range(50, 100):
        cy, cx, r = rng.integers(30, 210), rng.integers(30, 210), rng.integers(4, 25)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = (rng.random(masks.shape) + 0.5 * masks).astype(np.float32)
    out = pixel_metrics(masks, maps)
    # every anomalous pixel beats a normal one with prob. 1 - 0.5^2/2 = 0.875
    assert out["auroc"] == pytest.approx(0.875, abs=2e-3)
    assert 0.0 < out["aupro"] < 1.0 and 0.0 < out["ap"] < 1.0 and 0.0 < out["f1_max"] < 1.0


# ----------------------------------------------------------------------------- per class / mean

def test_class_metrics_keys_and_notes():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[2:, 2:5, 2:5] = True
    maps = rng.random(masks.shape) + masks
    out = class_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], masks, maps)
    assert set(out) == set(CLASS_KEYS)
    assert out["image_auroc"] == 1.0 and out["pixel_auroc"] == 1.0 and out["pixel_aupro"] == 1.0
    normal_only = class_metrics([0, 0], [0.1, 0.2], np.zeros((2, 8, 8)), maps[:2])
    assert normal_only["image_auroc"] is None and normal_only["pixel_aupro"] is None
    assert normal_only["note"] == ("image: n/a: test set has only normal images; "
                                   "pixel: n/a: test set has no anomalous pixels")
    no_masks = class_metrics([0, 1], [0.1, 0.2], None, None)
    assert no_masks["image_auroc"] == 1.0 and no_masks["pixel_auroc"] is None
    assert "no masks" in no_masks["note"]


def test_mean_metrics_ignores_none_and_counts():
    mean = mean_metrics([
        {"auroc": 0.5, "aupro": None, "note": "x"},
        {"auroc": 1.0, "aupro": 0.8},
        {"auroc": None, "aupro": 0.6, "ap": None},
    ])
    assert mean["auroc"] == pytest.approx(0.75)
    assert mean["aupro"] == pytest.approx(0.7)
    assert mean["ap"] is None
    assert mean["counts"] == {"auroc": 2, "aupro": 2, "ap": 0}
    assert "note" not in mean


def test_mean_rows_sum_counts_and_say_over_how_many_classes(tmp_path):
    """The mean of a metric two of three classes have says 2/3; image counts are summed, not
    averaged into floats (issue 20)."""
    results = {"a": {"image_auroc": 0.5, "pixel_aupro": 0.2, "n_images": 3, "n_anomalous": 1},
               "b": {"image_auroc": 1.0, "pixel_aupro": None, "n_images": 4, "n_anomalous": 2},
               "c": {"image_auroc": 0.75, "pixel_aupro": 0.4, "n_images": 5, "n_anomalous": 0}}
    mean = mean_metrics(results.values())
    assert mean["n_images"] == 12 and mean["n_anomalous"] == 3 and isinstance(mean["n_images"], int)
    assert mean["n_classes"] == 3 and mean["counts"] == {"image_auroc": 3, "pixel_aupro": 2}
    assert mean["pixel_aupro"] == pytest.approx(0.3)
    cells = [c.strip() for c in format_table(results, ["image_auroc", "pixel_aupro"]).splitlines()[-1].split("|")]
    assert cells[1:4] == ["mean", "75.0", "30.0 (2/3)"]
    files = write_results(tmp_path, results)
    rows = list(csv.reader(files.csv.open()))
    assert rows[0] == ["class", "image_auroc", "pixel_aupro", "n_images", "n_anomalous", "note"]
    assert rows[-1] == ["mean", "0.750000", "0.300000", "12", "3", "pixel_aupro over 2/3 classes"]
    assert json.loads(files.json.read_text())["mean"]["n_images"] == 12


def test_format_table():
    results = {"bottle": {"image_auroc": 0.9876, "pixel_aupro": None},
               "cable": {"image_auroc": 0.5, "pixel_aupro": 0.25}}
    table = format_table(results, ["image_auroc", "pixel_aupro"])
    lines = table.splitlines()
    assert "image_auroc" in lines[0] and "pixel_aupro" in lines[0]
    bottle = next(line for line in lines if "bottle" in line)
    assert "98.8" in bottle and "n/a" in bottle
    mean = lines[-1]
    assert mean.split("|")[1].strip() == "mean"
    assert "74.4" in mean and "25.0" in mean  # (98.76 + 50) / 2 = 74.38; aupro over 1 class


def test_write_results(tmp_path):
    results = {"bottle": {"image_auroc": np.float32(0.75), "pixel_aupro": None,
                          "note": "pixel: something"},
               "cable": {"image_auroc": 1.0, "pixel_aupro": 0.5}}
    files = write_results(tmp_path / "run", results, {"shot": 1, "seed": 0})
    data = json.loads(files.json.read_text())
    assert data["extra"] == {"shot": 1, "seed": 0}
    assert data["per_class"]["bottle"]["pixel_aupro"] is None
    assert data["per_class"]["bottle"]["image_auroc"] == 0.75
    assert data["mean"]["image_auroc"] == 0.875 and data["mean"]["pixel_aupro"] == 0.5
    assert data["mean"]["counts"] == {"image_auroc": 2, "pixel_aupro": 1}
    rows = list(csv.reader(files.csv.open()))
    assert rows[0] == ["class", "image_auroc", "pixel_aupro", "note"]
    assert rows[1] == ["bottle", "0.750000", "", "pixel: something"]
    assert rows[-1] == ["mean", "0.875000", "0.500000", "pixel_aupro over 1/2 classes"]
    with pytest.raises(ValueError, match="use None"):
        write_results(tmp_path / "bad", {"x": {"auroc": math.nan}})
