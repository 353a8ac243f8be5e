"""Synthetic defects (data/anomaly_synthesis.py), the dataset that draws them
(data/synthetic_train.py) and ``train.py --anomaly_source synthetic`` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.anomaly_synthesis import (KINDS, SynthesisConfig, blob_mask, clean_indices, cutpaste,
                                    draw_area, keep_clean, noise_blob, parse_kinds, perlin_noise,
                                    synthesize)
from data.meta import load_meta
from data.synthetic import generate
from data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, list_images
from data.synthetic_train import (SynthesizedAnomalyDataset,
                                  relative_to_common_root, split_references)

TINY = ["--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112",
        "--features_list", "1", "2", "3", "4", "--device", "cpu"]


def textured(h=64, w=64, seed=0):
    """A smooth colour gradient with pixel noise, uint8 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([x, y, 0.5 + 0.3 * np.sin(6 * x * y)], axis=-1) * 200 + rng.normal(0, 8, (h, w, 3))
    return np.clip(base + 20, 0, 255).astype(np.uint8)


IMAGES = {
    "textured": textured(),
    "flat": np.full((48, 48, 3), 77, np.uint8),        # a pasted patch equals the original
    "white": np.full((40, 56, 3), 255, np.uint8),      # nudging must go down at 255
    "gray": np.repeat(textured(32, 32, 1)[..., :1], 3, axis=2),
}


def assert_exact(result, image):
    assert result.image.dtype == np.uint8 and result.image.shape == image.shape
    assert result.mask.dtype == bool and result.mask.shape == image.shape[:2]
    np.testing.assert_array_equal(result.mask, (result.image != image).any(-1))


# ----------------------------------------------------------------------------- pure synthesis
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_mask_is_exactly_the_changed_pixels(name):
    image = IMAGES[name]
    before = image.copy()
    kinds = set()
    for seed in range(40):
        result = synthesize(image, np.random.default_rng(seed), SynthesisConfig(), source=IMAGES["textured"])
        assert_exact(result, image)
        assert result.mask.any()
        kinds.add(result.kind)
    assert kinds == set(KINDS)
    np.testing.assert_array_equal(image, before)  # the input is never written to


def test_each_kind_alone_keeps_the_invariant():
    image = IMAGES["textured"]
    for seed in range(20):
        for area in (0.001, 0.05, 0.3):
            assert_exact(cutpaste(image, np.random.default_rng(seed), area), image)
            assert_exact(noise_blob(image, np.random.default_rng(seed), area, IMAGES["flat"]), image)
            assert_exact(noise_blob(image, np.random.default_rng(seed), area), image)


def test_clean_image_is_unchanged():
    result = keep_clean(IMAGES["textured"])
    assert result.kind == "clean" and not result.mask.any()
    np.testing.assert_array_equal(result.image, IMAGES["textured"])


def test_same_seed_same_output_other_seed_differs():
    image, source = IMAGES["textured"], textured(seed=5)
    for seed in range(10):
        a = synthesize(image, np.random.default_rng([3, seed]), source=source)
        b = synthesize(image, np.random.default_rng([3, seed]), source=lambda: source)  # lazy source
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.kind == b.kind
    outs = {synthesize(image, np.random.default_rng(s)).image.tobytes() for s in range(10)}
    assert len(outs) == 10


def test_small_and_large_defects_both_occur():
    image = textured(128, 128)
    cfg = SynthesisConfig()
    areas = {k: [] for k in KINDS}
    for seed in range(200):
        r = synthesize(image, np.random.default_rng(seed), cfg, source=IMAGES["flat"])
        areas[r.kind].append(r.mask.mean())
    for kind, a in areas.items():
        a = np.asarray(a)
        assert (a < 0.01).mean() > 0.25, kind   # about half are drawn from small_area
        assert (a > 0.02).mean() > 0.25, kind   # and half from large_area
    drawn = [draw_area(np.random.default_rng(s), SynthesisConfig(small_rate=1.0)) for s in range(50)]
    assert min(drawn) >= 0.001 and max(drawn) <= 0.01


def test_blob_is_close_to_the_requested_area():
    for area in (0.002, 0.02, 0.1):
        got = np.mean([blob_mask((200, 200), area, np.random.default_rng(s)).mean() for s in range(30)])
        assert area / 2.5 < got < area * 2.5


