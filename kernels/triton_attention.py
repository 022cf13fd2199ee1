"""Flash-attention kernels in Triton: forward and backward, one kernel family for every score modifier.

Scores are modified inside the tile loop, so nothing of size [..., Lq, Lk] is ever materialised:
- a dense additive bias broadcast over batch/heads (its size-1 dims are read with stride 0),
- a Swin/HAT bias table read through a relative-position index (table[index[m, n], head]),
- a shifted-window mask built from per-token region ids (-100 where ids differ) or read from a stored
  [nW, Lq, Lk] mask, with window = batch index % nW,
- causal masking aligned to the bottom-right corner (key n visible to query m iff n <= m + Lk - Lq),
- packed variable-length batches addressed through cumulative sequence lengths.

Softmax runs in base 2 (scores pre-multiplied by log2(e)); the saved log-sum-exp is in base 2 too. Fully
masked rows give a zero output and zero gradients, like PyTorch's SDPA.

Every kernel also runs under TRITON_INTERPRET=1 on CPU tensors, which is how the tests exercise them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# HAT/Swin fill value for tokens of different shifted regions, kept finite on purpose (numerics of the original)
SHIFT_FILL = -100.0

BIAS_NONE, BIAS_DENSE, BIAS_TABLE = 0, 1, 2
SHIFT_NONE, SHIFT_REGIONS, SHIFT_STORED = 0, 1, 2


@triton.jit
def _modified_scores(q, kt, offs_m, offs_n, seqlen_q, seqlen_k, z, h, qk_scale,
                     Bias, stride_bz, stride_bh, stride_bm, stride_bn,
                     Table, stride_tt, stride_th, Index, stride_im,
                     Shift, stride_sw, stride_sm, stride_sn, n_windows,
                     BIAS_MODE: tl.constexpr, SHIFT_MODE: tl.constexpr, CAUSAL: tl.constexpr,
                     PRECISION: tl.constexpr):
    """Scores of one [BLOCK_M, BLOCK_N] tile in log2 units; invisible entries are -inf."""
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    valid = (offs_m[:, None] < seqlen_q) & (offs_n[None, :] < seqlen_k)
    if BIAS_MODE == 1:
        bias = tl.load(Bias + z * stride_bz + h * stride_bh + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn,
                       mask=valid, other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
    if BIAS_MODE == 2:
        idx = tl.load(Index + offs_m[:, None] * stride_im + offs_n[None, :], mask=valid, other=0)
        bias = tl.load(Table + idx * stride_tt + h * stride_th, mask=valid, other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
    if SHIFT_MODE == 1:
        region_base = Shift + (z % n_windows) * stride_sw
        region_m = tl.load(region_base + offs_m, mask=offs_m < seqlen_q, other=0)
        region_n = tl.load(region_base + offs_n, mask=offs_n < seqlen_k, other=0)
        s += tl.where(region_m[:, None] != region_n[None, :], -100.0 * 1.4426950408889634, 0.0)
    if SHIFT_MODE == 2:
        shift = tl.load(Shift + (z % n_windows) * stride_sw + offs_m[:, None] * stride_sm + offs_n[None, :] * stride_sn,
                        mask=valid, other=0.0)
        s += shift.to(tl.float32) * 1.4426950408889634
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + (seqlen_k - seqlen_q))
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _fwd_kernel(Q, K, V, Out, Lse, CuQ, CuK,
                stride_qz, stride_qh, stride_qm, stride_kz, stride_kh, stride_kn,
                stride_vz, stride_vh, stride_vn, stride_oz, stride_oh, stride_om,
                stride_lz, stride_lh, stride_lm,
                Bias, stride_bz, stride_bh, stride_bm, stride_bn,
                Table, stride_tt, stride_th, Index, stride_im,
                Shift, stride_sw, stride_sm, stride_sn, n_windows,
                n_heads, seqlen_q, seqlen_k, head_dim, qk_scale,
                BIAS_MODE: tl.constexpr, SHIFT_MODE: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    zh = tl.program_id(0).to(tl.int64)
    z = zh // n_heads
    h = zh % n_heads
    start_m = tl.program_id(1) * BLOCK_M
    q_start = 0
    k_start = 0
    if VARLEN:
        q_start = tl.load(CuQ + z).to(tl.int64)
        k_start = tl.load(CuK + z).to(tl.int64)
        seqlen_q = (tl.load(CuQ + z + 1) - q_start).to(tl.int32)
        seqlen_k = (tl.load(CuK + z + 1) - k_start).to(tl.int32)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_ptrs = Q + z * stride_qz + h * stride_qh + (q_start + offs_m[:, None]) * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < seqlen_q) & d_ok[None, :], other=0.0)
    k_base = K + z * stride_kz + h * stride_kh + k_start * stride_kn
    v_base = V + z * stride_vz + h * stride_vh + k_start * stride_vn

    hi = seqlen_k
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M + seqlen_k - seqlen_q)
    hi = tl.where(start_m < seqlen_q, hi, 0)  # surplus programs of short varlen sequences skip the loop

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None],
                     mask=(cols[None, :] < seqlen_k) & d_ok[:, None], other=0.0)
        s = _modified_scores(q, kt, offs_m, cols, seqlen_q, seqlen_k, z, h, qk_scale,
                             Bias, stride_bz, stride_bh, stride_bm, stride_bn,
                             Table, stride_tt, stride_th, Index, stride_im,
                             Shift, stride_sw, stride_sm, stride_sn, n_windows,
                             BIAS_MODE, SHIFT_MODE, CAUSAL, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row that has seen only -inf keeps a finite reference so exp2 gives 0 instead of NaN
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :],
                    mask=(cols[:, None] < seqlen_k) & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    # +inf makes every recomputed probability of an empty row exactly 0 in the backward pass
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    row_ok = offs_m < seqlen_q
    tl.store(Lse + z * stride_lz + h * stride_lh + (q_start + offs_m) * stride_lm, lse, mask=row_ok)
    o_ptrs = Out + z * stride_oz + h * stride_oh + (q_start + offs_m[:, None]) * stride_om + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, Lse, Delta, DK, DV, DBias, CuQ, CuK,
                     stride_qz, stride_qh, stride_qm, stride_kz, stride_kh, stride_kn,
                     stride_vz, stride_vh, stride_vn, stride_doz, stride_doh, stride_dom,
                     stride_lz, stride_lh, stride_lm,
                     stride_dkz, stride_dkh, stride_dkn, stride_dvz, stride_dvh, stride_dvn,
                     stride_dbz, stride_dbh, stride_dbm, stride_dbn,
                     Bias, stride_bz, stride_bh, stride_bm, stride_bn,
                     Table, stride_tt, stride_th, Index, stride_im,
                     Shift, stride_sw, stride_sm, stride_sn, n_windows,
                     n_heads, seqlen_q, seqlen_k, head_dim, qk_scale, sm_scale,
                     BIAS_MODE: tl.constexpr, SHIFT_MODE: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
                     BIAS_GRAD: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    zh = tl.program_id(0).to(tl.int64)
    z = zh // n_heads
    h = zh % n_heads
    start_n = tl.program_id(1) * BLOCK_N
    q_start = 0
    k_start = 0
    if VARLEN:
        q_start = tl.load(CuQ + z).to(tl.int64)
        k_start = tl.load(CuK + z).to(tl.int64)
        seqlen_q = (tl.load(CuQ + z + 1) - q_start).to(tl.int32)
        seqlen_k = (tl.load(CuK + z + 1) - k_start).to(tl.int32)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    kv_mask = (offs_n[:, None] < seqlen_k) & d_ok[None, :]
    k = tl.load(K + z * stride_kz + h * stride_kh + (k_start + offs_n[:, None]) * stride_kn + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(V + z * stride_vz + h * stride_vh + (k_start + offs_n[:, None]) * stride_vn + offs_d[None, :],
                mask=kv_mask, other=0.0)
    kt = tl.trans(k)
    vt = tl.trans(v)
    q_base = Q + z * stride_qz + h * stride_qh + q_start * stride_qm
    do_base = DO + z * stride_doz + h * stride_doh + q_start * stride_dom
    row_base = z * stride_lz + h * stride_lh + q_start * stride_lm

    lo = 0
    if CAUSAL:
        # query rows above this key block's diagonal cannot see any of its keys
        lo = tl.maximum(start_n - (seqlen_k - seqlen_q), 0) // BLOCK_M * BLOCK_M
    hi = tl.where(start_n < seqlen_k, seqlen_q, 0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seqlen_q
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(Lse + row_base + offs_m * stride_lm, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + row_base + offs_m * stride_lm, mask=row_ok, other=0.0)
        s = _modified_scores(q, kt, offs_m, offs_n, seqlen_q, seqlen_k, z, h, qk_scale,
                             Bias, stride_bz, stride_bh, stride_bm, stride_bn,
                             Table, stride_tt, stride_th, Index, stride_im,
                             Shift, stride_sw, stride_sm, stride_sn, n_windows,
                             BIAS_MODE, SHIFT_MODE, CAUSAL, PRECISION)
        p = tl.exp2(s - lse[:, None])
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])  # gradient of the natural-unit score, i.e. of the additive bias
        if BIAS_GRAD:
            tile_ok = row_ok[:, None] & (offs_n[None, :] < seqlen_k)
            tl.atomic_add(DBias + z * stride_dbz + h * stride_dbh + offs_m[:, None] * stride_dbm
                          + offs_n[None, :] * stride_dbn, ds, mask=tile_ok)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    dk = dk * sm_scale
    tl.store(DK + z * stride_dkz + h * stride_dkh + (k_start + offs_n[:, None]) * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + z * stride_dvz + h * stride_dvh + (k_start + offs_n[:, None]) * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, Lse, Delta, DQ, CuQ, CuK,
                   stride_qz, stride_qh, stride_qm, stride_kz, stride_kh, stride_kn,
                   stride_vz, stride_vh, stride_vn, stride_doz, stride_doh, stride_dom,
                   stride_lz, stride_lh, stride_lm, stride_dqz, stride_dqh, stride_dqm,
                   Bias, stride_bz, stride_bh, stride_bm, stride_bn,
                   Table, stride_tt, stride_th, Index, stride_im,
                   Shift, stride_sw, stride_sm, stride_sn, n_windows,
                   n_heads, seqlen_q, seqlen_k, head_dim, qk_scale, sm_scale,
                   BIAS_MODE: tl.constexpr, SHIFT_MODE: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    zh = tl.program_id(0).to(tl.int64)
    z = zh // n_heads
    h = zh % n_heads
    start_m = tl.program_id(1) * BLOCK_M
    q_start = 0
    k_start = 0
    if VARLEN:
        q_start = tl.load(CuQ + z).to(tl.int64)
        k_start = tl.load(CuK + z).to(tl.int64)
        seqlen_q = (tl.load(CuQ + z + 1) - q_start).to(tl.int32)
        seqlen_k = (tl.load(CuK + z + 1) - k_start).to(tl.int32)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    row_ok = offs_m < seqlen_q
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + z * stride_qz + h * stride_qh + (q_start + offs_m[:, None]) * stride_qm + offs_d[None, :],
                mask=q_mask, other=0.0)
    do = tl.load(DO + z * stride_doz + h * stride_doh + (q_start + offs_m[:, None]) * stride_dom + offs_d[None, :],
                 mask=q_mask, other=0.0)
    row_base = z * stride_lz + h * stride_lh + q_start * stride_lm
    lse = tl.load(Lse + row_base + offs_m * stride_lm, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + row_base + offs_m * stride_lm, mask=row_ok, other=0.0)
    k_base = K + z * stride_kz + h * stride_kh + k_start * stride_kn
    v_base = V + z * stride_vz + h * stride_vh + k_start * stride_vn

    hi = seqlen_k
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M + seqlen_k - seqlen_q)
    hi = tl.where(start_m < seqlen_q, hi, 0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        t_mask = (cols[None, :] < seqlen_k) & d_ok[:, None]
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None], mask=t_mask, other=0.0)
        vt = tl.load(v_base + cols[None, :] * stride_vn + offs_d[:, None], mask=t_mask, other=0.0)
        s = _modified_scores(q, kt, offs_m, cols, seqlen_q, seqlen_k, z, h, qk_scale,
                             Bias, stride_bz, stride_bh, stride_bm, stride_bn,
                             Table, stride_tt, stride_th, Index, stride_im,
                             Shift, stride_sw, stride_sm, stride_sn, n_windows,
                             BIAS_MODE, SHIFT_MODE, CAUSAL, PRECISION)
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)

    dq = dq * sm_scale
    tl.store(DQ + z * stride_dqz + h * stride_dqh + (q_start + offs_m[:, None]) * stride_dqm + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=q_mask)


@dataclass
class _ScoreMods:
    """Everything besides q/k/v that shapes the scores; bias and table are passed to autograd separately."""
    scale: float
    causal: bool = False
    bias_mode: int = BIAS_NONE
    index: torch.Tensor | None = None      # int32 [Lq, Lk], already wrapped into [0, table rows)
    shift_mode: int = SHIFT_NONE
    shift: torch.Tensor | None = None      # int32 region ids [nW, L] or float mask [nW, Lq, Lk]
    n_windows: int = 1
    cu_q: torch.Tensor | None = None       # int32 [batch + 1] for packed sequences
    cu_k: torch.Tensor | None = None
    max_q: int = 0
    max_k: int = 0

    @property
    def varlen(self) -> bool:
        return self.cu_q is not None


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's matmul precision setting, so "highest" (the default) stays exact like SDPA
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _blocks(q: torch.Tensor, backward: bool) -> dict:
    head_block = max(16, triton.next_power_of_2(q.shape[-1]))
    if q.device.type != "cuda":
        # interpreter: small tiles so short test sequences still cross several block boundaries
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=head_block)
    wide = head_block > 64 or q.dtype == torch.float32
    if backward:
        block = 32 if wide else 64
        return dict(BLOCK_M=block, BLOCK_N=block, BLOCK_D=head_block, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64 if wide else 128, BLOCK_N=32 if wide else 64, BLOCK_D=head_block,
                num_warps=4 if wide else 8, num_stages=2)


def _seq_strides(x: torch.Tensor, mods: _ScoreMods) -> tuple[int, int, int]:
    """(batch, head, token) strides: dense tensors are [Z, H, L, D], packed ones [total, H, D]."""
    if mods.varlen:
        return 0, x.stride(1), x.stride(0)
    return x.stride(0), x.stride(1), x.stride(2)


def _problem(q: torch.Tensor, k: torch.Tensor, mods: _ScoreMods) -> tuple[int, int, int, int]:
    """(batch, heads, query length, key length) as the kernels see them."""
    if mods.varlen:
        return mods.cu_q.numel() - 1, q.shape[1], mods.max_q, mods.max_k
    return q.shape[0], q.shape[1], q.shape[2], k.shape[2]


def _mod_args(q: torch.Tensor, bias: torch.Tensor | None, table: torch.Tensor | None, mods: _ScoreMods) -> list:
    """Pointer and stride arguments of the score modifiers, in kernel order; unused pointers get q."""
    if mods.bias_mode == BIAS_DENSE:
        bias_args = [bias, *(0 if size == 1 else stride for size, stride in zip(bias.shape, bias.stride()))]
    else:
        bias_args = [q, 0, 0, 0, 0]
    if mods.bias_mode == BIAS_TABLE:
        table_args = [table, table.stride(0), table.stride(1), mods.index, mods.index.stride(0)]
    else:
        table_args = [q, 0, 0, q, 0]
    if mods.shift_mode == SHIFT_REGIONS:
        shift_args = [mods.shift, mods.shift.stride(0), 0, 0, mods.n_windows]
    elif mods.shift_mode == SHIFT_STORED:
        shift_args = [mods.shift, *mods.shift.stride(), mods.n_windows]
    else:
        shift_args = [q, 0, 0, 0, 1]
    return bias_args + table_args + shift_args


def _flags(q: torch.Tensor, mods: _ScoreMods) -> dict:
    return dict(BIAS_MODE=mods.bias_mode, SHIFT_MODE=mods.shift_mode, CAUSAL=mods.causal, VARLEN=mods.varlen,
                PRECISION=_precision(q.dtype))


def _forward(q, k, v, bias, table, mods: _ScoreMods):
    batch, heads, seqlen_q, seqlen_k = _problem(q, k, mods)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if mods.varlen:
        lse = torch.empty(q.shape[0], heads, device=q.device, dtype=torch.float32)
        lse_strides = (0, 1, heads)
    else:
        lse = torch.empty(batch, heads, seqlen_q, device=q.device, dtype=torch.float32)
        lse_strides = lse.stride()
    cu_q = mods.cu_q if mods.varlen else q
    cu_k = mods.cu_k if mods.varlen else q
    config = _blocks(q, backward=False)
    grid = (batch * heads, triton.cdiv(seqlen_q, config["BLOCK_M"]))
    _fwd_kernel[grid](
        q, k, v, out, lse, cu_q, cu_k,
        *_seq_strides(q, mods), *_seq_strides(k, mods), *_seq_strides(v, mods), *_seq_strides(out, mods),
        *lse_strides, *_mod_args(q, bias, table, mods),
        heads, seqlen_q, seqlen_k, q.shape[-1], mods.scale * LOG2E,
        **_flags(q, mods), **config)
    return out, lse, lse_strides


def _backward(q, k, v, out, lse, lse_strides, grad_out, bias, table, mods: _ScoreMods, bias_grad: bool):
    batch, heads, seqlen_q, seqlen_k = _problem(q, k, mods)
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1)  # rowsum(dO * O), laid out like lse
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    dbias = None
    if bias_grad and mods.bias_mode == BIAS_DENSE:
        dbias = torch.zeros(bias.shape, device=q.device, dtype=torch.float32)
        dbias_strides = [0 if size == 1 else stride for size, stride in zip(dbias.shape, dbias.stride())]
    elif bias_grad and mods.bias_mode == BIAS_TABLE:
        # per-head [Lq, Lk] bias gradient summed over windows; scattered into the table by index below
        dbias = torch.zeros(heads, seqlen_q, seqlen_k, device=q.device, dtype=torch.float32)
        dbias_strides = [0, *dbias.stride()]
    else:
        dbias_strides = [0, 0, 0, 0]
    cu_q = mods.cu_q if mods.varlen else q
    cu_k = mods.cu_k if mods.varlen else q
    common = [*_mod_args(q, bias, table, mods), heads, seqlen_q, seqlen_k, q.shape[-1], mods.scale * LOG2E, mods.scale]
    config = _blocks(q, backward=True)
    _bwd_dkdv_kernel[(batch * heads, triton.cdiv(seqlen_k, config["BLOCK_N"]))](
        q, k, v, grad_out, lse, delta, dk, dv, q if dbias is None else dbias, cu_q, cu_k,
        *_seq_strides(q, mods), *_seq_strides(k, mods), *_seq_strides(v, mods), *_seq_strides(grad_out, mods),
        *lse_strides, *_seq_strides(dk, mods), *_seq_strides(dv, mods), *dbias_strides,
        *common, BIAS_GRAD=dbias is not None, **_flags(q, mods), **config)
    _bwd_dq_kernel[(batch * heads, triton.cdiv(seqlen_q, config["BLOCK_M"]))](
        q, k, v, grad_out, lse, delta, dq, cu_q, cu_k,
        *_seq_strides(q, mods), *_seq_strides(k, mods), *_seq_strides(v, mods), *_seq_strides(grad_out, mods),
        *lse_strides, *_seq_strides(dq, mods),
        *common, **_flags(q, mods), **config)

    grad_bias = grad_table = None
    if dbias is not None and mods.bias_mode == BIAS_DENSE:
        grad_bias = dbias.to(bias.dtype)
    elif dbias is not None:
        per_entry = dbias.permute(1, 2, 0).reshape(-1, heads)
        grad_table = torch.zeros(table.shape, device=table.device, dtype=torch.float32)
        grad_table = grad_table.index_add_(0, mods.index.reshape(-1).long(), per_entry).to(table.dtype)
    return dq, dk, dv, grad_bias, grad_table


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, table, mods):
        out, lse, lse_strides = _forward(q, k, v, bias, table, mods)
        ctx.save_for_backward(q, k, v, out, lse, bias, table)
        ctx.mods = mods
        ctx.lse_strides = lse_strides
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, bias, table = ctx.saved_tensors
        bias_grad = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        dq, dk, dv, grad_bias, grad_table = _backward(q, k, v, out, lse, ctx.lse_strides, grad_out, bias, table,
                                                      ctx.mods, bias_grad)
        return dq, dk, dv, grad_bias, grad_table, None


def _last_dim_contiguous(*tensors):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


def _default_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def _broadcast_bias(bias: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Bias as 4-D with every dim either full or 1; the kernel reads size-1 dims with stride 0.

    Expanded (stride-0) dims are narrowed back to 1 so that the gradient, summed over them in the kernel,
    flows back through the caller's expand once.
    """
    if bias.dim() > 4 or any(size not in (1, full) for size, full in zip(bias.shape[::-1], shape[::-1])):
        raise ValueError(f"flash_attention: bias of shape {tuple(bias.shape)} does not broadcast to {shape}")
    bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
    for dim in range(4):
        if bias.shape[dim] > 1 and bias.stride(dim) == 0:
            bias = bias.narrow(dim, 0, 1)
    return bias


