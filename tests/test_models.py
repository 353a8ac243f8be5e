"""Tests for the model code: backbone, FD, ASL heads + NAM, and the composed FASL model.

All on the tiny random-weight CLIP (models/configs/fasl-tiny-vit.json: 4 blocks, width 64,
patch 14) at 112 px, so the patch grid is 8x8 and a 4-patch window is 56 px (4x4).
The pure window/alignment functions are tested in tests/test_lfe_memory.py.
"""

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from models.asl import NAM, ASLHead, HeadLayout, ScoreHeads, ScoreMaps
from models.backbone import CONFIG_DIR, TINY_MODEL, ClipBackbone as Backbone
import models.fasl as fasl_module
from models.fasl import FASL, CheckpointMismatch, InferenceConfig, Prediction, resolved_search_dtype, search_dtype
from models.fd import deviation, deviation_rows, fd_scores, gathered_deviation

SIZE = 112        # 8x8 patches of 14 px
WIN, STRIDE = 4, 2  # windows of 4x4 patches (56 px), starts 0, 2, 4 -> 3x3 windows
BLOCKS = (1, 2, 3, 4)
WIDTH = 64


def tiny_backbone(seed=0, image_size=SIZE, **kw):
    torch.manual_seed(seed)
    return Backbone(TINY_MODEL, pretrained=None, blocks=BLOCKS, image_size=image_size, **kw)


