"""Tests for utils.losses, utils.visualize and utils.misc."""

import json
import math
import os
import logging
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from utils.losses import dice_loss, focal_loss
from utils.misc import (atomic_torch_save, get_logger, peak_rss_bytes, resolve_device,
                        seed_everything, write_json)
from utils.visualize import class_range, colour_bar, heatmap_overlay, mask_outline, normalize_map, save_png, triptych


# ----------------------------------------------------------------------------- losses

def _two_by_two():
    anomalous = torch.tensor([[0.9, 0.2], [0.6, 0.5]])
    probs = torch.stack([1 - anomalous, anomalous])[None]  # (1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])      # (1, 1, 2, 2)
    return probs, target


def test_focal_loss_hand_computed():
    probs, target = _two_by_two()
    p_t = [0.9, 0.8, 0.4, 0.5]  # probability of the true class per pixel
    expected = sum(-(1 - p) ** 2 * math.log(p) for p in p_t) / 4
    assert focal_loss(probs, target).item() == pytest.approx(expected, rel=1e-6)
    expected_g1 = sum(-(1 - p) * math.log(p) for p in p_t) / 4
    assert focal_loss(probs, target, gamma=1).item() == pytest.approx(expected_g1, rel=1e-6)


def test_focal_loss_gamma0_is_nll():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 2, 5, 6, generator=g), dim=1)
    target = (torch.rand(3, 1, 5, 6, generator=g) > 0.7).float()
    nll = F.nll_loss(torch.log(probs), target[:, 0].long())
    assert focal_loss(probs, target, gamma=0).item() == pytest.approx(nll.item(), rel=1e-6)
    # (B, H, W) target is accepted too; gradients flow
    probs.requires_grad_(True)
    focal_loss(probs, target[:, 0]).backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all()


def test_focal_loss_errors_and_clamp():
    probs, target = _two_by_two()
    with pytest.raises(ValueError, match="target values must lie"):
        focal_loss(probs, target * 2)
    with pytest.raises(ValueError, match="integer class indices"):
        focal_loss(probs, target * 0.5)
    with pytest.raises(ValueError, match="target must be"):
        focal_loss(probs, target[..., :1])
    zero = torch.zeros(1, 2, 1, 1)
    zero[0, 0] = 1.0  # the true class (1) gets probability 0: clamped, finite
    assert focal_loss(zero, torch.ones(1, 1, 1, 1), eps=1e-6).item() == pytest.approx(
        -math.log(1e-6) * (1 - 1e-6) ** 2, rel=1e-5)


def test_dice_loss():
    target = torch.zeros(2, 4, 4)
    target[:, :2] = 1
    assert dice_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-7)
    inverse = 1 - target
    assert dice_loss(inverse, target).item() == pytest.approx(16 / 17)  # 1 - 1 / (8 + 8 + 1)
    # per-sample average; an empty mask predicted empty costs 0 thanks to smooth = 1
    empty = torch.zeros(1, 4, 4)
    assert dice_loss(empty, empty).item() == 0.0
    assert dice_loss(target[:, None], target).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="do not match"):
        dice_loss(target, target[:1])


# ----------------------------------------------------------------------------- visualize

def _image(h=32, w=40):
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def test_normalize_map():
    np.testing.assert_allclose(normalize_map(np.array([0.0, 5.0, 10.0])), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalize_map(np.array([-1.0, 0.5, 3.0]), lo=0, hi=1),
                               [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(normalize_map(np.full((2, 2), 7.0)), np.zeros((2, 2)))
    t = normalize_map(torch.tensor([2.0, 4.0]))
    assert isinstance(t, torch.Tensor) and t.tolist() == [0.0, 1.0]


def test_heatmap_overlay_colours():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    score = np.zeros((4, 6))
    score[:, 3:] = 1.0
    heat = heatmap_overlay(image, score, alpha=1.0)
    assert heat.dtype == np.uint8 and heat.shape == (4, 6, 3)
    # JET: high scores render red, low scores blue (in RGB order)
    assert heat[0, 5, 0] > 100 and heat[0, 5, 2] == 0
    assert heat[0, 0, 2] > 100 and heat[0, 0, 0] == 0
    img = _image()
    np.testing.assert_array_equal(heatmap_overlay(img, np.zeros(img.shape[:2]), alpha=0.0), img)
    half = heatmap_overlay(np.full((2, 2, 3), 200, np.uint8), np.ones((2, 2)), alpha=0.5)
    np.testing.assert_array_equal(half[0, 0], [164, 100, 100])  # (200 + 128) / 2, 200 / 2
    with pytest.raises(ValueError, match="must match the image size"):
        heatmap_overlay(img, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="uint8"):
        heatmap_overlay(img.astype(np.float32), np.zeros(img.shape[:2]))


def test_mask_outline_and_triptych():
    img = _image()
    mask = np.zeros(img.shape[:2], dtype=np.uint8)
    mask[8:20, 10:30] = 1
    out = mask_outline(img, mask, color=(255, 0, 255), thickness=1)
    np.testing.assert_array_equal(out[8, 15], [255, 0, 255])   # on the contour
    np.testing.assert_array_equal(out[14, 20], img[14, 20])    # inside, untouched
    np.testing.assert_array_equal(out[0, 0], img[0, 0])        # outside, untouched
    np.testing.assert_array_equal(mask_outline(img, np.zeros_like(mask)), img)
    panel = triptych(img, mask, np.random.default_rng(1).random(img.shape[:2]))
    assert panel.shape == (32, 120 + 56, 3) and panel.dtype == np.uint8  # + the colour bar
    np.testing.assert_array_equal(panel[:, :40], img)
    assert not np.array_equal(panel[:, 40:80], img)
    no_gt = triptych(img, None, np.zeros(img.shape[:2]))
    np.testing.assert_array_equal(no_gt[:, 40:80], img)


def test_save_png_round_trip(tmp_path):
    img = _image()
    path = save_png(tmp_path / "a" / "b.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    with pytest.raises(ValueError, match="expected uint8"):
        save_png(tmp_path / "c.png", img.astype(np.float64))


# ----------------------------------------------------------------------------- misc

def test_resolve_device_cpu_and_garbage():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:x", "-1", "", "cuda:0:1"):
        with pytest.raises(ValueError, match="invalid device"):
            resolve_device(bad)


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for arg in ("cuda", "cuda:0", "0"):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device(arg)


def test_resolve_device_with_two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("1") == torch.device("cuda", 1)
    assert resolve_device(1) == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="only 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(RuntimeError, match="only 2 CUDA device"):
        resolve_device("5")


def test_seed_everything_repeats_draws():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3).tolist()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything("1")
    with pytest.raises(ValueError, match="seed must be in"):
        seed_everything(-1)


def test_atomic_torch_save(tmp_path):
    path = tmp_path / "ckpt" / "model.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "config": {"width": 32}}
    atomic_torch_save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["config"] == {"width": 32}
    # A failing save leaves the previous file intact and no temp file behind.
    with pytest.raises(Exception):
        atomic_torch_save({"bad": lambda x: x}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])
    assert os.listdir(path.parent) == ["model.pt"]
    atomic_torch_save({"w": torch.zeros(1)}, path)  # overwrite
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(1))


