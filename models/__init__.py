"""FASL model code: backbone, memory bank, FD, ASL heads + NAM, LFE windows."""
from __future__ import annotations

from typing import Sequence

import torch


def build_fasl(model: str, pretrained: str | None, blocks: Sequence[int], image_size: int,
               device: torch.device | str = "cpu", input_bn: bool = True,
               precision: str = "auto", checkpoint: str | None = None):
    """Backbone + heads on ``device``: untrained, or loaded from ``checkpoint`` (whose own
    config decides the head layout, e.g. a ``--no_input_bn`` run's)."""
    from models.backbone import Backbone
    from models.fasl import FASL, read_checkpoint

    if checkpoint is not None:
        input_bn = bool(read_checkpoint(checkpoint)["config"].get("input_bn", True))
    backbone = Backbone(model, pretrained=pretrained, blocks=blocks, image_size=image_size, device=device,
                        precision=precision)
    fasl = FASL(backbone, input_bn=input_bn)
    if checkpoint is not None:
        fasl.load_checkpoint(checkpoint)
    return fasl
