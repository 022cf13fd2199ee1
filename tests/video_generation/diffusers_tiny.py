"""Tiny randomly initialised diffusers video models, saved in diffusers' folder layout, for tests (no download).

`save_tiny_video_model(root, kind)` writes model_index.json and unet / vae / text_encoder / tokenizer / scheduler
(+ motion_adapter) sub-folders the way diffusers' `save_pretrained` lays them out. kind:
- "unet3d": UNet3DConditionModel (TextToVideoSDPipeline, ModelScope / Zeroscope layout);
- "motion": UNetMotionModel (AnimateDiffPipeline saved after conversion);
- "unet2d+adapter": UNet2DConditionModel + MotionAdapter (AnimateDiffPipeline as users usually have it).
The tokenizer is a CLIPTokenizer built from a vocabulary and merges written here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

_WORDS = ["a", "digit", "moving", "one", "two", "three", "cat", "dog", "the", "on", "left", "right", "blur"]


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    letters = sorted({c for w in _WORDS for c in w})
    for c in letters:  # single letters, in both word-inner and word-final form
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for w in _WORDS:  # merge each word left to right, so every listed word is one token
        cur = w[0]
        for i, c in enumerate(w[1:], start=1):
            nxt = c + "</w>" if i == len(w) - 1 else c
            merges.append((cur, nxt))
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
        if len(w) == 1:
            vocab.setdefault(w + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


def tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=24,
                            num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab_size,
                            max_position_embeddings=16, projection_dim=16)
    return CLIPTextModel(config).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=4, layers_per_block=1, sample_size=16).eval()


def tiny_unet3d():
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    return UNet3DConditionModel(block_out_channels=(16, 32), layers_per_block=1, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4, sample_size=8).eval()


def tiny_unet2d():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4, sample_size=8).eval()


def tiny_motion_adapter():
    from diffusers import MotionAdapter

    torch.manual_seed(0)
    adapter = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=4,
                            motion_num_attention_heads=2, motion_max_seq_length=32)
    # diffusers zero-initialises the motion modules' output projections, which would make them no-ops; random
    # weights make the temporal layers matter in the tests
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "proj_out" in name or "to_out" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return adapter.eval()


def tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def save_tiny_video_model(root, kind: str = "unet3d", skip: tuple = ()) -> Path:
    """Write a tiny video model of `kind` under `root`; components named in `skip` are left out of the folder
    (their model_index entry stays, as a half-copied download would have it)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    parts = {"vae": ("diffusers", "AutoencoderKL", tiny_vae()),
             "text_encoder": ("transformers", "CLIPTextModel", tiny_text_encoder(len(tok.get_vocab()))),
             "tokenizer": ("transformers", "CLIPTokenizer", tok),
             "scheduler": ("diffusers", "DDIMScheduler", tiny_scheduler())}
    if kind == "unet3d":
        pipeline = "TextToVideoSDPipeline"
        parts["unet"] = ("diffusers", "UNet3DConditionModel", tiny_unet3d())
    elif kind == "motion":
        from diffusers import UNetMotionModel

        pipeline = "AnimateDiffPipeline"
        adapter = tiny_motion_adapter()
        parts["unet"] = ("diffusers", "UNetMotionModel", UNetMotionModel.from_unet2d(tiny_unet2d(), adapter).eval())
        parts["motion_adapter"] = ("diffusers", "MotionAdapter", adapter)
    elif kind == "unet2d+adapter":
        pipeline = "AnimateDiffPipeline"
        parts["unet"] = ("diffusers", "UNet2DConditionModel", tiny_unet2d())
        parts["motion_adapter"] = ("diffusers", "MotionAdapter", tiny_motion_adapter())
    else:
        raise ValueError(f"unknown kind {kind!r}")
    index = {"_class_name": pipeline, "_diffusers_version": "0.30.0"}
    for name, (library, cls, obj) in parts.items():
        index[name] = [library, cls]
        if name not in skip:
            obj.save_pretrained(root / name)
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
