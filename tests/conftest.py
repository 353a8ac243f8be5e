"""Session-wide fixtures for the end-to-end tests: tiny generated datasets and one trained checkpoint.

Everything is written under pytest's tmp_path_factory; nothing touches the network. The
checkpoint is trained in-process (``train.main``) once per session and shared read-only.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# ``--precision auto`` runs the encoder in bf16 on CPUs with AMX and in fp32 elsewhere; the suite
# pins fp32 so that it asserts the same numbers on every CI machine (and in the processes it
# launches, which inherit this). test_precision_fits_the_cpu covers the auto decision itself.
os.environ["FASL_CPU_AUTO_BF16"] = "0"

# Variables of the caller's shell that change what the programs do, and so what the tests assert,
# are cleared for the session (and the processes it launches): FASL_DEBUG turns one-line errors
# into tracebacks; a torchrun launch's WORLD_SIZE / RANK / LOCAL_RANK would make train.py join a
# process group. The Hugging Face variables (HF_HUB_OFFLINE, HF_ENDPOINT) are left as the caller
# set them, so a suite run offline stays offline; the tests that depend on them set or clear them
# themselves (monkeypatch), as test_fail_early's offline tests do.
for _name in ("FASL_DEBUG", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
    os.environ.pop(_name, None)

# The tiny random-weight backbone every end-to-end run uses (models/configs/fasl-tiny-vit.json).
TINY_BACKBONE = ["--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112",
                 "--features_list", "1", "2", "3", "4", "--device", "cpu"]
# Arguments of the shared training run; tests that retrain and compare use exactly these.
TRAIN_SEED = 7
TRAIN_ARGS = ["--k_shot", "1", "--batch_size", "6", "--seed", str(TRAIN_SEED)]


@pytest.fixture(scope="session")
def tiny_backbone_args() -> list[str]:
    return list(TINY_BACKBONE)


@pytest.fixture(scope="session")
def train_args() -> list[str]:
    return list(TRAIN_ARGS)


@pytest.fixture(scope="session")
def syn_datasets(tmp_path_factory) -> dict[str, Path]:
    """MVTec-layout (112x112 PNG) and VisA-layout (112x84 JPG) synthetic datasets.

    2 classes each, 3 normal train images and 6 test images (2 normal, 4 defective) per class.
    Treat as read-only: a test that needs to edit one copies it first.
    """
    from data import synthetic

    base = tmp_path_factory.mktemp("syn")
    return {
        "mvtec": synthetic.generate(base / "mvtec", "mvtec", seed=0, classes=2, n_train=3, n_test=6,
                                    size=112),
        "visa": synthetic.generate(base / "visa", "visa", seed=0, classes=2, n_train=3, n_test=6,
                                   size=(112, 84)),
    }


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory) -> Path:
    """Root of checkpoints in the layout test_few_shot.sh reads: <root>/<trainset>/<name>/seed<seed>."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def mvtec_ckpt(syn_datasets, ckpt_root) -> Path:
    """One epoch of training on the MVTec-layout data; returns the epoch_1.pth path (read-only)."""
    import train

    save = ckpt_root / "mvtec" / "fasl" / f"seed{TRAIN_SEED}"
    path = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--dataset", "mvtec",
                       "--save_path", str(save), "--epoch", "1", *TRAIN_ARGS, *TINY_BACKBONE])
    assert Path(path) == save / "epoch_1.pth"
    return Path(path)
