"""Inspect your own images: k good references of a part and a lot of images to inspect -> a verdict
(ok / review / defect), a mask and the defect regions of every image, and report.html.

    python predict.py --refs good/ --images "line3/*.png" --out results/
    python predict.py --refs good/ --images new/ --out results/ --checkpoint_path checkpoints/parts/epoch_3.pth
    python predict.py --refs good/ --images new/ --out r1/ --save_refs part_a.pt   # once
    python predict.py --load_refs part_a.pt --images new/ --out r2/                  # per lot

The lot is evidence (models/lot.py, models/decision.py): with at least --min_lot images, each image
is compared with the references *and* a bounded pool of other images of the lot, and the thresholds
come from the lot's own scores (most parts of a lot are good); a smaller lot, or --lot off, scores
each image against the references alone and sets the thresholds on them. Images whose evidence is
ambiguous go to ``review``. The pool is chosen by the images' content, so the results do not
depend on the order of the images or on how torchrun splits them.

Inputs (--refs, --images): folders (every image below them, sorted), glob patterns (quoted), .txt
lists of paths or files, in any mix; any size, RGB or grey, 8 or 16 bit. Every image is read
before any work starts; one that cannot be read is reported and left out (the exit status is then 1).

Outputs in --out, per image (NAME: its path below the deepest folder holding every input, folders
joined by "__"): NAME_overlay.png (heat map on one colour scale for the whole lot, white outline
around the defect mask), NAME_mask.png (0/255, original size) and maps/NAME.npy (its score map);
for the run predictions.csv / .json (verdicts, scores, regions, thresholds, settings), settings.json
(every setting, readable by --config), thresholds.json, report.html (review images first, the
lot's score histogram, image | overlay | mask) and predict.log. An --out used before is cleared of
the earlier run's files first. --redecide OLD_OUT decides a scored lot again from its saved maps
with new decision flags, without scoring it again.

Advanced flags (backbone, scoring, the measured decision constants): --help_advanced.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import logging.handlers
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.images import ImageReadError, image_to_tensor, image_to_unit_tensor, list_images, load_image
from models import build_fasl_from_args
from models.decision import (DecisionSettings, Verdicts, decide, fallback_warning, falls_back, fit_lot,
                             fit_references, lot_floor, reference_verdicts, with_known_defects)
from models.fasl import FASL, InferenceConfig, mode_uses_heads, resolved_search_dtype
from models.flags import (PREDICT_BACKBONE, add_backbone_args, add_decision_args, add_inference_args,
                          add_post_args, add_retired_flag, check_model_flags, check_post_flags, decision_settings_from_args,
                          hide_advanced, map_post_from_args, read_config)
from models.lot import LotScorer, content_key, pool_members
from models.postprocess import MapPost
from models.references import SavedReferences
from models.thresholds import Thresholds, reference_images
from utils.cli import InputFileNotFoundError, InputValueError, run_cli
from utils.distributed import Dist, broadcast_from_main, gather_to_main, init_distributed, shard, shutdown
from utils.misc import check_output_folder, fatal_errors_logged, get_logger, resolve_device, seed_everything, write_json
from utils.report import write_report
from utils.visualize import heatmap_overlay, mask_outline, normalize_map, save_png

HELP = """Inspect a lot: k good references of a part -> per image a verdict (ok / review / defect), a mask
and the defect regions, and report.html (docs/predict.md says what is measured and written).

  python predict.py --refs good/ --images "line3/*.png" --out results/
  python predict.py --refs good/ --images new/ --out r1/ --save_refs part_a.pt   # once
  python predict.py --load_refs part_a.pt --images new/ --out r2/                  # per lot"""
PREDICTIONS_FORMAT = "fasl-predictions-v2"
# predict.py's map post-processing, measured on five real classes (docs/predict.md): a smoothed map's
# top-1 % mean scores images best
DEFAULT_POST = MapPost(smooth_sigma=4.0, image_score="top", top_fraction=0.01)
CSV_FIELDS = ("path", "name", "read_status", "score", "verdict", "verdict_without_band", "n_regions", "defect_area",
              "width", "height", "overlay", "mask", "map", "error", "known_match", "like_known_defect")
RUN_FILES = ("predictions.csv", "predictions.json", "settings.json", "thresholds.json", "report.html",
             "report_histogram.png", "report_colourbar.png", "predict.log")


