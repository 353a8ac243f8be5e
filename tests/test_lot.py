"""The decision layer's pieces against hand-worked values and brute-force loops: lot scoring
(models/lot.py), lot thresholds, verdicts, regions and masks (models/decision.py)."""

import math

import numpy as np
import pytest
import torch

from models import build_fasl
from models.decision import (FALLBACK_ABOVE, DecisionSettings, LotRule, Verdicts, colour_range, decide,
                             defect_regions, fallback_warning, falls_back, fit_lot, from_references, good_sample,
                             lot_band)
from models.fasl import InferenceConfig
from models.lot import (LotScorer, LotScoring, choose_pool, defect_patches, lowest_mean, patch_distances, pool_columns,
                        pool_members, pool_order)
from models.postprocess import MapPost


# ----------------------------------------------------------------------------- lot scoring

def test_patch_distances_equal_a_brute_force_loop():
    torch.manual_seed(0)
    q = [torch.nn.functional.normalize(torch.randn(2, 5, c), dim=-1) for c in (3, 4)]
    pool = [torch.nn.functional.normalize(torch.randn(3, 6, c), dim=-1) for c in (3, 4)]
    got = patch_distances(q, pool, max_bytes=64)  # a tiny budget: many chunks
    want = torch.zeros(2, 3, 5)
    for b in range(2):
        for j in range(3):
            for n in range(5):
                want[b, j, n] = sum(1 - max(float(q[l][b, n] @ pool[l][j, m]) for m in range(6)) for l in range(2)) / 2
    assert got.shape == (2, 3, 5) and torch.allclose(got, want, atol=1e-6)
    # an image's patches are at distance 0 from themselves
    assert torch.allclose(patch_distances([t[:1] for t in pool], pool)[0, 0], torch.zeros(6), atol=1e-6)
    # a bfloat16 search picks in low precision and measures the pick exactly: a hair from the exact search
    fast = patch_distances(q, pool, search_dtype=torch.bfloat16)
    assert torch.allclose(fast, want, atol=2e-2) and (fast >= want - 1e-6).all()


def test_lowest_mean_by_hand():
    d = torch.tensor([[[4.0, 1.0], [2.0, 3.0], [0.0, 5.0]]])  # B=1, P=3, N=2
    assert lowest_mean(d, 1).tolist() == [[0.0, 1.0]]
    assert lowest_mean(d, 2).tolist() == [[1.0, 2.0]]  # (0 + 2) / 2, (1 + 3) / 2
    assert lowest_mean(d, 3).tolist() == [[2.0, 3.0]]
    with pytest.raises(ValueError, match="m must lie"):
        lowest_mean(d, 4)
    assert LotScoring(fraction=0.5).lowest(33) == 17 and LotScoring(fraction=0.1).lowest(4) == 1
    assert LotScoring(fraction=1.0).lowest(5) == 5
    with pytest.raises(ValueError, match="fraction"):
        LotScoring(fraction=0.0)


