"""Train FASL's ASL heads and NAMs on an auxiliary dataset (the backbone stays frozen).

Paper protocol (``--anomaly_source masks``, the default): the training set is the *test* split
of the auxiliary dataset (normal and anomalous images with masks); every image is aligned
against the memory bank of its own class, built from k references of that dataset's ``train``
split (10 by default, as the reference code; all of a class that has fewer), and the whole
batch's deviations go through the heads in one call. Loss: focal (gamma 2) + dice on every
block's raw and (with NAM on) NAM maps, upsampled to the input size.

Without defect masks (``--anomaly_source synthetic``): the training set is good images only,
the ``train`` split of a meta.json or a plain folder / glob / list (``--train_images``, one
class named by ``--class_name``). Defects (CutPaste patches and Perlin-noise texture blobs,
``data/anomaly_synthesis.py``) are drawn on the fly with their exact masks, and a fraction
``--clean_rate`` of the images stays clean every epoch. The k references of each class's memory
bank come from the same good images and are left out of its training images when at least two
others remain.

    python train.py --train_data_path datasets/mvtec --dataset mvtec --save_path checkpoints/x
    python train.py --anomaly_source synthetic --train_images my_parts/good --save_path checkpoints/mine
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from data.anomaly_synthesis import KINDS, SynthesisConfig, parse_kinds
from data.dataset import AnomalyDataset, balanced_batches, class_batches, select_classes
from data.images import list_images
from data.kshot import choose_references, draw_references, load_kshot, load_reference_images, save_kshot
from data.meta import check_files, load_meta, split_files
from data.synthetic_train import CLEAN_RATE, SynthesizedAnomalyDataset, relative_to_common_root
from models import build_fasl_from_args
from models.asl import ScoreMaps, global_batch_norm
from models.fd import HEAD_INPUTS
from models.checkpoint import read_checkpoint
from models.fasl import upsample
from models.flags import (BATCH_SIZE, LEARNING_RATE, SEED, TRAIN_K_SHOT, add_align_arg, add_backbone_args,
                          add_retired_flag, check_model_flags, hide_advanced, parser_for)
from utils.losses import dice_loss, focal_loss
from utils.cli import InputValueError, run_cli
from utils.distributed import Dist, barrier, broadcast_from_main, reduce_sum, shutdown
from utils.misc import atomic_torch_save, check_output_folder, fatal_errors_logged, start_run, write_json

CHECKPOINT_RE = re.compile(r"^epoch_(\d+)\.pth$")
ANOMALY_SOURCES = ("masks", "synthetic")
HELP = """Train FASL's ASL heads (and NAM) on an auxiliary dataset; the backbone stays frozen
(docs/training.md; every flag with its default: docs/flags.md).

  python train.py --train_data_path datasets/mvtec --save_path checkpoints/x
  python train.py --anomaly_source synthetic --train_images my_parts/good --save_path checkpoints/mine \\
      --recipe new_parts"""
# Named training recipes: defaults of the training choices, each still overridden by its own flag.
# "reference": the reference code's recipe, as trainAndTest.sh trains (the default).
# "new_parts": the settings that measured best for heads used on parts they never saw (docs/measurements.md,
# Measured on real images: leave-one-class-out over five real classes).
RECIPES = {
    "reference": {},
    "new_parts": {"dice_smooth": 0.01, "nam_residual": True, "fd_residual": True, "head_input": "deviation+query",
                  "steps": 75},
}


def build_parser(show_advanced: bool = False) -> argparse.ArgumentParser:
    """train.py's flags: the everyday ones in --help, the rest (backbone details, the reference
    code's training recipe, the experiment switches) behind --help_advanced unless ``show_advanced``."""
    p = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--train_data_path", default=None, metavar="DIR",
                   help="the auxiliary dataset (holds meta.json), e.g. datasets/mvtec")
    p.add_argument("--train_images", nargs="+", default=None, metavar="PATH",
                   help="or good images only (folders, globs, files, .txt lists): with --anomaly_source synthetic")
    p.add_argument("--save_path", required=True, metavar="DIR", help="output: epoch_N.pth, train.log, references.json")
    p.add_argument("--anomaly_source", choices=ANOMALY_SOURCES, default="masks",
                   help="'masks': the dataset's real defects and masks (the paper's); 'synthetic': defects drawn "
                        "on good images (default: %(default)s)")
    p.add_argument("--recipe", default="reference", choices=tuple(RECIPES),
                   help="named defaults: 'reference' (the reference code's), 'new_parts' ("
                        + ", ".join(f"--{k} {v}" if not isinstance(v, bool) else f"--{k}"
                                    for k, v in RECIPES["new_parts"].items())
                        + "); a flag given on its own still wins (default: %(default)s)")
    p.add_argument("--epoch", type=int, default=5, metavar="N", help="number of epochs (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="or about N optimiser steps, as the nearest whole number of epochs (--recipe new_parts: 75)")
    p.add_argument("--nam", action=argparse.BooleanOptionalAction, default=True,
                   help="train the NAM too (default: on; --no-nam: the ASL heads alone, the reference's useNAM=0)")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="train on these classes only (default: all)")
    p.add_argument("--seed", type=int, default=SEED, metavar="N",
                   help="references, shuffling, augmentation (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch_N.pth in --save_path")
    adv = p.add_argument_group("advanced: backbone, data, the reference code's training recipe")
    add_backbone_args(p, advanced=adv, everyday=p)
    adv.add_argument("--dataset", default=None,
                     help="name of the training data, for logs and the checkpoint (default: mvtec, or "
                          "custom with --train_images)")
    adv.add_argument("--class_name", default="custom",
                     help="class name of the --train_images (default: %(default)s)")
    adv.add_argument("--k_shot", type=int, default=TRAIN_K_SHOT,
                     help="good reference images per class in the training memory banks, as the reference code's "
                          "--k_shot (all of a class that has fewer) (default: %(default)s)")
    adv.add_argument("--refs_file", default=None,
                     help="references.json of an earlier run: reuse exactly those references")
    adv.add_argument("--batch_size", type=int, default=BATCH_SIZE,
                     help="the training batch (default: %(default)s)")
    adv.add_argument("--learning_rate", type=float, default=LEARNING_RATE,
                     help="Adam learning rate (default: %(default)s)")
    adv.add_argument("--aug_rate", type=float, default=0.2,
                     help="probability of the 2x2 mosaic augmentation; --anomaly_source masks only "
                          "(default: %(default)s)")
    adv.add_argument("--crop_rate", type=float, default=0.0,
                     help="probability of the reference's VisA crop (a 100 or 50 px square of the 518 px input, "
                          "holding defect pixels when there are any, zoomed back); --anomaly_source masks only "
                          "(default: %(default)s; trainAndTest.sh: 0.6 on VisA)")
    adv.add_argument("--crop_small_rate", type=float, default=0.6,
                     help="probability of the 50 px side when a defective image is cropped (default: %(default)s)")
    adv.add_argument("--clean_rate", type=float, default=CLEAN_RATE,
                     help="synthetic: fraction of the training images left without a defect each epoch "
                          "(default: %(default)s)")
    adv.add_argument("--synth_kinds", default=",".join(KINDS),
                     help=f"synthetic: comma-separated defect kinds, from {', '.join(KINDS)} (default: %(default)s)")
    add_align_arg(adv)
    adv.add_argument("--check_args", action="store_true",
                     help="check the flags and exit: nothing is read, built or written (the shell scripts use it)")
    # experiment switches: a user sets --recipe instead
    exp = p.add_argument_group("advanced: training changes that are not the reference code's (see docs/measurements.md; "
                               "--recipe new_parts sets some of them)")
    exp.add_argument("--per_block_nam", action="store_true",
                     help="one NAM per block instead of the reference's single NAM shared by every block and the "
                          "LFE windows")
    exp.add_argument("--input_bn", action=argparse.BooleanOptionalAction, default=True,
                     help="the BatchNorm1d in front of each ASL head (default: on; --no-input_bn drops it)")
    exp.add_argument("--dice_smooth", type=float, default=1.0,
                     help="smoothing term of the dice loss; the reference's 1 rewards 'all normal' when defects are "
                          "a few pixels (default: %(default)s)")
    exp.add_argument("--nam_residual", action="store_true",
                     help="the NAM adds a correction to the log-probabilities and starts as the identity")
    exp.add_argument("--fd_residual", action="store_true",
                     help="the heads learn a correction to FD (their anomalous logit starts as a calibrated FD, the "
                          "correction at zero), so what is trained is FD + heads")
    exp.add_argument("--head_input", choices=HEAD_INPUTS, default="deviation",
                     help="what each ASL head sees of a patch and its aligned reference: 'deviation' |f - f_ref| (the "
                          "reference's), 'signed' f - f_ref, 'deviation+query' |f - f_ref| and f (default: %(default)s)")
    exp.add_argument("--class_batches", action="store_true",
                     help="every training batch holds one class only, so the heads' BatchNorms never mix classes")
    exp.add_argument("--balance_classes", action="store_true",
                     help="draw every class equally often (with replacement, an epoch keeps its length) instead of "
                          "every image once, so a class with few images weighs as much as one with many")
    add_retired_flag(p, "--refs", "is predict.py's reference images; here the references of an earlier run are "
                                  "--refs_file references.json")
    add_retired_flag(p, "--no_input_bn", "is now --no-input_bn")
    if not show_advanced:
        hide_advanced(p, adv, exp, what="backbone, data, the training recipe, experiment switches")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser_for(build_parser, argv)
    # the recipe sets the defaults the parse below starts from; an unknown name is left to that parse
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe", default="reference")
    chosen = pre.parse_known_args(argv)[0].recipe
    p.set_defaults(**RECIPES.get(chosen, {}))
    args = p.parse_args(argv)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    if "--epoch" in given and "--steps" in given:
        p.error("give either --epoch or --steps, not both")
    if "--epoch" in given:  # a flag given on its own wins over the recipe's step count
        args.steps = None
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.train_images and args.anomaly_source != "synthetic":
        p.error("--train_images has no masks: use it with --anomaly_source synthetic")
    if args.train_images and args.train_data_path:
        p.error("give either --train_data_path or --train_images, not both")
    if args.train_images and args.classes:
        p.error("--classes selects classes of a meta.json; --train_images is one class (--class_name)")
    if not args.train_images and not args.train_data_path:
        p.error("--train_data_path is required (or --anomaly_source synthetic with --train_images)")
    if args.class_batches and args.balance_classes:
        p.error("--class_batches and --balance_classes draw batches in two different ways: give one of them")
    if args.dice_smooth < 0:
        p.error(f"--dice_smooth must be >= 0, got {args.dice_smooth}")
    for name in ("epoch", "batch_size", "k_shot"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        p.error(f"--learning_rate must be > 0, got {args.learning_rate}")
    check_model_flags(p, args)
    for name in ("clean_rate", "aug_rate", "crop_rate", "crop_small_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    try:
        args.synth_kinds = ",".join(parse_kinds(args.synth_kinds))
    except ValueError as err:
        p.error(f"--synth_kinds: {err}")
    if args.dataset is None:
        args.dataset = "custom" if args.train_images else "mvtec"
    return args


def segmentation_loss(maps: ScoreMaps, masks: torch.Tensor, dice_smooth: float = 1.0) -> torch.Tensor:
    """Focal + dice over every block's raw and (when present) NAM maps, summed as the reference
    does. masks: (B, 1, S, S) of 0/1, S square, checked by the caller (``check_masks``, once per
    batch on the CPU side): nothing here waits for the device."""
    loss = masks.new_zeros(())
    for probs in [*maps.raw, *(maps.refined or [])]:
        up = upsample(probs, masks.shape[-1])  # [B, 2, S, S]
        loss = loss + focal_loss(up, masks, check_target=False) + dice_loss(up[:, 1], masks[:, 0], smooth=dice_smooth)
    return loss


def check_masks(masks: torch.Tensor) -> None:
    """A batch's masks (B, 1, S, S) hold 0/1 only: checked once per batch, before they go to the device."""
    if masks.numel() and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("training masks must hold 0/1 only (binarise soft masks first)")


def _folder_references(args, paths: list[str]) -> list[str]:
    """k references among the --train_images (relative paths): from --refs_file, or drawn like a
    meta.json class's (data.kshot.draw_references)."""
    if args.refs_file:
        refs = load_kshot(args.refs_file).get(args.class_name)
        if refs is None:
            raise InputValueError(f"{args.refs_file} has no references for class {args.class_name!r}")
        unknown = [r for r in refs if r not in set(paths)]
        if unknown:
            raise InputValueError(f"{args.refs_file}: reference {unknown[0]!r} is not one of the --train_images")
        return refs
    return draw_references(paths, args.class_name, args.k_shot, args.seed, at_most=True, where="--train_images")


class TrainingData(NamedTuple):
    root: Path                    # what every image path is relative to
    classes: list[str]
    refs: dict[str, list[str]]    # the k references of each class's memory bank
    meta: dict | None             # None for --train_images
    paths: list[str] | None       # the --train_images, relative to root


def resolve_training_data(args) -> TrainingData:
    """Find the training images and choose the references (before any model is built, so a
    wrong path fails at once)."""
    if args.train_images:
        root, paths = relative_to_common_root(list_images(args.train_images, "--train_images"))
        return TrainingData(root, [args.class_name], {args.class_name: _folder_references(args, paths)}, None, paths)
    root = Path(args.train_data_path)
    meta = load_meta(root)
    classes = select_classes(meta, "test" if args.anomaly_source == "masks" else "train", args.classes)
    refs = choose_references(meta, classes, args.k_shot, args.seed, args.refs_file, at_most=True)
    # every file the run reads, before it starts: the training images (and masks) and the references
    needed = split_files(meta, "test", classes) if args.anomaly_source == "masks" else \
        split_files(meta, "train", classes, with_masks=False)
    check_files(root, [*needed, *(p for c in classes for p in refs[c])], f"{root}/meta.json")
    return TrainingData(root, classes, refs, meta, None)


def build_training_set(args, data: TrainingData, mean, std):
    """The training Dataset: real masks (AnomalyDataset over the test split) or synthetic
    defects on good images, references left out (SynthesizedAnomalyDataset)."""
    if args.anomaly_source == "masks":
        return AnomalyDataset(data.root, split="test", classes=args.classes, image_size=args.image_size,
                              mean=mean, std=std, aug_rate=args.aug_rate, crop_rate=args.crop_rate,
                              crop_small_rate=args.crop_small_rate, seed=args.seed, meta=data.meta)
    common = dict(image_size=args.image_size, mean=mean, std=std, clean_rate=args.clean_rate,
                  synthesis=SynthesisConfig(kinds=parse_kinds(args.synth_kinds)), seed=args.seed)
    if data.paths is not None:
        return SynthesizedAnomalyDataset.from_files(data.root, data.paths, args.class_name,
                                                    exclude=data.refs[args.class_name], **common)
    return SynthesizedAnomalyDataset.from_meta(data.root, data.meta, data.classes, exclude=data.refs, **common)


def run_settings(args, encoder_dtype: torch.dtype) -> dict:
    """What a resumed run must share with the checkpoint it continues (plain values only).
    ``encoder_dtype``: the dtype ``--precision`` resolved to on this device (the heads were trained
    on features of that dtype; ``auto`` and ``fp32`` on a CPU without AMX are the same float32)."""
    keys = ("seed", "dataset", "anomaly_source", "k_shot", "align", "learning_rate", "batch_size",
            "aug_rate", "crop_rate", "crop_small_rate", "nam", "dice_smooth", "class_batches", "balance_classes",
            "clean_rate", "synth_kinds", "refs_file", "classes", "train_images")
    return {**{k: getattr(args, k) for k in keys}, "encoder_dtype": str(encoder_dtype).replace("torch.", "")}


# the --precision value that runs the encoder in a dtype, by the dtype's name in run_settings
PRECISION_OF_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def epochs_for_steps(steps: int, batches_per_epoch: int) -> int:
    """``--steps``: the whole number of epochs nearest ``steps`` optimiser steps at ``batches_per_epoch``
    batches an epoch, at least 1 (a tie goes to the even number, as ``round``). The one rule of
    train.py and of bench/real_eval.py --train_steps, which passes its steps here as --steps."""
    return max(1, round(steps / max(1, batches_per_epoch)))


def last_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pth") if (m := CHECKPOINT_RE.match(p.name))]
    return max(found) if found else None


def epoch_batches(dataset, args, epoch: int) -> list[list[int]]:
    """The epoch's batches of item indices, in order: the same in every process of a torchrun, and
    exactly the batches one process draws (a shuffling DataLoader seeded per epoch, single-class
    batches with --class_batches, or classes drawn equally often with --balance_classes)."""
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    if args.class_batches:
        return class_batches(dataset.item_classes, args.batch_size, generator)
    if args.balance_classes:
        return balanced_batches(dataset.item_classes, args.batch_size, generator)
    return [b.tolist() for b in DataLoader(range(len(dataset)), batch_size=args.batch_size, shuffle=True,
                                           generator=generator)]


def local_part(batch: list[int], d: Dist) -> list[int]:
    """This process's contiguous share of a global batch (shares differ by one item at most; a
    process may hold none when the batch is smaller than the run)."""
    n = len(batch)
    return batch[d.rank * n // d.world_size:(d.rank + 1) * n // d.world_size]


def main(argv=None) -> Path | None:
    args = parse_args(argv)
    if args.check_args:
        return None
    check_output_folder(args.save_path, "--save_path")
    run = start_run(args, "train")
    try:
        with fatal_errors_logged(run.log):
            return _train(args, run)
    finally:
        shutdown(run.dist)


def _train(args, run) -> Path:
    save_path, log, device, d = run
    data = resolve_training_data(args)

    model = build_fasl_from_args(args, device, input_bn=args.input_bn, shared_nam=not args.per_block_nam,
                                 nam_residual=args.nam_residual, fd_residual=args.fd_residual,
                                 head_input=args.head_input)
    bb = model.backbone
    dataset = build_training_set(args, data, bb.mean, bb.std)
    refs, ref_root = data.refs, data.root
    if args.steps is not None:  # the epochs nearest the step count, for this dataset and batch size
        per_epoch = len(epoch_batches(dataset, args, 0))
        args.epoch = epochs_for_steps(args.steps, per_epoch)
        log.info("%s--steps %d: %d epochs of %d batches (%d steps)", d.tag, args.steps, args.epoch, per_epoch,
                 args.epoch * per_epoch)
    info = {"dataset": args.dataset, "seed": args.seed, "k_shot": args.k_shot}
    if args.train_images:  # a folder has no meta.json: say what the paths are relative to
        info["root"] = str(ref_root)
    log.info("%straining on %s (%s, anomaly source %s): %d images, %d classes, k=%d, model %s, NAM %s", d.tag,
             ref_root, args.dataset, args.anomaly_source, len(dataset), len(dataset.classes), args.k_shot,
             bb.model_name, "on" if args.nam else "off")
    fewer = {c: len(refs[c]) for c in dataset.classes if len(refs[c]) < args.k_shot}
    if fewer:
        log.info("classes with fewer than %d good images use all of them: %s", args.k_shot,
                 ", ".join(f"{c} ({n})" for c, n in sorted(fewer.items())))
    if args.anomaly_source == "synthetic":
        log.info("synthetic defects %s, %d of %d images clean per epoch", args.synth_kinds,
                 int(dataset.clean.sum()), len(dataset))

    resumed, resumed_path = None, None
    if args.resume:  # checked before the banks are built: a mismatch costs nothing
        # rank 0 decides and its checkpoint reaches every process (whose disk may not hold it)
        found = broadcast_from_main(last_checkpoint(save_path) if d.is_main else None, d)
        if found is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", save_path)
        else:
            state = broadcast_from_main(read_checkpoint(found[1]) if d.is_main else None, d)
            model.apply_checkpoint(state, found[1])
            stored, settings = state.get("run", {}), run_settings(args, model.bank_dtype)
            if "encoder_dtype" not in stored:  # written before the dtype was recorded: nothing to compare
                log.warning("--resume: %s records no encoder dtype: resumed at %s (--precision %s)", found[1],
                            settings.pop("encoder_dtype"), args.precision)
            dtype = stored.get("encoder_dtype")
            how = {"encoder_dtype": f" (--precision {PRECISION_OF_DTYPE.get(dtype, '?')} runs the encoder in {dtype})"}
            diffs = [f"{k}: checkpoint {stored.get(k)!r}, now {v!r}{how.get(k, '')}" for k, v in settings.items()
                     if stored.get(k) != v]
            if state["config"].get("image_size") != args.image_size:  # the heads saw features at that size
                diffs.append(f"image_size: checkpoint {state['config'].get('image_size')!r}, now {args.image_size!r}")
            if diffs:
                raise InputValueError(f"--resume: {found[1]} belongs to a run with other settings "
                                      f"({'; '.join(diffs)}); use another --save_path or the same settings")
            resumed, resumed_path = state, found[1]

    banks = {}
    for c in tqdm(dataset.classes, desc="memory banks", leave=False):
        banks[c] = model.build_memory(load_reference_images(ref_root, refs[c], args.image_size, bb.mean, bb.std))

    if d.enabled:  # data parallel: every BatchNorm normalises over all the processes' rows
        global_batch_norm(model.heads)
    optimizer = torch.optim.Adam(model.heads.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
    start_epoch, path = 0, save_path
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        start_epoch, path = int(resumed["epoch"]), resumed_path
        log.info("resumed from %s (epoch %d)", resumed_path, start_epoch)
    if d.is_main:  # written once every check has passed
        save_kshot(save_path / "references.json", {c: refs[c] for c in dataset.classes}, info)
        write_json(save_path / "train_args.json", vars(args))
    source_info = {"anomaly_source": args.anomaly_source}  # primitives only: weights_only loading
    if args.anomaly_source == "synthetic":
        source_info.update(clean_rate=float(args.clean_rate), synth_kinds=args.synth_kinds)
    heads = None
    if d.enabled:  # gradients averaged over the processes by DDP
        heads = DistributedDataParallel(model.heads, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=not args.nam)

    for epoch in range(start_epoch, args.epoch):
        # every epoch draws from its own streams, so a resumed run repeats an uninterrupted one
        dataset.set_epoch(epoch)
        torch.manual_seed(args.seed * 1000 + epoch)
        model.heads.train()
        total, steps, t0 = 0.0, 0, time.time()
        bar = tqdm(epoch_batches(dataset, args, epoch), desc=f"{d.tag}epoch {epoch + 1}/{args.epoch}",
                   dynamic_ncols=True)
        for batch in bar:
            mine = local_part(batch, d)
            if mine:
                items = default_collate([dataset[i] for i in mine])
                check_masks(items.mask)  # on the CPU, once per batch
                images, masks, names = items.image.to(device), items.mask.to(device), items.cls_name
            else:
                S = args.image_size
                images, masks, names = torch.zeros(0, 3, S, S, device=device), None, []
            maps = model(images, [banks[c] for c in names], align=args.align, use_nam=args.nam, heads=heads)
            if mine:
                # this process's share of the batch mean; DDP averages over the processes
                loss = segmentation_loss(maps, masks, args.dice_smooth) * (len(mine) * d.world_size / len(batch))
            else:
                loss = sum(m.sum() for m in [*maps.raw, *(maps.refined or [])]) * 0.0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += reduce_sum(loss.detach() / d.world_size, d)
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        path = save_path / f"epoch_{epoch + 1}.pth"
        if d.is_main:
            atomic_torch_save(model.checkpoint_state(optimizer=optimizer.state_dict(), epoch=epoch + 1,
                                                     seed=args.seed, dataset=args.dataset,
                                                     run=run_settings(args, model.bank_dtype),
                                                     **source_info), path)
        log.info("%sepoch %d/%d  loss %.4f  %.1fs  -> %s", d.tag, epoch + 1, args.epoch, total / max(steps, 1),
                 time.time() - t0, path)
    barrier(d)  # the last checkpoint is written before any process returns its path
    return path


if __name__ == "__main__":
    run_cli(main, "train.py")
