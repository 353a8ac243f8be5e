"""FASL checkpoints: the file format, reading one, and the config it records.

A checkpoint holds the trainable heads' state plus the config that built them (backbone name,
widths, blocks, head layout; see ``FASL.config``), written by train.py and loaded with
``torch.load(..., weights_only=True)``. Files written before a config key existed are read in
today's keys (``normalize_config``); a config that does not fit the model is refused with every
differing field named (``config_mismatches``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.asl import HeadLayout
from models.backbone import unreadable_file_reason
from utils.cli import InputFileNotFoundError, InputValueError

CHECKPOINT_FORMAT = "fasl-heads-v1"

# what a checkpoint's backbone and heads must agree on (image_size may differ: the heads see features)
BACKBONE_KEYS = ("family", "model", "widths", "depth", "patch_size", "blocks", "activation", "neighbourhood")
# what stored features (a references file's bank) must agree on besides: the reflected border changes the
# features near the image's edge, which trained heads take in their stride (as they take another image size)
FEATURE_KEYS = ("image_size", "border_pad")
HEAD_KEYS = ("input_bn", "nam", "hidden_bias", "nam_residual", "fd_residual", "head_input")


class CheckpointMismatch(InputValueError):
    """A checkpoint was trained for a different backbone configuration."""


def normalize_config(config: dict) -> dict:
    """A checkpoint's config in today's keys: files written before a key was recorded get the
    value they were built with (open_clip family, GELU, one width for all blocks, per-block NAMs,
    biased Linears)."""
    config = dict(config)
    config.setdefault("family", "open_clip")
    config.setdefault("neighbourhood", 1)  # files from before --neighbourhood: plain patches
    config.setdefault("border_pad", 0)  # files from before --border_pad: borders encoded as they are
    if config["family"] == "open_clip":
        config.setdefault("activation", "gelu")
    if "widths" not in config and "width" in config:
        config["widths"] = [config["width"]] * len(config.get("blocks", []))
    config.pop("width", None)
    layout = HeadLayout.from_config(config.get("widths", []), config).to_config()
    return {**config, **layout}


def config_mismatches(mine: dict, config: dict, source: str = "checkpoint", same_image_size: bool = False,
                      heads: bool = True) -> list[str]:
    """Every field of a recorded ``config`` (normalised here) that does not fit the model whose
    config is ``mine``, one line each: the backbone, the head layout (unless ``heads`` is False),
    random vs pretrained weights and, with ``same_image_size`` (stored features), the input size and
    the reflected border. Empty: it fits."""
    config = normalize_config(config)
    keys = BACKBONE_KEYS + (HEAD_KEYS if heads else ()) + (FEATURE_KEYS if same_image_size else ())
    diffs = [f"{k}: {source} has {config.get(k)!r}, this model has {mine[k]!r}" for k in keys
             if config.get(k) != mine[k]]
    if (config.get("pretrained") is None) != (mine["pretrained"] is None):
        # heads fitted to random features mean nothing on real ones, and the other way round
        diffs.append(f"pretrained: {source} has {config.get('pretrained')!r}, this model has "
                     f"{mine['pretrained']!r} (random and pretrained features do not mix)")
    return diffs


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A FASL checkpoint's contents (tensors and plain values only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated file, or one holding pickled objects
        raise CheckpointMismatch(f"{path} cannot be read as a FASL checkpoint: {unreadable_file_reason(err)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "config" not in state:
        raise CheckpointMismatch(f"{path} is not a FASL checkpoint (format {CHECKPOINT_FORMAT})")
    return state