def test_the_pool_depends_on_the_images_not_their_order():
    keys = [f"img{i}" for i in range(40)]
    order = pool_order(keys)
    assert sorted(order) == list(range(40))
    shuffled = keys[::-1]
    assert [shuffled[i] for i in pool_order(shuffled)] == [keys[i] for i in order]
    pool = choose_pool(keys, 8)
    assert len(pool) == 9 and pool == order[:9]  # the size and one spare
    assert choose_pool(keys[:5], 8) == pool_order(keys[:5])  # a small lot: all of it
    # any ids of the images: the pool's ids in pool order, and each one's position in it
    ids = [f"img{i}" for i in range(len(keys))]
    chosen, position = pool_members(ids, keys, 8)
    assert chosen == [ids[i] for i in pool] and position == {ids[i]: j for j, i in enumerate(pool)}
    # a member meets the others and the spare, never itself; an outsider the first `size`
    cols = pool_columns([None, 0, 8], pool=9, size=8)
    assert cols.tolist() == [list(range(8)), list(range(1, 9)), list(range(8))]
    small = pool_columns([1, None], pool=4, size=8)  # fewer images than `size`: all the others
    assert small.tolist() == [[0, 2, 3], [0, 1, 2]]
    with pytest.raises(ValueError, match="no other lot image"):
        pool_columns([0], pool=1, size=8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_fasl("fasl-tiny-vit", "none", [2, 4], 56).eval()
    cfg = InferenceConfig(mode="fd", align="exhaustive", out_size=56, search_precision="exact")  # every CPU alike
    return model, cfg


def test_without_a_lot_the_scorer_is_the_model_and_its_post_processing(tiny):
    model, cfg = tiny
    refs, images = torch.randn(2, 3, 56, 56), torch.randn(3, 3, 56, 56)
    post = MapPost(smooth_sigma=2.0, image_score="top", top_fraction=0.05)
    got = LotScorer(model, cfg, post).fit(refs).score(images)
    want = post.apply(model.predict(images, model.build_memory(refs), cfg))
    assert torch.equal(got.score_map, want.score_map) and torch.equal(got.image_score, want.image_score)


def test_lot_aware_score_equals_the_formula_computed_by_hand(tiny):
    model, cfg = tiny
    torch.manual_seed(1)
    refs, pool, images = torch.randn(2, 3, 56, 56), torch.randn(4, 3, 56, 56), torch.randn(2, 3, 56, 56)
    scoring = LotScoring(pool_size=3, fraction=0.4, fd_weight=0.25)
    scorer = LotScorer(model, cfg, None, scoring).fit(refs, pool)
    got = scorer.score(images, members=[None, 2])  # the second image is the pool's third
    tokens = model.encode(images, cfg).features.tokens
    ref_tokens = model.encode(refs, cfg).features.tokens
    pool_tokens = model.encode(pool, cfg).features.tokens
    single = model.predict(images, model.build_memory(refs), cfg)
    g = 56 // model.backbone.patch_size
    for b, others in ((0, [0, 1, 2]), (1, [0, 1, 3])):
        dists = []
        for j in others:
            dists.append(patch_distances([t[b:b + 1] for t in tokens], [t[j:j + 1] for t in pool_tokens])[0, 0])
        for r in range(2):
            dists.append(patch_distances([t[b:b + 1] for t in tokens], [t[r:r + 1] for t in ref_tokens])[0, 0])
        d = torch.stack(dists)  # [5, N]: 3 lot images + 2 references
        mutual = d.sort(dim=0).values[:2].mean(dim=0)  # ceil(0.4 * 5) = 2 lowest
        grid = mutual.reshape(1, 1, g, g)
        up = torch.nn.functional.interpolate(grid, size=(56, 56), mode="bilinear", align_corners=True)[0, 0]
        assert torch.allclose(got.score_map[b], 0.25 * single.score_map[b] + 0.75 * up, atol=1e-5)
        assert got.image_score[b].item() == pytest.approx(0.25 * single.image_score[b].item()
                                                          + 0.75 * mutual.max().item(), abs=1e-5)
    assert torch.allclose(got.single_score, single.image_score.float())  # no post-processing here: the raw score


def test_a_lot_aware_prediction_carries_the_lot_off_image_scores(tiny):
    """Prediction.single_score of a lot-aware score is exactly what --lot off gives the same images
    (the scale the references-only thresholds live on), through score and score_all alike."""
    model, cfg = tiny
    torch.manual_seed(2)
    refs, pool, images = torch.randn(2, 3, 56, 56), torch.randn(4, 3, 56, 56), torch.randn(3, 3, 56, 56)
    post = MapPost(smooth_sigma=2.0, image_score="top", top_fraction=0.05)
    alone = LotScorer(model, cfg, post).fit(refs).score(images)
    assert alone.single_score is None
    lot = LotScorer(model, cfg, post, LotScoring(pool_size=3)).fit(refs, pool)
    got = lot.score(images)
    assert torch.allclose(got.single_score, alone.image_score, atol=1e-6)
    assert not torch.allclose(got.image_score, alone.image_score)  # the lot-aware score itself differs
    both = lot.score_all(images, batch_size=2)
    assert torch.allclose(both.single_score, alone.image_score, atol=1e-6)


def test_references_are_scored_as_lot_images_leaving_themselves_out(tiny):
    model, cfg = tiny
    torch.manual_seed(2)
    refs, pool = torch.randn(3, 3, 56, 56), torch.randn(5, 3, 56, 56)
    scoring = LotScoring(pool_size=4, fraction=0.5, fd_weight=0.5)
    scorer = LotScorer(model, cfg, None, scoring).fit(refs, pool)
    got = scorer.score_references()
    for i in range(3):
        others = [j for j in range(3) if j != i]
        alone = LotScorer(model, cfg, None, scoring).fit(refs[others], pool)
        want = alone.score(refs[i:i + 1])  # against the other references and the pool's first 4
        assert torch.allclose(got.score_map[i], want.score_map[0], atol=1e-5)
    one = LotScorer(model, cfg, None, scoring).fit(refs[:1], pool).score_references()
    assert one.image_score.shape == (1,) and one.image_score[0] > 0  # k = 1: the mutual score alone
    with pytest.raises(ValueError, match="--mode fd and --winmode nan"):
        LotScorer(model, InferenceConfig(mode="fd", winmode="mul", win_size=2, out_size=56), None, scoring)


def test_defect_patches_keep_each_known_image_above_its_own_level():
    tokens = [torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)]
    good = torch.tensor([[0.1, 0.2, 0.9, 0.5], [0.3, 0.3, 0.3, 0.4]])
    # image 0: median 0.2 (lower middle), level 0.2 + 0.5 x 0.7 = 0.55 -> patch 2; image 1: 0.3 + 0.05 -> patch 3
    kept = defect_patches(tokens, good, level=0.5)
    assert torch.equal(kept[0], torch.stack([tokens[0][0, 2], tokens[0][1, 3]])[None])
    with pytest.raises(ValueError, match="do not match tokens"):
        defect_patches(tokens, good[:, :3])


