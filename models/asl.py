"""ASL (Anomaly Score Learning): a BN-MLP per block that maps deviation vectors to
(normal, anomalous) probabilities, and NAM, two 5x5 convolutions that refine a 2-channel
score grid with its neighbourhood."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.fd import check_head_input, gathered_head_input, head_input_rows, head_input_width
from utils.cli import InputValueError

HIDDEN = (512, 128, 32)


class ASLHead(nn.Module):
    """(..., W) deviation vectors -> (..., 2) probabilities (softmax over normal/anomalous).

    BatchNorm1d(W) (optional) -> [Linear -> BN -> ReLU] x 3 (512, 128, 32) -> Linear(32, 2).
    hidden_bias: give the Linears in front of a BatchNorm a bias. The reference has none (the BN
    that follows cancels a bias in training); checkpoints written before this was recorded have one.
    fd_residual: the head learns a correction to FD instead of a score of its own (not the
    reference's): the anomalous logit gets ``scale * BN(fd) + shift`` added, with
    ``fd = 1 - cos = |d|^2 / 2`` recovered from the deviation of unit-length features, and the
    last Linear starts at zero, so an untrained head scores ``sigmoid(scale * BN(fd) + shift)``,
    a monotone function of the block's FD.
    fd_channels: FD is computed from the first ``fd_channels`` input channels (the deviation's,
        when the input also carries the query feature: ``deviation+query``); default: all.
    """

    FD_INIT = (1.0, -2.0)  # scale, shift: a patch at the mean FD starts at p = 0.12, one 4 std above at 0.88

    def __init__(self, width: int, input_bn: bool = True, hidden: tuple[int, ...] = HIDDEN,
                 hidden_bias: bool = False, fd_residual: bool = False, fd_channels: int | None = None):
        super().__init__()
        self.fd_channels = width if fd_channels is None else int(fd_channels)
        layers: list[nn.Module] = [nn.BatchNorm1d(width)] if input_bn else []
        dims = (width, *hidden)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out, bias=hidden_bias), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], 2))
        self.mlp = nn.Sequential(*layers)
        self.fd_residual = fd_residual
        if fd_residual:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
            self.fd_norm = nn.BatchNorm1d(1, affine=False)
            self.fd_affine = nn.Parameter(torch.tensor(self.FD_INIT))

    def residual_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """(rows, W) deviations -> (rows, 2) logits added to the MLP's (FD's share), or None
        without ``fd_residual``. Uses the FD BatchNorm's batch statistics in training and its
        running ones in eval mode, as every BatchNorm of the head."""
        if not self.fd_residual:
            return None
        fd = 0.5 * x[:, :self.fd_channels].float().square().sum(dim=-1, keepdim=True)  # [rows, 1]
        anomalous = self.fd_affine[0] * self.fd_norm(fd) + self.fd_affine[1]
        return torch.cat([torch.zeros_like(anomalous), anomalous], dim=-1)  # [rows, 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, W = x.shape
        rows = x.reshape(-1, W)
        logits = self.mlp(rows)  # [rows, 2]
        extra = self.residual_logits(rows)
        if extra is not None:
            logits = logits + extra
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
    def apply_folded(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
                     extra: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, W) deviations through ``folded()`` layers -> (rows, 2) probabilities.
        extra: (rows, 2) logits added before the softmax (``residual_logits``)."""
        last = len(layers) - 1
        for i, (w, b) in enumerate(layers):
            x = torch.addmm(b, x, w.t())
            if i < last:
                x.relu_()
        if extra is not None:
            x = x + extra
        return x.softmax(dim=-1)


class NAM(nn.Module):
    """Neighbor Aggregation Module: (B, 2, h, w) probabilities -> refined (B, 2, h, w).

    Conv2d(2->6, 5x5, same) -> ReLU -> Conv2d(6->2, 5x5, same) -> softmax over channels;
    works on a grid of any size.

    residual: add the convolutions' output to the log-probabilities instead of replacing them,
    with the last convolution started at zero, so the NAM starts as the identity and learns a
    correction (not the reference's NAM, which starts as a random map of the probabilities and can
    collapse to "all normal" when defects are tiny).
    """

    def __init__(self, channels: int = 6, kernel: int = 5, residual: bool = False):
        super().__init__()
        pad = kernel // 2
        self.residual = residual
        self.net = nn.Sequential(
            nn.Conv2d(2, channels, kernel, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2, kernel, padding=pad),
        )
        if residual:
            nn.init.zeros_(self.net[2].weight)
            nn.init.zeros_(self.net[2].bias)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        out = self.net(probs)
        if self.residual:
            out = out + probs.clamp_min(1e-6).log()
        return out.softmax(dim=1)


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(sum) with its gradient: every process's gradient of the sum is the sum of all
    processes' gradients (torch.distributed carries both)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the rows of every process of a torch.distributed
    run, so data-parallel training normalises (and updates the running statistics) exactly as one
    process with the whole batch would. Outside a multi-process run, or in eval mode, it is
    ``nn.BatchNorm1d``.

    torch's ``nn.SyncBatchNorm`` does this for GPUs only; this one also runs over gloo on CPUs and
    takes processes holding no rows at all (the per-channel sums are exchanged by
    ``torch.distributed.all_reduce``, forward and backward).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # two passes over the processes' rows, as BatchNorm's own two-pass statistics: the mean,
        # then the mean squared deviation from it
        sums = _SumOverProcesses.apply(torch.cat([x.sum(0), x.new_full((1,), float(x.shape[0]))]))  # [C + 1]
        n = sums[-1]
        mean = sums[:-1] / n
        var = _SumOverProcesses.apply(((x - mean) ** 2).sum(0)) / n  # biased, as BN normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            # unbiased, as BN tracks it; n - 1 stays on the device (no host sync per step)
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1.0))
        out = (x - mean) * torch.rsqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


