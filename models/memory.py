"""Per-class memory bank of reference features and patch alignment.

Alignment finds, for every query patch, the most similar reference patch (cosine similarity of
L2-normalised tokens, so a dot product) of the same block. Three modes:

* ``exhaustive``: against every reference patch (the paper's search); one matmul per chunk.
* ``image_index``: the paper's image-feature index; each query (image or window) first picks
  its most similar reference entry by global embedding and is aligned against it alone.
* ``position``: windows only; each query window is aligned against the reference windows at the
  same and neighbouring positions (radius r) of every reference image, or, with ``topk``, the
  ``topk`` of those most similar to it by window embedding (for the global map it falls back
  to ``image_index``).

Chunk sizes follow a byte budget so the similarity matrix never exceeds it.

``search_dtype`` (e.g. bfloat16) runs the search matmul in a lower precision (several times
faster on CPUs with AMX) to shortlist the ``RERANK`` most similar patches of every query patch;
exact dot products with the stored bank then pick among them, so the result differs from the
exact search only where the exact best patch falls outside the low-precision shortlist (rare:
it needs ``RERANK`` other patches within the rounding error of the best).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.lfe import WindowGrid, neighbour_windows

ALIGN_MODES = ("exhaustive", "image_index", "position")
DEFAULT_MAX_BYTES = 256 * 2**20
CANDIDATE_CHUNK_BYTES = 16 * 2**20
RERANK = 4  # a low-precision search's shortlist per query patch, re-ranked exactly


def _rows_per_chunk(bytes_per_row: int, max_bytes: int) -> int:
    return max(1, int(max_bytes // max(1, bytes_per_row)))


def nearest_reference(query: torch.Tensor, bank: torch.Tensor, max_bytes: int = DEFAULT_MAX_BYTES, topk: int = 1):
    """Most similar bank row(s) for every query row.

    query: (Q, N, W), bank: (M, W), both L2-normalised.
    Returns (similarity, index into bank rows), each (Q, N); with ``topk`` > 1 the best
    ``topk`` rows, most similar first, each (Q, N, topk).
    """
    Q, N, W = query.shape
    flat = query.reshape(Q * N, W)
    t = min(topk, bank.shape[0])
    rows = _rows_per_chunk(bank.shape[0] * flat.element_size(), max_bytes)
    sims, idxs = [], []
    bank_t = bank.t()  # [W, M], one transpose view for all chunks
    for start in range(0, Q * N, rows):
        s = flat[start:start + rows] @ bank_t  # [rows, M]
        best, arg = s.max(dim=1) if topk == 1 else s.topk(t, dim=1)
        sims.append(best)
        idxs.append(arg)
    shape = (Q, N) if topk == 1 else (Q, N, t)
    return torch.cat(sims).reshape(shape), torch.cat(idxs).reshape(shape)


def nearest_in_candidates(
    query: torch.Tensor, entries: torch.Tensor, candidates: torch.Tensor, max_bytes: int = DEFAULT_MAX_BYTES,
    topk: int = 1,
):
    """Most similar patch(es) among each query's candidate reference entries.

    query: (Q, n, W); entries: (R, m, W) reference entries (images or windows) of m patches;
    candidates: (Q, C) entry indices per query.
    Returns (similarity, index flat into the R * m patches of ``entries``), each (Q, n); with
    ``topk`` > 1 the best ``topk`` patches, most similar first, each (Q, n, topk).
    """
    Q, n, W = query.shape
    R, m, _ = entries.shape
    C = candidates.shape[1]
    t = min(topk, C * m)
    # per query: the gathered candidates (C*m*W) and the similarities (n*C*m); small chunks keep
    # the gathered block in cache for the bmm that reads it right after
    per_query = (C * m * W + n * C * m) * query.element_size()
    rows = _rows_per_chunk(per_query, min(max_bytes, CANDIDATE_CHUNK_BYTES))
    sims, idxs = [], []
    for start in range(0, Q, rows):
        cand = candidates[start:start + rows]  # [q, C]
        q = cand.shape[0]
        gathered = entries.index_select(0, cand.reshape(-1)).reshape(q, C * m, W)  # [q, C*m, W]
        s = torch.bmm(query[start:start + rows], gathered.transpose(1, 2))  # [q, n, C*m]
        best, arg = s.max(dim=2) if topk == 1 else s.topk(t, dim=2)  # [q, n(, t)]
        entry = cand.gather(1, (arg // m).reshape(q, -1)).reshape(arg.shape)  # which entry won
        sims.append(best)
        idxs.append(entry * m + arg % m)
    return torch.cat(sims), torch.cat(idxs)


def exact_best(query: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor, chunk_rows: int = 8192):
    """The most similar of each query patch's candidate rows, by exact dot products in float32.

    query: (Q, n, W); rows: (M, W); candidates: (Q, n, t) row indices (t = 1: the similarity of
    a given pick). Returns (similarity (Q, n) float32, index (Q, n) into ``rows``); ties go to
    the earlier candidate. Chunked, so no (Q, n, t, W) gathered copy is materialised.
    """
    Q, n, W = query.shape
    t = candidates.shape[-1]
    flat_q, flat_c = query.reshape(Q * n, W), candidates.reshape(Q * n, t)
    sim = torch.empty(Q * n, device=query.device, dtype=torch.float32)
    idx = torch.empty(Q * n, device=query.device, dtype=torch.long)
    for start in range(0, Q * n, chunk_rows):
        c = flat_c[start:start + chunk_rows]  # [c, t]
        q = flat_q[start:start + chunk_rows].float()
        r = rows.index_select(0, c.reshape(-1)).reshape(c.shape[0], t, W).float()
        best, arg = torch.einsum("ctw,cw->ct", r, q).max(dim=1)
        sim[start:start + chunk_rows] = best
        idx[start:start + chunk_rows] = c.gather(1, arg[:, None]).squeeze(1)
    return sim.reshape(Q, n), idx.reshape(Q, n)


@dataclass
class Alignment:
    """Result of aligning L blocks of queries against a memory.

    similarity: L x (Q, n) cosine similarity to the aligned reference patch, float32 (for a
        half-precision bank the chosen pair's dot product is recomputed in float32).
    index: L x (Q, n) flat index of that patch in the memory's (R * m) patches of the block.
    aligned: L x (Q, n, W) the aligned reference features (None when not gathered).
    """

    similarity: list[torch.Tensor]
    index: list[torch.Tensor]
    aligned: list[torch.Tensor] | None


class PatchMemory(nn.Module):
    """Reference features at one resolution: R entries (images or windows) of m patches each,
    per block (blocks may differ in width, as CNN stages do).

    Everything it holds lives in buffers, so ``.to()`` moves it; a low-precision search copy is a
    cache and is dropped by any ``.to()`` / ``.half()`` (the next search rebuilds it where the
    bank now is). Reading an empty memory raises.
    """

    def __init__(self):
        super().__init__()
        self.num_blocks = 0
        self.register_buffer("_embedding", torch.empty(0), persistent=False)  # [R, D]

    def _block_buffers(self, prefix: str) -> list[torch.Tensor]:
        return [getattr(self, f"{prefix}{layer}") for layer in range(self.num_blocks)]

    @property
    def is_filled(self) -> bool:
        return self.num_blocks > 0

    @property
    def tokens(self) -> list[torch.Tensor]:
        """L x (R, m, W_l) reference patch tokens."""
        if not self.is_filled:
            raise RuntimeError("memory bank is empty: build it from the reference images first")
        return self._block_buffers("tokens_")

    @property
    def dtype(self) -> torch.dtype:
        return self.tokens[0].dtype

    @property
    def entries(self) -> tuple[int, int]:
        """(R, m): entries and patches per entry."""
        R, m, _ = self.tokens[0].shape
        return R, m

    @property
    def embedding(self) -> torch.Tensor:
        """(R, D) global embedding of each entry."""
        if self._embedding.numel() == 0:
            raise RuntimeError("memory bank has no global embeddings: build it with embeddings")
        return self._embedding

    def fill(self, tokens: list[torch.Tensor], embedding: torch.Tensor | None, dtype: torch.dtype | None = None):
        """tokens: L x (R, m, W_l); embedding: (R, D) or None. Stored contiguous in ``dtype``."""
        if not tokens or len({t.shape[:2] for t in tokens}) != 1:
            raise ValueError(f"every block needs the same (entries, patches), got {[tuple(t.shape) for t in tokens]}")
        dtype = dtype or tokens[0].dtype
        self._drop_search_copy()
        for layer in range(len(tokens), self.num_blocks):  # a refill with fewer blocks
            delattr(self, f"tokens_{layer}")
        for layer, t in enumerate(tokens):
            self.register_buffer(f"tokens_{layer}", t.to(dtype).contiguous(), persistent=False)  # [R, m, W_l]
        self.num_blocks = len(tokens)
        self._embedding = embedding.to(dtype).contiguous() if embedding is not None else torch.empty(0)
        return self

    def _drop_search_copy(self) -> None:
        self.__dict__["_search_copy"] = None

    def _apply(self, fn, recurse=True):
        self._drop_search_copy()  # a cache of the old place and dtype
        return super()._apply(fn, recurse)

    def search_tokens(self, dtype: torch.dtype | None) -> list[torch.Tensor]:
        """L x (R, m, W_l) tokens in the search dtype (a cached copy when it differs from the bank's)."""
        bank = self.tokens
        if dtype is None or dtype == bank[0].dtype:
            return bank
        copy = self.__dict__.get("_search_copy")
        if copy is None or copy[0].dtype != dtype:
            copy = [t.to(dtype) for t in bank]
            self.__dict__["_search_copy"] = copy
        return copy

    def nbytes(self) -> int:
        """Bytes held: tokens, embeddings and, once a low-precision search made one, its copy."""
        held = [*(self.tokens if self.is_filled else []), self._embedding, *(self.__dict__.get("_search_copy") or [])]
        return sum(t.numel() * t.element_size() for t in held)

    def align(
        self,
        tokens: list[torch.Tensor],
        embedding: torch.Tensor | None = None,
        mode: str = "exhaustive",
        candidates: torch.Tensor | None = None,
        gather: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        search_dtype: torch.dtype | None = None,
    ) -> Alignment:
        """Align queries block by block.

        tokens: L x (Q, n, W_l) query tokens; embedding: (Q, D), needed for ``image_index``;
        candidates: (Q, C) entry indices, used instead of ``mode`` when given;
        search_dtype: dtype of the search matmul (None = the bank's, exact). A lower precision
        keeps its ``RERANK`` best patches per query, and the exact dot products pick among them.
        """
        bank = self.tokens
        search = self.search_tokens(search_dtype)
        R, m = self.entries
        if len(tokens) != len(bank):
            raise ValueError(f"query has {len(tokens)} blocks, the memory {len(bank)}")
        dtype = bank[0].dtype
        if candidates is None and mode == "image_index":
            if embedding is None:
                raise ValueError("image_index alignment needs the query embeddings")
            candidates = (embedding.to(dtype) @ self.embedding.t()).argmax(dim=1, keepdim=True)  # [Q, 1]
        elif candidates is None and mode != "exhaustive":
            raise ValueError(f"unknown alignment mode {mode!r}; choose from {', '.join(ALIGN_MODES)}")
        if R == 1:
            candidates = None  # one entry (k = 1 global memory): the same search, without a per-query gather
        sims, idxs, aligned = [], [], []
        for query, rows, search_rows in zip(tokens, bank, search):
            W = rows.shape[-1]
            query = query.to(dtype)
            q_search = query.to(search_rows.dtype)
            topk = 1 if search_rows is rows else RERANK
            if candidates is None:
                s, i = nearest_reference(q_search, search_rows.reshape(R * m, W), max_bytes, topk)
            else:
                s, i = nearest_in_candidates(q_search, search_rows, candidates, max_bytes, topk)
            flat_bank = rows.reshape(R * m, W)
            if search_rows is not rows:  # approximate shortlist: the exact similarities decide
                s, i = exact_best(query, flat_bank, i)
            elif dtype != torch.float32:
                # a half-precision bank (fp16 on CUDA): its matmul rounds s near 1 to steps of ~5e-4,
                # which would tie FD = 1 - s between many pixels; the pick is re-scored in float32
                s, _ = exact_best(query, flat_bank, i.unsqueeze(-1))
            sims.append(s)
            idxs.append(i)
            if gather:
                aligned.append(flat_bank[i])  # [Q, n, W]
        return Alignment(similarity=sims, index=idxs, aligned=aligned if gather else None)


class MemoryBank(nn.Module):
    """A class's memory: the k reference images and, for LFE, their windows.

    global_memory: k entries of N patches (+ one embedding per image).
    window_memory: k * nw entries of size^2 patches (+ one embedding per window), image-major.
    """

    def __init__(self, k: int, windows: WindowGrid | None = None):
        super().__init__()
        self.k = k
        self.windows = windows
        self.global_memory = PatchMemory()
        self.window_memory = PatchMemory()

    def nbytes(self) -> dict[str, int]:
        return {"global": self.global_memory.nbytes(), "window": self.window_memory.nbytes()}

    def _apply(self, fn, recurse=True):
        """``.to()`` & co. move the whole bank: its memories (buffers), the window geometry's index
        tensors, and the position tables (a cache, rebuilt where the bank now is)."""
        super()._apply(fn, recurse)
        if self.windows is not None:
            self.windows = self.windows.apply(fn)
        self.__dict__.pop("_position_tables", None)
        return self

    def align_global(
        self, tokens, embedding=None, mode="exhaustive", gather=True, max_bytes=DEFAULT_MAX_BYTES, search_dtype=None
    ):
        """Queries are whole images: L x (B, N, W), embedding (B, D)."""
        if mode == "position":
            mode = "image_index"  # positions only exist for windows
        return self.global_memory.align(
            tokens, embedding, mode=mode, gather=gather, max_bytes=max_bytes, search_dtype=search_dtype
        )

    def _position_table(self, radius: int, device: torch.device) -> torch.Tensor:
        """(nw, k * C) reference windows at the same and neighbouring positions, every reference
        image; built once per radius on the queries' device (no host copies per query)."""
        cache = self.__dict__.setdefault("_position_tables", {})
        if (radius, device) not in cache:
            nw = self.windows.num_windows
            near = neighbour_windows(self.windows.shape, radius)  # [nw, C]
            per_ref = torch.arange(self.k)[:, None, None] * nw + near[None]  # [k, nw, C]
            cache[(radius, device)] = per_ref.permute(1, 0, 2).reshape(nw, -1).to(device)  # [nw, k*C]
        return cache[(radius, device)]

    def align_windows(
        self, tokens, embedding=None, mode="exhaustive", radius: int = 1, topk: int = 0, gather=True,
        max_bytes=DEFAULT_MAX_BYTES, search_dtype=None,
    ):
        """Queries are windows, image-major: L x (B * nw, s*s, W), embedding (B * nw, D).

        radius, topk: ``position`` mode's neighbourhood and how many of its k * (2r+1)^2
        reference windows (most similar by embedding) are searched; 0 = all of them.
        """
        if self.windows is None or not self.window_memory.is_filled:
            raise RuntimeError("memory bank has no windows: build it with a window configuration")
        candidates = None
        if mode == "position":
            Q = tokens[0].shape[0]
            table = self._position_table(radius, tokens[0].device)  # [nw, k*C]
            candidates = table.repeat(Q // self.windows.num_windows, 1)  # [Q, k*C]
            if 0 < topk < candidates.shape[1]:
                if embedding is None:
                    raise ValueError("position alignment with topk needs the query embeddings")
                ref = self.window_memory.embedding[candidates]  # [Q, k*C, D]
                sim = torch.einsum("qd,qcd->qc", embedding.to(ref.dtype), ref)
                candidates = candidates.gather(1, sim.topk(topk, dim=1).indices)  # [Q, topk]
        return self.window_memory.align(
            tokens, embedding, mode=mode, candidates=candidates, gather=gather, max_bytes=max_bytes,
            search_dtype=search_dtype,
        )
