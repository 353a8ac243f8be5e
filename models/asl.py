"""ASL (Anomaly Score Learning): a BN-MLP per block that maps deviation vectors to
(normal, anomalous) probabilities, and NAM, two 5x5 convolutions that refine a 2-channel
score grid with its neighbourhood."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.fd import gathered_deviation

HIDDEN = (512, 128, 32)


class ASLHead(nn.Module):
    """(..., W) deviation vectors -> (..., 2) probabilities (softmax over normal/anomalous).

    BatchNorm1d(W) (optional) -> [Linear -> BN -> ReLU] x 3 (512, 128, 32) -> Linear(32, 2).
    """

    def __init__(self, width: int, input_bn: bool = True, hidden: tuple[int, ...] = HIDDEN):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(width)] if input_bn else []
        dims = (width, *hidden)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], 2))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, W = x.shape
        logits = self.mlp(x.reshape(-1, W))  # [rows, 2]
        return logits.softmax(dim=-1).reshape(*lead, 2)

    @torch.no_grad()
    def folded(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The eval-mode MLP as affine layers (weight (out, in), bias (out,)), ReLU between them.

        Every BatchNorm (running statistics) is an affine map, so it is folded into the Linear
        next to it: the input BN into the first Linear's columns, the others into the rows of
        the Linear before them. Same function as ``forward`` in eval mode up to float rounding,
        without the BN passes over the activations (a tenth of the head's time at 1024 wide).
        """
        layers: list[list[torch.Tensor]] = []
        pending = None  # (scale, shift) of a BN that precedes the next Linear
        open_linear = False  # the last Linear has no activation after it yet
        for m in self.mlp:
            if isinstance(m, nn.BatchNorm1d):
                if m.running_var is None:
                    raise TypeError("cannot fold a BatchNorm without running statistics")
                scale = (m.running_var + m.eps).rsqrt()
                if m.weight is not None:
                    scale = scale * m.weight
                shift = -m.running_mean * scale
                if m.bias is not None:
                    shift = shift + m.bias
                if open_linear:
                    w, b = layers[-1]
                    layers[-1] = [w * scale[:, None], b * scale + shift]
                else:
                    pending = (scale, shift)
            elif isinstance(m, nn.Linear):
                w = m.weight
                b = m.bias if m.bias is not None else w.new_zeros(w.shape[0])
                if pending is not None:
                    b = b + w @ pending[1]
                    w = w * pending[0]
                    pending = None
                layers.append([w, b])
                open_linear = True
            elif isinstance(m, nn.ReLU):
                open_linear = False
            else:  # pragma: no cover - the head is built above from these three kinds
                raise TypeError(f"cannot fold {type(m).__name__}")
        return [(w.contiguous(), b.contiguous()) for w, b in layers]

    @staticmethod
    def apply_folded(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
        """(rows, W) deviations through ``folded()`` layers -> (rows, 2) probabilities."""
        last = len(layers) - 1
        for i, (w, b) in enumerate(layers):
            x = torch.addmm(b, x, w.t())
            if i < last:
                x.relu_()
        return x.softmax(dim=-1)


class NAM(nn.Module):
    """Neighbor Aggregation Module: (B, 2, h, w) probabilities -> refined (B, 2, h, w).

    Conv2d(2->6, 5x5, same) -> ReLU -> Conv2d(6->2, 5x5, same) -> softmax over channels;
    works on a grid of any size.
    """

    def __init__(self, channels: int = 6, kernel: int = 5):
        super().__init__()
        pad = kernel // 2
        self.net = nn.Sequential(
            nn.Conv2d(2, channels, kernel, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2, kernel, padding=pad),
        )

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(probs).softmax(dim=1)


@dataclass
class ScoreMaps:
    """Per-block score grids: raw (ASL) and refined (NAM), each L x (B, 2, h, w)."""

    raw: list[torch.Tensor]
    refined: list[torch.Tensor]


class ScoreHeads(nn.Module):
    """One ASL head and one NAM per block: the whole trainable part of FASL."""

    def __init__(self, width: int, num_blocks: int, input_bn: bool = True):
        super().__init__()
        self.heads = nn.ModuleList(ASLHead(width, input_bn) for _ in range(num_blocks))
        self.nams = nn.ModuleList(NAM() for _ in range(num_blocks))

    def patch_probs(self, deviations: list[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
        """deviations: L x (Q, n, W) with n = h * w. Returns L x (Q, 2, h, w) raw probabilities."""
        out = []
        for head, dev in zip(self.heads, deviations):
            Q = dev.shape[0]
            p = head(dev)  # [Q, n, 2]
            out.append(p.permute(0, 2, 1).reshape(Q, 2, *grid))  # [Q, 2, h, w]
        return out

    @torch.no_grad()
    def aligned_probs(
        self,
        tokens: list[torch.Tensor],
        index: list[torch.Tensor],
        bank: torch.Tensor,
        grid: tuple[int, int],
        chunk_rows: int = 8192,
    ) -> list[torch.Tensor]:
        """Inference path of ``patch_probs`` straight from alignment indices.

        tokens: L x (Q, n, W) queries; index: L x (Q, n) into ``bank[l].reshape(-1, W)``;
        bank: (L, R, m, W). Deviations are formed and scored ``chunk_rows`` patches at a time,
        so no (Q, n, W) aligned or deviation tensor is ever materialised (for LFE windows those
        are hundreds of MB per block). Returns L x (Q, 2, h, w), equal to ``patch_probs`` in eval
        mode: the heads always score with their running statistics here (BatchNorms folded into
        the Linears, see ``ASLHead.folded``), as per-chunk batch statistics would mean nothing.
        """
        out = []
        for head, query, idx, ref in zip(self.heads, tokens, index, bank):
            Q, n, W = query.shape
            flat_q, flat_idx, flat_ref = query.reshape(Q * n, W), idx.reshape(Q * n), ref.reshape(-1, W)
            probs = torch.empty(Q * n, 2, device=query.device)
            layers = head.folded()
            for start in range(0, Q * n, chunk_rows):
                rows = slice(start, start + chunk_rows)
                dev = gathered_deviation(flat_q[rows], flat_ref, flat_idx[rows])  # [c, W]
                probs[rows] = head.apply_folded(layers, dev)
            out.append(probs.reshape(Q, n, 2).permute(0, 2, 1).reshape(Q, 2, *grid))
        return out

    def refine(self, probs: list[torch.Tensor]) -> list[torch.Tensor]:
        """L x (B, 2, h, w) -> L x (B, 2, h, w) through each block's NAM."""
        return [nam(p) for nam, p in zip(self.nams, probs)]

    def forward(self, deviations: list[torch.Tensor], grid: tuple[int, int]) -> ScoreMaps:
        raw = self.patch_probs(deviations, grid)
        return ScoreMaps(raw=raw, refined=self.refine(raw))