def global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm1d turned, in place, into a GlobalBatchNorm1d: the same
    Parameter and buffer objects (an optimizer built before keeps updating them), the same
    state-dict keys."""
    for m in module.modules():
        if type(m) is nn.BatchNorm1d:
            if not m.track_running_stats:
                raise ValueError("GlobalBatchNorm1d needs running statistics")
            m.__class__ = GlobalBatchNorm1d
    return module


@dataclass
class ScoreMaps:
    """Per-block score grids: raw (ASL) and refined (NAM), each L x (B, 2, h, w); ``refined`` is
    None when NAM is off."""

    raw: list[torch.Tensor]
    refined: list[torch.Tensor] | None


@dataclass(frozen=True)
class HeadLayout:
    """The architecture of the trainable part, recorded in every checkpoint.

    widths: each block's feature width (one ASL head per block).
    input_bn: a BatchNorm1d in front of each head.
    shared_nam: one NAM for every block and for the LFE windows, as in the reference code;
        False: one NAM per block (checkpoints written before the layout was recorded).
    hidden_bias: see :class:`ASLHead`.
    nam_residual: the NAM starts as the identity (see :class:`NAM`); not the reference's.
    fd_residual: the heads learn a correction to FD (see :class:`ASLHead`); not the reference's.
    head_input: what each head sees of a patch and its match (``models.fd.head_input_rows``):
        ``deviation`` (the reference's), ``signed`` or ``deviation+query``.
    """

    widths: tuple[int, ...]
    input_bn: bool = True
    shared_nam: bool = True
    hidden_bias: bool = False
    nam_residual: bool = False
    fd_residual: bool = False
    head_input: str = "deviation"

    def __post_init__(self):
        check_head_input(self.head_input)

    def to_config(self) -> dict:
        return {"input_bn": self.input_bn, "nam": "shared" if self.shared_nam else "per_block",
                "hidden_bias": self.hidden_bias, "nam_residual": self.nam_residual, "fd_residual": self.fd_residual, "head_input": self.head_input}

    @classmethod
    def from_config(cls, widths, config: dict) -> "HeadLayout":
        """The layout a checkpoint's config records; keys it lacks take the values of the
        checkpoints written before they were recorded (per-block NAMs, biased Linears)."""
        nam = config.get("nam", "per_block")
        if nam not in ("shared", "per_block"):
            raise InputValueError(f"unknown NAM layout {nam!r} in checkpoint config")
        return cls(tuple(int(w) for w in widths), bool(config.get("input_bn", True)), nam == "shared",
                   bool(config.get("hidden_bias", True)), bool(config.get("nam_residual", False)),
                   bool(config.get("fd_residual", False)), str(config.get("head_input", "deviation")))


class ScoreHeads(nn.Module):
    """One ASL head per block and the NAM (shared, or one per block): FASL's trainable part."""

    def __init__(self, layout: HeadLayout):
        super().__init__()
        self.layout = layout
        self.heads = nn.ModuleList(ASLHead(head_input_width(w, layout.head_input), layout.input_bn,
                                           hidden_bias=layout.hidden_bias, fd_residual=layout.fd_residual,
                                           fd_channels=w) for w in layout.widths)
        if layout.shared_nam:
            self.nam = NAM(residual=layout.nam_residual)
        else:
            self.nams = nn.ModuleList(NAM(residual=layout.nam_residual) for _ in layout.widths)

    def nam_for(self, block: int) -> NAM:
        return self.nam if self.layout.shared_nam else self.nams[block]

    @property
    def input_widths(self) -> tuple[int, ...]:
        """Each head's input width."""
        return tuple(head_input_width(w, self.layout.head_input) for w in self.layout.widths)

    def inputs(self, tokens: list[torch.Tensor], aligned: list[torch.Tensor]) -> list[torch.Tensor]:
        """L x (Q, n, W) patches and their aligned references -> L x (Q, n, input width): what the
        heads see (``layout.head_input``)."""
        return [head_input_rows(f, r, self.layout.head_input) for f, r in zip(tokens, aligned)]

    def patch_probs(self, deviations: list[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
        """deviations: L x (Q, n, input width) head inputs (``inputs``) with n = h * w. Returns
        L x (Q, 2, h, w) raw probabilities."""
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
                dev = gathered_head_input(flat_q[rows], flat_ref, flat_idx[rows], self.layout.head_input)
                probs[rows] = head.apply_folded(layers, dev, head.residual_logits(dev))
            out.append(probs.reshape(Q, n, 2).permute(0, 2, 1).reshape(Q, 2, *grid))
        return out

    def refine(self, probs: list[torch.Tensor]) -> list[torch.Tensor]:
        """L x (B, 2, h, w) -> L x (B, 2, h, w) through the NAM (each block's own when per-block)."""
        return [self.nam_for(i)(p) for i, p in enumerate(probs)]

    def forward(self, deviations: list[torch.Tensor], grid: tuple[int, int], use_nam: bool = True) -> ScoreMaps:
        raw = self.patch_probs(deviations, grid)
        return ScoreMaps(raw=raw, refined=self.refine(raw) if use_nam else None)