def smooth_images(n, seed, size=SIZE):
    """Low-frequency random images (like normalised photos, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, 7, 7, generator=g), size=(size, size), mode="bilinear",
                         align_corners=False)


def cfg(**kw):
    base = dict(win_size=WIN, win_stride=STRIDE, out_size=56, align="image_index")  # the fast search unless told
    return InferenceConfig(**{**base, **kw})


def write_config(tmp_path, name, **vision):
    """A copy of the tiny config under another name, with vision_cfg fields replaced."""
    config = json.loads((CONFIG_DIR / f"{TINY_MODEL}.json").read_text())
    config["vision_cfg"].update(vision)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="module")
def model(backbone):
    torch.manual_seed(1)
    return FASL(backbone)


@pytest.fixture(scope="module")
def refs():
    return smooth_images(3, seed=2)


@pytest.fixture(scope="module")
def bank(model, refs):
    return model.build_memory(refs, model.window_grid(WIN, STRIDE))


@pytest.fixture(scope="module")
def queries():
    return smooth_images(2, seed=3)


def perturbed_model(backbone, bank, queries, seed, scale=0.3):
    """A FASL whose heads (weights and BN statistics) are far from a fresh one's, so that its
    maps vary (fresh heads give ~0.5 almost everywhere)."""
    torch.manual_seed(seed)
    m = FASL(backbone)
    m.train()
    with torch.no_grad():
        m(queries, bank)  # updates the BN running statistics
        for p in m.heads.parameters():
            p.add_(scale * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def trained(backbone, bank, queries):
    return perturbed_model(backbone, bank, queries, seed=11)


def assert_unit_norm(x):
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[:-1]), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- backbone

@pytest.mark.parametrize("image_size", [112, 84])
@pytest.mark.parametrize("B", [1, 3])
def test_backbone_shapes_and_norms(image_size, B):
    bb = tiny_backbone(image_size=image_size)
    g = image_size // 14
    out = bb(torch.randn(B, 3, image_size, image_size))
    assert out.grid == (g, g)
    assert len(out.tokens) == len(BLOCKS)
    for t in out.tokens:
        assert t.shape == (B, g * g, WIDTH) and t.dtype == torch.float32
        assert_unit_norm(t)
    assert out.embedding.shape == (B, 32)
    assert_unit_norm(out.embedding)
    assert bb.config() == {"family": "open_clip", "model": TINY_MODEL, "widths": [64] * 4, "embed_dim": 32,
                           "depth": 4, "patch_size": 14, "blocks": [1, 2, 3, 4], "image_size": image_size,
                           "pretrained": None, "activation": "gelu", "neighbourhood": 1,
                           "border_pad": 0}
    # the blocks are really different layers
    assert not torch.allclose(out.tokens[0], out.tokens[-1], atol=1e-3)


def test_backbone_second_resolution(backbone):
    pos = backbone.visual.positional_embedding.detach().clone()
    x = torch.randn(2, 3, SIZE, SIZE)
    before = backbone(x)
    small = backbone(torch.randn(5, 3, 56, 56))
    assert small.grid == (4, 4)
    assert [t.shape for t in small.tokens] == [(5, 16, WIDTH)] * 4
    for t in small.tokens:
        assert_unit_norm(t)
    assert_unit_norm(small.embedding)
    wide = backbone(torch.randn(1, 3, 56, 84))  # non-square works too
    assert wide.grid == (4, 6) and wide.tokens[0].shape == (1, 24, WIDTH)
    # the native positional embedding is back in place afterwards
    assert torch.equal(backbone.visual.positional_embedding, pos)
    after = backbone(x)
    for a, b in zip(before.tokens, after.tokens):
        assert torch.equal(a, b)


def test_backbone_chunks_and_no_embedding_give_same_tokens(backbone):
    x = torch.randn(3, 3, 56, 56)
    whole = backbone(x)
    chunked = backbone(x, chunk=2)
    bare = backbone(x, with_embedding=False)
    assert bare.embedding is None
    torch.testing.assert_close(chunked.embedding, whole.embedding, rtol=0, atol=1e-5)
    for a, b, c in zip(whole.tokens, chunked.tokens, bare.tokens):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("blocks", [(0,), (5,), (1, 2, 5), ()])
def test_backbone_blocks_outside_depth_raise(blocks):
    with pytest.raises(ValueError, match=r"outside model 'fasl-tiny-vit' with 4 blocks \(valid: 1\.\.4\)"):
        Backbone(TINY_MODEL, pretrained=None, blocks=blocks, image_size=SIZE)


def test_backbone_size_not_multiple_of_patch_raises(backbone):
    with pytest.raises(ValueError, match="image_size 100 is not a multiple of the patch size 14"):
        Backbone(TINY_MODEL, pretrained=None, blocks=BLOCKS, image_size=100)
    with pytest.raises(ValueError, match="input size 100x112 is not a multiple of the patch size 14"):
        backbone(torch.zeros(1, 3, 100, 112))


def test_backbone_unknown_model_raises():
    with pytest.raises(ValueError, match="unknown model 'ViT-Nope-99'"):
        Backbone("ViT-Nope-99", pretrained=None)


def test_backbone_model_config_json_path(tmp_path):
    path = write_config(tmp_path, "fasl-tiny-copy")
    torch.manual_seed(0)
    bb = Backbone(str(path), pretrained=None, blocks=(2, 4), image_size=SIZE)
    assert bb.model_name == "fasl-tiny-copy"
    assert (bb.width, bb.depth, bb.patch_size, bb.embed_dim) == (64, 4, 14, 32)
    out = bb(torch.randn(1, 3, SIZE, SIZE))
    assert [t.shape for t in out.tokens] == [(1, 64, WIDTH)] * 2
    # same architecture and seed as the registered tiny config: the same weights
    ref = tiny_backbone(seed=0)
    assert torch.equal(bb.visual.conv1.weight, ref.visual.conv1.weight)
    with pytest.raises(FileNotFoundError, match="model config file not found"):
        Backbone(str(tmp_path / "missing.json"), pretrained=None)


def test_backbone_missing_pretrained_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        Backbone(TINY_MODEL, pretrained=str(tmp_path / "nope.pt"), blocks=BLOCKS, image_size=SIZE)


def test_backbone_missing_pretrained_bare_file_name_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a file nor an open_clip tag"):
        Backbone(TINY_MODEL, pretrained="nope.pt", blocks=BLOCKS, image_size=SIZE)


def test_backbone_loads_local_weights_file(tmp_path):
    torch.manual_seed(123)
    clip = open_clip.create_model(TINY_MODEL)  # 224 px weights, read at 112 px below
    path = tmp_path / "tiny-weights.pt"
    torch.save(clip.state_dict(), path)
    bb = Backbone(TINY_MODEL, pretrained=str(path), blocks=BLOCKS, image_size=SIZE)
    assert torch.equal(bb.visual.conv1.weight, clip.visual.conv1.weight)
    assert torch.equal(bb.visual.proj, clip.visual.proj)
    # the checkpoint's own 16x16 grid is kept: every other grid is derived from it
    assert torch.equal(bb.visual.positional_embedding, clip.visual.positional_embedding)


@pytest.mark.parametrize("size", [112, 56, 252])
def test_grid_embedding_is_what_open_clip_loads_at_that_size(tmp_path, size):
    """The reference built one model per resolution (518 px, and 182 px for the windows), each
    resizing the checkpoint's original grid on load; the derived embedding is that one exactly,
    whatever the grid (down from 16x16 at 112 and 56 px, up at 252 px)."""
    torch.manual_seed(123)
    path = tmp_path / "tiny-weights.pt"
    torch.save(open_clip.create_model(TINY_MODEL).state_dict(), path)
    bb = Backbone(TINY_MODEL, pretrained=str(path), blocks=BLOCKS, image_size=SIZE)
    loaded = open_clip.create_model(TINY_MODEL, pretrained=str(path), force_image_size=size)
    g = size // 14
    torch.testing.assert_close(bb.grid_embedding((g, g)), loaded.visual.positional_embedding, rtol=0, atol=1e-6)
    # and the tokens at that size are the ones of the model open_clip builds for it
    x = torch.randn(2, 3, size, size)
    want = loaded.visual.forward_intermediates(x, indices=[0, 3], intermediates_only=True, output_fmt="NLC")
    got = bb(x, with_embedding=False)
    for a, b in zip([got.tokens[0], got.tokens[3]], want["image_intermediates"]):
        torch.testing.assert_close(a, F.normalize(b, dim=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_activation_is_chosen_explicitly_and_recorded(quick_gelu):
    """open_clip builds ViT-L-14-336 with nn.GELU (its config has no quick_gelu), and the
    reference's numbers come from that; the choice is pinned here, not left to open_clip."""
    assert not open_clip.get_model_config("ViT-L-14-336").get("quick_gelu", False)
    bb = tiny_backbone(quick_gelu=quick_gelu)
    acts = {type(m).__name__ for m in bb.visual.modules() if type(m).__name__ in ("GELU", "QuickGELU")}
    assert acts == ({"QuickGELU"} if quick_gelu else {"GELU"})
    assert bb.config()["activation"] == ("quick_gelu" if quick_gelu else "gelu")


def test_checkpoint_of_the_other_activation_is_refused(tmp_path, model):
    torch.manual_seed(0)
    quick = FASL(tiny_backbone(quick_gelu=True))
    ckpt = tmp_path / "quick.pt"
    torch.save(quick.checkpoint_state(), ckpt)
    with pytest.raises(CheckpointMismatch, match="activation: checkpoint .* has 'quick_gelu', this model has 'gelu'"):
        model.load_checkpoint(ckpt)


def test_backbone_precision(backbone, refs):
    with pytest.raises(ValueError, match="precision must be one of"):
        Backbone(TINY_MODEL, pretrained=None, blocks=BLOCKS, image_size=SIZE, precision="fp8")
    assert backbone.feature_dtype == torch.float32  # auto on CPU
    fp32 = tiny_backbone(seed=0, precision="fp32")
    for a, b in zip(fp32(refs).tokens, backbone(refs).tokens):
        assert torch.equal(a, b)
    torch.manual_seed(1)
    half = FASL(tiny_backbone(seed=0, precision="bf16"))
    out = half.backbone(refs)
    assert out.tokens[0].dtype == out.embedding.dtype == torch.bfloat16
    torch.testing.assert_close(out.tokens[0].float().norm(dim=-1), torch.ones(3, 64), rtol=0, atol=1e-2)
    bank = half.build_memory(refs, half.window_grid(WIN, STRIDE))
    assert bank.global_memory.dtype == bank.window_memory.dtype == torch.bfloat16
    pred = half.predict(refs, bank, cfg(mode="fd", winmode="mul", align="position"))
    assert pred.score_map.dtype == torch.float32
    assert pred.score_map.abs().max() < 1e-2  # self-match survives the coarser dtype
    pred = half.predict(refs, bank, cfg(mode="fasl", winmode="mul"))
    assert torch.isfinite(pred.score_map).all() and ((pred.score_map >= 0) & (pred.score_map <= 1)).all()


