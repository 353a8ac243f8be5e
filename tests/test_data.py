"""Tests of the data layer: builders, meta.json, Dataset, k-shot, augmentations, synthetic data.

Everything is written to tmp_path; no network.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data import mvtec, synthetic, visa
from data.augment import CROP_SIDE, SMALL_CROP_SIDE, defect_crop_box, quadrant_sizes, tile_2x2
from data.dataset import AnomalyDataset, Sample
from data.images import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageReadError, load_image,
                         load_mask, resize_mask)
from data.kshot import (load_kshot, load_reference_images, sample_kshot, save_kshot,
                        stable_hash)
from data.meta import MetaError, load_meta

REPO = Path(__file__).resolve().parent.parent
CLIP = dict(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)  # every loader takes its backbone's normalisation


# ---------------------------------------------------------------- tiny trees
def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def _square_image(h, w, box, colour=(255, 0, 0), gray=False, seed=0):
    """Dark noisy image with a coloured square at box = (x0, y0, x1, y1); returns (img, mask)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = colour
        mask[y0:y1, x0:x1] = 255
    return (img[..., 0] if gray else img), mask


def make_mvtec_tree(root):
    """Two classes: 'bottle' (RGB 32×32) and 'my_widget' (grayscale, non-square 40 w × 24 h).

    In bottle/test/crack the images 'a.png' and 'a_b.png' sort one way and their masks
    'a_mask.png', 'a_b_mask.png' the other way, so pairing by position would be wrong.
    """
    for i in range(3):
        _png(root / "bottle/train/good" / f"{i:03d}.png", _square_image(32, 32, None, seed=i)[0])
    _png(root / "bottle/test/good/000.png", _square_image(32, 32, None, seed=9)[0])
    for name, box in (("a", (2, 2, 8, 8)), ("a_b", (20, 20, 30, 30))):
        img, mask = _square_image(32, 32, box)
        _png(root / "bottle/test/crack" / f"{name}.png", img)
        _png(root / "bottle/ground_truth/crack" / f"{name}_mask.png", mask)
    for i in range(2):
        _png(root / "my_widget/train/good" / f"{i:03d}.png",
             _square_image(24, 40, None, gray=True, seed=i)[0])
    _png(root / "my_widget/test/good/000.png", _square_image(24, 40, None, gray=True)[0])
    img, mask = _square_image(24, 40, (30, 4, 38, 12), colour=(255, 255, 255), gray=True)
    _png(root / "my_widget/test/dent/000.png", img)
    _png(root / "my_widget/ground_truth/dent/000_mask.png", mask)
    (root / "not_a_class/test").mkdir(parents=True)  # no train/good: ignored
    (root / "README.txt").write_text("not a class")
    return root


def make_visa_tree(root):
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        _png(root / rel, _square_image(30, 50, None, seed=i)[0])
        rows.append(f"candle,{'train' if i < 2 else 'test'},normal,{rel},")
    img, mask = _square_image(30, 50, (5, 5, 15, 12))
    _png(root / "candle/Data/Images/Anomaly/000.JPG", img)
    _png(root / "candle/Data/Masks/Anomaly/000.png", mask)
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,"
                "candle/Data/Masks/Anomaly/000.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def mvtec_root(tmp_path):
    root = make_mvtec_tree(tmp_path / "mvtec")
    mvtec.main(["--data_root", str(root)])
    return root


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """Small synthetic datasets of both layouts (2 classes, 4 train + 6 test each)."""
    base = tmp_path_factory.mktemp("syn")
    return {layout: synthetic.generate(base / layout, layout, seed=3, classes=2, n_train=4,
                                       n_test=6)
            for layout in ("mvtec", "visa")}


def _unnormalise(image):
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return (image * std + mean) * 255


def _iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


