"""FASL: backbone + memory bank + FD + ASL/NAM + LFE, composed.

Data flow (DESIGN.md): tokens -> align against the class memory -> deviation |f - f_ref| ->
per-block ASL head -> NAM -> mean over blocks, upsampled; LFE re-encodes overlapping windows,
scores them the same way, merges them by averaging overlaps, and blends with the global map.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.asl import HeadLayout, ScoreHeads, ScoreMaps
from models.backbone import Backbone, BackboneOutput
# checkpoint I/O lives in models/checkpoint.py; its names stay importable from here
from models.checkpoint import (BACKBONE_KEYS, CHECKPOINT_FORMAT, HEAD_KEYS, CheckpointMismatch,  # noqa: F401
                               config_mismatches, normalize_config, read_checkpoint)
from models.fd import fd_scores
from models.hardware import cpu_has_amx
from models.lfe import WindowGrid, merge_windows, split_windows, window_grid
from models.memory import ALIGN_MODES, DEFAULT_MAX_BYTES, Alignment, MemoryBank
from utils.cli import InputValueError

WINMODES = ("nan", "mul", "onlywin")
SCORE_MODES = ("fasl", "fd", "merged")
SEARCH_PRECISIONS = ("auto", "exact", "bf16")


def mode_uses_heads(mode: str) -> bool:
    """Scoring modes that need trained heads (a checkpoint): all but ``fd``."""
    return mode != "fd"


def search_dtype(precision: str, device: torch.device, small: bool = False) -> torch.dtype | None:
    """The alignment search's matmul dtype for ``--search_precision`` on ``device``.

    ``exact``: the bank's own dtype (None). ``bf16``: bfloat16. ``auto``: bfloat16 on CPUs with
    AMX for the large searches (the global map; LFE windows under ``exhaustive``), the bank's
    dtype elsewhere (on CUDA that is already fp16 under ``--precision auto``). ``small``: the
    search compares each query patch with a few hundred patches only (LFE windows under
    ``image_index`` / ``position``); there the fp32 matmul is cheap and the low-precision
    shortlist's exact re-ranking would cost more than it saves, so ``auto`` stays exact.
    A low-precision search shortlists candidates that exact dot products then decide between
    (models/memory.py), and the heads read the picked features from the stored bank.
    """
    if precision not in SEARCH_PRECISIONS:
        raise ValueError(f"search_precision must be one of {SEARCH_PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and not small and torch.device(device).type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def resolved_search_dtype(model: "FASL", cfg: "InferenceConfig", windows: bool = False) -> str:
    """What ``cfg.search_precision`` searches the global map (or, ``windows``, the LFE windows)
    in on ``model``'s device, for the record (results.json, predictions.json, the benchmark):
    e.g. 'bfloat16' or 'float32'."""
    dtype = model.search_dtype_for(cfg, windows) or model.bank_dtype
    return str(dtype).replace("torch.", "")


@dataclass
class InferenceConfig:
    """How a batch is scored.

    mode: ``fasl`` (trained ASL heads), ``fd`` (training-free 1 - similarity) or ``merged``
        (the two summed, as the paper's text describes and the reference code left commented out).
    use_nam: refine head outputs with NAM (``fasl`` and ``merged``).
    winmode: ``nan`` global only, ``mul`` (1 - w) * global + w * window, ``onlywin`` windows only.
    win_size, win_stride: LFE window size and step in patches; win_weight: w above.
    align: ``exhaustive``, ``image_index`` or ``position`` (see models/memory.py).
    win_radius: neighbourhood radius (in window steps) of ``position`` alignment.
    win_topk: ``position`` searches only this many of the neighbourhood's reference windows,
        the most similar by window embedding (0 = all k * (2r+1)^2 of them).
    out_size: side of the returned score map.
    window_batch: windows per backbone call; max_bytes: similarity-matrix budget.
    search_precision: ``auto`` (bf16 search on CPUs with AMX for the large searches, the
        bank's dtype elsewhere), ``exact`` (the bank's dtype) or ``bf16``; see ``search_dtype``.
    """

    mode: str = "fasl"
    use_nam: bool = True
    winmode: str = "nan"
    win_size: int = 13
    win_stride: int = 2
    win_weight: float = 0.5
    align: str = "exhaustive"  # the reference code's search (the paper's numbers); image_index is faster
    win_radius: int = 1
    win_topk: int = 4
    out_size: int = 240
    window_batch: int = 256
    max_bytes: int = DEFAULT_MAX_BYTES
    search_precision: str = "auto"

    def __post_init__(self):
        if self.search_precision not in SEARCH_PRECISIONS:
            raise ValueError(f"search_precision must be one of {SEARCH_PRECISIONS}, got {self.search_precision!r}")
        if self.mode not in SCORE_MODES:
            raise ValueError(f"mode must be one of {SCORE_MODES}, got {self.mode!r}")
        if self.winmode not in WINMODES:
            raise ValueError(f"winmode must be one of {WINMODES}, got {self.winmode!r}")
        if self.align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {self.align!r}")
        if not 0.0 <= self.win_weight <= 1.0:
            raise ValueError(f"win_weight must lie in [0, 1], got {self.win_weight}")
        if not 1 <= self.win_stride <= self.win_size:
            raise ValueError(f"win_stride must lie in [1, win_size={self.win_size}], got {self.win_stride}")
        for name in ("win_radius", "win_topk"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("window_batch", "out_size", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_args(cls, args, out_size: int) -> "InferenceConfig":
        """From the flags of models/flags.py ``add_inference_args`` (shared by every program): a
        value refused is the user's, an :class:`InputValueError` (built in code, a ValueError)."""
        try:
            return cls(mode=args.mode, use_nam=args.nam, winmode=args.winmode, win_size=args.win_size,
                       win_stride=args.win_stride, win_weight=args.win_weight, align=args.align,
                       win_radius=args.win_radius, win_topk=args.win_topk, search_precision=args.search_precision,
                       window_batch=args.window_batch, out_size=out_size)
        except ValueError as err:
            raise InputValueError(str(err)) from err

    @property
    def uses_windows(self) -> bool:
        return self.winmode != "nan"

    @property
    def uses_heads(self) -> bool:
        """Whether the trained ASL heads (a checkpoint) take part: modes ``fasl`` and ``merged``."""
        return mode_uses_heads(self.mode)

    @property
    def uses_fd(self) -> bool:
        """Whether the training-free FD map takes part: modes ``fd`` and ``merged``."""
        return self.mode != "fasl"


@dataclass
class Prediction:
    """score_map: (B, H, W) pixel anomaly scores in [0, 1]; image_score: (B,); single_score: (B,) or
    None: a lot-aware prediction's image scores of each image against the references alone (what
    ``--lot off`` gives, post-processed), on the scale of the references-only thresholds;
    known_match: (B,) or None: how much closer some patch of each image lies to a known defect
    than to the good parts (models/lot.py ``LotScorer.set_known``; > 0: closer to the defect)."""

    score_map: torch.Tensor
    image_score: torch.Tensor
    single_score: torch.Tensor | None = None
    known_match: torch.Tensor | None = None


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) score grids -> (B, C, size, size), bilinear with corners aligned (the
    reference code's choice for both its training loss and its test maps)."""
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)