@pytest.mark.parametrize("lot_aware", [False, True])
def test_known_match_equals_a_brute_force_comparison(tiny, lot_aware):
    """known_match: the largest (distance to the good parts - distance to the nearest known defect
    patch) over an image's patches, each distance a mean over blocks of 1 - cosine similarity."""
    model, cfg = tiny
    torch.manual_seed(4)
    refs, pool, known, images = (torch.randn(n, 3, 56, 56) for n in (2, 4, 2, 3))
    scorer = LotScorer(model, cfg, None, LotScoring(pool_size=3) if lot_aware else None).fit(refs, pool)
    plain = scorer.score(images)
    assert plain.known_match is None
    scorer.set_known(known)
    got = scorer.score(images)
    assert torch.allclose(got.image_score, plain.image_score) and torch.equal(got.score_map, plain.score_map)
    enc_known, enc = model.encode(known, cfg), model.encode(images, cfg)
    kept = defect_patches(enc_known.features.tokens,
                          scorer.good_distance(enc_known.features.tokens, [None, None]))
    good = scorer.good_distance(enc.features.tokens, [None] * 3)  # [3, N]
    if lot_aware:  # the mean of each patch's closest half of the pool (3 of 4) and both references
        enc_pool, enc_refs = model.encode(pool, cfg), model.encode(refs, cfg)
        d = torch.cat([patch_distances(enc.features.tokens, enc_pool.features.tokens)[:, :3],
                       patch_distances(enc.features.tokens, enc_refs.features.tokens)], dim=1)  # [3, 5, N]
        assert torch.allclose(good, d.sort(dim=1).values[:, :3].mean(dim=1), atol=1e-5)
    else:  # the nearest reference, by hand
        want_good = torch.stack([
            torch.stack([(1 - (q[b] @ r[j].T).amax(dim=1)).clamp(min=0) for q, r in
                         zip(enc.features.tokens, scorer._reference_tokens())]).mean(0)
            for b in range(3) for j in range(2)]).reshape(3, 2, -1).amin(dim=1)
        assert torch.allclose(good, want_good, atol=1e-5)
    for b in range(3):
        d_known = torch.stack([(1 - (q[b] @ k[0].T).amax(dim=1)).clamp(min=0)
                               for q, k in zip(enc.features.tokens, kept)]).mean(0)  # [N]
        assert got.known_match[b] == pytest.approx(float((good[b] - d_known).max()), abs=1e-5)
    assert torch.allclose(scorer.match_known(enc), got.known_match, atol=1e-6)
    # a known defect image among the images matches itself: its defect patches are at distance 0
    assert scorer.score(known).known_match.min() > 0
    assert scorer.set_known(None).score(images).known_match is None


