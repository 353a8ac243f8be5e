"""timm backbones (``--model timm:<name>``): CNN feature stages and ViT blocks, weights files,
checkpoints, and the programs end to end. Random weights only; nothing is downloaded."""
from __future__ import annotations

import json

import pytest
import torch

import predict
import test_few_shot
import train
from models import build_fasl
from models.backbone import TimmBackbone, build_backbone, quarter_blocks
from models.fasl import FASL, CheckpointMismatch, InferenceConfig

CNN = "timm:tf_efficientnet_lite0"  # stages at strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels
VIT = "timm:vit_tiny_patch16_224"   # 12 blocks of width 192, patches of 16 px


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return build_backbone(CNN, pretrained="none", image_size=64)


def test_cnn_stages_resized_to_the_finest_grid(cnn):
    assert cnn.family == "timm-cnn" and cnn.blocks == (3, 4) and cnn.widths == (40, 112)
    assert cnn.patch_size == 8 and cnn.depth == 5 and cnn.embed_dim == 1280
    assert cnn.mean == cnn.std == (0.5, 0.5, 0.5)  # the model's own pretrained config
    out = cnn(torch.randn(2, 3, 64, 64))
    assert out.grid == (8, 8) and [t.shape for t in out.tokens] == [(2, 64, 40), (2, 64, 112)]
    for t in out.tokens:
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(2, 64))
    assert out.embedding.shape == (2, 1280)
    # any size the finest stride divides (LFE windows): 40 px -> 5 x 5
    small = cnn(torch.randn(3, 3, 40, 40), with_embedding=False)
    assert small.grid == (5, 5) and small.embedding is None and small.tokens[1].shape == (3, 25, 112)
    # the stride-16 stage is the bilinear resize of the raw stage to the stride-8 grid
    x = torch.randn(1, 3, 64, 64)
    raw = cnn.net.forward_intermediates(x, indices=[3], intermediates_only=True)[0]  # [1, 112, 4, 4]
    want = torch.nn.functional.interpolate(raw, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cnn(x).tokens[1][0], torch.nn.functional.normalize(want[0].flatten(1).t(), dim=-1),
                               rtol=1e-4, atol=1e-5)


def test_cnn_stage_choice_and_errors():
    bb = build_backbone(CNN, pretrained=None, blocks=[2, 3, 5], image_size=64)
    assert bb.widths == (24, 40, 320) and bb.patch_size == 4  # the finest chosen stage sets the grid
    assert bb(torch.randn(1, 3, 64, 64)).grid == (16, 16)
    with pytest.raises(ValueError, match=r"outside model 'tf_efficientnet_lite0' with 5 feature stages"):
        build_backbone(CNN, pretrained=None, blocks=[6], image_size=64)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        build_backbone(CNN, pretrained=None, image_size=60)
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        build_backbone("timm:no_such_net", pretrained=None)
    with pytest.raises(ValueError, match="--quick_gelu applies to open_clip"):
        build_backbone(CNN, pretrained=None, quick_gelu=True)
    with pytest.raises(FileNotFoundError, match="'none', 'default' or a local"):
        build_backbone(CNN, pretrained="openai")


def test_vit_blocks_at_any_grid():
    torch.manual_seed(0)
    bb = build_backbone(VIT, pretrained="none", image_size=64)
    assert bb.family == "timm-vit" and bb.blocks == quarter_blocks(12) == (3, 6, 9, 12)
    assert bb.widths == (192,) * 4 and bb.patch_size == 16
    out = bb(torch.randn(2, 3, 64, 64))
    assert out.grid == (4, 4) and [t.shape for t in out.tokens] == [(2, 16, 192)] * 4  # no class token
    assert out.embedding.shape == (2, 192)
    assert bb(torch.randn(1, 3, 32, 48)).grid == (2, 3)  # positional embedding resampled per grid


