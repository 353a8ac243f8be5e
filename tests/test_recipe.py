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
    for key, value in train.RECIPES["new_parts"].items():
        assert saved[key] == value
        if key in ("nam_residual", "fd_residual", "head_input"):  # the head layout, in the checkpoint's config
            assert state["config"][key] == value
