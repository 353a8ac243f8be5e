"""Tests for models.lfe (window geometry, split, merge) and models.memory (alignment).

Pure tensor code, no CLIP: hand-worked small cases and equivalence with brute-force loops.
"""

import pytest
import torch
import torch.nn.functional as F

from models.lfe import merge_windows, neighbour_windows, split_windows, window_grid, window_starts
from models.memory import RERANK, MemoryBank, PatchMemory, exact_best, nearest_in_candidates, nearest_reference


# ----------------------------------------------------------------------------- helpers

def unit(*shape, generator=None):
    """Random L2-normalised vectors along the last axis."""
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def brute_best(q, rows):
    """Index and similarity of the row of ``rows`` (list of (index, vector)) most similar to q.

    First occurrence wins ties, like torch's max. Similarities are summed in float64.
    """
    best_s, best_i = -float("inf"), -1
    for i, r in rows:
        s = float((q.double() * r.double()).sum())
        if s > best_s:
            best_s, best_i = s, i
    return best_s, best_i


def brute_align(query, rows_for):
    """query (Q, n, W); rows_for(q) -> [(flat index, vector)]. Returns (sim (Q, n) f64, idx (Q, n))."""
    Q, n, _ = query.shape
    sim = torch.empty(Q, n, dtype=torch.float64)
    idx = torch.empty(Q, n, dtype=torch.long)
    for q in range(Q):
        rows = rows_for(q)
        for p in range(n):
            sim[q, p], idx[q, p] = brute_best(query[q, p], rows)
    return sim, idx


def brute_coverage(grid, size, stride):
    """How many windows contain each patch, counted with plain loops."""
    gh, gw = grid
    counts = torch.zeros(gh, gw)
    for sy in window_starts(gh, size, stride):
        for sx in window_starts(gw, size, stride):
            for y in range(sy, sy + size):
                for x in range(sx, sx + size):
                    counts[y, x] += 1
    return counts


# ----------------------------------------------------------------------------- window_starts / window_grid

@pytest.mark.parametrize("length, size, stride, expected", [
    (37, 13, 2, list(range(0, 25, 2))),  # the paper's 518 px layout: 13 starts, tiling exactly
    (8, 4, 3, [0, 3, 4]),                # non-tiling: last window flush with the border
    (8, 4, 2, [0, 2, 4]),
    (10, 4, 4, [0, 4, 6]),
    (5, 2, 2, [0, 2, 3]),
    (6, 6, 1, [0]),                      # window as large as the grid
    (4, 1, 1, [0, 1, 2, 3]),
])
def test_window_starts_hand_worked(length, size, stride, expected):
    assert window_starts(length, size, stride) == expected


def test_window_starts_cover_every_patch():
    for length in range(1, 16):
        for size in range(1, length + 1):
            for stride in range(1, size + 1):  # stride > size is refused, see below
                starts = window_starts(length, size, stride)
                assert starts[0] == 0 and starts[-1] == length - size
                assert all(b > a for a, b in zip(starts, starts[1:]))
                assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
                covered = set()
                for s in starts:
                    covered.update(range(s, s + size))
                assert covered == set(range(length)), (length, size, stride)


@pytest.mark.parametrize("length, size, stride", [(3, 1, 2), (10, 2, 3), (37, 4, 5)])
def test_window_starts_stride_larger_than_size_raises(length, size, stride):
    # such a stride would leave patches in no window (and merge would divide by zero)
    with pytest.raises(ValueError, match="larger than the window size"):
        window_starts(length, size, stride)
    with pytest.raises(ValueError, match="larger than the window size"):
        window_grid((length, length), size, stride)


@pytest.mark.parametrize("length, size, stride, match", [
    (4, 5, 1, "larger than the patch grid"),
    (4, 0, 1, "must be >= 1"),
    (4, 2, 0, "must be >= 1"),
])
def test_window_starts_rejects_bad_geometry(length, size, stride, match):
    with pytest.raises(ValueError, match=match):
        window_starts(length, size, stride)


