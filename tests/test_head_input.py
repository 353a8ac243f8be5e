"""What the ASL heads see (``--head_input``): the deviation (the reference's), the signed deviation,
or the deviation with the query feature; the inference path (gathered, folded) equals the training
forward for each, FD's share reads the deviation's channels only, and checkpoints record the kind."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import train
from models import build_fasl
from models.asl import ASLHead, HeadLayout, ScoreHeads
from models.fasl import CheckpointMismatch, FASL, InferenceConfig
from models.fd import HEAD_INPUTS, gathered_head_input, head_input_rows, head_input_width

TINY = ["--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112", "--features_list", "1", "2"]


def test_head_input_rows_by_hand():
    f = torch.tensor([[1.0, -2.0, 0.5]])
    r = torch.tensor([[0.5, 1.0, 0.5]])
    torch.testing.assert_close(head_input_rows(f, r), torch.tensor([[0.5, 3.0, 0.0]]))
    torch.testing.assert_close(head_input_rows(f, r, "signed"), torch.tensor([[0.5, -3.0, 0.0]]))
    torch.testing.assert_close(head_input_rows(f, r, "deviation+query"),
                               torch.tensor([[0.5, 3.0, 0.0, 1.0, -2.0, 0.5]]))
    assert [head_input_width(7, k) for k in HEAD_INPUTS] == [7, 7, 14]
    with pytest.raises(ValueError, match="unknown head input 'cosine'"):
        head_input_rows(f, r, "cosine")
    with pytest.raises(ValueError, match="unknown head input"):
        HeadLayout((8,), head_input="cosine")


@pytest.mark.parametrize("kind", HEAD_INPUTS)
def test_gathered_input_equals_rows_of_the_gathered_reference(kind):
    g = torch.Generator().manual_seed(0)
    f, bank = torch.randn(5, 6, generator=g), torch.randn(9, 6, generator=g)
    index = torch.tensor([3, 0, 8, 3, 1])
    torch.testing.assert_close(gathered_head_input(f, bank, index, kind), head_input_rows(f, bank[index], kind))


def test_fd_share_reads_the_deviation_channels_only():
    """With the query appended, FD's share of a residual head is 0.5 * |f - r|^2, not of the query."""
    g = torch.Generator().manual_seed(1)
    f = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    r = F.normalize(f + 0.3 * torch.randn(40, 8, generator=g), dim=-1)
    plain, wide = ASLHead(8, fd_residual=True), ASLHead(16, fd_residual=True, fd_channels=8)
    plain.eval()
    wide.eval()
    torch.testing.assert_close(wide.residual_logits(head_input_rows(f, r, "deviation+query")),
                               plain.residual_logits(head_input_rows(f, r)))
    fd = 1 - (f * r).sum(-1, keepdim=True)  # for unit vectors 0.5 * |f - r|^2 = 1 - cos
    expected = plain.fd_affine[0] * fd / (1 + 1e-5) ** 0.5 + plain.fd_affine[1]  # fresh BN: mean 0, var 1
    torch.testing.assert_close(plain.residual_logits(head_input_rows(f, r, "signed"))[:, 1:], expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", HEAD_INPUTS)
def test_scoring_path_equals_training_forward_in_eval_mode(kind):
    """FASL.score (gathered inputs, folded BatchNorms) = the training forward (``ScoreHeads.inputs``), for
    heads that learn a correction to FD (``fd_residual``) with a non-zero correction."""
    model = build_fasl("fasl-tiny-vit", None, [1, 2], 112, "cpu", precision="fp32", fd_residual=True,
                       head_input=kind).eval()
    assert [h.mlp[0].num_features for h in model.heads.heads] == list(model.heads.input_widths)
    g = torch.Generator().manual_seed(3)
    refs, queries = torch.randn(2, 3, 112, 112, generator=g), torch.randn(3, 3, 112, 112, generator=g)
    bank = model.build_memory(refs)
    cfg = InferenceConfig(mode="fasl", use_nam=False, winmode="nan", align="exhaustive", search_precision="exact",
                          out_size=8)
    with torch.no_grad():
        for m in model.heads.modules():  # a non-zero correction, so the kind of input matters
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.3, generator=g)
        model.heads.train()
        model(queries, bank, use_nam=False)  # fill the BatchNorms' running statistics
        model.heads.eval()
        maps = model(queries, bank, use_nam=False)
        expected = torch.stack([p[:, 1] for p in maps.raw], 1).amax(dim=(2, 3)).mean(1)
    pred = model.score(model.encode(queries, cfg), bank, cfg)
    torch.testing.assert_close(pred.image_score, expected, rtol=1e-4, atol=1e-5)


def test_the_kinds_score_differently():
    """Same weights where the shapes allow: the signed input changes the scores of the same heads."""
    torch.manual_seed(0)
    a, b = ScoreHeads(HeadLayout((6,))), ScoreHeads(HeadLayout((6,), head_input="signed"))
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    f, r = torch.randn(1, 16, 6), torch.randn(1, 16, 6)
    pa = a(a.inputs([f], [r]), (4, 4), use_nam=False).raw[0]
    pb = b(b.inputs([f], [r]), (4, 4), use_nam=False).raw[0]
    assert not torch.allclose(pa, pb, atol=1e-4)


def test_train_records_the_input_and_a_plain_model_refuses_it(syn_datasets, tmp_path):
    ckpt = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "q"), *TINY,
                       "--epoch", "1", "--batch_size", "2", "--k_shot", "1", "--classes", "weave",
                       "--head_input", "deviation+query", "--device", "cpu", "--precision", "fp32"])
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["head_input"] == "deviation+query"
    loaded = build_fasl("fasl-tiny-vit", None, [1, 2], 112, "cpu", precision="fp32", checkpoint=str(ckpt))
    assert loaded.layout.head_input == "deviation+query"
    assert loaded.heads.input_widths == tuple(2 * w for w in loaded.layout.widths)
    plain = FASL(loaded.backbone, HeadLayout(loaded.layout.widths))
    with pytest.raises(CheckpointMismatch, match="head_input"):
        plain.load_checkpoint(ckpt)
    assert HeadLayout.from_config((8,), {"nam": "shared"}).head_input == "deviation"  # files from before the flag