def _no_timer(name: str) -> ContextManager:
    return contextlib.nullcontext()


class FASL(nn.Module):
    """The frozen backbone plus the trainable per-block ASL heads and NAMs."""

    def __init__(self, backbone: Backbone, layout: HeadLayout | None = None):
        super().__init__()
        self.backbone = backbone
        self.layout = layout or HeadLayout(tuple(backbone.widths))
        if tuple(self.layout.widths) != tuple(backbone.widths):
            raise ValueError(f"head widths {list(self.layout.widths)} do not fit the backbone's {list(backbone.widths)}")
        self.heads = ScoreHeads(self.layout)
        self.heads.to(backbone.device)
        self.nam_trained = True  # False once a checkpoint trained with --no-nam is loaded

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def bank_dtype(self) -> torch.dtype:
        """Banks are kept in the features' dtype: float16 on CUDA, float32 on CPU by default."""
        return self.backbone.feature_dtype

    # ----------------------------------------------------------------- checkpoints
    def config(self) -> dict:
        return {**self.backbone.config(), **self.layout.to_config()}

    def checkpoint_state(self, **extra) -> dict:
        """Trainable state + the config that built it; loadable with weights_only=True."""
        return {"format": CHECKPOINT_FORMAT, "config": self.config(), "heads": self.heads.state_dict(), **extra}

    def check_config(self, config: dict, source: str = "checkpoint", same_image_size: bool = False,
                     heads: bool = True) -> None:
        """Raise CheckpointMismatch naming every field of ``config`` that does not fit this model:
        the backbone, the head layout (unless ``heads`` is False: features stored for scoring
        that uses no heads), random vs pretrained weights and, with ``same_image_size`` (features
        stored at some size, as a references file's), the input size. Weights named differently
        (an open_clip tag vs a local copy of its file) only warn."""
        mine, config = self.config(), normalize_config(config)
        diffs = config_mismatches(mine, config, source, same_image_size, heads)
        if diffs:
            raise CheckpointMismatch(f"{source} does not fit this backbone ({'; '.join(diffs)})")
        if config.get("pretrained") != mine["pretrained"]:  # e.g. the tag vs a local copy of its file
            warnings.warn(f"{source} was made with pretrained={config.get('pretrained')!r}, this model uses "
                          f"{mine['pretrained']!r}: make sure they are the same weights", stacklevel=2)

    def load_checkpoint(self, path: str | Path) -> dict:
        """Load heads from a checkpoint file; returns the whole (tensor/primitive) state."""
        return self.apply_checkpoint(read_checkpoint(path, self.device), path)

    def apply_checkpoint(self, state: dict, path: str | Path = "checkpoint") -> dict:
        """Load heads from a checkpoint's state (as ``read_checkpoint`` returns it); returns it."""
        self.check_config(state["config"], source=f"checkpoint {path}")
        try:
            self.heads.load_state_dict(state["heads"])
        except RuntimeError as err:
            raise CheckpointMismatch(f"checkpoint {path}: its heads do not fit this model: {err}") from err
        self.nam_trained = bool(state.get("run", {}).get("nam", True))
        return state

    # ----------------------------------------------------------------- memory
    def window_grid(self, win_size: int, win_stride: int) -> WindowGrid:
        """The LFE windows of this model's input grid, on the model's device."""
        g = self.backbone.image_size // self.backbone.patch_size
        return window_grid((g, g), win_size, win_stride).to(self.device)

    def windows_for(self, cfg: InferenceConfig) -> WindowGrid | None:
        """The window grid ``cfg`` needs (None for winmode ``nan``)."""
        return self.window_grid(cfg.win_size, cfg.win_stride) if cfg.uses_windows else None

    @torch.no_grad()
    def build_memory(
        self, references: torch.Tensor, windows: WindowGrid | None = None, window_batch: int = 256
    ) -> MemoryBank:
        """references: (k, 3, S, S) normalised good images -> the class's MemoryBank
        (global tokens and embeddings; with ``windows`` also every reference window's)."""
        references = references.to(self.device)
        windows = windows.to(self.device) if windows is not None else None  # index tensors live with the bank
        bank = MemoryBank(k=references.shape[0], windows=windows)
        feats = self.backbone(references)
        bank.global_memory.fill(feats.tokens, feats.embedding, dtype=self.bank_dtype)
        if windows is not None:
            crops = split_windows(references, windows, self.backbone.patch_size)  # [k*nw, 3, s*P, s*P]
            wfeats = self.backbone(crops, chunk=window_batch)
            bank.window_memory.fill(wfeats.tokens, wfeats.embedding, dtype=self.bank_dtype)
        return bank

    # ----------------------------------------------------------------- training
    def align_batch(self, feats: BackboneOutput, banks: MemoryBank | Sequence[MemoryBank],
                    align: str = "exhaustive") -> list[torch.Tensor]:
        """Each image's aligned reference tokens, searched in its own bank.

        feats: L x (B, N, W_l) tokens (+ embedding); banks: one bank for the whole batch, or one
        per image (its class's; images sharing a bank object are aligned in one search).
        Returns L x (B, N, W_l) aligned reference features, in batch order.
        """
        B = feats.tokens[0].shape[0]
        if isinstance(banks, MemoryBank):
            return banks.align_global(feats.tokens, feats.embedding, mode=align).aligned
        if len(banks) != B:
            raise ValueError(f"{len(banks)} banks for a batch of {B} images")
        groups: dict[int, list[int]] = {}
        for i, bank in enumerate(banks):
            groups.setdefault(id(bank), []).append(i)
        aligned = [torch.empty_like(t) for t in feats.tokens]  # each [B, N, W_l]
        for members in groups.values():
            index = torch.tensor(members, device=feats.tokens[0].device)
            sub = feats.select(index)
            part = banks[members[0]].align_global(sub.tokens, sub.embedding, mode=align).aligned
            for full, piece in zip(aligned, part):
                full.index_copy_(0, index, piece.to(full.dtype))
        return aligned

    def score_features(self, feats: BackboneOutput, banks: MemoryBank | Sequence[MemoryBank],
                       align: str = "exhaustive", use_nam: bool = True, heads: nn.Module | None = None) -> ScoreMaps:
        """Raw (and NAM) score grids of already-encoded images, L x (B, 2, h, w) each.

        Every image is aligned against its own bank (``align_batch``) and the whole batch's
        deviations go through the heads in one call, so each BatchNorm sees the batch at once
        and updates its running statistics once per call, as in the reference code.
        heads: the module to call instead of ``self.heads`` (a DistributedDataParallel wrapper of it).
        """
        aligned = self.align_batch(feats, banks, align)
        return (heads or self.heads)(self.heads.inputs(feats.tokens, aligned), feats.grid, use_nam=use_nam)

    def forward(self, images: torch.Tensor, banks: MemoryBank | Sequence[MemoryBank], align: str = "exhaustive",
                use_nam: bool = True, heads: nn.Module | None = None) -> ScoreMaps:
        """Training forward: images (B, 3, S, S), each with its class's bank (or one bank for
        all) -> every block's raw and (``use_nam``) NAM maps. ``heads``: see ``score_features``.
        An empty batch (a process of a data-parallel run holding no image of a step) still runs
        the heads, on no rows, so the processes' collectives stay in step."""
        if images.shape[0] == 0:
            g = self.backbone.image_size // self.backbone.patch_size
            empty = [torch.zeros(0, g * g, w, device=self.device) for w in self.heads.input_widths]
            return (heads or self.heads)(empty, (g, g), use_nam=use_nam)
        feats = self.backbone(images.to(self.device), with_embedding=align != "exhaustive")
        return self.score_features(feats, banks, align, use_nam, heads)

    # ----------------------------------------------------------------- inference
    def search_dtype_for(self, cfg: InferenceConfig, windows: bool) -> torch.dtype | None:
        """The search dtype of the global (or, ``windows``, the LFE window) alignment under ``cfg``
        on this model's device; None = the bank's own. Window searches under ``image_index`` /
        ``position`` are the small ones (see ``search_dtype``)."""
        return search_dtype(cfg.search_precision, self.device, small=windows and cfg.align != "exhaustive")

    def _block_scores(self, tokens, embedding, grid, bank, cfg: InferenceConfig, windows: bool, timer,
                      alignments: dict | None = None):
        """Per-block scores on the patch grid from one alignment: FD (Q, L, h, w) for modes
        ``fd`` / ``merged`` and head probabilities (Q, L, 2, h, w) for ``fasl`` / ``merged``
        (None where the mode needs none). ``alignments``: see ``score``."""
        align = bank.align_windows if windows else bank.align_global
        extra = {"radius": cfg.win_radius, "topk": cfg.win_topk} if windows else {}
        search_dtype = self.search_dtype_for(cfg, windows)
        key = (id(tokens[0]), id(bank), windows, cfg.align, search_dtype, tuple(extra.items()))
        cached = alignments.get(key) if alignments is not None else None
        if cached is not None and cached.tokens is tokens[0] and cached.bank is bank:  # not a recycled id
            alignment = cached.alignment
        else:
            with timer("align"):
                alignment = align(tokens, embedding, mode=cfg.align, gather=False, max_bytes=cfg.max_bytes,
                                  search_dtype=search_dtype, **extra)
            if alignments is not None:
                alignments[key] = CachedAlignment(tokens[0], bank, windows, alignment)
        Q, L = tokens[0].shape[0], len(tokens)
        fd = fd_scores(alignment.similarity).reshape(Q, L, *grid) if cfg.uses_fd else None
        probs = None
        if cfg.uses_heads:
            memory = bank.window_memory if windows else bank.global_memory
            with timer("heads"):
                probs = torch.stack(self.heads.aligned_probs(tokens, alignment.index, memory.tokens, grid), dim=1)
        return fd, probs  # [Q, L, h, w], [Q, L, 2, h, w]

    def _anomaly_grid(self, fd, probs, cfg: InferenceConfig, timer) -> torch.Tensor:
        """(B, L, G, G) per-block anomaly scores: FD; or the heads' anomalous probability, through
        the NAM when ``use_nam``; or, ``merged``, the two summed as the line the reference code
        left commented out does it (ASL map + FD summed over blocks: ASL_l + L * FD_l per block)."""
        out = None
        if probs is not None:
            with timer("heads"):
                per_block = list(probs.unbind(1))  # L x [B, 2, G, G]
                refined = self.heads.refine(per_block) if cfg.use_nam else per_block
                out = torch.stack([p[:, 1] for p in refined], dim=1)
        if fd is not None:
            out = fd if out is None else out + fd.shape[1] * fd
        return out

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        bank: MemoryBank,
        cfg: InferenceConfig | None = None,
        timer: Callable[[str], ContextManager] | None = None,
    ) -> Prediction:
        """Score a batch of one class. images: (B, 3, S, S) -> Prediction at cfg.out_size.

        timer: optional ``timer(stage)`` context manager factory (the benchmark's stopwatch);
        stages: backbone_global, backbone_windows, align, heads, merge.
        """
        cfg = cfg or InferenceConfig()
        timer = timer or _no_timer
        with self._scoring(cfg):
            return self._score(self._encode(images, cfg, timer, self._bank_windows(bank, cfg)), bank, cfg, timer)

    @contextlib.contextmanager
    def _scoring(self, cfg: InferenceConfig):
        """Around every scoring call: refuse NAM on heads trained without it, and run the heads
        in eval mode (BatchNorm running statistics), restoring their train/eval mode after."""
        if cfg.uses_heads and cfg.use_nam and not self.nam_trained:
            raise InputValueError("these heads were trained without NAM (train.py --no-nam): score them with --no-nam "
                                  "(useNAM 0)")
        was_training = self.heads.training
        self.heads.eval()
        try:
            yield
        finally:
            self.heads.train(was_training)

    @staticmethod
    def _bank_windows(bank: MemoryBank, cfg: InferenceConfig) -> WindowGrid | None:
        """The bank's window grid when ``cfg`` scores LFE windows (an error if it has none)."""
        if not cfg.uses_windows:
            return None
        if bank.windows is None:
            raise RuntimeError("winmode needs a memory bank built with windows")
        return bank.windows

    @torch.no_grad()
    def predict_all(self, images: torch.Tensor, bank: MemoryBank, cfg: InferenceConfig | None = None,
                    batch_size: int = 8, progress: Callable | None = None) -> Prediction:
        """``predict`` over (N, 3, S, S) images in batches of ``batch_size``; the result is on the
        CPU in float32. progress: optional wrapper of the batch iterator (e.g. tqdm)."""
        starts = range(0, images.shape[0], batch_size)
        parts = [self.predict(images[i:i + batch_size], bank, cfg) for i in (progress(starts) if progress else starts)]
        if not parts:
            size = (cfg or InferenceConfig()).out_size
            return Prediction(torch.empty(0, size, size), torch.empty(0))
        return Prediction(torch.cat([p.score_map.float().cpu() for p in parts]),
                          torch.cat([p.image_score.float().cpu() for p in parts]))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, cfg: InferenceConfig | None = None) -> "Encoded":
        """The backbone features ``cfg`` scores images (B, 3, S, S) from: the global ones and the
        LFE windows'. Encode once, then ``score`` against several banks or settings that share
        ``winmode``, the window layout and the alignment's need for embeddings."""
        cfg = cfg or InferenceConfig()
        return self._encode(images, cfg, _no_timer, self.windows_for(cfg))

    @torch.no_grad()
    def score(self, encoded: "Encoded", bank: MemoryBank, cfg: InferenceConfig | None = None,
              alignments: dict | None = None) -> Prediction:
        """``predict`` from ``encode``'s features: the same numbers without re-encoding.

        alignments: a dict kept by the caller for one ``encoded`` batch and ``bank``; the
        alignments computed here are stored in it and reused by later calls that align the same
        way (the heads, the mode and NAM do not change an alignment), e.g. to score several
        checkpoints or modes from one search.
        """
        cfg = cfg or InferenceConfig()
        with self._scoring(cfg):
            return self._score(encoded, bank, cfg, _no_timer, alignments)

    def _encode(self, images, cfg: InferenceConfig, timer, windows: WindowGrid | None) -> "Encoded":
        images = images.to(self.device)
        need_embedding = cfg.align != "exhaustive"
        feats = wfeats = None
        if cfg.winmode != "onlywin":
            with timer("backbone_global"):
                feats = self.backbone(images, with_embedding=need_embedding)
        if cfg.uses_windows:
            with timer("backbone_windows"):
                crops = split_windows(images, windows, self.backbone.patch_size)  # [B*nw, 3, s*P, s*P]
                wfeats = self.backbone(crops, with_embedding=need_embedding, chunk=cfg.window_batch)
        return Encoded(images.shape[0], feats, wfeats, windows if cfg.uses_windows else None)

    def _score(self, enc: "Encoded", bank: MemoryBank, cfg: InferenceConfig, timer,
               alignments: dict | None = None) -> Prediction:
        B, L = enc.batch, len(self.backbone.blocks)
        parts: list[torch.Tensor] = []  # each [B, L, G, G]
        if cfg.winmode != "onlywin":
            if enc.features is None:
                raise ValueError(f"winmode {cfg.winmode} needs the global features: encode with that winmode")
            feats = enc.features
            fd, probs = self._block_scores(feats.tokens, feats.embedding, feats.grid, bank, cfg, False, timer,
                                           alignments)
            parts.append(self._anomaly_grid(fd, probs, cfg, timer))
        if cfg.uses_windows:
            wg, wfeats = self._bank_windows(bank, cfg), enc.window_features
            if wfeats is None or (enc.windows.grid, enc.windows.size, enc.windows.stride) != (wg.grid, wg.size, wg.stride):
                raise ValueError("the encoded windows do not match the bank's window layout: encode with the same "
                                 "winmode, win_size and win_stride")
            fd, probs = self._block_scores(wfeats.tokens, wfeats.embedding, wfeats.grid, bank, cfg, True, timer,
                                           alignments)
            s, nw = wg.size, wg.num_windows
            with timer("merge"):  # window scores averaged back onto the grid; the NAM comes after
                if fd is not None:  # [B*nw, L, s, s] -> [B, L, G, G]
                    fd = merge_windows(fd.reshape(B, nw, L, s, s), wg)
                if probs is not None:  # [B*nw, L, 2, s, s] -> [B, L, 2, G, G]
                    probs = merge_windows(probs.reshape(B, nw, L * 2, s, s), wg).reshape(B, L, 2, *wg.grid)
            parts.append(self._anomaly_grid(fd, probs, cfg, timer))
        return combine_maps(parts, cfg)


