"""FASL model code: backbone, memory bank, FD, ASL heads + NAM, LFE windows."""
from __future__ import annotations

from typing import Sequence

import torch


def build_fasl(model: str, pretrained: str | None, blocks: Sequence[int] | None, image_size: int,
               device: torch.device | str = "cpu", input_bn: bool = True, precision: str = "auto",
               checkpoint: str | None = None, quick_gelu: bool = False, shared_nam: bool = True,
               nam_residual: bool = False, neighbourhood: int = 1, fd_residual: bool = False, border_pad: int = 0,
               head_input: str = "deviation"):
    """Backbone + heads on ``device``: untrained (layout from ``input_bn`` / ``shared_nam`` /
    ``nam_residual`` / ``fd_residual`` / ``head_input``), or
    loaded from ``checkpoint``, whose own config decides the head layout (e.g. a
    ``--no-input_bn`` run's, or the per-block NAMs of older checkpoints)."""
    from models.asl import HeadLayout
    from models.backbone import build_backbone
    from models.checkpoint import normalize_config, read_checkpoint
    from models.fasl import FASL

    backbone = build_backbone(model, pretrained=pretrained, blocks=blocks, image_size=image_size, device=device,
                              precision=precision, quick_gelu=quick_gelu, neighbourhood=neighbourhood,
                              border_pad=border_pad)
    if checkpoint is not None:
        layout = HeadLayout.from_config(backbone.widths, normalize_config(read_checkpoint(checkpoint)["config"]))
    else:
        layout = HeadLayout(tuple(backbone.widths), input_bn=input_bn, shared_nam=shared_nam, nam_residual=nam_residual,
                            fd_residual=fd_residual, head_input=head_input)
    fasl = FASL(backbone, layout)
    if checkpoint is not None:
        fasl.load_checkpoint(checkpoint)
    return fasl


def build_fasl_from_args(args, device: torch.device | str, checkpoint: str | None = None, **layout):
    """``build_fasl`` from the backbone flags of models/flags.py ``add_backbone_args`` (every program)."""
    return build_fasl(args.model, args.pretrained, args.features_list, args.image_size, device,
                      precision=args.precision, checkpoint=checkpoint, quick_gelu=args.quick_gelu,
                      neighbourhood=getattr(args, "neighbourhood", 1), border_pad=getattr(args, "border_pad", 0),
                      **layout)