def build_parser(show_advanced: bool = False) -> argparse.ArgumentParser:
    from models.flags import BATCH_SIZE, SEED

    p = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--refs", nargs="+", default=None, metavar="PATH", help="the k good images: folders, glob patterns, .txt lists, files")
    p.add_argument("--images", nargs="+", default=None, metavar="PATH", help="the lot to inspect: folders, glob patterns, .txt lists, files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (an earlier run's files in it are replaced)")
    p.add_argument("--checkpoint_path", default=None, metavar="FILE", help="trained ASL heads (train.py): FD + heads instead of FD")
    add_retired_flag(p, "--checkpoint", "is now --checkpoint_path")
    advanced = p.add_argument_group("advanced (backbone, scoring, the decision constants; defaults measured)")
    add_backbone_args(p, advanced=advanced, model_default=PREDICT_BACKBONE["model"])
    p.set_defaults(border_pad=PREDICT_BACKBONE["border_pad"])
    add_inference_args(p, mode_default=None, group=advanced,
                       mode_help="'fd': the training-free 1 - similarity map; 'merged': FD + the trained heads; "
                                 "'fasl': the heads alone (default: merged with --checkpoint_path, fd otherwise)")
    g = add_decision_args(p, advanced)
    g.add_argument("--image_threshold", type=float, default=None, metavar="T", help="image threshold by hand (band: --ref_band)")
    g.add_argument("--pixel_threshold", type=float, default=None, metavar="T", help="pixel threshold by hand")
    g.add_argument("--defect_refs", nargs="+", default=None, metavar="PATH",
                   help="a few images of known bad parts: the review threshold is kept below their scores")
    g.add_argument("--save_refs", default=None, metavar="FILE", help="store the references' memory and thresholds in this file")
    g.add_argument("--load_refs", default=None, metavar="FILE", help="reuse a --save_refs file instead of --refs")
    g.add_argument("--redecide", default=None, metavar="OLD_OUT",
                   help="decide OLD_OUT's lot again from its saved maps with these decision flags (no scoring)")
    g.add_argument("--config", default=None, metavar="FILE", help="a settings.json of an earlier run: its settings as defaults")
    add_post_args(advanced, DEFAULT_POST)
    advanced.add_argument("--map_size", type=int, default=None,
                          help="side of the square score map before it is resized to each image (default: "
                               "--image_size)")
    advanced.add_argument("--batch_size", type=int, default=BATCH_SIZE,
                          help="images per forward pass (default: %(default)s)")
    advanced.add_argument("--seed", type=int, default=SEED,
                          help="seed of random backbone weights (tests) (default: %(default)s)")
    if not show_advanced:
        hide_advanced(p, advanced)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser(show_advanced="--help_advanced" in argv)
    if "--help_advanced" in argv:
        p.print_help()
        p.exit()
    read_config(p, argv)
    args = p.parse_args(argv)
    if args.redecide:
        if args.refs or args.images or args.load_refs or args.defect_refs:
            p.error("--redecide decides saved maps again: give no --refs, --images, --load_refs or --defect_refs "
                    "with it (the known defects' scores are in the old run's predictions.json)")
    else:
        if args.images is None:
            p.error("the following arguments are required: --images (or --redecide OLD_OUT)")
        if (args.refs is None) == (args.load_refs is None):
            p.error("give the references either as --refs PATHS or as --load_refs FILE (exactly one)")
    if args.mode is None:
        # measured on held-out real classes (docs/measurements.md): the heads alone lose to FD, merged reaches it
        args.mode = "merged" if args.checkpoint_path else "fd"
    if mode_uses_heads(args.mode) and not args.checkpoint_path:
        p.error(f"--mode {args.mode} needs --checkpoint_path (or use --mode fd, which needs no training)")
    if not mode_uses_heads(args.mode) and args.checkpoint_path:
        p.error("--checkpoint_path is only used by --mode fasl or merged; drop it or pass one of them")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    if args.map_size is not None and args.map_size < 1:
        p.error("--map_size must be >= 1")
    check_model_flags(p, args, windows=True)
    check_post_flags(p, args)
    try:
        settings = decision_settings_from_args(args)
    except ValueError as err:
        p.error(str(err))
    if args.lot == "on" and (args.mode != "fd" or args.winmode != "nan"):
        p.error(f"--lot on compares the training-free features of whole images: it needs --mode fd and --winmode nan "
                f"(got --mode {args.mode}, --winmode {args.winmode})")
    if args.load_refs and (args.augment_refs != DecisionSettings.augment_refs or
                           args.normal_sample != DecisionSettings.normal_sample):
        p.error("--augment_refs and --normal_sample shape the bank and the fit a --load_refs file already holds: "
                "rebuild the file with --refs to change them")
    args.settings = settings
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