def test_an_ok_image_like_a_known_defect_goes_to_review():
    v = from_references(1.0, 0.5, 0.1, 0.0)
    m = np.zeros((4, 4), dtype=np.float32)
    assert DecisionSettings().known_match is None  # off unless asked for
    assert decide(v, np.zeros((4, 4), dtype=np.float32), 0.5, (4, 4), DecisionSettings(), known_match=9.0).verdict == "ok"
    s = DecisionSettings(known_match=0.0)
    plain = decide(v, m, 0.5, (4, 4), s)
    assert plain.verdict == "ok" and not plain.like_known
    like = decide(v, m, 0.5, (4, 4), s, known_match=0.01)
    assert like.verdict == "review" and like.like_known and like.verdict_without_band == "ok"
    assert decide(v, m, 0.5, (4, 4), s, known_match=-0.01).verdict == "ok"
    assert decide(v, m, 0.5, (4, 4), DecisionSettings(known_match=0.05), known_match=0.01).verdict == "ok"
    assert decide(v, m, 0.5, (4, 4), DecisionSettings(known_match=None), known_match=9.0).verdict == "ok"
    high = decide(v, m + 2.0, 2.0, (4, 4), s, known_match=0.5)
    assert high.verdict == "defect" and not high.like_known  # only ok images are moved
    with pytest.raises(ValueError, match="known_match must be a finite number or None"):
        DecisionSettings(known_match=math.nan)


# ----------------------------------------------------------------------------- thresholds and verdicts

def test_lot_band_by_hand():
    scores = np.exp(np.arange(1.0, 11.0))  # log scores 1..10
    rule = LotRule(anchor=0.5, base=0.2, c=2.0, band=0.5)
    lo, mid, hi, spread = lot_band(scores, rule)
    qa, qb = 5.5, 2.8  # numpy's linear quantiles of 1..10 at 0.5 and 0.2
    assert spread == pytest.approx(qa - qb)
    assert math.log(lo) == pytest.approx(qa + 1.5 * spread) and math.log(mid) == pytest.approx(qa + 2.0 * spread)
    assert math.log(hi) == pytest.approx(qa + 2.5 * spread)
    # a ratio: the same lot at another score level gets thresholds at the same level
    lo2, *_ = lot_band(scores * 7.0, rule)
    assert lo2 == pytest.approx(7.0 * lo)
    with pytest.raises(ValueError, match="0 < base < anchor < 1"):
        LotRule(anchor=0.2, base=0.5)
    with pytest.raises(ValueError, match="at least 2"):
        lot_band([1.0], rule)


