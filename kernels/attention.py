"""Dense attention: a plain-torch reference and the dispatch every backbone calls.

Dispatch: CUDA tensors go to the Triton flash kernel (bias, bool/float mask and causal handled inside the
kernel, forward and backward); everything else, and what the kernel does not cover (dropout, float64,
head dims above 128, Triton missing), goes to PyTorch's scaled_dot_product_attention with bias, mask and
causal folded into one additive mask. The path taken is logged at debug level on "mtp.kernels".

Causal masking is aligned to the bottom-right corner when Lq != Lk (query i sees keys j <= i + Lk - Lq).
A query row that can see no key at all gets a zero output on every path.
"""
from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

from mtp.kernels.dropout import dropout

log = logging.getLogger("mtp.kernels")

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_HEAD_DIM = 128


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(*tensors: torch.Tensor, dropout_p: float = 0.0) -> bool:
    """True when the Triton kernels cover these q/k/v: CUDA, one supported dtype, head dim <= 128, no dropout."""
    q = tensors[0]
    return (q.is_cuda and dropout_p == 0.0 and triton_available() and q.dtype in TRITON_DTYPES
            and all(t.dtype == q.dtype for t in tensors) and q.shape[-1] <= TRITON_MAX_HEAD_DIM)


def causal_keep(lq: int, lk: int, device) -> torch.Tensor:
    """Bool [Lq, Lk]: True where query i may see key j (bottom-right aligned)."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(lk - lq)


def _check_inputs(q, k, v, bias, mask):
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"attention: q, k, v must be [..., L, D] with the same rank, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: need q[..., D] == k[..., D] and k[..., Lk, :] == v[..., Lk, :], got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    lq, lk = q.shape[-2], k.shape[-2]
    for name, extra in (("bias", bias), ("mask", mask)):
        if extra is None:
            continue
        if extra.dim() < 2 or extra.shape[-2] not in (1, lq) or extra.shape[-1] not in (1, lk):
            raise ValueError(f"attention: {name} of shape {tuple(extra.shape)} does not broadcast to "
                             f"[..., {lq}, {lk}] (queries, keys)")
        if name == "mask" and extra.dtype != torch.bool and not extra.is_floating_point():
            raise ValueError(f"attention: mask must be bool (True = keep) or float (additive), got {extra.dtype}")


def fold_masks(bias, mask, causal, lq, lk, dtype, device):
    """One mask for SDPA: bool when only bool parts exist (cheaper), else additive in `dtype`."""
    keep = mask if mask is not None and mask.dtype == torch.bool else None
    if causal:
        tri = causal_keep(lq, lk, device)
        keep = tri if keep is None else keep & tri
    additive = bias.to(dtype) if bias is not None else None
    if mask is not None and mask.dtype != torch.bool:
        additive = mask.to(dtype) if additive is None else additive + mask.to(dtype)
    if additive is None:
        return keep
    if keep is None:
        return additive
    return torch.where(keep, additive, torch.tensor(float("-inf"), dtype=dtype, device=device))


def _as_4d(x: torch.Tensor) -> torch.Tensor:
    """[..., L, D] -> [Z, H, L, D] (SDPA's fused CPU kernel takes nothing else): leading singleton dims are
    added, or every dim after the first is merged into H, so a mask shared across the first dim stays shared."""
    if x.dim() <= 4:
        return x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))
    return x.reshape(x.shape[0], -1, *x.shape[-2:])


def _mask_as_4d(m: torch.Tensor | None, batch_shape: torch.Size) -> torch.Tensor | None:
    """The mask laid out like _as_4d(q), broadcast only across the dims merged into H, never the first."""
    if m is None:
        return None
    if len(batch_shape) <= 2:  # q only gains leading singleton dims
        return m.reshape(m.shape[-4:]) if m.dim() > 4 else m.reshape((1,) * (4 - m.dim()) + tuple(m.shape))
    m = m.reshape((1,) * (len(batch_shape) + 2 - m.dim()) + tuple(m.shape))
    m = m.expand(m.shape[0], *batch_shape[1:], *m.shape[-2:])
    return m.reshape(m.shape[0], -1, *m.shape[-2:])


def _probabilities(q, k, *, bias, mask, causal, scale):
    """softmax(q k^T * scale + bias [+ mask]) with rows that see no key set to zero."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(~causal_keep(lq, lk, q.device), float("-inf"))
    probs = scores.softmax(dim=-1)
    # a row with no visible key is all-NaN after softmax; every fast path returns zeros there
    return probs.masked_fill(torch.isneginf(scores).all(-1, keepdim=True), 0.0)


def attention_reference(q, k, v, *, bias=None, mask=None, causal=False, scale=None, dropout_p=0.0):
    """softmax(q k^T * scale + bias [+ mask]) v computed naively; q, k, v: [..., L, D]."""
    probs = _probabilities(q, k, bias=bias, mask=mask, causal=causal, scale=scale)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


def attention(q, k, v, *, bias=None, mask=None, causal=False, scale=None, dropout_p=0.0):
    """Attention for every backbone; q [..., Lq, D], k/v [..., Lk, D], bias/mask broadcast to [..., Lq, Lk].

    mask: bool (True = attend) or float (added like bias). dropout_p applies whenever > 0, so pass
    0 in eval mode.
    """
    _check_inputs(q, k, v, bias, mask)
    lq, lk = q.shape[-2], k.shape[-2]
    if use_triton(q, k, v, dropout_p=dropout_p) and q.shape[-1] == v.shape[-1]:
        from mtp.kernels.triton_attention import flash_attention

        log.debug("attention: triton flash kernel q%s k%s bias=%s mask=%s causal=%s", tuple(q.shape),
                  tuple(k.shape), bias is not None, mask is not None, causal)
        additive = fold_masks(bias, mask, False, lq, lk, q.dtype, q.device)
        if additive is not None and additive.dtype == torch.bool:
            additive = torch.zeros(additive.shape, dtype=q.dtype, device=q.device).masked_fill_(~additive,
                                                                                               float("-inf"))
        out = flash_attention(_as_4d(q), _as_4d(k), _as_4d(v), bias=_mask_as_4d(additive, q.shape[:-2]),
                              causal=causal, scale=scale)
        return out.reshape(*q.shape[:-1], v.shape[-1])

    if dropout_p > 0 and q.device.type == "cpu":
        # SDPA's CPU kernels do not fuse dropout: its math fallback samples per element, slower than the
        # whole product for small models; the same math with mtp.kernels.dropout's sampling instead
        log.debug("attention: math with cpu dropout q%s k%s dropout=%s", tuple(q.shape), tuple(k.shape), dropout_p)
        probs = _probabilities(q, k, bias=bias, mask=mask, causal=causal, scale=scale)
        return dropout(probs, dropout_p) @ v
    log.debug("attention: sdpa q%s k%s bias=%s mask=%s causal=%s dropout=%s", tuple(q.shape), tuple(k.shape),
              bias is not None, mask is not None, causal, dropout_p)
    # SDPA's own is_causal is top-left aligned, so it only stands in for ours when Lq == Lk
    native_causal = causal and lq == lk and bias is None and mask is None
    attn_mask = fold_masks(bias, mask, causal and not native_causal, lq, lk, q.dtype, q.device)
    out = F.scaled_dot_product_attention(_as_4d(q), _as_4d(k), _as_4d(v),
                                         attn_mask=_mask_as_4d(attn_mask, q.shape[:-2]), dropout_p=dropout_p,
                                         is_causal=native_causal, scale=scale)
    return out.reshape(*q.shape[:-1], v.shape[-1])
