"""Train FASL's ASL heads and NAMs on an auxiliary dataset (the backbone stays frozen).

Paper protocol (``--anomaly_source masks``): the training set is the *test* split of the
auxiliary dataset (normal and anomalous images with masks); every image is aligned against the
memory bank of its own class, built from k references of that dataset's ``train`` split.
Loss: focal (gamma 2) + dice on every block's raw and NAM maps, upsampled to the input size.

    python train.py --train_data_path datasets/mvtec --dataset mvtec --save_path checkpoints/x
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import AnomalyDataset
from data.kshot import load_kshot, load_reference_images, sample_kshot, save_kshot
from data.meta import load_meta
from models import build_fasl
from models.asl import ScoreMaps
from models.backbone import BackboneOutput
from utils.args import add_align_arg, add_backbone_args
from utils.losses import dice_loss, focal_loss
from utils.misc import atomic_torch_save, get_logger, resolve_device, seed_everything, write_json

CHECKPOINT_RE = re.compile(r"^epoch_(\d+)\.pth$")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_data_path", required=True, help="root of the auxiliary dataset (holds meta.json)")
    p.add_argument("--dataset", default="mvtec", help="name of the auxiliary dataset, for logs (default: %(default)s)")
    p.add_argument("--save_path", required=True, help="folder for checkpoints (epoch_N.pth), train.log, references.json")
    add_backbone_args(p)
    p.add_argument("--k_shot", type=int, default=1, help="reference images per class for the memory banks (default: %(default)s)")
    p.add_argument("--refs", default=None, help="references.json of an earlier run to reuse exactly those references")
    p.add_argument("--epoch", type=int, default=5, help="number of epochs (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=8, help="(default: %(default)s)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--aug_rate", type=float, default=0.2, help="probability of the 2x2 mosaic augmentation (default: %(default)s)")
    p.add_argument("--crop_rate", type=float, default=0.0,
                   help="probability of the defect-keeping random crop (default: %(default)s)")
    p.add_argument("--no_input_bn", action="store_true", help="drop the BatchNorm1d in front of each ASL head")
    p.add_argument("--seed", type=int, default=111, help="seed for references, shuffling and augmentation (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch_N.pth in --save_path")
    p.add_argument("--classes", nargs="+", default=None, help="train on these classes only (default: all)")
    add_align_arg(p)
    return p.parse_args(argv)


def segmentation_loss(maps: ScoreMaps, masks: torch.Tensor) -> torch.Tensor:
    """Focal + dice over every block's raw and NAM maps. masks: (B, 1, S, S) of 0/1."""
    size = masks.shape[-2:]
    loss = masks.new_zeros(())
    for probs in [*maps.raw, *maps.refined]:
        up = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)  # [B, 2, S, S]
        loss = loss + focal_loss(up, masks) + dice_loss(up[:, 1], masks[:, 0])
    return loss


def last_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pth") if (m := CHECKPOINT_RE.match(p.name))]
    return max(found) if found else None


def main(argv=None) -> Path:
    args = parse_args(argv)
    save_path = Path(args.save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    log = get_logger("fasl.train", save_path / "train.log")
    device = resolve_device(args.device)
    seed_everything(args.seed)

    model = build_fasl(args.model, args.pretrained, args.features_list, args.image_size, device,
                       input_bn=not args.no_input_bn)
    bb = model.backbone
    meta = load_meta(args.train_data_path)
    dataset = AnomalyDataset(args.train_data_path, split="test", classes=args.classes, image_size=args.image_size,
                             mean=bb.mean, std=bb.std, aug_rate=args.aug_rate, crop_rate=args.crop_rate,
                             seed=args.seed, meta=meta)
    if args.refs:
        refs = load_kshot(args.refs, meta)
        missing = [c for c in dataset.classes if c not in refs]
        if missing:
            raise ValueError(f"{args.refs} has no references for class(es) {missing}")
    else:
        refs = {c: sample_kshot(meta, c, args.k_shot, args.seed) for c in dataset.classes}
    save_kshot(save_path / "references.json", {c: refs[c] for c in dataset.classes},
               {"dataset": args.dataset, "seed": args.seed, "k_shot": args.k_shot})
    log.info("training on %s (%s): %d images, %d classes, k=%d, model %s",
             args.train_data_path, args.dataset, len(dataset), len(dataset.classes), args.k_shot, bb.model_name)

    banks = {}
    for c in tqdm(dataset.classes, desc="memory banks", leave=False):
        banks[c] = model.build_memory(load_reference_images(args.train_data_path, refs[c], args.image_size, bb.mean, bb.std))

    optimizer = torch.optim.Adam(model.heads.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
    start_epoch, path = 0, save_path
    if args.resume:
        found = last_checkpoint(save_path)
        if found is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", save_path)
        else:
            state = model.load_checkpoint(found[1])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, path = int(state["epoch"]), found[1]
            log.info("resumed from %s (epoch %d)", found[1], start_epoch)
    write_json(save_path / "train_args.json", vars(args))

    for epoch in range(start_epoch, args.epoch):
        # every epoch draws from its own streams, so a resumed run repeats an uninterrupted one
        dataset.set_epoch(epoch)
        torch.manual_seed(args.seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        model.heads.train()
        total, steps, t0 = 0.0, 0, time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epoch}", dynamic_ncols=True)
        for batch in bar:
            images, masks = batch.image.to(device), batch.mask.to(device)
            feats = bb(images, with_embedding=args.align != "exhaustive")
            loss = images.new_zeros(())
            for c in sorted(set(batch.cls_name)):
                sel = [i for i, name in enumerate(batch.cls_name) if name == c]
                sel_t = torch.tensor(sel, device=device)
                sub = BackboneOutput(tokens=[t[sel_t] for t in feats.tokens],
                                  embedding=None if feats.embedding is None else feats.embedding[sel_t],
                                  grid=feats.grid)
                maps = model.score_features(sub, banks[c], align=args.align)
                loss = loss + segmentation_loss(maps, masks[sel_t]) * len(sel) / len(batch.cls_name)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        path = save_path / f"epoch_{epoch + 1}.pth"
        atomic_torch_save(model.checkpoint_state(optimizer=optimizer.state_dict(), epoch=epoch + 1,
                                                 seed=args.seed, dataset=args.dataset), path)
        log.info("epoch %d/%d  loss %.4f  %.1fs  -> %s", epoch + 1, args.epoch, total / max(steps, 1),
                 time.time() - t0, path)
    return path


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"train.py: error: {err}")
