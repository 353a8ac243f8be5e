"""bench/real_eval.py on the tiny model: its numbers are the programs' numbers, heads never see
the test class, and trained heads are reused."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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

    def no_training(*_):
        raise AssertionError("heads retrained although cached")

    monkeypatch.setattr(real_eval.train, "main", no_training)
    again = real_eval.main(argv)
    assert again["records"] == result["records"]
