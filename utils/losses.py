"""Segmentation losses for the ASL head: focal loss on probabilities and soft dice loss."""

from __future__ import annotations

import torch


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               eps: float = 1e-6, check_target: bool = True) -> torch.Tensor:
    """Multi-class focal loss on probabilities, averaged over all pixels.

    loss = mean over pixels of ``-(1 - p_t)^gamma * log(p_t)``, where ``p_t`` is the
    probability given to the pixel's true class (clamped to ``[eps, 1]`` so log stays finite).
    With ``gamma = 0`` this is the negative log-likelihood of ``probs``.

    Args:
        probs: (B, C, H, W) class probabilities (after softmax), C = 2 for (normal, anomalous).
        target: (B, 1, H, W) or (B, H, W) class indices; for C = 2 a 0/1 mask.
        gamma: focusing parameter, >= 0.
        eps: lower clamp of ``p_t``.
        check_target: check that ``target`` holds class indices in ``[0, C)``; that reads the
            values back from the device (a host sync), so a training loop that calls this for many
            maps of one batch checks the batch once itself and passes False.

    Returns:
        scalar tensor.
    """
    if probs.dim() != 4:
        raise ValueError(f"probs must be (B, C, H, W), got shape {tuple(probs.shape)}")
    if target.dim() == 3:
        target = target.unsqueeze(1)
    b, c, h, w = probs.shape
    if tuple(target.shape) != (b, 1, h, w):
        raise ValueError(f"target must be (B, 1, H, W) = {(b, 1, h, w)}, got {tuple(target.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    index = target.long()
    if check_target:
        if target.is_floating_point() and not torch.equal(index.to(target.dtype), target):
            raise ValueError("target must hold integer class indices (binarise soft masks first)")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= c):
            raise ValueError(f"target values must lie in [0, {c - 1}]")
    p_t = probs.gather(1, index).clamp(min=eps, max=1.0)  # (B, 1, H, W)
    loss = -torch.pow(1.0 - p_t, gamma) * torch.log(p_t)
    return loss.mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss, per sample then averaged over the batch.

    loss = 1 - mean_b (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)

    Args:
        prob: (B, H, W) or (B, 1, H, W) anomalous-class probability in [0, 1].
        target: same number of elements per sample, 0/1 mask.
        smooth: added to numerator and denominator (keeps empty masks at loss 0).

    Returns:
        scalar tensor; ~0 for a perfect prediction, ~1 for the inverse one.
    """
    if prob.shape[0] != target.shape[0] or prob.numel() != target.numel():
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} do not match")
    b = prob.shape[0]
    p = prob.reshape(b, -1)                 # (B, H*W)
    t = target.reshape(b, -1).to(p.dtype)   # (B, H*W)
    dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)  # (B,)
    return 1.0 - dice.mean()