def image_problem(size_hw: tuple[int, int], model: FASL) -> str | None:
    """Why an image of this (H, W) cannot be scored, or None: one smaller than the model's patch
    grid holds less than a pixel per patch, so its score would be made up by the resize."""
    bb = model.backbone
    side = bb.image_size // bb.patch_size
    if min(size_hw) < side:
        return (f"image of {size_hw[1]}x{size_hw[0]} px is smaller than the model's {side}x{side} patch grid "
                f"(at least {side} px a side is needed): unusable")
    return None


# ----------------------------------------------------------------------------- the run's folder

def clear_previous_run(out: Path) -> int:
    """Remove what an earlier predict.py run wrote into ``out`` (its per-image files, as its
    predictions.json lists them, its maps/ and the run files), so the folder holds only this run's
    results. Other files are left alone. Returns how many files were removed."""
    removed = 0
    listed = out / "predictions.json"
    if listed.is_file():
        try:
            doc = json.loads(listed.read_text(encoding="utf-8"))
            names = [rec.get(k) for rec in doc.get("images", []) for k in ("overlay", "mask", "map")]
        except (OSError, ValueError, AttributeError):
            names = []
        for name in filter(None, names):
            target = out / name
            if target.is_file() and target.resolve().parent.is_relative_to(out.resolve()):
                target.unlink()
                removed += 1
    for name in RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            removed += 1
    if (out / "maps").is_dir() and all(p.suffix == ".npy" for p in (out / "maps").iterdir()):
        removed += len(list((out / "maps").iterdir()))
        shutil.rmtree(out / "maps")
    return removed


class RunLog:
    """predict.log: records go to the console at once and to the file only once the inputs have
    passed every check and the folder is cleared (``start_file``), so a refused run leaves the folder
    as it was, and a reused folder gets a fresh log, not one appended to the earlier run's."""

    def __init__(self, name: str):
        self.log = get_logger(name)
        self._early = logging.handlers.MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 10)
        self.log.addHandler(self._early)

    def start_file(self, path: Path) -> None:
        get_logger(self.log.name, path)
        handler = next(h for h in self.log.handlers if isinstance(h, logging.FileHandler))
        self._early.setTarget(handler)
        self._early.flush()
        self.log.removeHandler(self._early)

    def close(self, path: Path) -> None:
        from utils.misc import close_log_file

        if self._early in self.log.handlers:
            self.log.removeHandler(self._early)
        close_log_file(self.log, path)


# ----------------------------------------------------------------------------- read

class Lot:
    """The inspected images: every file read once before any work (content key, problems).

    paths, names: per image; keys: the content digest of the readable ones (None for the others);
    errors: per image, why it cannot be used (None when it can).
    """

    def __init__(self, paths: list[Path], model: FASL, log):
        self.paths, self.names = paths, output_names(paths)
        self.keys: list[str | None] = []
        self.errors: list[str | None] = []
        for path in tqdm(paths, desc="reading", unit="img", dynamic_ncols=True, leave=False):
            try:
                img = load_image(path)
                problem = image_problem((img.height, img.width), model)
            except ImageReadError as err:
                img, problem = None, str(err)
            if problem is not None:
                log.error("left out %s: %s", path, problem)
                self.keys.append(None)
                self.errors.append(problem)
                continue
            self.keys.append(content_key(Path(path).read_bytes()))
            self.errors.append(None)

    @property
    def usable(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e is None]


def usable_image(path: Path, model: FASL, what: str):
    """A reference or known-defect image, read and checked (one that cannot be used stops the run:
    every one is needed) -> the PIL image."""
    try:
        img = load_image(path)
    except ImageReadError as err:
        raise ImageReadError(f"{what} image unusable ({err}); every one is needed") from err
    problem = image_problem((img.height, img.width), model)
    if problem is not None:
        raise InputValueError(f"{what} image {path} unusable: {problem}")
    return img


def read_tensor(path: Path, model: FASL) -> torch.Tensor:
    bb = model.backbone
    return image_to_tensor(load_image(path), bb.image_size, bb.mean, bb.std)