def test_backbone_is_frozen_and_stays_in_eval(backbone):
    params = list(backbone.parameters())
    assert params and all(not p.requires_grad for p in params)
    backbone.train()
    assert not backbone.training
    assert not any(m.training for m in backbone.modules())
    assert backbone.train(True) is backbone


# ----------------------------------------------------------------------------- FD

def test_fd_scores_are_one_minus_similarity():
    sims = [torch.tensor([[1.0, 0.25, -0.5]]), torch.tensor([[0.5, 0.0, 1.0]])]
    scores = fd_scores(sims)
    assert scores.shape == (1, 2, 3)
    assert scores.tolist() == [[[0.0, 0.75, 1.5], [0.5, 1.0, 0.0]]]
    half = fd_scores([torch.rand(4, 7, dtype=torch.float16) for _ in range(3)])
    assert half.dtype == torch.float32 and half.shape == (4, 3, 7)


def test_deviation_is_absolute_difference_in_float32():
    f = [torch.tensor([[[1.0, -2.0, 0.5]]], dtype=torch.float16)]
    r = [torch.tensor([[[0.5, 1.0, 0.5]]], dtype=torch.float16)]
    dev = deviation(f, r)
    assert dev[0].dtype == torch.float32
    assert dev[0].tolist() == [[[0.5, 3.0, 0.0]]]


# ----------------------------------------------------------------------------- ASL head / NAM

def assert_probabilities(p, dim):
    assert ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(p.sum(dim), torch.ones_like(p.sum(dim)))


@pytest.mark.parametrize("width", [3, 64, 100])
@pytest.mark.parametrize("input_bn", [True, False])
def test_asl_head_shapes_and_probabilities(width, input_bn):
    torch.manual_seed(0)
    head = ASLHead(width, input_bn=input_bn)
    x = torch.rand(3, 35, width)
    for train in (True, False):
        head.train(train)
        p = head(x)
        assert p.shape == (3, 35, 2)
        assert_probabilities(p, -1)
    assert isinstance(head.mlp[0], torch.nn.BatchNorm1d) == input_bn


def randomised_head(width, input_bn, seed=0):
    """A head whose BatchNorms have non-trivial running statistics and affine parameters."""
    torch.manual_seed(seed)
    head = ASLHead(width, input_bn=input_bn)
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.2, 3.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    return head.eval()


@pytest.mark.parametrize("input_bn", [True, False])
def test_folded_head_equals_eval_forward(input_bn):
    head = randomised_head(40, input_bn)
    x = torch.rand(300, 40)
    layers = head.folded()
    # BN folded away: one affine map per Linear
    assert [w.shape for w, _ in layers] == [(512, 40), (128, 512), (32, 128), (2, 32)]
    torch.testing.assert_close(head.apply_folded(layers, x), head(x), rtol=1e-5, atol=1e-6)
    # and the folding tracks the parameters it was built from
    with torch.no_grad():
        (head.mlp[0] if input_bn else head.mlp[1]).running_mean.add_(0.7)
    assert not torch.allclose(head.apply_folded(layers, x), head(x), atol=1e-4)
    torch.testing.assert_close(head.apply_folded(head.folded(), x), head(x), rtol=1e-5, atol=1e-6)


def test_gathered_deviation_equals_deviation_of_gathered_rows():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(9, 6, generator=g)
    idx = torch.tensor([3, 0, 0, 7, 2, 7, 1, 5, 4])
    for bank_dtype in (torch.float32, torch.float16):
        for query_dtype in (torch.float32, torch.float16, torch.bfloat16):  # CUDA: fp16 queries and banks
            q = f.to(query_dtype)
            bank_rows = torch.randn(8, 6, generator=g).to(bank_dtype)
            before = bank_rows.clone()
            dev = gathered_deviation(q, bank_rows, idx)
            assert dev.dtype == torch.float32
            assert torch.equal(dev, deviation_rows(q, bank_rows[idx]))
            assert torch.equal(bank_rows, before)  # the bank is read, never written


@pytest.mark.parametrize("train", [False, True])
def test_aligned_probs_equal_patch_probs_of_explicit_deviations(train):
    """The chunked inference path == heads on materialised deviations (eval: folded heads)."""
    heads = ScoreHeads(HeadLayout((12, 12)))
    for b, h in enumerate(heads.heads):
        heads.heads[b] = randomised_head(12, True, seed=b)
    heads.train(train)
    g = torch.Generator().manual_seed(6)
    tokens = [torch.randn(3, 35, 12, generator=g) for _ in range(2)]
    bank = torch.randn(2, 2, 35, 12, generator=g)  # L, R, m, W
    index = [torch.randint(0, 70, (3, 35), generator=g) for _ in range(2)]
    got = heads.aligned_probs(tokens, index, bank, (7, 5), chunk_rows=16)  # several chunks
    heads.eval()  # the reference: eval-mode modules, batch statistics play no part
    with torch.no_grad():
        aligned = [bank[b].reshape(-1, 12)[index[b]] for b in range(2)]
        want = heads.patch_probs(deviation(tokens, aligned), (7, 5))
    for a, b in zip(got, want):
        assert a.shape == (3, 2, 7, 5)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid", [(7, 5), (1, 1), (3, 9), (8, 8)])
