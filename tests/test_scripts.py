"""The paper's shell workflow: trainAndTest.sh and test_few_shot.sh (positional arguments).

Argument validation and the dataset/checkpoint checks run with plain bash (no Python started).
How arguments reach the Python CLIs is checked with a stub $PYTHON that records its command
lines; one real tiny run of test_few_shot.sh checks the whole chain down to results.json.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ["trainAndTest.sh", "test_few_shot.sh"]
GOOD = ["fasl", "cpu", "1", "mul", "4", "2", "0.5", "7", "1"]
METRICS = ("image_auroc", "image_f1_max", "image_ap", "pixel_auroc", "pixel_f1_max", "pixel_ap", "pixel_aupro")

# A stand-in for python: logs each command line (one argument per line, calls separated by
# '--END--') and, when called as train.py, creates the checkpoint files train.py would write.
STUB = r"""#!/usr/bin/env bash
printf '%s\n' "$@" --END-- >> "$STUB_LOG"
if [[ " $* " == *" train.py "* ]]; then
    args=("$@")
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in --save_path) save=${args[i+1]} ;; --epoch) epochs=${args[i+1]} ;; esac
    done
    mkdir -p "$save"
    for ((e = 1; e <= epochs; e++)); do touch "$save/epoch_$e.pth"; done