def prepare_references(args, model: FASL, cfg: InferenceConfig, post: MapPost, log, d: Dist):
    """The references' memory, how many bank entries each has, and their references-only thresholds:
    from --load_refs, or built from --refs and fitted on them (unless both thresholds are given by
    hand); overrides applied; saved to --save_refs when asked -> (SavedReferences, copies)."""
    s: DecisionSettings = args.settings
    both_given = args.image_threshold is not None and args.pixel_threshold is not None
    if args.load_refs:
        refs = SavedReferences.load(args.load_refs, model, cfg, s.fpr, check_scoring=not both_given, post=post,
                                    margin=s.margin)
        copies = refs.bank.k // max(1, len(refs.refs))
        log.info("loaded %d reference(s)' memory and thresholds from %s", len(refs.refs), args.load_refs)
    else:
        paths = list_images(args.refs, "--refs")
        raw = [image_to_unit_tensor(usable_image(path, model, "reference"), model.backbone.image_size) for path in paths]
        bb = model.backbone
        ref = reference_images(torch.stack(raw), bb.mean, bb.std, bb.patch_size, s.augment_refs, s.normal_sample)
        bank = model.build_memory(ref.bank, model.windows_for(cfg), window_batch=cfg.window_batch)
        copies = ref.copies
        if both_given:
            thresholds = Thresholds.by_hand(args.image_threshold, args.pixel_threshold)
        else:
            thresholds = fit_references(model, cfg, post, ref, bank, s)
            log.info("references' normal image scores (%s): %s", thresholds.method,
                     ", ".join(f"{x:.4f}" for x in thresholds.fit.image_scores))
        refs = SavedReferences(bank, thresholds, [str(p) for p in paths])
    refs.thresholds = refs.thresholds.with_overrides(args.image_threshold, args.pixel_threshold)
    refs.thresholds = broadcast_from_main(refs.thresholds, d)  # every process decides with rank 0's numbers
    if args.save_refs and d.is_main:
        refs.save(args.save_refs, model, cfg, post=post)
        log.info("saved the references' memory and thresholds to %s", args.save_refs)
    return refs, copies


# ----------------------------------------------------------------------------- score and decide

def read_defect_refs(args, model: FASL) -> list[Path]:
    """The --defect_refs images, each checked readable and large enough (an error names the file)."""
    if not args.defect_refs:
        return []
    paths = list_images(args.defect_refs, "--defect_refs")
    for path in paths:
        usable_image(path, model, "--defect_refs")
    return paths


@dataclass
class LotScores:
    """What scoring a lot gives (``score_lot``), by image index: scores; alone: each image's score
    against the references alone (lot-aware only: what --lot off would give, for the
    mostly-defective warning); matches: ``Prediction.known_match`` (with --defect_refs only);
    ref_scores: the references scored as lot images (lot-aware only); lot_aware; known: the known
    defects' scores; verdicts: fitted on them (``score_and_fit``)."""

    scores: dict[int, float] = field(default_factory=dict)
    alone: dict[int, float] = field(default_factory=dict)
    matches: dict[int, float] = field(default_factory=dict)
    ref_scores: list[float] = field(default_factory=list)
    lot_aware: bool = False
    known: list[float] = field(default_factory=list)
    verdicts: Verdicts | None = None


