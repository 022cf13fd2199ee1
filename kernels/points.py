"""Point-cloud kernels: farthest point sampling, k nearest neighbours, ball query and grid (voxel) sampling.

Every operation has a `*_reference` written for clarity in plain torch, a fast torch path (vectorised over the
batch, chunked where it builds query x point tables; it runs on any device) and, for CUDA float32 tensors, a
Triton kernel (mtp.kernels.triton_points, imported only there). The public function dispatches on the device
and logs the path taken at debug level on "mtp.kernels". grid_sample has no Triton kernel: its torch ops
(unique, scatter_reduce, sort) run on CUDA as they are.

Shared conventions:
- Points are [B, N, 3]. A point is *invalid* when one of its coordinates is not finite (NaN or +-inf) or, with
  `lengths` [B], when its index is >= lengths[b] (padding). Invalid points are never sampled by FPS, never
  inside a ball, and are at distance +inf from every query in knn.
- Squared distances are summed in one fixed order, (dx*dx + dy*dy) + dz*dz, with d = a - b rounded in the
  points' dtype, on every path (the Triton kernels are compiled without FMA contraction), so indices agree
  exactly across paths, ties included.
- Ties are broken by the lower point index everywhere (torch.argmax and stable sorts return the first).
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple, Sequence

import torch

from mtp.kernels.attention import triton_available

log = logging.getLogger("mtp.kernels")

TRITON_DTYPES = (torch.float32,)
# Working memory of one chunk of the query x point tables in knn/ball_query (see _chunk_rows)
DEFAULT_CHUNK_BYTES = 16 * 2**20


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the Triton point kernels cover these tensors: all on CUDA, float32, Triton installed."""
    return (all(t.is_cuda for t in tensors) and triton_available()
            and all(t.dtype in TRITON_DTYPES for t in tensors))


# ---------------------------------------------------------------- shared checks and helpers

