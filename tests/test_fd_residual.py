"""Heads that learn a correction to FD (``--fd_residual``): an untrained head is a monotone map of
FD, its inference path (folded BatchNorms) equals its eval forward, and checkpoints record it."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import train
from models import build_fasl
from models.asl import ASLHead, HeadLayout, ScoreHeads
from models.fasl import CheckpointMismatch, FASL
from models.fd import fd_scores

TINY = ["--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112", "--features_list", "1", "2"]


def unit_pairs(n: int, width: int, seed: int = 0):
    """n query / reference rows of unit length and their deviations |f - r|."""
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(n, width, generator=g), dim=-1)
    r = F.normalize(f + torch.randn(n, width, generator=g) * torch.rand(n, 1, generator=g), dim=-1)
    return f, r, (f - r).abs()


def test_untrained_residual_head_scores_a_monotone_function_of_fd():
    f, r, dev = unit_pairs(500, 24)
    head = ASLHead(24, fd_residual=True)
    head.train()
    head(dev)  # one training step's statistics, as train.py's first batch
    head.eval()
    p = head(dev)[:, 1]
    fd = fd_scores([(f * r).sum(-1)[None]])[0, 0]  # 1 - cos, [500]
    order = fd.argsort()
    assert (p[order].diff() >= -1e-6).all()  # same ranking as FD
    assert p.std() > 0.01  # and not a constant
    a, b = head.fd_affine.tolist()  # sigmoid(a * (fd - mean) / std + b)
    expected = torch.sigmoid(a * (fd - head.fd_norm.running_mean) / (head.fd_norm.running_var + 1e-5).sqrt() + b)
    torch.testing.assert_close(p, expected, rtol=1e-4, atol=1e-5)


def test_plain_head_has_no_residual_and_ignores_fd():
    head = ASLHead(24)
    assert head.residual_logits(torch.rand(3, 24)) is None
    assert not any("fd_" in k for k in head.state_dict())


def test_residual_head_folded_path_equals_eval_forward():
    torch.manual_seed(1)
    head = ASLHead(24, fd_residual=True)
    with torch.no_grad():  # a trained-looking head: non-zero correction, moved FD statistics
        for m in head.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.3)
        head.fd_norm.running_mean.fill_(0.2)
        head.fd_norm.running_var.fill_(0.04)
        head.fd_affine.copy_(torch.tensor([1.7, -0.4]))
    head.eval()
    _, _, dev = unit_pairs(300, 24, seed=2)
    out = head.apply_folded(head.folded(), dev, head.residual_logits(dev))
    torch.testing.assert_close(out, head(dev), rtol=1e-5, atol=1e-6)
    # without the FD share the folded MLP alone is another function
    assert not torch.allclose(head.apply_folded(head.folded(), dev), head(dev), atol=1e-3)


def test_layout_round_trip_and_old_configs():
    layout = HeadLayout((8, 16), fd_residual=True)
    assert layout.to_config()["fd_residual"] is True
    assert HeadLayout.from_config((8, 16), layout.to_config()) == layout
    assert HeadLayout.from_config((8, 16), {"nam": "shared"}).fd_residual is False  # files from before the flag
    heads = ScoreHeads(layout)
    assert all(h.fd_residual for h in heads.heads)


def test_train_writes_residual_heads_and_they_refuse_a_plain_layout(syn_datasets, tmp_path):
    ckpt = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "r"), *TINY,
                       "--epoch", "1", "--batch_size", "2", "--k_shot", "1", "--classes", "weave", "--fd_residual",
                       "--device", "cpu", "--precision", "fp32"])
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["fd_residual"] is True
    assert json.loads((tmp_path / "r" / "train_args.json").read_text())["fd_residual"] is True
    affine = [v for k, v in state["heads"].items() if k.endswith("fd_affine")]
    assert len(affine) == 2 and not torch.equal(affine[0], torch.tensor(ASLHead.FD_INIT))  # it was trained
    loaded = build_fasl("fasl-tiny-vit", None, [1, 2], 112, "cpu", precision="fp32", checkpoint=str(ckpt))
    assert loaded.layout.fd_residual
    plain = FASL(loaded.backbone, HeadLayout(loaded.layout.widths))
    with pytest.raises(CheckpointMismatch, match="fd_residual"):
        plain.load_checkpoint(ckpt)