fi
"""


def run_script(script: str, args, env_extra=None, timeout=60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run(["bash", str(REPO / script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def with_arg(position: int, value: str) -> list[str]:
    args = list(GOOD)
    args[position] = value
    return args


# ----------------------------------------------------------------------------- argument parsing

BAD_ARGS = {
    "too_few": (GOOD[:8], "expected 9 positional arguments, got 8"),
    "too_many": (GOOD + ["extra"], "expected 9 positional arguments, got 10"),
    "none": ([], "expected 9 positional arguments, got 0"),
    "bad_model_name": (with_arg(0, "a/b"), "model_name 'a/b' must be a plain folder name"),
    "bad_device": (with_arg(1, "gpu"), "device 'gpu' must be cpu, N or cuda:N"),
    "bad_device_index": (with_arg(1, "cuda:x"), "device 'cuda:x' must be cpu, N or cuda:N"),
    "bad_use_nam": (with_arg(2, "2"), "useNAM '2' must be 1 or 0"),
    "bad_win_size": (with_arg(4, "4.5"), "win-size '4.5' must be a positive integer"),
    "bad_win_stride": (with_arg(5, "-2"), "win-stride '-2' must be a positive integer"),
    "bad_win_weight": (with_arg(6, "1.5"), "win-weight '1.5' must be a number in [0, 1]"),
    "bad_seed": (with_arg(7, "seven"), "seed 'seven' must be a non-negative integer"),
    "bad_kshots": (with_arg(8, "1,x"), "kshots '1,x' must be a positive number or a comma list like 1,2,4"),
    "bad_kshots_list": (with_arg(8, "1,,2"), "kshots '1,,2' must be a positive number or a comma list like 1,2,4"),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_exit_2_with_usage(script, case, tmp_path):
    args, message = BAD_ARGS[case]
    log = tmp_path / "calls.log"
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    res = run_script(script, args, {"PYTHON": str(stub), "STUB_LOG": str(log)})
    assert res.returncode == 2, res.stderr
    assert f"error: {message}" in res.stderr
    assert f"usage: bash {script} {{model_name}} {{device}} {{useNAM}} {{winmode}}" in res.stderr
    assert "kshots      reference images per class" in res.stderr
    assert res.stdout == ""
    assert not log.exists(), "python ran although the arguments were refused"


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("position, value", [(4, "0"), (5, "0"), (8, "0"), (8, "1,0")],
                         ids=["win_size_0", "win_stride_0", "kshots_0", "kshots_list_with_0"])
def test_zero_sizes_and_kshots_are_refused(script, position, value, tmp_path):
    res = run_script(script, with_arg(position, value), {"MVTEC_ROOT": str(tmp_path / "none")})
    assert res.returncode == 2, res.stderr
    assert "usage: bash" in res.stderr


@pytest.mark.parametrize("script, args, env, message", [
    ("trainAndTest.sh", with_arg(3, "max"), {}, "error: winmode (argument 4): invalid choice: 'max'"),
    ("test_few_shot.sh", GOOD, {"SEARCH_PRECISION": "fp8"}, "error: SEARCH_PRECISION: invalid choice: 'fp8'"),
    ("trainAndTest.sh", GOOD, {"ALIGN": "nearest"}, "error: ALIGN: invalid choice: 'nearest'"),
    ("test_few_shot.sh", with_arg(5, "9"), {}, "error: win-stride (argument 6) must lie in [1, win-size (argument 5)=4], got 9"),
    # issue 20: a window larger than the patch grid (518 / 14 = 37) is refused before the training
    ("trainAndTest.sh", with_arg(4, "99"), {}, "error: win-size (argument 5) 99 is larger than the patch grid: "
                                               "IMAGE_SIZE 518 / patch 14 = 37 patches a side"),
    ("trainAndTest.sh", GOOD, {"IMAGE_SIZE": "500"}, "error: IMAGE_SIZE 500 is not a multiple of the patch size 14"),
    ("trainAndTest.sh", GOOD, {"BATCH_SIZE": "0"}, "error: BATCH_SIZE must be >= 1, got 0"),
])
def test_bad_values_are_refused_by_the_programs_before_anything_runs(script, args, env, message, syn_datasets,
                                                                    tmp_path):
    """The choices live in Python only: the scripts pass values through and the programs refuse
    them, up front (--check_args), before any training or testing."""
    env = {**env, "MVTEC_ROOT": str(syn_datasets["mvtec"]), "VISA_ROOT": str(syn_datasets["visa"]),
           "CKPT_ROOT": str(tmp_path / "ckpt"), "RESULTS_ROOT": str(tmp_path / "results")}
    res = run_script(script, args, env)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    # in the script's words, with the script's usage, not the program's 20-line one
    assert f"usage: bash {script}" in res.stderr and "usage: train.py" not in res.stderr
    assert "usage: test_few_shot.py" not in res.stderr
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "results").exists()


def test_a_bad_value_is_named_before_the_datasets_are_looked_at(tmp_path):
    """issue 20: 'badmode' with no dataset in place is reported as the bad winmode it is, not as a
    missing dataset."""
    res = run_script("trainAndTest.sh", with_arg(3, "badmode"), {"MVTEC_ROOT": str(tmp_path / "none")})
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == ("error: winmode (argument 4): invalid choice: 'badmode' "
                                          "(choose from 'nan', 'mul', 'onlywin')")
    assert "dataset not found" not in res.stderr


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("device, use_nam", [("cpu", "1"), ("cuda", "0"), ("0", "true"), ("cuda:1", "false"),
                                              ("12", "yes"), ("cpu", "no")])
def test_good_arguments_pass_parsing(script, device, use_nam, tmp_path):
    # parsing accepts them, so the run stops at the next check: the missing dataset (exit 1); the
    # programs' own check of the flags is a stub here (the tests above run the real one)
    missing = tmp_path / "no_such_dataset"
    args = with_arg(1, device)
    args[2] = use_nam
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    res = run_script(script, args, {"MVTEC_ROOT": str(missing), "PYTHON": str(stub), "STUB_LOG": str(tmp_path / "log")})
    assert res.returncode == 1
    assert f"mvtec dataset not found at '{missing}'" in res.stderr
    assert "usage:" not in res.stderr


# ----------------------------------------------------------------------------- dataset / checkpoint checks

@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_meta_json_stops_with_the_build_command(script, syn_datasets, tmp_path):
    empty = tmp_path / "mvtec"
    empty.mkdir()
    res = run_script(script, GOOD, {"MVTEC_ROOT": str(empty), "VISA_ROOT": str(syn_datasets["visa"])})
    assert res.returncode == 1
    assert f"{empty}/meta.json not found; build it with:  python data/mvtec.py --data_root {empty}" in res.stderr
    assert "== " not in res.stdout

    res = run_script(script, GOOD, {"MVTEC_ROOT": str(syn_datasets["mvtec"]), "VISA_ROOT": str(empty)})
    assert res.returncode == 1
    assert f"{empty}/meta.json not found; build it with:  python data/visa.py --data_root {empty}" in res.stderr


def test_missing_checkpoint_says_how_to_train_it(syn_datasets, tmp_path):
    env = {"MVTEC_ROOT": str(syn_datasets["mvtec"]), "VISA_ROOT": str(syn_datasets["visa"]),
           "CKPT_ROOT": str(tmp_path / "ckpt"), "RESULTS_ROOT": str(tmp_path / "results"), "TEST_EPOCH_VISA": "3"}
    res = run_script("test_few_shot.sh", GOOD, env)
    assert res.returncode == 1
    expected = tmp_path / "ckpt" / "mvtec" / "fasl" / "seed7" / "epoch_3.pth"
    assert f"checkpoint '{expected}' not found; train it with trainAndTest.sh" in res.stderr
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- what reaches Python

def stub_env(tmp_path, syn_datasets) -> tuple[dict, Path]:
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PYTHON": str(stub), "STUB_LOG": str(log), "MVTEC_ROOT": str(syn_datasets["mvtec"]),
           "VISA_ROOT": str(syn_datasets["visa"]), "CKPT_ROOT": str(tmp_path / "ckpt"),
           "RESULTS_ROOT": str(tmp_path / "results"), "MODEL": "fasl-tiny-vit", "PRETRAINED": "none",
           "IMAGE_SIZE": "112", "BLOCKS": "1 2 3 4", "EPOCHS_MVTEC": "3", "EPOCHS_VISA": "4",
           "TEST_EPOCH_VISA": "3", "TEST_EPOCH_MVTEC": "2", "TRAIN_K": "2", "AUG_RATE_MVTEC": "0.25",
           "CROP_RATE_VISA": "0.5", "CROP_SMALL_RATE": "0.75", "BATCH_SIZE": "5", "ALIGN": "image_index",
           "SEARCH_PRECISION": "exact", "EXTRA_TEST_ARGS": "--eval_size 64 --save_vis",
           "EXTRA_TRAIN_ARGS": "--learning_rate 0.01"}
    return env, log


def read_calls(log: Path) -> list[list[str]]:
    """The recorded command lines, without the scripts' up-front flag check (scripts/check_flags.py)."""
    calls, current = [], []
    for line in log.read_text().splitlines():
        if line == "--END--":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return [c for c in calls if "--check_args" not in c and "scripts/check_flags.py" not in c]


