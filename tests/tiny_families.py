"""Tiny transformers of every supported class (Wan 2.1/2.2 variants, VACE, SkyReels-V2, HunyuanVideo 1.5, LTX-2), built from config."""

from __future__ import annotations

import torch
from diffusers import (
    HunyuanVideo15Transformer3DModel,
    LTX2VideoTransformer3DModel,
    SkyReelsV2Transformer3DModel,
    WanTransformer3DModel,
    WanVACETransformer3DModel,
)

WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=64)


def _seeded(build, seed: int):
    torch.manual_seed(seed)
    return build().eval()


def tiny_wan_i2v(seed: int = 0) -> WanTransformer3DModel:
    """Wan 2.1 I2V / FLF2V: image tokens through attn2's added k/v (the stock processor assumes 512 text tokens)."""
    return _seeded(lambda: WanTransformer3DModel(**{**WAN, "in_channels": 8, "image_dim": 12, "added_kv_proj_dim": 24}), seed)


def wan_i2v_inputs(batch=2, frames=5, height=8, width=10, image=6, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 8, frames, height, width, generator=g),
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, 512, 16, generator=g),
        encoder_hidden_states_image=torch.randn(batch, image, 12, generator=g),
        return_dict=False,
    )


def tiny_wan_ti2v(seed: int = 0) -> WanTransformer3DModel:
    """Wan 2.2 TI2V-5B shape of call: a per-token (B, N) timestep (``expand_timesteps``)."""
    return _seeded(lambda: WanTransformer3DModel(**WAN), seed)


def wan_ti2v_inputs(batch=2, frames=5, height=8, width=10, text=5, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = frames * (height // 2) * (width // 2)
    timestep = torch.full((batch, tokens), 500)
    timestep[:, : (height // 2) * (width // 2)] = 0  # the conditioning first frame is clean
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=timestep,
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        return_dict=False,
    )


def tiny_vace(seed: int = 0) -> WanVACETransformer3DModel:
    return _seeded(lambda: WanVACETransformer3DModel(**WAN, vace_layers=[0, 1], vace_in_channels=6), seed)


def vace_inputs(batch=2, frames=5, height=8, width=10, text=5, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        control_hidden_states=torch.randn(batch, 6, frames, height, width, generator=g),
        return_dict=False,
    )


def tiny_skyreels(seed: int = 0, num_frame_per_block: int = 1) -> SkyReelsV2Transformer3DModel:
    return _seeded(lambda: SkyReelsV2Transformer3DModel(**WAN, num_frame_per_block=num_frame_per_block), seed)


def skyreels_inputs(batch=2, frames=5, height=8, width=10, text=5, seed=0) -> dict:
    """Diffusion forcing: one timestep per latent frame (earlier frames less noisy)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.linspace(300, 700, frames).round().long().expand(batch, -1).clone(),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        enable_diffusion_forcing=True,
        return_dict=False,
    )


def tiny_hunyuan15(seed: int = 0) -> HunyuanVideo15Transformer3DModel:
    return _seeded(
        lambda: HunyuanVideo15Transformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, num_refiner_layers=1,
            patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(4, 4, 4),
        ),
        seed,
    )


def hunyuan15_inputs(batch=2, frames=3, height=4, width=5, text=6, byt5=3, image=4, seed=0, t2v=False) -> dict:
    """I2V by default; ``t2v=True`` passes zero image embeddings, which the model masks out of the joint tokens."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text, dtype=torch.long)
    mask[-1, text // 2 :] = 0  # the second prompt is shorter: padded text must stay masked
    mask_2 = torch.ones(batch, byt5, dtype=torch.long)
    mask_2[0, -1] = 0
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.tensor([500.0] * batch),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.randn(batch, byt5, 8, generator=g),
        encoder_attention_mask_2=mask_2,
        image_embeds=torch.zeros(batch, image, 12) if t2v else torch.randn(batch, image, 12, generator=g),
        return_dict=False,
    )


def tiny_ltx2(seed: int = 0, rope_type: str = "interleaved", gated: bool = False) -> LTX2VideoTransformer3DModel:
    return _seeded(
        lambda: LTX2VideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24,
            audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=6,
            audio_cross_attention_dim=12, num_layers=2, caption_channels=16, rope_type=rope_type, gated_attn=gated,
            audio_gated_attn=gated,
        ),
        seed,
    )


def ltx2_inputs(batch=2, frames=3, height=4, width=5, audio=7, text=5, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, frames * height * width, 4, generator=g),
        audio_hidden_states=torch.randn(batch, audio, 4, generator=g),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        audio_encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        timestep=torch.full((batch, frames * height * width), 500.0),
        audio_timestep=torch.full((batch,), 500.0),
        num_frames=frames,
        height=height,
        width=width,
        audio_num_frames=audio,
        return_dict=False,
    )


def tiny_cosmos(seed: int = 0):
    """Cosmos (1.0 / 2.5 predict) transformer; concat_padding_mask needs torchvision, which the tests do without."""
    from diffusers import CosmosTransformer3DModel

    return _seeded(
        lambda: CosmosTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, text_embed_dim=16,
            adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2), concat_padding_mask=False, encoder_hidden_states_channels=16,
        ),
        seed,
    )


def cosmos_inputs(batch=2, frames=3, height=8, width=10, text=5, seed=0) -> dict:
    """Cosmos 2.5 video2world shape of call: a per-frame (B, 1, F, 1, 1) timestep, the first frame conditioning (t = 0)."""
    g = torch.Generator().manual_seed(seed)
    timestep = torch.full((batch, 1, frames, 1, 1), 0.5)
    timestep[:, :, 0] = 0.0
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=timestep,
        encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
        fps=24,
        return_dict=False,
    )
