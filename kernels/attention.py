"""Dense attention: a plain-torch reference and the dispatch every backbone calls."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_reference(q, k, v, *, bias=None, mask=None, causal=False, scale=None, dropout_p=0.0):
    """softmax(q k^T * scale + bias) v, computed naively. q,k,v: [..., L, D]."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if causal:
        lq, lk = scores.shape[-2:]
        keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


def attention(q, k, v, *, bias=None, mask=None, causal=False, scale=None, dropout_p=0.0):
    """Attention for every backbone; picks the fastest correct path for the device."""
    attn_mask = bias
    if mask is not None:
        as_float = torch.zeros_like(mask, dtype=q.dtype).masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else mask
        attn_mask = as_float if attn_mask is None else attn_mask + as_float
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=causal and attn_mask is None, scale=scale)