# ---------------------------------------------------------------- MVTec builder
def test_mvtec_builder_schema_and_pairing(mvtec_root):
    meta = json.loads((mvtec_root / "meta.json").read_text())
    assert list(meta) == ["train", "test"]
    assert list(meta["test"]) == ["bottle", "my_widget"]  # not_a_class ignored
    assert [s["img_path"] for s in meta["train"]["bottle"]] == [
        "bottle/train/good/000.png", "bottle/train/good/001.png", "bottle/train/good/002.png"]
    test = {s["img_path"]: s for s in meta["test"]["bottle"]}
    assert test["bottle/test/crack/a.png"]["mask_path"] == "bottle/ground_truth/crack/a_mask.png"
    assert test["bottle/test/crack/a_b.png"]["mask_path"] == \
        "bottle/ground_truth/crack/a_b_mask.png"
    assert test["bottle/test/good/000.png"] == {
        "img_path": "bottle/test/good/000.png", "mask_path": "", "cls_name": "bottle",
        "specie_name": "good", "anomaly": 0}
    dent = meta["test"]["my_widget"][0]
    assert (dent["specie_name"], dent["anomaly"], dent["cls_name"]) == ("dent", 1, "my_widget")
    for split in meta.values():
        for samples in split.values():
            for s in samples:
                assert list(s) == ["img_path", "mask_path", "cls_name", "specie_name", "anomaly"]
    assert load_meta(mvtec_root) == meta


def test_mvtec_builder_rerun_byte_identical(mvtec_root):
    first = (mvtec_root / "meta.json").read_bytes()
    mvtec.main(["--data_root", str(mvtec_root)])
    assert (mvtec_root / "meta.json").read_bytes() == first


def test_builders_run_as_scripts_from_root_and_from_data(mvtec_root, tmp_path):
    expected = (mvtec_root / "meta.json").read_bytes()
    (mvtec_root / "meta.json").unlink()
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "data/mvtec.py", "--data_root", str(mvtec_root)], cwd=REPO,
                   check=True, capture_output=True, env=env)
    assert (mvtec_root / "meta.json").read_bytes() == expected
    vroot = make_visa_tree(tmp_path / "visa")
    subprocess.run([sys.executable, "visa.py", "--data_root", str(vroot)], cwd=REPO / "data",
                   check=True, capture_output=True, env=env)
    assert load_meta(vroot)["test"]["candle"][0]["anomaly"] == 1


