"""Lot-aware scoring: each image of an inspected lot is compared with other images of the lot as
well as with the good references (mutual scoring, in the spirit of MuSc, ICLR 2024).

A patch of a good part that the references do not cover (a part at another angle, a texture
that varies) usually has close matches in many other images of the lot, because most parts of a
lot are good; a defect has none, or only in the few images that share it. So every patch is
scored by its distances to *each* image of a pool, and the score is the mean of the lowest
``fraction`` of those per-image distances: a patch is normal when enough pool images vouch for
it, not when one does.

The pool is bounded (``pool_size`` lot images plus the references, which are always in it), so
the cost per image does not grow with the lot, and it is one fixed set of images chosen by a
stable hash of each image's key (its file's content digest): the pool, hence every score, does
not depend on the order of the images, how a lot is split among processes, or which other images
happen to be in the same batch. An image of the pool is scored against the others plus one
spare, so every image meets exactly ``pool_size`` lot images. References are scored the same
way (the pool plus the other references), so their scores and the lot's are comparable.

Pure tensor functions (no files, no model): the decision layer (models/decision.py) composes them.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch

from models.backbone import BackboneOutput
from models.fasl import FASL, Encoded, InferenceConfig, Prediction, upsample
from models.memory import DEFAULT_MAX_BYTES, MemoryBank
from models.postprocess import MapPost


@dataclass(frozen=True)
class LotScoring:
    """How a lot is scored (models/decision.py holds the measured defaults).

    pool_size: M, the lot images every image is compared with (besides the references).
    fraction: the share of the pool (lot images + references) whose distances are averaged,
        lowest first: a patch counts as normal when this many pool images hold a close match.
    fd_weight: w in ``w * FD + (1 - w) * mutual``: the reference-only score's part, a guard
        against defects that repeat through a lot and would vouch for one another.
    """

    pool_size: int = 16
    fraction: float = 0.5
    fd_weight: float = 0.25  # chosen leave-one-class-out among 0.25 / 0.5 / 0.75 (docs/measurements.md)

    def __post_init__(self):
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}")
        if not 0.0 <= self.fd_weight <= 1.0:
            raise ValueError(f"fd_weight must lie in [0, 1], got {self.fd_weight}")

    def lowest(self, pool: int) -> int:
        """How many of ``pool`` per-image distances are averaged: ceil(fraction * pool), >= 1."""
        return max(1, min(pool, math.ceil(self.fraction * pool - 1e-9)))

    def to_dict(self) -> dict:
        return {"pool_size": self.pool_size, "fraction": self.fraction, "fd_weight": self.fd_weight}


def content_key(data: bytes) -> str:
    """A lot image's key for the pool choice: the sha256 of its file's bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


def pool_order(keys: Sequence[str]) -> list[int]:
    """Indices of ``keys`` in the order the pool takes them: by sha256 of the key (a stable,
    content-blind shuffle), ties broken by position. The same set of keys gives the same order
    however it is listed, in every process."""
    rank = [hashlib.sha256(f"fasl-pool:{k}".encode()).hexdigest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: (rank[i], keys[i], i))


def choose_pool(keys: Sequence[str], size: int) -> list[int]:
    """The lot's pool: the first ``size + 1`` images of ``pool_order`` (one spare: a pool member
    is compared with the others and the spare, see ``pool_columns``), or every image when the lot
    is smaller. Returns indices into ``keys``."""
    return pool_order(keys)[:size + 1]


def pool_members(items: Sequence, keys: Sequence[str], size: int) -> tuple[list, dict]:
    """The lot's pool among ``items`` (any ids of the lot's images, ``keys`` their content keys,
    one each): (the pool's items in pool order, {pool item: its position}), the positions
    ``LotScorer.score``'s ``members`` take (``choose_pool``, ``pool_columns``)."""
    chosen = [items[i] for i in choose_pool(keys, size)]
    return chosen, {item: j for j, item in enumerate(chosen)}


def pool_columns(members: Sequence[int | None], pool: int, size: int) -> torch.Tensor:
    """Which pool entries each image is compared with.

    members: per image, its position in the pool (an image of the pool) or None; pool: how many
    images the pool holds (``size + 1``, or fewer in a small lot). Returns (B, m) long indices,
    m = min(size, pool - 1): a non-member takes the first m entries, a member the first m of the
    others. So every image meets the same number of lot images, itself never among them.
    """
    m = min(size, pool - 1)
    if m < 1:
        raise ValueError(f"a pool of {pool} image(s) leaves no other lot image to compare with")
    rows = []
    for j in members:
        others = [i for i in range(pool) if i != j]
        rows.append(others[:m])
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), m)


