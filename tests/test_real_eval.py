"""bench/real_eval.py on the tiny model: its numbers are the programs' numbers, heads never see
the test class, and trained heads are reused."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import real_eval  # noqa: E402
import test_few_shot  # noqa: E402

TINY = ["--model", "fasl-tiny-vit", "--image_size", "112", "--features_list", "1", "2", "3", "4"]


@pytest.fixture(scope="module")
def evaluated(syn_datasets, tmp_path_factory):
    base = tmp_path_factory.mktemp("real_eval")
    argv = ["--data_root", str(syn_datasets["mvtec"]), "--weights", "none", *TINY, "--k_shot", "1", "--seeds", "0",
            "--sources", "masks", "synth_own", "--winmodes", "nan", "--train_steps", "2", "--batch_size", "2",
            "--train_k", "1", "--eval_size", "112", "--workdir", str(base / "work"), "--out", str(base / "out")]
    result = real_eval.main(argv)
    return argv, base, result


def _program(data, out, *extra):
    test_few_shot.main(["--data_path", str(data), "--dataset", "mvtec", "--save_path", str(out), *TINY,
                        "--pretrained", "none", "--k_shot", "1", "--seed", "0", "--winmode", "nan", "--align",
                        "exhaustive", "--search_precision", "exact", "--precision", "fp32", "--eval_size", "112",
                        *extra])
    return json.loads((out / "results.json").read_text())["per_class"]


def _record(result, cls, method):
    (rec,) = [r for r in result["records"] if r["class"] == cls and r["method"] == method]
    return rec


def test_every_method_class_and_run_is_recorded(evaluated):
    _, base, result = evaluated
    methods = {r["method"] for r in result["records"]}
    assert methods == {"fd"} | {f"{m} [{s}]" for m in ("asl", "merged", "asl+nam", "merged+nam")
                                for s in ("masks", "synth_own")}
    assert len(result["records"]) == 2 * len(methods)  # 2 classes x 1 k x 1 seed
    assert "Δ pix AUROC vs FD" in (base / "out" / "tables.md").read_text()


def test_fd_and_heads_equal_test_few_shot(evaluated, syn_datasets, tmp_path):
    """The table's FD row is test_few_shot.py --mode fd, and its heads row is test_few_shot.py with
    the checkpoint real_eval trained for that class (on the *other* class only)."""
    _, base, result = evaluated
    data = syn_datasets["mvtec"]
    fd = _program(data, tmp_path / "fd", "--mode", "fd")
    for cls in ("disc", "weave"):
        for key in ("pixel_auroc", "pixel_aupro", "image_auroc"):
            assert _record(result, cls, "fd")[key] == pytest.approx(fd[cls][key], abs=1e-9), (cls, key)
    other = "weave"  # heads for the test class disc learn from weave's defects alone
    (folder,) = (base / "work").glob(f"masks-{other}-asl-*")
    ckpt = max(folder.glob("epoch_*.pth"))
    args = json.loads((folder / "train_args.json").read_text())
    assert args["classes"] == [other]
    heads = _program(data, tmp_path / "heads", "--mode", "fasl", "--no-nam", "--checkpoint_path", str(ckpt),
                     "--classes", "disc")
    for key in ("pixel_auroc", "pixel_aupro"):
        assert _record(result, "disc", "asl [masks]")[key] == pytest.approx(heads["disc"][key], abs=1e-9), key


def test_trained_heads_are_reused(evaluated, monkeypatch):
    argv, _, result = evaluated

    def no_training(*_, **__):
        raise AssertionError("heads retrained although cached")

    def no_encoding(*_, **__):
        raise AssertionError("test images re-encoded although cached")

    monkeypatch.setattr(real_eval.subprocess, "run", no_training)  # train.py runs as a program
    monkeypatch.setattr(real_eval.FASL, "encode", no_encoding)
    again = real_eval.main(argv)
    assert again["records"] == result["records"]


@pytest.fixture(scope="module")
def shared_run(syn_datasets, tmp_path_factory):
    """Two training seeds, one NAM run per seed scored with and without its NAM, a recipe label."""
    base = tmp_path_factory.mktemp("real_eval_shared")
    argv = ["--data_root", str(syn_datasets["mvtec"]), "--weights", "none", *TINY, "--k_shot", "1", "--seeds", "0",
            "--sources", "synth_all", "--winmodes", "nan", "--train_steps", "2", "--batch_size", "2",
            "--train_k", "1", "--eval_size", "112", "--train_seeds", "0", "1", "--nam_runs", "shared",
            "--label", "x", "--workdir", str(base / "work"), "--out", str(base / "out")]
    return base, real_eval.main(argv)


def test_shared_nam_runs_train_once_per_seed_and_label_the_methods(shared_run):
    base, result = shared_run
    folders = sorted(f.name for f in (base / "work").iterdir() if f.name != "features")
    # synth_all trains on every class: one run per seed serves both test classes, all four modes
    assert len(folders) == 2 and all("-nam-" in f for f in folders), folders
    methods = {r["method"] for r in result["records"]}
    assert methods == {"fd"} | {f"{m} [synth_all, x]" for m in ("asl", "merged", "asl+nam", "merged+nam")}
    assert {r["train_seed"] for r in result["records"] if r["method"] != "fd"} == {0, 1}
    assert len([r for r in result["records"] if r["method"] == "fd"]) == 2  # one per class, not per seed
    # asl and asl+nam come from the same checkpoint: NAM changes the map, so they differ
    a, b = (_record({"records": [r for r in result["records"] if r["train_seed"] == 1]}, "disc", m)
            for m in ("asl [synth_all, x]", "asl+nam [synth_all, x]"))
    assert a["pixel_auroc"] != b["pixel_auroc"]


def test_spread_tables_and_picture_are_written(shared_run):
    base, result = shared_run
    text = (base / "out" / "tables.md").read_text()
    assert "mean ± std over training seeds [0, 1] (std: the sample standard deviation (ddof 1; 0 for a single value)" \
        in text and "fd (absolute)" in text
    from PIL import Image

    with Image.open(base / "out" / "delta_nan.png") as img:
        assert img.size[0] == 1500 and len(img.convert("L").getcolors(4096) or []) > 10  # drawn, not blank


def test_seed_deltas_by_hand():
    def rec(method, cls, train_seed, k, value):
        return {"method": method, "class": cls, "train_seed": train_seed, "k": k, "seed": 0, "winmode": "nan",
                "pixel_auroc": value}

    records = [rec("fd", "a", 0, 1, 0.8), rec("fd", "a", 0, 2, 0.9), rec("fd", "b", 0, 1, 0.5), rec("fd", "b", 0, 2, 0.5),
               rec("m", "a", 0, 1, 0.9), rec("m", "a", 0, 2, 1.0), rec("m", "a", 1, 1, 0.7), rec("m", "a", 1, 2, 0.8),
               rec("m", "b", 0, 1, 0.6), rec("m", "b", 0, 2, 0.6), rec("m", "b", 1, 1, 0.5), rec("m", "b", 1, 2, 0.3)]
    d = real_eval.seed_deltas(records, "nan", "pixel_auroc")["m"]
    assert d["a"] == pytest.approx([0.1, -0.1]) and d["b"] == pytest.approx([0.1, -0.1])
    assert d["mean"] == pytest.approx([0.1, -0.1])
    mean, sd = real_eval._spread(d["mean"]).split(" ± ")
    assert float(mean) == pytest.approx(0.0) and sd == "0.1414"  # sample std (ddof 1)
    assert real_eval._spread([0.25]) == "+0.2500 ± 0.0000"  # one seed: spread 0, as every table writes it


def test_one_spread_convention_by_value():
    """Every "mean ± spread" table: the sample standard deviation (ddof 1), 0 for a single value."""
    from utils.metrics import mean_spread

    assert mean_spread([0.1, 0.3]) == pytest.approx((0.2, 0.1414213562))  # sqrt(0.02 / 1), not sqrt(0.02 / 2)
    assert mean_spread([1.0, 2.0, 3.0, 6.0]) == pytest.approx((3.0, 2.1602468995))  # sqrt(14 / 3)
    assert mean_spread([0.25]) == (0.25, 0.0)
    with pytest.raises(ValueError):
        mean_spread([])


def test_combine_merges_runs_and_refuses_a_method_measured_twice(evaluated, shared_run, tmp_path):
    _, base_a, result_a = evaluated
    base_b, result_b = shared_run
    files = [str(base_a / "out" / "results.json"), str(base_b / "out" / "results.json")]
    both = real_eval.main(["--combine", *files, "--out", str(tmp_path / "c")])
    assert {r["method"] for r in both["records"]} == ({r["method"] for r in result_a["records"]}
                                                       | {r["method"] for r in result_b["records"]})
    assert [r for r in both["records"] if r["method"] == "fd"] == [r for r in result_a["records"]
                                                                   if r["method"] == "fd"]
    assert (tmp_path / "c" / "delta_nan.png").is_file()
    with pytest.raises(ValueError, match="own --label"):
        real_eval.main(["--combine", files[0], files[0], "--out", str(tmp_path / "d")])


def test_data_root_and_weights_are_required_without_combine():
    with pytest.raises(SystemExit):
        real_eval.parse_args(["--weights", "none"])


def test_test_classes_scores_a_subset_with_the_same_numbers(evaluated, tmp_path):
    argv, _, result = evaluated
    out = argv.index("--out")
    sub = real_eval.main([*argv[:out], "--out", str(tmp_path / "sub"), "--test_classes", "disc"])
    assert sub["records"] == [r for r in result["records"] if r["class"] == "disc"]
    with pytest.raises(ValueError, match="not classes of"):
        real_eval.main([*argv[:out], "--out", str(tmp_path / "bad"), "--test_classes", "nope"])


def test_ensemble_of_identical_heads_equals_the_single_heads(shared_run, syn_datasets, tmp_path):
    """--ensemble averages the training seeds' maps: two copies of seed 0's heads score as seed 0."""
    base, result = shared_run
    argv = ["--data_root", str(syn_datasets["mvtec"]), "--weights", "none", *TINY, "--k_shot", "1", "--seeds", "0",
            "--sources", "synth_all", "--winmodes", "nan", "--train_steps", "2", "--batch_size", "2",
            "--train_k", "1", "--eval_size", "112", "--train_seeds", "0", "0", "--nam_runs", "shared",
            "--label", "x", "--workdir", str(base / "work"), "--out", str(tmp_path / "ens"), "--ensemble"]
    ens = real_eval.main(argv)
    for cls in ("disc", "weave"):
        for name in ("asl [synth_all, x]", "merged+nam [synth_all, x]"):
            (single,) = [r for r in result["records"] if r["class"] == cls and r["method"] == name
                         and r["train_seed"] == 0]
            (mean,) = [r for r in ens["records"] if r["class"] == cls and r["method"] == f"{name} ens"]
            assert mean["train_seed"] == real_eval.ENSEMBLE_SEED
            for key in real_eval.METRICS:
                assert mean[key] == pytest.approx(single[key], abs=1e-9), (cls, name, key)


def test_picture_methods_are_checked(shared_run, tmp_path):
    base, _ = shared_run
    files = [str(base / "out" / "results.json")]
    real_eval.main(["--combine", *files, "--out", str(tmp_path / "p"), "--picture_methods", "asl [synth_all, x]"])
    assert (tmp_path / "p" / "delta_nan.png").is_file()
    with pytest.raises(ValueError, match="were not measured"):
        real_eval.main(["--combine", *files, "--out", str(tmp_path / "q"), "--picture_methods", "asl [masks]"])


def _rec(cls, epoch, auroc, aupro, **extra):
    return {"class": cls, "k": 1, "seed": 0, "winmode": "nan", "train_seed": 0, "method": "m", "epoch": epoch,
            "choice_of": "m early", "choice": epoch, "image_auroc": 0.5, "pixel_auroc": auroc, "pixel_ap": 0.1,
            "pixel_aupro": aupro, **extra}


def test_early_stopping_chooses_each_class_epoch_on_the_other_classes():
    """a's epoch is chosen on b and c, b's on a and c, c's on a and b; a class's own numbers never count."""
    records = [_rec("a", 1, 0.90, 0.80, earlier=True), _rec("a", 2, 0.99, 0.99),        # a is best at 2 itself
               _rec("b", 1, 0.95, 0.85, earlier=True), _rec("b", 2, 0.80, 0.70),
               _rec("c", 1, 0.70, 0.60, earlier=True), _rec("c", 2, 0.74, 0.64),
               {k: v for k, v in _rec("a", 9, 0.1, 0.1, method="fd").items()
                if k not in ("epoch", "choice", "choice_of")}]  # FD: not a candidate
    early = {r["class"]: r for r in real_eval.chosen_on_other_classes(records)}
    # a: on b, c epoch 1 = (0.90 + 0.65) / 2 = 0.775 > epoch 2 = (0.75 + 0.69) / 2 = 0.72 -> 1
    # b: on a, c epoch 1 = (0.85 + 0.65) / 2 = 0.75 < epoch 2 = (0.99 + 0.69) / 2 = 0.84 -> 2
    # c: on a, b epoch 1 = (0.85 + 0.90) / 2 = 0.875 > epoch 2 = (0.99 + 0.75) / 2 = 0.87 -> 1
    assert {c: r["epoch"] for c, r in early.items()} == {"a": 1, "b": 2, "c": 1}
    assert {c: r["choice"] for c, r in early.items()} == {"a": 1, "b": 2, "c": 1}
    assert early["a"]["pixel_auroc"] == 0.90 and early["a"]["method"] == "m early" and "earlier" not in early["a"]
    with pytest.raises(ValueError, match="two test classes"):
        real_eval.chosen_on_other_classes([r for r in records if r["class"] == "a"])


def test_early_stop_scores_every_epoch_and_refuses_masks(syn_datasets, tmp_path):
    argv = ["--data_root", str(syn_datasets["mvtec"]), "--weights", "none", *TINY, "--k_shot", "1", "--seeds", "0",
            "--sources", "synth_all", "--winmodes", "nan", "--train_steps", "12", "--batch_size", "2",
            "--train_k", "1", "--eval_size", "112", "--train_seeds", "0", "--nam_runs", "shared",
            "--workdir", str(tmp_path / "work")]
    plain = real_eval.main([*argv, "--out", str(tmp_path / "plain")])
    again = real_eval.main([*argv, "--out", str(tmp_path / "early"), "--early_stop"])  # cached: only scoring
    assert len({r["epoch"] for r in again["earlier_epochs"]}) >= 2
    # --train_steps 12 is train.py's --steps 12: 4 good images (3 a class, its reference left out) in batches of 2
    # are 2 steps an epoch, 6 epochs (the old rule of its own counted 6 images, 3 batches, and trained 4)
    epochs = {r["epoch"] for r in again["earlier_epochs"] + again["records"] if "epoch" in r}
    import train

    assert epochs == set(range(1, 7)) and train.epochs_for_steps(12, 2) == 6
    last = [r for r in again["records"] if not r["method"].endswith(" early")]
    assert [{k: v for k, v in r.items() if k not in ("choice", "choice_of")} for r in last] == plain["records"]
    early = [r for r in again["records"] if r["method"].endswith(" early")]
    assert {r["method"] for r in early} == {f"{m} early" for m in {r["method"] for r in last} - {"fd"}}
    scored = {(x["class"], x["train_seed"], x["method"], x["epoch"]): x["pixel_auroc"]
              for x in again["earlier_epochs"] + last if "epoch" in x}
    assert all(r["pixel_auroc"] == scored[(r["class"], r["train_seed"], r["method"][:-len(" early")], r["epoch"])]
               for r in early)
    text = (tmp_path / "early" / "tables.md").read_text()
    assert "every epoch's heads" in text and "merged+nam [synth_all] epoch 1" in text
    with pytest.raises(SystemExit):
        real_eval.main([*argv[:argv.index("--sources") + 1], "masks", *argv[argv.index("--sources") + 2:],
                        "--early_stop"])


@pytest.mark.parametrize("steps, batches, epochs", [(150, 26, 6), (130, 26, 5), (75, 26, 3), (75, 17, 4), (1, 100, 1),
                                                    (5, 2, 2), (7, 2, 4), (9, 3, 3)])
def test_steps_become_the_nearest_whole_epochs(steps, batches, epochs):
    """One rule (train.epochs_for_steps) for train.py --steps and real_eval.py --train_steps: the
    nearest whole number of epochs, at least 1, a tie to the even number."""
    import train

    assert train.epochs_for_steps(steps, batches) == epochs


def test_train_steps_reach_train_py_as_steps():
    args = real_eval.parse_args(["--data_root", "x", "--weights", "none", "--train_steps", "75"])
    meta = {"train": {"a": [], "b": []}, "test": {"a": [], "b": []}}
    argv = real_eval.training_argv(args, meta, "a", "synth_all", True, 0)
    assert argv[argv.index("--steps") + 1] == "75" and "--epoch" not in argv


def test_learned_modes_select_the_methods():
    args = real_eval.parse_args(["--data_root", "x", "--weights", "none", "--sources", "synth_all",
                                 "--learned_modes", "merged+nam", "asl", "--label", "r"])
    assert [m[0] for m in real_eval.methods(args)] == ["fd", "asl [synth_all, r]", "merged+nam [synth_all, r]"]
    assert len(real_eval.methods(real_eval.parse_args(["--data_root", "x", "--weights", "none"]))) == 1 + 3 * 4


def test_weighted_merges_at_one_equal_merged_and_the_weight_is_chosen_per_class(syn_datasets, tmp_path):
    argv = ["--data_root", str(syn_datasets["mvtec"]), "--weights", "none", *TINY, "--k_shot", "1", "--seeds", "0",
            "--sources", "synth_all", "--winmodes", "nan", "--train_steps", "2", "--batch_size", "2",
            "--train_k", "1", "--eval_size", "112", "--nam_runs", "shared", "--learned_modes", "asl+nam", "merged+nam",
            "--merge_weights", "0.5", "1", "3", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    result = real_eval.main(argv)
    for cls in ("disc", "weave"):
        one, merged = (_record(result, cls, m) for m in ("merged+nam [synth_all] w=1", "merged+nam [synth_all]"))
        for key in ("pixel_auroc", "pixel_aupro", "pixel_ap"):
            assert one[key] == pytest.approx(merged[key], abs=1e-6), (cls, key)  # summed after upsampling
        chosen = _record(result, cls, "merged+nam [synth_all] weighted")
        assert chosen["choice"] in (0.5, 1, 3)
        assert chosen["pixel_auroc"] == _record(result, cls, f"merged+nam [synth_all] w={chosen['choice']:g}")[
            "pixel_auroc"]
    assert {r["method"] for r in result["records"]} == {"fd", "asl+nam [synth_all]", "merged+nam [synth_all]",
                                                        "merged+nam [synth_all] weighted",
                                                        *(f"merged+nam [synth_all] w={w}" for w in ("0.5", "1", "3"))}
    with pytest.raises(SystemExit):
        real_eval.parse_args([*argv[:-4], "--merge_weights", "0"])
    with pytest.raises(SystemExit):  # no head map to weigh
        real_eval.parse_args(["--data_root", "x", "--weights", "none", "--learned_modes", "merged+nam",
                              "--merge_weights", "0.5"])


def test_a_weighted_merge_sums_the_image_scores_so_at_one_it_is_not_mergeds_image_score(monkeypatch):
    """Issue 28.3: ``w * heads + L * FD`` is summed on the maps (at w = 1 merged's map) and on the
    two image scores, each the mean over blocks of the block's maximum; merged's image score is the
    mean over blocks of the maximum of the summed block maps, which is lower where the heads and FD
    peak on different patches. Hand values: L = 2 blocks on a 2 x 2 grid, the heads peak top left
    (1), FD bottom right (1): sum of the maxima 1 + 2 * 1 = 3, maximum of the sums 2."""
    from models.fasl import InferenceConfig, combine_maps

    heads_grid = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(1, 2, 2, 2)  # (B, L, G, G)
    fd_grid = torch.tensor([[0.0, 0.0], [0.0, 1.0]]).expand(1, 2, 2, 2)
    cfg = InferenceConfig(winmode="nan", out_size=3)
    heads, fd = combine_maps([heads_grid], cfg), combine_maps([fd_grid], cfg)
    merged = combine_maps([heads_grid + 2 * fd_grid], cfg)  # merged's block grids: ASL_l + L * FD_l
    assert merged.image_score.tolist() == [2.0]

    seen = []
    monkeypatch.setattr(real_eval, "metrics_of", lambda args, data, m, s: seen.append((m, s)) or {})
    args = argparse.Namespace(merge_weights=[1.0, 0.5])
    records = real_eval.weighted_merges(args, None, {"class": "c"}, "asl+nam [x]", 0, heads, fd, blocks=2)
    assert [r["method"] for r in records] == ["merged+nam [x] w=1", "merged+nam [x] w=0.5"]
    (one_map, one_score), (half_map, half_score) = seen
    assert one_score.tolist() == [3.0] and half_score.tolist() == [2.5]
    assert torch.allclose(one_map, merged.score_map)
    assert torch.allclose(half_map, 0.5 * heads.score_map + 2 * fd.score_map)

    # the texts say so: --merge_weights' help and weighted_merges' docstring
    flag_help = _help().split("\n  --merge_weights")[1].split("\n  --label")[0]
    for doc in (flag_help, real_eval.weighted_merges.__doc__):
        assert "not merged's image score" in " ".join(doc.replace("``", "").split()), doc


def _help() -> str:
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        real_eval.parse_args(["--help"])
    return out.getvalue()
