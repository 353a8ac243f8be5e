"""LFE window geometry: split a batch into overlapping patch-aligned windows and merge back.

Windows are measured in patches. Starts run from 0 in steps of ``stride``; when the stride does
not tile the grid, one more window is placed flush with the far border so every patch is
covered. All functions are pure tensor code, testable without CLIP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets (in patches) of windows of ``size`` along an axis of ``length`` patches."""
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1 (got size={size}, stride={stride})")
    if size > length:
        raise ValueError(f"window size {size} is larger than the patch grid ({length})")
    if stride > size:
        raise ValueError(f"window stride {stride} is larger than the window size {size}: patches would be skipped")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)  # last window flush with the border
    return starts


@dataclass(frozen=True)
class WindowGrid:
    """Geometry of the windows over a (gh, gw) patch grid.

    starts_y: (ny,), starts_x: (nx,) window origins in patches.
    patch_index: (nw, size * size) flat index (row-major in the grid) of every window patch,
        windows ordered row-major over (ny, nx).
    counts: (gh * gw,) how many windows cover each patch (>= 1), for the merge's average;
        computed once here so merging never reads a size back from the device.
    """

    grid: tuple[int, int]
    size: int
    stride: int
    starts_y: torch.Tensor
    starts_x: torch.Tensor
    patch_index: torch.Tensor
    counts: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.starts_y), len(self.starts_x))

    @property
    def num_windows(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def apply(self, fn) -> "WindowGrid":
        """The same geometry with ``fn`` applied to each tensor (what ``nn.Module._apply`` passes)."""
        return WindowGrid(self.grid, self.size, self.stride, fn(self.starts_y), fn(self.starts_x),
                          fn(self.patch_index), fn(self.counts))

    def to(self, device: torch.device | str) -> "WindowGrid":
        return self.apply(lambda t: t.to(device))


def window_grid(grid: tuple[int, int], size: int, stride: int) -> WindowGrid:
    """Windows of ``size`` x ``size`` patches, step ``stride``, covering every patch of ``grid``."""
    gh, gw = grid
    starts_y = torch.tensor(window_starts(gh, size, stride))
    starts_x = torch.tensor(window_starts(gw, size, stride))
    offsets = torch.arange(size)
    rows = starts_y[:, None] + offsets  # [ny, size]
    cols = starts_x[:, None] + offsets  # [nx, size]
    flat = rows[:, None, :, None] * gw + cols[None, :, None, :]  # [ny, nx, size, size]
    return WindowGrid(
        grid=(gh, gw), size=size, stride=stride, starts_y=starts_y, starts_x=starts_x,
        patch_index=flat.reshape(-1, size * size),
        counts=torch.bincount(flat.reshape(-1), minlength=gh * gw).float(),
    )


def split_windows(images: torch.Tensor, windows: WindowGrid, patch_size: int) -> torch.Tensor:
    """Cut every window of every image in one gather.

    images: (B, C, H, W) with H = gh * patch_size, W = gw * patch_size.
    Returns (B * nw, C, size * patch_size, size * patch_size), image-major, windows row-major.
    """
    B, C, H, W = images.shape
    gh, gw = windows.grid
    if (H, W) != (gh * patch_size, gw * patch_size):
        raise ValueError(f"images are {H}x{W}, the window grid expects {gh * patch_size}x{gw * patch_size}")
    span = windows.size * patch_size
    pix = torch.arange(span, device=images.device)
    rows = windows.starts_y.to(images.device)[:, None] * patch_size + pix  # [ny, span]
    cols = windows.starts_x.to(images.device)[:, None] * patch_size + pix  # [nx, span]
    crops = images[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [B, C, ny, nx, span, span]
    crops = crops.permute(0, 2, 3, 1, 4, 5)  # [B, ny, nx, C, span, span]
    return crops.reshape(B * windows.num_windows, C, span, span)


def merge_windows(values: torch.Tensor, windows: WindowGrid) -> torch.Tensor:
    """Average per-window patch values back onto the grid with one scatter-add.

    values: (B, nw, C, size, size) per-window maps.
    Returns (B, C, gh, gw): each patch gets the mean over the windows that contain it.
    """
    B, nw, C, s, _ = values.shape
    if nw != windows.num_windows or s != windows.size:
        raise ValueError(f"values {tuple(values.shape)} do not match {windows.num_windows} windows of {windows.size}")
    gh, gw = windows.grid
    index = windows.patch_index.to(values.device).reshape(-1)  # [nw * s * s]
    flat = values.permute(0, 2, 1, 3, 4).reshape(B, C, nw * s * s)  # [B, C, nw*s*s]
    summed = flat.new_zeros(B, C, gh * gw).index_add_(2, index, flat)
    counts = windows.counts.to(device=flat.device, dtype=flat.dtype)  # [gh*gw], all >= 1
    return (summed / counts).reshape(B, C, gh, gw)


def neighbour_windows(shape: tuple[int, int], radius: int) -> torch.Tensor:
    """For each window, the (2r+1)^2 windows at the same and neighbouring positions.

    shape: (ny, nx) window layout. Returns (nw, (2r+1)^2) distinct window indices. Near the
    border the neighbourhood is shifted inward (it always contains the window itself), so no
    candidate is repeated; a layout smaller than the neighbourhood contributes all its windows.
    """
    ny, nx = shape
    sy, sx = min(2 * radius + 1, ny), min(2 * radius + 1, nx)  # neighbourhood side, fitted to the layout
    oy = (torch.arange(ny) - radius).clamp(0, ny - sy)  # [ny] first row of each neighbourhood
    ox = (torch.arange(nx) - radius).clamp(0, nx - sx)  # [nx]
    iy = oy[:, None, None, None] + torch.arange(sy)[None, None, :, None]  # [ny, 1, sy, 1]
    ix = ox[None, :, None, None] + torch.arange(sx)[None, None, None, :]  # [1, nx, 1, sx]
    return (iy * nx + ix).reshape(ny * nx, -1)