def test_nam_keeps_grid_and_gives_probabilities(grid):
    torch.manual_seed(0)
    nam = NAM()
    p = torch.rand(2, 2, *grid).softmax(1)
    out = nam(p)
    assert out.shape == (2, 2, *grid)
    assert_probabilities(out, 1)


@pytest.mark.parametrize("shared_nam", [True, False])
def test_score_heads_layout_on_7x5_grid(shared_nam):
    torch.manual_seed(0)
    heads = ScoreHeads(HeadLayout((12, 12, 12), shared_nam=shared_nam)).eval()
    devs = [torch.rand(2, 35, 12) for _ in range(3)]
    maps = heads(devs, (7, 5))
    assert isinstance(maps, ScoreMaps) and len(maps.raw) == len(maps.refined) == 3
    nams = [m for m in heads.modules() if isinstance(m, NAM)]
    assert len(nams) == (1 if shared_nam else 3)  # the reference: one NAM for every block
    for layer, (raw, refined) in enumerate(zip(maps.raw, maps.refined)):
        assert raw.shape == refined.shape == (2, 2, 7, 5)
        assert_probabilities(raw, 1)
        assert_probabilities(refined, 1)
        # grid cell (y, x) holds patch y * 5 + x of that block's own head
        per_patch = heads.heads[layer](devs[layer])  # [2, 35, 2]
        assert torch.equal(raw[:, :, 4, 3], per_patch[:, 4 * 5 + 3])
        torch.testing.assert_close(refined, nams[0 if shared_nam else layer](raw))
    # each block has its own head
    assert not torch.allclose(maps.raw[0], heads.heads[1](devs[0]).permute(0, 2, 1).reshape(2, 2, 7, 5))
    assert heads(devs, (7, 5), use_nam=False).refined is None


def test_heads_of_blocks_of_different_widths():
    torch.manual_seed(0)
    heads = ScoreHeads(HeadLayout((40, 112))).eval()
    maps = heads([torch.rand(2, 35, 40), torch.rand(2, 35, 112)], (7, 5))
    assert [m.shape for m in maps.raw] == [(2, 2, 7, 5)] * 2
    assert [h.mlp[0].num_features for h in heads.heads] == [40, 112]


def test_hidden_linears_have_no_bias_unless_asked():
    """The reference's Linears in front of a BatchNorm carry no bias; the last one does."""
    lin = [m for m in ASLHead(16).modules() if isinstance(m, torch.nn.Linear)]
    assert [m.bias is None for m in lin] == [True, True, True, False]
    lin = [m for m in ASLHead(16, hidden_bias=True).modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is not None for m in lin)


# ----------------------------------------------------------------------------- FASL: predict

@pytest.mark.parametrize("mode", ["fasl", "fd"])
@pytest.mark.parametrize("align", ["exhaustive", "image_index", "position"])
@pytest.mark.parametrize("winmode", ["nan", "mul", "onlywin"])
def test_predict_shapes_and_range(trained, bank, queries, winmode, align, mode):
    pred = trained.predict(queries, bank, cfg(winmode=winmode, align=align, mode=mode, out_size=40))
    assert isinstance(pred, Prediction)
    assert pred.score_map.shape == (2, 40, 40) and pred.image_score.shape == (2,)
    assert pred.score_map.dtype == pred.image_score.dtype == torch.float32
    for x in (pred.score_map, pred.image_score):
        assert torch.isfinite(x).all()
        assert (x >= -1e-6).all() and (x <= 1 + 1e-6).all()
    # an image score is at least the mean of its map (it averages per-block maxima)
    assert (pred.image_score >= pred.score_map.mean(dim=(1, 2)) - 1e-6).all()


