"""End to end: generated data -> train.main -> checkpoint -> test_few_shot.main -> results files.

Tiny random-weight backbone (112 px, 8x8 patches, windows of 4 patches at stride 2), CPU only.
The numbers themselves mean nothing (random weights); the tests check the mechanics: files,
value ranges, determinism, resume, what each flag changes and does not change, and errors.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test_few_shot
import train
from data.meta import load_meta
from models.fasl import CheckpointMismatch, cpu_has_amx
from utils.metrics import CLASS_KEYS, image_metrics, pixel_metrics, transductive_scores

EVAL = 64  # --eval_size: side of the saved maps, masks and visualisations
WINDOWS = ["--win_size", "4", "--win_stride", "2"]


# ----------------------------------------------------------------------------- helpers

def _reject_constant(name):
    raise AssertionError(f"results file holds {name}; n/a must be null")


def read_results(folder: Path) -> dict:
    """results.json of a run, refusing NaN / Infinity."""
    return json.loads((Path(folder) / "results.json").read_text(), parse_constant=_reject_constant)


def read_csv(folder: Path) -> dict[str, dict[str, str]]:
    with open(Path(folder) / "results.csv", newline="") as f:
        return {row["class"]: row for row in csv.DictReader(f)}


def metric_part(doc: dict) -> dict:
    """The parts of results.json that must not depend on where the run wrote its files."""
    return {"per_class": doc["per_class"], "mean": doc["mean"]}


def assert_all_metrics_valid(doc: dict, classes) -> None:
    assert sorted(doc["per_class"]) == sorted(classes)
    for where, metrics in [*doc["per_class"].items(), ("mean", doc["mean"])]:
        for key in CLASS_KEYS:
            value = metrics[key]
            assert isinstance(value, float), f"{where}.{key} = {value!r}"
            assert not math.isnan(value) and 0.0 <= value <= 1.0, f"{where}.{key} = {value}"


def file_stem(img_path: str) -> str:
    """How test_few_shot names an image's saved files: the relative path with '/' -> '__'."""
    return Path(img_path).with_suffix("").as_posix().replace("/", "__")


def load_saved_maps(folder: Path, cls: str):
    """(paths, maps (N, H, W), masks (N, H, W), image scores (N,)) written by --save_maps."""
    base = Path(folder) / "maps" / cls
    paths = (base / "paths.txt").read_text().split()
    maps = np.stack([np.load(base / f"{file_stem(p)}_map.npy") for p in paths])
    masks = np.stack([np.load(base / f"{file_stem(p)}_mask.npy") for p in paths])
    return paths, maps, masks, np.load(base / "image_scores.npy")