def test_clean_indices_hold_the_fraction_exactly():
    for n, rate in [(10, 0.3), (7, 0.5), (100, 0.0), (5, 1.0), (1, 0.3)]:
        clean = clean_indices(n, rate, np.random.default_rng(n))
        assert clean.shape == (n,) and clean.sum() == round(rate * n)
    a = clean_indices(50, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(a, clean_indices(50, 0.3, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="clean_rate"):
        clean_indices(5, 1.5, np.random.default_rng(0))


def test_perlin_noise():
    n = perlin_noise((40, 60), (4, 6), np.random.default_rng(0))
    assert n.shape == (40, 60) and n.dtype == np.float32
    assert np.abs(n).max() <= 1.0 + 1e-5 and n.std() > 0.05
    np.testing.assert_allclose(n[::10, ::10], 0, atol=1e-6)  # zero on the lattice points
    np.testing.assert_array_equal(n, perlin_noise((40, 60), (4, 6), np.random.default_rng(0)))


def test_config_errors():
    with pytest.raises(ValueError, match="kinds"):
        SynthesisConfig(kinds=("scratch",))
    with pytest.raises(ValueError, match="kinds"):
        parse_kinds("")
    assert parse_kinds("noise, cutpaste,noise") == ("noise", "cutpaste")
    with pytest.raises(ValueError, match="small_area"):
        SynthesisConfig(small_area=(0.1, 0.01))
    with pytest.raises(ValueError, match="uint8"):
        synthesize(np.zeros((32, 32), np.uint8), np.random.default_rng(0))


# ----------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "mvtec", "mvtec", seed=0, classes=2, n_train=5,
                    n_test=6, size=112)


def _dataset(root, **kw):
    meta = load_meta(root)
    kw = {"image_size": 112, "clean_rate": 0.4, "seed": 3, "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD, **kw}
    return SynthesizedAnomalyDataset.from_meta(root, meta, sorted(meta["train"]), **kw)


def test_dataset_clean_fraction_masks_and_labels(mvtec):
    ds = _dataset(mvtec)
    assert len(ds) == 10 and ds.classes == ["disc", "weave"]
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        items = [ds[i] for i in range(len(ds))]
        clean = [i for i, s in enumerate(items) if s.mask.sum() == 0]
        assert len(clean) == 4 and clean == list(np.flatnonzero(ds.clean))
        assert [s.anomaly for s in items] == [int(i not in clean) for i in range(len(ds))]
        for i in range(len(ds)):
            image, syn = ds.synthesized(i)
            np.testing.assert_array_equal(syn.mask, (syn.image != image).any(-1))
            np.testing.assert_array_equal(items[i].mask[0].numpy().astype(bool), syn.mask)
            assert items[i].image.shape == (3, 112, 112)


def test_dataset_is_a_function_of_seed_epoch_index(mvtec):
    a, b = _dataset(mvtec), _dataset(mvtec)
    b.set_epoch(1)
    b.set_epoch(0)
    for i in (0, 3, 7):
        assert torch.equal(a[i].image, b[i].image) and torch.equal(a[i].mask, b[i].mask)
    b.set_epoch(1)
    assert any(not torch.equal(a[i].mask, b[i].mask) for i in range(len(a)))
    c = _dataset(mvtec, seed=4)
    assert any(not torch.equal(a[i].mask, c[i].mask) for i in range(len(a)))


def test_references_left_out_when_enough_images(mvtec):
    meta = load_meta(mvtec)
    refs = {"disc": ["disc/train/good/001.png"], "weave": ["weave/train/good/000.png"]}
    ds = SynthesizedAnomalyDataset.from_meta(mvtec, meta, ["disc", "weave"], exclude=refs, image_size=112,
                                             mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    paths = [p for p, _ in ds.samples]
    assert len(paths) == 8 and not set(paths) & {refs["disc"][0], refs["weave"][0]}
    assert split_references(["a", "b", "c"], ["a"]) == ["b", "c"]
    assert split_references(["a", "b"], ["a"]) == ["a", "b"]  # one left: keep the reference


def test_list_images(mvtec, tmp_path):
    folder = mvtec / "disc" / "train" / "good"
    files = list_images(str(folder), "--train_images")
    assert len(files) == 5 and files == sorted(files)
    assert list_images(str(folder / "00[01].png")) == files[:2]
    (tmp_path / "list.txt").write_text(f"# good parts\n{files[3]}\n{files[0]}\n")
    assert list_images([str(tmp_path / "list.txt"), str(files[0])]) == [files[3], files[0]]
    root, rel = relative_to_common_root(files[:2] + list_images(str(mvtec / "weave" / "train")))
    assert root == Path(mvtec).resolve() and rel[0] == "disc/train/good/000.png"
    with pytest.raises(FileNotFoundError, match="--train_images: .*nothing is no file, folder or pattern"):
        list_images(str(tmp_path / "nothing"), "--train_images")
    (tmp_path / "bad.txt").write_text("missing.png\n")
    with pytest.raises(FileNotFoundError, match="lists 1 missing file.*missing.png"):
        list_images(str(tmp_path / "bad.txt"))


# ----------------------------------------------------------------------------- train.py end to end
@pytest.fixture(scope="module")
def synthetic_ckpt(mvtec, tmp_path_factory):
    import train

    save = tmp_path_factory.mktemp("ckpt_synthetic")
    path = train.main(["--anomaly_source", "synthetic", "--train_data_path", str(mvtec), "--save_path", str(save),
                       "--epoch", "1", "--batch_size", "5", "--seed", "5", "--clean_rate", "0.25", *TINY])
    return Path(path)


def test_train_synthetic_writes_a_checkpoint(synthetic_ckpt):
    state = torch.load(synthetic_ckpt, map_location="cpu", weights_only=True)
    assert state["anomaly_source"] == "synthetic" and state["clean_rate"] == 0.25
    assert state["synth_kinds"] == "cutpaste,noise" and state["epoch"] == 1
    args = json.loads((synthetic_ckpt.parent / "train_args.json").read_text())
    assert args["anomaly_source"] == "synthetic" and args["clean_rate"] == 0.25
    refs = json.loads((synthetic_ckpt.parent / "references.json").read_text())["references"]
    assert sorted(refs) == ["disc", "weave"]


def test_test_few_shot_accepts_synthetic_checkpoint(mvtec, synthetic_ckpt, tmp_path):
    import test_few_shot

    common = ["--data_path", str(mvtec), "--dataset", "mvtec", "--eval_size", "56", *TINY]
    results = test_few_shot.main([*common, "--save_path", str(tmp_path / "fasl"), "--checkpoint_path",
                                  str(synthetic_ckpt), "--mode", "fasl"])
    fd = test_few_shot.main([*common, "--save_path", str(tmp_path / "fd"), "--mode", "fd"])
    assert sorted(results) == sorted(fd) == ["disc", "weave"]
    doc = json.loads((tmp_path / "fasl" / "results.json").read_text())
    assert doc["extra"]["args"]["checkpoint_path"] == str(synthetic_ckpt) and doc["extra"]["args"]["mode"] == "fasl"
    for cls, r in results.items():
        assert doc["per_class"][cls]["pixel_auroc"] == pytest.approx(r["pixel_auroc"])
        assert r["pixel_auroc"] != 0.5  # not a constant map
    # the synthetic checkpoint's heads make the maps: not the training-free FD map
    assert any(results[c]["pixel_auroc"] != pytest.approx(fd[c]["pixel_auroc"], abs=1e-6) for c in results)


def test_predict_accepts_synthetic_checkpoint(mvtec, synthetic_ckpt, tmp_path):
    import csv

    import predict

    holes = sorted((mvtec / "disc" / "test" / "hole").glob("*.png"))
    common = ["--refs", str(mvtec / "disc" / "train" / "good" / "000.png"), "--images",
              str(mvtec / "disc" / "test" / "hole"), *TINY]
    predict.main([*common, "--out", str(tmp_path / "fasl"), "--checkpoint_path", str(synthetic_ckpt), "--mode", "fasl"])
    predict.main([*common, "--out", str(tmp_path / "fd"), "--mode", "fd"])
    doc = json.loads((tmp_path / "fasl" / "predictions.json").read_text())
    assert doc["model"]["inference"]["mode"] == "fasl"
    assert doc["settings"]["checkpoint_path"] == str(synthetic_ckpt)
    with open(tmp_path / "fasl" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == [p.name for p in holes] and holes
    assert all(r["read_status"] == "scored" and np.isfinite(float(r["score"])) for r in rows)
    fd_scores = {i["path"]: i["score"] for i in json.loads((tmp_path / "fd" / "predictions.json").read_text())["images"]}
    assert any(i["score"] != pytest.approx(fd_scores[i["path"]], abs=1e-6) for i in doc["images"])  # the heads' scores


def test_train_on_a_plain_folder(mvtec, tmp_path):
    import train

    folder = mvtec / "weave" / "train" / "good"
    path = train.main(["--anomaly_source", "synthetic", "--train_images", str(folder), "--class_name", "weave",
                       "--save_path", str(tmp_path), "--epoch", "1", "--batch_size", "4", "--k_shot", "2", *TINY])
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["anomaly_source"] == "synthetic" and state["dataset"] == "custom"
    doc = json.loads((tmp_path / "references.json").read_text())
    assert doc["info"]["root"] == str(folder.resolve()) and len(doc["references"]["weave"]) == 2
    assert "3 images, 1 classes" in (tmp_path / "train.log").read_text()  # 5 - 2 references


def test_train_flag_errors(capsys):
    import train

    for argv, match in [(["--train_images", "x", "--save_path", "y"], "use it with --anomaly_source synthetic"),
                        (["--save_path", "y"], "--train_data_path is required"),
                        (["--anomaly_source", "synthetic", "--train_data_path", "x", "--save_path", "y",
                          "--synth_kinds", "scratch"], "--synth_kinds"),
                        (["--anomaly_source", "synthetic", "--train_data_path", "x", "--save_path", "y",
                          "--clean_rate", "2"], "--clean_rate")]:
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert match in capsys.readouterr().err