def score_lot(args, model: FASL, cfg: InferenceConfig, post: MapPost, refs: SavedReferences, copies: int, lot: Lot,
              out: Path, log, d: Dist, defect_refs: list[Path] = ()) -> LotScores:
    """Score every usable image (this process's share), saving its map under maps/ (``LotScores``)."""
    s: DecisionSettings = args.settings
    usable = lot.usable
    lot_aware = s.lot_aware(len(usable)) and cfg.mode == "fd" and cfg.winmode == "nan"
    if s.lot == "auto" and s.lot_aware(len(usable)) and not lot_aware:
        log.info("--lot auto: lot-aware scoring needs --mode fd and --winmode nan; each image is scored on its own")
    scorer = LotScorer(model, cfg, post, s.scoring if lot_aware else None)
    members: dict[int, int] = {}
    pool = None
    if lot_aware:
        chosen, members = pool_members(usable, [lot.keys[i] for i in usable], s.scoring.pool_size)
        pool = torch.stack([read_tensor(lot.paths[i], model) for i in chosen])
        log.info("lot-aware: %d images, each compared with %d of them (a pool chosen by content) and the %d "
                 "reference(s)", len(usable), min(s.scoring.pool_size, len(chosen) - 1), len(refs.refs))
    scorer.fit(bank=refs.bank, copies=copies, pool=pool)
    known = model.encode(torch.stack([read_tensor(p, model) for p in defect_refs]), cfg) if defect_refs else None
    if known is not None:
        scorer.set_known(known)  # read and encoded once: their defect patches here, their scores below
    mine = [usable[i] for i in shard(usable, d, args.batch_size)]
    res = LotScores(lot_aware=lot_aware)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(mine), desc="scoring", unit="img", dynamic_ncols=True)
    for start in range(0, len(mine), args.batch_size):
        batch = mine[start:start + args.batch_size]
        pred = scorer.score(torch.stack([read_tensor(lot.paths[i], model) for i in batch]),
                            [members.get(i) for i in batch])
        singles = pred.single_score.tolist() if pred.single_score is not None else [None] * len(batch)
        matches = pred.known_match.tolist() if pred.known_match is not None else [None] * len(batch)
        for i, score_map, score, single, match in zip(batch, pred.score_map.float().cpu().numpy(),
                                                      pred.image_score.tolist(), singles, matches):
            if not (math.isfinite(score) and np.isfinite(score_map).all()):
                lot.errors[i] = "the model returned a non-finite score"
                log.error("left out %s: %s", lot.paths[i], lot.errors[i])
                continue
            np.save(out / "maps" / f"{lot.names[i]}.npy", score_map.astype(np.float16))
            res.scores[i] = float(score)
            if single is not None:
                res.alone[i] = float(single)
            if match is not None:
                res.matches[i] = float(match)
        bar.update(len(batch))
    bar.close()
    if d.is_main:
        res.ref_scores = scorer.score_references().image_score.tolist() if lot_aware else []
        res.known = scorer.score_encoded(known).image_score.tolist() if known is not None else []
    return res


def load_map(out: Path, name: str) -> np.ndarray:
    return np.load(out / "maps" / f"{name}.npy").astype(np.float32)


def fit_verdicts(args, refs: SavedReferences, scores: dict[int, float], ref_scores: list[float], lot_aware: bool,
                 lot: Lot, maps_dir: Path, log, known: list[float] = (), alone: dict[int, float] | None = None
                 ) -> Verdicts:
    """The run's Verdicts: from the lot (lot-aware) or the references, moved by the known defects'
    scores (``known``), warnings logged; alone: each image's score against the references alone
    (the mostly-defective warning; None, as when deciding saved maps again: no such warning)."""
    s: DecisionSettings = args.settings
    t = refs.thresholds
    hand = args.image_threshold is not None or args.pixel_threshold is not None
    if lot_aware and not hand:
        order = sorted(scores)
        values = [scores[i] for i in order]
        singles = None
        if alone:
            if set(alone) == set(order):
                singles = [alone[i] for i in order]
            else:
                log.warning("no references-only score for %d image(s): the lot is not judged for being mostly "
                            "defective", len(set(order) - set(alone)))
        verdicts = fit_lot(values, lambda keep: (load_map(maps_dir, lot.names[order[j]]) for j in keep), s.rule,
                           s.fpr, ref_scores, t.image if t.fit is not None else None, singles)
        if known:
            verdicts = with_known_defects(verdicts, known, lot_floor(values, s.rule))
    else:
        warnings = []
        if s.lot == "auto" and len(lot.usable) < s.min_lot:
            warnings.append(f"a lot of {len(lot.usable)} image(s) is too small for its own statistics (at least "
                            f"{s.min_lot}): thresholds from the {len(refs.refs)} reference(s) alone")
        verdicts = reference_verdicts(t, s, warnings)
        if known and t.fit is not None and not hand:
            verdicts = with_known_defects(verdicts, known, t.fit.image_empirical)
    for w in verdicts.warnings:
        log.warning("%s", w)
    return verdicts