def test_window_grid_larger_than_grid_raises():
    with pytest.raises(ValueError, match="larger than the patch grid"):
        window_grid((8, 3), 4, 1)


def test_window_grid_counts():
    wg = window_grid((37, 37), 13, 2)
    assert wg.shape == (13, 13) and wg.num_windows == 169
    assert wg.patch_index.shape == (169, 169)
    wg = window_grid((8, 8), 4, 3)
    assert wg.starts_y.tolist() == [0, 3, 4] and wg.starts_x.tolist() == [0, 3, 4]
    assert wg.num_windows == 9
    wg = window_grid((7, 5), 3, 2)
    assert wg.shape == (3, 2) and wg.starts_y.tolist() == [0, 2, 4] and wg.starts_x.tolist() == [0, 2]


@pytest.mark.parametrize("grid, size, stride", [((8, 8), 4, 3), ((7, 5), 3, 2), ((37, 37), 13, 2)])
def test_window_grid_patch_index_matches_loops(grid, size, stride):
    gh, gw = grid
    wg = window_grid(grid, size, stride)
    expected = []
    for sy in window_starts(gh, size, stride):
        for sx in window_starts(gw, size, stride):
            expected.append([(sy + a) * gw + (sx + b) for a in range(size) for b in range(size)])
    assert wg.patch_index.tolist() == expected
    # every patch of the grid lies in at least one window
    assert set(wg.patch_index.reshape(-1).tolist()) == set(range(gh * gw))


def test_window_grid_first_windows_by_hand():
    wg = window_grid((5, 5), 2, 2)  # starts 0, 2, 3 on both axes
    assert wg.patch_index[0].tolist() == [0, 1, 5, 6]
    assert wg.patch_index[1].tolist() == [2, 3, 7, 8]
    assert wg.patch_index[2].tolist() == [3, 4, 8, 9]      # flush with the right border
    assert wg.patch_index[8].tolist() == [18, 19, 23, 24]  # bottom-right corner


# ----------------------------------------------------------------------------- split / merge

@pytest.mark.parametrize("grid, size, stride, patch", [((7, 5), 3, 2, 4), ((8, 8), 4, 3, 2), ((4, 4), 4, 1, 3)])
def test_split_windows_equals_manual_slicing(grid, size, stride, patch):
    torch.manual_seed(0)
    gh, gw = grid
    images = torch.randn(2, 3, gh * patch, gw * patch)
    wg = window_grid(grid, size, stride)
    crops = split_windows(images, wg, patch)
    span = size * patch
    assert crops.shape == (2 * wg.num_windows, 3, span, span)
    manual = []
    for b in range(2):  # image-major, windows row-major
        for sy in wg.starts_y.tolist():
            for sx in wg.starts_x.tolist():
                manual.append(images[b, :, sy * patch:sy * patch + span, sx * patch:sx * patch + span])
    assert torch.equal(crops, torch.stack(manual))


def test_split_windows_wrong_image_size_raises():
    wg = window_grid((8, 8), 4, 2)
    with pytest.raises(ValueError, match="window grid expects 112x112"):
        split_windows(torch.zeros(1, 3, 98, 112), wg, 14)


def test_split_of_index_map_is_patch_index():
    wg = window_grid((7, 5), 3, 2)
    index_map = torch.arange(35).reshape(1, 1, 7, 5)
    crops = split_windows(index_map, wg, 1)  # [nw, 1, 3, 3]
    assert torch.equal(crops.reshape(wg.num_windows, 9), wg.patch_index)


@pytest.mark.parametrize("grid, size, stride", [((8, 8), 4, 3), ((7, 5), 3, 2), ((9, 9), 5, 2)])
def test_merge_constant_is_constant(grid, size, stride):
    wg = window_grid(grid, size, stride)
    values = torch.full((2, wg.num_windows, 3, size, size), 3.0)
    merged = merge_windows(values, wg)
    assert merged.shape == (2, 3, *grid)
    assert torch.equal(merged, torch.full((2, 3, *grid), 3.0))
    values = torch.full((1, wg.num_windows, 1, size, size), 0.37)
    torch.testing.assert_close(merge_windows(values, wg), torch.full((1, 1, *grid), 0.37))