def patch_distances(query: Sequence[torch.Tensor], pool: Sequence[torch.Tensor],
                    max_bytes: int = DEFAULT_MAX_BYTES, search_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Each query patch's distance to its nearest patch in each pool image, averaged over blocks.

    query: L x (B, N, C_l) L2-normalised tokens; pool: L x (P, N', C_l), the same blocks.
    Returns (B, P, N) float32: mean over blocks of 1 - max cosine similarity (clamped at 0).
    Chunked over query patches so the similarity block stays under ``max_bytes``.
    search_dtype (e.g. bfloat16, several times faster on CPUs with AMX): the nearest patch of each
    pool image is found in that dtype and its similarity recomputed exactly in float32, so a
    distance differs from the exact search only where two patches tie within the rounding.
    """
    if len(query) != len(pool):
        raise ValueError(f"query has {len(query)} blocks, the pool {len(pool)}")
    B, N = query[0].shape[:2]
    P, Np = pool[0].shape[:2]
    out = torch.zeros(B * N, P, dtype=torch.float32, device=query[0].device)
    for q, p in zip(query, pool):
        flat_q = q.reshape(B * N, -1)
        flat_p = p.to(q.dtype).reshape(P * Np, -1)  # [P*N', C]
        low = search_dtype is not None and search_dtype != flat_q.dtype
        search_p = (flat_p.to(search_dtype) if low else flat_p).t()  # [C, P*N']
        rows = max(1, int(max_bytes // max(1, P * Np * search_p.element_size())))
        for start in range(0, B * N, rows):
            chunk = flat_q[start:start + rows]  # [r, C]
            s = (chunk.to(search_dtype) if low else chunk) @ search_p  # [r, P*N']
            if low:  # the pick in low precision, its similarity exact
                pick = s.reshape(s.shape[0], P, Np).argmax(dim=2)  # [r, P]
                rows_of = pick + torch.arange(P, device=pick.device)[None] * Np  # [r, P] into flat_p
                best = torch.einsum("rpc,rc->rp", flat_p[rows_of].float(), chunk.float())
            else:
                best = s.reshape(s.shape[0], P, Np).amax(dim=2).float()  # [r, P]
            out[start:start + rows] += (1.0 - best).clamp_(min=0.0)
    return (out / len(query)).reshape(B, N, P).transpose(1, 2)  # [B, P, N]


def lowest_mean(distances: torch.Tensor, m: int) -> torch.Tensor:
    """(B, P, N) per-pool-image distances -> (B, N): the mean of each patch's ``m`` lowest."""
    if not 1 <= m <= distances.shape[1]:
        raise ValueError(f"m must lie in [1, {distances.shape[1]}], got {m}")
    return distances.topk(m, dim=1, largest=False).values.mean(dim=1)


KNOWN_LEVEL = 0.5  # a known defect's patches kept as its defect: distance >= median + this x (max - median)


def defect_patches(tokens: Sequence[torch.Tensor], good: torch.Tensor, level: float = KNOWN_LEVEL
                   ) -> list[torch.Tensor]:
    """The patches of known defect images that hold their defect.

    tokens: L x (B, N, C_l) the images' features; good: (B, N) each patch's distance to the good
    parts (``LotScorer.good_distance``). A patch is kept when its distance reaches its own image's
    median + ``level`` x (its max - median): the part of the image unlike any good part, however
    strong the defect. Returns L x (1, S, C_l): the kept patches of all B images as one pool image.
    """
    if good.ndim != 2 or good.shape != tokens[0].shape[:2]:
        raise ValueError(f"good distances {tuple(good.shape)} do not match tokens {tuple(tokens[0].shape[:2])}")
    med = good.median(dim=1, keepdim=True).values
    keep = good >= med + level * (good.amax(dim=1, keepdim=True) - med)  # [B, N], each image's peak at least
    return [t[keep][None] for t in tokens]


class LotScorer:
    """Scores images against k references and, lot-aware, a pool of lot images.

    ``scoring`` None scores each image on its own (the model's map against the references, as
    ``FASL.predict``); a ``LotScoring`` adds the mutual score (module docstring), which needs the
    training-free map (``cfg.mode`` ``fd``) on the global grid (``cfg.winmode`` ``nan``).
    Every map goes through ``post`` (models/postprocess.py) last, so lot-aware and single-image
    scores are post-processed alike. ``fit`` first, then ``score`` any number of batches.
    """

    def __init__(self, model: FASL, cfg: InferenceConfig, post: MapPost | None = None,
                 scoring: LotScoring | None = None):
        if scoring is not None and (cfg.mode != "fd" or cfg.winmode != "nan"):
            raise ValueError(f"lot-aware scoring compares the training-free features of whole images: it needs --mode fd "
                             f"and --winmode nan (got --mode {cfg.mode}, --winmode {cfg.winmode}); use --lot off")
        self.model, self.cfg, self.post, self.scoring = model, cfg, post or MapPost(), scoring
        self.bank: MemoryBank | None = None
        self.copies = 1
        self.pool_tokens: list[torch.Tensor] | None = None  # L x (P, N, C_l)
        self.known_tokens: list[torch.Tensor] | None = None  # L x (1, S, C_l): known defects' defect patches

    @property
    def pool_size(self) -> int:
        """Images in the pool (0 without one)."""
        return 0 if self.pool_tokens is None else self.pool_tokens[0].shape[0]

    @torch.no_grad()
    def fit(self, references: torch.Tensor | None = None, pool: torch.Tensor | None = None,
            bank: MemoryBank | None = None, copies: int = 1,
            pool_tokens: list[torch.Tensor] | None = None) -> "LotScorer":
        """references: (k, 3, S, S) normalised good images, or ``bank``, their memory as
        ``FASL.build_memory`` made it (``copies`` entries per reference, the reference itself first);
        pool: (P, 3, S, S) the lot's pool images (``choose_pool``), or ``pool_tokens``, L x (P, N,
        C_l) their features already encoded: needed when lot-aware."""
        if bank is None:
            if references is None:
                raise ValueError("give the references or their memory bank")
            bank = self.model.build_memory(references, self.model.windows_for(self.cfg),
                                           window_batch=self.cfg.window_batch)
        self.bank, self.copies = bank, copies
        self.known_tokens = None  # known defects are set after fitting (``set_known``)
        if self.scoring is not None:
            if pool_tokens is None and pool is not None:
                pool_tokens = self.model.encode(pool, self.cfg).features.tokens
            if pool_tokens is None or pool_tokens[0].shape[0] < 2:
                raise ValueError("lot-aware scoring needs a pool of at least 2 lot images")
            self.pool_tokens = pool_tokens
        return self

    def _reference_tokens(self, keep: Sequence[int] | None = None) -> list[torch.Tensor]:
        """L x (k', N, C_l): the references themselves (not their augmented copies), ``keep`` only."""
        k = self.bank.k // self.copies
        idx = torch.tensor([j * self.copies for j in range(k) if keep is None or j in keep], dtype=torch.long,
                           device=self.model.device)
        return [t.index_select(0, idx) for t in self.bank.global_memory.tokens]

    @torch.no_grad()
    def set_known(self, known: torch.Tensor | Encoded | None) -> "LotScorer":
        """Known defect images, (K, 3, S, S) normalised or encoded (after ``fit``; None: forget
        them): their defect patches (``defect_patches``) are kept, and every later Prediction
        carries ``known_match``, the largest margin by which a patch of the image lies closer to
        one of those patches than to the good parts (``good_distance``)."""
        self._check_fitted()
        if known is None:
            self.known_tokens = None
            return self
        enc = known if isinstance(known, Encoded) else self.model.encode(known, self.cfg)
        tokens = enc.features.tokens
        self.known_tokens = defect_patches(tokens, self.good_distance(tokens, [None] * enc.batch))
        return self

    @torch.no_grad()
    def match_known(self, enc: Encoded, members: Sequence[int | None] | None = None) -> torch.Tensor:
        """(B,) ``Prediction.known_match`` of encoded images without scoring them again (``set_known``
        first; members: as ``score``)."""
        if self.known_tokens is None:
            raise RuntimeError("LotScorer.set_known first")
        members = [None] * enc.batch if members is None else list(members)
        tokens = enc.features.tokens
        match = self._known_match(tokens, self.good_distance(tokens, members))
        return torch.full((enc.batch,), -math.inf) if match is None else match

    def good_distance(self, tokens: Sequence[torch.Tensor], members: Sequence[int | None]) -> torch.Tensor:
        """L x (B, N, C_l) features -> (B, N): each patch's distance to the good parts: lot-aware, the
        mutual score (the lowest ``fraction`` of its distances to the pool images and references:
        the lot's consensus, so a defect that repeats through the pool does not vouch for itself);
        otherwise its distance to the nearest reference or reference copy (``--augment_refs``)."""
        search = self.model.search_dtype_for(self.cfg, windows=False)
        if self.scoring is None:
            return patch_distances(tokens, self.bank.global_memory.tokens, self.cfg.max_bytes, search).amin(dim=1)
        return self._mutual(tokens, members, self._reference_tokens(), search)

    def _mutual(self, tokens, members, ref_tokens, search) -> torch.Tensor:
        """(B, N) the mutual score of each patch (module docstring)."""
        cols = pool_columns(members, self.pool_size, self.scoring.pool_size).to(self.model.device)
        d_pool = patch_distances(tokens, self.pool_tokens, self.cfg.max_bytes, search)  # [B, P, N]
        d = d_pool.gather(1, cols[:, :, None].expand(-1, -1, d_pool.shape[2]))  # [B, m, N]
        if ref_tokens[0].shape[0]:
            d = torch.cat([d, patch_distances(tokens, ref_tokens, self.cfg.max_bytes, search)], dim=1)  # [B, m+k, N]
        return lowest_mean(d, self.scoring.lowest(d.shape[1]))

    def _known_match(self, tokens, good: torch.Tensor) -> torch.Tensor | None:
        """(B,) max over patches of (distance to the good parts - distance to the nearest known defect
        patch). Lot-aware, the first is a consensus (a mean over the closest half of the pool), the
        second a nearest neighbour: the difference leans positive, which ``--known_match``'s margin,
        measured on real parts, absorbs."""
        if self.known_tokens is None or self.known_tokens[0].shape[1] == 0:
            return None
        search = self.model.search_dtype_for(self.cfg, windows=False)
        d_known = patch_distances(tokens, self.known_tokens, self.cfg.max_bytes, search)[:, 0]  # [B, N]
        return (good - d_known).amax(dim=1).float()

    @torch.no_grad()
    def score(self, images: torch.Tensor, members: Sequence[int | None] | None = None,
              timer: Callable[[str], ContextManager] | None = None) -> Prediction:
        """images: (B, 3, S, S) normalised; members: each image's position in the pool (None for
        an image outside it; default: none is). Returns the post-processed Prediction. timer: the
        benchmark's stopwatch (``FASL.predict``'s stages), single-image scoring only."""
        if timer is not None:
            if self.scoring is not None:
                raise ValueError("the stage timer measures single-image scoring (no lot)")
            self._check_fitted()
            return self.post.apply(self.model.predict(images, self.bank, self.cfg, timer))
        return self.score_encoded(self.model.encode(images, self.cfg), members)

    @torch.no_grad()
    def score_all(self, items: torch.Tensor | Sequence[Encoded], members: Sequence[int | None] | None = None,
                  batch_size: int = 8, progress: Callable | None = None,
                  alignments: Sequence[dict] | None = None) -> Prediction:
        """Every image of a split, in batches: ``items`` (N, 3, S, S) normalised images, or the
        chunks ``FASL.encode`` made of them; members: as ``score``, one per image. Returns the
        post-processed Prediction of all N, on the CPU in float32 (what every program's metrics
        and files are made from). progress: a wrapper of the batch iterator (e.g. tqdm);
        alignments: one dict per encoded chunk, kept by the caller to reuse searches across
        checkpoints (``FASL.score``)."""
        encoded = not isinstance(items, torch.Tensor)
        n = sum(e.batch for e in items) if encoded else items.shape[0]
        members = [None] * n if members is None else list(members)
        if len(members) != n:
            raise ValueError(f"{len(members)} pool positions for {n} images")
        if encoded:
            starts = list(np.cumsum([0] + [e.batch for e in items])[:-1])
            chunks = [(e, members[s:s + e.batch], None if alignments is None else alignments[i])
                      for i, (e, s) in enumerate(zip(items, starts))]
        else:
            chunks = [(items[s:s + batch_size], members[s:s + batch_size], None) for s in range(0, n, batch_size)]
        parts = []
        for chunk, mine, aligned in (progress(chunks) if progress else chunks):
            pred = self.score_encoded(chunk, mine, aligned) if encoded else self.score(chunk, mine)
            parts.append(Prediction(*(None if x is None else x.float().cpu() for x in
                                      (pred.score_map, pred.image_score, pred.single_score, pred.known_match))))
        if not parts:
            return Prediction(torch.empty(0, self.cfg.out_size, self.cfg.out_size), torch.empty(0))

        def joined(name):
            values = [getattr(p, name) for p in parts]
            return torch.cat(values) if all(v is not None for v in values) else None

        return Prediction(*(joined(n) for n in ("score_map", "image_score", "single_score", "known_match")))

    def _check_fitted(self) -> None:
        if self.bank is None:
            raise RuntimeError("LotScorer.fit first")

    @torch.no_grad()
    def score_encoded(self, enc: Encoded, members: Sequence[int | None] | None = None,
                      alignments: dict | None = None) -> Prediction:
        """``score`` from ``FASL.encode``'s features (encode once, score against several fits);
        alignments: see ``score_all``."""
        self._check_fitted()
        single = self.model.score(enc, self.bank, self.cfg, alignments)
        if self.scoring is None:
            out = self.post.apply(single)
            if self.known_tokens is not None:
                tokens = enc.features.tokens
                out.known_match = self._known_match(tokens, self.good_distance(tokens, [None] * enc.batch))
            return out
        members = [None] * enc.batch if members is None else list(members)
        return self._combine(single, enc.features.tokens, enc.features.grid, members, self._reference_tokens())

    def _combine(self, single: Prediction | None, tokens, grid, members, ref_tokens) -> Prediction:
        """The lot-aware Prediction: ``fd_weight`` x the single-image one (None: there is none,
        the mutual score alone) + the rest x the mutual score, post-processed."""
        B = tokens[0].shape[0]
        search = self.model.search_dtype_for(self.cfg, windows=False)
        good = self._mutual(tokens, members, ref_tokens, search)  # [B, N]
        mutual = good.reshape(B, 1, *grid)  # [B, 1, G, G]
        score_map = upsample(mutual, self.cfg.out_size)[:, 0]  # [B, H, W]
        image_score = mutual.flatten(1).amax(dim=1)  # the 'model' image score of the mutual grid
        alone = None
        if single is not None:
            w = self.scoring.fd_weight
            score_map = w * single.score_map.float() + (1 - w) * score_map
            image_score = w * single.image_score.float() + (1 - w) * image_score
            alone = self.post.apply(single).image_score.float()
        out = self.post.apply(Prediction(score_map=score_map, image_score=image_score))
        return Prediction(out.score_map, out.image_score, alone, self._known_match(tokens, good))

    @torch.no_grad()
    def score_references(self) -> Prediction:
        """Each reference scored as a lot image is, leaving itself out, from the features its
        memory holds -> the post-processed Prediction of the k maps. The single-image part is against the other
        references (with k = 1 there are none: the mutual score alone), the mutual part against
        the pool's first ``pool_size`` images and the other references."""
        if self.scoring is None or self.bank is None:
            raise RuntimeError("score_references needs a lot-aware scorer after fit")
        from models.thresholds import subset_bank

        k = self.bank.k // self.copies
        g = self.model.backbone.image_size // self.model.backbone.patch_size
        memory = self.bank.global_memory
        maps, scores = [], []
        for i in range(k):
            row = slice(i * self.copies, i * self.copies + 1)
            embedding = memory.embedding[row] if memory._embedding.numel() else None
            one = Encoded(1, BackboneOutput([t[row] for t in memory.tokens], embedding, (g, g)), None, None)
            others = [j for j in range(k) if j != i]
            single = None
            if others:
                sub = subset_bank(self.bank, [j * self.copies + a for j in others for a in range(self.copies)])
                single = self.model.score(one, sub, self.cfg)
            pred = self._combine(single, one.features.tokens, one.features.grid, [None],
                                 self._reference_tokens(others))
            maps.append(pred.score_map)
            scores.append(pred.image_score)
        return Prediction(torch.cat(maps), torch.cat(scores))
