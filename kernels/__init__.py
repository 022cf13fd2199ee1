"""Shared attention kernels: one dispatch per operation, a plain-torch reference beside each fast path.

Dropout samples its CPU masks cheaply (mtp.kernels.dropout).
CUDA runs Triton flash kernels (mtp.kernels.triton_attention, imported only there); CPU runs PyTorch SDPA.
FLASH-style grouped quadratic + global linear attention (MossFormer2) lives in mtp.kernels.linear_attention.
Point-cloud sampling and neighbourhoods (FPS, kNN, ball query, grid sampling) live in mtp.kernels.points, with
Triton kernels for CUDA in mtp.kernels.triton_points. Sparse voxel operations for ConDaFormer: the submanifold
3D convolution (mtp.kernels.sparse_conv) and attention within variable-size sparse windows
(mtp.kernels.sparse_window_attention).
"""
from mtp.kernels.attention import attention, attention_reference
from mtp.kernels.dropout import Dropout, dropout
from mtp.kernels.linear_attention import (
    chunked_linear_attention,
    group_quadratic_attention,
    group_quadratic_attention_reference,
    linear_attention_reference,
)
from mtp.kernels.points import (
    GridSample,
    ball_query,
    ball_query_reference,
    farthest_point_sample,
    farthest_point_sample_reference,
    grid_sample,
    grid_sample_reference,
    knn,
    knn_reference,
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
from mtp.kernels.sparse_conv import submanifold_conv3d, submanifold_conv3d_reference, submanifold_neighbours
from mtp.kernels.sparse_window_attention import sparse_window_attention, sparse_window_attention_reference

__all__ = [
    "Dropout",
    "dropout",
    "GridSample",
    "attention",
    "attention_reference",
    "ball_query",
    "ball_query_reference",
    "chunked_linear_attention",
    "farthest_point_sample",
    "farthest_point_sample_reference",
    "grid_sample",
    "grid_sample_reference",
    "group_quadratic_attention",
    "group_quadratic_attention_reference",
    "knn",
    "knn_reference",
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
    "sparse_window_attention",
    "sparse_window_attention_reference",
    "submanifold_conv3d",
    "submanifold_conv3d_reference",
    "submanifold_neighbours",
]