def decide_images(args, lot: Lot, scores: dict[int, float], verdicts: Verdicts, out: Path, maps_dir: Path,
                  d: Dist, alone: dict[int, float] | None = None, matches: dict[int, float] | None = None
                  ) -> list[dict]:
    """This process's records, overlays and masks; alone: each image's score against the references
    alone (lot-aware runs), kept in predictions.json for --redecide's warnings; matches: each
    image's ``Prediction.known_match`` (with --defect_refs)."""
    s: DecisionSettings = args.settings
    lo, hi = verdicts.colour
    records = []
    mine = [i for i in sorted(scores)][slice(*_share(len(scores), d))]
    for i in tqdm(mine, desc="deciding", unit="img", dynamic_ncols=True, leave=False):
        rgb = np.asarray(load_image(lot.paths[i]))
        H, W = rgb.shape[:2]
        outcome = decide(verdicts, load_map(maps_dir, lot.names[i]), scores[i], (H, W), s,
                         known_match=(matches or {}).get(i))
        name = lot.names[i]
        vis = heatmap_overlay(rgb, normalize_map(outcome.full_map, lo, hi), alpha=0.5)
        save_png(out / f"{name}_overlay.png", mask_outline(vis, outcome.found.mask, color=(255, 255, 255),
                                                          thickness=max(1, round(min(H, W) / 200))))
        save_png(out / f"{name}_mask.png", outcome.found.mask.astype(np.uint8) * 255)
        records.append({"index": i, "path": str(lot.paths[i]), "name": name, "read_status": "scored", "error": None,
                        "score": scores[i], "verdict": outcome.verdict,
                        "verdict_without_band": outcome.verdict_without_band,
                        "regions": [r.to_dict() for r in outcome.found.regions], "defect_area": outcome.found.area,
                        "width": W, "height": H, "overlay": f"{name}_overlay.png", "mask": f"{name}_mask.png",
                        "map": f"maps/{name}.npy", "score_alone": (alone or {}).get(i),
                        "known_match": (matches or {}).get(i), "like_known_defect": outcome.like_known})
    return records


def _share(n: int, d: Dist) -> tuple[int, int]:
    per = -(-n // d.world_size)
    return min(n, d.rank * per), min(n, (d.rank + 1) * per)


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


def settings_record(args) -> dict:
    """Every flag's value, as --config reads it back (the inputs and the output left out)."""
    skip = {"refs", "images", "out", "config", "redecide", "settings", "save_refs", "load_refs"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def write_outputs(args, out: Path, refs_record: dict, verdicts: Verdicts, records: list[dict], lot_aware: bool,
                  model_record: dict, log, fell_back: bool = False) -> int:
    """predictions.csv / .json, settings.json, thresholds.json, report.html; the console summary;
    fell_back: the lot looked mostly defective and was decided from the references alone.
    Returns the exit status (1 if any image could not be used)."""
    records = sorted(records, key=lambda r: r["index"])
    failed = [r for r in records if r["read_status"] != "scored"]
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_row(r) for r in records)
    settings = settings_record(args)
    write_json(out / "settings.json", settings)
    write_json(out / "thresholds.json", verdicts.to_dict())
    write_json(out / "predictions.json", {
        "format": PREDICTIONS_FORMAT, "verdicts": verdicts.to_dict(), "lot_aware": lot_aware, "fell_back": fell_back,
        "settings": settings, "decision": args.settings.to_dict(), "model": model_record, "references": refs_record,
        "images": records, "failed": [r["path"] for r in failed]})
    counts = {v: sum(r.get("verdict") == v for r in records) for v in ("defect", "review", "ok")}
    report = write_report(out, records, verdicts, {
        "references": refs_record.get("summary", ""),
        "model": model_record.get("summary", ""),
        "scoring": "lot-aware (each image against the references and a pool of the lot)" if lot_aware else
                   "each image against the references alone",
        "thresholds": {"lot": "fitted on the lot's own scores", "references": "fitted on the references alone",
                       "override": "given by hand"}.get(verdicts.source, verdicts.source),
    }, reference_scores=refs_record.get("scores_as_lot_images") or [])
    log.info("%d image(s): %d defect, %d review, %d ok, %d left out", len(records), counts["defect"], counts["review"],
             counts["ok"], len(failed))
    for verdict in ("defect", "review"):
        names = [Path(r["path"]).name for r in records if r.get("verdict") == verdict]
        if names:
            log.info("%s: %s", verdict, ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20
                                                                  else ""))
    log.info("report: %s", report)
    if failed:
        log.error("%d file(s) could not be used: %s", len(failed),
                  "; ".join(f"{r['path']}: {r['error']}" for r in failed))
        return 1
    return 0


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    """Run predict.py; returns the exit status (1 when some image could not be used)."""
    args = parse_args(argv)
    out = check_output_folder(args.out, "--out")  # before anything is built or written
    if args.redecide:
        return redecide(args, out)
    d, device = init_distributed(resolve_device(args.device))
    log_path = out / ("predict.log" if d.is_main else f"predict.rank{d.rank}.log")
    run_log = RunLog("fasl.predict")
    try:
        with fatal_errors_logged(run_log.log):
            return _run(args, out, run_log, log_path, d, device)
    finally:  # this run's log file only: a later run in the same process writes elsewhere
        run_log.close(log_path)
        shutdown(d)


