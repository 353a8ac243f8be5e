"""A part's saved references: the memory bank of its good images and the decision thresholds fitted
on them, with everything both depend on. predict.py writes one with ``--save_refs`` and reads it
back with ``--load_refs``, so a production line pays for encoding its references once.

The file holds tensors and primitives only (``torch.load(weights_only=True)``). It is refused,
with the reason, when it does not fit the run: another backbone (``FASL.check_config``, the
checks every checkpoint goes through, plus the image size the bank was encoded at), another
window layout, or (unless both thresholds are given by hand) thresholds fitted with other
scoring settings, other heads or another false-alarm rate.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.backbone import unreadable_file_reason
from models.fasl import FASL, InferenceConfig, resolved_search_dtype
from models.memory import MemoryBank
from models.postprocess import MapPost
from models.thresholds import Thresholds
from utils.cli import InputFileNotFoundError, InputValueError
from utils.misc import atomic_torch_save

REFS_FORMAT = "fasl-refs-v2"
READABLE_FORMATS = ("fasl-refs-v1", REFS_FORMAT)  # v1 stacked the blocks' tokens into one tensor


def scoring_settings(cfg: InferenceConfig, post: MapPost | None = None) -> dict:
    """The settings that change the scores, hence the thresholds (unused ones left out; the map
    post-processing only where it is not the identity, so older files still match)."""
    s = {"mode": cfg.mode, "winmode": cfg.winmode, "align": cfg.align, "out_size": cfg.out_size}
    if post is not None and not post.is_identity:
        s["post"] = post.to_dict()
    if cfg.uses_heads:
        s["use_nam"] = cfg.use_nam
    if cfg.uses_windows:
        s.update(win_size=cfg.win_size, win_stride=cfg.win_stride)
        if cfg.align == "position":
            s.update(win_radius=cfg.win_radius, win_topk=cfg.win_topk)
    if cfg.winmode == "mul":
        s["win_weight"] = cfg.win_weight
    return s


def heads_digest(model: FASL) -> str:
    """sha256 of the ASL heads' weights: thresholds fitted with other heads do not apply."""
    h = hashlib.sha256()
    for key, value in sorted(model.heads.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def precision_record(model: FASL, cfg: InferenceConfig) -> dict:
    """The dtypes the bank was encoded, stored and searched in: a bank encoded in fp32 on a CPU and
    reused under fp16 on CUDA (or bf16 on an AMX CPU) scores differently from a fresh one."""
    return {"encoder": str(model.backbone.feature_dtype).replace("torch.", ""),
            "bank": str(model.bank_dtype).replace("torch.", ""),
            "search": resolved_search_dtype(model, cfg),
            "window_search": resolved_search_dtype(model, cfg, windows=True) if cfg.uses_windows else None}


def check_precision(state: dict, source: str, model: FASL, cfg: InferenceConfig, check_scoring: bool) -> None:
    """A file's encoder and bank dtypes must be the run's while its fitted thresholds are used
    (the normal scores they were set on would differ); otherwise, and for the search dtype (it
    changes a pick only between near-ties), a difference warns."""
    stored, now = state.get("precision"), precision_record(model, cfg)
    if stored is None:
        warnings.warn(f"{source} was written before the encoder and bank dtypes were recorded; it is used under "
                      f"encoder {now['encoder']}, bank {now['bank']}: rebuild it with --refs if it was made "
                      f"with another --precision or on another device", stacklevel=3)
        return
    encoded = [f"{k}: file {stored.get(k)}, now {now[k]}" for k in ("encoder", "bank") if stored.get(k) != now[k]]
    if encoded and check_scoring:
        raise InputValueError(f"{source} was encoded under other dtypes ({'; '.join(encoded)}: another --precision or "
                              f"device), so its thresholds do not fit this run's scores; use the same --precision and "
                              f"device, rebuild it with --refs, or give both --image_threshold and --pixel_threshold")
    searched = [f"{k}: file {stored.get(k)}, now {now[k]}" for k in ("search", "window_search")
                if stored.get(k) is not None and now[k] is not None and stored.get(k) != now[k]]
    if encoded or searched:
        warnings.warn(f"{source} differs from this run in precision ({'; '.join(encoded + searched)}); scores may "
                      f"differ slightly from those of a bank built here", stacklevel=3)


def _window_layout(cfg: InferenceConfig) -> dict | None:
    return {"size": cfg.win_size, "stride": cfg.win_stride} if cfg.uses_windows else None


def _blocks(tokens) -> list[torch.Tensor]:
    """A file's per-block tokens: a list (v2), or one stacked (L, R, m, W) tensor (v1)."""
    return list(tokens.unbind(0)) if isinstance(tokens, torch.Tensor) else list(tokens)


@dataclass
class SavedReferences:
    """A part's references as predict.py keeps them.

    bank: the memory of the references (and, for LFE, their windows).
    thresholds: the decision thresholds fitted on them (or given by hand).
    refs: where the reference images came from, for the record.
    """

    bank: MemoryBank
    thresholds: Thresholds
    refs: list[str]

    def save(self, path: str | Path, model: FASL, cfg: InferenceConfig, post: MapPost | None = None) -> Path:
        """Write the bank as plain tensors and the rest as primitives (atomically)."""
        bank = self.bank
        windows = bank.windows is not None and bank.window_memory.is_filled
        state = {
            "format": REFS_FORMAT,
            "config": model.config(),
            "inference": asdict(cfg),
            "scoring": scoring_settings(cfg, post),
            "heads_digest": heads_digest(model) if cfg.uses_heads else None,
            "thresholds": self.thresholds.to_dict(),
            "global_tokens": [t.cpu() for t in bank.global_memory.tokens],  # L x [k, N, W_l]
            "global_embedding": bank.global_memory.embedding.cpu(),  # [k, D]
            "window_tokens": [t.cpu() for t in bank.window_memory.tokens] if windows else None,  # L x [k*nw, s*s, W_l]
            "window_embedding": bank.window_memory.embedding.cpu() if windows else None,
            "window": {"size": bank.windows.size, "stride": bank.windows.stride} if windows else None,
            "refs": [str(r) for r in self.refs],
            "precision": precision_record(model, cfg),
        }
        return atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: str | Path, model: FASL, cfg: InferenceConfig, fpr: float | None = None,
             check_scoring: bool = True, post: MapPost | None = None,
             margin: float | None = None) -> "SavedReferences":
        """Read a file written by ``save`` and rebuild its bank on the model's device.

        Refused (see the module docstring) when it does not fit ``model`` and ``cfg``;
        ``check_scoring`` False (both thresholds given by hand) skips the checks of the
        thresholds' settings.
        """
        path = Path(path)
        if not path.is_file():
            raise InputFileNotFoundError(f"references file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors of every kind: the file is not ours or is damaged
            raise InputValueError(f"cannot read {path} as a FASL references file: "
                                  f"{unreadable_file_reason(err)}") from None
        if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
            raise InputValueError(f"{path} is not a FASL references file (format {REFS_FORMAT})")
        check_fit(state, path, model, cfg, fpr, check_scoring, post, margin)

        windows = model.windows_for(cfg)
        tokens = _blocks(state["global_tokens"])
        bank = MemoryBank(k=tokens[0].shape[0], windows=windows)
        dev, dtype = model.device, model.bank_dtype
        bank.global_memory.fill([t.to(dev) for t in tokens], state["global_embedding"].to(dev), dtype=dtype)
        if windows is not None:
            wt = _blocks(state["window_tokens"])
            if wt[0].shape[0] != bank.k * windows.num_windows:
                raise InputValueError(f"references file {path}: window memory has {wt[0].shape[0]} entries, "
                                      f"expected {bank.k} x {windows.num_windows}")
            bank.window_memory.fill([t.to(dev) for t in wt], state["window_embedding"].to(dev), dtype=dtype)
        thresholds = Thresholds.from_dict(state["thresholds"]).from_file(path)
        return cls(bank=bank, thresholds=thresholds, refs=list(state["refs"]))


def check_fit(state: dict, path: Path, model: FASL, cfg: InferenceConfig, fpr: float | None,
              check_scoring: bool, post: MapPost | None = None, margin: float | None = None) -> None:
    """The one compatibility check of a references file against a run (see the module docstring)."""
    source = f"references file {path}"
    model.check_config(state["config"], source=source, same_image_size=True, heads=cfg.uses_heads)
    if state["window"] != _window_layout(cfg):
        have = "no windows (--winmode nan)" if state["window"] is None else \
            f"windows of size {state['window']['size']}, stride {state['window']['stride']}"
        asked = "no windows" if not cfg.uses_windows else f"windows of size {cfg.win_size}, stride {cfg.win_stride}"
        raise InputValueError(f"{source} holds {have}, but --winmode {cfg.winmode} --win_size/--win_stride ask for "
                              f"{asked}; use matching flags or rebuild it with --refs")
    check_precision(state, source, model, cfg, check_scoring)
    if not check_scoring:
        return
    stored, now = state["scoring"], scoring_settings(cfg, post)
    diffs = [f"{k}: file {stored.get(k)!r}, now {now.get(k)!r}"
             for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
    if cfg.uses_heads and not diffs and state.get("heads_digest") != heads_digest(model):
        diffs.append("the --checkpoint_path heads differ from those the thresholds were fitted with")
    stored_margin = (state["thresholds"].get("fit") or {}).get("margin", 0.0)
    if margin is not None and state["thresholds"].get("fit") is not None and not math.isclose(margin, stored_margin):
        diffs.append(f"margin: file {stored_margin}, now {margin}")
    stored_fpr = state["thresholds"].get("fpr")
    if fpr is not None and stored_fpr is not None and not math.isclose(fpr, stored_fpr):
        diffs.append(f"fpr: file {stored_fpr}, now {fpr}")
    if diffs:
        raise InputValueError(f"the thresholds in {path} were fitted with other scoring settings ({'; '.join(diffs)}); "
                              f"use the same flags, rebuild with --refs, or give both --image_threshold and "
                              f"--pixel_threshold")