def test_fit_lot_fits_pixels_on_good_maps_and_warns():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.uniform(1.0, 1.2, 30), [5.0, 6.0]]
    maps = [np.full((4, 4), s, dtype=np.float32) for s in scores]
    asked = []

    def load(keep):
        asked.append(list(keep))
        return (maps[i] for i in keep)

    rule = LotRule()
    alone = np.r_[np.full(14, 1.0), np.full(18, 2.0)]  # against the references alone: 18 of 32 above 1.05
    v = fit_lot(scores, load, rule, pixel_fpr=0.05, reference_scores=[1.1, 9.0], reference_threshold=1.05,
                single_scores=alone)
    assert v.source == "lot" and v.verdict(6.0) == "defect" and v.verdict(1.0) == "ok"
    assert 30 not in asked[0] and 31 not in asked[0]  # the defects' maps are not good maps
    good = np.concatenate([maps[i].ravel() for i in asked[0]])
    assert v.pixel == pytest.approx(np.quantile(good, 0.95, method="higher"))
    assert v.colour == colour_range(float(np.median(good)), v.ok_at_most)
    assert any("1 of 2 reference(s) score above" in w for w in v.warnings)
    assert v.stats["share_above_reference_threshold"] == pytest.approx(18 / 32)
    assert any("56 % of the lot scores above the threshold the references alone give (1.05)" in w
               and "--lot off" in w for w in v.warnings)
    # the share is judged on the references-only scores, the threshold's own scale, not on the lot's
    quiet = fit_lot(scores, lambda keep: (maps[i] for i in keep), rule, 0.05, [1.1], reference_threshold=1.05,
                    single_scores=np.r_[np.full(17, 1.0), np.full(15, 2.0)])  # less than half above
    assert quiet.stats["share_above_reference_threshold"] == 15 / 32 and quiet.warnings == []
    half = fit_lot(scores, lambda keep: (maps[i] for i in keep), rule, 0.05, [1.1], reference_threshold=1.05,
                   single_scores=np.r_[np.full(16, 1.0), np.full(16, 2.0)])  # half: warned
    assert any("50 % of the lot" in w for w in half.warnings)
    unjudged = fit_lot(scores, lambda keep: (maps[i] for i in keep), rule, 0.05, [1.1], reference_threshold=1.05)
    assert unjudged.warnings == [] and unjudged.stats["share_above_reference_threshold"] is None
    with pytest.raises(ValueError, match="single_scores has 3 values for a lot of 32"):
        fit_lot(scores, load, rule, 0.05, reference_threshold=1.05, single_scores=[1.0, 2.0, 3.0])
    small = fit_lot(scores[:12], lambda keep: (maps[i] for i in keep), rule, 0.05)
    assert any("small for its own statistics" in w for w in small.warnings)
    assert good_sample(np.arange(10.0), 4.5, at_most=3) == [0, 2, 4]  # spread over the good ones


def test_a_mostly_defective_lot_falls_back_to_the_references_with_two_or_more():
    scores = np.linspace(1.0, 2.0, 20)
    maps = [np.full((4, 4), s, dtype=np.float32) for s in scores]

    def fitted(n_above):
        alone = np.r_[np.full(20 - n_above, 1.0), np.full(n_above, 2.0)]
        return fit_lot(scores, lambda keep: (maps[i] for i in keep), LotRule(), 0.05, [1.1],
                       reference_threshold=1.5, single_scores=alone)

    on, warn = DecisionSettings(), DecisionSettings(mostly_defective="warn")
    assert FALLBACK_ABOVE == 0.6
    twelve, eleven = fitted(12), fitted(11)  # 60 % and 55 % above the references-only threshold
    assert falls_back(twelve, 2, on) and falls_back(twelve, 4, on)
    assert not falls_back(eleven, 4, on)  # warned (at least half) but not decided again
    assert any("55 % of the lot" in w for w in eleven.warnings)
    assert not falls_back(twelve, 1, on)  # one reference: its share is not trusted, a warning only
    assert not falls_back(twelve, 4, warn)
    assert not falls_back(twelve, 4, DecisionSettings(lot="on"))  # the lot's thresholds were asked for
    unjudged = fit_lot(scores, lambda keep: (maps[i] for i in keep), LotRule(), 0.05, [1.1])
    assert not falls_back(unjudged, 4, on)
    assert not falls_back(from_references(1.5, 1.0, 0.5, 0.03), 4, on)  # only a lot's own fit falls back
    assert fallback_warning(twelve, 3).startswith("60 % of the lot scores above the threshold the 3 references")
    with pytest.raises(ValueError, match="mostly_defective must be one of"):
        DecisionSettings(mostly_defective="ignore")


