"""The temporal layers of a video denoiser: find them, swap their attention processors, stretch position tables.

Three model families, one interface (nothing here imports diffusers; modules are recognised by class name):
- our VideoUNet: every `TemporalAttention` (backbones/video_unet.py);
- diffusers `UNet3DConditionModel` (ModelScope, Zeroscope): the self-attentions (`attn1`, and `attn2` when it is
  self-attention, as `double_self_attention` makes it) of each `TransformerTemporalModel` block;
- AnimateDiff (`UNetMotionModel`, a `MotionAdapter`): the same two self-attentions of each motion module
  (`AnimateDiffTransformer3D`).

`install_temporal_processor(model, factory)` sets `factory(name, module)` on each and returns a handle whose
`restore()` puts the previous processors back (also usable as a context manager).

Position tables: AnimateDiff's motion modules add a fixed sinusoidal table of 32 positions (`pos_embed.pe`,
[1, 32, C]) to the tokens, so more than 32 frames fail with a shape error. `extend_position_tables` replaces
each table shorter than the requested length:
- "extend" (default): recompute the same sinusoid for every position 0..N-1; rows < 32 are bit-identical to the
  stored ones (checked, see below), so videos of up to 32 frames are unchanged and each frame keeps the spacing
  the motion module was trained with (sinusoid differences depend only on the frame offset). Positions >= 32 are
  new to the model, which is what FreeLong / Video-Infinity / window attention then have to cope with.
- "interpolate": linearly resample the stored table to N rows (position j reads the stored table at
  j * (L-1) / (N-1)): every position stays inside the trained range, but all frames, including the first 32,
  move and the model sees frames 32/N as far apart as it was trained on, i.e. slower motion.
A stored table that is not the sinusoid (fine-tuned, or another formula) is kept for its rows under
"extend" and continued by the sinusoid, with a warning, since there is no formula to continue it exactly.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict

import torch
from torch import nn

log = logging.getLogger(__name__)

_TEMPORAL_TRANSFORMERS = ("TransformerTemporalModel", "AnimateDiffTransformer3D")
_OUR_ATTENTION = "TemporalAttention"
POSITION_MODES = ("extend", "interpolate")


def _is_self_attention(attn) -> bool:
    return attn is not None and not getattr(attn, "is_cross_attention", False) and hasattr(attn, "set_processor")


def temporal_tokens(name: str, attn, hidden_states, encoder_hidden_states, attention_mask) -> torch.Tensor:
    """A temporal self-attention processor's input check and pre-norm: hidden_states [(B*H*W), F, C], no encoder
    states or mask; returns the tokens after the layer's `group_norm` (if it has one)."""
    if encoder_hidden_states is not None or attention_mask is not None:
        raise ValueError(f"{name}: temporal self-attention only (no encoder_hidden_states or attention_mask)")
    if hidden_states.dim() != 3:
        raise ValueError(f"{name}: hidden_states must be [(B*H*W), F, C], got {tuple(hidden_states.shape)}")
    if getattr(attn, "group_norm", None) is not None:
        return attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states


