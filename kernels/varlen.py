"""Padding-free attention over packed variable-length sequences.

q [total_q, heads, D], k/v [total_k, heads, D]; sequence i owns rows cu_seqlens[i]:cu_seqlens[i+1] of each.
Every query attends only to the keys of its own sequence (causal: bottom-right aligned per sequence).
An additive ``bias`` comes padded, [batch, heads, max_seqlen_q, max_seqlen_k], sequence i's scores in the top-left
block of bias[i] (what a padded batch's relative-position scores already are).
"""
from __future__ import annotations

import logging

import torch

from mtp.kernels.attention import attention, attention_reference, use_triton

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


def _check_bias(bias, batch: int, heads: int, max_seqlen_q: int, max_seqlen_k: int):
    if bias is not None and (bias.dim() != 4 or bias.shape[0] != batch or bias.shape[1] not in (1, heads)
                             or bias.shape[2] < max_seqlen_q or bias.shape[3] < max_seqlen_k):
        raise ValueError(f"varlen_attention: bias must be padded [batch={batch}, heads={heads} or 1, >= "
                         f"{max_seqlen_q}, >= {max_seqlen_k}], got {tuple(bias.shape)}")


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
                               scale=None, bias=None):
    """One attention_reference call per sequence."""
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    _check_bias(bias, cu_seqlens_q.numel() - 1, q.shape[1], max_seqlen_q, max_seqlen_k)
    bounds_q = _host_bounds(cu_seqlens_q, q.shape[0], max_seqlen_q, "cu_seqlens_q")
    bounds_k = _host_bounds(cu_seqlens_k, k.shape[0], max_seqlen_k, "cu_seqlens_k")
    outs = []
    for i, ((q0, q1), (k0, k1)) in enumerate(zip(zip(bounds_q[:-1], bounds_q[1:]), zip(bounds_k[:-1], bounds_k[1:]))):
        block = None if bias is None else bias[i, :, :q1 - q0, :k1 - k0]
        per_head = attention_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1),
                                       causal=causal, scale=scale, bias=block)
        outs.append(per_head.transpose(0, 1))
    return torch.cat(outs)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False, scale=None,
                     bias=None, dropout_p=0.0):
    """Packed attention: Triton kernel on CUDA, else mtp.kernels.attention over groups of equally long sequences
    (also the path for a bias or dropout, which the packed kernel does not take).

    On CUDA the cu_seqlens stay on the device and are not checked against max_seqlen (that would sync).
    dropout_p applies whenever > 0, so pass 0 in eval mode.
    """
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    _check_bias(bias, cu_seqlens_q.numel() - 1, q.shape[1], max_seqlen_q, max_seqlen_k)
    if bias is None and dropout_p == 0 and use_triton(q, k, v):
        from mtp.kernels.triton_attention import flash_varlen_attention

        log.debug("varlen_attention: triton kernel %d sequences, max %d/%d tokens", cu_seqlens_q.numel() - 1,
                  max_seqlen_q, max_seqlen_k)
        return flash_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                      causal=causal, scale=scale)
    log.debug("varlen_attention: attention over length groups, %d sequences", cu_seqlens_q.numel() - 1)
    return _grouped(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, bias, dropout_p)


def _grouped(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, bias, dropout_p):
    """One batched attention call per distinct (query length, key length): measured faster on CPU than a loop
    per sequence, padding to the longest, or one block-diagonal mask (benchmarks/attention_bench.py)."""
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
        count = len(seqs)
        block = None if bias is None else bias[seqs.to(bias.device), :, :lq, :lk]
        out = attention(_batched(q, rows_q, count), _batched(k, rows_k, count), _batched(v, rows_k, count),
                        bias=block, causal=causal, scale=scale, dropout_p=dropout_p)
        pieces.append(out.transpose(1, 2).reshape(-1, heads, v.shape[-1]))
    if not pieces:
        return q.new_zeros(0, heads, v.shape[-1])
    # groups come out in length order; one gather puts the rows back in packed order
    return torch.cat(pieces)[torch.argsort(torch.cat(rows))]


def _batched(x: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """Packed rows of `count` equally long sequences -> [count, heads, length, D]."""
    return x[rows].view(count, -1, *x.shape[1:]).transpose(1, 2)