@pytest.mark.parametrize("grid, size, stride", [((8, 8), 4, 3), ((7, 5), 3, 2), ((8, 8), 4, 2)])
def test_merge_one_window_mark_lands_on_that_window(grid, size, stride):
    wg = window_grid(grid, size, stride)
    counts = brute_coverage(grid, size, stride)
    ny, nx = wg.shape
    for j in range(wg.num_windows):
        sy, sx = wg.starts_y[j // nx].item(), wg.starts_x[j % nx].item()
        values = torch.zeros(2, wg.num_windows, 2, size, size, dtype=torch.float64)
        values[1, j, 0] = 6.0  # whole window, one image, one channel
        values[1, j, 1, size - 1, 0] = 5.0  # a single patch: bottom-left of the window
        merged = merge_windows(values, wg)
        expected = torch.zeros(2, 2, *grid, dtype=torch.float64)
        expected[1, 0, sy:sy + size, sx:sx + size] = 6.0 / counts[sy:sy + size, sx:sx + size].double()
        expected[1, 1, sy + size - 1, sx] = 5.0 / counts[sy + size - 1, sx].item()
        torch.testing.assert_close(merged, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid, size, stride", [((8, 8), 4, 3), ((7, 5), 3, 2), ((37, 37), 13, 2)])
def test_merge_of_split_reconstructs_map(grid, size, stride):
    gh, gw = grid
    wg = window_grid(grid, size, stride)
    index_map = torch.arange(gh * gw, dtype=torch.float64).reshape(1, 1, gh, gw).repeat(2, 3, 1, 1)
    index_map[1] *= -2
    crops = split_windows(index_map, wg, 1)  # [2*nw, 3, s, s]
    merged = merge_windows(crops.reshape(2, wg.num_windows, 3, size, size), wg)
    torch.testing.assert_close(merged, index_map, rtol=0, atol=1e-9)


def test_merge_rejects_values_of_another_layout():
    wg = window_grid((8, 8), 4, 2)
    with pytest.raises(ValueError, match="do not match 9 windows of 4"):
        merge_windows(torch.zeros(1, 8, 1, 4, 4), wg)
    with pytest.raises(ValueError, match="do not match 9 windows of 4"):
        merge_windows(torch.zeros(1, 9, 1, 3, 3), wg)


# ----------------------------------------------------------------------------- neighbour_windows

def test_neighbour_windows_3x3_by_hand():
    # a 3x3 layout is exactly one radius-1 neighbourhood: every window searches all nine
    near = neighbour_windows((3, 3), 1)
    assert near.tolist() == [list(range(9))] * 9
    assert neighbour_windows((3, 3), 2).tolist() == [list(range(9))] * 9  # radius shrinks to fit
    assert neighbour_windows((3, 3), 0).tolist() == [[i] for i in range(9)]


def test_neighbour_windows_shift_inward_at_the_border():
    near = neighbour_windows((5, 5), 1)  # layout rows 0-4 / 5-9 / ... / 20-24
    assert near.shape == (25, 9)
    assert near[0].tolist() == [0, 1, 2, 5, 6, 7, 10, 11, 12]        # corner: shifted down-right
    assert near[6].tolist() == [0, 1, 2, 5, 6, 7, 10, 11, 12]        # interior: centred on itself
    assert near[12].tolist() == [6, 7, 8, 11, 12, 13, 16, 17, 18]    # centre
    assert near[4].tolist() == [2, 3, 4, 7, 8, 9, 12, 13, 14]        # top-right corner
    assert near[24].tolist() == [12, 13, 14, 17, 18, 19, 22, 23, 24]  # bottom-right corner
    assert neighbour_windows((1, 4), 1).tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [1, 2, 3]]


@pytest.mark.parametrize("shape, radius", [((5, 5), 1), ((7, 4), 1), ((6, 9), 2), ((3, 5), 1), ((13, 13), 1)])
def test_neighbour_windows_properties(shape, radius):
    ny, nx = shape
    near = neighbour_windows(shape, radius)
    side_y, side_x = min(2 * radius + 1, ny), min(2 * radius + 1, nx)
    assert near.shape == (ny * nx, side_y * side_x)
    for w, row in enumerate(near.tolist()):
        wy, wx = divmod(w, nx)
        assert w in row and len(set(row)) == len(row)  # itself, no repeats
        ys, xs = {i // nx for i in row}, {i % nx for i in row}
        assert len(ys) == side_y and len(xs) == side_x  # a full rectangle of windows
        assert max(ys) - min(ys) == side_y - 1 and max(xs) - min(xs) == side_x - 1
        # every window within the radius is a candidate
        for y in range(max(0, wy - radius), min(ny, wy + radius + 1)):
            for x in range(max(0, wx - radius), min(nx, wx + radius + 1)):
                assert y * nx + x in row, (w, y, x)


@pytest.mark.parametrize("shape, radius", [((2, 2), 1), ((2, 3), 1), ((4, 4), 2)])
def test_neighbour_windows_small_even_layout_keeps_neighbours(shape, radius):
    ny, nx = shape
    near = neighbour_windows(shape, radius)
    for w, row in enumerate(near.tolist()):
        wy, wx = divmod(w, nx)
        for y in range(max(0, wy - radius), min(ny, wy + radius + 1)):
            for x in range(max(0, wx - radius), min(nx, wx + radius + 1)):
                assert y * nx + x in row, (w, y, x)


# ----------------------------------------------------------------------------- nearest_reference

def test_nearest_reference_equals_loop():
    g = torch.Generator().manual_seed(1)
    query, bank = unit(3, 10, 16, generator=g), unit(40, 16, generator=g)
    sim, idx = nearest_reference(query, bank)
    assert sim.shape == idx.shape == (3, 10)
    b_sim, b_idx = brute_align(query, lambda q: list(enumerate(bank)))
    assert torch.equal(idx, b_idx)
    torch.testing.assert_close(sim.double(), b_sim, rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_bytes", [1, 40 * 4 * 7, 40 * 4 * 29])
def test_nearest_reference_chunked_identical(max_bytes):
    g = torch.Generator().manual_seed(2)
    query, bank = unit(3, 10, 16, generator=g), unit(40, 16, generator=g)
    one_sim, one_idx = nearest_reference(query, bank)  # default budget: a single chunk
    sim, idx = nearest_reference(query, bank, max_bytes=max_bytes)  # 30, 5 and 2 chunks
    assert torch.equal(idx, one_idx)
    # same products, but BLAS may round a 1-row matmul differently from a 30-row one (1 ulp)
    torch.testing.assert_close(sim, one_sim, rtol=0, atol=1e-6)


def test_nearest_reference_finds_exact_copies():
    g = torch.Generator().manual_seed(3)
    bank = unit(50, 8, generator=g)
    pick = torch.tensor([[7, 0, 49], [3, 3, 21]])
    sim, idx = nearest_reference(bank[pick], bank)
    assert torch.equal(idx, pick)
    torch.testing.assert_close(sim, torch.ones(2, 3))


# ----------------------------------------------------------------------------- nearest_in_candidates

@pytest.mark.parametrize("max_bytes", [None, 1, 600])
def test_nearest_in_candidates_equals_loop(max_bytes):
    g = torch.Generator().manual_seed(4)
    Q, n, R, m, W = 5, 6, 7, 9, 12
    query, entries = unit(Q, n, W, generator=g), unit(R, m, W, generator=g)
    candidates = torch.randint(0, R, (Q, 3), generator=g)
    candidates[0] = torch.tensor([2, 2, 5])  # a repeated candidate is harmless
    kw = {} if max_bytes is None else {"max_bytes": max_bytes}
    sim, idx = nearest_in_candidates(query, entries, candidates, **kw)
    assert sim.shape == idx.shape == (Q, n)

    def rows_for(q):
        return [(c * m + p, entries[c, p]) for c in candidates[q].tolist() for p in range(m)]

    b_sim, b_idx = brute_align(query, rows_for)
    assert torch.equal(idx, b_idx)
    torch.testing.assert_close(sim.double(), b_sim, rtol=0, atol=1e-6)
    # the winner always belongs to one of the query's candidates
    assert all(set((idx[q] // m).tolist()) <= set(candidates[q].tolist()) for q in range(Q))


# ----------------------------------------------------------------------------- PatchMemory

def filled_memory(L=2, R=4, m=9, W=12, D=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    tokens = [unit(R, m, W, generator=g) for _ in range(L)]
    embedding = unit(R, D, generator=g)
    return PatchMemory().fill(tokens, embedding), tokens, embedding


def check_aligned_rows(memory, alignment, query_tokens):
    """aligned == bank rows at index and similarity == <query, aligned>, every block."""
    for layer, block in enumerate(memory.tokens):
        R, m, W = block.shape
        rows = block.reshape(R * m, W)
        assert torch.equal(alignment.aligned[layer], rows[alignment.index[layer]])
        dots = (query_tokens[layer] * alignment.aligned[layer]).sum(-1)
        torch.testing.assert_close(alignment.similarity[layer], dots, rtol=0, atol=1e-6)


def test_patch_memory_exhaustive_equals_loop():
    memory, bank, _ = filled_memory()
    g = torch.Generator().manual_seed(6)
    query = [unit(3, 5, 12, generator=g) for _ in range(2)]
    out = memory.align(query, mode="exhaustive")
    for layer in range(2):
        flat = bank[layer].reshape(-1, 12)
        b_sim, b_idx = brute_align(query[layer], lambda q: list(enumerate(flat)))
        assert torch.equal(out.index[layer], b_idx)
        torch.testing.assert_close(out.similarity[layer].double(), b_sim, rtol=0, atol=1e-6)
    check_aligned_rows(memory, out, query)


def test_patch_memory_image_index_equals_loop():
    memory, bank, ref_emb = filled_memory()
    g = torch.Generator().manual_seed(7)
    query = [unit(5, 5, 12, generator=g) for _ in range(2)]
    q_emb = unit(5, 6, generator=g)
    out = memory.align(query, q_emb, mode="image_index")
    m = bank[0].shape[1]
    picked = []
    for q in range(5):
        _, ref = brute_best(q_emb[q], list(enumerate(ref_emb)))
        picked.append(ref)
    assert len(set(picked)) > 1  # the queries do not all pick the same entry
    for layer in range(2):
        b_sim, b_idx = brute_align(
            query[layer], lambda q: [(picked[q] * m + p, bank[layer][picked[q], p]) for p in range(m)])
        assert torch.equal(out.index[layer], b_idx)
        torch.testing.assert_close(out.similarity[layer].double(), b_sim, rtol=0, atol=1e-6)
    check_aligned_rows(memory, out, query)
    exhaustive = memory.align(query, mode="exhaustive")
    for layer in range(2):
        assert (exhaustive.similarity[layer] >= out.similarity[layer] - 1e-6).all()
    # the fast mode really is a restriction here, not the same search
    assert any((exhaustive.similarity[layer] > out.similarity[layer] + 1e-4).any() for layer in range(2))


def test_patch_memory_gather_false_and_chunked():
    memory, _, _ = filled_memory()
    g = torch.Generator().manual_seed(8)
    query = [unit(3, 5, 12, generator=g) for _ in range(2)]
    q_emb = unit(3, 6, generator=g)
    for mode in ("exhaustive", "image_index"):
        full = memory.align(query, q_emb, mode=mode)
        small = memory.align(query, q_emb, mode=mode, gather=False, max_bytes=1)
        assert small.aligned is None
        for layer in range(2):
            assert torch.equal(small.index[layer], full.index[layer])
            torch.testing.assert_close(small.similarity[layer], full.similarity[layer], rtol=0, atol=1e-6)


def test_patch_memory_fill_dtype_and_shape():
    memory, _, _ = filled_memory()
    assert [t.shape for t in memory.tokens] == [(4, 9, 12)] * 2 and memory.embedding.shape == (4, 6)
    half = PatchMemory().fill([torch.zeros(2, 3, 4)], torch.zeros(2, 5), dtype=torch.float16)
    assert half.dtype == torch.float16 and half.embedding.dtype == torch.float16
    assert half.nbytes() == (2 * 3 * 4 + 2 * 5) * 2
    half.search_tokens(torch.bfloat16)  # a search copy is held memory too
    assert half.nbytes() == (2 * 3 * 4 + 2 * 5) * 2 + 2 * 3 * 4 * 2


def test_empty_memory_raises():
    memory = PatchMemory()
    assert not memory.is_filled
    with pytest.raises(RuntimeError, match="memory bank is empty: build it from the reference images"):
        memory.align([torch.zeros(1, 2, 3)])
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        MemoryBank(k=1).align_global([torch.zeros(1, 2, 3)])
    with pytest.raises(RuntimeError, match="memory bank has no windows"):
        MemoryBank(k=1).align_windows([torch.zeros(1, 2, 3)])
    with pytest.raises(RuntimeError, match="no global embeddings"):
        PatchMemory().fill([unit(2, 3, 4)], None).align([unit(1, 3, 4)], unit(1, 5), mode="image_index")


def test_align_rejects_bad_requests():
    memory, _, _ = filled_memory()
    query = [unit(1, 5, 12) for _ in range(2)]
    with pytest.raises(ValueError, match="unknown alignment mode 'nearest'"):
        memory.align(query, mode="nearest")
    with pytest.raises(ValueError, match="needs the query embeddings"):
        memory.align(query, mode="image_index")
    with pytest.raises(ValueError, match="query has 1 blocks, the memory 2"):
        memory.align(query[:1])
    bank = MemoryBank(k=4)
    bank.global_memory = memory
    with pytest.raises(ValueError, match="unknown alignment mode"):
        bank.align_global(query, mode="nearest")


# ----------------------------------------------------------------------------- MemoryBank windows

def window_bank(k=2, grid=(8, 8), size=4, stride=2, L=2, W=10, D=5, seed=9):
    g = torch.Generator().manual_seed(seed)
    wg = window_grid(grid, size, stride)
    bank = MemoryBank(k=k, windows=wg)
    R = k * wg.num_windows
    tokens = [unit(R, size * size, W, generator=g) for _ in range(L)]
    embedding = unit(R, D, generator=g)
    bank.window_memory.fill(tokens, embedding)
    bank.global_memory.fill([unit(k, grid[0] * grid[1], W, generator=g) for _ in range(L)], unit(k, D, generator=g))
    return bank, tokens, embedding


def brute_neighbourhood(p, n, radius):
    """Window positions searched for position p of n: 2r+1 of them (all n if n is smaller),
    centred on p and shifted inward at the border."""
    side = min(2 * radius + 1, n)
    start = min(max(p - radius, 0), n - side)
    return range(start, start + side)


# grid 6x6, windows of 2 with stride 1 -> 5x5 layout; grid 5x7 -> 4x6 layout
@pytest.mark.parametrize("grid", [(6, 6), (5, 7)])
@pytest.mark.parametrize("radius, topk", [(0, 0), (1, 0), (2, 0), (1, 5), (2, 1)])
def test_align_windows_position_equals_loop(grid, radius, topk):
    k, B, size, W = 2, 2, 2, 10
    bank, tokens, ref_emb = window_bank(k=k, grid=grid, size=size, stride=1, W=W)
    ny, nx = bank.windows.shape
    nw, m = ny * nx, size * size
    g = torch.Generator().manual_seed(10 + radius)
    query = [unit(B * nw, m, W, generator=g) for _ in range(2)]
    q_emb = unit(B * nw, 5, generator=g)
    out = bank.align_windows(query, q_emb, mode="position", radius=radius, topk=topk, max_bytes=500)

    def entries_for(q):
        wy, wx = divmod(q % nw, nx)
        entries = [i * nw + cy * nx + cx for i in range(k)
                   for cy in brute_neighbourhood(wy, ny, radius) for cx in brute_neighbourhood(wx, nx, radius)]
        if 0 < topk < len(entries):
            score = {e: float(q_emb[q].double() @ ref_emb[e].double()) for e in entries}
            entries = sorted(entries, key=score.get, reverse=True)[:topk]
        return entries

    for layer in range(2):
        b_sim, b_idx = brute_align(
            query[layer], lambda q: [(e * m + p, tokens[layer][e, p]) for e in entries_for(q) for p in range(m)])
        assert torch.equal(out.index[layer], b_idx)
        torch.testing.assert_close(out.similarity[layer].double(), b_sim, rtol=0, atol=1e-6)
    check_aligned_rows(bank.window_memory, out, query)
    exhaustive = bank.align_windows(query, mode="exhaustive")
    for layer in range(2):
        assert (exhaustive.similarity[layer] >= out.similarity[layer] - 1e-6).all()


def test_align_windows_position_topk_needs_embeddings():
    bank, _, _ = window_bank()
    query = [unit(18, 16, 10) for _ in range(2)]
    with pytest.raises(ValueError, match="topk needs the query embeddings"):
        bank.align_windows(query, mode="position", topk=3)
    assert bank.align_windows(query, mode="position", topk=0).index[0].shape == (18, 16)


def test_align_windows_image_index_valid_and_bounded_by_exhaustive():
    bank, _, _ = window_bank()
    nw = bank.windows.num_windows
    g = torch.Generator().manual_seed(11)
    query = [unit(2 * nw, 16, 10, generator=g) for _ in range(2)]
    emb = unit(2 * nw, 5, generator=g)
    fast = bank.align_windows(query, emb, mode="image_index")
    exhaustive = bank.align_windows(query, emb, mode="exhaustive")
    check_aligned_rows(bank.window_memory, fast, query)
    check_aligned_rows(bank.window_memory, exhaustive, query)
    picked = (emb @ bank.window_memory.embedding.t()).argmax(1)
    for layer in range(2):
        assert torch.equal(fast.index[layer] // 16, picked[:, None].expand(-1, 16))
        assert (exhaustive.similarity[layer] >= fast.similarity[layer] - 1e-6).all()


def test_align_global_position_falls_back_to_image_index():
    bank, _, _ = window_bank()
    g = torch.Generator().manual_seed(12)
    query = [unit(3, 64, 10, generator=g) for _ in range(2)]
    emb = unit(3, 5, generator=g)
    pos = bank.align_global(query, emb, mode="position")
    idx = bank.align_global(query, emb, mode="image_index")
    for layer in range(2):
        assert torch.equal(pos.index[layer], idx.index[layer])
        assert torch.equal(pos.aligned[layer], idx.aligned[layer])


# ----------------------------------------------------------------------------- bf16 search

@pytest.mark.parametrize("mode", ["exhaustive", "image_index"])
def test_bf16_search_keeps_exact_similarities_and_mostly_the_same_patches(mode):
    g = torch.Generator().manual_seed(21)
    R, m, W, Q, n = 3, 20, 48, 4, 20
    memory = PatchMemory().fill([unit(R, m, W, generator=g) for _ in range(2)], unit(R, 8, generator=g))
    query = [unit(Q, n, W, generator=g) for _ in range(2)]
    q_emb = unit(Q, 8, generator=g)
    exact = memory.align(query, q_emb, mode=mode)
    fast = memory.align(query, q_emb, mode=mode, search_dtype=torch.bfloat16)
    check_aligned_rows(memory, fast, query)  # similarity = exact dot product with the picked row
    for layer in range(2):
        assert fast.similarity[layer].dtype == torch.float32
        # the bf16 shortlist, re-ranked exactly, misses the exact pick only on extreme near-ties
        assert (fast.index[layer] == exact.index[layer]).float().mean() >= 0.99
        assert (exact.similarity[layer] - fast.similarity[layer]).max() < 1e-3
    assert all(t.dtype == torch.bfloat16 for t in memory.search_tokens(torch.bfloat16))
    assert all(a is b for a, b in zip(memory.search_tokens(None), memory.tokens))


def test_exact_best_picks_the_best_candidate_by_exact_dot_products():
    g = torch.Generator().manual_seed(22)
    query, rows = unit(3, 7, 16, generator=g), unit(30, 16, generator=g).half()
    cands = torch.randint(0, 30, (3, 7, 5), generator=g)
    sim, idx = exact_best(query, rows, cands, chunk_rows=4)  # 21 patches in 6 chunks
    assert sim.dtype == torch.float32 and sim.shape == idx.shape == (3, 7)
    for q in range(3):
        for i in range(7):
            want_s, want_i = brute_best(query[q, i], [(int(c), rows[c].float()) for c in cands[q, i]])
            assert int(idx[q, i]) == want_i
            assert float(sim[q, i]) == pytest.approx(want_s, abs=1e-6)
    # one candidate: just the exact similarity of a given pick
    one = cands[..., :1]
    sim1, idx1 = exact_best(query, rows, one)
    assert torch.equal(idx1, one[..., 0])
    torch.testing.assert_close(sim1.double(), (query.double() * rows.double()[one[..., 0]]).sum(-1), rtol=0, atol=1e-6)
    # a tie (two rows holding the same vector) goes to the earlier candidate
    twin = rows.clone()
    twin[7] = twin[4]
    assert int(exact_best(query[:1, :1], twin, torch.tensor([[[7, 4]]]))[1]) == 7
    assert int(exact_best(query[:1, :1], twin, torch.tensor([[[4, 7]]]))[1]) == 4


@pytest.mark.parametrize("t", [2, 5])
def test_nearest_functions_return_the_top_t_most_similar_first(t):
    g = torch.Generator().manual_seed(24)
    query, bank = unit(2, 6, 16, generator=g), unit(40, 16, generator=g)
    sims, idxs = nearest_reference(query, bank, max_bytes=3 * 40 * 4, topk=t)  # chunks of 3 rows
    assert sims.shape == idxs.shape == (2, 6, t)
    full = query @ bank.T  # [2, 6, 40]
    want = full.topk(t, dim=2)
    assert torch.equal(idxs, want.indices)
    torch.testing.assert_close(sims, want.values)
    # candidates: entries of m = 8 patches, 2 candidate entries per query
    entries = bank.reshape(5, 8, 16)
    cands = torch.tensor([[1, 3], [4, 0]])
    sims, idxs = nearest_in_candidates(query, entries, cands, topk=t)
    assert idxs.shape == (2, 6, t)
    for q in range(2):
        allowed = torch.cat([torch.arange(8) + 8 * int(e) for e in cands[q]])
        s = full[q][:, allowed]  # [6, 16]
        top = s.topk(t, dim=1)
        assert torch.equal(idxs[q], allowed[top.indices])
        torch.testing.assert_close(sims[q], top.values)


def test_low_precision_search_is_rescued_by_the_exact_re_ranking():
    """Rows that bf16 cannot tell apart: plain bf16 argmax takes the first of them, the exact
    re-ranking of the shortlist takes the truly most similar one."""
    g = torch.Generator().manual_seed(25)
    v = unit(64, generator=g).bfloat16().float()  # exactly representable in bf16
    query = F.normalize(v + 0.3 * unit(64, generator=g), dim=0)  # v's near-duplicates rank first
    better = v + 1e-4 * query * (v.abs() > 0.05)  # a nudge towards the query, below bf16 resolution
    assert torch.equal(better.bfloat16(), v.bfloat16()) and float(better @ query) > float(v @ query)
    rows = torch.cat([v[None], v[None], better[None], unit(9, 64, generator=g)])  # the best is row 2
    assert int((rows.bfloat16() @ query.bfloat16()).argmax()) == 0  # bf16 alone: the wrong row
    memory = PatchMemory().fill([rows[None]], None)
    fast = memory.align([query[None, None]], mode="exhaustive", search_dtype=torch.bfloat16)
    exact = memory.align([query[None, None]], mode="exhaustive")
    assert int(exact.index[0]) == int(fast.index[0]) == 2
    torch.testing.assert_close(fast.similarity[0], exact.similarity[0], rtol=0, atol=1e-6)