def _check_points(fn: str, name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{fn}: {name} must be a [B, N, 3] tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: {name} must be floating point, got {x.dtype}")


def _check_pair(fn: str, query: torch.Tensor, xyz: torch.Tensor) -> None:
    _check_points(fn, "query", query)
    _check_points(fn, "xyz", xyz)
    if query.shape[0] != xyz.shape[0]:
        raise ValueError(f"{fn}: query and xyz need the same batch size, got {query.shape[0]} and {xyz.shape[0]}")
    if query.dtype != xyz.dtype or query.device != xyz.device:
        raise ValueError(f"{fn}: query and xyz need the same dtype and device, got {query.dtype}/{query.device} "
                         f"and {xyz.dtype}/{xyz.device}")


def _check_count(fn: str, name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{fn}: {name} must be an int >= {low}, got {value!r}")
    return value


def _check_lengths(fn: str, lengths, xyz: torch.Tensor) -> torch.Tensor | None:
    """lengths [B] (valid points per cloud, the rest is padding) as a long tensor on xyz's device."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=xyz.device)
    b, n = xyz.shape[:2]
    if lengths.shape != (b,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"{fn}: lengths must be an integer tensor of shape [{b}], got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    if b and bool(((lengths < 0) | (lengths > n)).any()):
        raise ValueError(f"{fn}: lengths must lie in [0, N={n}], got {lengths.tolist()}")
    return lengths.long()


def valid_points(xyz: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, N]: the point has finite coordinates and lies within its cloud's length."""
    valid = torch.isfinite(xyz).all(-1)
    if lengths is not None:
        valid &= torch.arange(xyz.shape[1], device=xyz.device) < lengths[:, None]
    return valid


def _squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|^2 over the last dim (3), summed as (dx*dx + dy*dy) + dz*dz: the order every path uses."""
    diff = a - b
    sq = diff * diff
    return sq[..., 0] + sq[..., 1] + sq[..., 2]


def _squared_radius(radius: float, dtype: torch.dtype) -> float:
    """radius^2, rounded once to the points' dtype (the value every path compares against)."""
    return torch.tensor(float(radius) * float(radius), dtype=torch.float64).to(dtype).item()


def _chunk_rows(batch: int, n_points: int, bytes_per_pair: int, chunk_bytes: int | None) -> int:
    """Queries per chunk so that the chunk's [B, rows, N] tables take at most chunk_bytes (at least one row)."""
    budget = DEFAULT_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    return max(1, budget // max(1, batch * n_points * bytes_per_pair))


def _pair_distances(q: torch.Tensor, p_soa: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """Squared distances [B, C, N] of query chunk q [B, C, 3] to points p_soa [B, 3, N], into `out`.

    Same rounding as _squared_distance(q[:, :, None], p[:, None]): d = q - p per coordinate, then
    (dx*dx + dy*dy) + dz*dz, with two [B, C, N] buffers and nothing else of that size.
    """
    torch.sub(q[..., 0:1], p_soa[:, None, 0], out=out)
    out.mul_(out)
    torch.sub(q[..., 1:2], p_soa[:, None, 1], out=tmp)
    tmp.mul_(tmp)
    out.add_(tmp)
    torch.sub(q[..., 2:3], p_soa[:, None, 2], out=tmp)
    tmp.mul_(tmp)
    return out.add_(tmp)


# ---------------------------------------------------------------- farthest point sampling

def _fps_checks(xyz, npoint, start, lengths):
    fn = "farthest_point_sample"
    _check_points(fn, "xyz", xyz)
    _check_count(fn, "npoint", npoint, 0)
    _check_count(fn, "start", start, 0)
    b, n = xyz.shape[:2]
    if start >= max(n, 1):
        raise ValueError(f"farthest_point_sample: start must be < N={n}, got {start}")
    lengths = _check_lengths(fn, lengths, xyz)
    valid = valid_points(xyz, lengths)
    if b and not bool(valid.any(1).all()):
        empty = (~valid.any(1)).nonzero().flatten().tolist()
        raise ValueError(f"farthest_point_sample: xyz has no valid point (finite and within lengths) in "
                         f"batch entries {empty}")
    return lengths, valid


def _first_indices(valid: torch.Tensor, start: int) -> torch.Tensor:
    """[B]: `start` where that point is valid, else the lowest valid index of the cloud."""
    lowest = valid.to(torch.uint8).argmax(1)  # first True
    return torch.where(valid[:, start], torch.full_like(lowest, start), lowest)


def farthest_point_sample_reference(xyz: torch.Tensor, npoint: int, start: int = 0, *,
                                    lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Farthest point sampling, one cloud and one step at a time (see farthest_point_sample)."""
    lengths, valid_all = _fps_checks(xyz, npoint, start, lengths)
    b, n = xyz.shape[:2]
    out = torch.empty(b, npoint, dtype=torch.long, device=xyz.device)
    for i in range(b):
        points, valid = xyz[i], valid_all[i]
        current = start if bool(valid[start]) else int(valid.nonzero()[0])
        # min squared distance to the chosen set; invalid points sit at -inf and can never be the argmax
        dist = torch.full((n,), float("inf"), dtype=xyz.dtype, device=xyz.device)
        dist[~valid] = float("-inf")
        for j in range(npoint):
            out[i, j] = current
            d = _squared_distance(points, points[current])
            dist = torch.where(valid, torch.minimum(dist, d), dist)
            current = int(torch.argmax(dist))  # the first maximum: ties go to the lowest index
    return out


def _fps_torch(xyz: torch.Tensor, npoint: int, first: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """All clouds at once, coordinates laid out [B, 3, N], every step's buffers reused, no host sync."""
    b, n = xyz.shape[:2]
    # invalid points moved to the origin keep every distance finite; their -inf in `dist` never changes
    soa = torch.where(valid[..., None], xyz, torch.zeros((), dtype=xyz.dtype, device=xyz.device))
    soa = soa.transpose(1, 2).contiguous()
    dist = torch.full((b, n), float("inf"), dtype=xyz.dtype, device=xyz.device).masked_fill_(~valid, float("-inf"))
    diff = torch.empty_like(soa)
    d = torch.empty_like(dist)
    out = torch.empty(b, npoint, dtype=torch.long, device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    current = first
    for j in range(npoint):
        out[:, j] = current
        torch.sub(soa, soa[rows, :, current][..., None], out=diff)
        diff.mul_(diff)
        torch.add(diff[:, 0], diff[:, 1], out=d)
        d.add_(diff[:, 2])
        torch.minimum(dist, d, out=dist)
        current = dist.argmax(1)
    return out


def farthest_point_sample(xyz: torch.Tensor, npoint: int, start: int = 0, *,
                          lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Farthest point sampling of `npoint` points per cloud; xyz [B, N, 3] -> long [B, npoint] indices.

    Convention (PointNet++'s CUDA op, Pointcept/pointops): the first index is `start` (0 by default), then
    each step takes the point with the largest squared distance to the chosen set, ties to the lowest index.
    Invalid points (non-finite coordinates, or index >= lengths[b]) are never chosen; when `start` is
    invalid for a cloud, that cloud starts at its lowest valid index. A cloud without any valid point is a
    ValueError. When npoint exceeds the valid points, the steps after they are exhausted repeat the
    lowest-index point at distance 0 (chosen points and duplicates), as PointNet++'s op does.
    """
    lengths, valid = _fps_checks(xyz, npoint, start, lengths)
    first = _first_indices(valid, start)
    if use_triton(xyz):
        from mtp.kernels.triton_points import farthest_point_sample_triton

        log.debug("farthest_point_sample: triton xyz%s npoint=%d", tuple(xyz.shape), npoint)
        return farthest_point_sample_triton(xyz, npoint, first, lengths)
    log.debug("farthest_point_sample: torch xyz%s npoint=%d", tuple(xyz.shape), npoint)
    return _fps_torch(xyz, npoint, first, valid)


# ---------------------------------------------------------------- k nearest neighbours

def _knn_checks(query, xyz, k, lengths):
    _check_pair("knn", query, xyz)
    _check_count("knn", "k", k, 1)
    if k > xyz.shape[1]:
        raise ValueError(f"knn: k={k} exceeds the number of points N={xyz.shape[1]} in xyz")
    return _check_lengths("knn", lengths, xyz)


def knn_reference(query: torch.Tensor, xyz: torch.Tensor, k: int, *,
                  lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours by a full distance table and a stable sort, one cloud at a time (see knn)."""
    lengths = _knn_checks(query, xyz, k, lengths)
    q_valid, p_valid = valid_points(query), valid_points(xyz, lengths)
    b, m = query.shape[:2]
    index = torch.empty(b, m, k, dtype=torch.long, device=xyz.device)
    dist = torch.empty(b, m, k, dtype=xyz.dtype, device=xyz.device)
    for i in range(b):
        d = _squared_distance(query[i][:, None, :], xyz[i][None, :, :])  # [M, N]
        d = torch.where(q_valid[i][:, None] & p_valid[i][None, :], d, float("inf"))
        d_sorted, order = torch.sort(d, dim=-1, stable=True)  # equal distances keep index order
        index[i], dist[i] = order[:, :k], d_sorted[:, :k]
    return index, dist


def _knn_torch(query, xyz, k, lengths, chunk_bytes=None):
    """Chunks of queries: exact distance table [B, C, N], topk, then ties settled by index.

    Memory: two [B, C, N] tables of xyz's dtype and one bool table, i.e. B*C*N*(2*itemsize + 1) bytes,
    with C = max(1, chunk_bytes // (B*N*(2*itemsize + 1))) queries (chunk_bytes defaults to 16 MiB),
    besides the inputs, the outputs and a [B, 3, N] copy of xyz. Rows whose k-th distance is tied with an
    unchosen point (duplicates; fewer than k valid points) are redone by a stable sort of the whole row, which
    adds (itemsize + 8) * N bytes per such row of the chunk.
    """
    b, m = query.shape[:2]
    n = xyz.shape[1]
    q_valid, p_valid = valid_points(query), valid_points(xyz, lengths)
    any_invalid = not bool(q_valid.all()) or not bool(p_valid.all())
    p_soa = xyz.transpose(1, 2).contiguous()
    rows = _chunk_rows(b, n, 2 * xyz.element_size() + 1, chunk_bytes)
    index = torch.empty(b, m, k, dtype=torch.long, device=xyz.device)
    dist = torch.empty(b, m, k, dtype=xyz.dtype, device=xyz.device)
    out = tmp = None
    for lo in range(0, m, rows):
        hi = min(m, lo + rows)
        if out is None or out.shape[1] != hi - lo:
            out = torch.empty(b, hi - lo, n, dtype=xyz.dtype, device=xyz.device)
            tmp = torch.empty_like(out)
        d = _pair_distances(query[:, lo:hi], p_soa, out, tmp)
        if any_invalid:
            d.masked_fill_(~p_valid[:, None, :], float("inf"))
            d.masked_fill_(~q_valid[:, lo:hi, None], float("inf"))
        vals, idx = torch.topk(d, k, dim=-1, largest=False, sorted=True)
        # topk picks among equal values arbitrarily: the chosen set is right unless the k-th value has
        # more copies in the row than were chosen; the order among equal values is fixed by index below
        kth = vals[..., -1:]
        ambiguous = (d == kth).sum(-1) != (vals == kth).sum(-1)
        idx, order = idx.sort(-1)
        vals, order = vals.gather(-1, order).sort(dim=-1, stable=True)
        idx = idx.gather(-1, order)
        if bool(ambiguous.any()):
            where = ambiguous.nonzero(as_tuple=True)
            full_vals, full_idx = torch.sort(d[where], dim=-1, stable=True)
            vals[where], idx[where] = full_vals[:, :k], full_idx[:, :k]
        index[:, lo:hi], dist[:, lo:hi] = idx, vals
    return index, dist


def knn(query: torch.Tensor, xyz: torch.Tensor, k: int, *, lengths: torch.Tensor | None = None,
        chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest points of xyz [B, N, 3] to each query [B, M, 3] -> (long [B, M, k], squared dist [B, M, k]).

    Sorted by ascending squared distance, equal distances by the lower index. Invalid points (non-finite, or
    index >= lengths[b]) and non-finite queries are at distance +inf, so they come last (by index) and only
    when fewer than k valid points exist. k > N is a ValueError. chunk_bytes bounds the torch path's working
    memory (see _knn_torch); the Triton kernel needs none beyond its outputs.
    """
    lengths = _knn_checks(query, xyz, k, lengths)
    if use_triton(query, xyz):
        from mtp.kernels.triton_points import knn_triton

        log.debug("knn: triton query%s xyz%s k=%d", tuple(query.shape), tuple(xyz.shape), k)
        return knn_triton(query, xyz, k, lengths)
    log.debug("knn: torch query%s xyz%s k=%d", tuple(query.shape), tuple(xyz.shape), k)
    return _knn_torch(query, xyz, k, lengths, chunk_bytes)


# ---------------------------------------------------------------- ball query

def _ball_checks(query, xyz, radius, nsample, lengths):
    _check_pair("ball_query", query, xyz)
    _check_count("ball_query", "nsample", nsample, 1)
    if not isinstance(radius, (int, float)) or isinstance(radius, bool) or not radius > 0 or math.isinf(radius):
        raise ValueError(f"ball_query: radius must be a finite number > 0, got {radius!r}")
    return _check_lengths("ball_query", lengths, xyz)


def ball_query_reference(query: torch.Tensor, xyz: torch.Tensor, radius: float, nsample: int, *,
                         lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PointNet++'s ball query, one query at a time (see ball_query)."""
    lengths = _ball_checks(query, xyz, radius, nsample, lengths)
    r2 = _squared_radius(radius, xyz.dtype)
    q_valid, p_valid = valid_points(query), valid_points(xyz, lengths)
    b, m = query.shape[:2]
    index = torch.zeros(b, m, nsample, dtype=torch.long, device=xyz.device)
    count = torch.zeros(b, m, dtype=torch.long, device=xyz.device)
    for i in range(b):
        for j in range(m):
            if not bool(q_valid[i, j]):
                continue
            inside = (_squared_distance(query[i, j], xyz[i]) < r2) & p_valid[i]
            found = inside.nonzero().flatten()[:nsample]  # index order, not distance order
            if len(found):
                index[i, j] = found[0]  # padding: the first index found
                index[i, j, :len(found)] = found
                count[i, j] = len(found)
    return index, count


def _ball_query_dense(query, xyz, r2, nsample, lengths, chunk_bytes=None):
    """Chunks of queries: distance table [B, C, N], hits as their own index (N where missed), nsample smallest.
    No host sync per chunk: the torch path on CUDA (for dtypes the Triton kernel does not take).

    Memory: two [B, C, N] tables of xyz's dtype, a bool and an int32 table: B*C*N*(2*itemsize + 5) bytes,
    C = max(1, chunk_bytes // (B*N*(2*itemsize + 5))) queries (chunk_bytes defaults to 16 MiB).
    """
    b, m = query.shape[:2]
    n = xyz.shape[1]
    q_valid, p_valid = valid_points(query), valid_points(xyz, lengths)
    any_invalid = not bool(q_valid.all()) or not bool(p_valid.all())
    p_soa = xyz.transpose(1, 2).contiguous()
    rows = _chunk_rows(b, n, 2 * xyz.element_size() + 5, chunk_bytes)
    take = min(nsample, n)
    positions = torch.arange(n, dtype=torch.int32, device=xyz.device)
    missed = torch.tensor(n, dtype=torch.int32, device=xyz.device)
    slots = torch.arange(nsample, device=xyz.device)
    index = torch.empty(b, m, nsample, dtype=torch.long, device=xyz.device)
    count = torch.empty(b, m, dtype=torch.long, device=xyz.device)
    out = tmp = None
    for lo in range(0, m, rows):
        hi = min(m, lo + rows)
        if out is None or out.shape[1] != hi - lo:
            out = torch.empty(b, hi - lo, n, dtype=xyz.dtype, device=xyz.device)
            tmp = torch.empty_like(out)
        hit = _pair_distances(query[:, lo:hi], p_soa, out, tmp) < r2
        if any_invalid:
            hit &= p_valid[:, None, :]
            hit &= q_valid[:, lo:hi, None]
        found = torch.topk(torch.where(hit, positions, missed), take, dim=-1, largest=False, sorted=True)[0]
        found = found.long()
        if take < nsample:
            found = torch.cat([found, found.new_full((b, hi - lo, nsample - take), n)], -1)
        cnt = hit.sum(-1).clamp_(max=nsample)
        pad = torch.where(cnt > 0, found[..., 0], 0)
        index[:, lo:hi] = torch.where(slots < cnt[..., None], found, pad[..., None])
        count[:, lo:hi] = cnt
    return index, count


def _ball_query_slab(query, xyz, r2, nsample, lengths, chunk_bytes=None):
    """The CPU path: per cloud, valid points sorted by x and valid queries sorted by x; each chunk of C
    consecutive queries (spanning at most `reach` in x) is tested only against the points whose x lies within
    reach of the chunk's x range
    (a contiguous slab of W points, found by searchsorted), exactly as the reference tests them; the hits
    are then put back in index order.

    Exact: a hit needs fl(dx*dx) <= fl(dx*dx + dy*dy + dz*dz) < r2, so |qx - px| < sqrt(r2) * (1 + eps)
    (the rounding of the subtraction included); the slab is widened by 4 eps of the dtype.
    Memory: the tables are C*W*(2*itemsize + 1) bytes with W <= N and C = max(1, chunk_bytes //
    (N*(2*itemsize + 1))) (chunk_bytes defaults to 16 MiB), plus about 48 bytes per (query, point) hit in
    the slab, plus sorted copies of the valid points.
    """
    b, m = query.shape[:2]
    n = xyz.shape[1]
    device = xyz.device
    q_valid, p_valid = valid_points(query), valid_points(xyz, lengths)
    reach = math.sqrt(r2) * (1 + 4 * torch.finfo(xyz.dtype).eps)
    rows = _chunk_rows(1, n, 2 * xyz.element_size() + 1, chunk_bytes)
    slots = torch.arange(nsample, device=device)
    index = torch.zeros(b, m, nsample, dtype=torch.long, device=device)
    count = torch.zeros(b, m, dtype=torch.long, device=device)
    for i in range(b):
        keep = p_valid[i].nonzero().flatten()
        if len(keep) == 0:
            continue
        order = xyz[i, keep, 0].argsort()
        ids = keep[order]  # original index of each point, in ascending x
        p_soa = xyz[i, ids].t().contiguous()[None]  # [1, 3, n_valid]
        px = p_soa[0, 0].double()
        queries = q_valid[i].nonzero().flatten()
        queries = queries[query[i, queries, 0].argsort()]
        qx = query[i, queries, 0].double()
        lo = 0
        while lo < len(queries):
            # at most `rows` queries spanning at most `reach` in x, so the slab stays about 3 reach wide
            hi = min(lo + rows, max(lo + 1, int(torch.searchsorted(qx, float(qx[lo]) + reach, side="right"))))
            chunk = queries[lo:hi]
            lo = hi
            q = query[i, chunk]
            start = int(torch.searchsorted(px, float(q[0, 0]) - reach, side="left"))
            stop = int(torch.searchsorted(px, float(q[-1, 0]) + reach, side="right"))
            if stop <= start:
                continue
            c, w = len(chunk), stop - start
            out = torch.empty(1, c, w, dtype=xyz.dtype, device=device)
            hit = _pair_distances(q[None], p_soa[..., start:stop], out, torch.empty_like(out))[0] < r2
            row, col = hit.nonzero(as_tuple=True)
            key = (row * n + ids[start + col]).sort().values  # by query, then original index
            row, point = key // n, key % n
            found = torch.bincount(row, minlength=c)
            rank = torch.arange(len(key), device=device) - (found.cumsum(0) - found)[row]
            first = rank < nsample
            picked = torch.zeros(c, nsample, dtype=torch.long, device=device)
            picked[row[first], rank[first]] = point[first]
            found = found.clamp_(max=nsample)
            index[i, chunk] = torch.where(slots < found[:, None], picked, picked[:, :1])
            count[i, chunk] = found
    return index, count


def ball_query(query: torch.Tensor, xyz: torch.Tensor, radius: float, nsample: int, *,
               lengths: torch.Tensor | None = None,
               chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PointNet++ ball query: for each query [B, M, 3], up to nsample points of xyz [B, N, 3] within radius.

    Returns (index long [B, M, nsample], count long [B, M]). Convention (PointNet++'s CUDA op): the first
    nsample points IN INDEX ORDER (not the nearest) with squared distance < radius^2 (strict; radius^2 rounded
    to the points' dtype), the remaining slots filled with the first index found; a query with no point in
    its ball gets all zeros, like PointNet++. count = min(points found, nsample) tells the real entries
    (index[..., :count]); a slot s is a real hit iff s < count. Invalid points are never inside a ball, and
    a non-finite query finds nothing.
    """
    lengths = _ball_checks(query, xyz, radius, nsample, lengths)
    r2 = _squared_radius(radius, xyz.dtype)
    if use_triton(query, xyz):
        from mtp.kernels.triton_points import ball_query_triton

        log.debug("ball_query: triton query%s xyz%s nsample=%d", tuple(query.shape), tuple(xyz.shape), nsample)
        return ball_query_triton(query, xyz, r2, nsample, lengths)
    log.debug("ball_query: torch query%s xyz%s nsample=%d", tuple(query.shape), tuple(xyz.shape), nsample)
    if xyz.device.type == "cpu":
        return _ball_query_slab(query, xyz, r2, nsample, lengths, chunk_bytes)
    return _ball_query_dense(query, xyz, r2, nsample, lengths, chunk_bytes)


# ---------------------------------------------------------------- grid sampling

GRID_MODES = ("first", "center", "random")


class GridSample(NamedTuple):
    """grid_sample's result; V voxels in ascending (batch, x, y, z) order."""

    index: torch.Tensor       # [V] long: the representative point of each voxel
    inverse: torch.Tensor     # [N] long: each point's voxel, so index[inverse] is each point's representative
    grid_coord: torch.Tensor  # [V, 3] long: floor((p - min) / grid_size), min taken per cloud
    counts: torch.Tensor      # [V] long: points per voxel
    batch: torch.Tensor | None  # [V] long: each voxel's cloud, when a batch vector was given


def _grid_checks(coords, grid_size, batch, mode, generator):
    fn = "grid_sample"
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"{fn}: coords must be an [N, 3] tensor, got "
                         f"{tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__}")
    if not coords.is_floating_point():
        raise ValueError(f"{fn}: coords must be floating point, got {coords.dtype}")
    if not bool(torch.isfinite(coords).all()):
        raise ValueError(f"{fn}: coords has non-finite coordinates (NaN/inf); drop those points first")
    if mode not in GRID_MODES:
        raise ValueError(f"{fn}: mode must be one of {GRID_MODES}, got {mode!r}")
    if generator is not None and mode != "random":
        raise ValueError(f"{fn}: a generator only applies to mode='random', got mode={mode!r}")
    sizes = [grid_size] * 3 if isinstance(grid_size, (int, float)) else list(grid_size)
    if len(sizes) != 3 or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"{fn}: grid_size must be a number > 0 or three of them, got {grid_size!r}")
    if batch is not None:
        batch = torch.as_tensor(batch, device=coords.device)
        if batch.shape != coords.shape[:1] or batch.is_floating_point() or batch.dtype == torch.bool:
            raise ValueError(f"{fn}: batch must be an integer tensor of shape [{coords.shape[0]}], got "
                             f"{batch.dtype} {tuple(batch.shape)}")
        if batch.numel() and int(batch.min()) < 0:
            raise ValueError(f"{fn}: batch indices must be >= 0")
        batch = batch.long()
    return torch.tensor(sizes, dtype=coords.dtype, device=coords.device), batch


def _voxel_draws(n_voxels: int, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform float64 draw per voxel, on the CPU (so CPU and CUDA runs agree for a seed)."""
    return torch.rand(n_voxels, generator=generator, dtype=torch.float64)


def grid_sample_reference(coords: torch.Tensor, grid_size: float | Sequence[float], *,
                          batch: torch.Tensor | None = None, mode: str = "first",
                          generator: torch.Generator | None = None) -> GridSample:
    """Grid sampling by grouping points into a dict of voxels, one point at a time (see grid_sample)."""
    size, batch = _grid_checks(coords, grid_size, batch, mode, generator)
    n = coords.shape[0]
    batch_ids = batch if batch is not None else torch.zeros(n, dtype=torch.long, device=coords.device)
    grid = torch.empty(n, 3, dtype=torch.long, device=coords.device)
    centre_dist = torch.empty(n, dtype=coords.dtype, device=coords.device)
    for cloud in batch_ids.unique().tolist():
        members = (batch_ids == cloud).nonzero().flatten()
        points = coords[members]
        low = points.min(0).values
        grid[members] = torch.floor((points - low) / size).long()
        centre = low + (grid[members].to(coords.dtype) + 0.5) * size
        centre_dist[members] = _squared_distance(points, centre)
    voxels: dict[tuple, list[int]] = {}
    for i in range(n):
        voxels.setdefault((int(batch_ids[i]), *grid[i].tolist()), []).append(i)  # members in input order
    keys = sorted(voxels)
    draws = _voxel_draws(len(keys), generator) if mode == "random" else None
    index, inverse, counts = [], torch.empty(n, dtype=torch.long), []
    for v, key in enumerate(keys):
        members = voxels[key]
        if mode == "first":
            chosen = members[0]
        elif mode == "center":
            chosen = min(members, key=lambda i: (float(centre_dist[i]), i))
        else:
            chosen = members[min(int(float(draws[v]) * len(members)), len(members) - 1)]
        index.append(chosen)
        counts.append(len(members))
        inverse[members] = v
    device = coords.device
    index = torch.tensor(index, dtype=torch.long, device=device)
    return GridSample(index, inverse.to(device), grid[index], torch.tensor(counts, dtype=torch.long, device=device),
                      batch_ids[index] if batch is not None else None)


def _grid_torch(coords, size, batch, mode, generator):
    n, device = coords.shape[0], coords.device
    if batch is None:
        low = coords.min(0, keepdim=True).values
    else:
        n_clouds = int(batch.max()) + 1
        low = torch.full((n_clouds, 3), float("inf"), dtype=coords.dtype, device=device)
        low = low.scatter_reduce_(0, batch[:, None].expand(-1, 3), coords, "amin")[batch]
    grid = torch.floor((coords - low) / size).long()
    columns = [grid[:, 0], grid[:, 1], grid[:, 2]]
    if batch is not None:
        columns.insert(0, batch)
    extents = [int(c.max()) + 1 for c in columns]
    if math.prod(extents) < 2**62:  # one int64 key per point, ordered like (batch, x, y, z)
        key = columns[0]
        for column, extent in zip(columns[1:], extents[1:]):
            key = key * extent + column
        _, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = torch.unique(torch.stack(columns, 1), dim=0, return_inverse=True, return_counts=True)
    v = counts.shape[0]
    arange = torch.arange(n, device=device)
    if mode == "first":
        index = torch.full((v,), n, device=device).scatter_reduce_(0, inverse, arange, "amin")
    elif mode == "center":
        centre = low + (grid.to(coords.dtype) + 0.5) * size
        dist = _squared_distance(coords, centre)
        nearest = torch.full((v,), float("inf"), dtype=coords.dtype, device=device)
        nearest = nearest.scatter_reduce_(0, inverse, dist, "amin")
        candidates = torch.where(dist == nearest[inverse], arange, n)
        index = torch.full((v,), n, device=device).scatter_reduce_(0, inverse, candidates, "amin")
    else:
        draws = _voxel_draws(v, generator).to(device)
        offset = torch.minimum((draws * counts).long(), counts - 1)
        grouped = torch.sort(inverse, stable=True)[1]  # point ids voxel by voxel, input order within a voxel
        index = grouped[torch.cumsum(counts, 0) - counts + offset]
    return GridSample(index, inverse, grid[index], counts, batch[index] if batch is not None else None)


def grid_sample(coords: torch.Tensor, grid_size: float | Sequence[float], *, batch: torch.Tensor | None = None,
                mode: str = "first", generator: torch.Generator | None = None) -> GridSample:
    """Voxel-grid sampling of coords [N, 3] (one cloud, or several told apart by batch [N]): one point per voxel.

    Voxel coordinates are floor((p - min) / grid_size) with min per cloud; voxels come in ascending
    (batch, x, y, z) order. Representative of each voxel, by mode:
    - "first" (default, deterministic): the first point of the voxel in input order (MinkowskiEngine's
      sparse_quantize / np.unique's first occurrence);
    - "center" (deterministic): the point nearest the voxel centre min + (grid_coord + 0.5) * grid_size,
      ties to the lower index;
    - "random" (Pointcept GridSample's "train" mode): a uniformly random member, one float64 draw per voxel
      in voxel order from `generator` (a CPU torch.Generator; the global RNG when None), so a seed reproduces it.
    Non-finite coordinates are a ValueError. No Triton kernel: on CUDA the same torch ops run on the device.
    """
    size, batch = _grid_checks(coords, grid_size, batch, mode, generator)
    if coords.shape[0] == 0:
        empty = torch.empty(0, dtype=torch.long, device=coords.device)
        return GridSample(empty, empty, empty.reshape(0, 3), empty, empty if batch is not None else None)
    log.debug("grid_sample: torch coords%s mode=%s", tuple(coords.shape), mode)
    return _grid_torch(coords, size, batch, mode, generator)