def test_write_json(tmp_path):
    path = write_json(tmp_path / "out" / "x.json",
                      {"b": np.float32(0.5), "a": [np.int64(3), None], "c": np.arange(2)})
    text = path.read_text()
    assert json.loads(text) == {"a": [3, None], "b": 0.5, "c": [0, 1]}
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')  # sorted keys
    assert '\n  "a": [' in text                                      # indent 2
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
    assert os.listdir(tmp_path) == ["out"]  # no temp file left behind
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(tmp_path / "obj.json", {"x": object()})


def test_get_logger(tmp_path, capsys):
    log_file = tmp_path / "logs" / "run.log"
    logger = get_logger("fasl.test_logger", log_file)
    again = get_logger("fasl.test_logger", log_file)
    assert again is logger and len(logger.handlers) == 3  # stdout, stderr, file: no duplicates
    logger.info("hello %d", 42)
    logger.warning("careful")
    for h in logger.handlers:
        h.flush()
    captured = capsys.readouterr()
    assert "INFO fasl.test_logger: hello 42" in captured.out and "careful" not in captured.out
    assert "WARNING fasl.test_logger: careful" in captured.err and "hello" not in captured.err
    assert "hello 42" in log_file.read_text() and "careful" in log_file.read_text()
    import warnings
    with warnings.catch_warnings():  # pytest swaps warnings.showwarning per test: hook it afresh here
        warnings.simplefilter("always")
        logging.captureWarnings(False)
        get_logger("fasl.test_logger", log_file)
        warnings.warn("from the library")  # library warnings reach the run's log too
        logging.captureWarnings(False)
    assert "from the library" in log_file.read_text()
    logger.debug("hidden")
    assert "hidden" not in log_file.read_text()
    for h in list(logger.handlers):  # keep other tests' output clean
        logger.removeHandler(h)
        h.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_rss_bytes():
    with open("/proc/self/status") as f:
        current_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    peak = peak_rss_bytes()
    assert peak >= current_kib * 1024 > 0


def test_class_range_and_colour_bar():
    maps = np.zeros((4, 10, 10))
    maps[0, 0, 0] = 100.0  # one extreme pixel of 400 does not set the scale
    maps[1:] = np.linspace(0.0, 0.3, 100).reshape(10, 10)
    lo, hi = class_range(maps)
    assert lo == 0.0 and 0.29 < hi < 100
    assert class_range(np.full((2, 3, 3), 0.2)) == (0.2, 0.2 + 1e-6)
    bar = colour_bar(120, 0.0, 0.3)
    assert bar.shape == (120, 56, 3) and bar.dtype == np.uint8
    assert bar[0, 0, 0] >= 120 and bar[0, 0, 2] == 0  # top: (dark) red = hi
    assert bar[-1, 0, 2] >= 120 and bar[-1, 0, 0] == 0  # bottom: (dark) blue = lo
    assert (bar[:, 20:] < 128).any()  # the labels
    image = np.full((120, 80, 3), 128, np.uint8)
    small = np.full((120, 80), 0.05)
    small[40:60, 30:50] = 0.3
    # an FD-like map of small values, on its class's scale, is no longer all blue
    out = triptych(image, None, small, (0.0, 0.3))
    assert out.shape == (120, 3 * 80 + 56, 3)
    heat = out[:, 160:240].astype(int)
    assert heat[50, 40, 0] > heat[5, 5, 0] + 50


@pytest.mark.parametrize("lo, hi", [(0.00142, 0.00305), (-0.000123, 12345.6), (0.0, 0.3)])
def test_colour_bar_labels_are_never_cut(lo, hi):
    """Every label is drawn whole: no ink in the panel's last columns, and the panel widens for
    a long label ('0.00142' was cut to '0.0014' at the 56 px default)."""
    bar = colour_bar(240, lo, hi)
    assert bar.shape[1] >= 56
    ink = (bar[:, 14:] < 200).any(axis=(0, 2))  # columns right of the colour ramp holding text
    assert ink.any() and not ink[-2:].any()
    if len(f"{lo:.3g}") > 5:
        assert bar.shape[1] > 56