def state_equal(a, b, where="state") -> None:
    """Assert two nested dict/list/tensor structures are exactly equal (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            state_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def visa(syn_datasets) -> Path:
    return syn_datasets["visa"]


@pytest.fixture(scope="module")
def visa_classes(visa) -> list[str]:
    return sorted(load_meta(visa)["test"])


@pytest.fixture(scope="module")
def run_test(visa, mvtec_ckpt, tiny_backbone_args):
    """test_few_shot.main on the VisA-layout data with the shared checkpoint; returns its result dict."""
    def run(save_path: Path, *extra: str, data: Path | None = None, checkpoint: bool = True) -> dict:
        argv = ["--data_path", str(data or visa), "--dataset", "visa", "--save_path", str(save_path),
                "--k_shot", "1", "--seed", "5", "--eval_size", str(EVAL), "--batch_size", "6",
                *WINDOWS, *tiny_backbone_args]
        if checkpoint:
            argv += ["--checkpoint_path", str(mvtec_ckpt)]
        return test_few_shot.main(argv + list(extra))
    return run


@pytest.fixture(scope="module")
def winmode_runs(run_test, tmp_path_factory) -> dict[str, Path]:
    """One FASL evaluation per winmode (default NAM + transductive), with --save_maps."""
    base = tmp_path_factory.mktemp("winmodes")
    out = {}
    for winmode in ("nan", "mul", "onlywin"):
        returned = run_test(base / winmode, "--winmode", winmode, "--save_maps")
        doc = read_results(base / winmode)
        assert returned == doc["per_class"], "main() must return what results.json holds"
        out[winmode] = base / winmode
    return out


# ----------------------------------------------------------------------------- training

def test_one_epoch_writes_a_weights_only_checkpoint(mvtec_ckpt, syn_datasets):
    folder = mvtec_ckpt.parent
    assert sorted(p.name for p in folder.glob("epoch_*.pth")) == ["epoch_1.pth"]
    state = torch.load(mvtec_ckpt, map_location="cpu", weights_only=True)
    cfg = state["config"]
    assert cfg["model"] == "fasl-tiny-vit"
    assert cfg["widths"] == [64] * 4 and cfg["family"] == "open_clip" and cfg["activation"] == "gelu"
    assert cfg["nam"] == "shared" and cfg["hidden_bias"] is False and cfg["input_bn"] is True
    assert cfg["blocks"] == [1, 2, 3, 4]
    assert cfg["image_size"] == 112
    assert state["epoch"] == 1 and state["seed"] == 7 and state["dataset"] == "mvtec"
    heads = state["heads"]
    assert heads and all(isinstance(t, torch.Tensor) for t in heads.values())
    assert all(torch.isfinite(t.float()).all() for t in heads.values())
    assert state["optimizer"]["state"], "Adam took no step"
    refs = json.loads((folder / "references.json").read_text())["references"]
    meta = load_meta(syn_datasets["mvtec"])
    assert sorted(refs) == sorted(meta["test"])
    for cls, paths in refs.items():
        assert len(paths) == 1 and paths[0] in {s["img_path"] for s in meta["train"][cls]}
    assert "epoch 1/1" in (folder / "train.log").read_text()


# ----------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("winmode", ["nan", "mul", "onlywin"])
def test_results_json_has_every_metric_in_unit_interval(winmode_runs, visa_classes, visa, winmode):
    doc = read_results(winmode_runs[winmode])
    assert_all_metrics_valid(doc, visa_classes)
    meta = load_meta(visa)
    for cls, metrics in doc["per_class"].items():
        assert metrics["n_images"] == len(meta["test"][cls]) == 6
        assert metrics["n_anomalous"] == sum(s["anomaly"] for s in meta["test"][cls]) == 4
        assert "note" not in metrics
    for key in CLASS_KEYS:
        expected = np.mean([doc["per_class"][c][key] for c in visa_classes])
        assert doc["mean"][key] == pytest.approx(expected, abs=1e-12)
    args = doc["extra"]["args"]
    assert args["winmode"] == winmode and args["mode"] == "fasl" and args["nam"] is True
    assert Path(doc["extra"]["references"]) == winmode_runs[winmode] / "references.json"
    # what --search_precision auto resolved to on this machine is on record
    assert doc["extra"]["search_dtype"] == ("bfloat16" if cpu_has_amx() else "float32")


@pytest.mark.parametrize("winmode", ["nan", "mul", "onlywin"])
def test_results_csv_rows_match_json(winmode_runs, visa_classes, winmode):
    doc = read_results(winmode_runs[winmode])
    rows = read_csv(winmode_runs[winmode])
    assert list(rows) == [*visa_classes, "mean"]
    for cls, metrics in [*doc["per_class"].items(), ("mean", doc["mean"])]:
        for key in CLASS_KEYS:
            assert float(rows[cls][key]) == pytest.approx(metrics[key], abs=1e-6), (cls, key)
    md = (winmode_runs[winmode] / "results.md").read_text()
    for cls in visa_classes:
        assert f"{100 * doc['per_class'][cls]['pixel_auroc']:.1f}" in md


def test_mul_map_is_the_weighted_blend_of_global_and_window_maps(winmode_runs, visa_classes):
    for cls in visa_classes:
        paths, glob_maps, masks, _ = load_saved_maps(winmode_runs["nan"], cls)
        paths_w, win_maps, masks_w, _ = load_saved_maps(winmode_runs["onlywin"], cls)
        paths_m, mul_maps, _, _ = load_saved_maps(winmode_runs["mul"], cls)
        assert paths == paths_w == paths_m
        np.testing.assert_array_equal(masks, masks_w)
        assert not np.allclose(glob_maps, win_maps, atol=1e-7), "windows changed nothing"
        np.testing.assert_allclose(mul_maps, 0.5 * glob_maps + 0.5 * win_maps, atol=1e-6)


@pytest.mark.parametrize("winmode", ["nan", "mul", "onlywin"])
def test_saved_maps_reproduce_reported_metrics(winmode_runs, visa, visa_classes, winmode):
    doc = read_results(winmode_runs[winmode])
    meta = load_meta(visa)
    for cls in visa_classes:
        paths, maps, masks, scores = load_saved_maps(winmode_runs[winmode], cls)
        assert sorted(paths) == sorted(s["img_path"] for s in meta["test"][cls])
        assert maps.shape == masks.shape == (len(paths), EVAL, EVAL)
        assert maps.dtype == np.float32 and masks.dtype == np.uint8
        assert set(np.unique(masks)) <= {0, 1} and masks.sum() > 0
        assert (masks.reshape(len(paths), -1).max(1) == 0).sum() == 2  # the two normal images
        pixel = pixel_metrics(masks, maps)
        for key in ("auroc", "f1_max", "ap", "aupro"):
            assert pixel[key] == pytest.approx(doc["per_class"][cls][f"pixel_{key}"], abs=1e-9), key
        labels = {s["img_path"]: s["anomaly"] for s in meta["test"][cls]}
        image = image_metrics([labels[p] for p in paths], scores)
        for key in ("auroc", "f1_max", "ap"):
            assert image[key] == pytest.approx(doc["per_class"][cls][f"image_{key}"], abs=1e-6), key


def test_same_seed_twice_gives_identical_results(run_test, winmode_runs, tmp_path):
    run_test(tmp_path / "again", "--winmode", "nan")
    first, second = read_results(winmode_runs["nan"]), read_results(tmp_path / "again")
    assert metric_part(second) == metric_part(first)
    assert (tmp_path / "again" / "references.json").read_text() == \
        (winmode_runs["nan"] / "references.json").read_text()


def test_refs_file_is_reused_and_gives_identical_results(run_test, winmode_runs, visa, visa_classes, tmp_path):
    refs_file = winmode_runs["nan"] / "references.json"
    refs = json.loads(refs_file.read_text())["references"]
    assert sorted(refs) == visa_classes and all(len(v) == 1 for v in refs.values())
    run_test(tmp_path / "reused", "--winmode", "nan", "--save_maps", "--refs_file", str(refs_file))
    assert json.loads((tmp_path / "reused" / "references.json").read_text())["references"] == refs
    assert metric_part(read_results(tmp_path / "reused")) == metric_part(read_results(winmode_runs["nan"]))
    for cls in visa_classes:
        np.testing.assert_array_equal(load_saved_maps(tmp_path / "reused", cls)[1],
                                      load_saved_maps(winmode_runs["nan"], cls)[1])

    # --refs_file really decides: other references (same seed otherwise) give other maps
    meta = load_meta(visa)
    other = {c: [next(s["img_path"] for s in meta["train"][c] if s["img_path"] != refs[c][0])]
             for c in visa_classes}
    (tmp_path / "other.json").write_text(json.dumps({"references": other, "info": {}}))
    run_test(tmp_path / "other", "--winmode", "nan", "--save_maps", "--refs_file", str(tmp_path / "other.json"))
    assert json.loads((tmp_path / "other" / "references.json").read_text())["references"] == other
    for cls in visa_classes:
        assert not np.array_equal(load_saved_maps(tmp_path / "other", cls)[1],
                                  load_saved_maps(winmode_runs["nan"], cls)[1])


def test_fd_mode_needs_no_checkpoint(run_test, winmode_runs, visa_classes, tmp_path):
    run_test(tmp_path / "fd", "--mode", "fd", "--winmode", "mul", checkpoint=False)
    doc = read_results(tmp_path / "fd")
    assert_all_metrics_valid(doc, visa_classes)
    assert doc["extra"]["args"]["mode"] == "fd" and doc["extra"]["args"]["checkpoint_path"] is None
    assert metric_part(doc) != metric_part(read_results(winmode_runs["mul"]))


def test_fasl_mode_without_checkpoint_is_a_usage_error(run_test, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_test(tmp_path / "x", "--mode", "fasl", checkpoint=False)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "--mode fasl needs --checkpoint_path" in err
    assert not (tmp_path / "x").exists()


def test_no_nam_changes_the_scores(run_test, winmode_runs, visa_classes, tmp_path):
    run_test(tmp_path / "nonam", "--winmode", "nan", "--no-nam", "--save_maps")
    doc = read_results(tmp_path / "nonam")
    assert_all_metrics_valid(doc, visa_classes)
    assert doc["extra"]["args"]["nam"] is False
    for cls in visa_classes:
        with_nam = load_saved_maps(winmode_runs["nan"], cls)
        without = load_saved_maps(tmp_path / "nonam", cls)
        np.testing.assert_array_equal(with_nam[2], without[2])  # same masks
        assert np.abs(with_nam[1] - without[1]).max() > 1e-4
        assert not np.allclose(with_nam[3], without[3], atol=1e-6)


def test_no_transductive_changes_image_metrics_only(run_test, winmode_runs, visa_classes, tmp_path):
    run_test(tmp_path / "inductive", "--winmode", "nan", "--no-transductive", "--save_maps")
    inductive, transductive = read_results(tmp_path / "inductive"), read_results(winmode_runs["nan"])
    for cls in visa_classes:
        for key in CLASS_KEYS:
            if key.startswith("pixel_"):
                assert inductive["per_class"][cls][key] == transductive["per_class"][cls][key], (cls, key)
        _, maps, _, own = load_saved_maps(tmp_path / "inductive", cls)
        _, maps_t, _, blended = load_saved_maps(winmode_runs["nan"], cls)
        np.testing.assert_array_equal(maps, maps_t)
        assert not np.allclose(own, blended, atol=1e-6)
        # the reference's transductive score: the map maxima min-max normalised over the class's
        # maxima (not its pixels), averaged with the image's own score
        peaks = maps.reshape(len(maps), -1).max(1)
        normalised = (peaks - peaks.min()) / (peaks.max() - peaks.min())
        np.testing.assert_allclose(blended, 0.5 * (own + normalised), rtol=0, atol=1e-6)


def test_save_vis_writes_triptychs(run_test, winmode_runs, visa_classes, tmp_path):
    out = tmp_path / "run"
    run_test(out, "--winmode", "nan", "--save_vis")
    for cls in visa_classes:
        paths, _, masks, _ = load_saved_maps(winmode_runs["nan"], cls)
        pngs = sorted((out / "vis" / cls).glob("*.png"))
        assert sorted(p.stem for p in pngs) == sorted(file_stem(p) for p in paths)
        red_minus_blue = []
        for path, mask in zip(paths, masks):
            arr = np.asarray(Image.open(out / "vis" / cls / f"{file_stem(path)}.png"))
            assert arr.shape[0] == EVAL and arr.shape[1] > 3 * EVAL and arr.dtype == np.uint8  # + colour bar
            left, middle, right = arr[:, :EVAL], arr[:, EVAL:2 * EVAL], arr[:, 2 * EVAL:3 * EVAL]
            # the middle panel carries the ground-truth outline exactly when there is a defect
            assert np.array_equal(left, middle) == (mask.sum() == 0), path
            assert not np.array_equal(left, right)  # heat-map overlay
            bar = arr[:, 3 * EVAL:3 * EVAL + 4].astype(int)
            assert bar[0, 0, 0] > bar[0, 0, 2] and bar[-1, 0, 2] > bar[-1, 0, 0]  # red on top, blue at the bottom
            jet = 2 * right.astype(int) - left.astype(int)  # overlay = (image + colour) / 2
            red_minus_blue.append(jet[..., 0] - jet[..., 2])
        # one colour scale per class (1st to 99.9th percentile): its maps span blue to red between them
        spread = np.stack(red_minus_blue)
        assert spread.max() > 100 and spread.min() < -100


def test_class_with_only_normal_test_images_reports_na(run_test, visa, tmp_path, capsys):
    data = tmp_path / "visa_normal_only"
    shutil.copytree(visa, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["test"]["pcb"] = [s for s in meta["test"]["pcb"] if s["anomaly"] == 0]
    assert len(meta["test"]["pcb"]) == 2
    (data / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()

    returned = run_test(tmp_path / "out", "--winmode", "nan", data=data)
    doc = read_results(tmp_path / "out")
    assert returned == doc["per_class"]
    pcb, blobs = doc["per_class"]["pcb"], doc["per_class"]["blobs"]
    for key in ("image_auroc", "image_f1_max", "image_ap"):
        assert pcb[key] is None
        assert doc["mean"][key] == pytest.approx(blobs[key])
        assert doc["mean"]["counts"][key] == 1
    assert "only normal" in pcb["note"]
    assert pcb["n_images"] == 2 and pcb["n_anomalous"] == 0
    assert_all_metrics_valid({"per_class": {"blobs": blobs}, "mean": {k: blobs[k] for k in CLASS_KEYS}}, ["blobs"])
    table = capsys.readouterr().out
    pcb_row = next(line for line in table.splitlines() if line.startswith("| pcb"))
    assert pcb_row.count("n/a") >= 3
    blobs_row = next(line for line in table.splitlines() if line.startswith("| blobs"))
    assert "n/a" not in blobs_row
    row = read_csv(tmp_path / "out")["pcb"]
    assert row["image_auroc"] == "" and "only normal" in row["note"]


# ----------------------------------------------------------------------------- resume

class Interrupted(Exception):
    """Stands in for a crash / Ctrl-C in the middle of an epoch."""


def test_resume_after_interrupted_epoch_matches_uninterrupted_run(
        syn_datasets, mvtec_ckpt, train_args, tiny_backbone_args, tmp_path, monkeypatch):
    common = ["--train_data_path", str(syn_datasets["mvtec"]), "--dataset", "mvtec", *train_args,
              *tiny_backbone_args]
    straight = train.main([*common, "--save_path", str(tmp_path / "A"), "--epoch", "2"])
    assert straight == tmp_path / "A" / "epoch_2.pth"
    # training is deterministic: A's first epoch is the shared fixture's epoch_1.pth
    state_equal(torch.load(tmp_path / "A" / "epoch_1.pth", weights_only=True)["heads"],
                torch.load(mvtec_ckpt, weights_only=True)["heads"], "epoch_1 heads")

    # run B: epoch 1 done (same seed and arguments), then epoch 2 dies after one optimiser step
    (tmp_path / "B").mkdir()
    shutil.copy(mvtec_ckpt, tmp_path / "B" / "epoch_1.pth")
    served = []
    collate = train.default_collate

    def interrupted_collate(items):
        """Serves one batch (trained on: loss, backward, step), then fails assembling the next."""
        if served:
            raise Interrupted
        served.append(len(items))
        return collate(items)

    monkeypatch.setattr(train, "default_collate", interrupted_collate)
    with pytest.raises(Interrupted):
        train.main([*common, "--save_path", str(tmp_path / "B"), "--epoch", "2", "--resume"])
    assert served == [6], "epoch 2 should have trained on exactly one batch before the interruption"
    assert not (tmp_path / "B" / "epoch_2.pth").exists()
    monkeypatch.undo()

    resumed = train.main([*common, "--save_path", str(tmp_path / "B"), "--epoch", "2", "--resume"])
    assert resumed == tmp_path / "B" / "epoch_2.pth"
    a = torch.load(straight, map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    state_equal(b["heads"], a["heads"], "heads")
    state_equal(b["optimizer"], a["optimizer"], "optimizer")
    assert b["config"] == a["config"]
    # and the second epoch really changed the heads
    one = torch.load(mvtec_ckpt, weights_only=True)["heads"]
    assert any(not torch.equal(one[k], a["heads"][k]) for k in one if one[k].is_floating_point())
    assert "resumed from" in (tmp_path / "B" / "train.log").read_text()


# ----------------------------------------------------------------------------- refusals and errors

def test_checkpoint_of_another_width_is_refused(syn_datasets, mvtec_ckpt, run_test, tiny_backbone_args, tmp_path):
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 224, "layers": 4, "width": 32, "head_width": 16, "patch_size": 14},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    cfg_path = tmp_path / "fasl-tiny-vit-w32.json"
    cfg_path.write_text(json.dumps(config))
    narrow = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "w32"),
                         "--epoch", "1", "--batch_size", "6", "--classes", "disc", *tiny_backbone_args,
                         "--model", str(cfg_path)])
    state = torch.load(narrow, weights_only=True)
    assert state["config"]["widths"] == [32] * 4 and state["config"]["model"] == "fasl-tiny-vit-w32"

    with pytest.raises(CheckpointMismatch, match=r"widths: checkpoint .* has \[32, 32, 32, 32\], this model has \[64"):
        test_few_shot.main(["--data_path", str(syn_datasets["visa"]), "--save_path", str(tmp_path / "out"),
                            "--checkpoint_path", str(narrow), "--eval_size", str(EVAL), *WINDOWS,
                            *tiny_backbone_args])
    # and the other way round: the 64-wide checkpoint on the 32-wide backbone
    with pytest.raises(CheckpointMismatch, match=r"widths: checkpoint .* has \[64, 64, 64, 64\], this model has \[32"):
        test_few_shot.main(["--data_path", str(syn_datasets["visa"]), "--save_path", str(tmp_path / "out2"),
                            "--checkpoint_path", str(mvtec_ckpt), "--eval_size", str(EVAL), *WINDOWS,
                            *tiny_backbone_args, "--model", str(cfg_path)])
    assert not (tmp_path / "out" / "results.json").exists()


def _cli(name: str, data: Path, save: Path, *extra: str, backbone=()) -> list:
    if name == "train":
        return [train.main, ["--train_data_path", str(data), "--save_path", str(save), "--epoch", "1",
                             *backbone, *extra]]
    return [test_few_shot.main, ["--data_path", str(data), "--save_path", str(save), "--mode", "fd",
                                 "--eval_size", str(EVAL), *backbone, *extra]]


@pytest.mark.parametrize("cli", ["train", "test"])
@pytest.mark.parametrize("what", ["missing_root", "missing_meta"])
def test_missing_dataset_names_the_path_and_the_build_command(cli, what, tiny_backbone_args, tmp_path):
    root = tmp_path / "datasets" / "mvtec"
    if what == "missing_meta":
        (root / "bottle" / "train" / "good").mkdir(parents=True)
    fn, argv = _cli(cli, root, tmp_path / "out", backbone=tiny_backbone_args)
    with pytest.raises(FileNotFoundError) as exc:
        fn(argv)
    message = str(exc.value)
    assert str(root / "meta.json") in message
    assert f"python data/mvtec.py --data_root {root}" in message and "python data/visa.py" in message


def test_k_larger_than_the_train_images_says_how_many_there_are(syn_datasets, tiny_backbone_args, tmp_path):
    fn, argv = _cli("test", syn_datasets["mvtec"], tmp_path / "out", "--k_shot", "4", backbone=tiny_backbone_args)
    with pytest.raises(ValueError, match=r"k=4 .* has only 3 normal images"):
        fn(argv)
    assert not (tmp_path / "out" / "results.json").exists()


def test_training_banks_take_all_good_images_of_a_class_with_fewer_than_k(syn_datasets, tiny_backbone_args,
                                                                          tmp_path):
    """The reference's training banks hold 10 references per class (its --k_shot default); a class
    with fewer good images gives all of them, distinct, and the log says so."""
    fn, argv = _cli("train", syn_datasets["mvtec"], tmp_path / "out", backbone=tiny_backbone_args)
    fn(argv)
    refs = json.loads((tmp_path / "out" / "references.json").read_text())["references"]
    meta = load_meta(syn_datasets["mvtec"])
    for cls, paths in refs.items():
        assert sorted(paths) == sorted(s["img_path"] for s in meta["train"][cls])  # all 3, no repeats
    assert "fewer than 10 good images use all of them" in (tmp_path / "out" / "train.log").read_text()


@pytest.mark.parametrize("cli", ["train", "test"])
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "-1"])
def test_bad_device_string_is_an_error(cli, device, syn_datasets, tiny_backbone_args, tmp_path):
    fn, argv = _cli(cli, syn_datasets["mvtec"], tmp_path / "out", backbone=tiny_backbone_args)
    with pytest.raises(ValueError, match=rf"invalid device '{device}'.*'cpu', 'cuda', 'cuda:N' or N"):
        fn([*argv, "--device", device])


def test_each_run_logs_only_into_its_own_folder(run_test, tmp_path):
    run_test(tmp_path / "first", "--mode", "fd", checkpoint=False)
    run_test(tmp_path / "second", "--mode", "fd", checkpoint=False)
    assert str(tmp_path / "second") in (tmp_path / "second" / "test.log").read_text()
    assert str(tmp_path / "second") not in (tmp_path / "first" / "test.log").read_text()


# ----------------------------------------------------------------------------- review fixes

def test_no_input_bn_checkpoint_is_tested_with_its_own_head_layout(syn_datasets, run_test, tiny_backbone_args,
                                                                    train_args, tmp_path):
    ckpt = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "nobn"),
                       "--epoch", "1", "--no-input_bn", *train_args, *tiny_backbone_args])
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["input_bn"] is False
    argv = ["--data_path", str(syn_datasets["visa"]), "--save_path", str(tmp_path / "out"), "--checkpoint_path",
            str(ckpt), "--eval_size", "32", *tiny_backbone_args]
    doc = test_few_shot.main(argv)
    assert set(doc) == set(load_meta(syn_datasets["visa"])["test"])


def test_resume_with_other_settings_is_refused(syn_datasets, tiny_backbone_args, train_args, tmp_path):
    argv = ["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "run"),
            *train_args, *tiny_backbone_args]
    train.main([*argv, "--epoch", "1"])
    with pytest.raises(ValueError, match=r"--resume: .*other settings.*learning_rate: checkpoint 0.001, now 0.01"):
        train.main([*argv, "--epoch", "2", "--resume", "--learning_rate", "0.01"])


def test_class_without_test_images_is_named(run_test, visa, tmp_path):
    data = tmp_path / "visa_empty"
    shutil.copytree(visa, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["test"]["pcb"] = []
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"\['pcb'\] have no test images"):
        run_test(tmp_path / "out", "--mode", "fd", data=data, checkpoint=False)


def test_transductive_score_is_the_reference_formula():
    """Hand-computed: map maxima 0.3, 0.5, 0.7 -> (m - 0.3) / 0.4 = 0, 0.5, 1, averaged with the
    scores 0.2, 0.4, 0.9 -> 0.1, 0.45, 0.95. The pixel minimum (0) plays no part."""
    maps = np.zeros((3, 4, 4))
    maps[0, 1, 2], maps[1, 3, 3], maps[2, 0, 0] = 0.3, 0.5, 0.7
    scores = np.array([0.2, 0.4, 0.9])
    np.testing.assert_allclose(transductive_scores(scores, maps), [0.1, 0.45, 0.95], rtol=0, atol=1e-12)
    # normalising by the pixel range instead would give 0.5 * (s + m / 0.7): another number
    assert not np.allclose(transductive_scores(scores, maps), 0.5 * (scores + maps.max((1, 2)) / 0.7))
    # every map with the same maximum: the normalised term is 0 (the reference divides by zero)
    np.testing.assert_allclose(transductive_scores(scores, np.ones((3, 2, 2))), scores / 2)


def test_no_nam_training_leaves_the_nam_untrained_and_out_of_the_loss(syn_datasets, tiny_backbone_args, tmp_path):
    """useNAM 0 is the reference's 'without NAM' ablation: the NAM gets no gradient (two runs with
    different learning rates keep the same NAM weights while their heads differ), and heads
    trained so refuse to be scored with NAM."""
    states = []
    for lr in ("0.01", "0.001"):
        path = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / lr),
                           "--epoch", "1", "--batch_size", "6", "--k_shot", "1", "--no-nam", "--learning_rate", lr,
                           *tiny_backbone_args])
        states.append(torch.load(path, weights_only=True))
    nam = [{k: v for k, v in s["heads"].items() if k.startswith("nam.")} for s in states]
    assert nam[0] and all(torch.equal(nam[0][k], nam[1][k]) for k in nam[0])
    heads = [{k: v for k, v in s["heads"].items() if k.startswith("heads.") and v.is_floating_point()} for s in states]
    assert any(not torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert states[0]["run"]["nam"] is False
    ckpt = str(tmp_path / "0.01" / "epoch_1.pth")
    common = ["--data_path", str(syn_datasets["visa"]), "--checkpoint_path", ckpt, "--eval_size", str(EVAL),
              *tiny_backbone_args]
    with pytest.raises(ValueError, match="trained without NAM"):
        test_few_shot.main(["--save_path", str(tmp_path / "with"), *common])
    assert test_few_shot.main(["--save_path", str(tmp_path / "without"), "--no-nam", *common])


def test_reproduction_programs_and_predict_align_exhaustively(tmp_path):
    """The reference's numbers come from exhaustive search; predict.py's decisions were measured
    better with it too (docs/predict.md, Decisions on real parts)."""
    import predict

    assert train.parse_args(["--train_data_path", "x", "--save_path", "y"]).align == "exhaustive"
    assert train.parse_args(["--train_data_path", "x", "--save_path", "y"]).k_shot == 10
    assert test_few_shot.parse_args(["--data_path", "x", "--save_path", "y", "--mode", "fd"]).align == "exhaustive"
    assert predict.parse_args(["--refs", "a", "--images", "b", "--out", "c"]).align == "exhaustive"


def test_training_changes_beyond_the_reference_are_recorded(syn_datasets, tiny_backbone_args, tmp_path):
    """--nam_residual is part of the head layout; --dice_smooth and --class_batches of the run."""
    path = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "x"),
                       "--epoch", "1", "--batch_size", "4", "--k_shot", "1", "--nam_residual", "--dice_smooth",
                       "0.01", "--class_batches", *tiny_backbone_args])
    state = torch.load(path, weights_only=True)
    assert state["config"]["nam_residual"] is True
    assert state["run"]["dice_smooth"] == 0.01 and state["run"]["class_batches"] is True
    common = ["--data_path", str(syn_datasets["visa"]), "--eval_size", str(EVAL), *tiny_backbone_args]
    results = test_few_shot.main([*common, "--save_path", str(tmp_path / "t"), "--checkpoint_path", str(path)])
    assert_all_metrics_valid(read_results(tmp_path / "t"), list(results))
    fd = test_few_shot.main([*common, "--save_path", str(tmp_path / "fd"), "--mode", "fd"])
    # the residual NAM's heads are loaded and make the maps (the run would refuse a layout that does not fit)
    assert any(results[c]["pixel_auroc"] != pytest.approx(fd[c]["pixel_auroc"], abs=1e-6) for c in results)


def test_balanced_classes_are_recorded_and_refused_with_class_batches(syn_datasets, tiny_backbone_args, tmp_path):
    common = ["--train_data_path", str(syn_datasets["mvtec"]), "--epoch", "1", "--batch_size", "4", "--k_shot", "1",
              *tiny_backbone_args]
    path = train.main([*common, "--save_path", str(tmp_path / "b"), "--balance_classes"])
    assert torch.load(path, weights_only=True)["run"]["balance_classes"] is True
    with pytest.raises(SystemExit):
        train.main([*common, "--save_path", str(tmp_path / "c"), "--balance_classes", "--class_batches"])
    assert not (tmp_path / "c").exists()


def test_a_sweep_writes_every_run_and_mean_and_std_over_seeds(run_test, winmode_runs, visa_classes, tmp_path):
    """--k_shot 1 2 --seeds 5 6: each run as a single run would write it (the (1, 5) run equals the
    plain run), and sweep.json's mean / std are those of the runs' numbers over the seeds."""
    out = tmp_path / "sweep"
    returned = run_test(out, "--winmode", "nan", "--save_maps", "--k_shot", "1", "2", "--seeds", "5", "6")
    assert sorted(returned) == ["1shot/seed5", "1shot/seed6", "2shot/seed5", "2shot/seed6"]
    assert read_results(out / "1shot" / "seed5")["per_class"] == read_results(winmode_runs["nan"])["per_class"]
    runs = {(k, s): read_results(out / f"{k}shot" / f"seed{s}") for k in (1, 2) for s in (5, 6)}
    sweep = json.loads((out / "sweep.json").read_text())
    for k in (1, 2):
        for cls in visa_classes:
            values = [runs[(k, s)]["per_class"][cls]["pixel_auroc"] for s in (5, 6)]
            got = sweep["k_shot"][str(k)]["per_class"][cls]["pixel_auroc"]
            assert got["mean"] == pytest.approx(np.mean(values)) and got["std"] == pytest.approx(np.std(values, ddof=1))
        mean = sweep["k_shot"][str(k)]["per_class"]["mean"]["image_auroc"]
        per_seed = [np.mean([runs[(k, s)]["per_class"][c]["image_auroc"] for c in visa_classes]) for s in (5, 6)]
        assert mean["mean"] == pytest.approx(np.mean(per_seed))
        for s in (5, 6):
            drawn = json.loads((out / f"{k}shot" / f"seed{s}" / "references.json").read_text())["references"]
            assert sweep["references"][str(k)][str(s)] == drawn and all(len(v) == k for v in drawn.values())
    assert "± std over seeds [5, 6] (percent; std: the sample standard deviation (ddof 1; 0 for a single value))" \
        in (out / "sweep.md").read_text()
    header = (out / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["k", "class", "image_auroc_mean", "image_auroc_std"]
    with pytest.raises(SystemExit):
        test_few_shot.parse_args(["--data_path", "x", "--save_path", "y", "--mode", "fd", "--refs_file", "r.json",
                                  "--seeds", "1", "2"])
    # --seeds with one seed is a sweep still: its run has its own folder, and a summary
    run_test(tmp_path / "one", "--winmode", "nan", "--seeds", "5")
    assert (tmp_path / "one" / "1shot" / "seed5" / "results.json").is_file() and (tmp_path / "one" / "sweep.json").is_file()
