"""train.py --recipe: named defaults of the training choices that a flag of their own overrides."""
from __future__ import annotations

import json

import pytest
import torch

import train

BASE = ["--train_data_path", "x", "--save_path", "y"]


def test_reference_recipe_is_the_plain_defaults():
    plain, named = train.parse_args(BASE), train.parse_args([*BASE, "--recipe", "reference"])
    assert vars(plain) == vars(named)
    assert (plain.dice_smooth, plain.nam_residual, plain.fd_residual, plain.head_input, plain.recipe) == (
        1.0, False, False, "deviation", "reference")


def test_new_parts_recipe_sets_its_values_and_a_flag_still_wins():
    args = train.parse_args([*BASE, "--recipe", "new_parts"])
    for key, value in train.RECIPES["new_parts"].items():
        assert getattr(args, key) == value, key
    assert train.RECIPES["new_parts"]  # it differs from the reference somewhere
    first = next(iter(train.RECIPES["new_parts"]))
    if first == "dice_smooth":
        assert train.parse_args([*BASE, "--dice_smooth", "0.5", "--recipe", "new_parts"]).dice_smooth == 0.5


def test_unknown_recipe_is_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_args([*BASE, "--recipe", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_recipe_reaches_the_checkpoint(syn_datasets, tmp_path):
    ckpt = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "r"),
                       "--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112", "--features_list",
                       "1", "2", "--epoch", "1", "--batch_size", "2", "--k_shot", "1", "--classes", "weave",
                       "--device", "cpu", "--precision", "fp32", "--recipe", "new_parts"])
    state = torch.load(ckpt, weights_only=True)
    saved = json.loads((tmp_path / "r" / "train_args.json").read_text())
    assert saved["recipe"] == "new_parts"
    assert saved["steps"] is None  # --epoch 1 given on its own wins over the recipe's step count
    for key, value in train.RECIPES["new_parts"].items():
        if key == "steps":
            continue
        assert saved[key] == value
        if key in ("nam_residual", "fd_residual", "head_input"):  # the head layout, in the checkpoint's config
            assert state["config"][key] == value


def test_steps_come_from_the_recipe_and_an_explicit_epoch_wins(capsys):
    assert train.parse_args([*BASE, "--recipe", "new_parts"]).steps == train.RECIPES["new_parts"]["steps"]
    assert train.parse_args([*BASE, "--recipe", "new_parts", "--epoch", "3"]).steps is None
    assert train.parse_args([*BASE, "--recipe", "new_parts", "--epoch=3"]).steps is None
    assert train.parse_args(BASE).steps is None
    for bad in (["--epoch", "2", "--steps", "10"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            train.parse_args([*BASE, *bad])
    assert "--epoch or --steps" in capsys.readouterr().err


@pytest.mark.parametrize("steps, epochs", [(1, 1), (4, 1), (5, 2), (9, 3)])
def test_steps_train_the_nearest_whole_epochs(syn_datasets, tmp_path, steps, epochs):
    """weave's 6 test images (the masks source) in batches of 2: 3 steps an epoch; 4 steps round to
    1 epoch, 5 to 2 (nearest), 1 still trains one."""
    out = tmp_path / f"s{steps}"
    meta = json.loads((syn_datasets["mvtec"] / "meta.json").read_text())
    assert len(meta["test"]["weave"]) == 6
    train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(out), "--model", "fasl-tiny-vit",
                "--pretrained", "none", "--image_size", "112", "--features_list", "1", "2", "--batch_size", "2",
                "--k_shot", "1", "--classes", "weave", "--device", "cpu", "--precision", "fp32", "--steps", str(steps)])
    saved = json.loads((out / "train_args.json").read_text())
    assert (saved["epoch"], saved["steps"]) == (epochs, steps)
    assert sorted(p.name for p in out.glob("epoch_*.pth")) == [f"epoch_{e}.pth" for e in range(1, epochs + 1)]
    assert f"--steps {steps}: {epochs} epochs of 3 batches ({3 * epochs} steps)" in (out / "train.log").read_text()