def flag(call: list[str], name: str, n: int = 1):
    i = call.index(name)
    return call[i + 1] if n == 1 else call[i + 1:i + 1 + n]


def test_train_and_test_script_forwards_every_argument(syn_datasets, tmp_path):
    env, log = stub_env(tmp_path, syn_datasets)
    res = run_script("trainAndTest.sh", ["exp1", "cuda:0", "0", "onlywin", "5", "3", "0.25", "9", "1,2"], env)
    assert res.returncode == 0, res.stderr
    calls = read_calls(log)
    ckpt = tmp_path / "ckpt"
    # one training run per dataset serves every k: train mvtec -> test visa (k = 1, 2), then visa
    plan = [(c[0], flag(c, "--dataset"), flag(c, "--k_shot")) for c in calls]
    assert plan == [("train.py", "mvtec", "2"), ("test_few_shot.py", "visa", "1"), ("test_few_shot.py", "visa", "2"),
                    ("train.py", "visa", "2"), ("test_few_shot.py", "mvtec", "1"), ("test_few_shot.py", "mvtec", "2")]
    for call in calls:
        assert flag(call, "--model") == "fasl-tiny-vit" and flag(call, "--pretrained") == "none"
        assert flag(call, "--image_size") == "112" and flag(call, "--features_list", 4) == ["1", "2", "3", "4"]
        assert flag(call, "--device") == "cuda:0" and flag(call, "--seed") == "9"
        assert flag(call, "--align") == "image_index"
        assert "--no-nam" in call and "--nam" not in call  # useNAM 0: NAM neither trained nor used
        if call[0] == "train.py":
            train_set = flag(call, "--dataset")
            assert flag(call, "--save_path") == f"{ckpt}/{train_set}/exp1/seed9"
            assert flag(call, "--epoch") == ("3" if train_set == "mvtec" else "4")
            assert flag(call, "--batch_size") == "5" and "--resume" in call
            assert flag(call, "--train_data_path") == str(syn_datasets[train_set])
            assert flag(call, "--aug_rate") == ("0.25" if train_set == "mvtec" else "0")
            assert flag(call, "--crop_rate") == ("0.5" if train_set == "visa" else "0")
            assert flag(call, "--crop_small_rate") == "0.75"
            assert call[-2:] == ["--learning_rate", "0.01"]
        else:
            test_set = flag(call, "--dataset")
            train_set, epoch = ("mvtec", "3") if test_set == "visa" else ("visa", "2")
            k = flag(call, "--k_shot")
            assert flag(call, "--checkpoint_path") == f"{ckpt}/{train_set}/exp1/seed9/epoch_{epoch}.pth"
            assert flag(call, "--save_path") == f"{tmp_path}/results/{test_set}/exp1/{k}shot/seed9"
            assert flag(call, "--data_path") == str(syn_datasets[test_set])
            assert flag(call, "--winmode") == "onlywin" and flag(call, "--win_size") == "5"
            assert flag(call, "--win_stride") == "3" and flag(call, "--win_weight") == "0.25"
            assert flag(call, "--search_precision") == "exact"
            assert call[-3:] == ["--eval_size", "64", "--save_vis"]


