"""Sparse window attention with contextual relative position tables (sptr / Stratified Transformer style).

Points [N] are grouped into windows by an integer id; every point attends to every point of its own window,
itself included, with no mask. For query i and key j of a window, with per-point quantised positions
quant [N, 3] and r = quant[i] - quant[j] + (L - 1) / 2 per axis (L = 2 * quant_grid_length - 1 table rows):

    score(i, j) = q_i . (k_j + Tq[r_x, 0] + Tq[r_y, 1] + Tq[r_z, 2]) + k_j . (Tk[r_x, 0] + Tk[r_y, 1] + Tk[r_z, 2])
    out_i       = sum_j softmax_j(score(i, j)) * (v_j + Tv[r_x, 0] + Tv[r_y, 1] + Tv[r_z, 2])

with q, k, v [N, heads, head_dim] (q already scaled) and tables [L, 3, heads, head_dim]. The term order is
sptr's CUDA kernels' (dot_prod_with_idx_all / attention_step2_with_rel_pos_value); ConDaFormer calls them once
per plane with a third of the heads and the same tables (libs/sptr in LHDuan/ConDaFormer, commit 1fa596e).

`sparse_window_attention` is the vectorised path: windows as a packed list of (query, key) pairs, CSR-ordered
by query, processed in chunks of pairs so that the per-pair [chunk, heads, head_dim] table gathers stay bounded;
the softmax is a segment softmax over each query's pairs. `sparse_window_attention_reference` loops over the
windows with a dense [n, n] attention each. Both are differentiable through autograd.

`window_partition` and `window_quantise` reproduce ConDaFormer's window ids (torch_cluster's grid formula on
[pos, batch] with the batch-wide minimum as origin, the half-window shift added to the positions) and its
per-axis quantisation ((pos - min + shift) mod window, floor-divided by quant_size), with the same float32
operation order, because points that sit near a window or bin border must fall on the same side.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK_PAIRS = 1 << 18


def _check(fn: str, q, k, v, window, quant, q_table, k_table, v_table) -> int:
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{fn}: q, k, v must all be [N, heads, head_dim], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    n, h, d = q.shape
    if window.shape != (n,) or window.dtype.is_floating_point:
        raise ValueError(f"{fn}: window must be integer ids [N] = [{n}], got {tuple(window.shape)} {window.dtype}")
    if quant.shape != (n, 3) or quant.dtype.is_floating_point:
        raise ValueError(f"{fn}: quant must be integer [N, 3], got {tuple(quant.shape)} {quant.dtype}")
    for name, table in (("q_table", q_table), ("k_table", k_table), ("v_table", v_table)):
        if table.dim() != 4 or table.shape[1:] != (3, h, d) or table.shape[0] % 2 == 0:
            raise ValueError(f"{fn}: {name} must be [2*qgl-1, 3, {h}, {d}], got {tuple(table.shape)}")
    if not q_table.shape == k_table.shape == v_table.shape:
        raise ValueError(f"{fn}: the three tables must have the same shape")
    length = q_table.shape[0]
    if n and (int(quant.min()) < 0 or int(quant.max()) > length // 2):
        raise ValueError(f"{fn}: quantised positions must lie in [0, {length // 2}] for {length}-row tables, "
                         f"got [{int(quant.min())}, {int(quant.max())}]")
    return length


def _table_sum(table: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Tx[r_x] + Ty[r_y] + Tz[r_z] -> [M, heads, head_dim] for rel [M, 3], summed in the CUDA kernels' order."""
    return table[rel[:, 0], 0] + table[rel[:, 1], 1] + table[rel[:, 2], 2]


