"""Frozen open_clip ViT -> per-block L2-normalised patch tokens and a global embedding.

The wrapper only uses open_clip's public API: ``create_model`` to build (and, with a tag such
as ``openai`` or a local file, load) the model and ``VisionTransformer.forward_intermediates``
to read the blocks. A second input resolution (the LFE window size) is served by the same
weights: the positional embedding is interpolated to that grid once, cached, and swapped in for
the duration of the call.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TINY_MODEL = "fasl-tiny-vit"  # random-weight test/demo config, models/configs/fasl-tiny-vit.json
DEFAULT_BLOCKS = (6, 12, 18, 24)
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

open_clip.add_model_config(CONFIG_DIR)


def resolve_model_name(model: str) -> str:
    """Map ``--model`` (open_clip name, the tiny config's name or a config JSON path) to a name.

    A JSON path is registered with open_clip and its file stem becomes the model name, which is
    how open_clip names every architecture it knows.
    """
    if model.endswith(".json") or os.sep in model:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise ValueError(
            f"unknown model {model!r}: use an open_clip model name (e.g. ViT-L-14-336), "
            f"{TINY_MODEL!r}, or the path of an open_clip model-config JSON file"
        )
    return model


def _pretrained_arg(pretrained: str | None) -> str | None:
    if pretrained is None or str(pretrained).lower() in ("", "none", "random"):
        return None
    return str(pretrained)


@dataclass
class BackboneOutput:
    """Features of a batch at one resolution.

    tokens: L x (B, N, W) patch tokens of the chosen blocks, class token removed, L2-normalised.
    embedding: (B, D) global image embedding, L2-normalised (None when not requested).
    grid: (gh, gw) patch grid, N = gh * gw.
    """

    tokens: list[torch.Tensor]
    embedding: torch.Tensor | None
    grid: tuple[int, int]


class Backbone(nn.Module):
    """A frozen open_clip vision tower read at chosen 1-based blocks.

    Args:
        model: open_clip model name, ``fasl-tiny-vit`` or a model-config JSON path.
        pretrained: open_clip tag (``openai``; downloaded and cached by open_clip), a path to a
            local weights file, or None / "none" for random weights.
        blocks: 1-based block numbers whose patch tokens are returned.
        image_size: input resolution (square); must be a multiple of the patch size.
        device: torch device for the weights.
        precision: ``auto`` (float16 autocast on CUDA, float32 on CPU), ``fp32``, ``fp16`` or
            ``bf16``; the encoder runs under autocast in that dtype and features are kept in it.
    """

    def __init__(
        self,
        model: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        blocks: Sequence[int] = DEFAULT_BLOCKS,
        image_size: int = 518,
        device: torch.device | str = "cpu",
        precision: str = "auto",
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.model_name = resolve_model_name(model)
        pretrained = _pretrained_arg(pretrained)
        if pretrained is not None and not Path(pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if pretrained not in tags:
                raise FileNotFoundError(
                    f"pretrained weights file not found: {pretrained!r} is neither a file nor an open_clip tag of "
                    f"{self.model_name} (tags: {', '.join(tags) or 'none'})"
                )
        root_logger = logging.getLogger()
        level = root_logger.level
        if pretrained is None:
            # open_clip warns about random weights; here they were asked for explicitly.
            root_logger.setLevel(max(level, logging.ERROR))
        try:
            clip = open_clip.create_model(
                self.model_name,
                pretrained=pretrained,
                force_image_size=image_size,
                device=device,
                require_pretrained=pretrained is not None,
            )
        finally:
            root_logger.setLevel(level)
        self.visual = clip.visual
        del clip  # the text tower is never used
        if not hasattr(self.visual, "forward_intermediates") or not hasattr(self.visual, "transformer"):
            raise ValueError(f"model {self.model_name!r} is not an open_clip VisionTransformer")
        self.visual.requires_grad_(False)
        self.visual.eval()

        self.patch_size = int(self.visual.patch_size[0])
        self.depth = len(self.visual.transformer.resblocks)
        self.width = int(self.visual.conv1.out_channels)
        self.embed_dim = int(self.visual.output_dim)
        self.pretrained = pretrained
        if image_size % self.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {self.patch_size}")
        self.image_size = int(image_size)
        self.native_grid = tuple(int(g) for g in self.visual.grid_size)
        blocks = tuple(int(b) for b in blocks)
        bad = [b for b in blocks if not 1 <= b <= self.depth]
        if bad or not blocks:
            raise ValueError(
                f"blocks {list(blocks)} outside model {self.model_name!r} with {self.depth} blocks "
                f"(valid: 1..{self.depth})"
            )
        self.blocks = blocks
        cfg = getattr(self.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        auto = torch.float16 if self.device.type == "cuda" else torch.float32
        self.feature_dtype = PRECISIONS[precision] or auto

    # The backbone never trains: keep dropout/BN-free eval behaviour under model.train().
    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def config(self) -> dict:
        """What a checkpoint must agree with to be used on this backbone."""
        return {
            "model": self.model_name,
            "width": self.width,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "patch_size": self.patch_size,
            "blocks": list(self.blocks),
            "image_size": self.image_size,
            "pretrained": self.pretrained,
        }

    def _interpolated_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid not in self._pos_cache:
            pos = self.visual.positional_embedding.detach()  # shape = [1 + gh*gw, width]
            cls_pos, patch_pos = pos[:1], pos[1:]
            gh, gw = self.native_grid
            patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()  # [1, W, gh, gw]
            patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)  # [gh'*gw', W]
            self._pos_cache[grid] = torch.cat([cls_pos, patch_pos.to(pos.dtype)], dim=0)
        return self._pos_cache[grid]

    @contextlib.contextmanager
    def _at_grid(self, grid: tuple[int, int]) -> Iterator[None]:
        if grid == self.native_grid:
            yield
            return
        original = self.visual.positional_embedding
        self.visual.positional_embedding = nn.Parameter(self._interpolated_pos_embed(grid), requires_grad=False)
        try:
            yield
        finally:
            self.visual.positional_embedding = original

    @torch.no_grad()
    def forward(self, images: torch.Tensor, with_embedding: bool = True, chunk: int | None = None) -> BackboneOutput:
        """Encode images (B, 3, H, W) at any size the patch size divides.

        chunk: encode at most this many images per call (bounds activation memory for windows).
        Returns L2-normalised features in ``self.feature_dtype``.
        """
        B, _, H, W = images.shape
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {P}")
        grid = (H // P, W // P)
        indices = [b - 1 for b in self.blocks]
        chunk = chunk or B
        tokens_parts: list[list[torch.Tensor]] = []
        emb_parts: list[torch.Tensor] = []
        feat_dtype = self.feature_dtype
        use_amp = feat_dtype != torch.float32
        with self._at_grid(grid), torch.autocast(images.device.type, dtype=feat_dtype, enabled=use_amp):
            for start in range(0, B, chunk):
                out = self.visual.forward_intermediates(
                    images[start:start + chunk],
                    indices=indices,
                    stop_early=not with_embedding,
                    intermediates_only=not with_embedding,
                    output_fmt="NLC",
                )
                tokens_parts.append(
                    [F.normalize(t.float(), dim=-1).to(feat_dtype) for t in out["image_intermediates"]]
                )  # each [b, N, W]
                if with_embedding:
                    emb_parts.append(F.normalize(out["image_features"].float(), dim=-1).to(feat_dtype))
        tokens = [torch.cat(parts, dim=0) for parts in zip(*tokens_parts)]
        embedding = torch.cat(emb_parts, dim=0) if with_embedding else None
        return BackboneOutput(tokens=tokens, embedding=embedding, grid=grid)