def test_scripts_default_to_the_reference_recipe(syn_datasets, tmp_path):
    """Without overrides: exhaustive alignment, 10 training references per class, MVTec-trained
    heads 5 epochs with mosaic 0.3, VisA-trained heads 11 epochs with the crop at 0.6, and both
    tests at epoch 5 (the reference's VisA test asks for an epoch its run never writes)."""
    env, log = stub_env(tmp_path, syn_datasets)
    for key in ("EPOCHS_MVTEC", "EPOCHS_VISA", "TEST_EPOCH_VISA", "TEST_EPOCH_MVTEC", "TRAIN_K", "AUG_RATE_MVTEC",
                "CROP_RATE_VISA", "CROP_SMALL_RATE", "ALIGN", "SEARCH_PRECISION", "EXTRA_TRAIN_ARGS", "BATCH_SIZE",
                "BLOCKS"):
        env.pop(key)
    res = run_script("trainAndTest.sh", GOOD, env)
    assert res.returncode == 0, res.stderr
    train_mvtec, test_visa, train_visa, test_mvtec = read_calls(log)
    for call in (train_mvtec, test_visa, train_visa, test_mvtec):
        assert flag(call, "--align") == "exhaustive"
    assert [flag(c, "--k_shot") for c in (train_mvtec, train_visa)] == ["10", "10"]
    assert [flag(c, "--epoch") for c in (train_mvtec, train_visa)] == ["5", "11"]
    assert [flag(c, "--aug_rate") for c in (train_mvtec, train_visa)] == ["0.3", "0"]
    assert [flag(c, "--crop_rate") for c in (train_mvtec, train_visa)] == ["0", "0.6"]
    assert flag(train_mvtec, "--batch_size") == "8" and "--nam" in train_mvtec
    assert flag(test_visa, "--checkpoint_path").endswith("/mvtec/fasl/seed7/epoch_5.pth")
    assert flag(test_mvtec, "--checkpoint_path").endswith("/visa/fasl/seed7/epoch_5.pth")
    assert flag(test_visa, "--search_precision") == "auto"
    assert "--features_list" not in train_mvtec  # BLOCKS unset: the model's own default (ViT-L: 6 12 18 24)