@pytest.mark.parametrize("mode, use_nam", [("fasl", True), ("fasl", False), ("fd", True)])
@pytest.mark.parametrize("align", ["exhaustive", "position"])
def test_predict_mul_blends_global_and_window(trained, bank, queries, mode, use_nam, align):
    w = 0.3
    kw = dict(mode=mode, align=align, use_nam=use_nam)
    glob = trained.predict(queries, bank, cfg(winmode="nan", **kw))
    win = trained.predict(queries, bank, cfg(winmode="onlywin", **kw))
    mul = trained.predict(queries, bank, cfg(winmode="mul", win_weight=w, **kw))
    torch.testing.assert_close(mul.score_map, (1 - w) * glob.score_map + w * win.score_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(mul.image_score, (1 - w) * glob.image_score + w * win.image_score, rtol=0, atol=1e-6)
    # the two parts really differ, so the blend is checked, not a trivial identity
    assert (glob.score_map - win.score_map).abs().max() > 1e-3


@pytest.mark.parametrize("align", ["exhaustive", "image_index", "position"])
@pytest.mark.parametrize("winmode", ["nan", "mul", "onlywin"])
def test_reference_scores_zero_against_own_memory(model, bank, refs, queries, winmode, align):
    pred = model.predict(refs, bank, cfg(mode="fd", winmode=winmode, align=align))
    torch.testing.assert_close(pred.score_map, torch.zeros_like(pred.score_map), rtol=0, atol=1e-5)
    torch.testing.assert_close(pred.image_score, torch.zeros(3), rtol=0, atol=1e-5)
    # a reference alone in a batch is encoded alike
    one = model.predict(refs[1:2], bank, cfg(mode="fd", winmode=winmode, align=align))
    assert one.score_map.abs().max() < 1e-5
    # ... whereas an unseen image is not at zero
    other = model.predict(queries, bank, cfg(mode="fd", winmode=winmode, align=align))
    assert (other.image_score > 1e-3).all()


def test_foreign_patch_scores_highest_where_pasted(model, bank, refs):
    g = torch.Generator().manual_seed(4)
    image = refs[:1].clone()
    y0, x0 = 28, 56  # patches (2..3, 4..5) of the 8x8 grid
    image[:, :, y0:y0 + 28, x0:x0 + 28] = 3.0 + 2.0 * torch.randn(1, 3, 28, 28, generator=g)
    for align in ("exhaustive", "image_index"):
        pred = model.predict(image, bank, cfg(mode="fd", winmode="nan", align=align, out_size=SIZE))
        m = pred.score_map[0]
        y, x = divmod(int(m.argmax()), SIZE)
        assert y0 <= y < y0 + 28 and x0 <= x < x0 + 28, (align, y, x)
        inside = m[y0:y0 + 28, x0:x0 + 28].mean()
        outside = m.sum() - m[y0:y0 + 28, x0:x0 + 28].sum()
        assert inside > 2 * outside / (SIZE * SIZE - 28 * 28)
        clean = model.predict(refs[:1], bank, cfg(mode="fd", winmode="nan", align=align))
        assert pred.image_score[0] > clean.image_score[0] + 0.05


def test_predict_deterministic_on_cpu(trained, bank, queries):
    c = cfg(mode="fasl", winmode="mul", align="image_index")
    a, b = trained.predict(queries, bank, c), trained.predict(queries, bank, c)
    assert torch.equal(a.score_map, b.score_map) and torch.equal(a.image_score, b.image_score)


def test_fresh_models_with_same_seed_agree(queries, refs):
    preds = []
    for _ in range(2):
        bb = tiny_backbone(seed=7)
        torch.manual_seed(8)
        m = FASL(bb)
        bank = m.build_memory(refs[:2], m.window_grid(WIN, STRIDE))
        preds.append(m.predict(queries, bank, cfg(mode="fasl", winmode="mul", align="position")))
    assert torch.equal(preds[0].score_map, preds[1].score_map)
    assert torch.equal(preds[0].image_score, preds[1].image_score)


def test_predict_timer_sees_every_stage(model, bank, queries):
    seen = []

    class Stopwatch:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            seen.append(self.name)

        def __exit__(self, *exc):
            return False

    model.predict(queries, bank, cfg(mode="fasl", winmode="mul", align="position"), timer=Stopwatch)
    assert set(seen) == {"backbone_global", "backbone_windows", "align", "heads", "merge"}


def test_build_fasl_helper():
    from models import build_fasl

    torch.manual_seed(0)
    m = build_fasl(TINY_MODEL, None, (2, 3), 84)
    assert isinstance(m, FASL) and m.layout.input_bn and m.layout.shared_nam
    assert m.config()["blocks"] == [2, 3] and m.config()["image_size"] == 84
    assert len(m.heads.heads) == 2


def test_predict_windows_need_a_window_bank(model, refs, queries):
    bank = model.build_memory(refs[:1])
    assert bank.windows is None
    with pytest.raises(RuntimeError, match="windows"):
        model.predict(queries, bank, cfg(winmode="mul"))
    assert model.predict(queries, bank, cfg(winmode="nan")).score_map.shape == (2, 56, 56)


def test_build_memory_shapes(model, bank):
    assert bank.k == 3
    assert [t.shape for t in bank.global_memory.tokens] == [(3, 64, WIDTH)] * 4
    assert bank.global_memory.embedding.shape == (3, 32)
    assert bank.windows.num_windows == 9
    assert [t.shape for t in bank.window_memory.tokens] == [(3 * 9, 16, WIDTH)] * 4
    assert bank.window_memory.embedding.shape == (27, 32)
    assert bank.global_memory.dtype == torch.float32  # CPU keeps float32


# ----------------------------------------------------------------------------- FASL: training

@pytest.mark.parametrize("align", ["exhaustive", "image_index"])
def test_training_forward_and_gradients(backbone, bank, queries, align):
    torch.manual_seed(5)
    m = FASL(backbone)
    m.train()
    assert m.heads.training and not m.backbone.training and not backbone.visual.training
    out = m(queries, bank, align=align)
    assert len(out.raw) == len(out.refined) == len(BLOCKS)
    for raw, refined in zip(out.raw, out.refined):
        assert raw.shape == refined.shape == (2, 2, 8, 8)
        assert_probabilities(raw, 1)
        assert_probabilities(refined, 1)
    loss = sum(r[:, 1].mean() for r in out.refined) + sum(r[:, 1].mean() for r in out.raw)
    loss.backward()
    for name, p in m.heads.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in m.heads.parameters()) > 0
    assert all(p.grad is None for p in m.backbone.parameters())


# ----------------------------------------------------------------------------- FASL: checkpoints

def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, trained, bank, queries):
    path = tmp_path / "heads.pt"
    torch.save(trained.checkpoint_state(epoch=3), path)
    c = cfg(mode="fasl", winmode="mul", align="exhaustive")
    expected = trained.predict(queries, bank, c)

    torch.manual_seed(12)
    fresh = FASL(tiny_backbone(seed=0))
    before = fresh.predict(queries, bank, c)
    assert not torch.allclose(before.score_map, expected.score_map, atol=1e-4)
    state = fresh.load_checkpoint(path)
    assert state["epoch"] == 3 and state["config"] == trained.config()
    after = fresh.predict(queries, bank, c)
    assert torch.equal(after.score_map, expected.score_map)
    assert torch.equal(after.image_score, expected.image_score)


def test_checkpoint_of_other_width_is_refused(tmp_path, model):
    path = write_config(tmp_path, "fasl-tiny-w32", width=32)
    torch.manual_seed(0)
    narrow = FASL(Backbone(str(path), pretrained=None, blocks=BLOCKS, image_size=SIZE))
    assert narrow.backbone.widths == (32,) * 4
    ckpt = tmp_path / "narrow.pt"
    torch.save(narrow.checkpoint_state(), ckpt)
    with pytest.raises(CheckpointMismatch, match=r"widths: checkpoint .* has \[32, 32, 32, 32\], this model has \[64"):
        model.load_checkpoint(ckpt)