def attention_output(attn, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """A diffusers-style Attention's output path for a processor's merged heads: to_out (projection, dropout),
    the residual when the layer has `residual_connection`, and its `rescale_output_factor`."""
    out = attn.to_out[0](out)
    if len(attn.to_out) > 1:
        out = attn.to_out[1](out)
    if getattr(attn, "residual_connection", False):
        out = out + residual
    return out / getattr(attn, "rescale_output_factor", 1.0)


def temporal_attention_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """name -> temporal self-attention module, in module order; an error when the model has none."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in model.named_modules():
        cls = type(module).__name__
        if cls == _OUR_ATTENTION and hasattr(module, "set_processor"):
            layers[name] = module
        elif cls in _TEMPORAL_TRANSFORMERS:
            for i, block in enumerate(getattr(module, "transformer_blocks", ())):
                for attr in ("attn1", "attn2"):
                    attn = getattr(block, attr, None)
                    if _is_self_attention(attn):
                        layers[f"{name}.transformer_blocks.{i}.{attr}" if name else
                               f"transformer_blocks.{i}.{attr}"] = attn
    if not layers:
        raise ValueError(f"temporal_attention_layers: {type(model).__name__} has no temporal attention layer "
                         f"(looked for {_OUR_ATTENTION} modules and the self-attentions of "
                         f"{' / '.join(_TEMPORAL_TRANSFORMERS)} blocks)")
    return layers


class ProcessorHandle:
    """The processors a model had before an installation; `restore()` puts them back (once)."""

    def __init__(self, previous: "OrderedDict[str, tuple[nn.Module, object]]"):
        self.previous = previous
        self.restored = False

    @property
    def names(self) -> list[str]:
        return list(self.previous)

    def restore(self) -> None:
        if self.restored:
            return
        for module, processor in self.previous.values():
            module.set_processor(processor)
        self.restored = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def install_temporal_processor(model: nn.Module, factory, layers=None) -> ProcessorHandle:
    """Set `factory(name, module)` as the processor of each temporal attention layer (or of those whose name
    `layers(name)` accepts, when `layers` is a callable; or those named in `layers`, when a collection).

    A factory may return None to leave a layer as it is. Returns the handle that restores the old processors.
    """
    found = temporal_attention_layers(model)
    if layers is None:
        chosen = found
    elif callable(layers):
        chosen = OrderedDict((n, m) for n, m in found.items() if layers(n))
    else:
        wanted = list(layers)
        missing = [n for n in wanted if n not in found]
        if missing:
            raise KeyError(f"install_temporal_processor: no temporal attention layer named {missing}; "
                           f"{type(model).__name__} has {list(found)}")
        chosen = OrderedDict((n, found[n]) for n in wanted)
    previous: OrderedDict[str, tuple[nn.Module, object]] = OrderedDict()
    try:
        for name, module in chosen.items():
            processor = factory(name, module)
            if processor is None:
                continue
            previous[name] = (module, module.processor)
            module.set_processor(processor)
    except BaseException:
        ProcessorHandle(previous).restore()
        raise
    return ProcessorHandle(previous)


# ------------------------------------------------------------------------------------------ position tables

def sinusoid_table(length: int, dim: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[1, length, dim]: diffusers' SinusoidalPositionalEmbedding table (sin on even, cos on odd channels)."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim, device=device)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)[:, : dim // 2]
    return pe.to(dtype)


def position_tables(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """name -> module holding a fixed temporal position table (a `pe` buffer [1, L, C]), e.g. AnimateDiff's."""
    found = OrderedDict()
    for name, module in model.named_modules():
        pe = getattr(module, "pe", None)
        if isinstance(pe, torch.Tensor) and pe.dim() == 3 and pe.shape[0] == 1 and "pe" in dict(
                module.named_buffers(recurse=False)):
            found[name] = module
    return found


def max_positions(model: nn.Module) -> int | None:
    """The shortest position table's length, or None when the model has none (any frame count then works)."""
    tables = position_tables(model)
    return min(m.pe.shape[1] for m in tables.values()) if tables else None


def resized_table(pe: torch.Tensor, length: int, mode: str = "extend") -> torch.Tensor:
    """A position table [1, L, C] resized to [1, length, C] by `mode` (module docstring)."""
    if mode not in POSITION_MODES:
        raise ValueError(f"position table mode must be one of {POSITION_MODES}, got {mode!r}")
    _, old, dim = pe.shape
    if length <= old:
        return pe[:, :length]
    if mode == "extend":
        new = sinusoid_table(length, dim, dtype=torch.float32, device=pe.device)
        stored = pe.float()
        if not torch.allclose(new[:, :old], stored, atol=1e-5, rtol=0):
            log.warning("position table of %d rows is not the sinusoid; keeping its rows and continuing it with "
                        "the sinusoid from row %d", old, old)
        new[:, :old] = stored  # exact for the stored positions either way
        return new.to(pe.dtype)
    if old == 1:
        return pe.expand(1, length, dim).clone()
    src = torch.arange(length, dtype=torch.float32, device=pe.device) * (old - 1) / (length - 1)
    lo = src.floor().long().clamp(max=old - 2)
    frac = (src - lo.float())[None, :, None]
    stored = pe.float()
    return (stored[:, lo] * (1 - frac) + stored[:, lo + 1] * frac).to(pe.dtype)


def extend_position_tables(model: nn.Module, num_frames: int, mode: str = "extend") -> ProcessorHandle:
    """Make every position table of `model` at least `num_frames` long (see the module docstring for the two
    modes; "extend" is the default). Tables already long enough are left alone. Returns a handle whose
    `restore()` puts the original tables back."""
    if mode not in POSITION_MODES:
        raise ValueError(f"extend_position_tables: mode must be one of {POSITION_MODES}, got {mode!r}")
    if num_frames < 1:
        raise ValueError(f"extend_position_tables: num_frames must be >= 1, got {num_frames}")
    previous = OrderedDict()
    for name, module in position_tables(model).items():
        if module.pe.shape[1] >= num_frames:
            continue
        previous[name] = (module, module.pe)
        module.register_buffer("pe", resized_table(module.pe, num_frames, mode), persistent=True)
    return _TableHandle(previous)


class _TableHandle(ProcessorHandle):
    def restore(self) -> None:
        if self.restored:
            return
        for module, pe in self.previous.values():
            module.register_buffer("pe", pe, persistent=True)
        self.restored = True


def position_table_for(model: nn.Module, layer_name: str):
    """The positional embedding added to the tokens that reach temporal attention `layer_name`, as a function
    `positions(n, dim, device) -> [n, dim]` of the first n positions, or None when there is none (UNet3D).

    AnimateDiff: the `pos_embed` of the enclosing transformer block (its `pe` table, extended by the sinusoid
    when n exceeds it). VideoUNet: the sinusoid of the frame index its `TemporalTransformer` adds."""
    parent_name = layer_name.rsplit(".", 1)[0] if "." in layer_name else ""
    parent = model.get_submodule(parent_name) if parent_name else model
    pos_embed = getattr(parent, "pos_embed", None)
    if pos_embed is not None and isinstance(getattr(pos_embed, "pe", None), torch.Tensor):
        def from_table(n, dim, device, _m=pos_embed):
            pe = _m.pe
            if pe.shape[1] < n:
                pe = resized_table(pe, n, "extend")
            return pe[0, :n].to(device)
        return from_table
    if type(parent).__name__ == "TemporalTransformer":
        from mtp.backbones.video_unet import sinusoidal_embedding

        def from_sinusoid(n, dim, device):
            return sinusoidal_embedding(torch.arange(n, device=device), dim)
        return from_sinusoid
    return None