def test_seeds_make_one_sweep_per_test_set_and_nproc_launches_torchrun(syn_datasets, tmp_path):
    env, log = stub_env(tmp_path, syn_datasets)
    env.update(SEEDS="0 1 2", NPROC="2")
    res = run_script("trainAndTest.sh", ["exp", "cpu", "1", "nan", "13", "2", "0.5", "9", "1,4"], env)
    assert res.returncode == 0, res.stderr
    calls = read_calls(log)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert [c[:6] for c in calls] == [launcher + [p] for p in ("train.py", "test_few_shot.py") * 2]
    tests = [c[5:] for c in calls if c[5] == "test_few_shot.py"]
    for call, test_set in zip(tests, ("visa", "mvtec")):
        assert flag(call, "--k_shot", 2) == ["1", "4"] and flag(call, "--seeds", 3) == ["0", "1", "2"]
        assert flag(call, "--save_path") == f"{tmp_path}/results/{test_set}/exp" and flag(call, "--dataset") == test_set
    assert "SEEDS 'a b' must be" in run_script("test_few_shot.sh", GOOD, {**env, "SEEDS": "a b"}).stderr
    assert "NPROC '0' must be" in run_script("test_few_shot.sh", GOOD, {**env, "NPROC": "0"}).stderr


def test_scripts_take_a_timm_model(syn_datasets, tmp_path):
    env, log = stub_env(tmp_path, syn_datasets)
    env.update(MODEL="timm:tf_efficientnet_lite0", PRETRAINED="/w/lite0.pth", IMAGE_SIZE="224", BLOCKS="3 4")
    res = run_script("trainAndTest.sh", GOOD, env)
    assert res.returncode == 0, res.stderr
    for call in read_calls(log):
        assert flag(call, "--model") == "timm:tf_efficientnet_lite0" and flag(call, "--pretrained") == "/w/lite0.pth"
        assert flag(call, "--features_list", 2) == ["3", "4"]


@pytest.mark.parametrize("model, size", [("lite0", "224"), ("lite2", "256")])
def test_scripts_take_a_packaged_model_with_its_defaults(model, size, syn_datasets, tmp_path, monkeypatch):
    env, log = stub_env(tmp_path, syn_datasets)
    env.update(MODEL=model, BLOCKS="3 4")
    for name in ("PRETRAINED", "IMAGE_SIZE"):  # unset: the script's defaults for the model
        env.pop(name)
        monkeypatch.delenv(name, raising=False)
    res = run_script("trainAndTest.sh", GOOD, env)
    assert res.returncode == 0, res.stderr
    calls = read_calls(log)
    assert calls
    for call in calls:
        assert flag(call, "--model") == model and flag(call, "--pretrained") == "default"
        assert flag(call, "--image_size") == size


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("env, message", [
    ({"TEST_EPOCH_VISA": "11"}, "TEST_EPOCH_VISA=11 is after the last epoch of the MVTec-trained heads (EPOCHS_MVTEC=5)"),
    ({"TEST_EPOCH_MVTEC": "12"}, "TEST_EPOCH_MVTEC=12 is after the last epoch of the VisA-trained heads (EPOCHS_VISA=11)"),
    ({"TRAIN_K": "0"}, "TRAIN_K '0' must be a positive integer"),
])
def test_test_epochs_the_training_never_writes_are_refused(script, env, message, tmp_path):
    res = run_script(script, GOOD, {**env, "MVTEC_ROOT": str(tmp_path), "VISA_ROOT": str(tmp_path)})
    assert res.returncode == 2 and message in res.stderr


def test_test_script_forwards_every_argument(syn_datasets, tmp_path):
    env, log = stub_env(tmp_path, syn_datasets)
    for train_set, epoch in (("mvtec", 3), ("visa", 2)):
        folder = tmp_path / "ckpt" / train_set / "fasl" / "seed111"
        folder.mkdir(parents=True)
        (folder / f"epoch_{epoch}.pth").touch()
    res = run_script("test_few_shot.sh", ["fasl", "1", "true", "nan", "13", "2", "1", "111", "1,4"], env)
    assert res.returncode == 0, res.stderr
    calls = read_calls(log)
    assert [(c[0], flag(c, "--dataset"), flag(c, "--k_shot")) for c in calls] == [
        ("test_few_shot.py", "visa", "1"), ("test_few_shot.py", "visa", "4"),
        ("test_few_shot.py", "mvtec", "1"), ("test_few_shot.py", "mvtec", "4")]
    for call in calls:
        assert "--nam" in call and "--no-nam" not in call
        assert flag(call, "--device") == "1" and flag(call, "--winmode") == "nan"
        assert flag(call, "--win_weight") == "1" and flag(call, "--seed") == "111"
        assert Path(flag(call, "--checkpoint_path")).is_file()