def test_verdicts_and_the_references_band():
    v = from_references(image=2.0, pixel=1.0, pixel_median=0.5, band=0.1)  # the band above the threshold
    assert (v.ok_at_most, v.image, v.defect_above) == pytest.approx((2.0, 2.2, 2.4))
    assert [v.verdict(s) for s in (2.0, 2.1, 2.4, 2.5)] == ["ok", "review", "review", "defect"]
    assert [v.without_band(s) for s in (2.1, 2.3)] == ["ok", "defect"]
    assert Verdicts.from_dict(v.to_dict()) == v
    lo, hi = colour_range(0.5, 2.0)
    assert lo == 0.5 and (2.0 - lo) / (hi - lo) == pytest.approx(0.75)  # the review threshold at 3/4 of the scale


# ----------------------------------------------------------------------------- regions and masks

def test_every_seeded_region_is_kept_each_cut_at_its_own_level():
    m = np.zeros((10, 20), dtype=np.float32)
    m[1:4, 1:4] = 2.0
    m[2, 2] = 4.0  # region A: peak 4, above the seed
    m[6:9, 10:14] = 1.5
    m[7, 11] = 3.0  # region B: peak 3, above the seed, small
    m[1:3, 15:19] = 1.5  # region C: above the floor, never above the seed
    found = defect_regions(m, seed=2.5, floor=1.0, mask_level=0.0)
    assert len(found.regions) == 2 and not found.mask[1:3, 15:19].any()  # C is not a defect
    assert found.mask[1:4, 1:4].all() and found.mask[6:9, 10:14].all()
    # at mask level 0.5 each region is cut at floor + 0.5 (its peak - floor): A at 2.5, B at 2.0
    cut = defect_regions(m, seed=2.5, floor=1.0, mask_level=0.5)
    assert cut.mask.sum() == 2 and cut.mask[2, 2] and cut.mask[7, 11]
    assert sorted(r.max_score for r in cut.regions) == [3.0, 4.0]
    assert len(defect_regions(m, seed=2.5, floor=1.0, min_area=2).regions) == 2  # 9 and 12 px
    assert defect_regions(m, seed=5.0, floor=1.0).mask.sum() == 0


def test_decide_keeps_the_region_a_defect_verdict_rests_on():
    v = from_references(image=0.9, pixel=0.5, pixel_median=0.1, band=0.1)  # ok <= 0.9, defect > 1.08
    settings = DecisionSettings(mask_level=0.0)
    m = np.zeros((8, 8), dtype=np.float32)
    m[2:5, 2:5] = 2.0
    out = decide(v, m, 2.0, (16, 16), settings)
    assert out.verdict == "defect" and out.full_map.shape == (16, 16) and out.found.regions
    ok = decide(v, m, 0.2, (16, 16), settings)
    assert ok.verdict == "ok" and not ok.found.regions and not ok.found.mask.any()
    listed = decide(v, m, 0.2, (16, 16), DecisionSettings(regions_for_ok=True))
    assert listed.found.regions
    # a map whose peak the resize lowers below the review threshold still shows the region
    peak = np.zeros((8, 8), dtype=np.float32)
    peak[4, 4] = 0.95
    low = decide(v, peak, 0.95, (3, 3), settings)
    assert low.verdict == "review" and low.found.regions


