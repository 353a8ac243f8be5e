"""predict.py on generated images with the tiny random-weight config, plus its pure helpers
(models/thresholds.py, utils/regions.py)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from data.images import ImageReadError, list_images
from models import build_fasl
from models.fasl import CheckpointMismatch, InferenceConfig, cpu_has_amx
from models.thresholds import (NormalScores, augmented_views, fit_thresholds, image_threshold,
                               pixel_threshold, subset_bank)
from utils.regions import find_regions, resize_map

TINY = ["--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112",
        "--features_list", "1", "2", "3", "4", "--device", "cpu"]
WIN = ["--winmode", "mul", "--win_size", "4", "--win_stride", "2"]


# ----------------------------------------------------------------------------- generated images

def texture(h, w, seed):
    """A good part: diagonal stripes and a soft grid, slightly shifted, with a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = rng.uniform(-2, 2, size=2)
    stripes = 0.5 + 0.25 * np.sin((x + dx + y + dy) * 2 * np.pi / 16)
    grid = 0.15 * (np.cos((x + dx) * 2 * np.pi / 24) * np.cos((y + dy) * 2 * np.pi / 24))
    base = np.clip(stripes + grid + rng.normal(0, 0.02, size=(h, w)), 0, 1)
    rgb = np.stack([base * 0.9, base * 0.6 + 0.1, base * 0.3 + 0.2], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def with_defect(img, box):
    """Paste a bright square; box = (x, y, side) in pixels."""
    x, y, s = box
    out = img.copy()
    out[y:y + s, x:x + s] = 255
    return out


def write(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_data")
    refs = [write(root / "refs" / f"ref{i}.png", texture(128, 128, i)) for i in range(4)]
    good = [write(root / "imgs" / "good_a.png", texture(128, 128, 10)),
            write(root / "imgs" / "good_wide.jpg", texture(96, 176, 11)),  # non-square, H=96, W=176
            write(root / "imgs" / "good_gray.png", texture(120, 120, 12), mode="L"),  # grayscale
            write(root / "imgs" / "good_b.bmp", texture(128, 128, 13))]
    defect_box = (110, 20, 44)  # x, y, side on a 96x176 image: right part, top
    defects = [write(root / "imgs" / "defect_wide.tif", with_defect(texture(96, 176, 20), defect_box)),
               write(root / "imgs" / "defect_sq.png", with_defect(texture(128, 128, 21), (10, 60, 56)))]
    # a non-square part of its own: references and good images like the wide defect
    wide_refs = [write(root / "wide_refs" / f"w{i}.png", texture(96, 176, 30 + i)) for i in range(3)]
    wide_good = [write(root / "wide_good" / f"w{i}.png", texture(96, 176, 40 + i)) for i in range(4)]
    return {"root": root, "refs": refs, "good": good, "defects": defects, "defect_box": defect_box,
            "wide_refs": wide_refs, "wide_good": wide_good}


def run(args):
    return predict.main([*args, *TINY])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path):
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- end to end

def test_outputs_for_every_image_at_original_size(data, tmp_path):
    out = tmp_path / "out"
    rc = run(["--refs", str(data["root"] / "refs"), "--images", str(data["root"] / "imgs"),
              "--out", str(out), "--mode", "fd", *WIN])
    assert rc == 0
    pred = read_json(out / "predictions.json")
    rows = read_csv(out / "predictions.csv")
    inputs = sorted(data["good"] + data["defects"], key=lambda p: p.name)
    assert [r["path"] for r in pred["images"]] == [str(p) for p in inputs]
    v = pred["verdicts"]
    assert v == read_json(out / "thresholds.json")
    assert not pred["lot_aware"] and v["source"] == "references"  # 6 images: below --min_lot
    thr = pred["references"]["thresholds"]
    assert thr["method"] == "leave-one-out+views" and len(thr["fit"]["image_scores"]) == 4 * 9  # each ref + 8 views
    assert thr["image"] >= max(thr["fit"]["image_scores"]) and thr["pixel"] > 0
    # the references' review band lies above their threshold: (1 + 2 x 0.03) x it
    assert v["ok_at_most"] == thr["image"] and v["image"] == pytest.approx(1.03 * thr["image"])
    assert v["defect_above"] == pytest.approx(1.06 * thr["image"]) and v["pixel"] == thr["pixel"]
    assert any("too small" in w for w in v["warnings"])
    assert pred["model"]["inference"]["winmode"] == "mul"
    assert pred["model"]["search_dtype"] == ("bfloat16" if cpu_has_amx() else "float32")
    for rec, row, src in zip(pred["images"], rows, inputs):
        w, h = Image.open(src).size
        overlay, mask = Image.open(out / rec["overlay"]), Image.open(out / rec["mask"])
        assert overlay.size == (w, h) and overlay.mode == "RGB"
        assert mask.size == (w, h) and mask.mode == "L"
        m = np.asarray(mask)
        assert set(np.unique(m)) <= {0, 255}
        assert (rec["width"], rec["height"]) == (w, h)
        # the mask is exactly the union of the regions, in original pixel coordinates
        assert int((m > 0).sum()) == rec["defect_area"] == sum(r["area"] for r in rec["regions"])
        for r in rec["regions"]:
            x, y, bw, bh = r["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
            assert m[y:y + bh, x:x + bw].any() and r["max_score"] > v["pixel"]
        # CSV and JSON agree, exactly
        assert row["path"] == rec["path"] and row["read_status"] == rec["read_status"] == "scored"
        assert float(row["score"]) == rec["score"]
        assert row["verdict"] == rec["verdict"] == ("defect" if rec["score"] > v["defect_above"] else
                                                    "review" if rec["score"] > v["ok_at_most"] else "ok")
        assert row["verdict_without_band"] == ("defect" if rec["score"] > v["image"] else "ok")
        assert np.load(out / rec["map"]).shape == (112, 112)  # the saved score map, at the map size
        assert int(row["n_regions"]) == len(rec["regions"]) and int(row["defect_area"]) == rec["defect_area"]
        assert (row["overlay"], row["mask"]) == (rec["overlay"], rec["mask"])


def test_defect_scores_above_every_good_image_fd(data, tmp_path):
    out = tmp_path / "out"
    defect = data["defects"][0]  # 96 x 176, like the references
    images = [str(p) for p in data["wide_good"] + [defect]]
    assert run(["--refs", *map(str, data["wide_refs"]), "--images", *images, "--out", str(out), "--mode", "fd"]) == 0
    recs = {Path(r["path"]).name: r for r in read_json(out / "predictions.json")["images"]}
    good = [recs[p.name]["score"] for p in data["wide_good"]]
    assert recs[defect.name]["score"] > max(good)
    assert recs[defect.name]["verdict"] == "defect"
    # the largest region of the non-square defect image covers the pasted square (not transposed)
    x, y, s = data["defect_box"]
    mask = np.asarray(Image.open(out / recs["defect_wide.tif"]["mask"])) > 0
    assert mask.shape == (96, 176)
    inside = mask[y:y + s, x:x + s]
    outside = (mask.sum() - inside.sum()) / (mask.size - inside.size)
    assert inside.mean() > 0.5 and inside.mean() > 2 * outside
    bx, by, bw, bh = recs["defect_wide.tif"]["regions"][0]["bbox"]
    cx, cy = x + s / 2, y + s / 2
    assert bx <= cx <= bx + bw and by <= cy <= by + bh


def test_save_load_round_trip_gives_identical_scores(data, tmp_path):
    refs_file = tmp_path / "part.pt"
    common = ["--images", str(data["root"] / "imgs"), "--mode", "fd", *WIN]
    assert run(["--refs", str(data["root"] / "refs"), "--out", str(tmp_path / "a"), "--save_refs", str(refs_file),
                *common]) == 0
    assert run(["--load_refs", str(refs_file), "--out", str(tmp_path / "b"), *common]) == 0
    a, b = read_json(tmp_path / "a" / "predictions.json"), read_json(tmp_path / "b" / "predictions.json")
    assert [r["score"] for r in a["images"]] == [r["score"] for r in b["images"]]
    assert [r["regions"] for r in a["images"]] == [r["regions"] for r in b["images"]]
    ta, tb = a["references"]["thresholds"], b["references"]["thresholds"]
    assert (ta["image"], ta["pixel"]) == (tb["image"], tb["pixel"]) and a["verdicts"]["image"] == b["verdicts"]["image"]
    assert tb["image_source"].startswith("fit (from")
    assert b["references"]["paths"] == [str(p) for p in data["refs"]]
    for name in ("good_wide_mask.png", "defect_sq_mask.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "b" / name)))
    # the file holds only tensors and primitives
    state = torch.load(refs_file, weights_only=True)
    assert state["format"] == "fasl-refs-v2" and len(state["global_tokens"]) == 4
    assert state["global_tokens"][0].shape[0] == 4 and state["window"] == {"size": 4, "stride": 2}
    # a file of the first format (all blocks' tokens in one tensor, no region size) still reads
    legacy = {k: v for k, v in state["config"].items()
              if k not in ("nam", "hidden_bias", "nam_residual", "family", "activation", "widths")}
    legacy["width"] = state["config"]["widths"][0]  # the config v1 files hold (before per-block widths)
    v1 = dict(state, format="fasl-refs-v1", global_tokens=torch.stack(state["global_tokens"]),
              window_tokens=torch.stack(state["window_tokens"]), config=legacy)
    v1["thresholds"] = {k: v for k, v in state["thresholds"].items() if k != "min_region_fraction"}
    v1["thresholds"]["fit"] = {k: v for k, v in state["thresholds"]["fit"].items() if k != "largest_normal_region"}
    torch.save(v1, tmp_path / "v1.pt")
    assert run(["--load_refs", str(tmp_path / "v1.pt"), "--out", str(tmp_path / "v1"), *common]) == 0
    assert [r["score"] for r in read_json(tmp_path / "v1" / "predictions.json")["images"]] == \
        [r["score"] for r in a["images"]]

    # refused, with the reason, when it does not fit the run
    load = ["--load_refs", str(refs_file), "--images", str(data["good"][0]), "--out", str(tmp_path / "c")]
    with pytest.raises(ValueError, match="windows of size 4, stride 2.*--winmode nan"):
        run([*load, "--mode", "fd"])
    with pytest.raises(ValueError, match="win_weight"):
        run([*load, "--mode", "fd", *WIN, "--win_weight", "0.3"])
    with pytest.raises(ValueError, match="fpr: file 0.05, now 0.01"):
        run([*load, "--mode", "fd", *WIN, "--fpr", "0.01"])
    with pytest.raises(CheckpointMismatch, match="blocks"):
        predict.main([*load, "--mode", "fd", *WIN, *TINY[:6], "--features_list", "2", "4", "--device", "cpu"])
    # both thresholds by hand: other scoring settings are accepted
    assert run([*load, "--mode", "fd", *WIN, "--win_weight", "0.3", "--image_threshold", "0.5",
                "--pixel_threshold", "0.5"]) == 0


def test_fasl_mode_with_checkpoint_and_heads_check(data, tmp_path):
    torch.manual_seed(0)
    model = build_fasl("fasl-tiny-vit", "none", [1, 2, 3, 4], 112)
    ckpt = tmp_path / "heads.pth"
    torch.save(model.checkpoint_state(), ckpt)
    refs_file = tmp_path / "part.pt"
    args = ["--images", str(data["good"][0]), str(data["defects"][1]), "--checkpoint_path", str(ckpt), "--mode", "fasl"]
    assert run([*args, "--refs", str(data["root"] / "refs"), "--out", str(tmp_path / "a"),
                "--save_refs", str(refs_file)]) == 0
    pred = read_json(tmp_path / "a" / "predictions.json")
    assert pred["model"]["inference"]["mode"] == "fasl"
    assert all(0.0 <= r["score"] <= 1.0 for r in pred["images"])  # probabilities
    assert run([*args, "--load_refs", str(refs_file), "--out", str(tmp_path / "b")]) == 0
    assert [r["score"] for r in read_json(tmp_path / "b" / "predictions.json")["images"]] == \
        [r["score"] for r in pred["images"]]
    with torch.no_grad():
        next(model.heads.parameters()).add_(0.5)
    torch.save(model.checkpoint_state(), ckpt)
    with pytest.raises(ValueError, match="heads differ"):
        run([*args, "--load_refs", str(refs_file), "--out", str(tmp_path / "c")])


def test_unreadable_image_is_reported_and_skipped(data, tmp_path, capsys):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "out"
    rc = run(["--refs", str(data["root"] / "refs"), "--images", str(data["good"][0]), str(broken),
              str(data["defects"][0]), "--out", str(out), "--mode", "fd"])
    assert rc != 0
    assert "broken.png" in capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    assert [r["read_status"] for r in rows] == ["scored", "failed", "scored"]
    assert "broken.png" in rows[1]["error"] and rows[1]["score"] == ""
    pred = read_json(out / "predictions.json")
    assert pred["failed"] == [str(broken)]
    names = predict.output_names([data["good"][0], broken, data["defects"][0]])
    for name in (names[0], names[2]):
        assert (out / f"{name}_overlay.png").is_file() and (out / f"{name}_mask.png").is_file()
    assert not list(out.glob("*broken*_overlay.png"))


def test_unreadable_reference_is_an_error(data, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        run(["--refs", str(data["refs"][0]), str(bad), "--images", str(data["good"][0]),
             "--out", str(tmp_path / "o"), "--mode", "fd"])


def test_one_reference_uses_augmented_copies_and_overrides(data, tmp_path):
    out = tmp_path / "out"
    assert run(["--refs", str(data["refs"][0]), "--images", str(data["good"][0]), str(data["defects"][1]),
                "--out", str(out), "--mode", "fd", "--fpr", "0.05"]) == 0
    thr = read_json(out / "predictions.json")["references"]["thresholds"]
    assert thr["method"] == "augmented-self" and thr["fpr"] == 0.05
    scores = thr["fit"]["image_scores"]
    assert len(scores) == 8 and min(scores) > 1e-4  # not an exact self-match
    assert thr["image"] >= max(scores)
    # a hand-set image threshold of 0 makes everything a defect; the fitted pixel threshold stays
    out2 = tmp_path / "out2"
    assert run(["--refs", str(data["refs"][0]), "--images", str(data["good"][0]), "--out", str(out2),
                "--mode", "fd", "--fpr", "0.05", "--image_threshold", "0"]) == 0
    pred = read_json(out2 / "predictions.json")
    assert pred["verdicts"]["ok_at_most"] == 0.0 and pred["verdicts"]["source"] == "override"
    assert pred["verdicts"]["pixel"] == thr["pixel"] and pred["images"][0]["verdict"] == "defect"


def test_duplicate_stems_and_input_selection(tmp_path):
    a = write(tmp_path / "a" / "part.png", texture(64, 64, 0))
    b = write(tmp_path / "b" / "part.PNG", texture(64, 64, 1))
    c = write(tmp_path / "b" / "other.JPG", texture(64, 64, 2))
    d = write(tmp_path / "b" / "sub" / "deep.png", texture(64, 64, 3))
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    write(tmp_path / "b" / ".hidden.png", texture(64, 64, 4))
    # folders recursively, sorted; other files and hidden ones left out
    assert list_images([str(tmp_path / "b")], "--images") == [c, b, d]
    assert list_images([str(tmp_path / "*" / "*.png"), str(a)], "--images") == [a]  # glob is case-sensitive
    # one rule: the path below the deepest folder holding every input, folders joined by "__"
    assert predict.output_names([a, b, c, a.parent / "PART.jpg"]) == ["a__part", "b__part", "b__other", "a__PART_2"]
    assert predict.output_names([Path("x/p.png"), Path("x/p.jpg")]) == ["p", "p_2"]
    assert predict.output_names([c, d]) == ["other", "sub__deep"]
    t = tmp_path / "test"  # the case: a name never depends on whether another input shares the stem
    assert predict.output_names([t / "good" / "000.png", t / "good" / "003.png", t / "crack" / "000.png"]) == \
        ["good__000", "good__003", "crack__000"]
    with pytest.raises(FileNotFoundError, match=r"--images: pattern '.*\*\.bmp' selects no image"):
        list_images([str(tmp_path / "*.bmp")], "--images")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--refs: folder .*empty selects no image"):
        list_images([str(tmp_path / "empty")], "--refs")


def test_parse_args_errors(capsys):
    base = ["--images", "x.png", "--out", "o"]
    with pytest.raises(SystemExit):
        predict.parse_args([*base, "--refs", "r.png", "--mode", "fasl"])
    assert "--mode fd" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.parse_args(base)
    assert "exactly one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.parse_args([*base, "--refs", "r.png", "--fpr", "1.5"])
    assert predict.parse_args([*base, "--refs", "r.png"]).mode == "fd"
    assert predict.parse_args([*base, "--refs", "r.png", "--checkpoint_path", "c.pth"]).mode == "merged"
    # the old spelling is refused with the new name; no prefix of a flag is taken for it
    with pytest.raises(SystemExit):
        predict.parse_args([*base, "--refs", "r.png", "--checkpoint", "c.pth"])
    assert "--checkpoint_path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.parse_args([*base, "--refs", "r.png", "--checkpoint_pa", "c.pth"])
    with pytest.raises(SystemExit):  # lot-aware scoring compares FD features of whole images
        predict.parse_args([*base, "--refs", "r.png", "--lot", "on", "--winmode", "mul"])
    assert "--mode fd and --winmode nan" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pure helpers

def test_threshold_fit_hand_values():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    thr, mean, std, gaussian, empirical = image_threshold(scores, 0.01)
    assert mean == 2.5 and std == pytest.approx(np.sqrt(5 / 3))
    assert gaussian == pytest.approx(2.5 + 2.3263478740 * np.sqrt(5 / 3), rel=1e-8)
    assert empirical == 4.0 and thr == gaussian
    # when the normal fit lands below the largest score, the empirical quantile wins
    thr, *_ = image_threshold(np.array([0.0] * 9 + [10.0]), 0.05)  # fit: 1 + 1.645 * 3.16 = 6.2
    assert thr == 10.0
    assert pixel_threshold(np.arange(1000, dtype=np.float32), 0.01) == 990.0
    fit = fit_thresholds(NormalScores(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4, 5, 5), "x"), 0.01)
    assert fit.image_threshold == thr_4() and fit.pixel_threshold == 0.0 and fit.n_pixels == 100
    with pytest.raises(ValueError, match="fpr"):
        image_threshold(scores, 0.0)


def thr_4():
    return image_threshold(np.array([1.0, 2.0, 3.0, 4.0]), 0.01)[0]


def test_augmented_views():
    img = torch.rand(3, 10, 12)
    v = augmented_views(img, shift=2)
    assert v.shape == (8, 3, 10, 12)
    assert torch.equal(v[0], img.flip(-1)) and torch.equal(v[1], img.flip(-2))
    assert torch.equal(v[2][:, :, 2:], img[:, :, :-2])  # right
    assert torch.equal(v[3][:, :, :-2], img[:, :, 2:])  # left
    assert torch.equal(v[4][:, 2:], img[:, :-2])  # down
    assert torch.equal(v[5][:, :-2], img[:, 2:])  # up
    assert torch.equal(v[2][:, :, :2], img[:, :, 1:3].flip(-1))  # reflect padding
    assert torch.allclose(v[6], (img * 1.1).clamp(0, 1)) and torch.allclose(v[7], img * 0.9)


def test_subset_bank_matches_building_from_the_subset():
    torch.manual_seed(0)
    model = build_fasl("fasl-tiny-vit", "none", [2, 4], 56)
    refs = torch.randn(3, 3, 56, 56)
    windows = model.window_grid(2, 1)
    full = model.build_memory(refs, windows)
    sub, direct = subset_bank(full, [0, 2]), model.build_memory(refs[[0, 2]], windows)
    assert sub.k == 2
    for a, b in ((sub.global_memory, direct.global_memory), (sub.window_memory, direct.window_memory)):
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.tokens, b.tokens))
        assert len(a.tokens) == len(b.tokens) == 2 and torch.allclose(a.embedding, b.embedding, atol=1e-5)
    cfg = InferenceConfig(mode="fd", winmode="mul", win_size=2, win_stride=1, out_size=56)
    q = torch.randn(2, 3, 56, 56)
    assert torch.allclose(model.predict(q, sub, cfg).image_score, model.predict(q, direct, cfg).image_score, atol=1e-5)


def test_find_regions_and_resize_map():
    m = np.zeros((6, 8), dtype=np.float32)
    m[1:3, 1:4] = [[0.6, 0.9, 0.6], [0.6, 0.6, 0.6]]  # 6 px
    m[5, 7] = 0.7  # 1 px
    m[4, 0] = 0.5  # at the threshold: not above it
    found = find_regions(m, 0.5)
    assert [r.bbox for r in found.regions] == [[1, 1, 3, 2], [7, 5, 1, 1]]
    assert [r.area for r in found.regions] == [6, 1] and found.area == 7
    assert found.regions[0].max_score == pytest.approx(0.9) and found.regions[0].mean_score == pytest.approx(0.65)
    assert found.regions[0].centroid == pytest.approx([2.0, 1.5])
    assert found.mask.sum() == 7 and not found.mask[4, 0]
    small = find_regions(m, 0.5, min_area=2)
    assert len(small.regions) == 1 and small.mask.sum() == 6 and not small.mask[5, 7]
    # (h, w) -> (H, W) without transposing: a bright left column stays on the left
    s = np.zeros((4, 4), dtype=np.float32)
    s[:, 0] = 1
    big = resize_map(s, (30, 80))
    assert big.shape == (30, 80) and big[:, :10].mean() > 0.5 and big[:, 40:].max() == 0


# ----------------------------------------------------------------------------- report.html, unusable images

def split_threshold(data, tmp_path):
    """An image threshold with scored images of data/imgs on both sides."""
    first = tmp_path / "first"
    assert run(["--refs", str(data["root"] / "refs"), "--images", str(data["root"] / "imgs"), "--out", str(first),
                "--mode", "fd"]) == 0
    s = sorted(r["score"] for r in read_json(first / "predictions.json")["images"])
    return (s[2] + s[3]) / 2


def test_report_html_sections_histogram_and_failures(data, tmp_path):
    tiny = write(tmp_path / "in" / "dot & <b>.png", np.full((1, 1, 3), 128, np.uint8))  # smaller than the 8x8 grid
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    cut = split_threshold(data, tmp_path)
    out = tmp_path / "out"
    rc = run(["--refs", str(data["root"] / "refs"), "--images", str(data["root"] / "imgs"), str(tiny), str(broken),
              "--out", str(out), "--mode", "fd", "--image_threshold", str(cut), "--pixel_threshold", "0.3",
              "--ref_band", "0.3"])
    assert rc == 1  # two files could not be used
    pred = read_json(out / "predictions.json")
    by_path = {r["path"]: r for r in pred["images"]}
    assert by_path[str(tiny)]["read_status"] == "failed" and "smaller than the model's" in by_path[str(tiny)]["error"]
    assert "verdict" not in by_path[str(tiny)]
    page = (out / "report.html").read_text()
    scored = [r for r in pred["images"] if r["read_status"] == "scored"]
    verdicts = {r["verdict"] for r in scored}
    assert len(verdicts) >= 2  # the band of 30 % around a threshold inside the scores splits them
    # review first, then defects, then good parts; each section highest score first
    heads = [page.index(h) for h, v in (("<h2>To review", "review"), ("<h2>Defects", "defect"),
                                        ("<h2>Good parts", "ok")) if v in verdicts]
    assert heads == sorted(heads)
    for v in verdicts:
        mine = sorted((r for r in scored if r["verdict"] == v), key=lambda r: -r["score"])
        positions = [page.index(f'alt="heat map of {r["name"]}"') for r in mine]
        assert positions == sorted(positions)
    failed_box = page[page.index('class="failed"'):page.index('class="facts"')]
    assert "dot &amp; &lt;b&gt;.png" in failed_box and "<b>.png" not in failed_box  # escaped, never markup
    assert "broken.png" in failed_box and "smaller than" in failed_box
    # self-contained: the run's files beside the page, the originals by their path relative to it; nothing fetched
    import re
    from urllib.parse import unquote
    links = [unquote(link) for link in re.findall(r'(?:src|href)="([^"]+)"', page)]
    assert links and not any(":" in link for link in links)
    assert all((out / link).is_file() for link in links)
    assert {"report_histogram.png", "report_colourbar.png"} <= set(links)
    assert Image.open(out / "report_histogram.png").size == (640, 260)


def _browser():
    import shutil
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless browser installed (Debian: apt-get install chromium)")
def test_report_renders_in_a_headless_browser(data, tmp_path):
    import subprocess
    out = tmp_path / "out"
    assert run(["--refs", str(data["root"] / "refs"), "--images", str(data["root"] / "imgs"), "--out", str(out),
                "--mode", "fd", "--image_threshold", str(split_threshold(data, tmp_path)),
                "--pixel_threshold", "0.3"]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1100,900", (out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (900, 1100)
    red = ((pixels[..., 0] > 170) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum()  # defect badges
    green = ((pixels[..., 1] > 100) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)).sum()  # ok badges
    dark = (pixels.sum(-1) < 60).sum()  # the overlays' black frames and the text
    assert red > 50 and green > 50 and dark > 1000


def test_documented_csv_columns_are_the_ones_written():
    import re
    page = (Path(__file__).resolve().parents[1] / "docs" / "predict.md").read_text()
    m = re.search(r"\*\*`predictions\.csv`\*\* columns: `([^`]+)`", page.replace("\n  ", " "))
    assert m, "docs/predict.md lists the predictions.csv columns"
    assert tuple(c.strip() for c in m.group(1).split(",")) == predict.CSV_FIELDS


# ----------------------------------------------------------------------------- lots

@pytest.fixture(scope="module")
def lot(tmp_path_factory):
    """A lot of 14 images of one part (12 good, 2 with a pasted square) and 2 references."""
    root = tmp_path_factory.mktemp("lot")
    refs = [write(root / "refs" / f"r{i}.png", texture(96, 96, 100 + i)) for i in range(2)]
    good = [write(root / "lot" / f"g{i:02d}.png", texture(96, 96, 200 + i)) for i in range(12)]
    bad = [write(root / "lot" / "d0.png", with_defect(texture(96, 96, 300), (20, 30, 26))),
           write(root / "lot" / "d1.png", with_defect(texture(96, 96, 301), (50, 10, 30)))]
    return {"root": root, "refs": refs, "good": good, "bad": bad}


def test_a_lot_is_scored_and_thresholded_as_a_lot(lot, tmp_path):
    out = tmp_path / "out"
    assert run(["--refs", *map(str, lot["refs"]), "--images", str(lot["root"] / "lot"), "--out", str(out)]) == 0
    pred = read_json(out / "predictions.json")
    assert pred["lot_aware"] and pred["verdicts"]["source"] == "lot"
    assert len(pred["references"]["scores_as_lot_images"]) == 2
    # each image's score against the references alone is kept, and the share above the references-only
    # threshold is judged on those scores (the threshold's own scale)
    alone = [r["score_alone"] for r in pred["images"]]
    t = pred["references"]["thresholds"]["image"]
    assert pred["verdicts"]["stats"]["share_above_reference_threshold"] == pytest.approx(np.mean(np.array(alone) > t))
    recs = {Path(r["path"]).name: r for r in pred["images"]}
    bad = [recs[p.name] for p in lot["bad"]]
    good = [recs[p.name] for p in lot["good"]]
    assert min(r["score"] for r in bad) > max(r["score"] for r in good)
    assert all(r["verdict"] != "ok" and r["regions"] for r in bad)
    # the lot's rule, recomputed from the written scores
    scores = np.log([r["score"] for r in pred["images"]])
    qa, qb = np.quantile(scores, 0.5), np.quantile(scores, 0.2)
    assert np.log(pred["verdicts"]["ok_at_most"]) == pytest.approx(qa + 2.0 * (qa - qb))
    assert np.log(pred["verdicts"]["defect_above"]) == pytest.approx(qa + 3.0 * (qa - qb))
    # the same lot listed in another order: the same scores and verdicts, image by image
    listing = tmp_path / "lot.txt"
    listing.write_text("\n".join(str(p) for p in (lot["bad"] + lot["good"])[::-1]) + "\n")
    out2 = tmp_path / "out2"
    assert run(["--refs", *map(str, lot["refs"]), "--images", str(listing), "--out", str(out2),
                "--batch_size", "3"]) == 0
    again = {Path(r["path"]).name: r for r in read_json(out2 / "predictions.json")["images"]}
    assert again.keys() == recs.keys()
    for name, r in recs.items():
        assert again[name]["score"] == pytest.approx(r["score"], rel=1e-5) and again[name]["verdict"] == r["verdict"]
    # --lot off: every image against the references alone
    out3 = tmp_path / "out3"
    assert run(["--refs", *map(str, lot["refs"]), "--images", str(lot["root"] / "lot"), "--out", str(out3),
                "--lot", "off"]) == 0
    off = read_json(out3 / "predictions.json")
    assert not off["lot_aware"] and off["verdicts"]["source"] == "references"
    with pytest.raises(ValueError, match="--lot on needs at least 10 images"):
        run(["--refs", *map(str, lot["refs"]), "--images", *map(str, lot["good"][:4]), "--out", str(tmp_path / "x"),
             "--lot", "on"])


def test_a_mostly_defective_lot_is_decided_from_the_references_alone(lot, tmp_path):
    """10 of 14 images defective: the lot's own thresholds (which assume most of it is good) cannot
    hold; with 2 references the lot is scored and decided as --lot off would, and says so."""
    root = tmp_path / "mostly"
    for p in lot["good"][:4]:
        write(root / p.name, np.asarray(Image.open(p)))
    for i in range(10):
        write(root / f"d{i:02d}.png", with_defect(texture(96, 96, 400 + i), (10 + 5 * i, 20 + 3 * i, 24)))
    refs = ["--refs", *map(str, lot["refs"])]
    out, off, warn = tmp_path / "out", tmp_path / "off", tmp_path / "warn"
    assert run([*refs, "--images", str(root), "--out", str(out)]) == 0
    assert run([*refs, "--images", str(root), "--out", str(off), "--lot", "off"]) == 0
    assert run([*refs, "--images", str(root), "--out", str(warn), "--mostly_defective", "warn"]) == 0
    pred, alone, kept = (read_json(o / "predictions.json") for o in (out, off, warn))
    assert kept["lot_aware"] and kept["verdicts"]["source"] == "lot"
    share = kept["verdicts"]["stats"]["share_above_reference_threshold"]
    assert share >= 0.6 and any("looks mostly defective" in w for w in kept["verdicts"]["warnings"])
    assert not pred["lot_aware"] and pred["verdicts"]["source"] == "references"
    assert pred["verdicts"]["warnings"][0].startswith(f"{100 * share:.0f} % of the lot scores above the threshold "
                                                      f"the 2 references alone give")
    assert "decided from the references alone" in pred["verdicts"]["warnings"][0]
    assert "decided from the references alone" in (out / "predict.log").read_text()
    by_name = {r["name"]: r for r in alone["images"]}
    for r in pred["images"]:  # exactly what --lot off gives
        assert r["score"] == pytest.approx(by_name[r["name"]]["score"], rel=1e-6)
        assert r["verdict"] == by_name[r["name"]]["verdict"]
    assert sum(r["verdict"] != "ok" for r in pred["images"] if r["name"].startswith("d")) > \
        sum(r["verdict"] != "ok" for r in kept["images"] if r["name"].startswith("d"))
    assert pred["fell_back"] and not kept["fell_back"] and not alone["fell_back"]
    # decided again from the saved maps: a lot that fell back keeps its reason; a lot kept as a lot
    # (--mostly_defective warn) is said to need scoring again, its thresholds kept
    assert run(["--redecide", str(out), "--out", str(tmp_path / "re1")]) == 0
    re1 = read_json(tmp_path / "re1" / "predictions.json")
    assert re1["fell_back"] and re1["verdicts"]["warnings"][0] == pred["verdicts"]["warnings"][0]
    assert [r["verdict"] for r in re1["images"]] == [r["verdict"] for r in pred["images"]]
    assert run(["--redecide", str(warn), "--out", str(tmp_path / "re2")]) == 0
    re2 = read_json(tmp_path / "re2" / "predictions.json")
    assert not re2["fell_back"] and re2["verdicts"]["source"] == "lot"
    assert "--redecide does not score again" in re2["verdicts"]["warnings"][0]


def test_a_reused_out_holds_only_the_new_run_and_redecide_needs_no_scoring(lot, tmp_path):
    out = tmp_path / "out"
    refs = ["--refs", *map(str, lot["refs"])]
    assert run([*refs, "--images", str(lot["root"] / "lot"), "--out", str(out)]) == 0
    first = read_json(out / "predictions.json")
    (out / "notes.txt").write_text("mine")  # not predict.py's: left alone
    # re-decided from the saved maps, same flags: the same verdicts, regions and masks
    again = tmp_path / "again"
    assert run(["--redecide", str(out), "--out", str(again)]) == 0
    redone = read_json(again / "predictions.json")
    assert [(r["score"], r["verdict"], r["regions"]) for r in redone["images"]] == \
        [(r["score"], r["verdict"], r["regions"]) for r in first["images"]]
    # the mostly-defective check is judged again, on the references-only scores the first run kept
    share = first["verdicts"]["stats"]["share_above_reference_threshold"]
    assert share is not None and redone["verdicts"]["stats"]["share_above_reference_threshold"] == share
    assert all(r["score_alone"] is not None for r in redone["images"])
    # ... and with a lower lot threshold more images are flagged, from the same scores
    lower = tmp_path / "lower"
    assert run(["--redecide", str(out), "--out", str(lower), "--lot_c", "0.5", "--lot_band", "0.5"]) == 0
    flagged = lambda doc: sum(r["verdict"] != "ok" for r in doc["images"])  # noqa: E731
    assert flagged(read_json(lower / "predictions.json")) > flagged(first)
    # a smaller run into the same folder: only its files remain, and a fresh log
    assert run([*refs, "--images", *map(str, lot["bad"]), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {n for n in names if n.endswith("_overlay.png")} == {"d0_overlay.png", "d1_overlay.png"}
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["d0.npy", "d1.npy"]
    assert "notes.txt" in names
    log = (out / "predict.log").read_text()
    assert "2 image(s)" in log and "14 image(s)" not in log and "cleared" in log
    # settings.json reads back through --config: the same settings, flags given still win
    args = predict.parse_args(["--config", str(out / "settings.json"), *refs, "--images", "x.png", "--out", "o"])
    assert args.settings == predict.parse_args([*refs, "--images", "x.png", "--out", "o"]).settings
    args = predict.parse_args(["--config", str(out / "settings.json"), "--fpr", "0.1", *refs, "--images", "x",
                               "--out", "o"])
    assert args.fpr == 0.1


def test_help_fits_one_screen(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        predict.parse_args(["--help"])
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 60 and "--help_advanced" in text and "--pool_size" not in text
    with pytest.raises(SystemExit):
        predict.parse_args(["--help_advanced"])
    assert "--pool_size" in capsys.readouterr().out


def test_defect_refs_keep_the_review_threshold_below_known_defects(lot, tmp_path):
    base = ["--refs", *map(str, lot["refs"]), "--images", str(lot["root"] / "lot"), "--lot_c", "6"]  # a high threshold
    assert run([*base, "--out", str(tmp_path / "a")]) == 0
    plain = read_json(tmp_path / "a" / "predictions.json")
    known = lot["bad"][0]
    assert run([*base, "--out", str(tmp_path / "b"), "--defect_refs", str(known)]) == 0
    pred = read_json(tmp_path / "b" / "predictions.json")
    [score] = pred["references"]["defect_ref_scores"]
    assert pred["verdicts"]["stats"]["known_defect_scores"] == [score]
    assert pred["verdicts"]["ok_at_most"] <= max(0.97 * score, pred["verdicts"]["stats"]["known_defect_floor"])
    assert pred["verdicts"]["ok_at_most"] <= plain["verdicts"]["ok_at_most"]
    # every image carries its closeness to the known defect; the known defect itself is in the lot:
    # its defect patches lie at distance 0 from the known ones, closer than to any good part
    recs = {r["name"]: r for r in pred["images"]}
    assert all(isinstance(r["known_match"], float) for r in recs.values())
    assert recs[known.stem]["known_match"] > 0
    assert not any(r["like_known_defect"] for r in recs.values())  # the match sends nothing to review by default
    assert all(r["known_match"] is None and not r["like_known_defect"] for r in plain["images"])
    # small squares that score below the review threshold, a known defect with a larger square: their
    # patches lie closer to its square than to any good part; decided again with --known_match 0,
    # they go to review and say why, the good parts stay ok
    small_lot = tmp_path / "small_squares"
    for p in lot["good"]:
        write(small_lot / p.name, np.asarray(Image.open(p)))
    for side in (6, 8, 10, 12):
        write(small_lot / f"s{side}.png", with_defect(texture(96, 96, 300 + side), (40, 40, side)))
    first, big = tmp_path / "first", write(tmp_path / "known" / "big.png", with_defect(texture(96, 96, 500), (30, 30, 30)))
    assert run(["--refs", *map(str, lot["refs"]), "--images", str(small_lot), "--out", str(first),
                "--defect_refs", str(big)]) == 0
    before = read_json(first / "predictions.json")
    squares = [r for r in before["images"] if r["name"].startswith("s")]
    assert all(r["verdict"] == "ok" and r["known_match"] > 0 for r in squares)
    like = tmp_path / "like"
    assert run(["--redecide", str(first), "--out", str(like), "--known_match", "0"]) == 0
    got = read_json(like / "predictions.json")
    assert [r["known_match"] for r in got["images"]] == [r["known_match"] for r in before["images"]]
    squares = [r for r in got["images"] if r["name"].startswith("s")]
    assert all(r["like_known_defect"] and r["verdict"] == "review" and r["verdict_without_band"] == "ok"
               and r["regions"] for r in squares)  # drawn at their peak, like any flagged image
    assert "looks like a known defect" in (like / "report.html").read_text()
    goods = [r for r in got["images"] if r["name"].startswith("g")]
    assert all(r["known_match"] <= 0 and not r["like_known_defect"] for r in goods)
    with pytest.raises(FileNotFoundError, match="--defect_refs: .*nothere.png is no file"):
        run([*base, "--out", str(tmp_path / "c"), "--defect_refs", str(tmp_path / "nothere.png")])
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_a_references_file_keeps_its_border(data, tmp_path):
    """Stored features hold the reflected border they were encoded with: a file made with predict's
    default border is refused without it; heads trained without a border still load (they take
    features)."""
    refs_file = tmp_path / "part.pt"
    common = ["--images", str(data["good"][0]), "--mode", "fd"]
    assert run(["--refs", str(data["root"] / "refs"), "--out", str(tmp_path / "a"), "--save_refs", str(refs_file),
                *common]) == 0
    assert torch.load(refs_file, weights_only=True)["config"]["border_pad"] == 42  # 32 px, in whole 14-px patches
    with pytest.raises(CheckpointMismatch, match="border_pad: references file .* has 42, this model has 0"):
        run(["--load_refs", str(refs_file), "--out", str(tmp_path / "b"), "--border_pad", "0", *common])