def flash_attention(q, k, v, *, bias=None, causal=False, scale=None):
    """q [Z, H, Lq, D], k/v [Z, H, Lk, D]; bias broadcastable to [Z, H, Lq, Lk] (any float dtype)."""
    q, k, v = _last_dim_contiguous(q, k, v)
    if bias is not None:
        bias = _broadcast_bias(bias, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
    mods = _ScoreMods(scale=_default_scale(q, scale), causal=causal,
                      bias_mode=BIAS_NONE if bias is None else BIAS_DENSE)
    return _FlashAttention.apply(q, k, v, bias, None, mods)


def flash_window_attention(q, k, v, table, index, *, shift_regions=None, shift_mask=None, scale=None):
    """q [B*nW, H, Nq, D], k/v [B*nW, H, Nk, D]; bias = table[index, head] (index [Nq, Nk] in [0, rows));
    shift_regions int [nW, N] (-100 where region ids differ) or shift_mask float [nW, Nq, Nk]."""
    q, k, v = _last_dim_contiguous(q, k, v)
    mods = _ScoreMods(scale=_default_scale(q, scale), bias_mode=BIAS_TABLE,
                      index=index.to(torch.int32).contiguous())
    if shift_regions is not None:
        mods.shift_mode, mods.shift = SHIFT_REGIONS, shift_regions.to(torch.int32).contiguous()
        mods.n_windows = shift_regions.shape[0]
    elif shift_mask is not None:
        mods.shift_mode, mods.shift, mods.n_windows = SHIFT_STORED, shift_mask, shift_mask.shape[0]
    return _FlashAttention.apply(q, k, v, None, table, mods)


def flash_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                           scale=None):
    """Packed sequences: q [total_q, H, D], k/v [total_k, H, D], sequence i = rows cu[i]:cu[i+1]."""
    q, k, v = _last_dim_contiguous(q, k, v)
    mods = _ScoreMods(scale=_default_scale(q, scale), causal=causal,
                      cu_q=cu_seqlens_q.to(torch.int32).contiguous(), cu_k=cu_seqlens_k.to(torch.int32).contiguous(),
                      max_q=int(max_seqlen_q), max_k=int(max_seqlen_k))
    return _FlashAttention.apply(q, k, v, None, None, mods)
