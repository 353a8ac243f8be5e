"""FASL model code: backbone, memory bank, FD, ASL heads + NAM, LFE windows."""
from __future__ import annotations

from typing import Sequence

import torch


def build_fasl(model: str, pretrained: str | None, blocks: Sequence[int], image_size: int,
               device: torch.device | str = "cpu", input_bn: bool = True,
               precision: str = "auto"):
    """Backbone + untrained heads on ``device``; load a checkpoint with ``load_checkpoint``."""
    from models.backbone import Backbone
    from models.fasl import FASL

    backbone = Backbone(model, pretrained=pretrained, blocks=blocks, image_size=image_size, device=device,
                        precision=precision)
    return FASL(backbone, input_bn=input_bn)