def test_checkpoint_of_other_blocks_or_format_is_refused(tmp_path, model):
    torch.manual_seed(0)
    other = FASL(Backbone(TINY_MODEL, pretrained=None, blocks=(1, 2, 3), image_size=SIZE))
    ckpt = tmp_path / "blocks.pt"
    torch.save(other.checkpoint_state(), ckpt)
    with pytest.raises(CheckpointMismatch, match=r"blocks: .* has \[1, 2, 3\], this model has \[1, 2, 3, 4\]"):
        model.load_checkpoint(ckpt)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointMismatch, match="is not a FASL checkpoint"):
        model.load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        model.load_checkpoint(tmp_path / "missing.pt")
    assert issubclass(CheckpointMismatch, ValueError)


# ----------------------------------------------------------------------------- InferenceConfig

@pytest.mark.parametrize("kw, match", [
    ({"winmode": "both"}, "winmode must be one of"),
    ({"align": "knn"}, "align must be one of"),
    ({"mode": "asl"}, "mode must be one of"),
    ({"win_weight": -0.1}, r"win_weight must lie in \[0, 1\]"),
    ({"win_weight": 1.5}, r"win_weight must lie in \[0, 1\]"),
])
def test_inference_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        InferenceConfig(**kw)


def test_search_dtype_resolution(monkeypatch):
    assert search_dtype("exact", torch.device("cpu")) is None
    assert search_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert search_dtype("auto", torch.device("cuda", 0)) is None  # the fp16 bank itself on CUDA
    monkeypatch.setattr(fasl_module, "cpu_has_amx", lambda: True)
    assert search_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert search_dtype("auto", torch.device("cpu"), small=True) is None  # windows under image_index/position
    assert search_dtype("bf16", torch.device("cpu"), small=True) == torch.bfloat16
    monkeypatch.setattr(fasl_module, "cpu_has_amx", lambda: False)
    assert search_dtype("auto", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="search_precision must be one of"):
        search_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="search_precision must be one of"):
        InferenceConfig(search_precision="fp8")


def test_recorded_search_dtype_follows_the_window_policy(monkeypatch, model):
    monkeypatch.setattr(fasl_module, "cpu_has_amx", lambda: True)
    for align, window in [("exhaustive", "bfloat16"), ("image_index", "float32"), ("position", "float32")]:
        c = cfg(align=align, winmode="mul")
        assert resolved_search_dtype(model, c) == "bfloat16"
        assert resolved_search_dtype(model, c, windows=True) == window
    assert resolved_search_dtype(model, cfg(search_precision="exact"), windows=True) == "float32"


@pytest.mark.parametrize("amx, same_as", [(True, "bf16"), (False, "exact")])
def test_auto_search_precision_follows_the_cpu(monkeypatch, trained, bank, queries, amx, same_as):
    monkeypatch.setattr(fasl_module, "cpu_has_amx", lambda: amx)
    for mode in ("fasl", "fd"):
        kw = dict(mode=mode, winmode="mul", align="exhaustive")
        auto = trained.predict(queries, bank, cfg(search_precision="auto", **kw))
        want = trained.predict(queries, bank, cfg(search_precision=same_as, **kw))
        assert torch.equal(auto.score_map, want.score_map) and torch.equal(auto.image_score, want.image_score)


def test_inference_config_defaults():
    c = InferenceConfig()
    assert (c.mode, c.winmode, c.align, c.win_size, c.win_stride, c.win_weight) == ("fasl", "nan", "exhaustive", 13, 2, 0.5)
    assert c.search_precision == "auto"
    assert not c.uses_windows and InferenceConfig(winmode="onlywin").uses_windows
    assert InferenceConfig(win_weight=0.0).win_weight == 0.0 and InferenceConfig(win_weight=1.0).win_weight == 1.0



# ----------------------------------------------------------------------------- review fixes

def test_checkpoint_from_random_weights_is_refused_on_pretrained_weights(model, tmp_path):
    """Heads fitted to random features mean nothing on real ones: refused, naming 'pretrained'."""
    state = model.checkpoint_state()
    weights = tmp_path / "weights.pt"
    torch.save(open_clip.create_model(TINY_MODEL).state_dict(), weights)
    other = FASL(Backbone(TINY_MODEL, pretrained=str(weights), blocks=BLOCKS, image_size=SIZE))
    with pytest.raises(CheckpointMismatch, match="pretrained: checkpoint has None"):
        other.check_config(state["config"], source="checkpoint")


