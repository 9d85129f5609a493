"""Tiny diffusers video transformers built from config, and inputs for them (no hub access)."""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed


def tiny_wan(num_layers: int = 2, seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=num_layers, rope_max_seq_len=64,
    ).eval()


def wan_inputs(batch=2, frames=3, height=8, width=10, text=5, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        return_dict=False,
    )


def tiny_hunyuan(seed: int = 0) -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=8, guidance_embeds=False, rope_axes_dim=(4, 4, 4),
    ).eval()


def hunyuan_inputs(batch=2, frames=3, height=8, width=10, text=6, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text, dtype=torch.long)
    mask[-1, text // 2 :] = 0  # the second prompt is shorter: padded text keys must stay masked
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, 8, generator=g),
        return_dict=False,
    )


def tiny_cogvideox(rope: bool, seed: int = 0) -> CogVideoXTransformer3DModel:
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=10, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=7, use_rotary_positional_embeddings=rope,
    ).eval()


def cogvideox_inputs(rope: bool, batch=2, frames=3, height=8, width=10, text=7, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        hidden_states=torch.randn(batch, frames, 4, height, width, generator=g),
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        return_dict=False,
    )
    if rope:
        inputs["image_rotary_emb"] = get_3d_rotary_pos_embed(16, ((0, 0), (height // 2, width // 2)), (height // 2, width // 2), frames)
    return inputs


def run_with_processor(model, inputs: dict, make) -> torch.Tensor:
    """The model's output with ``make()`` (a fresh processor) on every video self-attention layer."""
    from vidattn.processors import video_attention_layers

    for _, module, _ in video_attention_layers(model):
        module.set_processor(make())
    with torch.no_grad():
        return model(**inputs)[0]