def test_local_weights_files_load_and_misfits_are_named(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    net = timm.create_model("tf_efficientnet_lite0")
    state = net.state_dict()
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "nested.pth")
    for name in ("w.pth", "w.safetensors", "nested.pth"):
        bb = build_backbone(CNN, pretrained=str(tmp_path / name), image_size=64)
        assert torch.equal(bb.net.conv_stem.weight, net.conv_stem.weight)
        assert bb.config()["pretrained"] == str(tmp_path / name)
    bad = dict(state)
    bad.pop("conv_stem.weight")
    bad["extra.weight"] = torch.zeros(1)
    bad["classifier.bias"] = torch.zeros(7)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"1 missing \(conv_stem.weight\); 1 unexpected \(extra.weight\); "
                                         r"1 wrong shape \(classifier.bias \(7,\) vs \(1000,\)\)"):
        build_backbone(CNN, pretrained=str(tmp_path / "bad.pth"), image_size=64)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth is not a state dict: its bytes are not a torch or safetensors") as exc:
        build_backbone(CNN, pretrained=str(tmp_path / "junk.pth"), image_size=64)
    assert "weights_only=False" not in str(exc.value) and "\n" not in str(exc.value)


def test_heads_per_block_width_and_checkpoints_refuse_another_backbone(cnn, tmp_path):
    torch.manual_seed(1)
    model = FASL(cnn)
    assert [h.mlp[0].num_features for h in model.heads.heads] == [40, 112]
    refs = torch.randn(2, 3, 64, 64)
    bank = model.build_memory(refs, model.window_grid(4, 2))
    for mode in ("fd", "fasl", "merged"):
        pred = model.predict(torch.randn(2, 3, 64, 64), bank, InferenceConfig(mode=mode, winmode="mul", win_size=4,
                                                                              win_stride=2, out_size=32))
        assert pred.score_map.shape == (2, 32, 32) and torch.isfinite(pred.score_map).all()
    # a reference scores ~0 against its own memory
    pred = model.predict(refs, bank, InferenceConfig(mode="fd", winmode="mul", win_size=4, win_stride=2, out_size=32))
    assert pred.score_map.abs().max() < 1e-5
    path = tmp_path / "cnn.pth"
    torch.save(model.checkpoint_state(), path)
    vit = FASL(build_backbone(VIT, pretrained=None, image_size=64))
    with pytest.raises(CheckpointMismatch, match=r"family: checkpoint .* has 'timm-cnn', this model has 'timm-vit'"):
        vit.load_checkpoint(path)
    other = FASL(build_backbone(CNN, pretrained=None, blocks=[3, 5], image_size=64))
    with pytest.raises(CheckpointMismatch, match=r"widths: .* has \[40, 112\], this model has \[40, 320\]"):
        other.load_checkpoint(path)


def test_programs_end_to_end_with_a_timm_cnn(syn_datasets, tmp_path):
    backbone = ["--model", CNN, "--pretrained", "none", "--image_size", "64", "--device", "cpu"]
    ckpt = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "ckpt"),
                       "--epoch", "1", "--batch_size", "6", "--k_shot", "1", *backbone])
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["family"] == "timm-cnn" and state["config"]["widths"] == [40, 112]
    results = test_few_shot.main(["--data_path", str(syn_datasets["visa"]), "--save_path", str(tmp_path / "test"),
                                  "--checkpoint_path", str(ckpt), "--eval_size", "32", "--winmode", "mul",
                                  "--win_size", "4", "--win_stride", "2", *backbone])
    assert all(0.0 <= m["pixel_auroc"] <= 1.0 for m in results.values())
    meta = json.loads((syn_datasets["visa"] / "meta.json").read_text())
    cls = sorted(meta["test"])[0]
    refs = [str(syn_datasets["visa"] / s["img_path"]) for s in meta["train"][cls][:2]]
    images = [str(syn_datasets["visa"] / s["img_path"]) for s in meta["test"][cls][:3]]
    assert predict.main(["--refs", *refs, "--images", *images, "--out", str(tmp_path / "pred"),
                         "--checkpoint_path", str(ckpt), "--mode", "merged", *backbone]) == 0
    doc = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(doc["images"]) == 3 and doc["model"]["family"] == "timm-cnn"


def test_benchmark_runs_on_a_timm_model(tmp_path):
    from bench import benchmark

    out = benchmark.main(["--model", VIT, "--pretrained", "none", "--image_size", "64", "--features_list", "2", "4",
                          "--winmode", "mul", "--win_size", "2", "--win_stride", "1", "--n_images", "1",
                          "--warmup", "0", "--metric_maps", "0", "--out", str(tmp_path / "b.json")])
    assert out["total_s"] > 0 and out["settings"]["model"] == VIT