def test_border_pad_encodes_a_reflected_border_and_crops_it_away():
    import torch.nn.functional as F

    from models.backbone import build_backbone

    torch.manual_seed(0)
    plain = build_backbone("timm:tf_efficientnet_lite0", pretrained=None, image_size=64, precision="fp32")
    padded = build_backbone("timm:tf_efficientnet_lite0", pretrained=None, image_size=64, precision="fp32",
                            border_pad=16)
    padded.net.load_state_dict(plain.net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    got = padded(x, with_embedding=False)
    big = plain(F.pad(x, (16, 16, 16, 16), mode="reflect"), with_embedding=False)  # 12 x 12 cells
    assert got.grid == (8, 8)
    for g, b in zip(got.tokens, big.tokens):
        want = b.reshape(2, 12, 12, -1)[:, 2:10, 2:10].reshape(2, 64, -1)
        torch.testing.assert_close(g, want)
    assert padded.config()["border_pad"] == 16 and plain.config()["border_pad"] == 0
    rounded = build_backbone("timm:tf_efficientnet_lite0", pretrained=None, image_size=64, border_pad=12)
    assert rounded.config()["border_pad"] == 16  # whole patches of border (stride 8)
    with pytest.raises(ValueError, match="border_pad must be >= 0"):
        build_backbone("timm:tf_efficientnet_lite0", pretrained=None, image_size=64, border_pad=-8)


def test_known_defects_pull_the_review_threshold_down_to_a_floor():
    from models.decision import with_known_defects

    v = from_references(image=1.8, pixel=1.0, pixel_median=0.5, band=0.1)  # ok <= 1.8, defect > 2.16
    assert with_known_defects(v, [], floor=1.0) is v
    same = with_known_defects(v, [1.9, 3.0], floor=1.0)  # every known defect already flagged
    assert same.ok_at_most == v.ok_at_most and same.stats["known_defect_scores"] == [1.9, 3.0]
    moved = with_known_defects(v, [1.5, 3.0], floor=1.0)
    assert moved.ok_at_most == pytest.approx(1.5 * 0.97) and moved.verdict(1.5) != "ok"
    assert moved.defect_above / moved.ok_at_most == pytest.approx(1.2)  # the band keeps its ratio
    floored = with_known_defects(v, [0.5], floor=1.0)
    assert floored.ok_at_most == 1.0 and floored.verdict(0.5) == "ok"
    stuck = with_known_defects(v, [0.5], floor=1.9)  # the floor lies above the threshold: nothing moves, a warning
    assert stuck.ok_at_most == v.ok_at_most and any("may pass as ok" in w for w in stuck.warnings)


def test_test_few_shot_scores_a_class_as_a_lot(syn_datasets, tmp_path):
    """test_few_shot.py --lot on: each class's test split scored as one lot (other figures than image
    by image); the mode refused where it cannot apply."""
    import json

    import test_few_shot

    base = ["--data_path", str(syn_datasets["mvtec"]), "--dataset", "mvtec", "--mode", "fd", "--model",
            "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112", "--features_list", "1", "2", "3", "4",
            "--no-resume"]
    test_few_shot.main([*base, "--save_path", str(tmp_path / "single")])
    test_few_shot.main([*base, "--save_path", str(tmp_path / "lot"), "--lot", "on", "--batch_size", "2"])
    single = json.loads((tmp_path / "single" / "results.json").read_text())["per_class"]
    lot = json.loads((tmp_path / "lot" / "results.json").read_text())["per_class"]
    assert single.keys() == lot.keys() and single != lot  # another scoring, the same classes
    assert all(0.0 <= m["pixel_auroc"] <= 1.0 for m in lot.values())
    with pytest.raises(SystemExit):
        test_few_shot.parse_args([*base, "--save_path", "x", "--lot", "on", "--winmode", "mul"])
