"""Window attention for Swin-style backbones (HAT's window self-attention and OCAB cross-attention).

Layout: q [B*nW, heads, Nq, D], k/v [B*nW, heads, Nk, D], windows ordered batch-major, then row-major
over the window grid. Scores = q k^T * scale + table[index, head] + shift mask, with HAT's numerics: the
relative-position bias is added first, the shifted-window mask (-100, not -inf, between tokens of
different regions) second.

`shift_mask` is either HAT's stored float mask [nW, Nq, Nk] or, cheaper, integer region ids [nW, N] from
`shifted_window_region_ids`; the fast paths build the mask from the ids instead of reading a stored one.

The attention itself does not care how many axes a window has: 3D (Swin-UNETR) windows use the N-d index
`relative_position_index((wd, wh, ww))` and region ids from `window_region_ids`, whose windows and tokens
are flattened first-axis-major like 2D ones.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from mtp.kernels.attention import use_triton

log = logging.getLogger("mtp.kernels")

SHIFT_FILL = -100.0


def relative_position_index(window_size, device=None) -> torch.Tensor:
    """Swin index [N, N] into a [prod(2w-1), heads] bias table, N = prod(w).

    An int is a square 2D window (HAT's relative_position_index_SA, [ws^2, ws^2]); a tuple gives one size per
    axis, any number of axes (Swin-UNETR's 3D index for (7, 7, 7)). Entry [i, j] is the offset of token i from
    token j, each axis shifted to be non-negative and the axes combined first-axis-major.
    """
    if isinstance(window_size, int):
        ys, xs = _grid(window_size, device)
        side = 2 * window_size - 1
        return (ys[:, None] - ys[None, :] + window_size - 1) * side + (xs[:, None] - xs[None, :] + window_size - 1)
    sizes = tuple(window_size)
    if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"relative_position_index: window_size must be a positive int or a tuple of them, "
                         f"got {window_size!r}")
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, device=device) for n in sizes], indexing="ij"))
    coords = coords.flatten(1)  # [axes, N], first axis slowest
    index = torch.zeros(coords.shape[1], coords.shape[1], dtype=torch.long, device=device)
    for axis, n in enumerate(sizes):
        index = index * (2 * n - 1) + (coords[axis][:, None] - coords[axis][None, :] + n - 1)
    return index


def overlapping_relative_position_index(window_size: int, overlap_window_size: int, device=None) -> torch.Tensor:
    """HAT's OCAB index [ws^2, ows^2] into a [(ws+ows-1)^2, heads] table (relative_position_index_OCA).

    Reproduces the official values exactly, negative entries included: they index the table from its end,
    as torch indexing does, and the values still hit every row once.
    """
    ys, xs = _grid(window_size, device)
    ext_ys, ext_xs = _grid(overlap_window_size, device)
    side = window_size + overlap_window_size - 1
    offset = window_size - overlap_window_size + 1
    return (ext_ys[None, :] - ys[:, None] + offset) * side + (ext_xs[None, :] - xs[:, None] + offset)


def _grid(size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, device=device)
    return coords.repeat_interleave(size), coords.repeat(size)


def shifted_window_region_ids(height: int, width: int, window_size: int, shift: int, device=None) -> torch.Tensor:
    """Region id of every token of every window, [nW, ws^2] int64, for a feature map rolled by -shift.

    Tokens of a window may attend to each other only when their ids agree; the regions are the 3x3 bands
    [0, H-ws), [H-ws, H-shift), [H-shift, H) per axis, as in Swin's calculate_mask.
    """
    if height % window_size or width % window_size:
        raise ValueError(f"shifted window mask: size {height}x{width} is not a multiple of window_size "
                         f"{window_size} (pad the feature map first)")
    if not 0 < shift < window_size:
        raise ValueError(f"shifted window mask: shift must be in (0, window_size={window_size}), got {shift}")
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_band = (rows >= height - window_size).long() + (rows >= height - shift).long()
    col_band = (cols >= width - window_size).long() + (cols >= width - shift).long()
    ids = row_band[:, None] * 3 + col_band[None, :]
    ids = ids.view(height // window_size, window_size, width // window_size, window_size)
    return ids.permute(0, 2, 1, 3).reshape(-1, window_size * window_size)


def window_region_ids(size, window_size, shift_size, device=None) -> torch.Tensor:
    """Region ids [nW, prod(window)] of an N-d map of `size` (each axis a multiple of its window) rolled by
    -shift per axis: Swin's 3 bands [0, n-w), [n-w, n-s), [n-s, n) per shifted axis, combined first-axis-major.

    An axis with shift 0 is one region (Swin-UNETR shrinks a window to a small axis and stops shifting it there,
    while the other axes stay shifted). Windows and tokens are ordered first-axis-major, as window partitions are.
    """
    size, window, shift = tuple(size), tuple(window_size), tuple(shift_size)
    if not len(size) == len(window) == len(shift):
        raise ValueError(f"window_region_ids: size {size}, window_size {window} and shift_size {shift} need one "
                         "entry per axis")
    for n, w, s in zip(size, window, shift):
        if w < 1 or n % w:
            raise ValueError(f"window_region_ids: size {size} is not a multiple of window_size {window} "
                             "(pad the feature map first)")
        if not 0 <= s < w:
            raise ValueError(f"window_region_ids: shift_size must be in [0, window) per axis, got {shift} for "
                             f"window_size {window}")
    ids = torch.zeros((), dtype=torch.long, device=device)
    for axis, (n, w, s) in enumerate(zip(size, window, shift)):
        coords = torch.arange(n, device=device)
        band = ((coords >= n - w).long() + (coords >= n - s).long()) if s else torch.zeros_like(coords)
        ids = ids.unsqueeze(-1) * 3 + band.view(*([1] * axis), n)
    # [n0, n1, ...] -> [n0/w0, w0, n1/w1, w1, ...] -> windows first, then tokens inside a window
    axes = len(size)
    ids = ids.view(*[d for n, w in zip(size, window) for d in (n // w, w)])
    ids = ids.permute(*range(0, 2 * axes, 2), *range(1, 2 * axes, 2))
    return ids.reshape(-1, math.prod(window))


def region_mask(region_ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[..., N] region ids -> [..., N, N] additive mask: SHIFT_FILL between different regions, else 0."""
    differ = region_ids[..., :, None] != region_ids[..., None, :]
    return torch.zeros(differ.shape, dtype=dtype, device=region_ids.device).masked_fill_(differ, SHIFT_FILL)


def shifted_window_mask(height: int, width: int, window_size: int, shift: int, device=None,
                        dtype=torch.float32) -> torch.Tensor:
    """HAT's attn_mask [nW, ws^2, ws^2]: -100 between tokens of different shifted regions, 0 elsewhere."""
    return region_mask(shifted_window_region_ids(height, width, window_size, shift, device), dtype)


def _check_inputs(q, k, v, bias_table, bias_index, shift_mask):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"window_attention: q, k, v must be [B*nW, heads, N, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"window_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} disagree "
                         "(need the same windows and heads, k/v of one length, q/k of one head dim)")
    heads, nq, nk = q.shape[1], q.shape[2], k.shape[2]
    if bias_table.dim() != 2 or bias_table.shape[1] != heads:
        raise ValueError(f"window_attention: bias_table must be [entries, heads={heads}], got "
                         f"{tuple(bias_table.shape)}")
    if tuple(bias_index.shape) != (nq, nk) or bias_index.is_floating_point():
        raise ValueError(f"window_attention: bias_index must be an integer [{nq}, {nk}] tensor, got "
                         f"{bias_index.dtype} {tuple(bias_index.shape)}")
    for name, extra in (("bias_table", bias_table), ("bias_index", bias_index), ("shift_mask", shift_mask)):
        if extra is not None and extra.device != q.device:
            raise ValueError(f"window_attention: {name} is on {extra.device}, q on {q.device}")
    entries = bias_table.shape[0]
    low, high = int(bias_index.min()), int(bias_index.max())
    if low < -entries or high >= entries:
        raise ValueError(f"window_attention: bias_index values span [{low}, {high}], outside the table's "
                         f"[-{entries}, {entries})")
    if shift_mask is None:
        return
    n_windows = shift_mask.shape[0]
    if shift_mask.is_floating_point():
        if tuple(shift_mask.shape[1:]) != (nq, nk):
            raise ValueError(f"window_attention: float shift_mask must be [nW, {nq}, {nk}], got "
                             f"{tuple(shift_mask.shape)}")
    elif shift_mask.dim() != 2 or shift_mask.shape[1] != nq or nq != nk:
        raise ValueError(f"window_attention: integer shift_mask (region ids) must be [nW, {nq}] with as many "
                         f"keys as queries, got {tuple(shift_mask.shape)} for q/k lengths {nq}/{nk}")
    if q.shape[0] % n_windows:
        raise ValueError(f"window_attention: {q.shape[0]} windows in q is not a multiple of the mask's "
                         f"{n_windows} windows per image")


