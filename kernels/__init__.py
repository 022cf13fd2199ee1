"""Shared attention kernels: one dispatch per operation, a plain-torch reference beside each fast path.

Dropout samples its CPU masks cheaply (mtp.kernels.dropout).
CUDA runs Triton flash kernels (mtp.kernels.triton_attention, imported only there); CPU runs PyTorch SDPA.
FLASH-style grouped quadratic + global linear attention (MossFormer2) lives in mtp.kernels.linear_attention.
"""
from mtp.kernels.attention import attention, attention_reference
from mtp.kernels.dropout import Dropout, dropout
from mtp.kernels.linear_attention import (
    chunked_linear_attention,
    group_quadratic_attention,
    group_quadratic_attention_reference,
    linear_attention_reference,
)
from mtp.kernels.varlen import varlen_attention, varlen_attention_reference
from mtp.kernels.window import (
    order_windows_by_region,
    overlapping_relative_position_index,
    region_mask,
    relative_position_index,
    shifted_window_mask,
    shifted_window_region_ids,
    window_attention,
    window_attention_reference,
    window_region_ids,
)

__all__ = [
    "Dropout",
    "dropout",
    "attention",
    "attention_reference",
    "chunked_linear_attention",
    "group_quadratic_attention",
    "group_quadratic_attention_reference",
    "linear_attention_reference",
    "order_windows_by_region",
    "overlapping_relative_position_index",
    "region_mask",
    "relative_position_index",
    "shifted_window_mask",
    "shifted_window_region_ids",
    "varlen_attention",
    "varlen_attention_reference",
    "window_attention",
    "window_attention_reference",
    "window_region_ids",
]
