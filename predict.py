"""Inspect your own images: k good references of a part -> a verdict and the defect regions of
every image, with thresholds set from the good images alone (no labelled defects needed).

    python predict.py --refs good/ --images "line3/*.png" --out results/ --mode fd
    python predict.py --refs good/ --images new/ --out results/ --checkpoint_path checkpoints/mvtec/fasl/seed111/epoch_5.pth
    python predict.py --refs good/ --images new/ --out r1/ --mode fd --save_refs part_a.pt   # once
    python predict.py --load_refs part_a.pt --images new/ --out r2/ --mode fd              # per batch

Inputs (--refs, --images): folders (every file below them with extension png, jpg, jpeg, bmp,
tif or tiff, any case, sorted), glob patterns (quoted; same extension filter), .txt lists of
paths, or explicit files, in any mix (data.images.list_images). Images of any size, RGB or grayscale; each is scored on its own (no normalisation
over the set) and every result is mapped back to its original resolution.

Under torchrun (``torchrun --nproc_per_node N predict.py ...``) every process fits the same
references and scores its own block of the images; rank 0 writes one predictions.csv / .json.

Outputs in --out, per image (NAME = the image's path below the deepest folder holding every input,
folders joined by "__", e.g. good__000): NAME_overlay.png (heat map, colour scale centred on the pixel
threshold, white outline around the defect mask) and NAME_mask.png (0/255, original size); for the
run: predictions.csv (one row per image), predictions.json (the same plus every region, the
thresholds and the settings), thresholds.json, predict.log and report.html (every image's overlay,
score, verdict and regions, sorted by score, the threshold marked; open it in any browser). A file
that cannot be read, or an image smaller than the model's patch grid, is reported and skipped; the
exit status is then 1.

Decisions (see models/thresholds.py, models/postprocess.py; measured in docs/predict.md): the map is
smoothed (--smooth_sigma) and an image scores the mean of its top 1 % (--image_score top). Every
reference and its 8 augmented views are scored against the other references (--normal_sample
loo+views; one reference: its views against itself). The image threshold at --fpr is max(mean +
z * std, empirical (1 - fpr) quantile) of those normal scores, z = Phi^-1(1 - fpr), x (1 + --margin);
the pixel threshold is the empirical (1 - fpr) quantile of their pooled pixel scores. An image is a
"defect" when its score exceeds the image threshold; its mask is the pixels above pixel threshold +
--mask_level x (peak - pixel threshold), in regions at least as large as the largest region above
the pixel threshold on any normal view (and always the one holding its peak). Verdict, regions and
mask agree: an "ok" image lists none and has an empty mask (--regions_for_ok lists them anyway).
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from data.images import ImageReadError, image_to_tensor, image_to_unit_tensor, list_images, load_image, normalize_tensor
from models import build_fasl_from_args
from models.fasl import FASL, InferenceConfig, mode_uses_heads, resolved_search_dtype
from models.flags import (add_advanced_scoring_args, add_backbone_args, add_hidden_alias, add_inference_args,
                          add_post_args, check_model_flags, check_post_flags, map_post_from_args)
from models.postprocess import MapPost
from models.references import SavedReferences
from models.thresholds import BANK_AUGMENTS, NORMAL_SAMPLES, Thresholds, augmented_views, bank_copies, score_references, view_kinds
from utils.cli import run_cli
from utils.distributed import Dist, broadcast_from_main, gather_to_main, init_distributed, shard, shutdown
from utils.misc import (check_output_folder, close_log_file, fatal_errors_logged, get_logger, resolve_device,
                        seed_everything, write_json)
from utils.regions import Regions, find_regions, resize_map
from utils.report import write_report
from utils.visualize import heatmap_overlay, mask_outline, normalize_map, save_png

PREDICTIONS_FORMAT = "fasl-predictions-v1"
# The decision defaults, measured on five real classes with ImageNet EfficientNet-Lite0 (docs/predict.md, Decisions on
# real parts: bench/decisions.py, mean over the classes of k = 1, 2, 4 x three reference seeds): a smoothed map's
# top-1 % mean scores images best (per-image AUROC), exhaustive alignment decides better than image_index, each
# reference's views against the others make the k >= 2 fit stable, and a single reference's views against itself
# need the threshold raised by a quarter (they look more alike than a new good part does).
DEFAULT_FPR = 0.05
DEFAULT_POST = MapPost(smooth_sigma=4.0, image_score="top", top_fraction=0.01)
SELF_VIEWS_MARGIN = 0.25
DEFAULT_AUGMENT = "none"
DEFAULT_NORMAL_SAMPLE = "loo+views"
DEFAULT_MASK_LEVEL = 0.4
CSV_FIELDS = ("path", "name", "read_status", "score", "verdict", "n_regions", "defect_area", "width", "height",
              "overlay", "mask", "error")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refs", nargs="+", default=None,
                   help="the k good images of the part: folder(s), glob pattern(s), .txt lists or files")
    p.add_argument("--images", nargs="+", required=True,
                   help="images to inspect: folder(s), glob pattern(s), .txt lists or files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint_path", default=None,
                   help="trained heads (epoch_N.pth), needed by --mode fasl and merged")
    add_hidden_alias(p, "--checkpoint", "checkpoint_path")
    add_backbone_args(p)
    add_inference_args(p, mode_default=None, align_default="exhaustive",
                       mode_help="'fasl': trained ASL heads (needs --checkpoint_path); 'fd': training-free 1 - "
                                 "similarity map; 'merged': the two summed (needs --checkpoint_path) (default: "
                                 "merged when --checkpoint_path is given, fd otherwise: the modes that did best on "
                                 "held-out real classes, see README)", advanced=False)
    p.add_argument("--seed", type=int, default=111, help="seed (random backbone weights only) (default: %(default)s)")
    g = p.add_argument_group("decision")
    g.add_argument("--fpr", type=float, default=None,
                   help=f"false-alarm rate the thresholds are set at, on the good images (default: {DEFAULT_FPR})")
    add_post_args(g, DEFAULT_POST)
    g.add_argument("--normal_sample", choices=NORMAL_SAMPLES, default=DEFAULT_NORMAL_SAMPLE,
                   help="what the thresholds are fitted on when k >= 2: 'loo' (each reference scored against the "
                        "others), 'loo+views' (each reference and its 8 augmented views against the others); one "
                        "reference is always seen through its augmented views against itself (default: %(default)s)")
    g.add_argument("--augment_refs", choices=BANK_AUGMENTS, default=DEFAULT_AUGMENT,
                   help="also keep flipped / rotated copies of every reference in the memory, for parts that come "
                        "flipped or rotated: 'flips' (horizontal, vertical), 'rot90' (90, 180, 270 degrees), 'all' "
                        "(the 8 of them), 'none' (default: %(default)s)")
    g.add_argument("--margin", type=float, default=None,
                   help="raise the fitted image threshold by this share of itself (default: "
                        f"{SELF_VIEWS_MARGIN} with one reference, whose own views look more alike than a new good "
                        "part does; 0 with two or more)")
    g.add_argument("--image_threshold", type=float, default=None, help="override the fitted image threshold")
    g.add_argument("--pixel_threshold", type=float, default=None, help="override the fitted pixel threshold")
    g.add_argument("--min_region_area", type=int, default=None,
                   help="smallest defect region kept, in (original) pixels (default: as large as the largest region "
                        "above the pixel threshold on the references' normal views, as a share of the image)")
    g.add_argument("--mask_level", type=float, default=DEFAULT_MASK_LEVEL,
                   help="where a defect's mask ends, between the pixel threshold (0) and the image's own peak score "
                        "(1): pixels above pixel_threshold + LEVEL * (peak - pixel_threshold) form the regions, so a "
                        "strong defect is not drawn with its whole halo (default: %(default)s)")
    g.add_argument("--regions_for_ok", action="store_true",
                   help="also list the regions (and fill the mask) of images whose verdict is ok")
    g.add_argument("--map_size", type=int, default=None,
                   help="side of the square score map before it is resized to each image (default: --image_size)")
    g.add_argument("--batch_size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    g.add_argument("--save_refs", default=None, help="store the reference memory bank and thresholds in this file")
    g.add_argument("--load_refs", default=None, help="reuse a --save_refs file instead of --refs")
    add_advanced_scoring_args(p)  # last in --help
    args = p.parse_args(argv)

    if (args.refs is None) == (args.load_refs is None):
        p.error("give the references either as --refs PATHS or as --load_refs FILE (exactly one)")
    if args.mode is None:
        # measured on held-out real classes (docs/real-images.md): the heads alone lose to
        # FD, the heads merged with FD reach it
        args.mode = "merged" if args.checkpoint_path else "fd"
    if mode_uses_heads(args.mode) and not args.checkpoint_path:
        p.error(f"--mode {args.mode} needs --checkpoint_path (or use --mode fd, which needs no training)")
    if not mode_uses_heads(args.mode) and args.checkpoint_path:
        p.error("--checkpoint_path is only used by --mode fasl or merged; drop it or pass one of them")
    if args.fpr is not None and not 0.0 < args.fpr < 1.0:
        p.error(f"--fpr must lie strictly between 0 and 1, got {args.fpr}")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    check_model_flags(p, args, windows=True)
    check_post_flags(p, args)
    if args.load_refs and (args.augment_refs != DEFAULT_AUGMENT or args.normal_sample != DEFAULT_NORMAL_SAMPLE):
        p.error("--augment_refs and --normal_sample shape the bank and the fit a --load_refs file already holds: "
                "rebuild the file with --refs to change them")
    if args.margin is not None and not args.margin > -1.0:
        p.error(f"--margin must be > -1, got {args.margin}")
    if not 0.0 <= args.mask_level < 1.0:
        p.error(f"--mask_level must lie in [0, 1), got {args.mask_level}")
    if args.min_region_area is not None and args.min_region_area < 0:
        p.error("--min_region_area must be >= 0")
    if args.map_size is not None and args.map_size < 1:
        p.error("--map_size must be >= 1")
    return args


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per path, by one rule: the path relative to the deepest folder that
    holds every input, its folders joined by ``__`` and its extension dropped (``test/good/000.png``
    and ``test/crack/000.png`` -> ``good__000``, ``crack__000``; a flat folder gives the stems).
    Names are compared case-insensitively; what still repeats (``p.png`` and ``p.jpg``) gets a
    ``_2``, ``_3``, ... suffix."""
    if not paths:
        return []
    parts = [Path(p).absolute().parent.parts for p in paths]
    common = 0
    while all(len(q) > common and q[common] == parts[0][common] for q in parts):
        common += 1
    names, used = [], set()
    for path, folders in zip(paths, parts):
        base = "__".join([*folders[common:], Path(path).stem])
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name.lower())
        names.append(name)
    return names