def window_pairs(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (query, key) pairs within windows -> (query [M], key [M], query_ptr [N + 1]).

    Pairs are grouped by query in ascending query order (CSR: the pairs of query i are
    query_ptr[i]:query_ptr[i + 1]), keys in ascending index order within a query.
    """
    n = window.shape[0]
    order = torch.sort(window, stable=True).indices
    _, counts = torch.unique_consecutive(window[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    per_sorted = torch.repeat_interleave(torch.arange(counts.shape[0], device=window.device), counts)
    # reorder per query (original index order) so the CSR is by query index
    group = torch.empty_like(per_sorted)
    group[order] = per_sorted
    n_keys = counts[group]
    query_ptr = torch.zeros(n + 1, dtype=torch.long, device=window.device)
    torch.cumsum(n_keys, 0, out=query_ptr[1:])
    query = torch.repeat_interleave(torch.arange(n, device=window.device), n_keys)
    local = torch.arange(query.shape[0], device=window.device) - query_ptr[query]
    key_sorted = starts[group][query] + local
    # keys of one window in ascending index order: the window's members as sorted (stable) by id
    key = order[key_sorted]
    return query, key, query_ptr


def sparse_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: torch.Tensor,
                            quant: torch.Tensor, q_table: torch.Tensor, k_table: torch.Tensor,
                            v_table: torch.Tensor, chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> torch.Tensor:
    """Window attention with contextual relative position tables -> [N, heads, head_dim] (see module docstring)."""
    length = _check("sparse_window_attention", q, k, v, window, quant, q_table, k_table, v_table)
    n, h, d = q.shape
    if n == 0:
        return q.new_zeros(n, h, d)
    query, key, _ = window_pairs(window)
    m = query.shape[0]
    centre = length // 2
    quant = quant.long()
    scores = q.new_empty(m, h)
    chunks = [(lo, min(m, lo + chunk_pairs)) for lo in range(0, m, chunk_pairs)]
    rels = []
    for lo, hi in chunks:
        qi, kj = query[lo:hi], key[lo:hi]
        rel = quant[qi] - quant[kj] + centre
        rels.append(rel)
        kk = k[kj]
        scores[lo:hi] = (q[qi] * (kk + _table_sum(q_table, rel))).sum(-1) + \
            (kk * _table_sum(k_table, rel)).sum(-1)
    # segment softmax over each query's pairs; the max is only a shift, so it carries no gradient
    with torch.no_grad():
        top = q.new_full((n, h), float("-inf")).scatter_reduce_(0, query[:, None].expand(-1, h), scores, "amax")
    e = torch.exp(scores - top[query])
    total = q.new_zeros(n, h).index_add_(0, query, e)
    attn = e / total[query]
    out = q.new_zeros(n, h, d)
    for (lo, hi), rel in zip(chunks, rels):
        kj = key[lo:hi]
        out = out.index_add(0, query[lo:hi], attn[lo:hi, :, None] * (v[kj] + _table_sum(v_table, rel)))
    return out


def sparse_window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: torch.Tensor,
                                      quant: torch.Tensor, q_table: torch.Tensor, k_table: torch.Tensor,
                                      v_table: torch.Tensor) -> torch.Tensor:
    """One dense attention per window (same contract as sparse_window_attention)."""
    length = _check("sparse_window_attention_reference", q, k, v, window, quant, q_table, k_table, v_table)
    centre = length // 2
    out = q.new_zeros(q.shape)
    for w in torch.unique(window):
        idx = (window == w).nonzero().squeeze(1)
        pos = quant[idx].long()
        rel = (pos[:, None, :] - pos[None, :, :] + centre).reshape(-1, 3)
        n = idx.shape[0]
        tq = _table_sum(q_table, rel).reshape(n, n, *q.shape[1:])
        tk = _table_sum(k_table, rel).reshape(n, n, *q.shape[1:])
        tv = _table_sum(v_table, rel).reshape(n, n, *q.shape[1:])
        qw, kw, vw = q[idx][:, None], k[idx][None, :], v[idx][None, :]
        scores = (qw * (kw + tq)).sum(-1) + (kw * tk).sum(-1)  # [n_q, n_k, heads]
        attn = torch.softmax(scores, dim=1)
        out[idx] = (attn[..., None] * (vw + tv)).sum(1)
    return out


def window_partition(xyz: torch.Tensor, batch: torch.Tensor, window_size: torch.Tensor,
                     shift: bool) -> torch.Tensor:
    """Window id [N] of each point: cells of `window_size` [3] from the batch-wide min of xyz, per cloud.

    Shifted windows move every point by +window/2 on every axis (the origin stays the unshifted min).
    Ids are dense ranks ordered by (batch, z, y, x) cell, x fastest, as torch_cluster's grid numbering.
    """
    window_size = window_size.to(xyz)
    start = xyz.min(0).values
    pos = xyz + 0.5 * window_size if shift else xyz
    cell = ((pos - start) / window_size).long()  # truncation, as torch_cluster; every value is >= 0
    extent = cell.max(0).values + 1
    key = ((batch.long() * extent[2] + cell[:, 2]) * extent[1] + cell[:, 1]) * extent[0] + cell[:, 0]
    return torch.unique(key, sorted=True, return_inverse=True)[1]


def window_quantise(xyz: torch.Tensor, window_size: torch.Tensor, quant_size: torch.Tensor,
                    shift: bool) -> torch.Tensor:
    """Per-axis bin [N, 3] (long) of each point inside its window: floor(((xyz - min + shift) mod w) / quant)."""
    window_size = window_size.to(xyz)
    local = xyz - xyz.min(0).values
    if shift:
        local = local + 0.5 * window_size
    local = torch.remainder(local, window_size)
    return torch.div(local, quant_size.to(xyz), rounding_mode="floor").long()