@pytest.mark.parametrize("kw", [{"win_radius": -1}, {"win_topk": -1}, {"window_batch": 0}, {"out_size": 0}])
def test_inference_config_rejects_negative_sizes(kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        InferenceConfig(**kw)


def test_window_grid_on_the_model_device_carries_its_counts(model):
    wg = model.window_grid(4, 3)
    assert wg.patch_index.device == model.device and wg.counts.device == model.device
    assert torch.equal(wg.counts, torch.bincount(wg.patch_index.reshape(-1), minlength=64).float())
    assert model.windows_for(InferenceConfig(winmode="nan")) is None


# ----------------------------------------------------------------------------- reference-code behaviour

def test_image_score_is_the_grid_maximum_and_maps_upsample_with_corners_aligned():
    """Hand-worked: block 0 has a single 1.0 in the middle of a 3x3 grid, block 1 is all 0.
    The image score is the mean over blocks of each block's grid maximum: (1 + 0) / 2 = 0.5.
    Upsampled to 4x4 with corners aligned the samples fall at 0, 2/3, 4/3, 2 along each axis,
    so the peak (1 - 1/3)^2 / 2 = 0.2222 never reaches the grid maximum."""
    maps = torch.zeros(1, 2, 3, 3)
    maps[0, 0, 1, 1] = 1.0
    pred = fasl_module.combine_maps([maps], InferenceConfig(winmode="nan", out_size=4))
    assert pred.image_score.tolist() == [0.5]
    torch.testing.assert_close(pred.score_map.max(), torch.tensor(2 / 9))
    torch.testing.assert_close(pred.score_map[0, 0], torch.tensor([0.0, 0.0, 0.0, 0.0]))  # corners on the grid
    # at 5x5 the centre is sampled exactly
    pred5 = fasl_module.combine_maps([maps], InferenceConfig(winmode="nan", out_size=5))
    assert pred5.score_map[0, 2, 2].item() == 0.5 and pred5.score_map[0, 0, 0].item() == 0.0
    # mul blends the image scores and the maps of the two parts with the window weight
    win = torch.full((1, 2, 3, 3), 0.25)
    mul = fasl_module.combine_maps([maps, win], InferenceConfig(winmode="mul", win_weight=0.2, out_size=5))
    assert mul.image_score.item() == pytest.approx(0.8 * 0.5 + 0.2 * 0.25)
    assert mul.score_map[0, 2, 2].item() == pytest.approx(0.8 * 0.5 + 0.2 * 0.25)


def fresh_heads(seed=21):
    torch.manual_seed(seed)
    return ScoreHeads(HeadLayout((WIDTH,) * 4))


def test_a_mixed_class_batch_goes_through_the_heads_in_one_call(backbone, refs, queries):
    """Each image is aligned in its own class's bank, then the whole batch's deviations make one
    BatchNorm batch: the same maps and running statistics as one head call on the concatenated
    deviations, and one running-statistics update per step."""
    model = FASL(backbone)
    model.heads = fresh_heads()
    bank_a, bank_b = model.build_memory(refs[:1]), model.build_memory(refs[1:])
    images = torch.cat([queries, refs[2:3]])  # 3 images: classes a, b, a
    banks = [bank_a, bank_b, bank_a]
    model.train()
    out = model(images, banks, align="exhaustive")

    ref_heads = fresh_heads().train()
    feats = backbone(images, with_embedding=False)
    aligned = [torch.cat(parts) for parts in zip(*[
        bank.align_global([t[i:i + 1] for t in feats.tokens], mode="exhaustive").aligned
        for i, bank in enumerate(banks)])]
    want = ref_heads(deviation(feats.tokens, aligned), feats.grid)
    for a, b in zip(out.raw + out.refined, want.raw + want.refined):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    bns = [m for m in model.heads.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    ref_bns = [m for m in ref_heads.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(m.num_batches_tracked.item() == 1 for m in bns)
    for m, r in zip(bns, ref_bns):
        torch.testing.assert_close(m.running_mean, r.running_mean)
        torch.testing.assert_close(m.running_var, r.running_var)
    # per-class sub-batches (two head calls) would give other statistics
    split = fresh_heads().train()
    split(deviation([t[[0, 2]] for t in feats.tokens], [t[[0, 2]] for t in aligned]), feats.grid)
    split(deviation([t[[1]] for t in feats.tokens], [t[[1]] for t in aligned]), feats.grid)
    split_bn = next(m for m in split.modules() if isinstance(m, torch.nn.BatchNorm1d))
    assert not torch.allclose(split_bn.running_mean, bns[0].running_mean)
    with pytest.raises(ValueError, match="2 banks for a batch of 3"):
        model(images, banks[:2])


def test_checkpoints_without_a_recorded_layout_load_as_before(tmp_path, backbone, bank, queries):
    """Checkpoints written before the NAM layout and the hidden biases were recorded had one NAM
    per block and biased Linears, and one 'width'; they load with that layout and score as before."""
    from models import build_fasl

    torch.manual_seed(4)
    old = FASL(backbone, HeadLayout((WIDTH,) * 4, shared_nam=False, hidden_bias=True))
    old.train()
    with torch.no_grad():
        old(queries, bank)
    state = old.checkpoint_state(epoch=1)
    for key in ("nam", "hidden_bias", "family", "activation", "widths"):
        del state["config"][key]
    state["config"]["width"] = WIDTH
    path = tmp_path / "old.pth"
    torch.save(state, path)
    built = build_fasl(TINY_MODEL, None, BLOCKS, SIZE, checkpoint=str(path))  # the layout comes from the file
    assert not built.layout.shared_nam and built.layout.hidden_bias
    loaded = FASL(backbone, built.layout)  # on the backbone the bank was built with
    loaded.load_checkpoint(path)
    c = cfg(mode="fasl", winmode="mul")
    torch.testing.assert_close(loaded.predict(queries, bank, c).score_map, old.predict(queries, bank, c).score_map)
    # a shared-NAM model refuses it by name rather than failing inside load_state_dict
    with pytest.raises(CheckpointMismatch, match="nam: checkpoint .* has 'per_block', this model has 'shared'"):
        FASL(backbone).load_checkpoint(path)


def test_heads_trained_without_nam_refuse_to_score_with_it(trained, bank, queries):
    m = FASL(trained.backbone)
    m.heads = trained.heads
    m.nam_trained = False
    with pytest.raises(ValueError, match="trained without NAM .* --no-nam"):
        m.predict(queries, bank, cfg(mode="fasl"))
    assert torch.isfinite(m.predict(queries, bank, cfg(mode="fasl", use_nam=False)).score_map).all()
    assert torch.isfinite(m.predict(queries, bank, cfg(mode="fd")).score_map).all()


def test_a_moved_bank_takes_everything_along_and_keeps_no_stale_search_copy(model, refs, queries):
    """``.to()`` moves the memories, the window geometry and the position tables; the bf16 search
    copy is a cache of the old place and dtype and is dropped, then rebuilt by the next search."""
    bank = model.build_memory(refs, model.window_grid(WIN, STRIDE))
    c = cfg(mode="fd", winmode="mul", align="position", search_precision="bf16")
    before = model.predict(queries, bank, c)
    assert bank.global_memory.nbytes() > sum(t.numel() * 4 for t in bank.global_memory.tokens) + 3 * 32 * 4
    assert bank.__dict__["_position_tables"]
    assert bank.to("meta") is bank
    held = [*bank.global_memory.tokens, *bank.window_memory.tokens, bank.global_memory.embedding,
            bank.window_memory.embedding, bank.windows.patch_index, bank.windows.counts, bank.windows.starts_y]
    assert all(t.device.type == "meta" for t in held)
    assert bank.global_memory.__dict__["_search_copy"] is None and "_position_tables" not in bank.__dict__
    # a dtype move: no bf16 copy of the old values survives, the next search makes a fresh one
    bank = model.build_memory(refs, model.window_grid(WIN, STRIDE))
    model.predict(queries, bank, c)
    bank.double()
    assert bank.global_memory.dtype == torch.float64 and bank.windows.counts.dtype == torch.float64
    assert bank.global_memory.__dict__["_search_copy"] is None
    after = model.predict(queries, bank, c)
    assert bank.global_memory.__dict__["_search_copy"][0].dtype == torch.bfloat16
    torch.testing.assert_close(after.score_map, before.score_map, rtol=0, atol=1e-5)


@pytest.mark.parametrize("winmode", ["nan", "mul", "onlywin"])
def test_merged_map_is_the_heads_map_plus_fd_summed_over_blocks(trained, bank, queries, winmode):
    """The merge the reference left commented out: ASL map (mean over blocks) + FD summed over blocks."""
    maps = {m: trained.predict(queries, bank, cfg(mode=m, winmode=winmode, align="position")).score_map
            for m in fasl_module.SCORE_MODES}
    torch.testing.assert_close(maps["merged"], maps["fasl"] + len(BLOCKS) * maps["fd"], rtol=1e-5, atol=1e-5)
    assert cfg(mode="merged").uses_heads and cfg(mode="fasl").uses_heads and not cfg(mode="fd").uses_heads


def test_encode_once_then_score_equals_predict(trained, bank, queries):
    """Features encoded once serve several scorings (modes, NAM, alignment) with predict's numbers."""
    enc = trained.encode(queries, cfg(winmode="mul", align="position"))
    for kw in ({"mode": "fasl"}, {"mode": "fd"}, {"mode": "merged", "use_nam": False}, {"mode": "fasl", "align": "image_index"}):
        c = cfg(winmode="mul", **{"align": "position", **kw})
        want, got = trained.predict(queries, bank, c), trained.score(enc, bank, c)
        assert torch.equal(got.score_map, want.score_map) and torch.equal(got.image_score, want.image_score)
    # one search serves every mode: the alignments dict is filled once (global + windows) and reused
    found = {}
    for mode in ("fasl", "fd", "merged"):
        c = cfg(winmode="mul", align="position", mode=mode)
        assert torch.equal(trained.score(enc, bank, c, found).score_map, trained.predict(queries, bank, c).score_map)
        assert len(found) == 2  # one global and one window search
        assert sorted(entry.windows for entry in found.values()) == [False, True]
    with pytest.raises(ValueError, match="window layout"):
        trained.score(trained.encode(queries, cfg(winmode="mul", win_stride=1)), bank, cfg(winmode="mul"))
    with pytest.raises(ValueError, match="needs the global features"):
        trained.score(trained.encode(queries, cfg(winmode="onlywin")), bank, cfg(winmode="mul"))


def test_residual_nam_starts_as_the_identity_and_learns():
    torch.manual_seed(0)
    nam = NAM(residual=True)
    p = torch.rand(2, 2, 5, 7).softmax(1)
    torch.testing.assert_close(nam(p), p)
    nam(p)[:, 1].sum().backward()
    assert nam.net[2].weight.grad.abs().sum() > 0  # the correction is trainable from the start
    assert not torch.allclose(NAM()(p), p, atol=1e-2)  # the reference's NAM starts as a random map
    layout = HeadLayout((8, 8), nam_residual=True)
    assert HeadLayout.from_config((8, 8), layout.to_config()) == layout
    assert ScoreHeads(layout).nam.residual


def test_precision_fits_the_cpu(monkeypatch):
    """auto never picks bf16 where it is slow; an explicit bf16 there runs, with a warning saying why."""
    import warnings

    import models.backbone as backbone_module
    import models.hardware as hardware

    cpu = torch.device("cpu")
    for amx in (True, False):
        monkeypatch.setattr(hardware, "cpu_has_amx", lambda: amx)
        monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: amx)
        for env, enabled in ((None, True), ("1", True), ("0", False)):  # the suite itself runs with "0"
            if env is None:
                monkeypatch.delenv(backbone_module.AUTO_BF16_ENV, raising=False)
            else:
                monkeypatch.setenv(backbone_module.AUTO_BF16_ENV, env)
            want = torch.bfloat16 if amx and enabled else torch.float32
            assert backbone_module.encoder_dtype("auto", cpu) == want, (amx, env)
    # AVX-512 BF16 without AMX computes bf16 at about fp32's speed: auto keeps fp32 there
    monkeypatch.delenv(backbone_module.AUTO_BF16_ENV, raising=False)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: True)
    assert backbone_module.encoder_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: False)
    with pytest.warns(UserWarning, match=r"--precision bf16 on this CPU \(no AMX / AVX-512 BF16\).*software"):
        assert backbone_module.encoder_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backbone_module.encoder_dtype("bf16", cpu) == torch.bfloat16
        assert backbone_module.encoder_dtype("fp32", cpu) == torch.float32
    assert backbone_module.encoder_dtype("auto", torch.device("cuda", 0)) == torch.float16  # no GPU needed to decide



def test_global_batch_norm_keeps_the_parameters_an_optimizer_holds():
    """The swap happens in place: an optimizer built before still updates the BatchNorms, and a
    single process (no process group) computes plain BatchNorm."""
    from models.asl import GlobalBatchNorm1d, global_batch_norm

    torch.manual_seed(0)
    heads = ScoreHeads(HeadLayout((8, 8)))
    before = list(heads.parameters())
    x = torch.randn(2, 6, 8)
    want = heads([x, x], (2, 3)).raw[0]
    global_batch_norm(heads)
    assert [p for p in heads.parameters()] == before and all(a is b for a, b in zip(heads.parameters(), before))
    assert sum(isinstance(m, GlobalBatchNorm1d) for m in heads.modules()) == 8
    torch.testing.assert_close(heads([x, x], (2, 3)).raw[0], want)