class CachedAlignment(NamedTuple):
    """An entry of ``FASL.score``'s ``alignments`` dict: one search, over the global patches or
    (``windows``) the LFE windows. ``tokens`` and ``bank`` are held so that a recycled ``id()``
    in the key is never mistaken for them."""

    tokens: torch.Tensor
    bank: MemoryBank
    windows: bool
    alignment: Alignment


@dataclass
class Encoded:
    """A batch's backbone features: global (None under ``onlywin``) and LFE windows' (None
    under ``nan``), as ``FASL.encode`` returns them."""

    batch: int
    features: BackboneOutput | None
    window_features: BackboneOutput | None
    windows: WindowGrid | None


def combine_maps(parts: list[torch.Tensor], cfg: InferenceConfig) -> Prediction:
    """Per-block anomaly grids -> the Prediction, as the reference code scores them.

    parts: the global and/or window grids, each (B, L, G, G) (global first under ``mul``).
    A part's image score is the mean over blocks of each block's maximum on the patch grid
    (before upsampling); its map is the mean over blocks, upsampled to ``cfg.out_size`` with
    corners aligned. ``mul`` blends the two parts with the window weight.
    """
    score_maps, image_scores = [], []
    for maps in parts:
        maps = maps.float()
        image_scores.append(maps.amax(dim=(2, 3)).mean(dim=1))  # [B]
        score_maps.append(upsample(maps.mean(dim=1, keepdim=True), cfg.out_size)[:, 0])  # [B, H, W]
    if cfg.winmode == "mul":
        w = cfg.win_weight
        return Prediction(score_map=(1 - w) * score_maps[0] + w * score_maps[1],
                          image_score=(1 - w) * image_scores[0] + w * image_scores[1])
    return Prediction(score_map=score_maps[0], image_score=image_scores[0])
