"""Padding-free attention over packed variable-length sequences.

q [total_q, heads, D], k/v [total_k, heads, D]; sequence i owns rows cu_seqlens[i]:cu_seqlens[i+1] of each.
Every query attends only to the keys of its own sequence (causal: bottom-right aligned per sequence).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from mtp.kernels.attention import attention_reference, causal_keep, use_triton

log = logging.getLogger("mtp.kernels")


def _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k):
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"varlen_attention: q, k, v must be packed [total, heads, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1:] != k.shape[1:] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"varlen_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} disagree "
                         "(need the same heads, q/k of one head dim, k/v of one length)")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dim() != 1 or cu.numel() < 2 or cu.is_floating_point():
            raise ValueError(f"varlen_attention: {name} must be a 1-D integer tensor [batch + 1], got "
                             f"{cu.dtype} {tuple(cu.shape)}")
        if cu.device != q.device:
            raise ValueError(f"varlen_attention: {name} is on {cu.device}, q on {q.device}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"varlen_attention: cu_seqlens_q has {cu_seqlens_q.numel() - 1} sequences, cu_seqlens_k "
                         f"{cu_seqlens_k.numel() - 1}")


def _host_bounds(cu: torch.Tensor, total: int, max_seqlen: int, name: str) -> list[int]:
    bounds = cu.tolist()
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    if bounds[0] != 0 or bounds[-1] != total or min(lengths) < 0:
        raise ValueError(f"varlen_attention: {name} must rise from 0 to {total} (the packed length), got {bounds}")
    if max(lengths) > max_seqlen:
        raise ValueError(f"varlen_attention: {name} has a sequence of {max(lengths)} tokens, above the given "
                         f"max_seqlen {max_seqlen}")
    return bounds


def varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                               scale=None):
    """One attention_reference call per sequence."""
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    bounds_q = _host_bounds(cu_seqlens_q, q.shape[0], max_seqlen_q, "cu_seqlens_q")
    bounds_k = _host_bounds(cu_seqlens_k, k.shape[0], max_seqlen_k, "cu_seqlens_k")
    outs = []
    for (q0, q1), (k0, k1) in zip(zip(bounds_q[:-1], bounds_q[1:]), zip(bounds_k[:-1], bounds_k[1:])):
        per_head = attention_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1),
                                       causal=causal, scale=scale)
        outs.append(per_head.transpose(0, 1))
    return torch.cat(outs)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False, scale=None):
    """Packed attention: Triton kernel on CUDA, else SDPA over groups of equally long sequences.

    On CUDA the cu_seqlens stay on the device and are not checked against max_seqlen (that would sync).
    """
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if use_triton(q, k, v):
        from mtp.kernels.triton_attention import flash_varlen_attention

        log.debug("varlen_attention: triton kernel %d sequences, max %d/%d tokens", cu_seqlens_q.numel() - 1,
                  max_seqlen_q, max_seqlen_k)
        return flash_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                      causal=causal, scale=scale)
    log.debug("varlen_attention: sdpa over length groups, %d sequences", cu_seqlens_q.numel() - 1)
    return _grouped_sdpa(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale)


def _grouped_sdpa(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
    """One batched SDPA per distinct (query length, key length): measured faster on CPU than a loop per
    sequence, padding to the longest, or one block-diagonal mask (benchmarks/attention_bench.py)."""
    bounds_q = torch.tensor(_host_bounds(cu_seqlens_q, q.shape[0], max_seqlen_q, "cu_seqlens_q"))
    bounds_k = torch.tensor(_host_bounds(cu_seqlens_k, k.shape[0], max_seqlen_k, "cu_seqlens_k"))
    lengths = torch.stack([bounds_q.diff(), bounds_k.diff()], dim=1)
    heads = q.shape[1]
    pieces, rows = [], []
    for lq, lk in torch.unique(lengths, dim=0).tolist():
        if lq == 0:
            continue
        seqs = ((lengths[:, 0] == lq) & (lengths[:, 1] == lk)).nonzero().squeeze(1)
        rows_q = (bounds_q[seqs][:, None] + torch.arange(lq)).reshape(-1).to(q.device)
        rows_k = (bounds_k[seqs][:, None] + torch.arange(lk)).reshape(-1).to(q.device)
        rows.append(rows_q)
        if lk == 0:  # nothing to attend to: zero output, as on the other paths
            pieces.append(q.new_zeros(len(rows_q), heads, v.shape[-1]))
            continue
        native_causal = causal and lq == lk
        mask = causal_keep(lq, lk, q.device) if causal and not native_causal else None
        count = len(seqs)
        out = F.scaled_dot_product_attention(_batched(q, rows_q, count), _batched(k, rows_k, count),
                                             _batched(v, rows_k, count), attn_mask=mask, is_causal=native_causal,
                                             scale=scale)
        pieces.append(out.transpose(1, 2).reshape(-1, heads, v.shape[-1]))
    if not pieces:
        return q.new_zeros(0, heads, v.shape[-1])
    # groups come out in length order; one gather puts the rows back in packed order
    return torch.cat(pieces)[torch.argsort(torch.cat(rows))]


def _batched(x: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """Packed rows of `count` equally long sequences -> [count, heads, length, D]."""
    return x[rows].view(count, -1, *x.shape[1:]).transpose(1, 2)