def _run(args, out: Path, run_log: RunLog, log_path: Path, d: Dist, device: torch.device) -> int:
    """read -> references -> score -> fit -> decide -> write. Under torchrun every process fits the
    same references and pool and scores its share; rank 0 fits the thresholds and writes the files."""
    log = run_log.log
    seed_everything(args.seed)
    paths = list_images(args.images, "--images")
    model = build_fasl_from_args(args, device, checkpoint=args.checkpoint_path if mode_uses_heads(args.mode) else None)
    model.eval()
    cfg = InferenceConfig.from_args(args, out_size=args.map_size or model.backbone.image_size)
    post = map_post_from_args(args)
    lot = Lot(paths, model, log)
    if not lot.usable:
        raise ImageReadError(f"none of the {len(paths)} image(s) of --images can be read")
    if args.settings.lot == "on":
        args.settings.lot_aware(len(lot.usable))  # refuses a lot too small, before any work
    defect_refs = read_defect_refs(args, model)
    refs, copies = prepare_references(args, model, cfg, post, log, d)
    # every input has passed its checks: the folder is this run's from here on
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        removed = clear_previous_run(out)
        run_log.start_file(log_path)
        if removed:
            log.info("cleared %d file(s) of an earlier run from %s", removed, out)
    else:
        run_log.start_file(log_path)
    read_errors = list(lot.errors)
    res = score_and_fit(args, model, cfg, post, refs, copies, lot, out, log, d, defect_refs)
    fell_back = res.lot_aware and falls_back(res.verdicts, len(refs.refs), args.settings)
    if fell_back:
        why = fallback_warning(res.verdicts, len(refs.refs))
        log.warning("%s", why)
        args = argparse.Namespace(**{**vars(args), "settings": replace(args.settings, lot="off")})
        lot.errors = read_errors  # an image the lot-aware pass could not score gets its own chance
        res = score_and_fit(args, model, cfg, post, refs, copies, lot, out, log, d, defect_refs)
        res.verdicts.warnings.insert(0, why)
    verdicts = res.verdicts
    records = decide_images(args, lot, res.scores, verdicts, out, out, d, res.alone, res.matches)
    gathered = gather_to_main(records, d)
    if not d.is_main:
        return 0
    records = [r for part in gathered for r in part]
    records += [{"index": i, "path": str(lot.paths[i]), "name": lot.names[i], "read_status": "failed",
                 "error": lot.errors[i], "regions": []} for i in range(len(paths)) if lot.errors[i] is not None]
    bb = model.backbone
    model_record = {**model.config(), "mode": args.mode, "search_dtype": resolved_search_dtype(model, cfg),
                    "inference": asdict(cfg), "post": post.to_dict(),
                    "summary": f"{args.model} ({bb.pretrained or 'random weights'}), {bb.image_size} px, "
                               f"--mode {args.mode}"}
    refs_record = {"paths": refs.refs, "file": args.load_refs, "thresholds": refs.thresholds.to_dict(),
                   "scores_as_lot_images": res.ref_scores, "defect_refs": [str(p) for p in defect_refs],
                   "defect_ref_scores": res.known,
                   "summary": f"{len(refs.refs)} image(s)" + (f" from {args.load_refs}" if args.load_refs else "")}
    return write_outputs(args, out, refs_record, verdicts, records, res.lot_aware, model_record, log, fell_back)


def score_and_fit(args, model: FASL, cfg: InferenceConfig, post: MapPost, refs: SavedReferences, copies: int,
                  lot: Lot, out: Path, log, d: Dist, defect_refs: list[Path]) -> LotScores:
    """``score_lot`` on every process, the parts gathered and the Verdicts fitted on the main one
    -> its LotScores; scores, matches and verdicts are every process's, the rest the main one's."""
    res = score_lot(args, model, cfg, post, refs, copies, lot, out, log, d, defect_refs)
    errors = [(i, lot.errors[i]) for i in range(len(lot.paths)) if lot.errors[i]]
    gathered = gather_to_main((res.scores, res.alone, res.matches, errors), d)
    if d.is_main:
        for part_scores, part_alone, part_matches, part_errors in gathered:
            res.scores.update(part_scores)
            res.alone.update(part_alone)
            res.matches.update(part_matches)
            for i, e in part_errors:
                lot.errors[i] = e
        res.verdicts = fit_verdicts(args, refs, res.scores, res.ref_scores, res.lot_aware, lot, out, log, res.known,
                                    res.alone)
    res.verdicts = broadcast_from_main(res.verdicts, d)
    res.scores = broadcast_from_main(res.scores, d)
    res.alone = broadcast_from_main(res.alone, d)
    res.matches = broadcast_from_main(res.matches, d)
    lot.errors = broadcast_from_main(lot.errors, d)  # every process then agrees on the usable images
    return res