def test_mvtec_builder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found.*nowhere"):
        mvtec.main(["--data_root", str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders under .*empty"):
        mvtec.build_mvtec_meta(tmp_path / "empty")

    root = make_mvtec_tree(tmp_path / "nomask")
    (root / "bottle/ground_truth/crack/a_b_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask for defect image .*a_b\.png.*"
                                                r"a_b_mask\.png"):
        mvtec.build_mvtec_meta(root)

    root = make_mvtec_tree(tmp_path / "emptyclass")
    for p in (root / "my_widget/train/good").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="'my_widget' has no training images in .*good"):
        mvtec.build_mvtec_meta(root)


def test_cli_help(capsys):
    for mod in (mvtec, visa, synthetic):
        with pytest.raises(SystemExit) as exc:
            mod.parse_args(["--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


# ---------------------------------------------------------------- VisA builder
def test_visa_builder(tmp_path):
    root = make_visa_tree(tmp_path / "visa")
    visa.main(["--data_root", str(root)])
    meta = load_meta(root)
    assert [s["img_path"] for s in meta["train"]["candle"]] == [
        "candle/Data/Images/Normal/0000.JPG", "candle/Data/Images/Normal/0001.JPG"]
    anomalous = [s for s in meta["test"]["candle"] if s["anomaly"]]
    assert anomalous == [{"img_path": "candle/Data/Images/Anomaly/000.JPG",
                          "mask_path": "candle/Data/Masks/Anomaly/000.png",
                          "cls_name": "candle", "specie_name": "anomaly", "anomaly": 1}]
    assert len(meta["test"]["candle"]) == 2
    first = (root / "meta.json").read_bytes()
    visa.main(["--data_root", str(root), "--split", str(root / "split_csv/1cls.csv")])
    assert (root / "meta.json").read_bytes() == first


def test_visa_builder_errors(tmp_path):
    root = make_visa_tree(tmp_path / "visa")
    with pytest.raises(FileNotFoundError, match="spot-diff"):
        visa.main(["--data_root", str(root), "--split", str(root / "missing.csv")])
    (root / "candle/Data/Masks/Anomaly/000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask not found: .*Masks/Anomaly/000\.png"):
        visa.build_visa_meta(root)
    (root / "candle/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 3: image not found: .*0001\.JPG"):
        visa.build_visa_meta(root)
    csv = root / "split_csv/1cls.csv"
    csv.write_text(csv.read_text().replace("train,normal", "train,weird", 1))
    with pytest.raises(ValueError, match="line 2: label must be 'normal' or 'anomaly'"):
        visa.build_visa_meta(root)
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        visa.build_visa_meta(tmp_path / "nope")


def test_visa_builder_on_synthetic_output(syn):
    root = syn["visa"]
    generated = (root / "meta.json").read_bytes()
    visa.main(["--data_root", str(root)])
    assert (root / "meta.json").read_bytes() == generated
    meta = load_meta(root)
    assert sorted(meta["test"]) == ["blobs", "pcb"]
    for cls in meta["test"]:
        assert len(meta["train"][cls]) == 4 and len(meta["test"][cls]) == 6
        assert sum(s["anomaly"] for s in meta["test"][cls]) == 4
        for s in meta["test"][cls]:
            assert (root / s["img_path"]).is_file()


# ---------------------------------------------------------------- meta.json reader
def test_load_meta_errors(mvtec_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python data/mvtec\.py --data_root .*python "
                                                r"data/visa\.py --data_root"):
        load_meta(tmp_path)
    meta = load_meta(mvtec_root)

    def broken(edit):
        m = json.loads(json.dumps(meta))
        edit(m)
        (mvtec_root / "meta.json").write_text(json.dumps(m))
        return pytest.raises(MetaError)

    with broken(lambda m: m["test"]["bottle"][1].pop("anomaly")) as err:
        load_meta(mvtec_root)
    assert "test/bottle[1]" in str(err.value) and "missing key 'anomaly'" in str(err.value)
    with broken(lambda m: m["train"]["bottle"][0].update(anomaly=2)) as err:
        load_meta(mvtec_root)
    assert "train/bottle[0]" in str(err.value) and "'anomaly' must be 0 or 1" in str(err.value)
    with broken(lambda m: m["test"]["bottle"][0].update(cls_name="cable")) as err:
        load_meta(mvtec_root)
    assert "listed under class 'bottle'" in str(err.value)
    with broken(lambda m: m.pop("train")):
        load_meta(mvtec_root)
    (mvtec_root / "meta.json").write_text("{not json")
    with pytest.raises(MetaError, match="not valid JSON"):
        load_meta(mvtec_root)


# ---------------------------------------------------------------- loading
def test_dataset_shapes_values_and_normalisation(mvtec_root):
    ds = AnomalyDataset(mvtec_root, "test", image_size=16, mask_size=8, **CLIP)
    assert len(ds) == 5
    for i in range(len(ds)):
        s = ds[i]
        assert isinstance(s, Sample)
        assert s.image.shape == (3, 16, 16) and s.image.dtype == torch.float32
        assert s.mask.shape == (1, 8, 8) and s.mask.dtype == torch.float32
        assert set(s.mask.unique().tolist()) <= {0.0, 1.0}
        assert (s.mask.sum() > 0) == bool(s.anomaly)
    s = ds[0]
    assert s.img_path == "bottle/test/crack/a.png" and s.cls_name == "bottle" and s.anomaly == 1
    # normalisation of one pixel, computed by hand from a PIL bicubic resize
    ref = np.asarray(Image.open(mvtec_root / s.img_path).convert("RGB")
                     .resize((16, 16), Image.BICUBIC), dtype=np.float64)
    for c in range(3):
        expect = (ref[5, 7, c] / 255 - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c]
        assert s.image[c, 5, 7].item() == pytest.approx(expect, abs=1e-5)
    # custom mean/std are used
    s2 = AnomalyDataset(mvtec_root, "test", image_size=16, mean=(0, 0, 0), std=(1, 1, 1))[0]
    assert s2.image[0, 5, 7].item() == pytest.approx(ref[5, 7, 0] / 255, abs=1e-6)
    # grayscale class becomes 3 equal channels
    g = AnomalyDataset(mvtec_root, "train", classes="my_widget", image_size=16, **CLIP)[0]
    assert g.image.shape == (3, 16, 16)
    raw = g.image * torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1) + torch.tensor(
        OPENAI_CLIP_MEAN).view(3, 1, 1)
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)


def test_dataset_batches_with_default_collate(mvtec_root):
    ds = AnomalyDataset(mvtec_root, "test", classes=["my_widget", "bottle"], image_size=16, **CLIP)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert isinstance(batch, Sample)
    assert batch.image.shape == (4, 3, 16, 16) and batch.mask.shape == (4, 1, 16, 16)
    assert list(batch.cls_name) == ["my_widget"] * 2 + ["bottle"] * 2
    assert batch.anomaly.tolist() == [1, 0, 1, 1]
    with pytest.raises(ValueError, match=r"\['cable'\] not in the test split"):
        AnomalyDataset(mvtec_root, "test", classes="cable", **CLIP)


def test_non_square_mask_lands_in_place(mvtec_root):
    # my_widget/test/dent: 40 w × 24 h, white square at x 30..38, y 4..12
    ds = AnomalyDataset(mvtec_root, "test", classes="my_widget", image_size=20, mask_size=20, **CLIP)
    s = ds[0]
    assert s.img_path == "my_widget/test/dent/000.png"
    expect = np.zeros((20, 20), bool)
    expect[round(4 * 20 / 24):round(12 * 20 / 24), 15:19] = True  # x scaled by 1/2, y by 5/6
    assert np.array_equal(s.mask[0].numpy().astype(bool), expect)
    bright = _unnormalise(s.image)[0].numpy() > 128
    assert _iou(bright, expect) > 0.7


def test_resize_mask_alignment_upscale_and_downscale():
    mask = np.zeros((256, 256), bool)
    mask[40:80, 100:140] = True
    up = resize_mask(mask, 518)
    rows, cols = np.nonzero(up.any(1))[0], np.nonzero(up.any(0))[0]
    f = 518 / 256
    assert abs(rows[0] - 40 * f) <= 1 and abs(rows[-1] + 1 - 80 * f) <= 1
    assert abs(cols[0] - 100 * f) <= 1 and abs(cols[-1] + 1 - 140 * f) <= 1
    assert up.sum() == pytest.approx(40 * 40 * f * f, rel=0.05)
    down = resize_mask(mask, 64)
    expect = np.zeros((64, 64), bool)
    expect[10:20, 25:35] = True
    assert np.array_equal(down, expect)
    box = resize_mask(mask, (20, 20), box=(100, 40, 140, 80))  # crop exactly the square
    assert box.all()


def test_load_image_and_mask_errors(mvtec_root, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image(bad)
    with pytest.raises(ImageReadError, match="file not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    good = mvtec_root / "bottle/test/crack/a.png"
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="trunc.png"):
        load_image(trunc)
    assert load_image(mvtec_root / "my_widget/test/good/000.png").mode == "RGB"
    assert not load_mask("", (3, 4)).any() and load_mask("", (3, 4)).shape == (3, 4)
    mask_path = mvtec_root / "bottle/ground_truth/crack/a_mask.png"
    with pytest.raises(ImageReadError, match=r"a_mask\.png.*\(32, 32\).*b\.png.*\(10, 10\)"):
        load_mask(mask_path, (10, 10), image_path="b.png")


def test_dataset_names_corrupt_image_and_mismatched_mask(mvtec_root):
    (mvtec_root / "bottle/test/good/000.png").write_bytes(b"\x89PNG garbage")
    ds = AnomalyDataset(mvtec_root, "test", classes="bottle", image_size=16, **CLIP)
    idx = [s["img_path"] for s in ds.samples].index("bottle/test/good/000.png")
    with pytest.raises(ImageReadError, match=r"bottle/test/good/000\.png"):
        ds[idx]
    _png(mvtec_root / "bottle/ground_truth/crack/a_mask.png", np.zeros((16, 16)))
    with pytest.raises(ImageReadError, match=r"a_mask\.png.*crack/a\.png"):
        ds[0]


# ---------------------------------------------------------------- augmentation
def _square_dataset(root, n=6, h=48, w=64):
    """One class 'sq', every test image with a red square (its mask) at a different place."""
    rng = np.random.default_rng(0)
    for i in range(2):
        _png(root / "sq/train/good" / f"{i:03d}.png", _square_image(h, w, None)[0])
    for i in range(n):
        x0, y0 = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
        img, mask = _square_image(h, w, (x0, y0, x0 + 12, y0 + 10), seed=i)
        _png(root / "sq/test/red" / f"{i:03d}.png", img)
        _png(root / "sq/ground_truth/red" / f"{i:03d}_mask.png", mask)
    mvtec.main(["--data_root", str(root)])
    return root


def _red(image):
    x = _unnormalise(image).numpy()
    return (x[0] > 128) & (x[1] < 100)


def test_mosaic_keeps_masks_on_their_squares(tmp_path):
    root = _square_dataset(tmp_path / "sq")
    ds = AnomalyDataset(root, "test", image_size=64, aug_rate=1.0, seed=1, **CLIP)
    for i in range(len(ds)):
        s = ds[i]
        mask = s.mask[0].numpy().astype(bool)
        assert _iou(_red(s.image), mask) > 0.8
        # each of the four tiles holds one (downscaled) square
        for qy in (slice(0, 32), slice(32, 64)):
            for qx in (slice(0, 32), slice(32, 64)):
                # a 12×10 square scaled by (32/64, 32/48) covers about 40 pixels
                assert 25 <= mask[qy, qx].sum() <= 60
        assert s.anomaly == 1


def test_crop_keeps_defect_and_mask_aligned(tmp_path):
    root = _square_dataset(tmp_path / "sq")
    plain = AnomalyDataset(root, "test", image_size=64, **CLIP)
    ds = AnomalyDataset(root, "test", image_size=64, crop_rate=1.0, seed=2, **CLIP)
    cropped = whole = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            mask = s.mask[0].numpy().astype(bool)
            assert mask.any(), "the crop lost the defect"
            assert _iou(_red(s.image), mask) > 0.6
            cropped, whole = cropped + mask.sum(), whole + plain[i].mask.sum()
    # crops of 6 or 12 px zoomed to 64: squares fill far more of the picture
    assert cropped > 2 * whole


def test_defect_crop_box_follows_the_reference():
    """Sides 100 / 50 px at 518, the small one at rate small_rate on defects; a good image is
    cropped half of the time; a defect crop is uniform over the positions holding defect pixels."""
    rng = np.random.default_rng(0)
    mask = np.zeros((518, 518), bool)
    mask[300, 400] = True
    sides = []
    for _ in range(400):
        x0, y0, x1, y1 = defect_crop_box(mask, rng, small_rate=0.6)
        assert x1 - x0 == y1 - y0 and x0 <= 400 < x1 and y0 <= 300 < y1
        sides.append(x1 - x0)
    assert set(sides) == {50, 100} and 0.5 < sides.count(50) / len(sides) < 0.7
    assert round(518 * CROP_SIDE) == 100 and round(518 * SMALL_CROP_SIDE) == 50
    good = [defect_crop_box(np.zeros((518, 518), bool), rng) for _ in range(400)]
    cropped = [b for b in good if b is not None]
    assert 0.4 < len(cropped) / len(good) < 0.6
    assert all(b[2] - b[0] == 100 and 0 <= b[0] and b[2] <= 518 and 0 <= b[1] and b[3] <= 518 for b in cropped)
    # uniform over the valid positions: at 52 px the small side is 5, the defect pixel (20, 30)
    # admits y0 in 16..20 and x0 in 26..30, 25 positions of equal chance
    mask = np.zeros((52, 52), bool)
    mask[20, 30] = True
    counts = {}
    for _ in range(5000):
        x0, y0, x1, y1 = defect_crop_box(mask, rng, small_rate=1.0)
        assert x1 - x0 == 5
        counts[(y0, x0)] = counts.get((y0, x0), 0) + 1
    assert set(counts) == {(y, x) for y in range(16, 21) for x in range(26, 31)}
    assert max(counts.values()) < 1.5 * 200 and min(counts.values()) > 0.5 * 200


def test_mosaic_draws_defect_kinds_uniformly(tmp_path):
    """The reference picks each tile's defect kind first: 1 red and 5 good images still give
    about as many red tiles as good ones."""
    root = tmp_path / "mix"
    for i in range(2):
        _png(root / "sq/train/good" / f"{i:03d}.png", _square_image(48, 64, None)[0])
    for i in range(5):
        _png(root / "sq/test/good" / f"{i:03d}.png", _square_image(48, 64, None, seed=i)[0])
    img, mask = _square_image(48, 64, (10, 10, 22, 20), seed=9)
    _png(root / "sq/test/red/000.png", img)
    _png(root / "sq/ground_truth/red/000_mask.png", mask)
    mvtec.main(["--data_root", str(root)])
    ds = AnomalyDataset(root, "test", image_size=32, aug_rate=1.0, seed=3, **CLIP)
    red_tiles = tiles = 0
    for epoch in range(25):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            m = ds[i].mask[0].numpy()
            for q in (m[:16, :16], m[:16, 16:], m[16:, :16], m[16:, 16:]):
                red_tiles += bool(q.any())
                tiles += 1
    assert 0.4 < red_tiles / tiles < 0.6


def test_quadrants_tile_exactly():
    assert quadrant_sizes(5, 7) == [(2, 3), (2, 4), (3, 3), (3, 4)]
    tiles = [np.full(hw, k) for k, hw in enumerate(quadrant_sizes(5, 7))]
    out = tile_2x2(tiles)
    assert out.shape == (5, 7) and out[0, 0] == 0 and out[0, 6] == 1 and out[4, 0] == 2 \
        and out[4, 6] == 3


def test_augmentation_reproducible_per_epoch(tmp_path):
    root = _square_dataset(tmp_path / "sq")
    kw = dict(image_size=32, aug_rate=0.5, crop_rate=0.5, seed=7)
    a, b = AnomalyDataset(root, "test", **kw, **CLIP), AnomalyDataset(root, "test", **kw, **CLIP)
    b.set_epoch(0)
    for i in (4, 0, 2):  # order does not matter
        assert torch.equal(a[i].image, b[i].image) and torch.equal(a[i].mask, b[i].mask)
    first = [a[i].image for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(x, a[i].image) for i, x in enumerate(first))
    a.set_epoch(0)
    assert all(torch.equal(x, a[i].image) for i, x in enumerate(first))


# ---------------------------------------------------------------- k-shot
def test_sample_kshot_deterministic_distinct_and_bounded(syn):
    meta = load_meta(syn["mvtec"])
    pool = {s["img_path"] for s in meta["train"]["disc"]}
    a = sample_kshot(meta, "disc", 3, seed=5)
    assert a == sample_kshot(meta, "disc", 3, seed=5)
    assert len(set(a)) == 3 and set(a) <= pool
    assert len({tuple(sample_kshot(meta, "disc", 2, seed=s)) for s in range(8)}) > 1
    with pytest.raises(ValueError, match="k=5 .*'disc'.*only 4 normal images"):
        sample_kshot(meta, "disc", 5, seed=0)
    with pytest.raises(ValueError, match="'nope' not in the train split"):
        sample_kshot(meta, "nope", 1, seed=0)
    assert stable_hash("disc") == stable_hash("disc") != stable_hash("weave")


def test_kshot_same_in_another_process(syn):
    """The draw must not depend on Python's per-process hash() salt."""
    code = ("import sys; from data.meta import load_meta; from data.kshot import sample_kshot;"
            f"print(sample_kshot(load_meta({str(syn['mvtec'])!r}), 'weave', 2, 11))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "999"}).stdout
    assert out.strip() == str(sample_kshot(load_meta(syn["mvtec"]), "weave", 2, 11))


def test_kshot_file_round_trip_and_reference_batch(syn, tmp_path):
    root = syn["mvtec"]
    meta = load_meta(root)
    refs = {c: sample_kshot(meta, c, 2, seed=0) for c in meta["train"]}
    path = save_kshot(tmp_path / "run/kshot.json", refs, {"k": 2, "seed": 0})
    assert json.loads(path.read_text())["info"] == {"k": 2, "seed": 0}
    assert load_kshot(path, meta) == refs
    bad = dict(refs, weave=["weave/train/good/999.png"])
    save_kshot(tmp_path / "bad.json", bad)
    with pytest.raises(ValueError, match=r"'weave/train/good/999\.png' of class 'weave'"):
        load_kshot(tmp_path / "bad.json", meta)
    batch = load_reference_images(root, refs["disc"], image_size=24, **CLIP)
    assert batch.shape == (2, 3, 24, 24) and batch.dtype == torch.float32
    ds = AnomalyDataset(root, "train", classes="disc", image_size=24, **CLIP)
    j = [s["img_path"] for s in ds.samples].index(refs["disc"][1])
    assert torch.equal(batch[1], ds[j].image)


# ---------------------------------------------------------------- synthetic data
def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_same_seed_same_bytes(tmp_path):
    for layout in ("mvtec", "visa"):
        a = _tree_bytes(synthetic.generate(tmp_path / f"a{layout}", layout, 1, 2, 3, 4))
        b = _tree_bytes(synthetic.main(["--out", str(tmp_path / f"b{layout}"), "--layout",
                                        layout, "--seed", "1", "--n_train", "3", "--n_test",
                                        "4"]))
        c = _tree_bytes(synthetic.generate(tmp_path / f"c{layout}", layout, 2, 2, 3, 4))
        assert a == b
        assert a.keys() == c.keys() and a != c


def test_synthetic_content(syn):
    m, v = syn["mvtec"], syn["visa"]
    meta_m, meta_v = load_meta(m), load_meta(v)
    # mvtec layout: 256×256 PNG, one grayscale (single-channel) texture + one colour object
    assert sorted(meta_m["test"]) == ["disc", "weave"]
    assert Image.open(m / meta_m["train"]["weave"][0]["img_path"]).mode == "L"
    assert Image.open(m / meta_m["train"]["disc"][0]["img_path"]).mode == "RGB"
    assert Image.open(m / meta_m["test"]["disc"][0]["img_path"]).size == (256, 256)
    for cls, samples in meta_m["test"].items():
        kinds = {s["specie_name"] for s in samples}
        assert "good" in kinds and len(kinds - {"good"}) >= 2
    # visa layout: non-square JPG (w × h = 320 × 240), PNG masks of 0/255, split csv
    assert (v / "split_csv/1cls.csv").is_file()
    s0 = meta_v["test"]["pcb"][0]
    assert s0["img_path"].startswith("pcb/Data/Images/Anomaly/") and s0["img_path"].endswith(
        ".JPG")
    assert s0["mask_path"].startswith("pcb/Data/Masks/Anomaly/")
    assert Image.open(v / s0["img_path"]).size == (320, 240)
    assert meta_v["train"]["pcb"][0]["img_path"].startswith("pcb/Data/Images/Normal/")
    for root, meta in ((m, meta_m), (v, meta_v)):
        for cls, samples in meta["test"].items():
            fractions = []
            for s in samples:
                if s["anomaly"]:
                    mask = np.asarray(Image.open(root / s["mask_path"]))
                    assert set(np.unique(mask)) == {0, 255}
                    fractions.append((mask > 0).mean())
            assert min(fractions) < 0.01, f"{cls}: no small defect"
            assert max(fractions) > min(fractions)


def test_synthetic_masks_are_exactly_the_drawn_pixels():
    for layout in ("mvtec", "visa"):
        for ci, spec in enumerate(synthetic.CLASSES[layout]):
            params = spec.params(np.random.default_rng([0, ci]))
            for k, kind in enumerate(synthetic.DEFECTS[layout]):
                rng = np.random.default_rng([1, ci, k])
                r = synthetic._normal(spec, params, 96, 128, rng)
                img, mask = synthetic._draw_defect(kind, r, rng, spec.gray)
                changed = (img != r.img).any(-1)
                assert mask.sum() >= 4
                assert np.array_equal(changed, mask), (layout, spec.name, kind)


def test_synthetic_normals_vary_but_stay_similar(syn):
    meta = load_meta(syn["mvtec"])
    imgs = [np.asarray(Image.open(syn["mvtec"] / s["img_path"]).convert("RGB"), np.float32)
            for s in meta["train"]["disc"]]
    diffs = [np.abs(imgs[0] - x).mean() for x in imgs[1:]]
    assert min(diffs) > 0.5  # not identical
    assert max(diffs) < 40  # same object on the same background


def test_synthetic_layouts_look_different(syn):
    def stats(root):
        meta = load_meta(root)
        imgs = [np.asarray(Image.open(root / s["img_path"]).convert("RGB"), np.float32) / 255
                for c in meta["train"] for s in meta["train"][c]]
        px = np.concatenate([x.reshape(-1, 3) for x in imgs])
        grad = np.mean([np.abs(np.diff(x, axis=1)).mean() for x in imgs])
        # mean colour, mean "saturation" (max - min channel), mean horizontal gradient
        return px.mean(0), (px.max(1) - px.min(1)).mean(), grad

    (mean_m, sat_m, grad_m), (mean_v, sat_v, grad_v) = stats(syn["mvtec"]), stats(syn["visa"])
    assert sat_v > sat_m + 0.08  # colourful vs grey/muted
    assert np.abs(mean_v - mean_m).max() > 0.1
    assert grad_m > 2 * grad_v  # woven/striped high-frequency vs smooth gradients


def test_data_never_imports_models():
    for path in (REPO / "data").glob("*.py"):
        text = path.read_text()
        assert "import models" not in text and "from models" not in text, path


def test_class_batches_hold_one_class_each_and_every_item_once():
    from data.dataset import class_batches

    classes = ["a"] * 7 + ["b"] * 3 + ["c"] * 9
    batches = class_batches(classes, 4, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(19))
    assert all(len({classes[i] for i in b}) == 1 and 1 <= len(b) <= 4 for b in batches)
    assert sorted(len(b) for b in batches) == [1, 3, 3, 4, 4, 4]  # a: 4+3, b: 3, c: 4+4+1
    again = class_batches(classes, 4, torch.Generator().manual_seed(0))
    assert again == batches and class_batches(classes, 4, torch.Generator().manual_seed(1)) != batches


def test_balanced_batches_draw_every_class_equally_often():
    from collections import Counter

    from data.dataset import balanced_batches

    classes = ["a"] * 60 + ["b"] * 20 + ["c"] * 10
    drawn = Counter()
    for seed in range(40):
        batches = balanced_batches(classes, 8, torch.Generator().manual_seed(seed))
        assert [len(b) for b in batches] == [8] * 11 + [2]  # the epoch keeps its 90 items
        drawn.update(classes[i] for b in batches for i in b)
    share = {c: n / sum(drawn.values()) for c, n in drawn.items()}
    assert all(abs(v - 1 / 3) < 0.03 for v in share.values()), share  # not 2/3, 2/9, 1/9
    again = balanced_batches(classes, 8, torch.Generator().manual_seed(0))
    assert again == balanced_batches(classes, 8, torch.Generator().manual_seed(0))
    assert again != balanced_batches(classes, 8, torch.Generator().manual_seed(1))


def test_loaders_require_the_backbones_normalisation(mvtec_root):
    """No loader falls back to CLIP's mean / std: a timm backbone's would silently be wrong."""
    from PIL import Image

    from data.dataset import load_test_images
    from data.images import image_to_tensor, normalize, normalize_tensor
    from data.synthetic_train import SynthesizedAnomalyDataset

    meta = load_meta(mvtec_root)
    cls = sorted(meta["test"])[0]
    calls = [lambda: AnomalyDataset(mvtec_root, "test", image_size=16),
             lambda: load_test_images(mvtec_root, meta, cls, 16, 16),
             lambda: load_reference_images(mvtec_root, [meta["train"][cls][0]["img_path"]], 16),
             lambda: SynthesizedAnomalyDataset(mvtec_root, [("x.png", cls)], image_size=16),
             lambda: image_to_tensor(Image.new("RGB", (8, 8)), 8),
             lambda: normalize(np.zeros((4, 4, 3), np.uint8)),
             lambda: normalize_tensor(torch.zeros(3, 4, 4))]
    for call in calls:
        with pytest.raises(TypeError, match="mean"):
            call()
    # and what is given is used: ImageNet's statistics give other tensors than CLIP's
    imagenet = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    a = AnomalyDataset(mvtec_root, "test", image_size=16, **CLIP)[0].image
    b = AnomalyDataset(mvtec_root, "test", image_size=16, **imagenet)[0].image
    assert not torch.allclose(a, b)


def test_texture_photographs_with_synthetic_defects(tmp_path):
    """data/textures.py: real photographs (scikit-image's), MVTec layout, exact masks, a lot for predict."""
    import cv2

    from data import textures
    from data.meta import load_meta

    root = textures.main(["--out", str(tmp_path / "t"), "--classes", "brick", "--n_train", "3", "--n_test", "6",
                          "--size", "64", "--lot", str(tmp_path / "lot")])
    meta = load_meta(root)
    test = meta["test"]["brick"]
    assert len(meta["train"]["brick"]) == 3 and len(test) == 6 and sum(s["anomaly"] for s in test) == 4
    photo = textures.photograph("brick")
    for s in test:
        img = cv2.imread(str(root / s["img_path"]), cv2.IMREAD_UNCHANGED)
        assert img.shape[:2] == (64, 64)
        if s["anomaly"]:
            mask = cv2.imread(str(root / s["mask_path"]), cv2.IMREAD_GRAYSCALE) > 0
            assert 0 < mask.sum() < 64 * 64 and set(s["specie_name"].split()) <= set(textures.KINDS)
    # a good view is a crop of the photograph, flipped / turned
    good = cv2.imread(str(root / "brick" / "train" / "good" / "000.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(good)) <= set(np.unique(photo))
    assert sorted(p.name for p in (tmp_path / "lot" / "refs").iterdir()) == ["brick.png"]
    assert len(list((tmp_path / "lot" / "images").iterdir())) == 2 + 6
    # the same seed gives the same bytes
    again = textures.generate(tmp_path / "u", ["brick"], seed=0, n_train=3, n_test=6, size=64)
    assert (again / "brick" / "test" / "noise" / "000.png").read_bytes() == \
        (root / "brick" / "test" / "noise" / "000.png").read_bytes()
    with pytest.raises(SystemExit):
        textures.parse_args(["--out", "x", "--lot", "y"])  # a lot from one class only