def _bias(bias_table, bias_index, dtype):
    """[heads, Nq, Nk] relative-position bias, gathered once for all windows."""
    nq, nk = bias_index.shape
    return bias_table[bias_index.reshape(-1)].view(nq, nk, -1).permute(2, 0, 1).to(dtype)


def window_attention_reference(q, k, v, bias_table, bias_index, *, shift_mask=None, scale=None, dropout_p=0.0):
    """HAT's WindowAttention/OCAB computation step by step, materialising every [B*nW, heads, Nq, Nk] tensor."""
    _check_inputs(q, k, v, bias_table, bias_index, shift_mask)
    heads, nq, nk = q.shape[1], q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + _bias(bias_table, bias_index, q.dtype).unsqueeze(0)
    if shift_mask is not None:
        mask = shift_mask if shift_mask.is_floating_point() else region_mask(shift_mask, q.dtype)
        n_windows = mask.shape[0]
        attn = attn.view(-1, n_windows, heads, nq, nk) + mask.to(q.dtype).unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, nq, nk)
    return F.dropout(attn.softmax(dim=-1), dropout_p) @ v


def window_attention(q, k, v, bias_table, bias_index, *, shift_mask=None, scale=None, dropout_p=0.0):
    """Fast window attention; same contract and numerics as window_attention_reference.

    ``dropout_p`` > 0 (attention-probability dropout, for training only) takes the reference path.
    """
    if dropout_p > 0.0:
        log.debug("window_attention: reference path for dropout_p=%s", dropout_p)
        return window_attention_reference(q, k, v, bias_table, bias_index, shift_mask=shift_mask, scale=scale,
                                          dropout_p=dropout_p)
    _check_inputs(q, k, v, bias_table, bias_index, shift_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_triton(q, k, v) and q.shape[-1] == v.shape[-1] and bias_table.is_floating_point():
        from mtp.kernels.triton_attention import flash_window_attention

        log.debug("window_attention: triton kernel q%s k%s shift=%s", tuple(q.shape), tuple(k.shape),
                  None if shift_mask is None else ("regions" if not shift_mask.is_floating_point() else "stored"))
        index = torch.remainder(bias_index, bias_table.shape[0])  # torch's negative indexing, made explicit
        regions = None if shift_mask is None or shift_mask.is_floating_point() else shift_mask
        stored = shift_mask if shift_mask is not None and shift_mask.is_floating_point() else None
        return flash_window_attention(q, k, v, bias_table, index, shift_regions=regions, shift_mask=stored,
                                      scale=scale)
    log.debug("window_attention: sdpa q%s k%s shift=%s", tuple(q.shape), tuple(k.shape), shift_mask is not None)
    return _WindowAttentionSDPA.apply(q, k, v, bias_table, bias_index, shift_mask, scale)


class _WindowAttentionSDPA(torch.autograd.Function):
    """Forward through SDPA's fused kernel; backward recomputes the scores a chunk of windows at a time.

    Autograd through SDPA would fall back to its math kernel as soon as the bias table needs a gradient,
    keeping [B*nW, heads, Nq, Nk] tensors alive; here no step holds more than CHUNK_BYTES of scores.
    """
    CHUNK_BYTES = 16 << 20

    @staticmethod
    def forward(ctx, q, k, v, bias_table, bias_index, shift_mask, scale):
        out = _window_attention_sdpa(q, k, v, bias_table, bias_index, shift_mask, scale)
        ctx.save_for_backward(q, k, v, out, bias_table, bias_index, shift_mask)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, bias_table, bias_index, shift_mask = ctx.saved_tensors
        scale = ctx.scale
        windows, heads, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        bias = _bias(bias_table, bias_index, q.dtype)
        masks = None
        if shift_mask is not None:
            masks = shift_mask.to(q.dtype) if shift_mask.is_floating_point() else region_mask(shift_mask, q.dtype)
        delta = (grad_out * out).sum(-1, keepdim=True)  # rowsum(dO * O) = rowsum(P * dP)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dbias = torch.zeros(heads, nq, nk, dtype=torch.float32, device=q.device)
        step = max(1, _WindowAttentionSDPA.CHUNK_BYTES // (heads * nq * nk * q.element_size()))
        for start in range(0, windows, step):
            part = slice(start, start + step)
            scores = (q[part] * scale) @ k[part].transpose(-2, -1) + bias
            if masks is not None:
                window_ids = torch.arange(start, min(start + step, windows), device=q.device) % masks.shape[0]
                scores += masks[window_ids].unsqueeze(1)
            probs = scores.softmax(dim=-1)
            dv[part] = probs.transpose(-2, -1) @ grad_out[part]
            dscores = probs.mul_((grad_out[part] @ v[part].transpose(-2, -1)).sub_(delta[part]))
            dq[part] = (dscores @ k[part]).mul_(scale)
            dk[part] = (dscores.transpose(-2, -1) @ q[part]).mul_(scale)
            dbias += dscores.sum(0)
        dtable = None
        if ctx.needs_input_grad[3]:
            rows = torch.remainder(bias_index, bias_table.shape[0]).reshape(-1)
            per_entry = dbias.permute(1, 2, 0).reshape(-1, heads)
            dtable = torch.zeros(bias_table.shape, dtype=torch.float32, device=q.device).index_add_(0, rows, per_entry)
            dtable = dtable.to(bias_table.dtype)
        return dq, dk, dv, dtable, None, None, None


def _window_attention_sdpa(q, k, v, bias_table, bias_index, shift_mask, scale):
    """SDPA over windows grouped by shift-mask pattern, one call per group with a single [1, heads, Nq, Nk]
    bias (+ mask). Peak extra memory is one bias per group, never [B*nW, heads, Nq, Nk]."""
    bias = _bias(bias_table, bias_index, q.dtype).contiguous().unsqueeze(0)
    if shift_mask is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    if shift_mask.is_floating_point():  # a stored mask: attend unmasked, then redo the windows it touches
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        windows = shift_mask.flatten(1).ne(0).any(1).nonzero().squeeze(1)
        if len(windows):
            masks = bias + shift_mask[windows].to(q.dtype).unsqueeze(1)
            out = _recompute_windows(out, q, k, v, windows, shift_mask.shape[0], masks, scale)
        return out
    groups = _region_groups(shift_mask)
    n_windows = shift_mask.shape[0]
    batch = q.shape[0] // n_windows
    if batch == 1 and all(isinstance(windows, slice) for windows, _ in groups):
        # windows already sorted by pattern (HAT orders them so): slices are views, the outputs one concat
        outs = [F.scaled_dot_product_attention(q[windows], k[windows], v[windows],
                                               attn_mask=bias if pattern is None else bias + region_mask(pattern, q.dtype),
                                               scale=scale)
                for windows, pattern in groups]
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, device=q.device)
    for windows, pattern in groups:
        if isinstance(windows, slice):
            windows = torch.arange(windows.start, windows.stop, device=q.device)
        mask = bias if pattern is None else bias + region_mask(pattern, q.dtype)
        _recompute_windows(out, q, k, v, windows, n_windows, mask, scale)
    return out


def _pattern_numbers(region_ids: torch.Tensor) -> torch.Tensor:
    """[nW] number of each window's region pattern; windows lying in one region all share number 0."""
    single = (region_ids == region_ids[:, :1]).all(dim=1, keepdim=True)
    return torch.unique(torch.where(single, -1, region_ids), dim=0, return_inverse=True)[1]


def order_windows_by_region(region_ids: torch.Tensor) -> torch.Tensor:
    """A permutation of the windows [nW] that makes windows of one region pattern adjacent.

    Window attention over windows so ordered (with the region ids reordered alike) runs each pattern group
    on views, without gathering windows.
    """
    return torch.argsort(_pattern_numbers(region_ids), stable=True)


def _region_groups(region_ids: torch.Tensor) -> list:
    """Windows of one image grouped by region pattern: [(slice or index tensor, pattern [N] or None)].

    A window lying in a single region needs no mask (pattern None); a group of consecutive windows is a slice.
    Swin shifts give at most 4 patterns.
    """
    which = _pattern_numbers(region_ids)
    groups = []
    for number in range(int(which.max()) + 1):
        windows = (which == number).nonzero().squeeze(1)
        first, last = int(windows[0]), int(windows[-1])
        pattern = region_ids[first]
        single = bool((pattern == pattern[0]).all())
        if last - first + 1 == len(windows):
            windows = slice(first, last + 1)
        groups.append((first, windows, None if single else pattern))
    return [(windows, pattern) for _, windows, pattern in sorted(groups, key=lambda group: group[0])]


def _recompute_windows(out, q, k, v, windows, n_windows, mask, scale):
    """Redo attention of `windows` (per image) with `mask` [1 or len(windows), heads, Nq, Nk]."""
    batch, heads = q.shape[0] // n_windows, q.shape[1]

    def pick(x):
        return x.view(batch, n_windows, *x.shape[1:])[:, windows]  # [B, n, heads, N, D]

    if mask.shape[0] == 1:  # one mask shared by the windows: windows go to the batch dim
        redone = F.scaled_dot_product_attention(pick(q).flatten(0, 1), pick(k).flatten(0, 1), pick(v).flatten(0, 1),
                                                attn_mask=mask, scale=scale)
    else:  # a mask per window: windows join the head dim so one mask tensor broadcasts over the batch
        redone = F.scaled_dot_product_attention(pick(q).flatten(1, 2), pick(k).flatten(1, 2), pick(v).flatten(1, 2),
                                                attn_mask=mask.flatten(0, 1).unsqueeze(0), scale=scale)
    # in place: this runs inside _WindowAttentionSDPA.forward, where autograd records nothing
    out.view(batch, n_windows, *out.shape[1:]).index_copy_(1, windows, redone.view(batch, len(windows), heads,
                                                                                   *out.shape[2:]))
    return out