# ----------------------------------------------------------------------------- one real tiny run

def test_test_script_full_tiny_run(syn_datasets, ckpt_root, mvtec_ckpt, tiny_backbone_args, train_args, tmp_path):
    import train

    # the layout the script reads: $CKPT_ROOT/<trainset>/<name>/seed<seed>/epoch_<TEST_EPOCH_*>.pth
    assert mvtec_ckpt == ckpt_root / "mvtec" / "fasl" / "seed7" / "epoch_1.pth"
    visa_dir = ckpt_root / "visa" / "fasl" / "seed7"
    if not (visa_dir / "epoch_1.pth").exists():
        train.main(["--train_data_path", str(syn_datasets["visa"]), "--dataset", "visa", "--save_path",
                    str(visa_dir), "--epoch", "1", *train_args, *tiny_backbone_args])
    results = tmp_path / "results"
    env = {"MODEL": "fasl-tiny-vit", "PRETRAINED": "none", "IMAGE_SIZE": "112", "BLOCKS": "1 2 3 4",
           "TEST_EPOCH_VISA": "1", "TEST_EPOCH_MVTEC": "1", "RESULTS_ROOT": str(results), "CKPT_ROOT": str(ckpt_root),
           "MVTEC_ROOT": str(syn_datasets["mvtec"]), "VISA_ROOT": str(syn_datasets["visa"]),
           "EXTRA_TEST_ARGS": "--eval_size 64", "OMP_NUM_THREADS": "2"}
    res = run_script("test_few_shot.sh", ["fasl", "cpu", "1", "mul", "4", "2", "0.5", "7", "1"], env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"== test on visa, k=1 -> {results}/visa/fasl/1shot/seed7" in res.stdout
    assert f"== test on mvtec, k=1 -> {results}/mvtec/fasl/1shot/seed7" in res.stdout

    for test_set, train_set in (("visa", "mvtec"), ("mvtec", "visa")):
        out = results / test_set / "fasl" / "1shot" / "seed7"
        doc = json.loads((out / "results.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
        classes = sorted(json.loads((syn_datasets[test_set] / "meta.json").read_text())["test"])
        assert sorted(doc["per_class"]) == classes
        for where, metrics in [*doc["per_class"].items(), ("mean", doc["mean"])]:
            for key in METRICS:
                value = metrics[key]
                assert isinstance(value, float) and not math.isnan(value) and 0.0 <= value <= 1.0, (where, key)
        args = doc["extra"]["args"]
        assert args["checkpoint_path"] == str(ckpt_root / train_set / "fasl" / "seed7" / "epoch_1.pth")
        assert args["dataset"] == test_set and args["data_path"] == str(syn_datasets[test_set])
        assert (args["mode"], args["nam"], args["winmode"]) == ("fasl", True, "mul")
        assert (args["win_size"], args["win_stride"], args["win_weight"]) == (4, 2, 0.5)
        assert (args["seed"], args["k_shot"], args["eval_size"]) == (7, 1, 64)
        assert (args["model"], args["pretrained"], args["features_list"]) == ("fasl-tiny-vit", "none", [1, 2, 3, 4])
        assert args["device"] == "cpu" and args["image_size"] == 112
        refs = json.loads((out / "references.json").read_text())
        assert sorted(refs["references"]) == classes and refs["info"]["seed"] == 7
        assert (out / "results.csv").is_file() and (out / "test.log").is_file()


def test_scripts_are_valid_bash():
    for script in [*SCRIPTS, "scripts/workflow_lib.sh"]:
        res = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"
