"""Every scoring mode, measured on real images with real features, heads trained without the test class.

For each test class c of a dataset in MVTec layout (two or more classes, with a meta.json), k in
--k and reference seed in --seeds, it scores c's test images with:

* ``fd``: the training-free FD map;
* the ASL heads (``asl``: without NAM, ``asl+nam``: with it) and the FD + ASL merge
  (``merged``), each trained **without c** by ``train.py``, from one of three sources:
  ``masks`` (the other classes' real defects and masks: the paper's cross-dataset protocol in
  miniature), ``synth_other`` (synthetic defects on the other classes' good images) and
  ``synth_own`` (synthetic defects on c's own good train images; no defect of c is ever seen),
  ``synth_all`` (synthetic defects on every class's good train images);
* each of these with the global map only (``nan``) and with LFE windows (``mul``).

Heads are trained once per (test class, source, NAM, training seed) and cached under --workdir
(a rerun with the same settings reuses them; ``--nam_runs shared`` trains one NAM run per source
and seed and scores it with and without its NAM); every training seed's heads are scored with every
reference seed. The encoded test images are cached under --workdir too, so a rerun or another k
encodes nothing. Every metric of every run is written to --out as JSON; summary tables (mean
over seeds and k, per class and overall; the difference to FD), the difference to FD as mean ±
sample standard deviation (ddof 1; 0 for one seed) over training seeds (per class, overall, per k) and a picture of it
(``delta_<winmode>.png``) are printed and written. ``--label`` names a run's training recipe and
``--combine`` tabulates several runs' results.json together.

    python bench/real_eval.py --data_root /tmp/real --weights ../shared/weights/tf_efficientnet_lite0.pth
    python bench/real_eval.py --combine out_a/results.json out_b/results.json --out both

The test images are encoded once per class and window setting, and every (k, seed, method) is
scored from those features (``FASL.encode`` / ``FASL.score``), so the whole table costs little
more than its training runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.dataset import load_test_images  # noqa: E402
from data.kshot import load_reference_images, sample_kshot  # noqa: E402
from data.meta import load_meta  # noqa: E402
from models import build_fasl  # noqa: E402
from models.asl import HeadLayout  # noqa: E402
from models.backbone import PRECISIONS  # noqa: E402
from models.backbone import BackboneOutput  # noqa: E402
from models.fasl import FASL, Encoded, InferenceConfig, Prediction, normalize_config, read_checkpoint  # noqa: E402
from models.flags import BATCH_SIZE, LEARNING_RATE, TRAIN_K_SHOT  # noqa: E402
from models.lot import LotScorer  # noqa: E402
from utils.cli import InputValueError, add_retired_flag  # noqa: E402
from utils.metrics import SPREAD, class_metrics, mean_spread, transductive_scores  # noqa: E402
from utils.misc import atomic_torch_save, resolve_device, write_json  # noqa: E402

SOURCES = ("masks", "synth_other", "synth_own", "synth_all")
LEARNED_MODES = ("asl", "merged", "asl+nam", "merged+nam")
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--data_root", help="dataset in MVTec layout with meta.json, two classes or more (required)")
    p.add_argument("--weights", help="pretrained weights of --model, a local file (required)")
    p.add_argument("--model", default="timm:tf_efficientnet_lite0", help="(default: %(default)s)")
    p.add_argument("--image_size", type=int, default=224, help="(default: %(default)s)")
    p.add_argument("--features_list", type=int, nargs="+", default=None,
                   help="blocks / stages (default: the backbone's: stride 8 and 16 stages of a CNN)")
    p.add_argument("--test_classes", nargs="+", default=None,
                   help="score these classes only (default: every class); heads are still trained without each")
    p.add_argument("--k_shot", type=int, nargs="+", default=[1, 2, 4], help="shots (default: 1 2 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reference seeds (default: 0 1 2)")
    p.add_argument("--train_seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES[:3]),
                   help="training sources (default: masks synth_other synth_own)")
    p.add_argument("--nam_runs", choices=("separate", "shared"), default="separate",
                   help="separate: the NAM-less modes from --no-nam runs, the NAM modes from --nam runs (two runs "
                        "per source and seed); shared: every mode from one --nam run, scored without and with its "
                        "NAM (half the training) (default: %(default)s)")
    p.add_argument("--learned_modes", nargs="+", choices=LEARNED_MODES, default=list(LEARNED_MODES),
                   help="the learned scoring modes measured (default: all four)")
    p.add_argument("--winmodes", nargs="+", choices=("nan", "mul"), default=["nan", "mul"], help="(default: nan mul)")
    p.add_argument("--win_size", type=int, default=InferenceConfig.win_size,
                   help="LFE window side in patches (default: %(default)s)")
    p.add_argument("--win_stride", type=int, default=InferenceConfig.win_stride,
                   help="LFE window step in patches (default: %(default)s)")
    p.add_argument("--eval_size", type=int, default=224,
                   help="map and mask side for the metrics: the --image_size of the backbone measured, as "
                        "docs/measurements.md's tables (test_few_shot.py: 240, the reference code's, for 518 px "
                        "inputs) (default: %(default)s)")
    p.add_argument("--train_steps", type=int, default=150,
                   help="about this many optimiser steps per training run: train.py --steps, the whole number of "
                        "epochs nearest it (default: %(default)s)")
    p.add_argument("--train_k", type=int, default=TRAIN_K_SHOT,
                   help="references per class in training banks (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="training batch (default: %(default)s)")
    p.add_argument("--learning_rate", type=float, default=LEARNING_RATE, help="(default: %(default)s)")
    p.add_argument("--train_args", default="",
                   help="extra train.py flags for every run, e.g. '--dice_smooth 0.01 --nam_residual' (default: none)")
    p.add_argument("--transductive", action=argparse.BooleanOptionalAction, default=True,
                   help="blend each image score with its map maximum normalised over the class, as test_few_shot.py "
                        "(--no-transductive: each image on its own) (default: on)")
    add_retired_flag(p, "--no_transductive", "is now --no-transductive")
    p.add_argument("--skip_methods", action="store_true",
                   help="only the extra measurements asked for (--agreement, --precision_check), no training")
    p.add_argument("--agreement", action="store_true",
                   help="also measure image_index / position / bf16 search against exhaustive fp32 search on these "
                        "features, and what each costs in FD pixel AUROC")
    p.add_argument("--precision_check", action="store_true",
                   help="also score FD with a bf16 encoder (autocast) against fp32: pixel AUROC / AUPRO and the "
                        "agreement of the maps")
    p.add_argument("--device", default="cpu", help="(default: %(default)s)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="encoder precision of training and scoring; fp32, as the README's tables were measured "
                        "('auto' would pick bf16 on a CPU with AMX) (default: %(default)s)")
    p.add_argument("--ensemble", action="store_true",
                   help="also score every learned method as one ensemble of its training seeds' heads (the mean of "
                        "their maps and image scores): method '<name> ens'")
    p.add_argument("--early_stop", action="store_true",
                   help="also score every epoch's checkpoint and add '<name> early': for each test class and training "
                        "seed, the epoch whose heads score best (mean of pixel AUROC and AUPRO) on the real defects of "
                        "the *other* classes, which synthetic-defect training never sees (synthetic sources only)")
    p.add_argument("--merge_weights", type=float, nargs="+", default=[], metavar="W",
                   help="also score w * heads + L * FD for each w, L the number of blocks, from the two methods' "
                        "maps and image scores (at w = 1 the map is merged's; the image score is w * the heads' + "
                        "L * FD's, each the mean over blocks of the block's maximum: not merged's image score, the "
                        "maximum of the summed block maps, lower where the two peak on different patches) and add "
                        "'<merged name> weighted', the w chosen per test class on the other classes; needs the "
                        "NAM-less or NAM head mode of the same merge in --learned_modes (default: none)")
    p.add_argument("--label", default="",
                   help="a name for this run's training recipe, added to every learned method's name "
                        "(e.g. 'merged [masks, residual]'), so runs of several recipes can be --combine'd")
    p.add_argument("--combine", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="no scoring: the tables and the picture of the records of these results.json files "
                        "together (FD taken from the first); --data_root and --weights are then not needed")
    p.add_argument("--picture_methods", nargs="+", default=None, metavar="METHOD",
                   help="the learned methods drawn in delta_<winmode>.png, in this order (default: all)")
    p.add_argument("--workdir", default="bench_out/real_eval/work",
                   help="trained heads and encoded test features, reused by reruns (default: %(default)s)")
    p.add_argument("--out", default="bench_out/real_eval", help="results.json and tables.md (default: %(default)s)")
    args = p.parse_args(argv)
    if not args.combine and not (args.data_root and args.weights):
        p.error("--data_root and --weights are required (unless --combine)")
    if any(not (w > 0 and math.isfinite(w)) for w in args.merge_weights):
        p.error(f"--merge_weights must be positive, got {args.merge_weights}")
    if args.merge_weights and not {"asl", "asl+nam"} & set(args.learned_modes):
        p.error("--merge_weights weighs the heads' own map: add asl or asl+nam to --learned_modes")
    if args.early_stop and "masks" in args.sources:
        p.error("--early_stop chooses epochs on the other classes' real defects, which --sources masks trains on: "
                "use it with synthetic sources only")
    return args


# ----------------------------------------------------------------------------- training

def training_argv(args, meta, test_cls: str, source: str, nam: bool, seed: int) -> list[str]:
    """train.py's arguments for heads that never see ``test_cls``; --train_steps goes to train.py as
    --steps, whose rule (``train.epochs_for_steps``, on the batches it really draws) sets the epochs."""
    others = [c for c in sorted(meta["test"]) if c != test_cls]
    if source == "masks":
        classes, data = others, ["--anomaly_source", "masks"]
    else:
        classes = {"synth_own": [test_cls], "synth_all": sorted(meta["train"])}.get(source, others)
        data = ["--anomaly_source", "synthetic"]
    backbone = ["--model", args.model, "--pretrained", args.weights, "--image_size", str(args.image_size)]
    if args.features_list:
        backbone += ["--features_list", *map(str, args.features_list)]
    return ["--train_data_path", args.data_root, *data, "--classes", *classes, *backbone, "--device", args.device,
            "--precision", args.precision, "--seed", str(seed), "--steps", str(args.train_steps), "--batch_size",
            str(args.batch_size), "--k_shot", str(args.train_k), "--learning_rate", str(args.learning_rate),
            "--nam" if nam else "--no-nam", *shlex.split(args.train_args)]


def trained_heads(args, meta, test_cls: str, source: str, nam: bool, seed: int) -> list[Path]:
    """The checkpoints of one training run, epoch 1 to the last, trained now or reused from --workdir."""
    argv = training_argv(args, meta, test_cls, source, nam, seed)
    key = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:12]
    classes = argv[argv.index("--classes") + 1:argv.index("--model")]
    data = f"{'masks' if source == 'masks' else 'synth'}-{'+'.join(classes)}"  # one run serves every test class
    folder = Path(args.workdir) / f"{data}-{'nam' if nam else 'asl'}-s{seed}-{key}"
    epochs = finished_epochs(folder)
    if epochs is None:  # train.py run as the program it is (bench/ imports library modules only)
        subprocess.run([sys.executable, str(ROOT / "train.py"), *argv, "--save_path", str(folder)], check=True,
                       cwd=ROOT)
        epochs = finished_epochs(folder)
    return [folder / f"epoch_{e}.pth" for e in range(1, epochs + 1)]


def finished_epochs(folder: Path) -> int | None:
    """The epochs of a finished train.py run in ``folder`` (its train_args.json's --epoch, as --steps
    resolved it, and that epoch's checkpoint there), or None."""
    try:
        epochs = int(json.loads((folder / "train_args.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epochs if (folder / f"epoch_{epochs}.pth").is_file() else None


# ----------------------------------------------------------------------------- scoring

class HeadsCache:
    """One FASL per checkpoint, all sharing the backbone (only the heads differ)."""

    def __init__(self, base: FASL):
        self.base, self.models = base, {}

    def get(self, ckpt: Path | None) -> FASL:
        if ckpt is None:
            return self.base
        if ckpt not in self.models:
            config = normalize_config(read_checkpoint(ckpt)["config"])
            model = FASL(self.base.backbone, HeadLayout.from_config(self.base.backbone.widths, config))
            model.load_checkpoint(ckpt)
            self.models[ckpt] = model.eval()
        return self.models[ckpt]


def _features_state(f: BackboneOutput | None) -> dict | None:
    return None if f is None else {"tokens": [t.cpu() for t in f.tokens], "embedding": f.embedding, "grid": list(f.grid)}


def _features_from(state: dict | None, device) -> BackboneOutput | None:
    if state is None:
        return None
    emb = state["embedding"]
    return BackboneOutput([t.to(device) for t in state["tokens"]], None if emb is None else emb.to(device),
                          tuple(state["grid"]))


def encoded_test_images(args, base: FASL, cls: str, data, cfg: InferenceConfig) -> list[Encoded]:
    """The test images of ``cls`` encoded in chunks of 8 for ``cfg``'s winmode, from --workdir when
    an earlier run with the same backbone, images and window layout stored them (a rerun, or
    another k, then encodes nothing)."""
    bb = base.backbone
    key = hashlib.sha256(json.dumps([bb.config(), args.precision, args.data_root, cls, data.paths, cfg.winmode,
                                     cfg.win_size, cfg.win_stride], default=str).encode()).hexdigest()[:16]
    path = Path(args.workdir) / "features" / f"{cls}-{cfg.winmode}-{key}.pt"
    windows = base.windows_for(cfg)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return [Encoded(c["batch"], _features_from(c["features"], base.device),
                        _features_from(c["window_features"], base.device), windows) for c in state]
    encoded = [base.encode(data.images[i:i + 8], cfg) for i in range(0, len(data.paths), 8)]
    atomic_torch_save([{"batch": e.batch, "features": _features_state(e.features),
                        "window_features": _features_state(e.window_features)} for e in encoded], path)
    return encoded


def score_chunks(model: FASL, encoded: list, bank, cfg: InferenceConfig, alignments: list[dict]) -> Prediction:
    """A class's encoded chunks scored against ``bank`` through the one scoring path of every
    program (models/lot.py ``LotScorer``), each chunk's searches kept in its ``alignments`` dict."""
    return LotScorer(model, cfg).fit(bank=bank).score_all(encoded, alignments=alignments)


def methods(args, nam_runs=(False, True)) -> list[tuple[str, str | None, bool]]:
    """(name, training source or None, NAM) of every scoring method measured; ``--label`` names the
    recipe after the source: ``merged [masks, residual]``."""
    out = [("fd", None, False)]
    for source, nam in product(args.sources, nam_runs):
        tag = f"{source}, {args.label}" if args.label else source
        for mode in ("asl+nam", "merged+nam") if nam else ("asl", "merged"):
            if mode in args.learned_modes:
                out.append((f"{mode} [{tag}]", source, nam))
    return out


ENSEMBLE_SEED = -1  # the train_seed of an ensemble's records (every seed's heads at once)


def metrics_of(args, data, score_map: torch.Tensor, image_score: torch.Tensor) -> dict:
    """METRICS of one class's maps (N, H, W) and image scores (N,) (transductive unless
    --no-transductive)."""
    maps, scores = score_map.numpy(), image_score.numpy()
    if args.transductive:
        scores = transductive_scores(scores, maps)
    m = class_metrics(data.labels, scores, data.masks, maps)
    return {key: m[key] for key in METRICS}


def evaluate(args) -> list[dict]:
    device = resolve_device(args.device)
    meta = load_meta(args.data_root)
    classes = sorted(meta["test"])
    if len(classes) < 2:
        raise InputValueError(f"{args.data_root}: heads trained without the test class need two classes or more")
    torch.manual_seed(0)
    base = build_fasl(args.model, args.weights, args.features_list, args.image_size, device,
                      precision=args.precision).eval()
    bb = base.backbone
    cache = HeadsCache(base)
    records = []
    all_methods = methods(args)
    unknown = sorted(set(args.test_classes or []) - set(classes))
    if unknown:
        raise InputValueError(f"--test_classes {unknown} are not classes of {args.data_root} ({classes})")
    for cls in [c for c in classes if c in (args.test_classes or classes)]:
        ckpts = {(s, nam, seed): trained_heads(args, meta, cls, s, nam or args.nam_runs == "shared", seed)
                 for s, nam, seed in product(args.sources, (False, True), args.train_seeds)}
        data = load_test_images(args.data_root, meta, cls, args.image_size, args.eval_size, bb.mean, bb.std)
        for winmode in args.winmodes:
            cfg0 = InferenceConfig(winmode=winmode, win_size=args.win_size, win_stride=args.win_stride,
                                   align="exhaustive", search_precision="exact", out_size=args.eval_size)
            t0 = time.time()
            encoded = encoded_test_images(args, base, cls, data, cfg0)
            print(f"{cls} {winmode}: {len(data.paths)} images encoded (or read) in {time.time() - t0:.1f}s",
                  flush=True)
            for k, seed in product(args.k_shot, args.seeds):
                refs = sample_kshot(meta, cls, k, seed)
                images = load_reference_images(args.data_root, refs, args.image_size, bb.mean, bb.std)
                bank = base.build_memory(images, base.windows_for(cfg0))
                alignments = [{} for _ in encoded]  # one search per chunk, shared by every method
                run = {"class": cls, "k": k, "seed": seed, "winmode": winmode}
                for name, source, nam in all_methods:
                    mode = "fd" if source is None else ("merged" if name.startswith("merged") else "fasl")
                    cfg = InferenceConfig(**{**cfg0.__dict__, "mode": mode, "use_nam": nam})
                    if source is None:  # FD: no training, one record under the first training seed
                        fd_pred = score_chunks(cache.get(None), encoded, bank, cfg, alignments)
                        records.append({**run, "train_seed": args.train_seeds[0], "method": name,
                                        **metrics_of(args, data, fd_pred.score_map, fd_pred.image_score)})
                        continue
                    preds = []
                    for train_seed in args.train_seeds:
                        epochs = ckpts[(source, nam, train_seed)]
                        for epoch in range(1, len(epochs) + 1) if args.early_stop else [len(epochs)]:
                            pred = score_chunks(cache.get(epochs[epoch - 1]), encoded, bank, cfg, alignments)
                            record = {**run, "train_seed": train_seed, "method": name, "epoch": epoch,
                                      **metrics_of(args, data, pred.score_map, pred.image_score)}
                            if args.early_stop:
                                record.update(choice_of=f"{name} early", choice=epoch)
                            if epoch < len(epochs):
                                record["earlier"] = True  # an early-stopping candidate, not in the tables
                            records.append(record)
                        preds.append(pred)  # the last epoch's
                    if not name.startswith("merged"):
                        for train_seed, pred in zip(args.train_seeds, preds):
                            records += weighted_merges(args, data, run, name, train_seed, pred, fd_pred, len(bb.widths))
                    if args.ensemble and len(preds) > 1:
                        # the training seeds' maps averaged: one ensemble of every seed's heads
                        mean_map = torch.stack([q.score_map for q in preds]).mean(0)
                        mean_score = torch.stack([q.image_score for q in preds]).mean(0)
                        records.append({**run, "train_seed": ENSEMBLE_SEED, "method": f"{name} ens",
                                        **metrics_of(args, data, mean_map, mean_score)})
            print(f"{cls} {winmode}: scored in {time.time() - t0:.1f}s", flush=True)
    return records + chosen_on_other_classes(records)


def epoch_records(records: list[dict]) -> list[dict]:
    """FD's records and every early-stopping candidate's (a choice with an epoch; a merge weight's
    has none), the latter renamed '<name> epoch <e>', so that the tables show each epoch's Δ to FD."""
    return [r if r["method"] == "fd" else {**r, "method": f"{r['method']} epoch {r['epoch']}"}
            for r in records if r["method"] == "fd" or ("choice_of" in r and "epoch" in r)]


def weighted_merges(args, data, run: dict, name: str, train_seed: int, heads: Prediction, fd: Prediction,
                    blocks: int) -> list[dict]:
    """Records of ``w * heads + blocks * FD`` for each --merge_weights w, summed from the two
    Predictions: the map (at w = 1 ``merged``'s map) and the image score, ``w * heads.image_score +
    blocks * fd.image_score``, the sum of each one's mean over blocks of the block's maximum. At
    w = 1 that is not merged's image score (the mean over blocks of the maximum of
    ``ASL_l + blocks * FD_l``): it is at least that, higher where the two peak on different
    patches, so image metrics of ``w=1`` and ``merged`` can differ. The weight chosen on the other
    classes is the method '<merged name> weighted'."""
    merged = name.replace("asl", "merged", 1)
    out = []
    for w in args.merge_weights:
        score_map = w * heads.score_map + blocks * fd.score_map
        image_score = w * heads.image_score + blocks * fd.image_score
        out.append({**run, "train_seed": train_seed, "method": f"{merged} w={w:g}", "choice_of": f"{merged} weighted",
                    "choice": w, **metrics_of(args, data, score_map, image_score)})
    return out


def chosen_on_other_classes(records: list[dict]) -> list[dict]:
    """The records of choices made without the test class: records with ``choice_of`` (the name of
    the choice, e.g. 'merged [..] early') are candidates, ``choice`` their value (an epoch, a merge
    weight). For each choice, training seed and test class c, c's records of the candidate whose
    mean of pixel AUROC and AUPRO over k, reference seeds and the classes *other than c* is the
    highest (ties: the smallest value) become records of method ``choice_of``, the value in ``choice``."""
    out = []
    candidates = [r for r in records if "choice_of" in r]
    for winmode, name, train_seed in dict.fromkeys((r["winmode"], r["choice_of"], r["train_seed"])
                                                   for r in candidates):
        mine = [r for r in candidates if (r["winmode"], r["choice_of"], r["train_seed"]) == (winmode, name, train_seed)]
        classes = sorted({r["class"] for r in mine})
        if len(classes) < 2:
            raise InputValueError(f"{name}: a choice made on the other classes needs two test classes or more")
        values = sorted({r["choice"] for r in mine})

        def score(value, cls, rows=mine):
            return float(np.mean([(r["pixel_auroc"] + r["pixel_aupro"]) / 2 for r in rows
                                  if r["choice"] == value and r["class"] != cls]))

        for cls in classes:
            best = max(values, key=lambda v: (score(v, cls), -v))
            out += [{**{k: v for k, v in r.items() if k not in ("earlier", "choice_of")}, "method": name}
                    for r in mine if r["class"] == cls and r["choice"] == best]
    return out


# ----------------------------------------------------------------------------- alignment agreement

def agreement(args) -> list[dict]:
    """On the real features: how often image_index / position and a bf16 search pick exhaustive
    fp32 search's reference patch, and the FD pixel AUROC each gives."""
    device = resolve_device(args.device)
    meta = load_meta(args.data_root)
    base = build_fasl(args.model, args.weights, args.features_list, args.image_size, device,
                      precision=args.precision).eval()
    bb = base.backbone
    rows = []
    for cls, k, seed in product(sorted(meta["test"]), args.k_shot, args.seeds):
        data = load_test_images(args.data_root, meta, cls, args.image_size, args.eval_size, bb.mean, bb.std)
        refs = load_reference_images(args.data_root, sample_kshot(meta, cls, k, seed), args.image_size, bb.mean,
                                     bb.std)
        ref_cfg = InferenceConfig(mode="fd", winmode="mul", win_size=args.win_size, win_stride=args.win_stride,
                                  align="position", out_size=args.eval_size)
        bank = base.build_memory(refs, base.windows_for(ref_cfg))
        enc = base.encode(data.images, ref_cfg)
        exact = {}
        for align, search in (("exhaustive", "exact"), ("exhaustive", "bf16"), ("image_index", "exact"),
                              ("position", "exact")):
            cfg = InferenceConfig(**{**ref_cfg.__dict__, "align": align, "search_precision": search})
            found: dict = {}  # the alignments the scoring ran (models.fasl.CachedAlignment)
            pred = base.score(enc, bank, cfg, found)
            auroc = class_metrics(data.labels, pred.image_score.numpy(), data.masks, pred.score_map.numpy())
            row = {"class": cls, "k": k, "seed": seed, "align": align, "search": search,
                   "pixel_auroc": auroc["pixel_auroc"], "pixel_aupro": auroc["pixel_aupro"]}
            for entry in found.values():
                where, a = "window" if entry.windows else "global", entry.alignment
                if (align, search) == ("exhaustive", "exact"):
                    exact[where] = a
                row[f"{where}_agreement"] = float(np.mean([(x == y).float().mean().item()
                                                           for x, y in zip(a.index, exact[where].index)]))
                row[f"{where}_similarity_loss"] = float(np.mean([(x.float() - y.float()).mean().item()
                                                                 for x, y in zip(exact[where].similarity, a.similarity)]))
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- encoder precision

def precision_check(args) -> list[dict]:
    """FD maps from a bf16 encoder against an fp32 one, same weights and references: pixel AUROC
    and AUPRO of each, the maps' correlation and their largest difference (relative to the fp32
    map's range), and the encoder time per image."""
    device = resolve_device(args.device)
    meta = load_meta(args.data_root)
    models = {}
    for precision in ("fp32", "bf16"):
        models[precision] = build_fasl(args.model, args.weights, args.features_list, args.image_size, device,
                                       precision=precision).eval()
    rows = []
    for cls, winmode in product(sorted(meta["test"]), args.winmodes):
        bb = models["fp32"].backbone
        data = load_test_images(args.data_root, meta, cls, args.image_size, args.eval_size, bb.mean, bb.std)
        cfg = InferenceConfig(mode="fd", winmode=winmode, win_size=args.win_size, win_stride=args.win_stride,
                              align="exhaustive", search_precision="exact", out_size=args.eval_size)
        encoded, seconds = {}, {}
        for precision, model in models.items():
            t0 = time.perf_counter()
            encoded[precision] = [model.encode(data.images[i:i + 8], cfg) for i in range(0, len(data.paths), 8)]
            seconds[precision] = (time.perf_counter() - t0) / len(data.paths)
        for k, seed in product(args.k_shot, args.seeds):
            refs = load_reference_images(args.data_root, sample_kshot(meta, cls, k, seed), args.image_size, bb.mean,
                                         bb.std)
            maps = {}
            for precision, model in models.items():
                bank = model.build_memory(refs, model.windows_for(cfg))
                pred = score_chunks(model, encoded[precision], bank, cfg, [{} for _ in encoded[precision]])
                m = class_metrics(data.labels, pred.image_score.numpy(), data.masks, pred.score_map.numpy())
                maps[precision] = pred.score_map.numpy()
                rows.append({"class": cls, "winmode": winmode, "k": k, "seed": seed, "precision": precision,
                             "pixel_auroc": m["pixel_auroc"], "pixel_aupro": m["pixel_aupro"],
                             "encode_s_per_image": seconds[precision]})
            a, b = maps["fp32"].ravel(), maps["bf16"].ravel()
            rows[-1].update(correlation=float(np.corrcoef(a, b)[0, 1]),
                            max_difference=float(np.abs(a - b).max() / max(a.max() - a.min(), 1e-12)))
    return rows


def precision_table(rows: list[dict]) -> str:
    table = []
    for winmode in dict.fromkeys(r["winmode"] for r in rows):
        for precision in ("fp32", "bf16"):
            mine = [r for r in rows if r["winmode"] == winmode and r["precision"] == precision]
            cells = [winmode, precision] + [f"{_mean(mine, key):.4f}" for key in ("pixel_auroc", "pixel_aupro")]
            cells.append(f"{_mean(mine, 'encode_s_per_image'):.3f}")
            cells += [f"{_mean(mine, key):.5f}" if precision == "bf16" else "" for key in ("correlation",
                                                                                         "max_difference")]
            table.append(cells)
    return tabulate(table, headers=["winmode", "encoder", "FD pix AUROC", "FD AUPRO", "encode s/img",
                                    "map correlation with fp32", "largest difference / range"],
                    tablefmt="github", disable_numparse=True)


# ----------------------------------------------------------------------------- tables

def _mean(rows, key):
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def summary_tables(records: list[dict]) -> str:
    """Markdown: per winmode, every method's mean over k and seeds (per class and overall) and its
    difference to FD; then the overall means per k."""
    out = []
    classes = sorted({r["class"] for r in records})
    for winmode in sorted({r["winmode"] for r in records}, key=["nan", "mul"].index):
        rows = [r for r in records if r["winmode"] == winmode]
        names = list(dict.fromkeys(r["method"] for r in rows))
        fd = {key: _mean([r for r in rows if r["method"] == "fd"], key) for key in METRICS}
        table = []
        for name in names:
            mine = [r for r in rows if r["method"] == name]
            cells = [name]
            for key in ("pixel_auroc", "pixel_aupro"):
                cells += [f"{_mean([r for r in mine if r['class'] == c], key):.4f}" for c in classes]
            means = {key: _mean(mine, key) for key in METRICS}
            cells += [f"{means[key]:.4f}" for key in METRICS]
            cells += [f"{means[key] - fd[key]:+.4f}" for key in ("pixel_auroc", "pixel_aupro")]
            table.append(cells)
        headers = (["method"] + [f"pix AUROC {c}" for c in classes] + [f"AUPRO {c}" for c in classes]
                   + ["img AUROC", "pix AUROC", "pix AP", "AUPRO", "Δ pix AUROC vs FD", "Δ AUPRO vs FD"])
        out.append(f"### winmode {winmode}: mean over k {sorted({r['k'] for r in rows})} and seeds "
                   f"{sorted({r['seed'] for r in rows})}\n")
        out.append(tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))
        ks = sorted({r["k"] for r in rows})
        per_k = [[name] + [f"{_mean([r for r in rows if r['method'] == name and r['k'] == k], key):.4f}"
                           for k in ks for key in ("pixel_auroc", "pixel_aupro")] for name in names]
        out.append(f"\n#### winmode {winmode}, per k (mean over classes and seeds)\n")
        out.append(tabulate(per_k, headers=["method"] + [f"k={k} {m}" for k in ks for m in ("pix AUROC", "AUPRO")],
                            tablefmt="github", disable_numparse=True))
        out.append("")
    return "\n".join(out)


def seed_deltas(records: list[dict], winmode: str, key: str) -> dict[str, dict[str, list[float]]]:
    """Δ to FD of every learned method, per training seed: {method: {class or 'mean': [Δ per seed]}}.

    A seed's Δ on a class is its mean over k and reference seeds minus FD's mean over the same runs;
    its 'mean' is the mean of its classes' Δ. FD has no training seed: its records serve every seed.
    """
    rows = [r for r in records if r["winmode"] == winmode and r[key] is not None]
    classes = sorted({r["class"] for r in rows})
    fd = {c: _mean([r for r in rows if r["method"] == "fd" and r["class"] == c], key) for c in classes}
    out: dict[str, dict[str, list[float]]] = {}
    for name in dict.fromkeys(r["method"] for r in rows if r["method"] != "fd"):
        mine = [r for r in rows if r["method"] == name]
        per_class = {c: [] for c in classes}
        for seed in sorted({r["train_seed"] for r in mine}):
            for c in classes:
                per_class[c].append(_mean([r for r in mine if r["class"] == c and r["train_seed"] == seed], key)
                                    - fd[c])
        per_class["mean"] = [float(np.mean(v)) for v in zip(*(per_class[c] for c in classes))]
        out[name] = per_class
    return out


def _spread(values: list[float]) -> str:
    """mean ± the sample standard deviation (utils/metrics.py mean_spread: ddof 1; 0 for a single value)."""
    mean, sd = mean_spread(values)
    return f"{mean:+.4f} ± {sd:.4f}"


def spread_tables(records: list[dict]) -> str:
    """Markdown: per winmode, every learned method's Δ to FD per class and on the mean over classes
    as mean ± sample standard deviation over training seeds, for pixel AUROC and AUPRO; FD's own values;
    then the same Δ on the mean over classes for each k."""
    out = []
    for winmode in sorted({r["winmode"] for r in records}, key=["nan", "mul"].index):
        rows = [r for r in records if r["winmode"] == winmode]
        classes = sorted({r["class"] for r in rows})
        seeds = sorted({r["train_seed"] for r in rows if r["method"] != "fd"} - {ENSEMBLE_SEED})
        deltas = {key: seed_deltas(rows, winmode, key) for key in ("pixel_auroc", "pixel_aupro")}
        fd_cells = ["fd (absolute)"]
        for key in ("pixel_auroc", "pixel_aupro"):
            fd_rows = [r for r in rows if r["method"] == "fd"]
            fd_cells += [f"{_mean([r for r in fd_rows if r['class'] == c], key):.4f}" for c in classes]
            fd_cells.append(f"{np.mean([_mean([r for r in fd_rows if r['class'] == c], key) for c in classes]):.4f}")
        table = [fd_cells]
        for name in deltas["pixel_auroc"]:
            cells = [name]
            for key in ("pixel_auroc", "pixel_aupro"):
                cells += [_spread(deltas[key][name][c]) for c in [*classes, "mean"]]
            table.append(cells)
        headers = (["method"] + [f"Δ pix AUROC {c}" for c in [*classes, "mean"]]
                   + [f"Δ AUPRO {c}" for c in [*classes, "mean"]])
        out.append(f"### winmode {winmode}: Δ to FD, mean ± std over training seeds {seeds} (std: the {SPREAD}; "
                   f"each seed: mean over "
                   f"k {sorted({r['k'] for r in rows})} and reference seeds {sorted({r['seed'] for r in rows})}; "
                   f"'mean': over the {len(classes)} classes)\n")
        out.append(tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))
        ks = sorted({r["k"] for r in rows})
        per_k = []
        for name in deltas["pixel_auroc"]:
            cells = [name]
            for k in ks:
                mine = [r for r in rows if r["k"] == k]
                for key in ("pixel_auroc", "pixel_aupro"):
                    cells.append(_spread(seed_deltas(mine, winmode, key)[name]["mean"]))
            per_k.append(cells)
        out.append(f"\n#### winmode {winmode}, Δ to FD per k (mean over classes; ± the {SPREAD} over training "
                   f"seeds)\n")
        out.append(tabulate(per_k, headers=["method"] + [f"k={k} Δ {m}" for k in ks for m in ("pix AUROC", "AUPRO")],
                            tablefmt="github", disable_numparse=True))
        out.append("")
    return "\n".join(out)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def delta_picture(records: list[dict], winmode: str, path: Path, methods_shown: list[str] | None = None) -> Path:
    """A PNG of every learned method's Δ to FD per class and on the mean (pixel AUROC above, AUPRO
    below): bars at the mean over training seeds, whiskers ± one sample standard deviation (mean_spread), a dot
    per seed."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    panels = [("pixel AUROC", seed_deltas(records, winmode, "pixel_auroc")),
              ("AUPRO", seed_deltas(records, winmode, "pixel_aupro"))]
    names = methods_shown or list(panels[0][1])
    unknown = [n for n in names if n not in panels[0][1]]
    if unknown:
        raise InputValueError(f"--picture_methods: {unknown} were not measured (measured: {list(panels[0][1])})")
    groups = [g for g in next(iter(panels[0][1].values()))] if names else []
    W, H, left, right, top, panel_h = 1500, 0, 70, 300, 40, 380
    H = top + len(panels) * (panel_h + 50) + 10
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    # the default font has no Greek letters: "delta" spelled out
    draw.text((left, 10), f"delta to FD (winmode {winmode}): bars = mean over training seeds, whiskers = ± 1 sample "
                          f"std (ddof 1), "
                          f"dots = seeds", fill="black", font=font)
    plot_w = W - left - right
    for p, (title, deltas) in enumerate(panels):
        y0 = top + p * (panel_h + 50) + 20
        values = [v for n in names for g in groups for v in deltas[n][g]]
        lo, hi = min(values + [0.0]), max(values + [0.0])
        pad = 0.08 * max(hi - lo, 1e-3)
        lo, hi = lo - pad, hi + pad

        def y(v, lo=lo, hi=hi, y0=y0):
            return y0 + (hi - v) / (hi - lo) * panel_h

        step = 10 ** math.floor(math.log10(max(hi - lo, 1e-6) / 4))
        step *= 5 if (hi - lo) / step > 20 else (2 if (hi - lo) / step > 8 else 1)
        t = math.ceil(lo / step) * step
        while t <= hi:
            draw.line([(left, y(t)), (left + plot_w, y(t))], fill=(225, 225, 225))
            draw.text((5, y(t) - 7), f"{round(t, 6) + 0.0:+.3f}", fill="black", font=font)
            t += step
        draw.line([(left, y(0)), (left + plot_w, y(0))], fill="black", width=2)
        draw.text((left, y0 - 18), f"delta {title}", fill="black", font=font)
        gw = plot_w / max(len(groups), 1)
        bw = 0.8 * gw / max(len(names), 1)
        for gi, g in enumerate(groups):
            draw.text((left + gi * gw + gw / 2 - 3.5 * len(g), y0 + panel_h + 4), g, fill="black", font=font)
            for mi, n in enumerate(names):
                v = deltas[n][g]
                m, sd = mean_spread(v)
                x0 = left + gi * gw + 0.1 * gw + mi * bw
                colour = PALETTE[mi % len(PALETTE)]
                draw.rectangle([x0, min(y(m), y(0)), x0 + bw - 2, max(y(m), y(0))], fill=colour)
                cx = x0 + bw / 2 - 1
                draw.line([(cx, y(m - sd)), (cx, y(m + sd))], fill="black", width=1)
                for end in (m - sd, m + sd):
                    draw.line([(cx - bw / 4, y(end)), (cx + bw / 4, y(end))], fill="black")
                for s in v:
                    draw.ellipse([cx - 2, y(s) - 2, cx + 2, y(s) + 2], outline="black", fill="white")
        if p == 0:
            for mi, n in enumerate(names):
                ly = y0 + mi * 18
                draw.rectangle([W - right + 15, ly, W - right + 27, ly + 12], fill=PALETTE[mi % len(PALETTE)])
                draw.text((W - right + 33, ly - 1), n, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def agreement_table(rows: list[dict]) -> str:
    groups = list(dict.fromkeys((r["align"], r["search"]) for r in rows))
    table = []
    for align, search in groups:
        mine = [r for r in rows if (r["align"], r["search"]) == (align, search)]
        table.append([align, search] + [f"{_mean(mine, key):.4f}" for key in
                                         ("global_agreement", "window_agreement", "window_similarity_loss",
                                          "pixel_auroc", "pixel_aupro")])
    return tabulate(table, headers=["align", "search", "global agreement", "window agreement",
                                    "window similarity given up", "FD pix AUROC (mul)", "FD AUPRO (mul)"],
                    tablefmt="github", disable_numparse=True)


def combined_records(paths: list[str]) -> list[dict]:
    """The records of several results.json files, FD's from the first only; a learned method
    measured in two of them (two runs without distinct --label) is refused."""
    records, seen = [], {}
    for i, path in enumerate(paths):
        mine = json.loads(Path(path).read_text())["records"]
        for name in dict.fromkeys(r["method"] for r in mine):
            if name == "fd":
                continue
            if name in seen:
                raise InputValueError(f"{path} and {seen[name]} both measured {name!r}: give each run its own --label")
            seen[name] = path
        records += [r for r in mine if r["method"] != "fd" or i == 0]
    return records


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    if args.combine:
        records = combined_records(args.combine)
    else:
        records = [] if args.skip_methods else evaluate(args)
    result = {"settings": vars(args), "records": [r for r in records if not r.get("earlier")],
              "earlier_epochs": [r for r in records if r.get("earlier")]}
    text = summary_tables(result["records"]) if result["records"] else ""
    if result["records"] and any(r["method"] != "fd" for r in result["records"]):
        text += "\n" + spread_tables(result["records"])
        for winmode in dict.fromkeys(r["winmode"] for r in result["records"]):
            delta_picture(result["records"], winmode, out / f"delta_{winmode}.png", args.picture_methods)
    if result["earlier_epochs"]:
        text += "\n### every epoch's heads (the --early_stop candidates)\n\n" + spread_tables(epoch_records(records))
    if args.precision_check and not args.combine:
        result["precision"] = precision_check(args)
        text += "\n### encoder precision: bf16 (autocast) against fp32, FD\n\n" + precision_table(result["precision"]) + "\n"
    if args.agreement and not args.combine:
        result["agreement"] = agreement(args)
        text += "\n### alignment and search precision against exhaustive fp32 search (FD, winmode mul)\n\n"
        text += agreement_table(result["agreement"]) + "\n"
    result["seconds"] = time.time() - t0
    print(text)
    write_json(out / "results.json", result)
    (out / "tables.md").write_text(text + "\n")
    print(f"{result['seconds']:.0f}s; written to {out}/results.json and tables.md")
    return result


if __name__ == "__main__":
    main()
