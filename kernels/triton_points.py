"""Point-cloud kernels in Triton: farthest point sampling, k nearest neighbours and ball query (float32).

Called by the dispatchers in mtp.kernels.points, which check the arguments and settle the start point of
FPS; this module is imported only when CUDA tensors reach them (or, in the tests, under TRITON_INTERPRET=1 on
CPU tensors). Conventions are those of mtp.kernels.points: squared distances summed as
(dx*dx + dy*dy) + dz*dz, compiled with enable_fp_fusion=False so no FMA changes a rounding, so indices
equal the torch paths' exactly; ties go to the lower index; a point is valid when its coordinates are finite
and its index is below its cloud's length.

- FPS: one program per cloud (like PointNet++'s op, one block per batch entry); each step sweeps the cloud in
  tiles, updating the min-distance buffer in global memory and a per-lane running argmax.
- kNN: one program per block of queries; k sweeps, sweep j finding the smallest (distance, index) pair
  above the one found by sweep j-1, so nothing but the outputs is stored and the order is exact.
- Ball query: one program per block of queries; tiles in index order, hits ranked by a cumulative sum and
  scattered to their slots, stopping once every query of the block has nsample hits.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FPS_BLOCK = 1024
FPS_WARPS = 8
KNN_BLOCK_M, KNN_BLOCK_N = 32, 128
BALL_BLOCK_M, BALL_BLOCK_N = 32, 128


@triton.jit
def _squared_distance(ax, ay, az, bx, by, bz):
    dx = ax - bx
    dy = ay - by
    dz = az - bz
    return dx * dx + dy * dy + dz * dz


@triton.jit
def _finite(x, y, z):
    # NaN fails every comparison, so this is also False for NaN
    return (tl.abs(x) < float("inf")) & (tl.abs(y) < float("inf")) & (tl.abs(z) < float("inf"))


@triton.jit
def _fps_kernel(Xyz, Dist, Out, First, Lengths, n_points, n_sample, stride_b, stride_n, stride_c,
                HAS_LENGTHS: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    base = Xyz + b * stride_b
    dist_base = Dist + b * n_points
    length = n_points
    if HAS_LENGTHS:
        length = tl.load(Lengths + b).to(tl.int32)
    offs = tl.arange(0, BLOCK)
    current = tl.load(First + b).to(tl.int32)
    for j in range(0, n_sample):
        tl.store(Out + b * n_sample + j, current.to(tl.int64))
        cx = tl.load(base + current * stride_n)
        cy = tl.load(base + current * stride_n + stride_c)
        cz = tl.load(base + current * stride_n + 2 * stride_c)
        # per lane: the largest distance seen and its index; strict > keeps the earlier (lower) index
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK], tl.int32)
        for start in range(0, n_points, BLOCK):
            cols = start + offs
            inside = cols < n_points
            x = tl.load(base + cols * stride_n, mask=inside, other=0.0)
            y = tl.load(base + cols * stride_n + stride_c, mask=inside, other=0.0)
            z = tl.load(base + cols * stride_n + 2 * stride_c, mask=inside, other=0.0)
            valid = inside & (cols < length) & _finite(x, y, z)
            d = _squared_distance(x, y, z, cx, cy, cz)
            old = tl.load(dist_base + cols, mask=inside, other=float("-inf"))
            new = tl.where(valid, tl.minimum(old, d), float("-inf"))
            tl.store(dist_base + cols, new, mask=inside)
            take = new > best
            best_idx = tl.where(take, cols, best_idx)
            best = tl.where(take, new, best)
        top = tl.max(best, 0)
        current = tl.min(tl.where(best == top, best_idx, n_points), 0)
        tl.debug_barrier()


@triton.jit
def _knn_kernel(Query, Xyz, Lengths, OutIdx, OutDist, n_query, n_points, k,
                stride_qb, stride_qm, stride_qc, stride_pb, stride_pn, stride_pc,
                HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_query
    q_base = Query + b * stride_qb + rows * stride_qm
    qx = tl.load(q_base, mask=row_ok, other=0.0)
    qy = tl.load(q_base + stride_qc, mask=row_ok, other=0.0)
    qz = tl.load(q_base + 2 * stride_qc, mask=row_ok, other=0.0)
    q_valid = _finite(qx, qy, qz)
    length = n_points
    if HAS_LENGTHS:
        length = tl.load(Lengths + b).to(tl.int32)
    p_base = Xyz + b * stride_pb
    out_offs = (b * n_query + rows).to(tl.int64) * k
    offs_n = tl.arange(0, BLOCK_N)
    prev_d = tl.full([BLOCK_M], float("-inf"), tl.float32)
    prev_i = tl.full([BLOCK_M], -1, tl.int32)
    for j in range(0, k):
        best_d = tl.full([BLOCK_M], float("inf"), tl.float32)
        best_i = tl.full([BLOCK_M], n_points, tl.int32)
        for start in range(0, n_points, BLOCK_N):
            cols = start + offs_n
            inside = cols < n_points
            px = tl.load(p_base + cols * stride_pn, mask=inside, other=0.0)
            py = tl.load(p_base + cols * stride_pn + stride_pc, mask=inside, other=0.0)
            pz = tl.load(p_base + cols * stride_pn + 2 * stride_pc, mask=inside, other=0.0)
            p_valid = inside & (cols < length) & _finite(px, py, pz)
            d = _squared_distance(qx[:, None], qy[:, None], qz[:, None], px[None, :], py[None, :], pz[None, :])
            d = tl.where(q_valid[:, None] & p_valid[None, :], d, float("inf"))
            # pairs after the previous pick in (distance, index) order
            later = (d > prev_d[:, None]) | ((d == prev_d[:, None]) & (cols[None, :] > prev_i[:, None]))
            eligible = inside[None, :] & later
            masked = tl.where(eligible, d, float("inf"))
            tile_d = tl.min(masked, 1)
            tile_i = tl.min(tl.where(eligible & (masked == tile_d[:, None]), cols[None, :], n_points), 1)
            better = (tile_d < best_d) | ((tile_d == best_d) & (tile_i < best_i))
            best_d = tl.where(better, tile_d, best_d)
            best_i = tl.where(better, tile_i, best_i)
        tl.store(OutIdx + out_offs + j, best_i.to(tl.int64), mask=row_ok)
        tl.store(OutDist + out_offs + j, best_d, mask=row_ok)
        prev_d = best_d
        prev_i = best_i


@triton.jit
def _ball_query_kernel(Query, Xyz, Lengths, OutIdx, OutCount, n_query, n_points, nsample, radius2,
                       stride_qb, stride_qm, stride_qc, stride_pb, stride_pn, stride_pc,
                       HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_query
    q_base = Query + b * stride_qb + rows * stride_qm
    qx = tl.load(q_base, mask=row_ok, other=0.0)
    qy = tl.load(q_base + stride_qc, mask=row_ok, other=0.0)
    qz = tl.load(q_base + 2 * stride_qc, mask=row_ok, other=0.0)
    q_valid = row_ok & _finite(qx, qy, qz)
    length = n_points
    if HAS_LENGTHS:
        length = tl.load(Lengths + b).to(tl.int32)
    p_base = Xyz + b * stride_pb
    out_rows = OutIdx + (b * n_query + rows).to(tl.int64) * nsample
    offs_n = tl.arange(0, BLOCK_N)
    count = tl.zeros([BLOCK_M], tl.int32)
    first = tl.zeros([BLOCK_M], tl.int32)
    start = tl.full([], 0, tl.int32)
    # rows past n_query count as full, so they never hold the loop open
    while (start < n_points) & (tl.min(tl.where(q_valid, count, nsample), 0) < nsample):
        cols = start + offs_n
        inside = cols < n_points
        px = tl.load(p_base + cols * stride_pn, mask=inside, other=0.0)
        py = tl.load(p_base + cols * stride_pn + stride_pc, mask=inside, other=0.0)
        pz = tl.load(p_base + cols * stride_pn + 2 * stride_pc, mask=inside, other=0.0)
        p_valid = inside & (cols < length) & _finite(px, py, pz)
        d = _squared_distance(qx[:, None], qy[:, None], qz[:, None], px[None, :], py[None, :], pz[None, :])
        hit = (d < radius2) & q_valid[:, None] & p_valid[None, :]
        hits = hit.to(tl.int32)
        slot = count[:, None] + tl.cumsum(hits, 1) - 1  # hits keep index order
        tl.store(out_rows[:, None] + slot, (cols[None, :] + 0 * slot).to(tl.int64), mask=hit & (slot < nsample))
        tile_first = tl.min(tl.where(hit, cols[None, :], n_points), 1)
        first = tl.where((count == 0) & (tile_first < n_points), tile_first, first)
        count += tl.sum(hits, 1)
        start += BLOCK_N
    count = tl.minimum(count, nsample)
    # remaining slots: the first index found, or 0 when nothing was found (PointNet++)
    offs_s = tl.arange(0, BLOCK_S)
    fill = tl.where(count > 0, first, 0)
    pad = row_ok[:, None] & (offs_s[None, :] >= count[:, None]) & (offs_s[None, :] < nsample)
    tl.store(out_rows[:, None] + offs_s[None, :], (fill[:, None] + 0 * offs_s[None, :]).to(tl.int64), mask=pad)
    tl.store(OutCount + b * n_query + rows, count.to(tl.int64), mask=row_ok)


def _lengths_arg(lengths: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # a dummy pointer when there are no lengths (the kernel never reads it)
    return lengths.to(torch.int32).contiguous() if lengths is not None else like.new_empty(1, dtype=torch.int32)


def farthest_point_sample_triton(xyz: torch.Tensor, npoint: int, first: torch.Tensor,
                                 lengths: torch.Tensor | None) -> torch.Tensor:
    """xyz [B, N, 3] float32, first [B] start index per cloud (valid), lengths [B] or None -> long [B, npoint]."""
    b, n, _ = xyz.shape
    out = torch.empty(b, npoint, dtype=torch.long, device=xyz.device)
    if b == 0 or npoint == 0:
        return out
    dist = torch.full((b, n), float("inf"), dtype=torch.float32, device=xyz.device)
    block = min(FPS_BLOCK, triton.next_power_of_2(n))
    _fps_kernel[(b,)](xyz, dist, out, first.to(torch.int32).contiguous(), _lengths_arg(lengths, xyz), n, npoint,
                      xyz.stride(0), xyz.stride(1), xyz.stride(2), HAS_LENGTHS=lengths is not None, BLOCK=block,
                      num_warps=FPS_WARPS if block >= 512 else 4, enable_fp_fusion=False)
    return out


def knn_triton(query: torch.Tensor, xyz: torch.Tensor, k: int,
               lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """query [B, M, 3], xyz [B, N, 3] float32, 1 <= k <= N -> (long [B, M, k], float32 [B, M, k])."""
    b, m, _ = query.shape
    n = xyz.shape[1]
    index = torch.empty(b, m, k, dtype=torch.long, device=xyz.device)
    dist = torch.empty(b, m, k, dtype=torch.float32, device=xyz.device)
    if b == 0 or m == 0:
        return index, dist
    grid = (b, triton.cdiv(m, KNN_BLOCK_M))
    _knn_kernel[grid](query, xyz, _lengths_arg(lengths, xyz), index, dist, m, n, k,
                      query.stride(0), query.stride(1), query.stride(2), xyz.stride(0), xyz.stride(1),
                      xyz.stride(2), HAS_LENGTHS=lengths is not None, BLOCK_M=KNN_BLOCK_M, BLOCK_N=KNN_BLOCK_N,
                      num_warps=4, enable_fp_fusion=False)
    return index, dist


def ball_query_triton(query: torch.Tensor, xyz: torch.Tensor, radius2: float, nsample: int,
                      lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """query [B, M, 3], xyz [B, N, 3] float32, radius2 already rounded to float32 -> (long [B, M, nsample],
    long count [B, M])."""
    b, m, _ = query.shape
    n = xyz.shape[1]
    index = torch.empty(b, m, nsample, dtype=torch.long, device=xyz.device)
    count = torch.empty(b, m, dtype=torch.long, device=xyz.device)
    if b == 0 or m == 0:
        return index, count
    grid = (b, triton.cdiv(m, BALL_BLOCK_M))
    _ball_query_kernel[grid](query, xyz, _lengths_arg(lengths, xyz), index, count, m, n, nsample, radius2,
                             query.stride(0), query.stride(1), query.stride(2), xyz.stride(0), xyz.stride(1),
                             xyz.stride(2), HAS_LENGTHS=lengths is not None, BLOCK_M=BALL_BLOCK_M,
                             BLOCK_N=BALL_BLOCK_N, BLOCK_S=triton.next_power_of_2(nsample), num_warps=4,
                             enable_fp_fusion=False)
    return index, count
