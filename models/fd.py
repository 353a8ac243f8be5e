"""FD (Feature Discrepancy): split each query patch into its aligned normal reference and the
deviation from it. The deviation feeds the ASL heads; 1 - similarity is a training-free map."""
from __future__ import annotations

import torch


def deviation_rows(f: torch.Tensor, f_ref: torch.Tensor) -> torch.Tensor:
    """|f - f_ref| in float32 for the heads; any matching shapes (..., W)."""
    return torch.sub(f.float(), f_ref.float()).abs_()


def gathered_deviation(f: torch.Tensor, bank_rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """|f - bank_rows[index]| in float32 without an intermediate: (c, W), (M, W), (c,) -> (c, W).

    Same values as ``deviation_rows(f, bank_rows[index])``; the gathered copy is fresh, so the
    subtraction and the absolute value run in place on it.
    """
    ref = bank_rows.index_select(0, index)
    if ref.dtype != torch.float32:
        ref = ref.float()
    return ref.sub_(f).abs_()


HEAD_INPUTS = ("deviation", "signed", "deviation+query")


def check_head_input(kind: str) -> str:
    """``kind`` if it is one of HEAD_INPUTS; a ValueError naming the choices otherwise."""
    if kind not in HEAD_INPUTS:
        raise ValueError(f"unknown head input {kind!r} (one of {', '.join(HEAD_INPUTS)})")
    return kind


def head_input_width(width: int, kind: str = "deviation") -> int:
    """The width of a head's input rows for features ``width`` wide."""
    return 2 * width if check_head_input(kind) == "deviation+query" else width


def head_input_rows(f: torch.Tensor, f_ref: torch.Tensor, kind: str = "deviation") -> torch.Tensor:
    """What an ASL head sees of a patch f and its aligned reference f_ref, float32, (..., W) each:

    * ``deviation``: |f - f_ref| (the reference's);
    * ``signed``: f - f_ref, the deviation with its direction;
    * ``deviation+query``: |f - f_ref| and f itself, (..., 2W): what kind of patch deviates.

    For unit-length features 0.5 * sum of the first W channels squared is FD in every kind.
    """
    if check_head_input(kind) == "deviation":
        return deviation_rows(f, f_ref)
    d = torch.sub(f.float(), f_ref.float())
    if kind == "signed":
        return d
    return torch.cat([d.abs_(), f.float()], dim=-1)  # deviation+query


def gathered_head_input(f: torch.Tensor, bank_rows: torch.Tensor, index: torch.Tensor,
                        kind: str = "deviation") -> torch.Tensor:
    """``head_input_rows(f, bank_rows[index], kind)``: (c, W), (M, W), (c,) -> (c, W or 2W)."""
    if kind == "deviation":
        return gathered_deviation(f, bank_rows, index)
    return head_input_rows(f, bank_rows.index_select(0, index), kind)


def deviation(tokens: list[torch.Tensor], aligned: list[torch.Tensor]) -> list[torch.Tensor]:
    """|f - f_ref| per block. tokens, aligned: L x (Q, n, W). Returns L x (Q, n, W)."""
    return [deviation_rows(f, r) for f, r in zip(tokens, aligned)]


def fd_scores(similarity: list[torch.Tensor]) -> torch.Tensor:
    """Training-free FD score per block: 1 - max cosine similarity.

    similarity: L x (Q, n). Returns (Q, L, n) in float32; 0 where a patch has an exact match.
    """
    # clamp: rounding makes an exact self-match's similarity exceed 1 by an ulp
    return (1.0 - torch.stack([s.float() for s in similarity], dim=1)).clamp_(0.0, 2.0)
