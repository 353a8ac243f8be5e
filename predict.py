"""Inspect your own images: k good references of a part -> a verdict and the defect regions of
every image, with thresholds set from the good images alone (no labelled defects needed).

    python predict.py --refs good/ --images "line3/*.png" --out results/ --mode fd
    python predict.py --refs good/ --images new/ --out results/ --checkpoint checkpoints/mvtec/fasl/seed111/epoch_5.pth
    python predict.py --refs good/ --images new/ --out r1/ --mode fd --save_refs part_a.pt   # once
    python predict.py --load_refs part_a.pt --images new/ --out r2/ --mode fd              # per batch

Inputs (--refs, --images): folders (their files with extension png, jpg, jpeg, bmp, tif or tiff,
any case, sorted, not recursive), glob patterns (quoted; same extension filter) or explicit files,
in any mix. Images of any size, RGB or grayscale; each is scored on its own (no normalisation
over the set) and every result is mapped back to its original resolution.

Outputs in --out, per image (NAME = file stem, made unique when two inputs share one):
NAME_overlay.png (heat map, colour scale centred on the pixel threshold, white outline around the
defect mask) and NAME_mask.png (0/255, original size); for the run: predictions.csv (one row per
image), predictions.json (the same plus every region, the thresholds and the settings),
thresholds.json and predict.log. A file that cannot be read is reported and skipped; the exit
status is then 1.

Thresholds (see models/thresholds.py): every reference is scored against the others
(leave-one-out; with one reference, 8 augmented copies of it against itself). The image threshold
at false-alarm rate --fpr is max(mean + z * std, empirical (1 - fpr) quantile) of those normal
image scores, z = Phi^-1(1 - fpr); the pixel threshold is the empirical (1 - fpr) quantile of
their pooled pixel scores. An image is a "defect" when its score exceeds the image threshold;
its defect regions are the connected pixels above the pixel threshold (the two are decided
separately, so an "ok" image may still show a few small regions, about fpr of a good image's
pixels, and a "defect" image may have none).
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import logging
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.images import ImageReadError, image_to_tensor, load_image, normalize_tensor, resize_image
from models import build_fasl_from_args
from models.fasl import FASL, CheckpointMismatch, InferenceConfig, mode_uses_heads, resolved_search_dtype
from models.memory import MemoryBank
from models.thresholds import augmented_views, fit_thresholds, score_references
from utils.args import add_backbone_args, add_inference_args
from utils.cli import run_cli
from utils.misc import atomic_torch_save, get_logger, resolve_device, seed_everything, write_json
from utils.regions import find_regions, resize_map
from utils.visualize import heatmap_overlay, mask_outline, normalize_map, save_png

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
REFS_FORMAT = "fasl-refs-v1"
PREDICTIONS_FORMAT = "fasl-predictions-v1"
DEFAULT_FPR = 0.01
CSV_FIELDS = ("path", "name", "status", "score", "verdict", "n_regions", "defect_area", "width", "height",
              "overlay", "mask", "error")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refs", nargs="+", default=None,
                   help="the k good images of the part: folder(s), glob pattern(s) or files")
    p.add_argument("--images", nargs="+", required=True,
                   help="images to inspect: folder(s), glob pattern(s) or files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", default=None, help="trained heads (epoch_N.pth), needed by --mode fasl")
    add_backbone_args(p)
    add_inference_args(p, mode_default=None, align_default="image_index")
    for action in p._actions:
        if action.dest == "mode":
            action.help = ("'fasl': trained ASL heads (needs --checkpoint); 'fd': training-free 1 - similarity "
                           "map (default: fasl when --checkpoint is given, fd otherwise)")
    p.add_argument("--seed", type=int, default=111, help="seed (random backbone weights only) (default: %(default)s)")
    g = p.add_argument_group("decision")
    g.add_argument("--fpr", type=float, default=None,
                   help=f"false-alarm rate the thresholds are set at, on the good images (default: {DEFAULT_FPR})")
    g.add_argument("--image_threshold", type=float, default=None, help="override the fitted image threshold")
    g.add_argument("--pixel_threshold", type=float, default=None, help="override the fitted pixel threshold")
    g.add_argument("--min_region_area", type=int, default=0,
                   help="drop defect regions smaller than this many (original) pixels from the regions and the "
                        "mask (default: %(default)s, keep all)")
    g.add_argument("--map_size", type=int, default=None,
                   help="side of the square score map before it is resized to each image (default: --image_size)")
    g.add_argument("--batch_size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    g.add_argument("--save_refs", default=None, help="store the reference memory bank and thresholds in this file")
    g.add_argument("--load_refs", default=None, help="reuse a --save_refs file instead of --refs")
    args = p.parse_args(argv)

    if (args.refs is None) == (args.load_refs is None):
        p.error("give the references either as --refs PATHS or as --load_refs FILE (exactly one)")
    if args.mode is None:
        args.mode = "fasl" if args.checkpoint else "fd"
    if mode_uses_heads(args.mode) and not args.checkpoint:
        p.error(f"--mode {args.mode} needs --checkpoint (or use --mode fd, which needs no training)")
    if not mode_uses_heads(args.mode) and args.checkpoint:
        p.error("--checkpoint is only used by --mode fasl or merged; drop it or pass one of them")
    if args.fpr is not None and not 0.0 < args.fpr < 1.0:
        p.error(f"--fpr must lie strictly between 0 and 1, got {args.fpr}")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    if args.min_region_area < 0:
        p.error("--min_region_area must be >= 0")
    if args.map_size is not None and args.map_size < 1:
        p.error("--map_size must be >= 1")
    return args


# ----------------------------------------------------------------------------- inputs

def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS


def collect_images(specs: list[str], flag: str) -> list[Path]:
    """Folders, glob patterns and files -> image paths in the given order, duplicates removed.

    An explicit file is taken as it is (reading it may still fail later); a folder or pattern
    that selects no image is an error naming it.
    """
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted((f for f in path.iterdir() if _is_image_file(f)), key=lambda f: f.name)
            what = f"folder {spec}"
        elif glob.has_magic(spec):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=True) if _is_image_file(Path(f)))
            what = f"pattern {spec!r}"
        else:
            found, what = [path], None
        if not found:
            raise FileNotFoundError(f"{flag}: {what} selects no image (extensions: {', '.join(IMAGE_EXTS)})")
        paths += found
    unique, seen = [], set()
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per path (compared case-insensitively): the file stem; stems that
    several inputs share get their folder's name in front (``good__000``, ``crack__000``), and
    whatever still repeats a ``_2``, ``_3``, ... suffix."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem.lower()] = counts.get(path.stem.lower(), 0) + 1
    names, used = [], set()
    for path in paths:
        base = path.stem if counts[path.stem.lower()] == 1 else f"{path.parent.name}__{path.stem}"
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name.lower())
        names.append(name)
    return names


def load_references(paths: list[Path], model: FASL) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Good images -> (k, 3, S, S) normalised and, when k = 1, its (8, 3, S, S) augmented views.

    Any unreadable reference is an error: the thresholds depend on all of them.
    """
    bb = model.backbone
    raw = []
    for path in paths:
        try:
            img = load_image(path)
        except ImageReadError as err:
            raise ImageReadError(f"reference image unusable ({err}); every reference is needed") from err
        arr = np.array(resize_image(img, bb.image_size))  # writable copy, (S, S, 3) uint8
        raw.append(torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0)
    raw = torch.stack(raw)  # [k, 3, S, S] in [0, 1]
    views = None
    if len(paths) == 1:
        views = normalize_tensor(augmented_views(raw[0], shift=max(1, bb.patch_size // 2)), bb.mean, bb.std)
    return normalize_tensor(raw, bb.mean, bb.std), views


# ----------------------------------------------------------------------------- reference files

def inference_config(args) -> InferenceConfig:
    return InferenceConfig.from_args(args, out_size=args.map_size or args.image_size)


def scoring_settings(cfg: InferenceConfig) -> dict:
    """The settings that change the scores, hence the thresholds (unused ones left out)."""
    s = {"mode": cfg.mode, "winmode": cfg.winmode, "align": cfg.align, "out_size": cfg.out_size}
    if cfg.uses_heads:
        s["use_nam"] = cfg.use_nam
    if cfg.uses_windows:
        s.update(win_size=cfg.win_size, win_stride=cfg.win_stride)
        if cfg.align == "position":
            s.update(win_radius=cfg.win_radius, win_topk=cfg.win_topk)
    if cfg.winmode == "mul":
        s["win_weight"] = cfg.win_weight
    return s


def heads_digest(model: FASL) -> str:
    """sha256 of the ASL heads' weights: thresholds fitted with other heads do not apply."""
    h = hashlib.sha256()
    for key, value in sorted(model.heads.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_refs(path, model: FASL, cfg: InferenceConfig, bank: MemoryBank, thresholds: dict, refs: list[str],
              pretrained) -> Path:
    """The memory bank as plain tensors + the thresholds and settings as primitives."""
    windows = bank.windows
    state = {
        "format": REFS_FORMAT,
        "config": model.config(),
        "pretrained": None if pretrained is None else str(pretrained),
        "inference": asdict(cfg),
        "scoring": scoring_settings(cfg),
        "heads_digest": heads_digest(model) if cfg.uses_heads else None,
        "thresholds": thresholds,
        "global_tokens": [t.cpu() for t in bank.global_memory.tokens],  # L x [k, N, W_l]
        "global_embedding": bank.global_memory.embedding.cpu(),  # [k, D]
        "window_tokens": [t.cpu() for t in bank.window_memory.tokens] if windows is not None else None,  # L x [k*nw, s*s, W_l]
        "window_embedding": bank.window_memory.embedding.cpu() if windows is not None else None,
        "window": {"size": windows.size, "stride": windows.stride} if windows is not None else None,
        "refs": [str(r) for r in refs],
    }
    return atomic_torch_save(state, path)


def load_refs(path, model: FASL, cfg: InferenceConfig, fpr: float | None, check_scoring: bool) -> dict:
    """Read a --save_refs file (weights_only) and rebuild its MemoryBank on the model's device.

    Refused, with the reason, when it was made for another backbone, image size or window
    layout; and, unless ``check_scoring`` is False (both thresholds given by hand), when its
    thresholds were fitted with other scoring settings, other heads or another --fpr.
    Returns the state with ``bank`` added.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--load_refs: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of every kind: the file is not ours or is damaged
        raise ValueError(f"--load_refs: cannot read {path} as a FASL references file: {err}") from err
    if not isinstance(state, dict) or state.get("format") != REFS_FORMAT:
        raise ValueError(f"--load_refs: {path} is not a FASL references file (format {REFS_FORMAT})")
    model.check_config(state["config"], source=f"references file {path}")
    mine = model.config()
    if state["config"].get("image_size") != mine["image_size"]:
        raise CheckpointMismatch(f"references file {path} was built at --image_size "
                                 f"{state['config'].get('image_size')}, this run uses {mine['image_size']}")
    want = {"size": cfg.win_size, "stride": cfg.win_stride} if cfg.uses_windows else None
    if state["window"] != want:
        have = "no windows (--winmode nan)" if state["window"] is None else \
            f"windows of size {state['window']['size']}, stride {state['window']['stride']}"
        asked = "no windows" if want is None else f"windows of size {cfg.win_size}, stride {cfg.win_stride}"
        raise ValueError(f"references file {path} holds {have}, but --winmode {cfg.winmode} "
                         f"--win_size/--win_stride ask for {asked}; use matching flags or rebuild it with --refs")
    if check_scoring:
        stored, now = state["scoring"], scoring_settings(cfg)
        diffs = [f"{k}: file {stored.get(k)!r}, now {now.get(k)!r}"
                 for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
        if cfg.uses_heads and not diffs and state.get("heads_digest") != heads_digest(model):
            diffs.append("the --checkpoint heads differ from those the thresholds were fitted with")
        stored_fpr = state["thresholds"].get("fpr")
        if fpr is not None and stored_fpr is not None and not math.isclose(fpr, stored_fpr):
            diffs.append(f"fpr: file {stored_fpr}, now {fpr}")
        if diffs:
            raise ValueError(f"the thresholds in {path} were fitted with other scoring settings ({'; '.join(diffs)}); "
                             f"use the same flags, rebuild with --refs, or give both --image_threshold and "
                             f"--pixel_threshold")
    now = None if model.backbone.pretrained is None else str(model.backbone.pretrained)
    if (state.get("pretrained") is None) != (now is None):
        raise CheckpointMismatch(f"{path} was built with --pretrained {state.get('pretrained')}, this run uses "
                                 f"{now}: random and pretrained features do not mix")
    if state.get("pretrained") != now:
        print(f"predict.py: warning: {path} was built with --pretrained {state.get('pretrained')}, "
              f"this run uses {model.backbone.pretrained}", file=sys.stderr)

    windows = model.windows_for(cfg)
    tokens = state["global_tokens"]
    bank = MemoryBank(k=tokens[0].shape[0], windows=windows)
    dev = model.device
    bank.global_memory.fill([t.to(dev) for t in tokens], state["global_embedding"].to(dev), dtype=model.bank_dtype)
    if windows is not None:
        wt = state["window_tokens"]
        if wt[0].shape[0] != bank.k * windows.num_windows:
            raise ValueError(f"references file {path}: window memory has {wt[0].shape[0]} entries, "
                             f"expected {bank.k} x {windows.num_windows}")
        bank.window_memory.fill([t.to(dev) for t in wt], state["window_embedding"].to(dev), dtype=model.bank_dtype)
    state["bank"] = bank
    return state


# ----------------------------------------------------------------------------- outputs

def _overlay(rgb: np.ndarray, full_map: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
    vis = heatmap_overlay(rgb, normalize_map(full_map, lo, hi), alpha=0.5)
    thickness = max(1, round(min(rgb.shape[:2]) / 200))
    return mask_outline(vis, mask, color=(255, 255, 255), thickness=thickness)


def _csv_row(rec: dict) -> dict:
    row = {k: rec.get(k, "") for k in CSV_FIELDS}
    row["n_regions"] = len(rec["regions"]) if rec["status"] == "ok" else ""
    for k in CSV_FIELDS:
        if row[k] is None:
            row[k] = ""
        elif isinstance(row[k], float):
            row[k] = repr(row[k])  # exact round trip
    return row


def write_csv(path: Path, records: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_row(r) for r in records)


# ----------------------------------------------------------------------------- main

def _thresholds(args, fit, method: str | None) -> dict:
    fitted = fit.to_dict() if fit is not None else None
    t = {
        "fpr": fit.fpr if fit is not None else args.fpr,
        "image": fit.image_threshold if fit is not None else None,
        "pixel": fit.pixel_threshold if fit is not None else None,
        "image_source": "fit" if fit is not None else None,
        "pixel_source": "fit" if fit is not None else None,
        "method": method,
        "fit": fitted,
    }
    return t


def _apply_overrides(t: dict, args) -> dict:
    t = dict(t)
    if args.image_threshold is not None:
        t["image"], t["image_source"] = float(args.image_threshold), "override"
    if args.pixel_threshold is not None:
        t["pixel"], t["pixel_source"] = float(args.pixel_threshold), "override"
    return t


def main(argv=None) -> int:
    """Run predict.py; returns the exit status (1 when some image could not be read)."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = get_logger("fasl.predict", out / "predict.log")
    try:
        return _run(args, out, log)
    finally:  # this run's log file only: a later run in the same process writes elsewhere
        log_path = os.path.abspath(out / "predict.log")
        for handler in list(log.handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == log_path:
                log.removeHandler(handler)
                handler.close()


def _run(args, out: Path, log) -> int:
    device = resolve_device(args.device)
    seed_everything(args.seed)

    images = collect_images(args.images, "--images")
    ref_paths = collect_images(args.refs, "--refs") if args.refs else None
    model = build_fasl_from_args(args, device, checkpoint=args.checkpoint if mode_uses_heads(args.mode) else None)
    model.eval()
    cfg = inference_config(args)
    both_given = args.image_threshold is not None and args.pixel_threshold is not None

    if args.load_refs:
        state = load_refs(args.load_refs, model, cfg, args.fpr, check_scoring=not both_given)
        bank, ref_names = state["bank"], state["refs"]
        thresholds = dict(state["thresholds"])
        for key in ("image_source", "pixel_source"):
            if thresholds.get(key) == "fit":
                thresholds[key] = f"fit (from {args.load_refs})"
        log.info("loaded %d references' memory and thresholds from %s", bank.k, args.load_refs)
    else:
        ref_names = [str(r) for r in ref_paths]
        refs, views = load_references(ref_paths, model)
        bank = model.build_memory(refs, model.windows_for(cfg), window_batch=cfg.window_batch)
        fit, method = None, None
        if not both_given:
            normal = score_references(model, refs, bank, cfg, views)
            fit, method = fit_thresholds(normal, args.fpr or DEFAULT_FPR), normal.method
            log.info("normal image scores (%s): %s", method, ", ".join(f"{s:.4f}" for s in fit.image_scores))
        thresholds = _thresholds(args, fit, method)
    thresholds = _apply_overrides(thresholds, args)
    if thresholds["image"] is None or thresholds["pixel"] is None:
        raise ValueError("no thresholds: the references file holds none; give --image_threshold and --pixel_threshold")
    if args.save_refs:
        save_refs(args.save_refs, model, cfg, bank, thresholds, ref_names, model.backbone.pretrained)
        log.info("saved the reference memory and thresholds to %s", args.save_refs)
    write_json(out / "thresholds.json", thresholds)
    log.info("%d reference(s), %d image(s); image threshold %.4f (%s), pixel threshold %.4f (%s)", bank.k,
             len(images), thresholds["image"], thresholds["image_source"], thresholds["pixel"],
             thresholds["pixel_source"])

    fit = thresholds.get("fit") or {}
    lo = float(fit.get("pixel_median", 0.0)) if fit else 0.0
    lo = min(lo, thresholds["pixel"])
    hi = max(2 * thresholds["pixel"] - lo, lo + 1e-6)  # the pixel threshold sits mid-scale
    names = output_names(images)
    records: list[dict] = []
    bb = model.backbone
    bar = tqdm(total=len(images), desc="predict", unit="img", dynamic_ncols=True)
    for start in range(0, len(images), args.batch_size):
        batch, loaded = [], []
        for path, name in zip(images[start:start + args.batch_size], names[start:start + args.batch_size]):
            rec = {"path": str(path), "name": name, "status": "ok", "error": None, "regions": []}
            records.append(rec)
            try:
                img = load_image(path)
            except ImageReadError as err:
                rec.update(status="error", error=str(err))
                log.error("skipped %s: %s", path, err)
                bar.update(1)
                continue
            batch.append(image_to_tensor(img, bb.image_size, bb.mean, bb.std))
            loaded.append((rec, np.asarray(img)))
        if not batch:
            continue
        pred = model.predict(torch.stack(batch), bank, cfg)
        maps = pred.score_map.float().cpu().numpy()  # [B, M, M]
        scores = pred.image_score.float().cpu().numpy()  # [B]
        for (rec, rgb), score_map, score in zip(loaded, maps, scores):
            H, W = rgb.shape[:2]
            rec.update(width=W, height=H)
            bar.update(1)
            score = float(score)
            if not (math.isfinite(score) and np.isfinite(score_map).all()):
                rec.update(status="error", error="the model returned a non-finite score")
                log.error("skipped %s: the model returned a non-finite score", rec["path"])
                continue
            full = resize_map(score_map, (H, W))
            found = find_regions(full, thresholds["pixel"], args.min_region_area)
            overlay, mask = f"{rec['name']}_overlay.png", f"{rec['name']}_mask.png"
            save_png(out / overlay, _overlay(rgb, full, found.mask, lo, hi))
            save_png(out / mask, found.mask.astype(np.uint8) * 255)
            rec.update(score=score, verdict="defect" if score > thresholds["image"] else "ok",
                       regions=[r.to_dict() for r in found.regions], defect_area=found.area,
                       overlay=overlay, mask=mask)
    bar.close()

    failed = [r for r in records if r["status"] != "ok"]
    settings = {"args": vars(args), "inference": asdict(cfg), "model": model.config(), "references": ref_names,
                "search_dtype": resolved_search_dtype(model, cfg)}
    write_csv(out / "predictions.csv", records)
    write_json(out / "predictions.json", {"format": PREDICTIONS_FORMAT, "thresholds": thresholds,
                                          "settings": settings, "images": records,
                                          "failed": [r["path"] for r in failed]})
    n_defect = sum(r.get("verdict") == "defect" for r in records)
    log.info("%d image(s): %d defect, %d ok, %d failed; results in %s", len(records), n_defect,
             len(records) - n_defect - len(failed), len(failed), out)
    if failed:
        print(f"predict.py: {len(failed)} file(s) could not be processed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['path']}: {r['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main, "predict.py")
