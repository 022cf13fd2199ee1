"""The two attentions of a FLASH / MossFormer2 layer (Hua et al. 2022; Zhao et al. 2024), non-causal.

Both take un-grouped, un-padded tensors q, k [..., n, d], v [..., n, e] and an optional key mask
[..., n] (bool, True = real position); leading dims broadcast like matmul batch dims.

- `group_quadratic_attention`: the sequence is cut into groups of `group_size`; inside each group
  out = relu(q k^T / group_size)^2 v. The official code zero-pads the last group and masks the padded keys;
  the divisor stays `group_size` even for the short last group.
- `chunked_linear_attention`: out = q (k^T v) / n over the whole sequence, n the un-padded length
  (masked keys are zeroed but still counted in n, as the official code does).

The `*_reference` functions follow the official computation literally (pad, group, mask the score matrix,
one einsum over the padded sequence). The kernels reach the same values with less memory: the score
matrices are built a few groups at a time, the short last group is computed unpadded (zero keys only add
relu(0)^2 = 0), masking zeroes key rows instead of [g, g] score entries, and k^T v is accumulated chunk by
chunk so no intermediate grows with n beyond one chunk.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mtp.kernels.dropout import dropout

# scores built per step of group_quadratic_attention, in elements (about 32 MB in float32)
SCORE_BUDGET = 1 << 23


def _check(q, k, v, mask, name):
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"{name}: q, k, v must be [..., n, D] with the same rank, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or not (q.shape[-2] == k.shape[-2] == v.shape[-2]):
        raise ValueError(f"{name}: need q, k of one head dim and q, k, v of one length, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if mask is not None and (mask.dtype != torch.bool or mask.dim() < 1 or mask.shape[-1] != k.shape[-2]):
        raise ValueError(f"{name}: mask must be bool [..., n={k.shape[-2]}] (True = keep), got {mask.dtype} "
                         f"{tuple(mask.shape)}")


def _mask_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return t if mask is None else t.masked_fill(~mask.unsqueeze(-1), 0.0)


def _grouped(t: torch.Tensor, group_size: int, padding: int) -> torch.Tensor:
    """[..., n, D] -> [..., n_groups, group_size, D], zero-padded at the end."""
    t = F.pad(t, (0, 0, 0, padding)) if padding else t
    return t.reshape(*t.shape[:-2], -1, group_size, t.shape[-1])


# ------------------------------------------------------------------------------------------------ references

def group_quadratic_attention_reference(q, k, v, mask=None, *, group_size: int = 256, dropout_p: float = 0.0):
    """The official within-group attention: pad to whole groups, relu(q k^T / g)^2, dropout, mask, @ v."""
    _check(q, k, v, mask, "group_quadratic_attention_reference")
    n, g = q.shape[-2], group_size
    padding = -n % g
    if padding:
        if mask is None:
            mask = torch.ones(k.shape[:-1], dtype=torch.bool, device=k.device)
        mask = F.pad(mask, (0, padding), value=False)
    qg, kg, vg = (_grouped(t, g, padding) for t in (q, k, v))
    attn = F.relu((qg @ kg.transpose(-2, -1)) / g) ** 2
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    if mask is not None:
        attn = attn.masked_fill(~mask.reshape(*mask.shape[:-1], -1, 1, g), 0.0)
    out = attn @ vg
    return out.reshape(*out.shape[:-3], -1, out.shape[-1])[..., :n, :]


def linear_attention_reference(q, k, v, mask=None, *, group_size: int | None = None):
    """The official global linear attention: q (k^T v) / n, masked keys zeroed, n the un-padded length.

    With group_size the inputs are padded and grouped first and the sum runs over (group, position) in one
    einsum, literally as the official code; the padding adds zeros, so without it the value is the same.
    """
    _check(q, k, v, mask, "linear_attention_reference")
    n = k.shape[-2]
    k = _mask_rows(k, mask)
    if group_size is None:
        return q @ (torch.einsum("...nd,...ne->...de", k, v) / n)
    padding = -n % group_size
    qg, kg, vg = (_grouped(t, group_size, padding) for t in (q, k, v))
    kv = torch.einsum("...gnd,...gne->...de", kg, vg) / n
    out = torch.einsum("...gnd,...de->...gne", qg, kv)
    return out.reshape(*out.shape[:-3], -1, out.shape[-1])[..., :n, :]


# ------------------------------------------------------------------------------------------------ kernels

def _quadratic(q, k, v, g: int, dropout_p: float, training: bool):
    attn = F.relu((q @ k.transpose(-2, -1)) / g).square()
    return dropout(attn, dropout_p, training) @ v


def group_quadratic_attention(q, k, v, mask=None, *, group_size: int = 256, dropout_p: float = 0.0,
                              groups_per_step: int | None = None, accumulate: torch.Tensor | None = None):
    """relu(q k^T / group_size)^2 v inside each group of `group_size` positions; [..., n, e] out.

    Equals `group_quadratic_attention_reference` without materialising padded copies or more than
    `groups_per_step` groups of scores at once (default: as many as fit SCORE_BUDGET elements).
    dropout_p applies to the scores whenever > 0 (pass 0 in eval mode). With `accumulate` (a tensor of the
    output's shape, e.g. the linear attention's result) each group's output is added into it in place and
    it is returned: no output of its own and no concatenation (inference only: autograd is refused).
    """
    _check(q, k, v, mask, "group_quadratic_attention")
    if accumulate is not None:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, accumulate)):
            raise ValueError("group_quadratic_attention: accumulate= is for inference; with autograd, add the "
                             "result")
        shape = (*torch.broadcast_shapes(q.shape[:-1], k.shape[:-1], v.shape[:-1]), v.shape[-1])
        if tuple(accumulate.shape) != shape:
            raise ValueError(f"group_quadratic_attention: accumulate must be {shape}, got "
                             f"{tuple(accumulate.shape)}")
    n, g = q.shape[-2], group_size
    k = _mask_rows(k, mask)   # relu(q . 0)^2 == 0: a zero key row is a masked key
    full = n // g
    batch = max(math.prod(q.shape[:-2]), math.prod(k.shape[:-2]), 1)
    if groups_per_step is None:
        groups_per_step = max(1, SCORE_BUDGET // (batch * g * g))
    spans = [(slice(start * g, min(full, start + groups_per_step) * g), min(full, start + groups_per_step) - start)
             for start in range(0, full, groups_per_step)]
    if n > full * g:   # the short last group: its missing (padded) keys would only add zeros
        spans.append((slice(full * g, n), None))
    pieces = []
    for span, groups in spans:
        qs, ks, vs = (t[..., span, :] if groups is None else t[..., span, :].unflatten(-2, (groups, g))
                      for t in (q, k, v))
        out = _quadratic(qs, ks, vs, g, dropout_p, dropout_p > 0)
        out = out if groups is None else out.flatten(-3, -2)
        if accumulate is None:
            pieces.append(out)
        else:
            accumulate[..., span, :].add_(out)
    if accumulate is not None:
        return accumulate
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)


def chunked_linear_attention(q, k, v, mask=None, *, chunk_size: int = 2048):
    """q (k^T v) / n with k^T v accumulated over chunks of `chunk_size` positions; [..., n, e] out.

    The [d, e] state is the only intermediate besides one chunk (masking copies a chunk of k, not all of
    it); autograd through the loop keeps nothing larger.
    """
    _check(q, k, v, mask, "chunked_linear_attention")
    n = k.shape[-2]
    kv = None
    for start in range(0, n, chunk_size):
        span = slice(start, min(n, start + chunk_size))
        kc = _mask_rows(k[..., span, :], None if mask is None else mask[..., span])
        part = kc.transpose(-2, -1) @ v[..., span, :]
        kv = part if kv is None else kv + part
    return q @ (kv / n)


__all__ = [
    "chunked_linear_attention",
    "group_quadratic_attention",
    "group_quadratic_attention_reference",
    "linear_attention_reference",
]