def redecide(args, out: Path) -> int:
    """--redecide OLD_OUT: the lot scored into OLD_OUT decided again with this run's decision flags,
    from its saved scores and maps; overlays, masks and files written to --out."""
    old = Path(args.redecide)
    try:
        doc = json.loads((old / "predictions.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputFileNotFoundError(f"--redecide {old}: no readable predictions.json of a predict.py run ({err})") from None
    if doc.get("format") != PREDICTIONS_FORMAT:
        raise InputValueError(f"--redecide {old}: predictions.json is not of format {PREDICTIONS_FORMAT} (rerun predict.py)")
    scored = [r for r in doc["images"] if r["read_status"] == "scored"]
    missing = [r["map"] for r in scored if not (old / r["map"]).is_file()]
    if missing:
        raise InputFileNotFoundError(f"--redecide {old}: {len(missing)} saved map(s) missing, e.g. {old / missing[0]}")
    run_log = RunLog("fasl.predict")
    log_path = out / "predict.log"
    log = run_log.log
    try:
        with fatal_errors_logged(log):
            lot = Lot.__new__(Lot)
            lot.paths = [Path(r["path"]) for r in doc["images"]]
            lot.names = [r["name"] for r in doc["images"]]
            lot.errors = [None if r["read_status"] == "scored" else r["error"] for r in doc["images"]]
            scores = {i: r["score"] for i, r in enumerate(doc["images"]) if r["read_status"] == "scored"}
            alone = {i: r["score_alone"] for i, r in enumerate(doc["images"])
                     if r["read_status"] == "scored" and r.get("score_alone") is not None}
            refs = SavedReferences(None, Thresholds.from_dict(doc["references"]["thresholds"]),
                                   doc["references"]["paths"])
            refs.thresholds = refs.thresholds.with_overrides(args.image_threshold, args.pixel_threshold)
            if out.resolve() != old.resolve():
                out.mkdir(parents=True, exist_ok=True)
                clear_previous_run(out)
            run_log.start_file(log_path)
            maps_dir = old
            verdicts = fit_verdicts(args, refs, scores, doc["references"].get("scores_as_lot_images", []),
                                    doc["lot_aware"], lot, maps_dir, log, doc["references"].get("defect_ref_scores", []),
                                    alone)
            fell_back = bool(doc.get("fell_back"))
            if fell_back:  # scored from the references alone: the reason (the run's first warning) stays
                verdicts.warnings.insert(0, doc["verdicts"]["warnings"][0])
            elif doc["lot_aware"] and falls_back(verdicts, len(refs.refs), args.settings):
                share = verdicts.stats["share_above_reference_threshold"]
                why = (f"{100 * share:.0f} % of the lot scores above the threshold the {len(refs.refs)} references "
                       f"alone give: it looks mostly defective, and predict.py would decide it from the references "
                       f"alone; --redecide does not score again, so the lot's thresholds are kept here (run "
                       f"predict.py on the images)")
                log.warning("%s", why)
                verdicts.warnings.insert(0, why)
            matches = {i: r["known_match"] for i, r in enumerate(doc["images"])
                       if r["read_status"] == "scored" and r.get("known_match") is not None}
            records = decide_images(args, lot, scores, verdicts, out, maps_dir, Dist(), alone, matches)
            for r in records:
                r["map"] = str((maps_dir / r["map"]).resolve()) if out.resolve() != old.resolve() else r["map"]
            records += [{"index": i, "path": str(lot.paths[i]), "name": lot.names[i], "read_status": "failed",
                         "error": lot.errors[i], "regions": []} for i in range(len(lot.paths)) if lot.errors[i]]
            log.info("decided again from the maps of %s", old)
            return write_outputs(args, out, doc["references"], verdicts, records, doc["lot_aware"], doc["model"], log,
                                 fell_back)
    finally:
        run_log.close(log_path)


if __name__ == "__main__":
    run_cli(main, "predict.py")