# ----------------------------------------------------------------------------- load

class ReferenceImages(NamedTuple):
    """The references as the bank and the threshold fit need them (all normalised):
    originals (k, 3, S, S); bank (k * A, 3, S, S), A copies per reference (--augment_refs);
    views (V, 3, S, S), the single reference's augmented views when k = 1, else None."""

    originals: torch.Tensor
    bank: torch.Tensor
    copies: int
    views: torch.Tensor | None


def load_reference_tensors(paths: list[Path], model: FASL, augment: str = "none",
                           normal_sample: str = "loo") -> ReferenceImages:
    """Good images -> the references, their bank copies and their augmented views: (V, 3, S, S) of
    the single reference when k = 1, (k, V, 3, S, S) with ``normal_sample`` ``loo+views``, else None.

    Any unreadable reference is an error: the thresholds depend on all of them.
    """
    bb = model.backbone
    raw = []
    for path in paths:
        try:
            img = load_image(path)
        except ImageReadError as err:
            raise ImageReadError(f"reference image unusable ({err}); every reference is needed") from err
        problem = image_problem((img.height, img.width), model)
        if problem is not None:
            raise ValueError(f"reference image {path} unusable: {problem}")
        raw.append(image_to_unit_tensor(img, bb.image_size))  # [3, S, S] in [0, 1]
    raw = torch.stack(raw)  # [k, 3, S, S]
    copies = torch.cat([bank_copies(r, augment) for r in raw])  # [k*A, 3, S, S]
    views = None
    if len(paths) == 1 or normal_sample == "loo+views":
        kinds = view_kinds(augment)
        views = torch.stack([augmented_views(r, shift=max(1, bb.patch_size // 2))[kinds] for r in raw])
        views = normalize_tensor(views.flatten(0, 1), bb.mean, bb.std).reshape(views.shape)
        if len(paths) == 1:
            views = views[0]
    norm = lambda x: normalize_tensor(x, bb.mean, bb.std)  # noqa: E731
    return ReferenceImages(norm(raw), norm(copies), copies.shape[0] // raw.shape[0], views)


def prepare_references(args, model: FASL, cfg: InferenceConfig, log, d: Dist, post: MapPost) -> SavedReferences:
    """The bank and the thresholds: read from --load_refs, or built from --refs and fitted on them
    (unless both thresholds are given); overrides applied; saved to --save_refs when asked."""
    both_given = args.image_threshold is not None and args.pixel_threshold is not None
    if args.load_refs:
        refs = SavedReferences.load(args.load_refs, model, cfg, args.fpr, check_scoring=not both_given, post=post,
                                    margin=args.margin)
        log.info("loaded %d references' memory and thresholds from %s", len(refs.refs), args.load_refs)
    else:
        paths = list_images(args.refs, "--refs")
        ref = load_reference_tensors(paths, model, args.augment_refs, args.normal_sample)
        bank = model.build_memory(ref.bank, model.windows_for(cfg), window_batch=cfg.window_batch)
        if both_given:
            thresholds = Thresholds.by_hand(args.image_threshold, args.pixel_threshold)
        else:
            normal = score_references(model, ref.originals, bank, cfg, ref.views, post=post, copies=ref.copies)
            margin = args.margin if args.margin is not None else \
                (SELF_VIEWS_MARGIN if normal.method == "augmented-self" else 0.0)
            thresholds = Thresholds.fitted(normal, args.fpr or DEFAULT_FPR, margin)
            log.info("normal image scores (%s): %s", normal.method,
                     ", ".join(f"{s:.4f}" for s in thresholds.fit.image_scores))
        refs = SavedReferences(bank, thresholds, [str(p) for p in paths])
    refs.thresholds = refs.thresholds.with_overrides(args.image_threshold, args.pixel_threshold)
    refs.thresholds = broadcast_from_main(refs.thresholds, d)  # every process decides with rank 0's numbers
    if args.save_refs and d.is_main:
        refs.save(args.save_refs, model, cfg, post=post)
        log.info("saved the reference memory and thresholds to %s", args.save_refs)
    return refs


# ----------------------------------------------------------------------------- score

class Outcome(NamedTuple):
    """One image's decision: its score map at the image's own size (H, W), the verdict and the
    regions (with their mask; none for an ``ok`` image unless ``regions_for_ok``)."""

    full_map: np.ndarray
    verdict: str
    found: Regions


@dataclass
class Decision:
    """How a score map becomes a verdict and regions; shared by every image of the run."""

    thresholds: Thresholds
    min_region_area: int | None  # pixels, by hand; None: the thresholds' share of each image
    regions_for_ok: bool
    mask_level: float  # 0: regions above the pixel threshold; towards 1: towards the image's peak
    lo: float  # the overlay's colour scale: the pixel threshold sits mid-scale
    hi: float

    @classmethod
    def of(cls, args, thresholds: Thresholds) -> "Decision":
        lo = thresholds.fit.pixel_median if thresholds.fit is not None else 0.0
        lo = min(lo, thresholds.pixel)
        hi = max(2 * thresholds.pixel - lo, lo + 1e-6)
        return cls(thresholds, args.min_region_area, args.regions_for_ok, args.mask_level, lo, hi)

    def decide(self, score_map: np.ndarray, score: float, size_hw: tuple[int, int]) -> Outcome:
        """score_map: (h, w) at the map size; size_hw: the image's (H, W)."""
        H, W = size_hw
        full = resize_map(score_map, (H, W))
        verdict = "defect" if score > self.thresholds.image else "ok"
        min_area = self.min_region_area if self.min_region_area is not None else \
            self.thresholds.min_region_area(H, W)
        if verdict == "defect" or self.regions_for_ok:
            level = self.thresholds.pixel
            level += self.mask_level * max(0.0, float(full.max()) - level)
            found = find_regions(full, level, min_area, keep_peak=verdict == "defect")
        else:
            found = Regions(mask=np.zeros((H, W), dtype=bool), regions=[])
        return Outcome(full, verdict, found)

    def apply(self, rec: dict, rgb: np.ndarray, score_map: np.ndarray, score: float, out: Path) -> None:
        """Fill ``rec`` for one image and write its overlay and mask. rgb: (H, W, 3) uint8."""
        H, W = rgb.shape[:2]
        full, verdict, found = self.decide(score_map, score, (H, W))
        overlay, mask_name = f"{rec['name']}_overlay.png", f"{rec['name']}_mask.png"
        vis = heatmap_overlay(rgb, normalize_map(full, self.lo, self.hi), alpha=0.5)
        save_png(out / overlay, mask_outline(vis, found.mask, color=(255, 255, 255),
                                             thickness=max(1, round(min(H, W) / 200))))
        save_png(out / mask_name, found.mask.astype(np.uint8) * 255)
        rec.update(score=score, verdict=verdict, regions=[r.to_dict() for r in found.regions], defect_area=found.area,
                   width=W, height=H, overlay=overlay, mask=mask_name)


def image_problem(size_hw: tuple[int, int], model: FASL) -> str | None:
    """Why an image of this (H, W) cannot be scored, or None: one smaller than the model's patch
    grid holds less than a pixel per patch, so its score would be made up by the resize."""
    bb = model.backbone
    side = bb.image_size // bb.patch_size
    if min(size_hw) < side:
        return (f"image of {size_hw[1]}x{size_hw[0]} px is smaller than the model's {side}x{side} patch grid "
                f"(at least {side} px a side is needed): unusable")
    return None


def score_images(args, model: FASL, cfg: InferenceConfig, refs: SavedReferences, paths: list[Path],
                 names: list[str], out: Path, log, post: MapPost) -> list[dict]:
    """One record per image (read_status ``scored`` or ``failed``), with its overlay and mask
    written (``names``: the images' output names)."""
    decision = Decision.of(args, refs.thresholds)
    records: list[dict] = []
    bb = model.backbone
    bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True)

    def fail(rec: dict, why: str) -> None:
        rec.update(read_status="failed", error=why)
        log.error("skipped %s: %s", rec["path"], why)
        bar.update(1)

    for start in range(0, len(paths), args.batch_size):
        batch, loaded = [], []
        for path, name in zip(paths[start:start + args.batch_size], names[start:start + args.batch_size]):
            rec = {"path": str(path), "name": name, "read_status": "scored", "error": None, "regions": []}
            records.append(rec)
            try:
                img = load_image(path)
            except ImageReadError as err:
                fail(rec, str(err))
                continue
            problem = image_problem((img.height, img.width), model)
            if problem is not None:
                rec.update(width=img.width, height=img.height)
                fail(rec, problem)
                continue
            batch.append(image_to_tensor(img, bb.image_size, bb.mean, bb.std))
            loaded.append((rec, np.asarray(img)))
        if not batch:
            continue
        pred = post.apply(model.predict(torch.stack(batch), refs.bank, cfg))
        maps = pred.score_map.float().cpu().numpy()  # [B, M, M]
        scores = pred.image_score.float().cpu().numpy()  # [B]
        for (rec, rgb), score_map, score in zip(loaded, maps, scores):
            rec.update(width=rgb.shape[1], height=rgb.shape[0])
            if not (math.isfinite(float(score)) and np.isfinite(score_map).all()):
                fail(rec, "the model returned a non-finite score")
                continue
            bar.update(1)
            decision.apply(rec, rgb, score_map, float(score), out)
    bar.close()
    return records


# ----------------------------------------------------------------------------- write

def _csv_row(rec: dict) -> dict:
    row = {k: rec.get(k, "") for k in CSV_FIELDS}
    row["n_regions"] = len(rec["regions"]) if rec["read_status"] == "scored" else ""
    for k in CSV_FIELDS:
        if row[k] is None:
            row[k] = ""
        elif isinstance(row[k], float):
            row[k] = repr(row[k])  # exact round trip
    return row


def write_outputs(args, out: Path, model: FASL, cfg: InferenceConfig, refs: SavedReferences, records: list[dict],
                  log) -> int:
    """predictions.csv / .json and the run's summary; returns the exit status (1 if any image failed)."""
    failed = [r for r in records if r["read_status"] != "scored"]
    thresholds = refs.thresholds.to_dict()
    settings = {"args": vars(args), "inference": asdict(cfg), "post": map_post_from_args(args).to_dict(),
                "model": model.config(), "references": refs.refs,
                "search_dtype": resolved_search_dtype(model, cfg)}
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_row(r) for r in records)
    write_json(out / "predictions.json", {"format": PREDICTIONS_FORMAT, "thresholds": thresholds,
                                          "settings": settings, "images": records,
                                          "failed": [r["path"] for r in failed]})
    write_report(out, records, thresholds, {
        "references": f"{len(refs.refs)} image(s)" + (f" from {args.load_refs}" if args.load_refs else ""),
        "model": f"{args.model} ({args.pretrained}), {args.image_size} px, --mode {args.mode}, --winmode {args.winmode}",
        "decision": (f"--fpr {refs.thresholds.fpr}" if refs.thresholds.fpr is not None else "thresholds given by hand")
                    + f", --image_score {args.image_score}, --smooth_sigma {args.smooth_sigma}",
    })
    n_defect = sum(r.get("verdict") == "defect" for r in records)
    log.info("%d image(s): %d defect, %d ok, %d failed; results in %s", len(records), n_defect,
             len(records) - n_defect - len(failed), len(failed), out)
    if failed:
        log.error("%d file(s) could not be processed: %s", len(failed),
                  "; ".join(f"{r['path']}: {r['error']}" for r in failed))
        return 1
    return 0


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    """Run predict.py; returns the exit status (1 when some image could not be read)."""
    args = parse_args(argv)
    out = check_output_folder(args.out, "--out")  # before anything is built or written
    d, device = init_distributed(resolve_device(args.device))
    log_path = out / ("predict.log" if d.is_main else f"predict.rank{d.rank}.log")
    log = get_logger("fasl.predict", log_path)  # the file appears with its first record
    try:
        with fatal_errors_logged(log):
            return _run(args, out, log, d, device)
    finally:  # this run's log file only: a later run in the same process writes elsewhere
        close_log_file(log, log_path)
        shutdown(d)


def _run(args, out: Path, log, d: Dist, device: torch.device) -> int:
    """load -> fit -> score -> write. Under torchrun every process fits the same references and
    scores its own block of the images; rank 0 writes the run's files."""
    seed_everything(args.seed)
    paths = list_images(args.images, "--images")
    names = output_names(paths)
    model = build_fasl_from_args(args, device, checkpoint=args.checkpoint_path if mode_uses_heads(args.mode) else None)
    model.eval()
    cfg = InferenceConfig.from_args(args, out_size=args.map_size or args.image_size)
    post = map_post_from_args(args)
    refs = prepare_references(args, model, cfg, log, d, post)
    t = refs.thresholds
    out.mkdir(parents=True, exist_ok=True)  # the inputs have passed every check
    if d.is_main:
        write_json(out / "thresholds.json", t.to_dict())
    log.info("%s%d reference(s), %d image(s); image threshold %.4f (%s), pixel threshold %.4f (%s), smallest region "
             "%.3f%% of an image", d.tag, len(refs.refs), len(paths), t.image, t.image_source, t.pixel, t.pixel_source,
             100 * t.min_region_fraction)
    mine = shard(paths, d, args.batch_size)
    records = score_images(args, model, cfg, refs, [paths[i] for i in mine], [names[i] for i in mine], out, log,
                           post)
    if d.enabled:
        log.info("%sscored images %d-%d", d.tag, mine.start, mine.stop - 1)
    gathered = gather_to_main(records, d)
    if not d.is_main:
        return 0
    return write_outputs(args, out, model, cfg, refs, [r for part in gathered for r in part], log)


if __name__ == "__main__":
    run_cli(main, "predict.py")
